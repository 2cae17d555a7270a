"""protonet: Caffe prototxt -> graph IR -> ONNX, verified against a numpy reference.

The library surface (:mod:`protonet.api`) reads like the command line::

    import protonet
    m = protonet.compile("net.prototxt", weights="w.caffemodel")
    m.save("m.onnx"); m.run({"data": x}); m.verify(); m.summary()
    protonet.load("m.onnx"); protonet.upgrade("old.prototxt", "new.prototxt")

Its names are imported on first use, so that ``import protonet`` stays cheap (the compiler,
onnx and onnxruntime load when a function is called).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

#: public name -> the module that defines it
_EXPORTS = {
    "compile": "api", "load": "api", "upgrade": "api", "Model": "api",
    "ProtonetError": "errors", "SchemaError": "errors", "UnsupportedError": "errors", "WeightsError": "errors",
    "InternalError": "errors", "VerificationError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:
    from .api import Model, compile, load, upgrade
    from .errors import (InternalError, ProtonetError, SchemaError, UnsupportedError, VerificationError,
                         WeightsError)


def __getattr__(name: str) -> Any:
    """The API's names, imported when first asked for (PEP 562)."""
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'protonet' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
