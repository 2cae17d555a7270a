"""``protonet export-triton``: a model repository for NVIDIA Triton Inference Server.

Each model becomes ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/model.onnx`` (version 1, with
its external data file beside it when it has one), served by Triton's onnxruntime backend
(platform ``onnxruntime_onnx``). The rules:

- batching (``max_batch`` > 0, the default 8) needs a symbolic first dimension on every input
  and output, the batch (a net compiled with ``--batch dynamic``): the config's ``dims`` are the
  shape without it, and ``dynamic_batching`` lets Triton gather queued requests up to
  ``max_batch`` (preferred sizes: ``max_batch`` and its half; a request waits at most
  ``queue_delay_us``). A model with a fixed batch is refused, saying to recompile it with
  ``--batch dynamic``; ``max_batch`` 0 turns Triton's batching off and the dims are the whole
  shape;
- every other symbolic dimension is ``-1``; element types follow the model (``TYPE_FP32``, and
  ``TYPE_UINT8`` for a model compiled with ``--embed-preprocess``);
- ``instances`` copies of the model run on the CPU or GPU (``instance_group``); on GPU instances
  the TensorRT accelerator of onnxruntime may be asked for (``precision_mode`` FP16 or FP32);
- the repository is written atomically: each model is staged in a hidden folder beside its
  final place and renamed there once every model is staged, so a failure leaves no partial
  model; an existing model folder of the same name is replaced.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import onnx
from google.protobuf import text_encoding

from .errors import Location, ProtonetError

log = logging.getLogger(__name__)

#: ONNX element types -> Triton's DataType names
TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.INT16: "TYPE_INT16", onnx.TensorProto.BFLOAT16: "TYPE_BF16",
}
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
TRT_PRECISIONS = ("fp16", "fp32")
#: a model name is a folder name Triton reads (and a URL path segment in its HTTP API)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class TritonOptions:
    """How Triton serves the models: ``max_batch`` (0: no batching), ``instances`` per model on
    ``kind`` (cpu or gpu), ``tensorrt`` (fp16 or fp32; GPU instances only), ``queue_delay_us``."""

    max_batch: int = 8
    instances: int = 1
    kind: str = "cpu"
    tensorrt: str | None = None
    queue_delay_us: int = 100


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the config declares it."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class RepoModel:
    """One model to write: its repository name, the file it came from, and the model: a
    :class:`protonet.export.Built` or the path of an ``.onnx`` file (copied as it is)."""

    name: str
    source: str
    model: Any


def check_options(opts: TritonOptions) -> None:
    if opts.max_batch < 0 or opts.instances < 1:
        raise ProtonetError(f"--max-batch must be >= 0 and --instances >= 1 (got {opts.max_batch}, {opts.instances})")
    if opts.kind not in KINDS:
        raise ProtonetError(f"--kind {opts.kind!r}: use cpu or gpu")
    if opts.tensorrt is not None and (opts.tensorrt not in TRT_PRECISIONS or opts.kind != "gpu"):
        raise ProtonetError("--tensorrt is the TensorRT accelerator of GPU instances (fp16 or fp32): give --kind gpu"
                            if opts.tensorrt in TRT_PRECISIONS else f"--tensorrt {opts.tensorrt!r}: use fp16 or fp32")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ProtonetError(f"model name {name!r}: use letters, digits, '_', '.' and '-' (not first)")
    return name


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    """The value's dims: ints, and the symbolic ones by name ('' when unnamed)."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def model_io(model: onnx.ModelProto, max_batch: int, src: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The config's inputs and outputs for ``model`` (its structure suffices). With batching,
    the first dimension of each must be symbolic (the batch) and is left out."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    out: list[list[TensorSpec]] = []
    batch_names = {"N", ""}  # protonet's name for the batch, an unnamed dim, and the inputs' own names
    batch_names |= {d[0] for d in map(_dims, g.input) if d and isinstance(d[0], str)}
    for kind, values in (("input", [v for v in g.input if v.name not in inits]), ("output", list(g.output))):
        specs = []
        for v in values:
            elem = v.type.tensor_type.elem_type
            if elem not in TRITON_TYPES:
                raise ProtonetError(f"{kind} '{v.name}' has ONNX element type "
                                    f"{onnx.TensorProto.DataType.Name(elem)}, which Triton's config cannot declare",
                                    Location(src))
            dims = _dims(v)
            if max_batch > 0 and kind == "output" and (not dims or dims[0] not in batch_names):
                raise ProtonetError(
                    f"output '{v.name}' ({'x'.join(str(d) for d in dims) or 'a scalar'}) does not have the batch as "
                    f"its first dimension, and Triton splits every output along it; give --max-batch 0 to serve it "
                    f"unbatched", Location(src))
            if max_batch > 0:
                if not dims or isinstance(dims[0], int):
                    shape = "x".join(str(d or "?") for d in dims) or "a scalar"
                    raise ProtonetError(
                        f"{kind} '{v.name}' has a fixed batch dimension ({shape}); Triton's batching needs a "
                        f"symbolic one: recompile the net with --batch dynamic (or give --max-batch 0 to serve it "
                        f"unbatched)", Location(src))
                dims = dims[1:]
            specs.append(TensorSpec(v.name, TRITON_TYPES[elem], tuple(d if isinstance(d, int) else -1 for d in dims)))
        out.append(specs)
    return out[0], out[1]


def preferred_sizes(max_batch: int) -> list[int]:
    """The batch sizes the dynamic batcher prefers: the largest, and its half when that is > 1
    (onnxruntime's kernels run a full batch best; half keeps latency down at moderate load)."""
    return sorted({max_batch, max_batch // 2} - {0, 1}) or [max_batch]


def _q(text: str) -> str:
    return '"' + text_encoding.CEscape(text, as_utf8=True) + '"'


def _tensor_block(field: str, specs: Sequence[TensorSpec]) -> list[str]:
    lines = [f"{field} ["]
    for i, s in enumerate(specs):
        lines += ["  {", f"    name: {_q(s.name)}", f"    data_type: {s.data_type}"]
        if s.dims:
            lines.append(f"    dims: [ {', '.join(map(str, s.dims))} ]")
        else:  # a batched (N,) tensor: Triton needs one dim, reshaped away for the model
            lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        lines.append("  }" + ("," if i < len(specs) - 1 else ""))
    return lines + ["]"]


def config_text(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], opts: TritonOptions) -> str:
    """The model's ``config.pbtxt`` (Triton's ModelConfig in protobuf text format)."""
    lines = [f"name: {_q(name)}", 'platform: "onnxruntime_onnx"', f"max_batch_size: {opts.max_batch}"]
    lines += _tensor_block("input", inputs) + _tensor_block("output", outputs)
    lines += ["instance_group [", "  {", f"    count: {opts.instances}", f"    kind: {KINDS[opts.kind]}", "  }", "]"]
    if opts.max_batch > 0:
        lines += ["dynamic_batching {", f"  preferred_batch_size: [ {', '.join(map(str, preferred_sizes(opts.max_batch)))} ]",
                  f"  max_queue_delay_microseconds: {opts.queue_delay_us}", "}"]
    if opts.tensorrt is not None:
        lines += ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator: [", "      {",
                  '        name: "tensorrt"',
                  f'        parameters: {{ key: "precision_mode" value: "{opts.tensorrt.upper()}" }}',
                  '        parameters: { key: "max_workspace_size_bytes" value: "1073741824" }',
                  "      }", "    ]", "  }", "}"]
    return "\n".join(lines) + "\n"


def _onnx_structure(path: str) -> onnx.ModelProto:
    try:
        return onnx.load(path, format="protobuf", load_external_data=False)
    except Exception as e:
        raise ProtonetError(f"not an ONNX model: {e}", Location(path)) from None


def _external_files(model: onnx.ModelProto, path: str) -> list[str]:
    """The external data files an ONNX file names (relative paths inside its folder)."""
    names = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            p = Path(loc)
            if not loc or p.is_absolute() or ".." in p.parts:
                raise ProtonetError(f"initializer '{t.name}' keeps its data at {loc!r}, outside the model's folder",
                                    Location(path))
            names.add(loc)
    return sorted(names)


def _stage(m: RepoModel, parent: Path, opts: TritonOptions) -> Path:
    """Write one model's folder under a hidden temporary name in ``parent``; returns it."""
    from .export import write_model

    if isinstance(m.model, (str, os.PathLike)):
        structure = _onnx_structure(str(m.model))
    else:
        structure = m.model.structure
    inputs, outputs = model_io(structure, opts.max_batch, m.source)
    stage = Path(tempfile.mkdtemp(prefix=f".{m.name}.", suffix=".staging", dir=parent))
    version = stage / "1"
    version.mkdir()
    if isinstance(m.model, (str, os.PathLike)):
        src = Path(m.model)
        shutil.copyfile(src, version / MODEL_FILE)
        for rel in _external_files(structure, str(src)):
            (version / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.parent / rel, version / rel)
    else:
        write_model(m.model, version / MODEL_FILE)
    (stage / "config.pbtxt").write_text(config_text(m.name, inputs, outputs, opts))
    return stage


def export_triton(repo: str | os.PathLike[str], models: Sequence[RepoModel], opts: TritonOptions) -> list[Path]:
    """Write ``models`` into the Triton model repository ``repo`` (created when missing); returns
    the model folders. Atomic per repository: every model is staged first, then each staged
    folder is renamed into place (an existing one of the same name goes)."""
    check_options(opts)
    names = [check_name(m.name) for m in models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ProtonetError(f"model name {twice[0]!r} given to more than one model (use --name with one model, or "
                            "rename the files)")
    root = Path(repo)
    if root.exists() and not root.is_dir():
        raise ProtonetError("the repository is not a folder", Location(str(root)))
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    staged: list[Path] = []
    done = False
    try:
        for m in models:
            staged.append(_stage(m, root, opts))
        out = []
        for m, stage in zip(models, staged):
            final = root / m.name
            old = None
            if final.exists() or final.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{m.name}.", suffix=".old", dir=root))
                os.replace(final, old / "model")
            os.replace(stage, final)
            if old is not None:
                shutil.rmtree(old)
            out.append(final)
        done = True
        return out
    finally:
        if not done:
            for stage in staged:
                shutil.rmtree(stage, ignore_errors=True)
            if created and not any(root.iterdir()):
                root.rmdir()
