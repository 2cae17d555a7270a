"""The numpy reference interpreter: executes the IR node by node with Caffe's semantics.

It is the second, independent implementation that ``verify`` compares onnxruntime against,
and the proof that the optimizer's passes preserve meaning. By default it computes in float64
(Caffe's arithmetic, carried out more precisely) and frees each value after its last use, as
Caffe's nets could (a blob is held from its producer to its last consumer);
``keep_all=True`` returns every blob. ``on_node`` sees each node's bottoms and tops as they are
computed and may give the tops the run continues with (verify compares blob by blob that way,
holding only the live ones, and follows onnxruntime's choice at a near-tie).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping, Sequence

import numpy as np

from .errors import ProtonetError
from .ir import Graph, Node
from .layers import registry


def where(node: Node) -> str:
    return f"while executing layer '{node.name}' ({node.type})"


#: ``on_node(node, bottoms, tops) -> tops``: called after each node with its computed tops
OnNode = Callable[[Node, Sequence[np.ndarray], list[np.ndarray]], list[np.ndarray]]


class ReferenceInterpreter:
    def __init__(self, graph: Graph, dtype: type = np.float64):
        self.graph = graph
        self.dtype = dtype

    def _node_weights(self, node: Node) -> dict[str, np.ndarray]:
        """The node's weights in the interpreter's dtype, converted when the node runs and not
        kept (a float64 copy of every weight of a big net would double its memory)."""
        return {k: np.asarray(v, dtype=self.dtype) for k, v in node.weights.items()}

    def run(self, feeds: Mapping[str, np.ndarray], keep_all: bool = False,
            on_node: OnNode | None = None) -> dict[str, np.ndarray]:
        """Run the graph. Returns the graph outputs, or every value with ``keep_all``."""
        g = self.graph
        env: dict[str, np.ndarray] = {}
        for v in g.inputs:
            if v.name not in feeds:
                raise ProtonetError(f"no input given for '{v.name}' (expected shape {v.shape})")
            x = np.asarray(feeds[v.name], dtype=self.dtype)
            if tuple(x.shape) != v.shape:
                raise ProtonetError(f"input '{v.name}' has shape {tuple(x.shape)}, the net expects {v.shape}")
            env[v.name] = x
        last_use: dict[str, int] = {}
        for i, n in enumerate(g.nodes):
            for v in n.inputs:
                last_use[v.name] = i
        keep = {v.name for v in g.outputs}
        for i, node in enumerate(g.nodes):
            layer = registry.get(node.type)
            if layer is None or layer.is_source:
                continue
            xs = [env[v.name] for v in node.inputs]
            try:
                ys = layer.kernel(node.attrs, xs, self._node_weights(node))
                for post in node.post_ops:
                    ys = registry.get(post.type).kernel(post.attrs, ys, {})
            except ProtonetError as e:  # bad data (an index out of range): located at the layer
                raise type(e)(f"{where(node)}: {e.message}", replace(node.loc, layer=None, layer_type=None)) from e
            except Exception as e:  # an internal error, with the "while executing" context
                raise RuntimeError(f"{where(node)}: {type(e).__name__}: {e}") from e
            ys = [np.asarray(y) for y in ys]
            for v, y in zip(node.outputs, ys):
                if tuple(y.shape) != v.shape:
                    raise RuntimeError(f"{where(node)}: kernel gave "
                                       f"shape {tuple(y.shape)} for '{v.name}', shape inference says {v.shape}")
            ys = [y.astype(self.dtype, copy=False) for y in ys]
            if on_node is not None:
                ys = on_node(node, xs, ys)
            del xs
            for v, y in zip(node.outputs, ys):
                env[v.name] = y
            if not keep_all:
                for v in node.inputs:
                    if last_use.get(v.name) == i and v.name not in keep:
                        env.pop(v.name, None)
        if keep_all:
            return env
        return {v.name: env[v.name] for v in g.outputs}
