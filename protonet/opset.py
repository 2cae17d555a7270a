"""Other ONNX opsets than the one protonet emits: convert, then prove the conversion by running it.

protonet lowers to one opset (:data:`protonet.layers.lowering.OPSET`); ``--opset N`` converts the
checked model with ``onnx.version_converter``. A converter adapter that keeps an op's attributes
can still change its meaning, so two rules hold here:

- **Softmax, LogSoftmax, Hardmax** before opset 13 flatten the input to 2-D at ``axis`` and
  normalise over *all* trailing axes together (C*H*W for a 4-D blob), while Caffe's Softmax (and
  the op from opset 13 on) normalises over the one axis. onnx.version_converter keeps the
  attribute, so below 13 the converted model's node over a non-last axis becomes Transpose (axis
  to the end) -> op over the last axis -> Transpose back; over the last axis (or when every axis
  after it has size 1) the two definitions agree and the node only gets its axis written out.
- **Every converted model is run** (onnxruntime, CPU) against the model it came from on seeded
  standard-normal inputs before it is returned, and every output compared with
  ``protonet.tolerances.VERIFY``. A disagreement is an internal error (:class:`ConversionMismatch`):
  the converter, not the user, got it wrong, and nothing is written.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from .errors import ProtonetError
from .layers.lowering import OPSET
from .tolerances import VERIFY, compare

log = logging.getLogger(__name__)

#: ops whose ``axis`` meant "flatten to 2-D here" before opset 13 and "this one axis" from 13 on
ONE_AXIS_OPS = ("Softmax", "LogSoftmax", "Hardmax")
#: the opset from which those ops normalise over one axis
ONE_AXIS_SINCE = 13


class ConversionMismatch(RuntimeError):
    """An opset-converted model computes something else than the model it was converted from."""


def convert_opset(model: onnx.ModelProto, opset: int, seed: int = 0) -> onnx.ModelProto:
    """``model`` (at :data:`OPSET`) at ``opset``: rewritten where an op's meaning changes,
    converted, checked by onnx.checker, and run against ``model`` (module docstring)."""
    if opset == OPSET:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, opset)
        if opset < ONE_AXIS_SINCE:
            converted = one_axis_to_last(converted)
        onnx.checker.check_model(converted, full_check=True)
    except Exception as e:
        raise ProtonetError(f"cannot convert the model to opset {opset}: {str(e).strip().splitlines()[0]}") from None
    check_same_outputs(model, converted, seed)
    return converted


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Every value's shape that ONNX shape inference can tell (-1 for an unknown dimension)."""
    g = onnx.shape_inference.infer_shapes(model).graph
    shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return shapes


def one_axis_to_last(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` (at any opset: Transpose means the same in all) in which every Softmax/LogSoftmax/Hardmax normalises over its last axis
    (Transpose around it where the axis is not last and a later axis is longer than 1), so that
    the pre-13 definition (flatten at ``axis``) and the current one agree."""
    shapes = _static_shapes(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    nodes: list[onnx.NodeProto] = []
    names = {n.name for n in g.node}
    for node in g.node:
        if node.op_type not in ONE_AXIS_OPS or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        shape = shapes.get(node.input[0])
        if shape is None:
            raise ProtonetError(f"cannot convert {node.op_type} '{node.name}' below opset {ONE_AXIS_SINCE}: "
                                "the rank of its input is unknown")
        rank = len(shape)
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1) % rank
        if axis == rank - 1 or all(d == 1 for d in shape[axis + 1:]):
            fixed = helper.make_node(node.op_type, list(node.input), list(node.output), name=node.name, axis=axis)
            nodes.append(fixed)
            continue
        perm = [i for i in range(rank) if i != axis] + [axis]
        inverse = [perm.index(i) for i in range(rank)]
        moved, done = f"{node.output[0]}/to_last", f"{node.output[0]}/last"
        base = node.name or node.output[0]
        nodes += [helper.make_node("Transpose", [node.input[0]], [moved], name=_fresh(names, f"{base}/to_last"),
                                   perm=perm),
                  helper.make_node(node.op_type, [moved], [done], name=_fresh(names, f"{base}/last"),
                                   axis=rank - 1),
                  helper.make_node("Transpose", [done], list(node.output), name=_fresh(names, f"{base}/back"),
                                   perm=inverse)]
    del g.node[:]
    g.node.extend(nodes)
    return out


def _fresh(taken: set[str], base: str) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def seeded_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 arrays for the model's graph inputs (an unknown dimension: 1)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def check_same_outputs(model: onnx.ModelProto, converted: onnx.ModelProto, seed: int = 0) -> None:
    """Run both models on the same seeded inputs; every output must agree (``VERIFY``)."""
    from .runtime import make_session

    feeds = seeded_feeds(model, seed)
    want = make_session(model, "cpu").run(feeds)
    got = make_session(converted, "cpu").run(feeds)
    opset = converted.opset_import[0].version
    for name, ref in want.items():
        res = compare(got[name], ref, VERIFY)
        log.debug("opset %d vs %d, output %s: %.3g of tolerance", opset, OPSET, name, res.ratio)
        if not res.ok:
            raise ConversionMismatch(f"the opset-{opset} model differs from the opset-{OPSET} one at output "
                                     f"'{name}' {res.describe()} ({res.ratio:.3g}x the tolerance)")
