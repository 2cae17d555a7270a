"""Provider selection: CUDA only when it really starts, and the provider used is reported."""
from __future__ import annotations

import logging

import numpy as np
import pytest

import protonet.runtime as rt
from harness import build_text
from protonet.errors import ProtonetError
from protonet.export import export

NET = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 } } }\n'
       'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n')


def test_cpu_provider_runs():
    s = rt.make_session(export(build_text(NET)), "cpu")
    assert s.provider == "cpu"
    y = s.run({"x": np.array([[-1, 2, -3, 4]], np.float32)})["y"]
    np.testing.assert_array_equal(y, [[0, 2, 0, 4]])


def test_cuda_attempt_that_fails_falls_back_and_says_so(monkeypatch, caplog):
    """Pretend a driver is present: where the CUDA provider then cannot start (no GPU or no CUDA
    libraries), auto falls back to the CPU with a warning and cuda is a clear error."""
    really = rt.cuda_available()
    monkeypatch.setattr(rt, "cuda_available", lambda: True)
    model = export(build_text(NET))
    with caplog.at_level(logging.WARNING, logger="protonet.runtime"):
        s = rt.make_session(model, "auto")
    if really:
        assert s.provider == "cuda"
    else:
        assert s.provider == "cpu"
        assert "CUDA execution provider unusable" in caplog.text
        with pytest.raises(ProtonetError, match="CUDA execution provider could not be used"):
            rt.make_session(model, "cuda")


def test_unknown_provider():
    with pytest.raises(ProtonetError, match="unknown provider 'tpu'"):
        rt.make_session(export(build_text(NET)), "tpu")


# -- GPU providers: options and fallbacks, checked without a GPU ------------------------------------

CPU_ONLY = {"cpu"}
ALL = {"cpu", "cuda", "tensorrt"}


def names(chain):
    return [n for n, _ in chain]


def test_provider_chain_order():
    assert names(rt.provider_chain("cpu", ALL)) == ["CPUExecutionProvider"]
    assert names(rt.provider_chain("auto", CPU_ONLY)) == ["CPUExecutionProvider"]
    assert names(rt.provider_chain("auto", {"cpu", "cuda"})) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert names(rt.provider_chain("auto", ALL)) == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                     "CPUExecutionProvider"]
    assert names(rt.provider_chain("cuda", ALL)) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert names(rt.provider_chain("tensorrt", ALL))[0] == "TensorrtExecutionProvider"
    with pytest.raises(ProtonetError, match="TensorRT execution provider is not available"):
        rt.provider_chain("tensorrt", {"cpu", "cuda"})
    with pytest.raises(ProtonetError, match="protonet\\[cuda\\]"):
        rt.provider_chain("cuda", CPU_ONLY)
    with pytest.raises(ProtonetError, match="unknown provider 'gpu'"):
        rt.provider_chain("gpu", ALL)


def test_provider_options():
    plain = dict(rt.provider_chain("cuda", ALL))["CUDAExecutionProvider"]
    assert plain["cudnn_conv_algo_search"] == "EXHAUSTIVE" and "enable_cuda_graph" not in plain
    g = rt.GpuOptions(cuda_graph=True, fp16=True, device_id=1, trt_cache="/tmp/trt")
    chain = dict(rt.provider_chain("auto", ALL, g))
    assert chain["CUDAExecutionProvider"]["enable_cuda_graph"] == "1"
    assert chain["CUDAExecutionProvider"]["device_id"] == "1"
    trt = chain["TensorrtExecutionProvider"]
    assert trt["trt_fp16_enable"] == "1" and trt["trt_cuda_graph_enable"] == "1"
    assert trt["trt_engine_cache_enable"] == "1" and trt["trt_engine_cache_path"] == "/tmp/trt"
    assert dict(rt.provider_chain("tensorrt", ALL))["TensorrtExecutionProvider"]["trt_fp16_enable"] == "0"
    assert chain["CPUExecutionProvider"] == {}
    # every option is a string, as onnxruntime's provider options must be
    assert all(isinstance(v, str) for _, o in rt.provider_chain("auto", ALL, g) for v in o.values())


class FakeSession:
    def __init__(self, providers):
        self._p = providers

    def get_providers(self):
        return self._p


class FakeOrt:
    """Plays onnxruntime's InferenceSession: ``behave(chain)`` says what opening with ``chain`` does."""

    def __init__(self, behave):
        self.behave, self.calls = behave, []

    def __call__(self, src, sess_options, providers):
        self.calls.append([p[0] if isinstance(p, tuple) else p for p in providers])  # the names
        out = self.behave(providers)
        if isinstance(out, Exception):
            raise out
        return FakeSession(out)


def _open(provider, usable, behave, gpu=rt.GpuOptions()):
    import onnxruntime as ort

    fake = FakeOrt(behave)
    s = rt._session(b"", provider, ort.SessionOptions(), gpu=gpu, usable=usable, factory=fake)
    return s, fake.calls


def test_cuda_graph_refused_is_retried_without(caplog):
    def behave(chain):
        cuda = dict(chain)["CUDAExecutionProvider"]
        if cuda.get("enable_cuda_graph") == "1":
            return RuntimeError("This session cannot use the CUDA Graph feature: not all nodes on the CUDA EP")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    with caplog.at_level(logging.WARNING, logger="protonet.runtime"):
        s, calls = _open("cuda", {"cpu", "cuda"}, behave, rt.GpuOptions(cuda_graph=True))
    assert s.provider == "cuda" and not s.cuda_graph and s.device == "cuda" and len(calls) == 2
    assert "CUDA graph refused" in caplog.text
    s, calls = _open("cuda", {"cpu", "cuda"}, lambda c: ["CUDAExecutionProvider"], rt.GpuOptions(cuda_graph=True))
    assert s.cuda_graph and len(calls) == 1


def test_silent_cpu_fallback_is_caught():
    """onnxruntime opens a CUDA-requested session on the CPU when CUDA's libraries are missing:
    cuda is then an error, auto runs on the CPU (with its CPU-only session)."""
    with pytest.raises(ProtonetError, match="CUDA or cuDNN libraries"):
        _open("cuda", {"cpu", "cuda"}, lambda c: ["CPUExecutionProvider"])
    s, calls = _open("auto", {"cpu", "cuda"}, lambda c: ["CPUExecutionProvider"])
    assert s.provider == "cpu" and s.device == "cpu" and calls[-1] == ["CPUExecutionProvider"]


def test_tensorrt_failure_falls_to_cuda_under_auto_only():
    """TensorRT failing to start while CUDA works (onnxruntime moves on to the next provider):
    auto runs on CUDA; an explicit tensorrt is an error."""
    s, _ = _open("auto", ALL, lambda c: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert s.provider == "cuda"
    with pytest.raises(ProtonetError, match="TensorRT execution provider could not be used: the session "
                                            "started on cuda"):
        _open("tensorrt", ALL, lambda c: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    s, _ = _open("tensorrt", ALL, lambda c: ["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    assert s.provider == "tensorrt" and s.device == "cuda"


def test_usable_providers_here():
    usable = rt.usable_providers()
    assert "cpu" in usable and ("cuda" in usable) == rt.cuda_available()
    assert "tensorrt" not in usable or "cuda" in usable


def test_bound_run_matches_plain_run():
    """I/O binding (here on the CPU device): inputs bound once, outputs in preallocated buffers;
    the same results as a plain run, and a second run reuses the buffers."""
    s = rt.make_session(export(build_text(NET)), "cpu")
    x = np.array([[-1, 2, -3, 4]], np.float64)  # cast to the model's float32 when bound
    bound = rt.BoundRun(s, {"x": x})
    bound()
    np.testing.assert_array_equal(bound.outputs()["y"], s.run({"x": x})["y"])
    bound()
    np.testing.assert_array_equal(bound.outputs()["y"], [[0, 2, 0, 4]])


def test_large_weights_reach_onnxruntime_as_mapped_external_data(monkeypatch):
    """Above MAP_WEIGHTS_BYTES a Built is handed over as a file whose weights are external data
    (onnxruntime maps them instead of holding the bytes, its parsed copy and its tensors); the
    session computes what the one loaded from bytes computes, and the folder is gone after."""
    import os

    import onnx

    from protonet.export import build

    net = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 64 } } }\n'
           'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 32 } }\n')
    built = build(build_text(net))
    x = {"x": np.random.default_rng(0).standard_normal((1, 64), np.float32)}
    inline = rt.make_session(built, "cpu").run(x)["y"]
    monkeypatch.setattr(rt, "MAP_WEIGHTS_BYTES", 1000)  # stand-in for 256 MB: fc.weight is 8 KB
    with rt._model_source(built) as src:
        assert isinstance(src, str)
        lazy = onnx.load(src, load_external_data=False)
        assert {t.name for t in lazy.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL} >= {"fc.weight"}
        folder = os.path.dirname(src)
    assert not os.path.exists(folder)
    with rt._model_source(built, mapped=False) as src:  # a GPU session: bytes up to 1.8 GB
        assert isinstance(src, bytes)
    np.testing.assert_array_equal(rt.make_session(built, "cpu").run(x)["y"], inline)
