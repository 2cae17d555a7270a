"""``--batch dynamic``: ONNX models whose batch dimension is symbolic.

protonet's IR, its shape inference, its accounting and the reference interpreter work on
concrete shapes. A dynamic model is therefore made from concrete builds:

1. the net is built at batch 1 (the IR that ``summary`` and the checks see) and again at batch 2
   (the same weight arrays, the same passes), every input's first dimension set to the batch;
2. both are lowered to ONNX, and the two graphs must be the same: the same nodes with the same
   attributes, the same constants, the same weights. A lowering that bakes the batch size into
   the model (a Reshape to a literal ``(1, 4096)``, a constant with a row per image) makes them
   differ, and the net is refused with an error located at that layer; a layer that cannot run
   at batch 2 at all (py-faster-rcnn's Proposal handles one image) is refused by its own check;
3. the batch-1 model is written with its inputs' first dimension named ``N``, and each output
   dimension that differs between the two builds named for it (``N`` when it is the batch,
   ``N*k`` when it is k times the batch).

An identical graph at batch 1 and 2 computes every batch with the same nodes; verification
(:func:`protonet.pipeline.verify_batches`) runs the dynamic model at batch 1, 3 and 8 against the float64
reference built at each of those batches.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import Location, ProtonetError
from .export import Built, build
from .ir import Graph, Node

log = logging.getLogger(__name__)

#: the batch sizes a dynamic model is built at: the first is the IR's, the second the probe's
PROBE_BATCHES = (1, 2)
#: the batch sizes a dynamic model is verified at
VERIFY_BATCHES = (1, 3, 8)
#: the name of the symbolic batch dimension
BATCH_PARAM = "N"


def check_layers(graph: Graph) -> None:
    """Refuse, at the layer, a net with a layer whose axis 0 is not a free batch axis
    (``Layer.fixed_batch``)."""
    from .layers import registry

    for node in graph.nodes:
        layer = registry.get(node.type)
        if layer is not None and layer.fixed_batch:
            raise ProtonetError(f"--batch dynamic needs every layer to run at any batch size, but {layer.fixed_batch}; "
                                "compile with a fixed --batch N", node.loc)


def build_dynamic(graph: Graph, probe: Graph) -> Built:
    """The ONNX model of ``graph`` (built at batch 1) with a symbolic batch dimension, after
    proving that its lowering at the probe batch is the same graph (:func:`compare_builds`)."""
    one, two = build(graph), build(probe)
    compare_builds(one, two, graph)
    g = one.structure.graph
    for values, v1, v2 in ((g.input, graph.inputs, probe.inputs), (g.output, graph.outputs, probe.outputs)):
        for vi, a, b in zip(values, v1, v2):
            for dim, name in zip(vi.type.tensor_type.shape.dim, symbolic_dims(a.shape, b.shape)):
                if name is not None:
                    dim.Clear()
                    if name:
                        dim.dim_param = name
    return one


def symbolic_dims(one: Sequence[int], two: Sequence[int]) -> list[str | None]:
    """Per dimension of a value seen at batch 1 (``one``) and 2 (``two``): None when it is fixed,
    ``N`` when it is the batch, ``N*k`` when k times the batch, "" (unnamed) otherwise."""
    out: list[str | None] = []
    for a, b in zip(one, two):
        if a == b:
            out.append(None)
        elif b == 2 * a:
            out.append(BATCH_PARAM if a == 1 else f"{BATCH_PARAM}*{a}")
        else:
            out.append("")
    return out


def compare_builds(one: Built, two: Built, graph: Graph) -> None:
    """The two lowerings (of ``graph`` and of the same net at the probe batch) are one graph: the
    same nodes (type, inputs, outputs, attributes) and the same initializers (name, type, shape,
    values). The first difference is reported at the layer whose lowering made it."""
    nodes = {n.name: n for n in graph.nodes}

    def owner(built: Built, onnx_node: onnx.NodeProto | None) -> Node | None:
        return None if onnx_node is None else nodes.get(built.layers.get(onnx_node.name, ""))

    g1, g2 = one.structure.graph, two.structure.graph
    for n1, n2 in zip(g1.node, g2.node):
        if n1 != n2:
            _refuse(owner(one, n1), f"its ONNX {n1.op_type} node differs between batch {PROBE_BATCHES[0]} and "
                    f"{PROBE_BATCHES[1]}{_attr_difference(n1, n2)}")
    if len(g1.node) != len(g2.node):
        k = min(len(g1.node), len(g2.node))
        _refuse(owner(one, g1.node[k]) if k < len(g1.node) else owner(two, g2.node[k]),
                "it lowers to a different number of ONNX nodes at another batch size")
    init1 = _initializers(one)
    init2 = _initializers(two)
    for name in sorted(init1.keys() | init2.keys()):
        a, b = init1.get(name), init2.get(name)
        if a is None or b is None or a.dtype != b.dtype or a.shape != b.shape or not _same(a, b):
            _refuse(owner(one, _user(one, name)) or owner(two, _user(two, name)),
                    f"its constant {name!r} differs between batch {PROBE_BATCHES[0]} and {PROBE_BATCHES[1]}"
                    + (f" (shape {a.shape} vs {b.shape})" if a is not None and b is not None and a.shape != b.shape
                       else ""))


def _initializers(built: Built) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in built.structure.graph.initializer}
    out.update(built.large)
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.strides == b.strides:
        return True  # the same weight array (the probe reuses the IR's)
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


def _user(built: Built, name: str) -> onnx.NodeProto | None:
    """The first ONNX node that reads ``name``."""
    return next((n for n in built.structure.graph.node if name in n.input), None)


def _attr_difference(n1: onnx.NodeProto, n2: onnx.NodeProto) -> str:
    """What differs between two nodes, in words (" (attribute axis)", " (its op type)", ...)."""
    if n1.op_type != n2.op_type:
        return f" ({n1.op_type} vs {n2.op_type})"
    a1 = {a.name: a for a in n1.attribute}
    a2 = {a.name: a for a in n2.attribute}
    for name in sorted(a1.keys() | a2.keys()):
        if a1.get(name) != a2.get(name):
            return f" (attribute {name})"
    return " (its inputs)" if list(n1.input) != list(n2.input) else " (its outputs)" if list(n1.output) != list(
        n2.output) else ""


def _refuse(node: Node | None, why: str) -> None:
    loc = node.loc if node is not None else Location()
    raise ProtonetError(f"--batch dynamic: the lowering of this layer depends on the batch size: {why}; "
                        "compile with a fixed --batch N", loc)
