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
