"""onnxruntime sessions: TensorRT or CUDA execution providers when they are available and work,
else CPU; I/O binding and CUDA graphs for benchmarking on the GPU.

The provider actually used is always reported (onnxruntime silently falls back to CPU when
CUDA libraries are missing, so the session's own provider list is what counts).

Preference order of ``auto``: TensorRT (only when its libraries load), CUDA (when a driver is
present), CPU. An explicit ``tensorrt`` or ``cuda`` that cannot start is an error, never a silent
fallback. The CPU provider always ends the list: onnxruntime places there the nodes that a GPU
provider does not implement.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping

import numpy as np

from .errors import InternalError, ProtonetError

log = logging.getLogger(__name__)

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
#: onnxruntime's provider names -> protonet's
SHORT_NAMES = {v: k for k, v in PROVIDERS.items()}
#: what ``--provider`` accepts
PROVIDER_CHOICES = ("auto", "tensorrt", "cuda", "cpu")
#: the GPU providers, in auto's order of preference
GPU_PREFERENCE = ("tensorrt", "cuda")

#: onnxruntime's input type names -> numpy dtypes
ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}

#: CUDA execution provider options: exhaustive cuDNN algorithm search pays off for fixed shapes
CUDA_OPTIONS = {"cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": "1"}


@dataclass(frozen=True)
class GpuOptions:
    """How a GPU session is set up.

    ``cuda_graph``: capture the whole run as one CUDA graph and replay it (CUDA provider option
    ``enable_cuda_graph``, TensorRT's ``trt_cuda_graph_enable``); onnxruntime allows it only for
    fixed shapes with every node on the GPU and inputs and outputs bound on the device
    (:class:`BoundRun`); a session that refuses it is opened again without. ``fp16``: TensorRT
    may build fp16 kernels (``trt_fp16_enable``; an fp16 ONNX model runs as such on CUDA).
    ``trt_cache``: the folder where TensorRT keeps its built engines (building one takes minutes)."""

    cuda_graph: bool = False
    fp16: bool = False
    device_id: int = 0
    trt_cache: str | None = None


def provider_options(name: str, gpu: GpuOptions) -> dict[str, str]:
    """onnxruntime's options for provider ``name`` (tensorrt, cuda or cpu), as strings."""
    flag = {True: "1", False: "0"}
    if name == "cuda":
        opts = dict(CUDA_OPTIONS, device_id=str(gpu.device_id))
        if gpu.cuda_graph:
            opts["enable_cuda_graph"] = "1"
        return opts
    if name == "tensorrt":
        opts = {"device_id": str(gpu.device_id), "trt_fp16_enable": flag[gpu.fp16]}
        if gpu.trt_cache:
            opts.update(trt_engine_cache_enable="1", trt_engine_cache_path=gpu.trt_cache,
                        trt_timing_cache_enable="1", trt_timing_cache_path=gpu.trt_cache)
        if gpu.cuda_graph:
            opts["trt_cuda_graph_enable"] = "1"
        return opts
    if name == "cpu":
        return {}
    raise ProtonetError(f"unknown provider '{name}' ({', '.join(PROVIDER_CHOICES)})")


def provider_chain(provider: str, usable: Collection[str], gpu: GpuOptions = GpuOptions()
                   ) -> list[tuple[str, dict[str, str]]]:
    """The providers handed to onnxruntime for ``--provider``, in order, each with its options.

    ``usable``: the providers that can start here (:func:`usable_providers`). auto: every usable
    GPU provider in :data:`GPU_PREFERENCE` order, then CPU; tensorrt: TensorRT, CUDA when usable
    (for the nodes TensorRT declines), CPU; cuda: CUDA, CPU; cpu: CPU. A GPU provider asked for by
    name that is not usable is an error naming what to install."""
    if provider not in PROVIDER_CHOICES:
        raise ProtonetError(f"unknown provider '{provider}' ({', '.join(PROVIDER_CHOICES)})")
    if provider == "tensorrt" and "tensorrt" not in usable:
        raise ProtonetError("the TensorRT execution provider is not available: it needs onnxruntime-gpu, an "
                            "NVIDIA GPU and TensorRT's libraries (pip install tensorrt)")
    if provider == "cuda" and "cuda" not in usable:
        raise ProtonetError("the CUDA execution provider is not available in this onnxruntime "
                            "(install onnxruntime-gpu on a machine with an NVIDIA GPU: pip install 'protonet[cuda]')")
    names = {"auto": [p for p in GPU_PREFERENCE if p in usable],
             "tensorrt": ["tensorrt"] + (["cuda"] if "cuda" in usable else []),
             "cuda": ["cuda"], "cpu": []}[provider] + ["cpu"]
    return [(PROVIDERS[n], provider_options(n, gpu)) for n in names]


@functools.cache
def _tensorrt_present() -> bool:
    """TensorRT's runtime library loads (from the system, or from the ``tensorrt`` wheels' ``tensorrt_libs``
    folder; loaded once, onnxruntime's TensorRT provider finds it by its soname)."""
    import ctypes
    import importlib.util

    dirs = [""]
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is not None and spec.submodule_search_locations:
        dirs += [d + "/" for d in spec.submodule_search_locations]
    for d in dirs:
        for lib in ("libnvinfer.so.10", "libnvinfer.so", "nvinfer_10.dll"):
            try:
                ctypes.CDLL(d + lib)
                return True
            except OSError:
                continue
    return False


def usable_providers() -> set[str]:
    """The providers that can start here: CPU always; CUDA when onnxruntime has it compiled in and
    a driver is present (:func:`cuda_available`); TensorRT when CUDA is usable, onnxruntime has it
    and TensorRT's libraries load."""
    import onnxruntime as ort

    usable = {"cpu"}
    if cuda_available():
        usable.add("cuda")
        if PROVIDERS["tensorrt"] in ort.get_available_providers() and _tensorrt_present():
            usable.add("tensorrt")
    return usable


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that ``pip install 'protonet[cuda]'`` brought (the nvidia-*
    wheels are not on the loader's path): onnxruntime's own ``preload_dlls`` (1.21 on)."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as e:  # a missing library is reported when the session fails to start
            log.info("onnxruntime.preload_dlls: %s", e)


@dataclass
class Session:
    session: Any
    provider: str  # "tensorrt", "cuda" or "cpu": the first provider of the session
    gpu: GpuOptions = field(default_factory=GpuOptions)  # as the session runs (cuda_graph off if refused)

    @property
    def device(self) -> str:
        """Where the session's inputs and outputs live when bound: 'cuda' or 'cpu'."""
        return "cpu" if self.provider == "cpu" else "cuda"

    @property
    def cuda_graph(self) -> bool:
        return self.provider != "cpu" and self.gpu.cuda_graph

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run with each input cast to the element type the model declares (float32 for protonet's)."""
        names = outputs or self.output_names
        types = {i.name: ORT_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        try:
            res = self.session.run(names, {k: np.ascontiguousarray(v, dtype=types.get(k, np.float32))
                                           for k, v in feeds.items()})
        except Exception as e:  # onnxruntime's own out-of-memory is the machine's limit, not a bug
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "Failed to allocate memory" in first:
                raise MemoryError(first) from None
            if type(e).__name__ == "InvalidArgument":  # shapes and types were checked: the values (indices)
                raise ProtonetError(f"onnxruntime refused the input values: {first}") from None
            raise
        return dict(zip(names, res))


def _driver_present() -> bool:
    """An NVIDIA driver is installed (libcuda loads): without it the CUDA provider cannot work."""
    import ctypes

    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(lib)
            return True
        except OSError:
            continue
    return False


def cuda_available() -> bool:
    """onnxruntime has the CUDA provider compiled in and a GPU driver is present."""
    import onnxruntime as ort

    return PROVIDERS["cuda"] in ort.get_available_providers() and _driver_present()


def make_session(model: Any, provider: str = "auto", threads: int | None = None,
                 optimize: bool = True, gpu: GpuOptions | None = None, profile: str | None = None) -> Session:
    """A session for an ONNX model (ModelProto, Built, bytes or path). ``provider``: auto,
    tensorrt, cuda or cpu (:func:`provider_chain`); ``gpu``: options of the GPU providers;
    ``profile``: a file prefix for onnxruntime's profiler (``SessionOptions.enable_profiling``)."""
    import onnxruntime as ort

    if provider not in PROVIDER_CHOICES:
        raise ProtonetError(f"unknown provider '{provider}' ({', '.join(PROVIDER_CHOICES)})")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    with _model_source(model, mapped=provider == "cpu" or (provider == "auto" and not cuda_available())) as src:
        # a ModelProto or Built comes from protonet's exporter: onnxruntime refusing it is a bug
        return _session(src, provider, so, own=not isinstance(model, (str, bytes, bytearray, Path)),
                        gpu=gpu or GpuOptions())


#: a Built whose large initializers exceed this many bytes reaches a CPU session as a file with
#: external data, which onnxruntime maps instead of copying: from bytes, the bytes, onnxruntime's
#: parsed copy and its tensors each hold the weights (FCN-32s color-HHA, 1.1 GB of weights: a
#: session's peak 3.2 GB from bytes, 1.2 GB from mapped external data, graph optimizations off)
MAP_WEIGHTS_BYTES = 256 << 20


@contextlib.contextmanager
def _model_source(model: Any, mapped: bool = True) -> Iterator[Any]:
    """What onnxruntime loads: the bytes of a ModelProto or of a :class:`protonet.export.Built`
    (serialised once, straight from its arrays), or a path. A Built with more than
    :data:`MAP_WEIGHTS_BYTES` of weights (``mapped``: a CPU session; a GPU session copies the
    weights to the device) or more than one protobuf message holds is written with external
    data to a temporary folder, removed after loading (a mapping outlives the file's name)."""
    from .export import EXTERNAL_DATA_THRESHOLD, Built, write_model

    if isinstance(model, Built) and model.large_bytes > (MAP_WEIGHTS_BYTES if mapped else EXTERNAL_DATA_THRESHOLD):
        with tempfile.TemporaryDirectory(prefix="protonet-") as d:
            write_model(model, Path(d) / "model.onnx", external=True)
            yield str(Path(d) / "model.onnx")
        return
    if isinstance(model, Built):
        yield model.serialize()
    elif hasattr(model, "SerializeToString"):
        yield model.SerializeToString()
    else:
        yield str(model) if not isinstance(model, (bytes, bytearray)) else bytes(model)


#: the metadata key under which a model lists onnxruntime graph transformers to switch off
#: (written by protonet.quantize, whose docstring of ``float_fed_pools`` says why)
DISABLED_OPTIMIZERS_KEY = "protonet.onnxruntime.disabled_optimizers"
#: ModelProto.metadata_props and StringStringEntryProto's key and value (onnx.proto)
_METADATA_FIELD, _KEY_FIELD, _VALUE_FIELD = 14, 1, 2


def disabled_optimizers(src: Any) -> list[str]:
    """The transformers a model asks to switch off (:data:`DISABLED_OPTIMIZERS_KEY`): read from
    a ModelProto's metadata, or from the top-level fields of serialised bytes or a file, without
    parsing the graph (a file is mapped, the graph skipped by its length)."""
    if hasattr(src, "metadata_props"):
        value = next((p.value for p in src.metadata_props if p.key == DISABLED_OPTIMIZERS_KEY), "")
        return [v for v in value.split(",") if v]
    if isinstance(src, (bytes, bytearray)):
        return _scan_disabled(src)
    if isinstance(src, (str, Path)):
        import mmap

        try:
            with open(src, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _scan_disabled(buf)
        except (OSError, ValueError):  # unreadable or empty: onnxruntime says what is wrong
            return []
    return []


def _scan_disabled(buf: Any) -> list[str]:
    from .frontend.wire import LEN, WireError, iter_fields

    try:
        for num, wt, _, start, end in iter_fields(buf, 0, len(buf)):
            if num != _METADATA_FIELD or wt != LEN:
                continue
            entry = {k: bytes(buf[a:b]) for k, w, _, a, b in iter_fields(buf, start, end) if w == LEN}
            if entry.get(_KEY_FIELD) == DISABLED_OPTIMIZERS_KEY.encode():
                return [v for v in entry.get(_VALUE_FIELD, b"").decode("utf-8", "replace").split(",") if v]
    except WireError:  # not an ONNX file: onnxruntime says what is wrong
        pass
    return []


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _session(src: Any, provider: str, so: Any, own: bool = False, gpu: GpuOptions = GpuOptions(),
             usable: Collection[str] | None = None, factory: Callable[..., Any] | None = None) -> Session:
    """Open the session on the first provider of :func:`provider_chain` that starts.

    The fallbacks, in order: a GPU session that refuses the CUDA graph (a node left on the CPU,
    or shapes not fixed) is opened again without it; auto whose GPU providers fail runs on the
    CPU with a warning; an explicit tensorrt or cuda that fails, or whose session came up on
    another provider (onnxruntime's silent fallback when libraries are missing), is an error.
    ``usable`` and ``factory`` (onnxruntime's InferenceSession) are for tests."""
    import onnxruntime as ort

    usable = usable_providers() if usable is None else usable
    factory = factory or ort.InferenceSession
    off = disabled_optimizers(src)
    if off:
        log.debug("onnxruntime transformers switched off as the model asks: %s", ", ".join(off))
        factory = functools.partial(factory, disabled_optimizers=off)
    chain = provider_chain(provider, usable, gpu)
    wanted = SHORT_NAMES[chain[0][0]]
    if wanted != "cpu":
        preload_cuda_libraries()
        ort.set_default_logger_severity(4)  # a failed GPU start is reported once, below, not by ORT
        try:
            for attempt in ([gpu, replace(gpu, cuda_graph=False)] if gpu.cuda_graph else [gpu]):
                chain = provider_chain(provider, usable, attempt)
                try:
                    sess = factory(src, sess_options=so, providers=chain)
                except Exception as e:  # a broken CUDA install, or a refused CUDA graph
                    reason = _first_line(e)
                    if attempt.cuda_graph:
                        log.warning("CUDA graph refused (%s); running without it", reason)
                    continue
                got = SHORT_NAMES.get(sess.get_providers()[0], "cpu")
                if got != "cpu" and (provider == "auto" or got == provider):
                    return Session(sess, got, attempt)
                reason = ("the CUDA or cuDNN libraries onnxruntime needs could not be loaded" if got == "cpu"
                          else f"the session started on {got}")
                break
        finally:
            ort.set_default_logger_severity(2)
        if provider != "auto":
            raise ProtonetError(f"the {'TensorRT' if provider == 'tensorrt' else 'CUDA'} execution provider "
                                f"could not be used: {reason}")
        log.warning("%s execution provider unusable (%s); running on CPU",
                    " and ".join(SHORT_NAMES[n].upper() for n, _ in chain[:-1]), reason)
    try:
        sess = factory(src, sess_options=so, providers=[PROVIDERS["cpu"]])
    except Exception as e:  # a model onnxruntime cannot load: a damaged file, or a bug when protonet made it
        if own:
            raise InternalError(f"onnxruntime cannot load the model protonet built: {_first_line(e)}") from e
        raise ProtonetError(f"onnxruntime cannot load the model: {_first_line(e)}") from None
    return Session(sess, "cpu", replace(gpu, cuda_graph=False))


class BoundRun:
    """A run with its inputs and outputs bound on the session's device (onnxruntime's I/O binding):
    the inputs are copied there once (cast to the types the model declares), outputs of a fixed
    shape get buffers allocated once, so each call runs the model without host transfers, at
    fixed addresses (what a CUDA graph replays). What ``protonet bench`` times."""

    def __init__(self, sess: Session, feeds: Mapping[str, np.ndarray]):
        import onnxruntime as ort

        self.sess = sess
        s = sess.session
        dev, dev_id = sess.device, sess.gpu.device_id if sess.device != "cpu" else 0
        self.binding = s.io_binding()
        self._values: list[Any] = []  # the bound buffers stay alive as long as the binding
        types = {i.name: ORT_TYPES.get(i.type, np.float32) for i in s.get_inputs()}
        for name, x in feeds.items():
            v = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, dtype=types.get(name, np.float32)), dev, dev_id)
            self._values.append(v)
            self.binding.bind_ortvalue_input(name, v)
        self.output_names = [o.name for o in s.get_outputs()]
        for o in s.get_outputs():
            if all(isinstance(d, int) and d >= 0 for d in o.shape):
                v = ort.OrtValue.ortvalue_from_shape_and_type(list(o.shape), ORT_TYPES.get(o.type, np.float32),
                                                              dev, dev_id)
                self._values.append(v)
                self.binding.bind_ortvalue_output(o.name, v)
            else:
                self.binding.bind_output(o.name, dev, dev_id)
        self.binding.synchronize_inputs()

    def __call__(self) -> None:
        """One run; returns when its outputs are complete on the device."""
        self.sess.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()

    def outputs(self) -> dict[str, np.ndarray]:
        """The outputs of the last run, copied to the host."""
        return dict(zip(self.output_names, self.binding.copy_outputs_to_cpu()))
