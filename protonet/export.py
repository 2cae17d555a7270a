"""IR -> standard ONNX (one fixed opset), through onnx.helper / numpy_helper.

Each layer lowers itself through a :class:`protonet.layers.lowering.Lowering` handed to its ``lower`` facet; fused
post-ops (activations folded into a producer by the optimizer) are lowered after their node,
so the ONNX stays standard (e.g. Conv followed by Relu, which onnxruntime fuses itself).
Graph inputs and outputs keep their Caffe blob names.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .version import __version__
from .errors import Location, ProtonetError
from .fileio import is_stream_target, write_atomic
from .frontend.schema import is_repeated
from .frontend.wire import encode_varint
from .ir import FreshNames, Graph, Node
from .layers import registry
from .layers.lowering import OPSET, Lowering

log = logging.getLogger(__name__)

#: above this many bytes of initializers a model is saved with ONNX external data
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

#: the metadata entry naming each graph output's producing Caffe layer type (JSON: blob -> type),
#: which tells :mod:`protonet.answers` what an output is (classes, boxes, a score map)
OUTPUT_TYPES_KEY = "protonet.outputs"


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
        return self._ex.weight(f"{self.node.name}.{key}", self.weights[key] if array is None else array)

    def const(self, array: Any, hint: str, dtype: Any = np.float32) -> str:
        return self._ex.initializer(f"{self.name}/{hint}", np.asarray(array, dtype=dtype))

    def op(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | None = None,
           n_out: int = 1, domain: str = "", **attrs: Any) -> Any:
        if outputs is None:
            outputs = [self.tmp(op_type) for _ in range(n_out)]
        outputs = list(outputs)
        attrs = {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v for k, v in attrs.items()}
        name = self._ex.fresh_node(self.name)
        self._ex.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name, domain=domain, **attrs))
        self._ex.layer_of[name] = self.node.name
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
        self.arrays: dict[str, np.ndarray] = {}  # every initializer, by name, in creation order
        self.by_source: dict[tuple[Any, ...], str] = {}  # a weight array's memory -> its initializer
        self.keep: list[np.ndarray] = []  # the source arrays behind by_source's keys stay alive
        self.names: set[str] = set(graph.values)
        self.node_names: set[str] = set()
        self.domains: set[str] = set()
        self.layer_of: dict[str, str] = {}  # ONNX node name -> the IR node (Caffe layer) it lowers
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
        self.arrays[name] = arr
        return name

    def weight(self, base: str, src: np.ndarray) -> str:
        """The initializer for a weight array. Arrays that view the same memory the same way (a
        blob shared through Caffe's ``param { name }``, lowered alike by each user) get one
        initializer, which every user references."""
        src = np.asarray(src)
        key = (src.__array_interface__["data"][0], src.shape, src.strides, src.dtype.str)
        name = self.by_source.get(key)
        if name is None:
            self.keep.append(src)
            name = self.by_source[key] = self.initializer(base, np.asarray(src, dtype=np.float32))
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


def _value_info(name: str, shape: Sequence[int], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


@dataclass
class Built:
    """A lowered model, with its weights kept as the IR's arrays until they are written.

    ``structure`` is a ModelProto with everything but the large initializers: nodes, graph inputs
    and outputs, metadata and the small constants (shapes, axes, scalars) that shape inference
    read. ``large`` holds the initializers of at least
    :data:`LARGE_INITIALIZER_BYTES`, by name, as numpy arrays (views of the IR's weights where no
    conversion was needed). :func:`write_model` streams them straight from the arrays into the
    file; :meth:`to_model` places them into one ModelProto when a caller wants one. ``layers``
    names, for each ONNX node, the Caffe layer (IR node, fused activations included) it lowers
    (``protonet bench --per-layer`` maps onnxruntime's profile back through it)."""

    structure: onnx.ModelProto
    large: dict[str, np.ndarray]
    layers: dict[str, str] = field(default_factory=dict)

    @property
    def large_bytes(self) -> int:
        return sum(a.nbytes for a in self.large.values())

    def check(self) -> None:
        """The model check, at a cost independent of the weight bytes: onnx.checker with full shape
        inference on the structure, each large initializer standing in as a graph input of its
        dtype and shape (so every reader's type and shape rules see it); the large initializers'
        own facts (a unique name, a dtype written as raw bytes) are checked here. A model
        with nodes of a custom domain (plugins) is not checked: onnx has no schema for them."""
        if _custom_domains(self.structure):
            return
        probe = onnx.ModelProto()
        probe.CopyFrom(self.structure)
        names = {t.name for t in probe.graph.initializer} | {v.name for v in probe.graph.input}
        for name, arr in self.large.items():
            if name in names:
                raise ProtonetError(f"internal error: initializer {name!r} is defined twice")
            if arr.dtype not in _STREAMABLE:
                raise ProtonetError(f"internal error: initializer {name!r} has dtype {arr.dtype}")
            names.add(name)
            probe.graph.input.append(_value_info(name, arr.shape, helper.np_dtype_to_tensor_dtype(arr.dtype)))
        check_model(probe)

    def to_model(self) -> onnx.ModelProto:
        """One ModelProto holding every initializer (each array's bytes placed once)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.structure)
        for name, arr in self.large.items():
            t = model.graph.initializer.add()
            t.CopyFrom(_tensor_header(name, arr))
            t.raw_data = _le(arr).tobytes()
        return model

    def serialize(self) -> bytes:
        """The model's protobuf bytes, streamed from the arrays (no ModelProto with the weights)."""
        buf = io.BytesIO()
        _write_stream(buf, self, None)
        return buf.getvalue()


#: initializers of at least this many bytes are kept as arrays (:class:`Built`) and, in a model
#: with external data, go to the data file; smaller ones (shapes, axes, scalars) stay inline
LARGE_INITIALIZER_BYTES = 1024

#: the initializer dtypes the exporter writes as raw little-endian bytes
_STREAMABLE = tuple(np.dtype(t) for t in (np.float32, np.float16, np.float64, np.int64, np.int32, np.int8,
                                           np.uint8, np.bool_))


def _le(arr: np.ndarray) -> np.ndarray:
    """C-contiguous and little-endian (a no-copy view when it already is)."""
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))


def _tensor_header(name: str, arr: np.ndarray) -> onnx.TensorProto:
    t = onnx.TensorProto()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
    t.dims.extend(int(d) for d in arr.shape)
    return t


def output_layer_types(graph: Graph) -> dict[str, str]:
    """Each graph output's producing Caffe layer type (the :data:`OUTPUT_TYPES_KEY` entry)."""
    return {v.name: v.producer.type for v in graph.outputs if v.producer is not None}


def build(graph: Graph, expose_all: bool = False) -> Built:
    """Lower the IR to ONNX, keeping the large initializers as arrays. ``expose_all`` also makes
    every intermediate value a graph output (used by verify to compare blob by blob)."""
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
    large = {k: a for k, a in ex.arrays.items() if a.nbytes >= LARGE_INITIALIZER_BYTES and a.dtype in _STREAMABLE}
    small = [numpy_helper.from_array(np.require(a, requirements="C"), k) for k, a in ex.arrays.items()
             if k not in large]
    g = helper.make_graph(ex.nodes, graph.name or "net", inputs, outputs, initializer=small)
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, 1) for d in sorted(ex.domains)]
    model = helper.make_model(g, opset_imports=opsets, producer_name="protonet", producer_version=__version__)
    model.ir_version = min(model.ir_version, 10)
    types = json.dumps(output_layer_types(graph), sort_keys=True)
    for k, v in sorted({**graph.metadata, OUTPUT_TYPES_KEY: types}.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return Built(model, large, ex.layer_of)


def export(graph: Graph, expose_all: bool = False, check: bool = True) -> onnx.ModelProto:
    """Lower the IR to one ONNX ModelProto (see :func:`build`; ``check`` runs :meth:`Built.check`
    when the model uses the standard domain only)."""
    built = build(graph, expose_all)
    if check:
        built.check()
    return built.to_model()


def _custom_domains(model: onnx.ModelProto) -> bool:
    return any(o.domain not in ("", "ai.onnx") for o in model.opset_import)


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker with full shape inference; a failure is an internal error of the exporter."""
    onnx.checker.check_model(model, full_check=True)


# -- writing ---------------------------------------------------------------------------------------
# A protobuf message is a sequence of (tag, value) fields in any order, and repeated fields
# concatenate; so a ModelProto can be written as its small fields (serialised by protobuf) followed
# by one ``graph`` field whose body is the graph's small fields and then one ``initializer`` field
# per large array, each written from the array's own memory. Readers see an ordinary model.

_LEN = 2  # protobuf wire type of length-delimited fields
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9  # field numbers in onnx.proto


def len_field(num: int, length: int) -> bytes:
    """The head (tag and length) of length-delimited field ``num`` holding ``length`` bytes."""
    return encode_varint((num << 3) | _LEN) + encode_varint(length)


#: external data offsets are aligned to this many bytes, so that a runtime can map the file
EXTERNAL_ALIGN = 4096


def _external_layout(built: Built) -> dict[str, int]:
    """Each large initializer's offset in the external data file, in order, aligned."""
    offsets, at = {}, 0
    for name, arr in built.large.items():
        at = -(-at // EXTERNAL_ALIGN) * EXTERNAL_ALIGN
        offsets[name] = at
        at += arr.nbytes
    return offsets


def _write_data(f: BinaryIO, built: Built, offsets: dict[str, int]) -> None:
    at = 0
    for name, arr in built.large.items():
        f.write(b"\0" * (offsets[name] - at))
        f.write(memoryview(_le(arr)).cast("B"))
        at = offsets[name] + arr.nbytes


def _write_stream(f: BinaryIO, built: Built, external: tuple[str, dict[str, int]] | None) -> None:
    """Write ``built`` as protobuf bytes to ``f``. With ``external`` = (data file name, offsets),
    the large initializers point into that file (ONNX external data) instead of holding bytes."""
    head = onnx.ModelProto()
    head.CopyFrom(built.structure)
    head.ClearField("graph")
    graph = built.structure.graph.SerializeToString()
    pieces: list[tuple[bytes, np.ndarray | None]] = []
    for name, arr in built.large.items():
        t = _tensor_header(name, arr)
        if external is None:
            h = t.SerializeToString()
            raw = len_field(_TENSOR_RAW_DATA, arr.nbytes)
            pieces.append((len_field(_GRAPH_INITIALIZER, len(h) + len(raw) + arr.nbytes) + h + raw, arr))
            continue
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", external[0]), ("offset", str(external[1][name])), ("length", str(arr.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        h = t.SerializeToString()
        pieces.append((len_field(_GRAPH_INITIALIZER, len(h)) + h, None))
    graph_len = len(graph) + sum(len(p) + (0 if a is None else a.nbytes) for p, a in pieces)
    f.write(head.SerializeToString())
    f.write(len_field(_MODEL_GRAPH, graph_len))
    f.write(graph)
    for prefix, arr in pieces:
        f.write(prefix)
        if arr is not None:
            f.write(memoryview(_le(arr)).cast("B"))


def _writer(fill: Callable[[BinaryIO], None]) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            fill(f)
    return write


def write_model(built: Built, path: str | os.PathLike[str],
                inputs: Iterable[str | os.PathLike[str] | None] = (), external: bool | None = None) -> list[Path]:
    """Write the model (binary protobuf, whatever the extension) atomically, streaming the weights
    from their arrays: no serialised copy of the model is ever held. Models whose large
    initializers exceed :data:`EXTERNAL_DATA_THRESHOLD` (or any, with ``external`` True) put them
    in ONNX external data, ``<name>.data`` beside the model (the data file lands first, the model
    that points at it last; both get the same umask-respecting permissions). Returns the files
    written."""
    path = Path(path)
    if not (built.large_bytes > EXTERNAL_DATA_THRESHOLD if external is None else external):
        write_atomic(path, _writer(lambda f: _write_stream(f, built, None)), inputs)
        return [path]
    if is_stream_target(path):
        raise ProtonetError(f"the model holds {built.large_bytes / 1e9:.1f} GB of weights and needs an external "
                            f"data file beside it: give a regular file", Location(str(path)))
    data = path.with_name(path.name + ".data")
    offsets = _external_layout(built)
    write_atomic(data, _writer(lambda f: _write_data(f, built, offsets)), inputs)
    write_atomic(path, _writer(lambda f: _write_stream(f, built, (data.name, offsets))), inputs)
    return [path, data]


def _without(msg: Any, field: str) -> Any:
    """A copy of the protobuf message ``msg`` without ``field`` (the rest copied field by field)."""
    out = type(msg)()
    for fd, value in msg.ListFields():
        if fd.name == field:
            continue
        target = getattr(out, fd.name)
        if is_repeated(fd):
            target.extend(value)
        elif fd.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(out, fd.name, value)
    return out


def split_model(model: onnx.ModelProto) -> Built:
    """A :class:`Built` from a whole ModelProto (its large in-memory initializers become arrays)."""
    structure = _without(model, "graph")
    structure.graph.CopyFrom(_without(model.graph, "initializer"))
    large = {}
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and t.ByteSize() >= LARGE_INITIALIZER_BYTES:
            large[t.name] = numpy_helper.to_array(t)
        else:
            structure.graph.initializer.append(t)
    return Built(structure, large)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str],
               inputs: Iterable[str | os.PathLike[str] | None] = ()) -> list[Path]:
    """:func:`write_model` for a whole ModelProto (the model is not changed)."""
    return write_model(split_model(model), path, inputs)
