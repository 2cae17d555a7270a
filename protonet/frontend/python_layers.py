"""Known Caffe ``Python`` layers by name, without running Python.

A ``Python`` layer names a module and a class that Caffe imports and runs. protonet never
imports or executes anything a file names; instead, a few published layers are recognised by
their ``(module, layer)`` pair and replaced by the native layer that computes the same thing:

==========================================  ============================================
``python_param { module, layer }``          becomes
==========================================  ============================================
``rpn.proposal_layer`` / ``ProposalLayer``  ``Proposal`` (py-faster-rcnn, py-R-FCN: the
                                            RPN's test-time proposal layer); ``param_str``
                                            gives ``feat_stride`` and optionally ``scales``
==========================================  ============================================

``param_str`` is YAML in Caffe (``yaml.load``); protonet reads only what these layers need, a
flat mapping of names to numbers or lists of numbers (``'feat_stride': 16`` and ``'scales':
!!python/tuple [4, 8, 16, 32]``, one entry per line or separated by commas, optionally in
braces), with a small parser of its own (no ``eval``, no YAML tags other than
``!!python/tuple``). Anything else, and every other Python layer, is refused with a located
message naming the module and the class. A Python layer with no bottoms is a data layer (e.g.
py-faster-rcnn's ``roi_data_layer.layer``); :mod:`protonet.frontend.deploy` turns its tops into
inputs.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from ..errors import Location, UnsupportedError
from .schema import pb

_ENTRY = re.compile(r"""^\s*(?:'([A-Za-z_]\w*)'|"([A-Za-z_]\w*)"|([A-Za-z_]\w*))\s*:\s*(.*?)\s*$""", re.S)
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def is_python_data_layer(layer: Any) -> bool:
    """A ``Python`` layer without bottoms: a data layer whose tops the caller feeds."""
    return layer.type == "Python" and not layer.bottom


def describe(layer: Any) -> str:
    """``module 'm', layer 'L'`` of a Python layer, for messages."""
    p = layer.python_param
    return f"module '{p.module or '?'}', layer '{p.layer or '?'}'"


def _split_top_level(text: str) -> list[str]:
    """Split at commas and newlines that are not inside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if depth == 0 and ch in ",\n":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def _number(text: str) -> float | None:
    text = text.strip()
    return float(text) if _NUMBER.match(text) else None


def _value(text: str) -> float | tuple[float, ...] | None:
    """A number, or a flat list/tuple of numbers (optionally tagged ``!!python/tuple``)."""
    text = text.strip()
    if text.startswith("!!python/tuple"):
        text = text[len("!!python/tuple"):].strip()
        if not text.startswith("["):
            return None
    if text[:1] in "[(" and text[-1:] == {"[": "]", "(": ")"}[text[:1]]:
        inner = text[1:-1].strip()
        items = [_number(t) for t in inner.split(",")] if inner else []
        if any(v is None for v in items):
            return None
        return tuple(float(v) for v in items)  # type: ignore[arg-type]
    return _number(text)


def parse_param_str(text: str, loc: Location) -> dict[str, float | tuple[float, ...]]:
    """Read ``param_str`` as a flat mapping of names to numbers or lists of numbers.

    The rule: optional outer braces; entries ``key: value`` separated by commas or newlines;
    keys bare or quoted identifiers; values a number or ``[n, ...]``/``(n, ...)`` (a YAML
    ``!!python/tuple`` tag allowed before a list). A repeated key, any other syntax or tag is
    refused: nothing in the string is evaluated."""
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    out: dict[str, float | tuple[float, ...]] = {}
    for part in _split_top_level(body):
        m = _ENTRY.match(part)
        value = _value(m.group(4)) if m else None
        if m is None or value is None:
            raise UnsupportedError(f"param_str {text!r}: cannot read {part.strip()!r}; protonet reads a flat "
                                   f"mapping of names to numbers or number lists (nothing in it is evaluated)",
                                   loc)
        key = m.group(1) or m.group(2) or m.group(3)
        if key in out:
            raise UnsupportedError(f"param_str {text!r}: key '{key}' is given twice", loc)
        out[key] = value
    return out


def _as_int(params: dict, key: str, loc: Location, text: str) -> int:
    v = params[key]
    if isinstance(v, tuple) or v != int(v) or v <= 0:
        raise UnsupportedError(f"param_str {text!r}: '{key}' must be a positive integer, got {v!r}", loc)
    return int(v)


def _proposal(layer: Any, loc: Location) -> Any:
    """py-faster-rcnn's rpn.proposal_layer.ProposalLayer -> a Proposal layer with its defaults."""
    text = layer.python_param.param_str
    params = parse_param_str(text, loc)
    unknown = sorted(set(params) - {"feat_stride", "scales"})
    if unknown:
        raise UnsupportedError(f"param_str {text!r}: {', '.join(repr(k) for k in unknown)} is not read by "
                               f"py-faster-rcnn's ProposalLayer (only 'feat_stride' and 'scales'); a modified "
                               f"layer would give different proposals", loc)
    if "feat_stride" not in params:
        raise UnsupportedError(f"param_str {text!r}: 'feat_stride' missing (ProposalLayer requires it)", loc)
    out = pb.LayerParameter()
    out.CopyFrom(layer)
    out.ClearField("python_param")
    out.type = "Proposal"
    p = out.proposal_param
    p.feat_stride = _as_int(params, "feat_stride", loc, text)
    if "scales" in params:
        scales = params["scales"]
        scales = scales if isinstance(scales, tuple) else (scales,)
        if not scales or any(s <= 0 for s in scales):
            raise UnsupportedError(f"param_str {text!r}: 'scales' must be positive numbers, got {scales!r}", loc)
        p.scale.extend(scales)
    return out


#: (module, class) -> rewrite into a native layer
KNOWN: dict[tuple[str, str], Callable[[Any, Location], Any]] = {
    ("rpn.proposal_layer", "ProposalLayer"): _proposal,
}


def known_names() -> str:
    return ", ".join(f"{m}.{c}" for m, c in KNOWN)


def native_python_layers(net: Any, where: Callable[[int, Any], Location]) -> tuple[Any, list[str]]:
    """Replace every known Python layer by its native layer (a new message when anything
    changed, else ``net`` itself) and say what changed. ``where(index, layer)`` locates errors.
    Data layers (no bottoms) and unknown Python layers are left for deploy and build to handle."""
    changes: list[tuple[int, Any]] = []
    notes: list[str] = []
    for i, layer in enumerate(net.layer):
        if layer.type != "Python" or is_python_data_layer(layer):
            continue
        rewrite = KNOWN.get((layer.python_param.module, layer.python_param.layer))
        if rewrite is None:
            continue
        native = rewrite(layer, where(i, layer))
        changes.append((i, native))
        notes.append(f"Python layer '{layer.name}' ({describe(layer)}) became a native {native.type} layer")
    if not changes:
        return net, notes
    out = pb.NetParameter()
    out.CopyFrom(net)
    for i, native in changes:
        out.layer[i].CopyFrom(native)
    return out, notes


def refusal(layer: Any) -> str:
    """Why a Python layer that is not known (and not a data layer) is refused."""
    return (f"Python layer ({describe(layer)}) would run Python code that the file names; protonet never "
            f"imports it. Known Python layers: {known_names()}; for another, write a layer class of your "
            f"own (--plugin) and give the layer its type")

