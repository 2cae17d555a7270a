"""The graph IR: one :class:`Node` per Caffe layer, one :class:`Value` per blob version (SSA).

In-place Caffe layers (``top == bottom``) produce a new Value each time, so every value has
exactly one producer. The last version of a blob carries the Caffe blob name; earlier versions
are named ``blob#k`` (k = 0, 1, ...). Use lists (``Value.users``) are kept in sync by the
Graph's methods; :meth:`Graph.lint` checks the invariants.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Container, Iterable

import numpy as np

from .errors import Location

Shape = tuple[int, ...]


@dataclass(eq=False)
class Value:
    name: str
    shape: Shape
    producer: "Node | None" = None
    users: list["Node"] = field(default_factory=list)
    blob: str = ""  # the Caffe blob this is a version of

    def __repr__(self) -> str:
        return f"Value({self.name!r}, {self.shape})"


@dataclass(frozen=True)
class PostOp:
    """An element-wise layer fused into its producer (e.g. ReLU after Convolution)."""

    type: str
    attrs: Any
    name: str  # the fused layer's name, kept for reporting and export naming


@dataclass(eq=False)
class Node:
    name: str
    type: str
    attrs: Any
    inputs: list[Value]
    outputs: list[Value]
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    loc: Location = field(default_factory=Location)
    #: Caffe ``param { name: ... }`` per blob ("" when unnamed): shared weights when non-empty
    param_names: tuple[str, ...] = ()
    post_ops: tuple[PostOp, ...] = ()

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.type})"

    @property
    def shares_weights(self) -> bool:
        return any(self.param_names)


class IRError(Exception):
    """An invariant of the IR is broken (a bug, not a user error)."""


class FreshNames:
    """Unique names ``base``, ``base_1``, ``base_2``, ... in amortised constant time: each base
    remembers the next suffix to try, so naming n things after one base costs O(n), not O(n^2).
    ``taken`` is the live set of names in use (checked, never copied)."""

    def __init__(self, taken: Container[str]):
        self.taken = taken
        self._next: dict[str, int] = {}

    def __call__(self, base: str) -> str:
        if base not in self.taken:
            return base
        i = self._next.get(base, 1)
        while f"{base}_{i}" in self.taken:
            i += 1
        self._next[base] = i + 1
        return f"{base}_{i}"


class Graph:
    def __init__(self, name: str = "net"):
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.values: dict[str, Value] = {}
        #: free-form facts for export metadata (e.g. preprocessing)
        self.metadata: dict[str, str] = {}
        self._fresh = FreshNames(self.values)

    # -- construction -------------------------------------------------------------------------
    def new_value(self, name: str, shape: Shape, blob: str = "") -> Value:
        if name in self.values:
            raise IRError(f"value {name!r} already exists")
        v = Value(name, tuple(int(d) for d in shape), blob=blob or name)
        self.values[name] = v
        return v

    def fresh_name(self, base: str) -> str:
        """``base``, or ``base_k`` with the first free k (amortised O(1), see :class:`FreshNames`)."""
        return self._fresh(base)

    def add_node(self, node: Node, index: int | None = None) -> Node:
        for v in node.inputs:
            v.users.append(node)
        for v in node.outputs:
            if v.producer is not None:
                raise IRError(f"value {v.name!r} already has producer {v.producer.name!r}")
            v.producer = node
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)
        return node

    def remove_node(self, node: Node) -> None:
        """Remove a node; its outputs must be unused (rewire them first)."""
        for v in node.outputs:
            if v.users:
                raise IRError(f"cannot remove {node.name!r}: output {v.name!r} still used")
            if v in self.outputs:
                raise IRError(f"cannot remove {node.name!r}: {v.name!r} is a graph output")
            v.producer = None
            del self.values[v.name]
        for v in node.inputs:
            v.users.remove(node)
        self.nodes.remove(node)

    def set_input(self, node: Node, i: int, value: Value) -> None:
        node.inputs[i].users.remove(node)
        node.inputs[i] = value
        value.users.append(node)

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Point every user of ``old`` at ``new``. A graph output moves too and keeps its
        Caffe blob name: ``new`` takes over ``old``'s name in that case."""
        for user in list(dict.fromkeys(old.users)):
            for i, v in enumerate(user.inputs):
                if v is old:
                    user.inputs[i] = new
                    new.users.append(user)
        old.users.clear()
        if old in self.outputs:
            self.outputs[self.outputs.index(old)] = new
            name = old.name
            self.rename(old, self.fresh_name(name + "#old"))
            self.rename(new, name)

    def rename(self, value: Value, name: str) -> None:
        if name == value.name:
            return
        if name in self.values:
            raise IRError(f"value {name!r} already exists")
        del self.values[value.name]
        value.name = name
        self.values[name] = value

    def copy(self) -> "Graph":
        """An independent copy of the structure; weight arrays are shared (treat them read-only)."""
        g = Graph(self.name)
        g.metadata = dict(self.metadata)
        vmap: dict[int, Value] = {}

        def val(v: Value) -> Value:
            if id(v) not in vmap:
                vmap[id(v)] = g.new_value(v.name, v.shape, v.blob)
            return vmap[id(v)]

        g.inputs = [val(v) for v in self.inputs]
        for n in self.nodes:
            g.add_node(Node(n.name, n.type, n.attrs, [val(v) for v in n.inputs], [val(v) for v in n.outputs],
                            dict(n.weights), n.loc, n.param_names, n.post_ops))
        g.outputs = [val(v) for v in self.outputs]
        return g

    # -- queries --------------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def nodes_of(self, *types: str) -> list[Node]:
        return [n for n in self.nodes if n.type in types]

    def count_types(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.type] = out.get(n.type, 0) + 1
        return out

    def lint(self) -> None:
        """Check the invariants: topological order, one producer, use lists in sync, names unique.
        Linear in nodes + uses (it runs after every pass)."""
        seen: set[int] = {id(v) for v in self.inputs}
        names: set[str] = set()
        in_graph = {id(n) for n in self.nodes}
        uses: Counter[tuple[int, int]] = Counter()  # (value, node) -> times the node reads it
        for n in self.nodes:
            if n.name in names:
                raise IRError(f"duplicate node name {n.name!r}")
            names.add(n.name)
            for v in n.inputs:
                if id(v) not in seen:
                    raise IRError(f"{n.name!r} uses {v.name!r} before it is produced")
                if self.values.get(v.name) is not v:
                    raise IRError(f"{v.name!r} is not registered in the graph")
                uses[id(v), id(n)] += 1
            for v in n.outputs:
                if v.producer is not n:
                    raise IRError(f"{v.name!r} producer is not {n.name!r}")
                if self.values.get(v.name) is not v:
                    raise IRError(f"{v.name!r} is not registered in the graph")
                seen.add(id(v))
        listed: Counter[tuple[int, int]] = Counter()
        for v in self.values.values():
            for u in v.users:
                if id(u) not in in_graph or (id(v), id(u)) not in uses:
                    raise IRError(f"stale user {u.name!r} on {v.name!r}")
                listed[id(v), id(u)] += 1
            if v.producer is not None and id(v.producer) not in in_graph:
                raise IRError(f"{v.name!r} has a removed producer")
        if listed != uses:
            for n in self.nodes:
                for v in n.inputs:
                    if not listed[id(v), id(n)]:
                        raise IRError(f"{v.name!r} does not list user {n.name!r}")
                    if listed[id(v), id(n)] != uses[id(v), id(n)]:
                        raise IRError(f"use count of {v.name!r} by {n.name!r} out of sync")
        for v in self.outputs:
            if id(v) not in seen:
                raise IRError(f"graph output {v.name!r} is never produced")

    def iter_values(self) -> Iterable[Value]:
        for v in self.inputs:
            yield v
        for n in self.nodes:
            for v in n.outputs:
                if v not in self.inputs:
                    yield v
