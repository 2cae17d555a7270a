"""The plugin hook: layer classes for custom Caffe layer types, registered from Python.

A plugin is the user's own Python module, named on the command line (``--plugin MODULE``) or
imported by the user's code; it is never something a prototxt names. It defines a
:class:`~protonet.layers.base.Layer` subclass per custom type and registers it::

    from protonet.plugins import CustomOpLayer, register_layer

    @register_layer
    class Mish(CustomOpLayer):
        '''x * tanh(softplus(x)).'''
        type_name = "Mish"
        examples = (...)

        def infer(self, attrs, shapes, ctx):
            return [shapes[0]]

        def kernel(self, attrs, xs, w):
            return [xs[0] * np.tanh(np.logaddexp(0, xs[0]))]

Such a type then builds, runs in the reference interpreter and, through
:class:`CustomOpLayer`'s default ``lower``, exports as one node of the ``protonet.custom`` ONNX
domain (for a runtime that has a kernel for it). A plugin that can express its type in standard
ONNX overrides ``lower`` like any built-in layer.

Type ``Python`` is refused: Caffe's Python layers name code in the prototxt, and protonet never
runs code a model file names.
"""
from __future__ import annotations

import dataclasses
import enum
import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, overload

import numpy as np

from .errors import ProtonetError
from .fileio import note_input
from .layers import registry
from .layers.base import Layer
from .layers.lowering import Lowering

log = logging.getLogger(__name__)

#: the ONNX domain of the nodes that :class:`CustomOpLayer` emits
CUSTOM_DOMAIN = "protonet.custom"
#: type names a plugin may not take
REFUSED_NAMES = frozenset({"Python"})


class PluginError(ProtonetError):
    """A plugin that cannot be loaded or registered."""


def _check_layer_class(cls: Any) -> list[str]:
    """The names ``cls`` would register, after checking that it is a usable layer class."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise PluginError(f"{cls!r} is not a subclass of protonet.layers.base.Layer")
    if not cls.type_name:
        raise PluginError(f"layer class {cls.__name__} has no type_name")
    names = [cls.type_name, *cls.aliases]
    for name in names:
        if not isinstance(name, str) or not name:
            raise PluginError(f"layer class {cls.__name__}: invalid type name {name!r}")
        if name in REFUSED_NAMES:
            raise PluginError(f"layer class {cls.__name__}: type {name!r} cannot be registered; Python layers "
                              "run code named in the model file, which protonet refuses")
    if len(set(names)) != len(names):
        raise PluginError(f"layer class {cls.__name__}: type name and aliases repeat a name: {names}")
    missing = [f for f in ("infer", "kernel", "lower") if getattr(cls, f) is getattr(Layer, f)]
    if missing:
        raise PluginError(f"layer class {cls.__name__} ({cls.type_name}) lacks {', '.join(missing)}")
    return names


def _register(cls: type[Layer], replace: bool) -> type[Layer]:
    names = _check_layer_class(cls)
    taken = {n: registry.canonical_name(n) for n in names if registry.get(n) is not None}
    if taken and not replace:
        owners = ", ".join(f"{n!r} (by {type(registry.get(n)).__module__}.{type(registry.get(n)).__name__})"
                           for n in taken)
        raise PluginError(f"layer class {cls.__name__}: type already registered: {owners}; "
                          "pass replace=True to replace it")
    for canonical in dict.fromkeys(taken.values()):
        log.info("plugin %s.%s replaces layer type %s", cls.__module__, cls.__name__, canonical)
        registry.unregister(canonical)
    registry.register(cls)
    log.debug("registered layer type %s from %s", cls.type_name, cls.__module__)
    return cls


@overload
def register_layer(cls: type[Layer], *, replace: bool = False) -> type[Layer]: ...
@overload
def register_layer(cls: None = None, *, replace: bool = False) -> Callable[[type[Layer]], type[Layer]]: ...


def register_layer(cls: type[Layer] | None = None, *, replace: bool = False) -> Any:
    """Register a layer class for its ``type_name`` and ``aliases``; a class decorator.

    ``@register_layer`` or ``register_layer(Cls)``: a name that is already registered is an
    error (:class:`PluginError`). ``@register_layer(replace=True)``: the class replaces the layer
    class that holds any of its names (that class is unregistered with all its aliases).
    The name ``Python`` is always refused. Returns the class unchanged.
    """
    if cls is None:
        return lambda c: _register(c, replace)
    return _register(cls, replace)


def unregister_layer(type_name: str) -> None:
    """Remove a registered type and its aliases (for tests and interactive use)."""
    if registry.get(type_name) is None:
        raise PluginError(f"layer type {type_name!r} is not registered")
    registry.unregister(type_name)


def load_plugins(names: list[str]) -> dict[str, list[str]]:
    """Import the user's plugin modules, in order; importing one registers its layer classes.

    Each entry is a module name (``mypkg.layers``, found on ``sys.path``) or the path of a
    ``.py`` file. Returns module name -> the layer types it registered (or replaced). An import that fails
    is a :class:`PluginError` naming the plugin (the original exception is chained).
    """
    loaded: dict[str, list[str]] = {}
    for name in names:
        before = {n: registry.get(n) for n in registry.all_types()}
        module = _import_plugin(name)
        added = sorted(n for n, layer in registry.all_types().items() if before.get(n) is not layer)
        loaded[module.__name__] = added
        log.info("plugin %s: %s", module.__name__, ", ".join(added) if added else "no new layer types")
    return loaded


def _import_plugin(name: str) -> ModuleType:
    path = Path(name)
    try:
        if name.endswith(".py"):
            if not path.is_file():
                raise PluginError(f"plugin file {name} does not exist")
            note_input(path)  # a command never writes over its plugin
            mod_name = f"protonet_plugin_{path.stem}"
            if mod_name in sys.modules:
                return sys.modules[mod_name]
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise PluginError(f"cannot load plugin file {name}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[mod_name]
                raise
            return module
        return importlib.import_module(name)
    except ProtonetError:
        raise
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise PluginError(f"plugin module {name!r} not found (is it on PYTHONPATH? a file path must end "
                              "in .py)") from e
        raise PluginError(f"plugin {name!r} failed to import: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise PluginError(f"plugin {name!r} failed to import: {type(e).__name__}: {e}") from e


# -- custom-domain export ------------------------------------------------------------------------

def onnx_attribute_value(value: Any) -> Any:
    """A Python value as something ``onnx.helper.make_attribute`` takes, or None to leave it out.

    bool -> int, enum -> its name, str/int/float kept, sequences of one kind -> lists
    (empty ones left out), nested dataclasses and other values left out.
    """
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        items = [onnx_attribute_value(v) for v in value]
        if not items or any(v is None or isinstance(v, list) for v in items):
            return None
        if all(isinstance(v, int) for v in items):
            return items
        if all(isinstance(v, (int, float)) for v in items):
            return [float(v) for v in items]
        if all(isinstance(v, str) for v in items):
            return items
    return None


def attrs_to_onnx(attrs: Any) -> dict[str, Any]:
    """The fields of a (dataclass) attrs object that map to ONNX attributes, by field name."""
    if not dataclasses.is_dataclass(attrs):
        return {}
    out = {}
    for f in dataclasses.fields(attrs):
        v = onnx_attribute_value(getattr(attrs, f.name))
        if v is not None:
            out[f.name] = v
    return out


class CustomOpLayer(Layer):
    """Base for plugin layers without a standard ONNX lowering.

    The default ``lower`` emits one node ``<onnx_op_type or type_name>`` in the ONNX domain
    ``onnx_domain`` (``protonet.custom``): inputs are the bottoms followed by the layer's weights
    in declaration order, outputs the tops, and attributes the fields of the attrs dataclass that
    ONNX can hold (see :func:`attrs_to_onnx`). The exporter records the domain in the model's
    opset imports. Running such a model needs a runtime with a kernel for the op; the reference
    interpreter runs the layer's own ``kernel``.
    """

    onnx_domain: str = CUSTOM_DOMAIN
    onnx_op_type: str = ""

    def onnx_attributes(self, attrs: Any) -> dict[str, Any]:
        """The node's attributes; override to rename or add some."""
        return attrs_to_onnx(attrs)

    def lower(self, attrs: Any, g: Lowering) -> None:
        weights = [g.weight(k) for k in g.weights]
        g.op(self.onnx_op_type or self.type_name, list(g.inputs) + weights, g.outputs,
             domain=self.onnx_domain, **self.onnx_attributes(attrs))
