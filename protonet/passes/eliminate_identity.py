"""eliminate_identity: layers that provably return their (first) input unchanged."""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from ..layers.affine import Affine
from .base import PassResult, affine_of, bypass, bypass_conflict, layer_of, on_layer, shapes_of


def identity_reason(node: Node) -> str | None:
    """Why ``node`` returns its first input unchanged: the layer's ``identity`` trait, or a
    constant affine map that is ``x * 1 + 0`` everywhere. None when it may not."""
    why = layer_of(node).identity(node.attrs, shapes_of(node.inputs), shapes_of(node.outputs), node.weights)
    if why is not None:
        return why
    aff = affine_of(node)
    if isinstance(aff, Affine) and np.all(aff.scale == 1.0) and np.all(aff.shift == 0.0):
        return f"{node.type} whose constant factors are all 1 and offsets all 0"
    return None


def eliminate_identity(graph: Graph) -> PassResult:
    """Rule: a node that returns its input unchanged is removed and its users read its input.
    The layers say when (their ``identity`` trait): Reshape/Flatten to the same shape, Concat
    of one bottom, Eltwise of one bottom (SUM with coefficient 1, PROD, MAX); and any layer
    with a constant ``affine`` map whose scale is all 1 and shift all 0 (Power with power 1,
    scale 1, shift 0; a single-bottom Scale whose learned scale is all 1 and bias, if any,
    all 0; a Bias whose learned bias is all 0). A graph-output top passes its name to the input.

    Declines when the top is a graph output and the input is a graph input or another graph
    output (both names must stay)."""
    res = PassResult(name="eliminate_identity")
    for node in list(graph.nodes):
        if len(node.outputs) != 1 or not node.inputs or node.post_ops:
            continue
        with on_layer(node):
            why = identity_reason(node)
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
