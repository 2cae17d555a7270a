"""Reduced precision: int8 and fp16 builds of a compiled fp32 model, each with its accuracy measured.

* **int8**: static quantization by onnxruntime's tools (``onnxruntime.quantization.quantize_static``),
  QDQ format, weights int8 per output channel, activations uint8 (``QUInt8``: onnxruntime's fast
  u8s8 kernels on x86 with AVX-512 VNNI; int8 activations left a third of the convolutions in
  fp32 on open_nsfw), ranges from the calibration inputs by MinMax (see
  benchmarks/precision.md for the measured alternatives). Before quantizing, a two-input ``Sum``
  (Caffe's Eltwise SUM) becomes ``Add``, which onnxruntime quantizes. :func:`quantizable_nodes`
  picks what is quantized: Softmax stays fp32 (probabilities on a uint8 grid of 1/255 would tie),
  and so do the detection heads (:data:`HEAD_TYPES`: box decoding, NMS, proposals) with the
  convolutions that predict their inputs, and constant subgraphs.
* **fp16**: for the GPU: ``onnxruntime.transformers.float16`` converts the weights and arithmetic,
  keeping float32 graph inputs and outputs (Cast at the edges) and its list of ops that must stay
  fp32 (NonMaxSuppression, TopK, ...). onnxruntime on CPU runs it too, for the accuracy check.

**The gate.** The calibration set (``--calibrate``: a folder of images, through the model's
preprocessing, or an ``.npz``) is split: every fifth sample is held out (``--holdout N``: every
``S/N``-th, N samples) and never seen by calibration. The fp32 and the reduced model run the held-out
samples; per network output:

* a classifier output ((N, K) or (N, K, 1, 1), K >= 2): top-1 agreement (the share of rows whose
  best class is the same), top-5 overlap (mean |top5 ∩ top5| / 5, when K > 5), the largest score
  difference and SQNR; it passes when the top-1 agreement is at least ``min_agreement``;
* an SSD detection output (DetectionOutput rows [image, label, score, box]): box agreement: the
  detections scoring at least ``det_threshold`` in either model are matched greedily (same image and
  label, IoU >= 0.5), agreement = matched / max(fp32 count, reduced count) over all held-out
  samples; it passes at ``min_agreement``. When neither model finds a box the gate uses SQNR;
* any other output (features, segmentation scores): SQNR = 10 log10(Σ ref² / Σ (ref − got)²) in dB;
  it passes at ``min_sqnr`` (default 20 dB: the error's power a hundredth of the signal's).

A failed gate raises :class:`protonet.errors.VerificationError` (exit 3) unless forced.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from . import limits
from .answers import DETECTION_TYPES
from .errors import Location, ProtonetError, VerificationError
from .export import EXTERNAL_DATA_THRESHOLD
from .fileio import is_regular_file, note_input

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
#: the image files a calibration folder is read for (other files are ignored)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
#: activation types and calibration methods offered (onnxruntime's QuantType / CalibrationMethod names)
ACTIVATION_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
#: the metadata key under which a reduced model records its precision and measured accuracy
METADATA_KEY = "protonet.precision"
#: IoU at which two detections are the same box
BOX_IOU = 0.5
#: calibration runs keep at most this many samples' activations before folding them into ranges
CALIB_CHUNK = 8
#: the histogram methods (percentile, entropy) of onnxruntime (1.31) keep every sample's activations
#: in memory: they calibrate on at most this many samples, spread evenly over the set
HISTOGRAM_SAMPLES = 16


@dataclass(frozen=True)
class Sample:
    """One calibration or evaluation input: where it came from, and an array per graph input
    (``arrays``, or ``load``: read when needed, so that a folder of photos is never held whole)."""

    source: str
    arrays: Mapping[str, np.ndarray] | None = None
    load: Callable[[], Mapping[str, np.ndarray]] | None = None

    def __post_init__(self) -> None:
        if (self.arrays is None) == (self.load is None):
            raise ValueError(f"sample {self.source!r}: give its arrays or a loader, one of them")

    @property
    def feeds(self) -> Mapping[str, np.ndarray]:
        return self.arrays if self.arrays is not None else self.load()  # type: ignore[misc]


@dataclass(frozen=True)
class Gate:
    """The accuracy a reduced-precision model must reach (see the module docstring)."""

    min_agreement: float = 0.99
    min_sqnr: float = 20.0
    det_threshold: float = 0.5


@dataclass(frozen=True)
class Int8Options:
    """onnxruntime quantization choices."""

    activation_type: str = "uint8"  # a key of ACTIVATION_TYPES
    method: str = "minmax"  # a key of CALIBRATION_METHODS


@dataclass(frozen=True)
class OutputAccuracy:
    """One network output of the reduced model against the fp32 model, over the held-out samples."""

    name: str
    kind: str  # "classifier", "detection" or "tensor"
    sqnr_db: float
    max_abs: float
    top1: float | None = None  # classifier: top-1 agreement
    top5: float | None = None  # classifier with more than 5 classes: top-5 overlap
    boxes: float | None = None  # detection: box agreement (None: no box in either model)
    box_counts: tuple[int, int] = (0, 0)  # detection: boxes at the threshold, fp32 and reduced
    passed: bool = True
    rule: str = ""  # what the gate checked

    def describe(self) -> str:
        parts = []
        if self.top1 is not None:
            parts.append(f"top-1 agreement {self.top1:.2%}")
            parts.append(f"top-5 overlap {self.top5:.2%}" if self.top5 is not None else "top-5 n/a (<= 5 classes)")
            parts.append(f"max score difference {self.max_abs:.4g}")
        if self.kind == "detection":
            parts.append(f"box agreement {self.boxes:.2%}" if self.boxes is not None else "no boxes")
            parts.append(f"boxes fp32 {self.box_counts[0]} / reduced {self.box_counts[1]}")
        else:
            parts.append(f"SQNR {_db(self.sqnr_db)}")
        if self.top1 is None and self.kind != "detection":
            parts.append(f"max abs difference {self.max_abs:.4g}")
        return f"{self.name} ({self.kind}): " + ", ".join(parts) + f"  [{'pass' if self.passed else 'FAIL'}: {self.rule}]"


@dataclass(frozen=True)
class AccuracyReport:
    """The gate's measurements: per output, on ``samples`` held-out inputs."""

    precision: str
    samples: int
    calibration: int
    outputs: tuple[OutputAccuracy, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def describe(self) -> str:
        head = (f"{self.precision} accuracy vs fp32 on {self.samples} held-out input(s)"
                + (f" ({self.calibration} used for calibration)" if self.calibration else "") + ":")
        return "\n".join([head] + [f"  {o.describe()}" for o in self.outputs])

    def to_json(self) -> str:
        return json.dumps({"precision": self.precision, "held_out": self.samples, "calibration": self.calibration,
                           "outputs": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                        for k, v in o.__dict__.items()} for o in self.outputs]},
                          sort_keys=True)


@dataclass
class Reduced:
    """A reduced-precision model and its measured accuracy."""

    model: Any  # onnx.ModelProto
    report: AccuracyReport
    calibration: list[Sample] = field(default_factory=list)
    held_out: list[Sample] = field(default_factory=list)


def _db(x: float) -> str:
    return "inf dB (identical)" if math.isinf(x) else f"{x:.1f} dB"


# -- calibration inputs ------------------------------------------------------------------------

def load_samples(spec: str | Path, shapes: Mapping[str, tuple[int, ...]], meta: Any = None) -> list[Sample]:
    """The samples of ``spec``: a folder of images (each one sample, through ``meta``, the model's
    :class:`protonet.frontend.preprocess.Preprocess`, by :func:`protonet.images.load_image`; files of
    other suffixes are ignored; a single-input net only) or an ``.npz`` holding, per graph input
    name, an array of S samples stacked on the batch axis: shape (S·N, C, H, W) for an input of
    shape (N, C, H, W). An empty set, an unreadable image or a bad array is an error naming it."""
    path = Path(spec)
    loc = Location(str(spec))
    if path.is_dir():
        return _image_samples(path, shapes, meta)
    if not path.exists():
        raise ProtonetError("no such calibration folder or file", loc)
    if path.suffix.lower() != ".npz" or not is_regular_file(path):
        raise ProtonetError("calibration data is a folder of images or an .npz of arrays named by input", loc)
    return _npz_samples(path, shapes)


def _image_samples(folder: Path, shapes: Mapping[str, tuple[int, ...]], meta: Any) -> list[Sample]:
    from .images import load_image

    loc = Location(str(folder))
    if len(shapes) != 1:
        raise ProtonetError(f"images can calibrate a single-input net only; this one has {len(shapes)} inputs "
                            f"({', '.join(shapes)}): give an .npz", loc)
    (name, shape), = shapes.items()
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ProtonetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) to calibrate on", loc)
    if meta is None:
        log.warning("%s: the net records no preprocessing (mean, scale): calibration images are fed as "
                    "raw 0-255 BGR pixels", folder)
    return [Sample(str(p), load=lambda p=p: {name: load_image(p, meta, shape)}) for p in files]


def _npz_samples(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> list[Sample]:
    loc = Location(str(path))
    most = limits.current().max_array_bytes
    try:
        with zipfile.ZipFile(path) as z:
            members = {m.filename.removesuffix(".npy"): m for m in z.infolist()}
            missing = [n for n in shapes if n not in members]
            if missing:
                raise ProtonetError(f"no array for input(s) {', '.join(missing)} (has "
                                    f"{', '.join(members) or 'none'})", loc)
            for n in shapes:
                if members[n].file_size > most:
                    raise ProtonetError(f"array '{n}' holds {members[n].file_size:,} bytes, over protonet's limit "
                                        f"of {most:,} (raise it with PROTONET_MAX_ARRAY_BYTES)", loc)
        note_input(path)
        with np.load(path, allow_pickle=False) as data:
            arrays = {n: data[n] for n in shapes}
    except ProtonetError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as e:
        raise ProtonetError(f"not a readable .npz of plain arrays: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                            loc) from None
    counts = {}
    for n, x in arrays.items():
        want = tuple(shapes[n])
        if x.dtype.kind not in "biuf":
            raise ProtonetError(f"array '{n}' has dtype {x.dtype}; give a real numeric array", loc)
        batch = want[0] if want and want[0] > 0 else 1
        if x.ndim != len(want) or any(w > 0 and d != w for d, w in zip(x.shape[1:], want[1:])) \
                or x.shape[0] == 0 or x.shape[0] % batch:
            raise ProtonetError(f"array '{n}' has shape {x.shape}; the input is {want}: give (S*{batch}, "
                                f"{', '.join(map(str, want[1:]))}) for S samples, S >= 1", loc)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ProtonetError(f"array '{n}' holds NaN or infinite values", loc)
        counts[n] = x.shape[0] // batch
    if len(set(counts.values())) > 1:
        raise ProtonetError("the arrays hold different numbers of samples: "
                            + ", ".join(f"'{n}' {s}" for n, s in counts.items()), loc)
    total = next(iter(counts.values()))
    out = []
    for i in range(total):
        feeds = {}
        for n, x in arrays.items():
            b = shapes[n][0] if shapes[n] and shapes[n][0] > 0 else 1
            feeds[n] = np.ascontiguousarray(x[i * b:(i + 1) * b], dtype=np.float32)
        out.append(Sample(f"{path}[{i}]", feeds))
    return out


def split_samples(samples: Sequence[Sample], holdout: int | None = None,
                  src: str | None = None) -> tuple[list[Sample], list[Sample]]:
    """(calibration, held out): ``holdout`` samples (default a fifth, at least one) spread evenly
    over the set (sample i is held out when it falls on the stride S/holdout), the rest calibrate.
    Both parts must be non-empty."""
    s = len(samples)
    n = max(1, round(s / 5)) if holdout is None else holdout
    if s < 2 or not 1 <= n < s:
        raise ProtonetError(f"{s} calibration sample(s): need at least 2, and --holdout between 1 and {s - 1} "
                            f"(got {n})", Location(src))
    held_idx = {int(k * s / n) for k in range(n)}
    return ([x for i, x in enumerate(samples) if i not in held_idx],
            [x for i, x in enumerate(samples) if i in held_idx])


# -- conversions -------------------------------------------------------------------------------

def sum_to_add(model: Any) -> Any:
    """A copy of ``model`` (a ModelProto) where every two-input ``Sum`` is an ``Add`` (the same
    arithmetic, bit for bit); onnxruntime quantizes Add (QLinearAdd) but not Sum."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.op_type == "Sum" and node.domain in ("", "ai.onnx") and len(node.input) == 2:
            node.op_type = "Add"
    return out


def write_fp32(model: Any, path: Path) -> Any:
    """Write the fp32 model (a :class:`protonet.export.Built`, streamed from its arrays, or a
    ModelProto) to ``path`` with :func:`sum_to_add` applied (external data beside it when large);
    returns the written graph's structure (a ModelProto, its large initializers left out for a
    Built) for :func:`quantizable_nodes`."""
    import onnx

    from .export import Built, write_model

    if isinstance(model, Built):  # only the structure is copied, the weights stream from the arrays
        structure = sum_to_add(model.structure)
        write_model(Built(structure, model.large), path)
        return structure
    prepared = sum_to_add(model)
    onnx.save_model(prepared, path, save_as_external_data=prepared.ByteSize() > EXTERNAL_DATA_THRESHOLD)
    return prepared


#: the ONNX ops int8 covers: the arithmetic (Conv, Gemm, MatMul, Add, Mul), and the ops between them
#: that int8 tensors pass through (pooling, activations, shape moves); Softmax is not among them
QUANTIZED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "LeakyRelu",
                           "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Concat", "Flatten",
                           "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Resize", "Pad", "Split", "Slice"})
#: the ops quantized wherever they compute on data: the others of QUANTIZED_OPS are quantized only
#: when an input already is (so a Normalize layer's sum of squares + eps stays fp32)
ANCHOR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: ops that only move, select or reshape values
PASS_THROUGH_OPS = frozenset({"MaxPool", "GlobalMaxPool", "Concat", "Flatten", "Reshape", "Transpose", "Squeeze",
                              "Unsqueeze", "Pad", "Split", "Slice", "Relu", "Clip"})
#: Caffe layer types whose lowering stays fp32 (box decoding, NMS, proposals: coordinates and
#: scores that a uint8 grid would move)
HEAD_TYPES = frozenset({"Proposal", "PriorBox", "ROIPooling", "PSROIPooling"}) | DETECTION_TYPES


def head_regions(graph: Any) -> list[tuple[list[str], list[str]]]:
    """(input blobs, output blobs) of every layer of the IR ``graph`` whose type is in :data:`HEAD_TYPES`."""
    return [([v.name for v in n.inputs], [v.name for v in n.outputs]) for n in graph.nodes if n.type in HEAD_TYPES]


def _between(model: Any, inputs: Sequence[str], outputs: Sequence[str]) -> set[str]:
    """The nodes on a path from a tensor of ``inputs`` to one of ``outputs`` (a layer's lowering)."""
    nodes = list(model.graph.node)
    down, reach = set(inputs), set()
    for n in nodes:
        if any(i in down for i in n.input):
            down.update(n.output)
            reach.add(n.name)
    up, back = set(outputs), set()
    for n in reversed(nodes):
        if any(o in up for o in n.output):
            up.update(n.input)
            back.add(n.name)
    return reach & back


def _predictors(model: Any, tensors: Sequence[str]) -> set[str]:
    """The nodes that compute ``tensors`` back through value-moving ops (:data:`PASS_THROUGH_OPS`,
    Softmax) to, and including, the first nodes that compute (an SSD's loc/conf convolutions)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    todo, seen = list(tensors), set()
    while todo:
        n = producer.get(todo.pop())
        if n is None or n.name in seen:
            continue
        seen.add(n.name)
        if n.op_type in PASS_THROUGH_OPS or n.op_type == "Softmax":
            todo.extend(n.input)
    return seen


def quantizable_nodes(model: Any, fp32_regions: Sequence[tuple[Sequence[str], Sequence[str]]] = ()) -> list[str]:
    """The nodes that int8 quantizes. A node qualifies when its op is in :data:`QUANTIZED_OPS`, it
    computes on data derived from a graph input (constant subgraphs stay fp32), it is not in a
    lowering listed in ``fp32_regions`` ((input, output) tensor names, :func:`head_regions`), and,
    unless it is one of :data:`ANCHOR_OPS`, an input is a graph input or comes from a qualifying
    node (so the Flatten after a Softmax stays fp32). A square (``Mul`` of a tensor by itself, with
    the ``Mul`` by a constant that scaled that tensor) and the nodes computed from squares alone
    stay fp32, anchors included: a uint8 grid over x² loses the small values (so LRN's sum of
    squares, a 1×1 Conv, keeps its precision)."""
    graph = model.graph
    excluded: set[str] = set()
    for ins, outs in fp32_regions:
        excluded |= _between(model, ins, outs) | _predictors(model, ins)
    live = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    quantized: set[str] = set(live)  # tensors that are (or come straight from) quantized values
    producer = {o: n for n in graph.node for o in n.output}
    consts = {t.name for t in graph.initializer}
    for n in graph.node:  # the scaling before a square (LRN squares √(alpha/n)·x)
        scaling = producer.get(n.input[0]) if n.op_type == "Mul" and len(set(n.input)) == 1 else None
        if scaling is not None and scaling.op_type == "Mul" and any(i in consts for i in scaling.input):
            excluded.add(scaling.name)
    squares: set[str] = set()  # tensors computed from squares alone
    chosen = []
    for node in graph.node:
        data = [i for i in node.input if i in live]
        derived = bool(data)
        if (node.op_type == "Mul" and len(set(node.input)) == 1) or (data and all(i in squares for i in data)):
            squares.update(node.output)
        ok = (derived and node.op_type in QUANTIZED_OPS and node.domain in ("", "ai.onnx")
              and node.name not in excluded and node.output[0] not in squares
              and (node.op_type in ANCHOR_OPS or any(i in quantized for i in node.input)))
        if derived:
            live.update(node.output)
        if ok:
            quantized.update(node.output)
            chosen.append(node.name)
    return chosen


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Drop the records logged straight on the root logger (onnxruntime's quantizer advises its
    own preprocessing there on every call); records of named loggers (protonet's) still pass."""
    drop = lambda record: False  # noqa: E731
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


class _Reader:
    """onnxruntime's CalibrationDataReader over samples (one sample per call)."""

    def __init__(self, samples: Sequence[Sample]):
        self._it: Iterator[Sample] = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        s = next(self._it, None)
        return None if s is None else {k: np.asarray(v, np.float32) for k, v in s.feeds.items()}

    def __iter__(self) -> "_Reader":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        x = self.get_next()
        if x is None:
            raise StopIteration
        return x


def to_int8(model: Any, calibration: Sequence[Sample], options: Int8Options = Int8Options(),
            fp32_regions: Sequence[tuple[Sequence[str], Sequence[str]]] = ()) -> Any:
    """Static int8 quantization of an fp32 model (a ModelProto or a :class:`protonet.export.Built`;
    QDQ, per-channel int8 weights) of the nodes :func:`quantizable_nodes` picks, calibrated on
    ``calibration`` (see the module docstring). Returns the quantized ModelProto."""
    with tempfile.TemporaryDirectory(prefix="protonet-int8-") as d:
        src = Path(d) / "fp32.onnx"
        return quantize_file(src, write_fp32(model, src), calibration, options, fp32_regions)


def quantize_file(src: Path, structure: Any, calibration: Sequence[Sample], options: Int8Options = Int8Options(),
                  fp32_regions: Sequence[tuple[Sequence[str], Sequence[str]]] = ()) -> Any:
    """:func:`to_int8` of the fp32 model that :func:`write_fp32` wrote to ``src`` (``structure``:
    what it returned); onnxruntime reads the file itself, so the weights are never copied here."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    if options.activation_type not in ACTIVATION_TYPES or options.method not in CALIBRATION_METHODS:
        raise ProtonetError(f"unknown int8 options {options}")

    class Reader(_Reader, CalibrationDataReader):
        pass

    if options.method != "minmax" and len(calibration) > HISTOGRAM_SAMPLES:
        step = len(calibration) / HISTOGRAM_SAMPLES
        calibration = [calibration[int(k * step)] for k in range(HISTOGRAM_SAMPLES)]
        log.info("%s calibration on %d of the samples (its memory grows with each)", options.method,
                 len(calibration))
    body = quantizable_nodes(structure, fp32_regions)
    if not body:
        raise ProtonetError("int8: the net has no node that int8 quantization covers "
                            f"({', '.join(sorted(QUANTIZED_OPS))})")
    large = any(t.data_location == onnx.TensorProto.EXTERNAL for t in structure.graph.initializer) or \
        (src.with_name(src.name + ".data")).exists()
    chatter = io.StringIO()  # onnxruntime's calibrators print their progress
    # np.errstate: onnxruntime computes a scale for every tensor of the quantized op types, also
    # those left fp32 here (a detection head's ±inf masks give NaN there, and go unused)
    with tempfile.TemporaryDirectory(prefix="protonet-int8-") as d, _quiet_root_logger(), \
            contextlib.redirect_stdout(chatter), np.errstate(invalid="ignore", divide="ignore"):
        dst = Path(d) / "int8.onnx"
        try:
            quantize_static(
                str(src), str(dst), Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=getattr(QuantType, ACTIVATION_TYPES[options.activation_type]),
                weight_type=QuantType.QInt8, nodes_to_quantize=body,
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[options.method]),
                use_external_data_format=large,
                extra_options={"CalibMaxIntermediateOutputs": _chunk(len(calibration))})
        except ProtonetError:  # a calibration sample that cannot be read
            raise
        except (ValueError, ArithmeticError) as e:  # the calibrator cannot use the activations it saw
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ProtonetError(f"int8 calibration ({options.method}) failed on this net's activations: {first}"
                                + (" (try --calibration-method minmax)" if options.method != "minmax" else "")) \
                from None
        model8 = onnx.load_model(dst)
    model8.producer_name, model8.producer_version = structure.producer_name, structure.producer_version
    if float_fed_pools(model8.graph):
        from .runtime import DISABLED_OPTIMIZERS_KEY

        entry = model8.metadata_props.add()
        entry.key, entry.value = DISABLED_OPTIMIZERS_KEY, "QDQPropagationTransformer"
    if chatter.getvalue():
        log.debug("onnxruntime's calibrator: %s", chatter.getvalue().strip())
    return model8


def float_fed_pools(graph: Any) -> list[str]:
    """MaxPool nodes that take a float op's output (not a DequantizeLinear's) and feed a
    QuantizeLinear, as after an LRN kept in fp32 (AlexNet's pool1 and pool2).

    onnxruntime's QDQPropagationTransformer moves such a QuantizeLinear in front of the MaxPool,
    which then runs on onnxruntime's NCHW uint8 MaxPool, about 100x slower than its fp32 kernel
    (3.8 ms against 0.04 ms for AlexNet's pool1); without the move the pool runs in fp32. The
    outputs are equal either way: quantizing is monotone, so it commutes with max. The model asks
    protonet's runtime to switch that transformer off
    (:data:`protonet.runtime.DISABLED_OPTIMIZERS_KEY`) when it has one."""
    producer = {o: n.op_type for n in graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    return [n.name for n in graph.node if n.op_type == "MaxPool"
            and producer.get(n.input[0], "DequantizeLinear") != "DequantizeLinear"
            and consumers.get(n.output[0]) == ["QuantizeLinear"]]


def _chunk(samples: int) -> int:
    """At most :data:`CALIB_CHUNK` samples' activations held at once, in chunks that do not divide
    ``samples``: onnxruntime's calibrator (1.31) fails ("No data is collected") when the last
    chunk ends exactly at the last sample."""
    for c in [*range(CALIB_CHUNK, 1, -1), *range(CALIB_CHUNK + 1, samples + 2)]:
        if samples % c:
            return c
    return samples + 1


def to_fp16(model: Any) -> Any:
    """An fp16 copy of an fp32 model (a ModelProto or a :class:`protonet.export.Built`) for the GPU: weights and arithmetic in float16, the
    graph's inputs and outputs kept float32 (Casts at the edges), the ops that onnxruntime's
    converter keeps in float32 (its ``DEFAULT_OP_BLOCK_LIST``: NonMaxSuppression, TopK, ...)
    left so. Values beyond float16's range are clamped to ±65504 by the converter."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from .export import Built

    if isinstance(model, Built):
        copy = model.to_model()
    else:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
    return convert_float_to_float16(copy, keep_io_types=True)


# -- measuring ---------------------------------------------------------------------------------

def output_kinds(graph: Any) -> dict[str, str]:
    """Each network output's kind for the gate: "detection" (SSD's DetectionOutput, the YOLO heads), "classifier"
    ((N, K) or (N, K, 1, 1) with K >= 2) or "tensor"."""
    kinds = {}
    for v in graph.outputs:
        shape = tuple(v.shape)
        if v.producer is not None and v.producer.type in DETECTION_TYPES:
            kinds[v.name] = "detection"
        elif len(shape) >= 2 and shape[1] >= 2 and all(d == 1 for d in shape[2:]):
            kinds[v.name] = "classifier"
        else:
            kinds[v.name] = "tensor"
    return kinds


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """10 log10(Σ ref² / Σ (ref − got)²): inf when equal, -inf for a zero reference with an error."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    noise = float(np.sum((ref - got) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def _boxes(rows: np.ndarray, threshold: float) -> np.ndarray:
    rows = rows.reshape(-1, 7)
    return rows[rows[:, 2] >= threshold]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box ``a`` (4,) with each of ``b`` (M, 4), corners (xmin, ymin, xmax, ymax)."""
    w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = w * h
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_boxes(ref: np.ndarray, got: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """(matched, fp32 boxes, reduced boxes) among detections scoring at least ``threshold``:
    each fp32 box, best score first, takes the unmatched reduced box of the same image and label
    with the highest IoU, when that IoU is at least :data:`BOX_IOU`."""
    r, g = _boxes(ref, threshold), _boxes(got, threshold)
    used = np.zeros(len(g), bool)
    matched = 0
    for row in r[np.argsort(-r[:, 2], kind="stable")]:
        same = (~used) & (g[:, 0] == row[0]) & (g[:, 1] == row[1])
        if not same.any():
            continue
        iou = np.where(same, _iou(row[3:7], g[:, 3:7]), -1.0)
        k = int(np.argmax(iou))
        if iou[k] >= BOX_IOU:
            used[k] = True
            matched += 1
    return matched, len(r), len(g)


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-x, axis=1, kind="stable")[:, :k]


def measure(ref: Mapping[str, list[np.ndarray]], got: Mapping[str, list[np.ndarray]], kinds: Mapping[str, str],
            gate: Gate = Gate()) -> list[OutputAccuracy]:
    """Per output, the reduced model's outputs ``got`` against the fp32 model's ``ref`` (a list of
    arrays per output name, one per held-out sample), judged by ``gate``."""
    results = []
    for name, kind in kinds.items():
        r = np.concatenate([np.asarray(a, np.float64).reshape(len(a), -1) for a in ref[name]])
        g = np.concatenate([np.asarray(a, np.float64).reshape(len(a), -1) for a in got[name]])
        sq, mx = sqnr_db(r, g), float(np.max(np.abs(r - g))) if r.size else 0.0
        sqnr_ok = sq >= gate.min_sqnr
        sqnr_rule = f"SQNR >= {gate.min_sqnr:g} dB"
        if kind == "classifier":
            top1 = float(np.mean(np.argmax(r, 1) == np.argmax(g, 1)))
            top5 = None
            if r.shape[1] > 5:
                a, b = _topk(r, 5), _topk(g, 5)
                top5 = float(np.mean([len(set(x) & set(y)) / 5 for x, y in zip(a, b)]))
            results.append(OutputAccuracy(name, kind, sq, mx, top1=top1, top5=top5,
                                          passed=top1 >= gate.min_agreement,
                                          rule=f"top-1 agreement >= {gate.min_agreement:.2%}"))
        elif kind == "detection":
            m = n_ref = n_got = 0
            for a, b in zip(ref[name], got[name]):
                mm, nr, ng = match_boxes(np.asarray(a), np.asarray(b), gate.det_threshold)
                m, n_ref, n_got = m + mm, n_ref + nr, n_got + ng
            if max(n_ref, n_got) == 0:
                results.append(OutputAccuracy(name, kind, sq, mx, boxes=None, passed=sqnr_ok,
                                              rule=f"no box scores >= {gate.det_threshold:g}: {sqnr_rule}"))
                continue
            agree = m / max(n_ref, n_got)
            results.append(OutputAccuracy(name, kind, sq, mx, boxes=agree, box_counts=(n_ref, n_got),
                                          passed=agree >= gate.min_agreement,
                                          rule=f"box agreement (score >= {gate.det_threshold:g}, IoU >= {BOX_IOU:g})"
                                               f" >= {gate.min_agreement:.2%}"))
        else:
            results.append(OutputAccuracy(name, kind, sq, mx, passed=sqnr_ok, rule=sqnr_rule))
    return results


def run_outputs(session: Any, samples: Sequence[Sample]) -> dict[str, list[np.ndarray]]:
    """Every network output of a :class:`protonet.runtime.Session` for each sample."""
    outs: dict[str, list[np.ndarray]] = {n: [] for n in session.output_names}
    for s in samples:
        for n, y in session.run(s.feeds).items():
            outs[n].append(y)
    return outs


def reduce_precision(model: Any, precision: str, calibration: Sequence[Sample], held_out: Sequence[Sample],
                     kinds: Mapping[str, str], gate: Gate = Gate(), options: Int8Options = Int8Options(),
                     force: bool = False, src: str | None = None,
                     fp32_regions: Sequence[tuple[Sequence[str], Sequence[str]]] = ()) -> Reduced:
    """``model`` (fp32: a ModelProto or a :class:`protonet.export.Built`) in ``precision`` (fp16, or
    int8 calibrated on ``calibration``: :func:`to_int8`), its accuracy measured against ``model`` on ``held_out`` (:func:`measure`) and
    gated: raises VerificationError when the gate fails, unless ``force``. The reduced model
    records the report under ``metadata_props["protonet.precision"]``."""
    from .runtime import make_session

    if precision not in ("fp16", "int8"):
        raise ProtonetError(f"unknown reduced precision '{precision}' (fp16 or int8)")
    if not held_out or (precision == "int8" and not calibration):
        raise ProtonetError(f"{precision}: no inputs to {'measure accuracy on' if not held_out else 'calibrate on'}",
                            Location(src))
    with tempfile.TemporaryDirectory(prefix="protonet-fp32-") as d:
        fp32 = Path(d) / "fp32.onnx"  # the fp32 model, written once: onnxruntime reads it for both uses
        structure = write_fp32(model, fp32)
        if precision == "int8":
            reduced = quantize_file(fp32, structure, calibration, options, fp32_regions)
        else:
            reduced = to_fp16(model)
        ref = run_outputs(make_session(str(fp32), "cpu"), held_out)
    got = run_outputs(make_session(reduced, "cpu"), held_out)
    report = AccuracyReport(precision, len(held_out), len(calibration) if precision == "int8" else 0,
                            tuple(measure(ref, got, kinds, gate)))
    entry = next((p for p in reduced.metadata_props if p.key == METADATA_KEY), None) or reduced.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, report.to_json()
    if not report.passed and not force:
        failed = [o for o in report.outputs if not o.passed]
        raise VerificationError(f"{report.describe()}\n{precision} build refused: "
                                + "; ".join(f"{o.name} fails {o.rule}" for o in failed)
                                + " (--force writes it anyway; lower --min-agreement/--min-sqnr to accept)",
                                Location(src))
    return Reduced(reduced, report, list(calibration), list(held_out))


#: how many seeded random inputs measure an fp16 build compiled without --calibrate
RANDOM_SAMPLES = 8


def compile_precision(compiled: Any, model: Any, precision: str, calibrate: str | Path | None = None,
                      gate: Gate = Gate(), holdout: int | None = None, options: Int8Options = Int8Options(),
                      force: bool = False, seed: int = 0) -> Reduced:
    """:func:`reduce_precision` for a compiled net (:class:`protonet.pipeline.Compiled`) and the fp32
    ModelProto built from it: the samples come from ``calibrate`` (through the net's recorded
    preprocessing) and are split (:func:`split_samples`), the output kinds and fp32 regions come
    from the graph. int8 needs ``calibrate``; fp16 without it is
    measured on seeded standard-normal inputs (said so: noise says little about photos)."""
    from .frontend.preprocess import Preprocess
    from .pipeline import random_inputs

    graph = compiled.graph
    shapes = {v.name: tuple(v.shape) for v in graph.inputs}
    meta_json = graph.metadata.get("protonet.preprocess")
    meta = Preprocess.from_json(meta_json) if meta_json else None
    if calibrate is not None:
        samples = load_samples(calibrate, shapes, meta)
    elif precision == "int8":
        raise ProtonetError("--precision int8 needs --calibrate DIR|inputs.npz: the images or arrays whose "
                            "activation ranges set the int8 scales (a part is held out to measure accuracy)")
    else:
        log.warning("fp16 accuracy measured on %d random inputs (give --calibrate for real ones)", RANDOM_SAMPLES)
        samples = [Sample(f"random[{i}]", random_inputs(graph, seed + i)) for i in range(RANDOM_SAMPLES)]
    src = str(calibrate) if calibrate is not None else None
    if precision == "int8":
        calib, held = split_samples(samples, holdout, src)
    else:  # fp16 calibrates nothing: every sample measures it, or --holdout of them
        calib, held = [], list(samples) if holdout is None else split_samples(samples, holdout, src)[1]
    return reduce_precision(model, precision, calib, held, output_kinds(graph), gate, options, force, src,
                            head_regions(graph))
