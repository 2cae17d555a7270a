"""onnxruntime sessions: the CUDA execution provider when it is available and works, else CPU.

The provider actually used is always reported (onnxruntime silently falls back to CPU when
CUDA libraries are missing, so the session's own provider list is what counts).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .errors import InternalError, ProtonetError

log = logging.getLogger(__name__)

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}

#: CUDA execution provider options: exhaustive cuDNN algorithm search pays off for fixed shapes
CUDA_OPTIONS = {"cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": "1"}


#: onnxruntime's input type names -> numpy dtypes
ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


@dataclass
class Session:
    session: Any
    provider: str  # "cuda" or "cpu"

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
                 optimize: bool = True) -> Session:
    """A session for an ONNX model (ModelProto, Built, bytes or path). ``provider``: auto, cuda or cpu."""
    import onnxruntime as ort

    if provider not in ("auto", "cuda", "cpu"):
        raise ProtonetError(f"unknown provider '{provider}' (auto, cuda or cpu)")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with _model_source(model) as src:
        # a ModelProto or Built comes from protonet's exporter: onnxruntime refusing it is a bug
        return _session(src, provider, so, own=not isinstance(model, (str, bytes, bytearray, Path)))


@contextlib.contextmanager
def _model_source(model: Any) -> Iterator[Any]:
    """What onnxruntime loads: the bytes of a ModelProto or of a :class:`protonet.export.Built`
    (serialised once, straight from its arrays), or a path. A Built too large for one protobuf
    message is written with external data to a temporary folder, removed after loading."""
    from .export import EXTERNAL_DATA_THRESHOLD, Built, write_model

    if isinstance(model, Built) and model.large_bytes > EXTERNAL_DATA_THRESHOLD:
        with tempfile.TemporaryDirectory(prefix="protonet-") as d:
            write_model(model, Path(d) / "model.onnx")
            yield str(Path(d) / "model.onnx")
        return
    if isinstance(model, Built):
        yield model.serialize()
    elif hasattr(model, "SerializeToString"):
        yield model.SerializeToString()
    else:
        yield str(model) if not isinstance(model, (bytes, bytearray)) else bytes(model)


def _session(src: Any, provider: str, so: Any, own: bool = False) -> Session:
    import onnxruntime as ort

    want_cuda = provider in ("auto", "cuda") and cuda_available()
    if provider == "cuda" and not want_cuda:
        raise ProtonetError("the CUDA execution provider is not available in this onnxruntime "
                            "(install onnxruntime-gpu on a machine with an NVIDIA GPU)")
    if want_cuda:
        ort.set_default_logger_severity(4)  # a failed CUDA start is reported once, below, not by ORT
        try:
            sess = ort.InferenceSession(src, sess_options=so, providers=[
                (PROVIDERS["cuda"], CUDA_OPTIONS), PROVIDERS["cpu"]])
            if sess.get_providers()[0] == PROVIDERS["cuda"]:
                return Session(sess, "cuda")
            reason = "the CUDA or cuDNN libraries onnxruntime needs could not be loaded"
        except Exception as e:  # a broken CUDA install
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        finally:
            ort.set_default_logger_severity(2)
        if provider == "cuda":
            raise ProtonetError(f"the CUDA execution provider could not be used: {reason}")
        log.warning("CUDA execution provider unusable (%s); running on CPU", reason)
    try:
        sess = ort.InferenceSession(src, sess_options=so, providers=[PROVIDERS["cpu"]])
    except Exception as e:  # a model onnxruntime cannot load: a damaged file, or a bug when protonet made it
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if own:
            raise InternalError(f"onnxruntime cannot load the model protonet built: {first}") from e
        raise ProtonetError(f"onnxruntime cannot load the model: {first}") from None
    return Session(sess, "cpu")
