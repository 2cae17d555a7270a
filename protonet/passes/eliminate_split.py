"""eliminate_split: Split copies its bottom to every top, so its users can read the bottom."""
from __future__ import annotations

from ..ir import Graph
from .base import PassResult, bypass, is_graph_input, is_graph_output, layer_of, on_layer


def eliminate_split(graph: Graph) -> PassResult:
    """Rule: every node whose layer declares ``copies_bottom`` (Split) is removed; the users
    of each top read the bottom instead. One top that is a graph output passes its name to
    the bottom.

    Declines when more than one top is a graph output, or when a top is a graph output and
    the bottom is a graph input or graph output (the names cannot all stay on one value)."""
    res = PassResult(name="eliminate_split")
    for node in [n for n in graph.nodes if layer_of(n).copies_bottom]:
        with on_layer(node):
            res.match(node)
            src = node.inputs[0]
            outs = [v for v in node.outputs if is_graph_output(graph, v)]
            if len(outs) > 1:
                res.decline(node, f"{len(outs)} of its tops are graph outputs ({', '.join(v.name for v in outs)})")
                continue
            if outs and (is_graph_input(graph, src) or is_graph_output(graph, src)):
                kind = "graph input" if is_graph_input(graph, src) else "graph output"
                res.decline(node, f"top '{outs[0].name}' is a graph output and bottom '{src.name}' a {kind}; "
                                  f"both names must stay")
                continue
            # the graph-output top (if any) goes last, so its name is the one the bottom keeps
            pairs = sorted(((v, src) for v in node.outputs), key=lambda p: is_graph_output(graph, p[0]))
            bypass(graph, node, pairs)
            res.change(f"removed {node.type} '{node.name}' ({len(node.outputs)} tops now read '{src.name}')")
    return res
