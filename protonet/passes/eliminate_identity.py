"""eliminate_identity: layers that provably return their (first) input unchanged."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..ir import Graph, Node
from .base import PassResult, bypass, bypass_conflict, on_layer


def _reshape(n: Node) -> str | None:
    if n.outputs[0].shape == n.inputs[0].shape:
        return f"{n.type} to the same shape {n.inputs[0].shape}"
    return None


def _power(n: Node) -> str | None:
    a = n.attrs
    if all(hasattr(a, f) for f in ("power", "scale", "shift")) and (a.power, a.scale, a.shift) == (1, 1, 0):
        return "Power with power 1, scale 1, shift 0"
    return None


def _concat(n: Node) -> str | None:
    return "Concat of a single bottom" if len(n.inputs) == 1 else None


def _eltwise(n: Node) -> str | None:
    if len(n.inputs) != 1:
        return None
    a = n.attrs
    if a.operation == "SUM" and a.coeff and a.coeff[0] != 1.0:
        return None
    return f"Eltwise {a.operation} of a single bottom" + (" with coeff 1" if a.coeff else "")


def _all(w: dict, key: str, value: float) -> bool:
    return key in w and bool(np.all(np.asarray(w[key]) == value))


def _scale(n: Node) -> str | None:
    if len(n.inputs) != 1 or getattr(n.attrs, "two_bottoms", False):
        return None
    if not _all(n.weights, "scale", 1.0):
        return None
    if "bias" in n.weights and not _all(n.weights, "bias", 0.0):
        return None
    return "Scale whose learned scale is all 1" + (" and bias all 0" if "bias" in n.weights else " without bias")


def _bias(n: Node) -> str | None:
    if len(n.inputs) != 1 or not _all(n.weights, "bias", 0.0):
        return None
    return "Bias whose learned bias is all 0"


#: layer type -> why a node of it is the identity (None when it is not)
RULES: dict[str, Callable[[Node], str | None]] = {
    "Reshape": _reshape,
    "Flatten": _reshape,
    "Power": _power,
    "Concat": _concat,
    "Eltwise": _eltwise,
    "Scale": _scale,
    "Bias": _bias,
}


def eliminate_identity(graph: Graph) -> PassResult:
    """Rule: a node that returns its input unchanged is removed and its users read its input:
    Reshape/Flatten to the same shape; Power with power 1, scale 1, shift 0; Concat of one
    bottom; Eltwise of one bottom (SUM with coefficient 1, PROD, MAX); a single-bottom Scale
    whose learned scale is all 1 and bias (if any) all 0; a Bias whose learned bias is all 0.
    A graph-output top passes its name to the input.

    Declines when the top is a graph output and the input is a graph input or another graph
    output (both names must stay)."""
    res = PassResult(name="eliminate_identity")
    for node in [n for n in graph.nodes if n.type in RULES]:
        if len(node.outputs) != 1 or not node.inputs:
            continue
        with on_layer(node):
            why = RULES[node.type](node)
            if why is None:
                continue
            res.match(node)
            conflict = bypass_conflict(graph, node.inputs[0], node.outputs[0])
            if conflict is not None:
                res.decline(node, conflict)
                continue
            bypass(graph, node)
            res.change(f"removed '{node.name}': {why}")
    return res
