"""The Python API: the command line's commands as functions, and one :class:`Model` object.

::

    import protonet

    m = protonet.compile("net.prototxt", weights="w.caffemodel", batch=1)
    m.save("m.onnx")                   # protonet compile net.prototxt -w w.caffemodel -o m.onnx
    outs = m.run({"data": x})          # protonet infer (an array per input name, or an image path)
    res = m.verify()                   # protonet verify: res.ok, res.blobs (one row per blob)
    s = m.summary()                    # protonet summary: s.layers (rows), s.total (totals)
    m2 = protonet.load("m.onnx")       # a compiled model, to run
    protonet.upgrade("old.prototxt", "new.prototxt")

The options are the CLI's, as keywords (``--input-shape data=1,3,224,224`` is
``input_shapes={"data": (1, 3, 224, 224)}``; ``--no-optimize`` is ``optimize=False``). Every
problem with the input raises :class:`protonet.ProtonetError` (or a subclass) whose ``str()`` is the
CLI's located message (``net.prototxt:12: layer 'conv1' (Convolution): ...``).

:meth:`Model.verify` returns its result (``ok`` and per-blob rows) and raises nothing on a
mismatch unless asked (``check=True`` raises :class:`protonet.VerificationError`, what makes the CLI
exit 3): a mismatch is a finding to inspect, not a failure of the call.

This module imports the compiler (onnx, onnxruntime) only when a function is called, so
``import protonet`` stays cheap.
"""
from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, Union

import numpy as np

from . import answers, limits
from .errors import Location, ProtonetError, VerificationError
from .fileio import is_regular_file, note_input

if TYPE_CHECKING:
    from .analysis import Summary
    from .answers import TwoStage
    from .export import Built
    from .frontend.preprocess import Preprocess, PreprocessOptions
    from .ir import Graph
    from .pipeline import Compiled, VerifyResult
    from .quantize import AccuracyReport
    from .runtime import Session

log = logging.getLogger(__name__)

__all__ = ["Model", "compile", "load", "upgrade", "read_inputs", "check_input_shapes", "mismatch_error",
           "preprocess_options", "store_preprocess"]

PathLike = Union[str, Path]
#: what :meth:`Model.run` takes: arrays by input name, one array (a single-input net), or a file
#: (.npy, .npz, a JPEG/PNG/BMP photo) or ``"random"``
Inputs = Union[Mapping[str, np.ndarray], np.ndarray, str, Path]

#: the largest dimension accepted (ONNX dims are int64; tensors far smaller)
MAX_DIM = 1 << 31
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class CompileOptions:
    """The options of ``protonet compile`` that shape the model (see :func:`compile`)."""

    weights: str | None = None
    batch: int | str | None = None  # "dynamic": a symbolic batch dimension
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    optimize: bool = True
    passes: tuple[str, ...] | None = None
    outputs: tuple[str, ...] = ()
    opset: int | None = None
    caffe_proto: str | None = None
    ignore_fields: tuple[str, ...] = ()
    forks: tuple[str, ...] = ()
    seed: int = 0
    strict: bool = False
    preprocess: "PreprocessOptions | None" = None


def preprocess_options(mean: Sequence[float] | float | None = None, mean_file: PathLike | None = None,
                       scale: float | None = None, resize: int | Sequence[int] | None = None,
                       crop: int | Sequence[int] | None = None, channels: str | None = None) -> "PreprocessOptions":
    """The photo preprocessing options (``--mean``, ``--mean-file``, ``--scale``, ``--resize``,
    ``--crop``, ``--channels``): ``resize`` is (H, W) or the shorter side S; ``crop`` is (H, W)
    or S for S x S; ``mean`` is in the net's channel order."""
    from .frontend.preprocess import PreprocessOptions

    def sides(v: int | Sequence[int] | None, what: str) -> tuple[int, ...] | None:
        if v is None:
            return None
        t = (v,) if isinstance(v, (int, np.integer)) else tuple(v)
        if len(t) not in (1, 2):
            raise ProtonetError(f"{what}: give H,W or S")
        return tuple(_dim(d, what) for d in t)

    rs, cr = sides(resize, "resize"), sides(crop, "crop")
    crop_hw = (cr[0], cr[-1]) if cr else None
    return PreprocessOptions(
        mean=None if mean is None else tuple(float(v) for v in np.atleast_1d(np.asarray(mean, dtype=float))),
        mean_file=None if mean_file is None else str(mean_file), scale=None if scale is None else float(scale),
        resize=rs if rs and len(rs) == 2 else None, resize_shorter=rs[0] if rs and len(rs) == 1 else None,
        crop=crop_hw, channels=channels)


def store_preprocess(c: "Compiled", opts: "PreprocessOptions | None", src: str) -> "Preprocess | None":
    """Put the preprocessing options into the compiled graph's metadata (over what a data layer
    said); returns the Preprocess the model then carries (None: none)."""
    from .frontend.deploy import METADATA_KEY
    from .frontend.preprocess import image_input

    carried = c.graph.metadata.get(METADATA_KEY)
    given = opts is not None and opts.given
    if not given and not carried:
        return None
    name, shape, meta = image_input([(v.name, v.shape) for v in c.graph.inputs], carried, src)
    if opts is not None and given:
        meta = opts.apply(meta, name, shape)
        c.graph.metadata[METADATA_KEY] = meta.to_json()
    return meta


def _dim(n: Any, what: str) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or not 0 < int(n) < MAX_DIM:
        raise ProtonetError(f"{what}: {n!r} is not a positive integer below 2^31")
    return int(n)


def _shapes(spec: Mapping[str, Sequence[int]] | Sequence[int] | None) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``input_shapes``: a mapping name -> shape, or one shape (the first input's, as an unnamed
    ``--input-shape``)."""
    if spec is None:
        return ()
    items = spec.items() if isinstance(spec, Mapping) else [("", spec)]
    out = []
    for name, shape in items:
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Iterable):
            raise ProtonetError(f"input_shapes: the shape of {name or 'the first input'!r} is not a sequence of dims")
        out.append((str(name), tuple(_dim(d, f"input_shapes[{name!r}]") for d in shape)))
    return tuple(out)


def compile(net: PathLike, weights: PathLike | None = None, *, batch: int | str | None = None,
            input_shapes: Mapping[str, Sequence[int]] | Sequence[int] | None = None, optimize: bool = True,
            passes: Sequence[str] | None = None, outputs: Sequence[str] | None = None, opset: int | None = None,
            caffe_proto: PathLike | None = None, ignore_fields: Sequence[str] = (), seed: int = 0,
            strict: bool = False, forks: Sequence[str] = (), mean: Sequence[float] | float | None = None, mean_file: PathLike | None = None,
            scale: float | None = None, resize: int | Sequence[int] | None = None,
            crop: int | Sequence[int] | None = None, channels: str | None = None) -> "Model":
    """Compile a net definition (any Caffe format, or a .caffemodel alone), as ``protonet compile``.

    ``weights``: the trained .caffemodel (default: Caffe's fillers, seeded by ``seed``);
    ``batch``: the batch dimension of every input (``"dynamic"``: a symbolic one, see
    :mod:`protonet.dynamic`); ``input_shapes``: ``{name: shape}`` (or one
    shape for the first input) for data layers or inputs without a shape; ``optimize``: run the
    optimizer passes (all, or ``passes`` in that order); ``outputs``: keep only these network
    outputs; ``opset``: target another ONNX opset; ``caffe_proto``: read the files through a
    fork's own caffe.proto; ``ignore_fields``: fork fields (``MSG.FIELD``) to run without;
    ``forks``: forks whose layers of a shared type name the net runs (``"faceboxes"``);
    ``strict``: a layer missing from the weights is an error. The photo preprocessing the model
    carries (applied by :meth:`Model.run` to a photo; see :func:`preprocess_options`): ``mean``
    (in the net's channel order) or ``mean_file``, ``scale``, ``resize`` ((H, W) or the shorter
    side), ``crop`` (centre; (H, W) or S), ``channels`` ("BGR" or "RGB"), with OpenCV
    ``blobFromImage`` semantics; each replaces what a train_val's data layer said."""
    opts = CompileOptions(
        weights=None if weights is None else str(weights),
        batch=batch if batch is None or batch == "dynamic" else _dim(batch, "batch"),
        input_shapes=_shapes(input_shapes), optimize=bool(optimize),
        passes=None if passes is None else tuple(passes), outputs=tuple(outputs or ()),
        opset=None if opset is None else _dim(opset, "opset"),
        caffe_proto=None if caffe_proto is None else str(caffe_proto), ignore_fields=tuple(ignore_fields),
        forks=tuple(forks), seed=int(seed), strict=bool(strict),
        preprocess=preprocess_options(mean, mean_file, scale, resize, crop, channels))
    if not 0 <= opts.seed < 2 ** 63:
        raise ProtonetError(f"seed: {seed} is not in [0, 2^63)")
    return Model._from_net(str(net), opts)


def load(path: PathLike, net: PathLike | None = None, weights: PathLike | None = None,
         **options: Any) -> "Model":
    """A compiled ONNX model, to run. ``net`` (with ``weights`` and :func:`compile`'s options, as
    it was compiled) is the definition it came from: :meth:`Model.verify` and
    :meth:`Model.summary` need it (as ``protonet verify MODEL.onnx NET``)."""
    import onnx

    src = str(path)
    if not is_regular_file(src):
        raise ProtonetError(f"{src}: no such file" if not Path(src).exists() else f"{src}: not a regular file")
    note_input(src)
    try:
        proto = onnx.load(src, format="protobuf", load_external_data=False)
    except Exception as e:
        raise ProtonetError(f"{src}: not an ONNX model: {e}") from None
    m = Model(path=src, proto=proto)
    if net is not None:
        reference = compile(net, weights, **options)
        if reference.options.opset is not None:
            raise ProtonetError("opset: the model's own opset is verified; give opset to compile")
        m._compiled, m.options, m.net = reference.compiled, reference.options, reference.net
    elif weights is not None or options:
        raise ProtonetError("weights and compile options describe the net: give net= too")
    return m


def upgrade(old: PathLike, new: PathLike, caffe_proto: PathLike | None = None) -> list[str]:
    """Rewrite a legacy (V0/V1) definition or caffemodel in the current format, as ``protonet
    upgrade`` (text or binary by ``new``'s extension). Returns the upgrade steps that ran (empty
    for a file already current)."""
    from .frontend import upgrade_file

    return upgrade_file(old, new, None if caffe_proto is None else str(caffe_proto))


class Model:
    """A compiled net: the ONNX model and, when compiled here (or loaded with its ``net``), the
    graph it came from (for :meth:`verify` and :meth:`summary`). Build it with :func:`compile`
    or :func:`load`."""

    def __init__(self, path: str | None = None, proto: Any = None) -> None:
        self.path = path  # the ONNX file it was loaded from
        self.net: str | None = None  # the definition it was compiled from
        self.options = CompileOptions()
        self._proto = proto
        self._compiled: Compiled | None = None
        self._built: Built | None = None
        self._sessions: dict[str, Session] = {}
        self.provider: str | None = None  # the execution provider of the last run ("cuda" or "cpu")

    @classmethod
    def _from_net(cls, net: str, opts: CompileOptions) -> "Model":
        from .build import BuildOptions
        from .pipeline import compile_net

        dynamic = opts.batch == "dynamic"
        build = BuildOptions(batch=None if dynamic else opts.batch, dynamic_batch=dynamic, seed=opts.seed,  # type: ignore[arg-type]
                             strict=opts.strict, input_shapes=dict(opts.input_shapes))
        m = cls()
        m.net, m.options = net, opts
        m._compiled = compile_net(net, opts.weights, build, optimize=opts.optimize,
                                  passes=None if opts.passes is None else list(opts.passes),
                                  outputs=list(opts.outputs) or None, schema=opts.caffe_proto,
                                  ignore_fields=opts.ignore_fields, forks=opts.forks)
        store_preprocess(m._compiled, opts.preprocess, net)
        return m

    def __repr__(self) -> str:
        src = self.path or self.net
        ins = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in self.inputs.items())
        return f"<protonet.Model {src!r}: inputs {ins}; outputs {', '.join(self.outputs)}>"

    # -- what it is --------------------------------------------------------------------------------
    @property
    def compiled(self) -> "Compiled":
        """The compiler's result (graph, loaded net, weight report, passes); needs the net."""
        if self._compiled is None:
            raise ProtonetError("this needs the net the model was compiled from: "
                                "protonet.load(model, net=NET, weights=W, ...)", Location(self.path))
        return self._compiled

    @property
    def graph(self) -> "Graph":
        """The IR graph (optimized when the passes ran)."""
        return self.compiled.graph

    @property
    def built(self) -> "Built":
        """The ONNX model that :meth:`save` writes (built on first use, checked)."""
        if self._built is None:
            if self._proto is not None:
                from onnx.external_data_helper import load_external_data_for_model, uses_external_data

                from .export import split_model

                proto = self._proto
                if self.path is not None and any(uses_external_data(t) for t in proto.graph.initializer):
                    proto = type(proto)()  # the weights in a data file beside the model are read in
                    proto.CopyFrom(self._proto)
                    try:
                        load_external_data_for_model(proto, str(Path(self.path).parent))
                    except (OSError, ValueError) as e:
                        raise ProtonetError(f"cannot read the model's external data: {e}", Location(self.path)) from None
                self._built = split_model(proto)
            else:
                from .pipeline import build_model

                self._built = build_model(self.compiled, self.options.opset)
        return self._built

    @property
    def onnx(self) -> Any:
        """The model as one ``onnx.ModelProto``."""
        return self._proto if self._proto is not None else self.built.to_model()

    def _io(self, kind: str) -> dict[str, tuple[int, ...]]:
        if self._compiled is not None and self._proto is None and self._compiled.probe is None:
            values = self._compiled.graph.inputs if kind == "input" else self._compiled.graph.outputs
            return {v.name: tuple(v.shape) for v in values}
        g = (self._proto if self._proto is not None else self.built.structure).graph
        inits = {t.name for t in g.initializer}
        return {v.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
                for v in (g.input if kind == "input" else g.output) if v.name not in inits}

    @property
    def inputs(self) -> dict[str, tuple[int, ...]]:
        """Input name -> shape (-1 for a dynamic dimension)."""
        return self._io("input")

    @property
    def outputs(self) -> dict[str, tuple[int, ...]]:
        """Output name -> shape (-1 for a dynamic dimension)."""
        return self._io("output")

    @property
    def metadata(self) -> dict[str, str]:
        """The model's metadata (``protonet.preprocess`` among them)."""
        if self._proto is not None:
            return {p.key: p.value for p in self._proto.metadata_props}
        return dict(self.compiled.graph.metadata)

    @property
    def preprocess(self) -> "Preprocess | None":
        """The test-time transform the model carries (applied to a photo by :meth:`run`), if any."""
        from .frontend.preprocess import Preprocess

        meta = self.metadata.get("protonet.preprocess")
        return Preprocess.from_json(meta, self.path or self.net) if meta else None

    # -- what it does ------------------------------------------------------------------------------
    def save(self, path: PathLike) -> list[Path]:
        """Write the ONNX model atomically (external data beside it when the weights pass 1.8 GB);
        returns the files written. The net and weights it came from are never overwritten."""
        from .export import write_model

        return write_model(self.built, path, inputs=[self.net, self.options.weights, self.path])

    def session(self, provider: str = "auto") -> "Session":
        """The onnxruntime session (``provider``: auto, cuda or cpu), made once per provider."""
        from .runtime import make_session

        if provider not in self._sessions:
            self._sessions[provider] = make_session(self.path if self.path is not None else self.built, provider)
        return self._sessions[provider]

    def feeds(self, inputs: Inputs, seed: int | None = None) -> dict[str, np.ndarray]:
        """The arrays :meth:`run` feeds: ``inputs`` as arrays by name, one array (a single-input
        net), or a file read by :func:`read_inputs` (a photo gets the model's preprocessing);
        each checked against the model's input shapes."""
        shapes = self.inputs
        seed = self.options.seed if seed is None else seed
        if isinstance(inputs, (str, Path)):
            if Path(inputs).suffix.lower() in IMAGE_SUFFIXES and self.preprocess is None:
                log.warning("%s carries no preprocessing: feeding the raw pixels (0-255, BGR, resized to the "
                            "input's size); compile with mean=, scale=, resize=, crop=, channels=",
                            self.path or self.net)
            two_stage = None
            if Path(inputs).suffix.lower() in IMAGE_SUFFIXES and answers.im_info_input(shapes):
                two_stage = answers.two_stage_outputs(answers.model_output_types(self), self.outputs, shapes)
            feeds = read_inputs(str(inputs), list(shapes), shapes, self.preprocess, seed, two_stage,
                                str(self.path or self.net))
            src = str(inputs)
        else:
            if not isinstance(inputs, Mapping):
                if len(shapes) != 1:
                    raise ProtonetError(f"the net has {len(shapes)} inputs ({', '.join(shapes)}): give a dict")
                inputs = {next(iter(shapes)): inputs}
            unknown = [k for k in inputs if k not in shapes]
            missing = [k for k in shapes if k not in inputs]
            if unknown or missing:
                raise ProtonetError(f"inputs: " + "; ".join(
                    ([f"no model input named {', '.join(map(repr, unknown))}"] if unknown else [])
                    + ([f"missing {', '.join(map(repr, missing))}"] if missing else []))
                    + f" (the model's inputs: {', '.join(shapes)})")
            feeds = {k: np.asarray(v) for k, v in inputs.items()}
            src = "inputs"
        check_input_shapes(feeds, shapes, src)
        return feeds

    def run(self, inputs: Inputs, provider: str = "auto") -> dict[str, np.ndarray]:
        """Run the model in onnxruntime: output name -> array (see :meth:`feeds` for ``inputs``)."""
        feeds = self.feeds(inputs)
        sess = self.session(provider)
        self.provider = sess.provider
        return sess.run(feeds)

    def verify(self, inputs: Inputs | None = None, provider: str = "auto", check: bool = False) -> "VerifyResult":
        """Run the model in onnxruntime and the float64 numpy reference on the same inputs
        (default: seeded noise) and compare every blob, as ``protonet verify``. Returns the result
        (``ok``, ``blobs``: one row per blob with its error and tolerance ratio, ``worst``,
        ``provider``); ``check=True`` raises :class:`protonet.VerificationError` on a mismatch."""
        from .pipeline import at_batch, random_inputs, verify_batches, verify_model

        c = self.compiled
        model = self.path if self._proto is not None else self.built
        if c.probe is not None and inputs is None:  # --batch dynamic: at batch 1, 3 and 8
            res = verify_batches(c, model, provider=provider, src=self.path or "model", seed=self.options.seed)
        else:
            feeds = random_inputs(c.graph, self.options.seed) if inputs is None else self.feeds(inputs)
            if c.probe is not None:  # the reference at the batch of the given inputs
                c = at_batch(c, next(iter(feeds.values())).shape[0])
            res = verify_model(c, model, feeds, provider, src=self.path or "model")
        err = mismatch_error(res)
        if check and err is not None:
            raise err
        return res

    def summary(self, optimized: bool = True) -> "Summary":
        """Per-layer rows (``layers``: name, type, output shapes, weights, biases, MACs, bytes)
        and totals (``total``) as dataclasses, as ``protonet summary``; ``optimized=False``: of
        the graph before the passes."""
        from .analysis import summarize

        c = self.compiled
        return summarize(c.graph if optimized or c.unoptimized is None else c.unoptimized)

    def draw(self, path: PathLike) -> Path:
        """Write a picture of the net (its graph: optimized when the passes ran) as SVG, PNG or a
        self-contained HTML page by ``path``'s extension, as ``protonet draw``."""
        from .draw import draw

        c = self.compiled
        symbolic = None
        if c.probe is not None:  # --batch dynamic: the batch dimensions drawn as N
            from .dynamic import symbolic_dims

            probe = c.probe.values
            symbolic = {name: symbolic_dims(v.shape, probe[name].shape) for name, v in c.graph.values.items()
                        if name in probe}
        return draw(c.graph, path, self.summary(), inputs=[self.net, self.options.weights, self.path],
                    symbolic=symbolic)


    def reduce_precision(self, precision: str, calibrate: PathLike | None = None, *, holdout: int | None = None,
                         min_agreement: float = 0.99, min_sqnr: float = 20.0, det_threshold: float = 0.5,
                         force: bool = False, int8_activations: str = "uint8",
                         calibration_method: str = "minmax") -> tuple["Model", "AccuracyReport"]:
        """An ``"int8"`` or ``"fp16"`` copy of this compiled model and its accuracy against this one,
        measured on inputs held back from calibration (``calibrate``: a folder of images or an .npz)
        and gated, as ``compile --precision`` (:mod:`protonet.quantize`): a failed gate raises
        VerificationError unless ``force``."""
        from .quantize import Gate, Int8Options, compile_precision

        red = compile_precision(self.compiled, self.built, precision, None if calibrate is None else str(calibrate),
                                Gate(min_agreement, min_sqnr, det_threshold), holdout,
                                Int8Options(int8_activations, calibration_method), force, self.options.seed)
        m = Model(proto=red.model)
        m.net, m.options = self.net, self.options
        return m, red.report

    def embed_preprocess(self, image_size: int | tuple[int, int] | None = None) -> "Model":
        """A copy of this compiled model with its preprocessing in the graph (as ``compile
        --embed-preprocess``, :mod:`protonet.embed`): the input takes a uint8 RGB image, N×H×W×C, of
        any size, or of ``image_size`` (H, W; one number for a square) when given."""
        from .embed import embed_preprocess

        if self.preprocess is None:
            raise ProtonetError("embed_preprocess: the model carries no preprocessing (compile it with mean=, "
                                "scale=, resize=, ...)")
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        m = Model(proto=embed_preprocess(self.built, self.preprocess, size).to_model())
        m.net, m.options = self.net, self.options
        return m

def mismatch_error(res: "VerifyResult") -> VerificationError | None:
    """The error a verification with a mismatch raises (None when every blob is within tolerance)."""
    if res.ok:
        return None
    bad = [b.name for b in res.blobs if not b.ok]
    return VerificationError(f"{len(bad)} blob(s) differ beyond tolerance: {', '.join(bad[:10])}")


# -- input files ---------------------------------------------------------------------------------

def read_inputs(spec: str, names: list[str], shapes: Mapping[str, tuple[int, ...]], meta: "Preprocess | None" = None,
                seed: int = 0, two_stage: "TwoStage | None" = None, source: str | None = None) -> dict[str, np.ndarray]:
    """The input arrays named by ``spec``: an .npy (single input), an .npz (one array per input
    name), an image file (``meta``, the model's Preprocess, applied; a single-input net, or a
    two-stage detector whose im_info input gets the photo's, as `protonet infer` feeds it:
    :func:`protonet.answers.photo_feeds`; ``two_stage``: its outputs, ``source``: the model, for
    the warning when they are not a detector's), or 'random'. An array's header (dtype, shape)
    is checked against the model before its data is read."""
    if spec == "random":
        rng = np.random.default_rng(seed)
        shapes = {n: (1,) + tuple(shapes[n][1:]) if shapes[n] and shapes[n][0] <= 0 else shapes[n] for n in names}
        dynamic = [n for n in names if any(d <= 0 for d in shapes[n])]  # a dynamic batch runs at 1
        if dynamic:
            raise ProtonetError(f"input '{dynamic[0]}' has a dynamic shape {shapes[dynamic[0]]}: give an input file")
        return {n: rng.standard_normal(shapes[n]).astype(np.float32) for n in names}
    path = Path(spec)
    if not is_regular_file(path):
        raise ProtonetError(f"{spec}: no such input file" if not path.exists() else f"{spec}: not a regular file")
    note_input(path)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        image = [n for n in names if n != answers.im_info_input(shapes)]
        if len(image) != 1:
            raise ProtonetError(f"{spec}: an image can feed a single-input net (or a two-stage detector's) only")
        return answers.photo_feeds(path, shapes, image[0], shapes[image[0]], meta, two_stage, source or spec)[0]
    if suffix not in (".npy", ".npz"):
        raise ProtonetError(f"{spec}: unknown input format (use .npy, .npz, an image or 'random')")
    try:
        if suffix == ".npy":
            if len(names) != 1:
                raise ProtonetError(f"{spec}: the net has {len(names)} inputs ({', '.join(names)}); give an .npz")
            with open(path, "rb") as f:
                arrays = {names[0]: _read_npy(f, path.stat().st_size, spec, names[0], shapes[names[0]])}
        else:
            with zipfile.ZipFile(path) as z:
                members = {m.filename: m for m in z.infolist()}
                missing = [n for n in names if f"{n}.npy" not in members]
                if missing:
                    other = [n for n in missing if n in members]
                    raise ProtonetError(f"{spec}: no array for input(s) {', '.join(missing)} (has "
                                        f"{', '.join(m.removesuffix('.npy') for m in members) or 'none'})"
                                        + (f"; member {other[0]!r} is not a .npy array" if other else ""))
                arrays = {}
                for n in names:
                    with z.open(members[f"{n}.npy"]) as f:
                        arrays[n] = _read_npy(f, members[f"{n}.npy"].file_size, spec, n, shapes[n])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as e:
        raise ProtonetError(f"{spec}: not a readable numpy {suffix} file of plain arrays: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    for n, x in arrays.items():
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ProtonetError(f"{spec}: array '{n}' holds NaN or infinite values")
        if x.dtype.kind == "f" and np.abs(x).max(initial=0) > np.finfo(np.float32).max:
            raise ProtonetError(f"{spec}: array '{n}' holds values beyond float32's range")
    return arrays


def _read_npy(f: Any, size: int, spec: str, name: str, want: tuple[int, ...]) -> np.ndarray:
    """One .npy stream of ``size`` bytes: its header is checked (a real numeric dtype, the
    model's shape, ``max_array_bytes`` (:mod:`protonet.limits`), the bytes really there) before the data is read."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy format version {version}")
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if dtype.kind not in "biuf" or dtype.hasobject or dtype.fields:
        raise ProtonetError(f"{spec}: array '{name}' has dtype {dtype}; give a real numeric array")
    check_input_shapes({name: shape}, {name: want}, spec)
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    most = limits.current().max_array_bytes
    if nbytes > most:
        raise ProtonetError(f"{spec}: array '{name}' of shape {shape} declares {nbytes:,} bytes, over protonet's "
                            f"limit of {most:,} (raise it with PROTONET_MAX_ARRAY_BYTES)")
    if size - f.tell() < nbytes:
        raise ProtonetError(f"{spec}: array '{name}' of shape {shape} needs {nbytes:,} bytes; the file holds "
                            f"{size - f.tell():,}")
    buf = bytearray(nbytes)
    view, got = memoryview(buf), 0
    while got < nbytes:
        n = f.readinto(view[got:])
        if not n:
            raise ProtonetError(f"{spec}: array '{name}' is truncated ({got:,} of {nbytes:,} bytes)")
        got += n
    return np.frombuffer(buf, dtype).reshape(shape, order="F" if fortran else "C")


def check_input_shapes(feeds: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], src: str) -> None:
    """Every fed array (or shape) has the model's shape (a dimension <= 0 in the model is dynamic)."""
    for n, x in feeds.items():
        want, got = shapes[n], tuple(getattr(x, "shape", x))
        if len(got) != len(want) or any(w > 0 and d != w for d, w in zip(got, want)):
            raise ProtonetError(f"{src}: input '{n}' has shape {got}, the model expects {tuple(want)}"
                                + (" (recompile with --batch)" if got[1:] == tuple(want[1:]) else ""))
