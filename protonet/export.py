"""IR -> standard ONNX (one fixed opset), through onnx.helper / numpy_helper.

Each layer lowers itself through a :class:`protonet.layers.lowering.Lowering` handed to its ``lower`` facet; fused
post-ops (activations folded into a producer by the optimizer) are lowered after their node,
so the ONNX stays standard (e.g. Conv followed by Relu, which onnxruntime fuses itself).
Graph inputs and outputs keep their Caffe blob names.
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import __version__
from .errors import ProtonetError
from .fileio import write_atomic
from .ir import FreshNames, Graph, Node
from .layers import registry
from .layers.lowering import OPSET, Lowering

log = logging.getLogger(__name__)

#: above this many bytes of initializers a model is saved with ONNX external data
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


class _NodeLowering(Lowering):
    """The exporter's implementation of :class:`protonet.layers.lowering.Lowering`."""

    def __init__(self, exporter: "_Exporter", node: Node, outputs: list[str], layer_type: str,
                 inputs: list[str], in_shapes: list[tuple[int, ...]], out_shapes: list[tuple[int, ...]]):
        self._ex = exporter
        self.node = node
        self.name = node.name if layer_type == node.type else f"{node.name}/{layer_type}"
        self.inputs = inputs
        self.outputs = outputs
        self.in_shapes = in_shapes
        self.out_shapes = out_shapes
        self.weights = node.weights

    def tmp(self, hint: str) -> str:
        return self._ex.fresh(f"{self.name}/{hint}")

    def weight(self, key: str, array: np.ndarray | None = None) -> str:
        arr = self.weights[key] if array is None else array
        return self._ex.initializer(f"{self.node.name}.{key}", np.asarray(arr, dtype=np.float32))

    def const(self, array: Any, hint: str, dtype: Any = np.float32) -> str:
        return self._ex.initializer(f"{self.name}/{hint}", np.asarray(array, dtype=dtype))

    def op(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | None = None,
           n_out: int = 1, domain: str = "", **attrs: Any) -> Any:
        if outputs is None:
            outputs = [self.tmp(op_type) for _ in range(n_out)]
        outputs = list(outputs)
        attrs = {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v for k, v in attrs.items()}
        self._ex.nodes.append(helper.make_node(op_type, list(inputs), outputs,
                                               name=self._ex.fresh_node(self.name), domain=domain, **attrs))
        if domain:
            self._ex.domains.add(domain)
        return outputs[0] if len(outputs) == 1 else outputs

    def cast(self, x: str, dtype: Any, outputs: Sequence[str] | None = None) -> str:
        return self.op("Cast", [x], outputs, to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def with_io(self, inputs: list[str], outputs: list[str], in_shapes: list[tuple[int, ...]],
                out_shapes: list[tuple[int, ...]]) -> Lowering:
        sub = copy.copy(self)
        sub.inputs, sub.outputs, sub.in_shapes, sub.out_shapes = inputs, outputs, in_shapes, out_shapes
        return sub


class _Exporter:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.names: set[str] = set(graph.values)
        self.node_names: set[str] = set()
        self.domains: set[str] = set()
        self._fresh = FreshNames(self.names)
        self._fresh_node = FreshNames(self.node_names)

    def fresh(self, base: str) -> str:
        """A tensor name not used yet (``base``, ``base_1``, ...), now taken."""
        name = self._fresh(base)
        self.names.add(name)
        return name

    def fresh_node(self, base: str) -> str:
        """A node name not used yet, now taken."""
        name = self._fresh_node(base)
        self.node_names.add(name)
        return name

    def initializer(self, base: str, arr: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits[name] = numpy_helper.from_array(np.require(arr, requirements="C"), name)
        return name

    def lower_node(self, node: Node) -> None:
        stages = [(node.type, node.attrs, node.name)] + [(p.type, p.attrs, p.name) for p in node.post_ops]
        ins = [v.name for v in node.inputs]
        in_shapes = [v.shape for v in node.inputs]
        final = [v.name for v in node.outputs]
        out_shapes = [v.shape for v in node.outputs]
        for k, (ltype, attrs, _) in enumerate(stages):
            last = k == len(stages) - 1
            outs = final if last else [self.fresh(f"{node.name}/{ltype}_out{j}") for j in range(len(final))]
            layer = registry.get(ltype)
            if layer is None:
                raise ProtonetError(f"no layer class for type {ltype!r}", node.loc)
            shapes_in = in_shapes if k == 0 else out_shapes
            layer.lower(attrs, _NodeLowering(self, node, outs, ltype, ins, list(shapes_in), list(out_shapes)))
            ins = outs


def _value_info(name: str, shape: Sequence[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def export(graph: Graph, expose_all: bool = False, check: bool = True) -> onnx.ModelProto:
    """Lower the IR to an ONNX model. ``expose_all`` also makes every intermediate value a graph
    output (used by verify to compare blob by blob)."""
    ex = _Exporter(graph)
    for node in graph.nodes:
        layer = registry.get(node.type)
        if layer is not None and layer.is_source:
            continue
        ex.lower_node(node)
    inputs = [_value_info(v.name, v.shape) for v in graph.inputs]
    out_values = list(graph.outputs)
    if expose_all:
        seen = {v.name for v in out_values}
        for v in graph.iter_values():
            if v.name not in seen and v not in graph.inputs:
                out_values.append(v)
                seen.add(v.name)
    outputs = [_value_info(v.name, v.shape) for v in out_values]
    g = helper.make_graph(ex.nodes, graph.name or "net", inputs, outputs, initializer=list(ex.inits.values()))
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, 1) for d in sorted(ex.domains)]
    model = helper.make_model(g, opset_imports=opsets, producer_name="protonet", producer_version=__version__)
    model.ir_version = min(model.ir_version, 10)
    for k, v in sorted(graph.metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    if check and not ex.domains and model.ByteSize() < EXTERNAL_DATA_THRESHOLD:
        check_model(model)
    return model


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker with full shape inference; a failure is an internal error of the exporter."""
    onnx.checker.check_model(model, full_check=True)


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str],
               inputs: Iterable[str | os.PathLike[str] | None] = ()) -> list[Path]:
    """Write the model (binary protobuf, whatever the extension) atomically. Models whose
    initializers exceed about 1.8 GB go to ONNX external data in ``<name>.data`` beside the model
    (the data file lands first, the model that points at it last). Returns the files written."""
    path = Path(path)
    if initializer_bytes(model) <= EXTERNAL_DATA_THRESHOLD:
        write_atomic(path, lambda tmp: onnx.save_model(model, str(tmp), format="protobuf"), inputs)
        return [path]
    data = path.with_name(path.name + ".data")
    written = [path]

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as d:
            staged = Path(d) / path.name
            onnx.save_model(model, str(staged), format="protobuf", save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
            onnx.checker.check_model(str(staged), full_check=True)
            if (Path(d) / data.name).exists():
                os.replace(Path(d) / data.name, data)
                written.append(data)
            os.replace(staged, tmp)

    write_atomic(path, write, inputs)
    return written
