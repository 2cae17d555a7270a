"""eliminate_dropout: Dropout is the identity at inference."""
from __future__ import annotations

from ..ir import Graph
from .base import PassResult, bypass, bypass_conflict, on_layer


def eliminate_dropout(graph: Graph) -> PassResult:
    """Rule: every Dropout node is removed and its users read its bottom instead (Caffe's
    TEST-phase Dropout copies its input). A Dropout top that is a graph output passes its
    name to the bottom.

    Declines when the top is a graph output and the bottom is a graph input or another graph
    output (both names must stay, so the Dropout stays as an Identity)."""
    res = PassResult(name="eliminate_dropout")
    for node in [n for n in graph.nodes if n.type == "Dropout"]:
        with on_layer(node):
            res.match(node)
            why = bypass_conflict(graph, node.inputs[0], node.outputs[0])
            if why is not None:
                res.decline(node, why)
                continue
            bypass(graph, node)
            res.change(f"removed Dropout '{node.name}'")
    return res
