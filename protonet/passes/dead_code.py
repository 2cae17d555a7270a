"""dead_code: remove the layers whose outputs reach no graph output."""
from __future__ import annotations

from ..ir import Graph
from .base import PassResult, is_source, on_layer


def dead_code(graph: Graph) -> PassResult:
    """Rule: walking back from the graph outputs, a layer none of whose outputs is needed is
    removed (layers without outputs, e.g. Silence, included). Source layers (Input and data
    layers) always stay, so the graph's inputs never change.

    Declines nothing: every layer is either needed or removed."""
    res = PassResult(name="dead_code")
    live: set[int] = {id(v) for v in graph.outputs}
    dead = []
    for node in reversed(graph.nodes):
        if is_source(node) or any(id(v) in live for v in node.outputs):
            live.update(id(v) for v in node.inputs)
        else:
            dead.append(node)
    for node in dead:  # reverse topological order: users go before their producers
        with on_layer(node):
            res.match(node)
            graph.remove_node(node)
            res.change(f"removed {node.type} '{node.name}' (reaches no graph output)")
    return res
