"""eliminate_dropout: layers that are the identity at inference (Dropout) go."""
from __future__ import annotations

from ..ir import Graph
from .base import PassResult, bypass, bypass_conflict, layer_of, on_layer


def eliminate_dropout(graph: Graph) -> PassResult:
    """Rule: every node whose layer declares ``removed_at_inference`` (Dropout: Caffe's
    TEST-phase Dropout copies its input) is removed and its users read its bottom instead,
    unless its attrs carry a test-time ``scale`` other than 1 (py-faster-rcnn's
    ``scale_train: false``). A top that is a graph output passes its name to the bottom.

    Declines when the top is a graph output and the bottom is a graph input or another graph
    output (both names must stay, so the node stays as an Identity)."""
    res = PassResult(name="eliminate_dropout")
    for node in [n for n in graph.nodes
                 if layer_of(n).removed_at_inference and getattr(n.attrs, "scale", 1.0) == 1.0]:
        with on_layer(node):
            res.match(node)
            why = bypass_conflict(graph, node.inputs[0], node.outputs[0])
            if why is not None:
                res.decline(node, why)
                continue
            bypass(graph, node)
            res.change(f"removed {node.type} '{node.name}'")
    return res
