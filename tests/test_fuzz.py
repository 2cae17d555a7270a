"""The fuzzer (tools/fuzz.py): a bounded run with fixed seeds finds no fault, and its
classification catches each kind of fault it claims to (internal error, hang, memory over the
cap, stray output file, changed input)."""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from protonet import cli

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("_fuzz_under_test", ROOT / "tools" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fuzz  # dataclasses look their module up while the file runs
_spec.loader.exec_module(fuzz)

#: cases per target in the default suite (about a minute on two busy cores); seeds fixed
BOUNDED = {"prototxt": 200, "caffemodel": 150, "npz": 40, "image": 40}


@pytest.fixture(scope="module")
def gen():
    return fuzz.Generator()


@pytest.mark.parametrize("target", fuzz.TARGETS)
def test_bounded_fuzz_run_has_no_fault(gen, target):
    rep = fuzz.campaign(gen, target, seed=2026, cases=BOUNDED[target], timeout=60)
    assert rep.cases == BOUNDED[target]
    assert not rep.faults, "\n".join(f"case {i}: {d} [{n}]" for i, d, n in rep.faults)
    assert rep.counts["ok"] > 0 and rep.counts["bad input"] > 0  # the mutations reach both sides


def test_cases_are_reproducible(gen):
    a, b = gen.case("prototxt", 5, 17), gen.case("prototxt", 5, 17)
    assert a.files == b.files and a.argv == b.argv and a.notes == b.notes
    assert gen.case("caffemodel", 5, 17).files != gen.case("caffemodel", 5, 18).files


def _case(tmp_text: str = 'input: "x" input_shape { dim: 1 dim: 2 }\n'
                          'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n') -> "fuzz.Case":
    return fuzz.Case("prototxt", 0, 0, ["compile", "{in}/net.prototxt", "-o", "{out}/out.onnx"],
                     {"net.prototxt": tmp_text.encode()}, "out.onnx")


def _outcome(monkeypatch, command, timeout: float = 30, cap: int = fuzz.MEMORY_CAP) -> "fuzz.Outcome":
    monkeypatch.setitem(cli.COMMANDS, "compile", command)
    return fuzz.run_case(_case(), timeout, cap)


def test_classification(monkeypatch):
    assert fuzz.run_case(_case(), 60).kind == "ok"
    assert fuzz.run_case(_case("layer { name: 3 }"), 60).kind == "bad input"

    def internal(args):
        raise KeyError("boom")
    out = _outcome(monkeypatch, internal)
    assert out.kind == "FAULT" and "exit 1: protonet: internal error: KeyError" in out.detail

    def hang(args):
        time.sleep(30)
    out = _outcome(monkeypatch, hang, timeout=1)
    assert out.kind == "FAULT" and out.detail == "hang (over 1 s)"

    def hog(args):
        return int(np.ones(1 << 31).sum())  # 16 GiB
    out = _outcome(monkeypatch, hog)
    assert out.kind == "FAULT" and out.detail.startswith("memory over the cap (4096 MiB)")

    def stray(args):
        Path(args.out).with_suffix(".tmp").write_text("half")
        raise cli.ProtonetError("refused, but a file stays")
    out = _outcome(monkeypatch, stray)
    assert out.kind == "FAULT" and "left files behind: ['out.tmp']" in out.detail

    def missing(args):
        return 0
    out = _outcome(monkeypatch, missing)
    assert out.kind == "FAULT" and "exit 0 but the output folder holds []" in out.detail

    def overwrite(args):
        Path(args.net).write_text("changed")
        return 2
    out = _outcome(monkeypatch, overwrite)
    assert out.kind == "FAULT" and out.detail == "input file(s) changed: net.prototxt"

    def crash(args):
        os.kill(os.getpid(), 11)
    out = _outcome(monkeypatch, crash)
    assert out.kind == "FAULT" and out.detail.startswith("killed by signal 11")


@pytest.mark.slow
def test_long_fuzz_run(tmp_path):
    """The long mode (benchmarks/fuzz.md has a real run's numbers)."""
    assert fuzz.main(["--cases", "5000", "--seed", "7", "--out", str(tmp_path / "fuzz.md")]) == 0
    assert "0 fault(s)" in (tmp_path / "fuzz.md").read_text()


def test_regression_exp_shift_overflows_to_inf_as_in_caffe(tmp_path):
    """prototxt seed 13 case 4040: Caffe's Exp computes base^shift with pow(), which overflows to
    inf; it was an OverflowError (exit 1)."""
    from protonet.pipeline import compile_net
    from protonet.reference import ReferenceInterpreter

    p = tmp_path / "net.prototxt"
    p.write_text('layer { name: "input0" type: "Input" top: "in0" input_param { shape { dim: 2 dim: 5 } } }\n'
                 'layer { name: "e" type: "Exp" bottom: "in0" top: "out" '
                 'exp_param { base: 2 scale: 0.5 shift: 65536 } }\n')
    c = compile_net(p)
    y = ReferenceInterpreter(c.graph).run({"in0": np.linspace(-3, 3, 10).reshape(2, 5)})["out"]
    assert np.isposinf(y).all()


def test_regression_infer_with_roi_batch_index_out_of_range_is_bad_input(tmp_path, capsys):
    """npz seed 13 case 56: infer (no reference run) of a PSROIPooling net fed ROIs whose batch
    index is outside the batch: onnxruntime's GatherND refuses them; that was exit 1."""
    p = tmp_path / "net.prototxt"
    p.write_text('input: "x" input_shape { dim: 1 dim: 8 dim: 4 dim: 4 }\n'
                 'input: "rois" input_shape { dim: 1 dim: 5 }\n'
                 'layer { name: "ps" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y" '
                 'psroi_pooling_param { spatial_scale: 1 output_dim: 2 group_size: 2 } }\n')
    np.savez(tmp_path / "in.npz", x=np.ones((1, 8, 4, 4), np.float32),
             rois=np.array([[3, 0, 0, 2, 2]], np.float32))
    assert cli.main(["infer", str(p), "--input", str(tmp_path / "in.npz")]) == 2
    assert "onnxruntime refused the input values" in capsys.readouterr().err
