"""What every pass shares: :class:`PassResult`, the per-layer failure context, and the few
rewiring helpers built on :class:`~protonet.ir.Graph`'s own methods.

Helpers that a later Graph method could take over (see the lead's notes):

* :func:`bypass` -- drop a one-in/one-out node whose output equals its input;
* :func:`replace_chain` -- replace a straight chain of nodes by one new node;
* :func:`adopt_name` -- let the surviving value take back its Caffe blob name.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import LayerContext
from ..ir import Graph, Node, Value
from ..layers import registry
from ..layers.affine import Affine
from ..layers.base import Layer

_NO_TRAITS = Layer()


@dataclass
class PassResult:
    """What one pass did: the layers that matched its pattern, the rewrites it made (one line
    each) and the candidates it left alone, with the reason."""

    changed: bool = False
    matched: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    declines: list[tuple[str, str]] = field(default_factory=list)
    name: str = ""
    #: what ``matched`` and ``declines`` already hold, so that recording stays O(1)
    _seen: set = field(default_factory=set, repr=False, compare=False)

    def match(self, node: Node | str) -> None:
        name = node if isinstance(node, str) else node.name
        if ("m", name) not in self._seen:
            self._seen.add(("m", name))
            self.matched.append(name)

    def change(self, text: str) -> None:
        self.changed = True
        self.changes.append(text)

    def decline(self, node: Node | str, reason: str) -> None:
        entry = (node if isinstance(node, str) else node.name, reason)
        if ("d", entry) not in self._seen:
            self._seen.add(("d", entry))
            self.declines.append(entry)

    def merge(self, other: "PassResult") -> None:
        """Add another round's record of the same pass (duplicates dropped, order kept)."""
        self.changed = self.changed or other.changed
        for m in other.matched:
            self.match(m)
        self.changes.extend(other.changes)
        for layer, reason in other.declines:
            self.decline(layer, reason)


class PassFailure(Exception):
    """A pass broke on one layer (an internal error); the manager adds the pass name."""

    def __init__(self, layer: str, cause: BaseException):
        super().__init__(f"on layer '{layer}': {type(cause).__name__}: {cause}")
        self.layer = layer
        self.cause = cause


@contextlib.contextmanager
def on_layer(node: Node) -> Iterator[None]:
    """Attribute any exception raised while rewriting around ``node`` to that layer."""
    try:
        yield
    except PassFailure:
        raise
    except Exception as e:  # noqa: BLE001 -- re-raised with the layer named
        raise PassFailure(node.name, e) from e


# -- queries -------------------------------------------------------------------------------------

def is_graph_output(graph: Graph, v: Value) -> bool:
    return any(o is v for o in graph.outputs)


def is_graph_input(graph: Graph, v: Value) -> bool:
    return any(i is v for i in graph.inputs)


def sole_user(graph: Graph, v: Value) -> Node | None:
    """The one node that reads ``v`` (once), or None when it has several, none, or is a graph output."""
    if len(v.users) != 1 or is_graph_output(graph, v):
        return None
    return v.users[0]


def private_output_reason(graph: Graph, v: Value, reader: Node) -> str | None:
    """Why ``v`` is not read by ``reader`` alone (None when it is)."""
    if is_graph_output(graph, v):
        return f"'{v.name}' is a graph output, so its value must stay observable"
    others = sorted({u.name for u in v.users if u is not reader})
    if others:
        return f"'{v.name}' has other users ({', '.join(others)})"
    if len(v.users) != 1:
        return f"'{v.name}' is read more than once by '{reader.name}'"
    return None


def ndim(v: Value) -> int:
    return len(v.shape)


def layer_of(node: Node) -> Layer:
    """The registered layer class instance of ``node`` (its traits drive the passes); a node
    of a type no longer registered reads as the base class, which has no traits."""
    return layer_of_type(node.type)


def layer_of_type(type_name: str) -> Layer:
    return registry.get(type_name) or _NO_TRAITS


def is_source(node: Node) -> bool:
    return layer_of(node).is_source


def shapes_of(values: list[Value]) -> list[tuple[int, ...]]:
    return [v.shape for v in values]


def affine_of(node: Node) -> Affine | str | None:
    """The node's constant affine map (see :meth:`Layer.affine`); None when the layer is not
    of an affine kind or the node has several tops or fused post-ops."""
    if len(node.outputs) != 1 or node.post_ops or not node.inputs:
        return None
    return layer_of(node).affine(node.attrs, shapes_of(node.inputs), node.weights)


# -- rewiring ------------------------------------------------------------------------------------

def adopt_name(graph: Graph, survivor: Value, removed_name: str, removed_blob: str) -> None:
    """After a value ``removed_name`` of Caffe blob ``removed_blob`` disappeared in favour of
    ``survivor``: when both are versions of the same blob (an in-place chain) and the name is
    free, the survivor takes it, so the latest version keeps the Caffe blob name. Graph inputs
    and outputs are never renamed here."""
    if survivor.name == removed_name or removed_name in graph.values:
        return
    if is_graph_input(graph, survivor) or is_graph_output(graph, survivor):
        return
    if survivor.blob != removed_blob:
        return
    graph.rename(survivor, removed_name)


def bypass_conflict(graph: Graph, src: Value, out: Value) -> str | None:
    """Why ``out`` cannot be replaced by ``src`` without losing a name (None when it can)."""
    if not is_graph_output(graph, out):
        return None
    if is_graph_input(graph, src):
        return f"'{out.name}' is a graph output and '{src.name}' a graph input; both names must stay"
    if is_graph_output(graph, src):
        return f"'{out.name}' and '{src.name}' are both graph outputs; both names must stay"
    return None


def bypass(graph: Graph, node: Node, pairs: list[tuple[Value, Value]] | None = None) -> None:
    """Remove ``node`` whose outputs equal some of its inputs: each (output, source) pair's
    users move to the source (a graph output's name moves with it), then the node goes."""
    if pairs is None:
        pairs = [(node.outputs[0], node.inputs[0])]
    names = []
    for out, src in pairs:
        names.append((src, out.name, out.blob))
        graph.replace_all_uses(out, src)
    graph.remove_node(node)
    for src, name, blob in names:
        adopt_name(graph, src, name, blob)


def replace_chain(graph: Graph, chain: list[Node], new_type: str, new_name: str, attrs: Any,
                  weights: dict, post_ops: tuple = ()) -> Node:
    """Replace a straight chain ``chain[0] -> ... -> chain[-1]`` (each link the sole user of
    the previous output) by one new node reading ``chain[0]``'s inputs and producing
    ``chain[-1]``'s single output (which keeps its name)."""
    first, last = chain[0], chain[-1]
    out = last.outputs[0]
    attrs = layer_of_type(new_type).resolve(attrs, [v.shape for v in first.inputs], LayerContext(first.loc))
    index = graph.nodes.index(first)
    value = graph.new_value(graph.fresh_name(out.name + "#new"), out.shape, blob=out.blob)
    node = Node(new_name, new_type, attrs, list(first.inputs), [value], dict(weights), first.loc,
                post_ops=tuple(post_ops))
    graph.add_node(node, index)
    old_name, old_blob = out.name, out.blob
    graph.replace_all_uses(out, value)
    for n in reversed(chain):
        graph.remove_node(n)
    adopt_name(graph, value, old_name, old_blob)
    return node
