"""The command line, end to end through a subprocess: outputs, exit codes, files."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from protonet import cli
from protonet.layers import registry
from protonet.layers.core import ReLU

ROOT = Path(__file__).resolve().parent.parent
LENET = str(ROOT / "nets" / "lenet.prototxt")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "protonet", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_compile_verify_infer_round_trip(tmp_path: Path):
    out = tmp_path / "lenet.onnx"
    r = run("compile", LENET, "-o", str(out), "--batch", "2")
    assert r.returncode == 0, r.stderr
    assert "filled from their weight_filler" in r.stdout and f"wrote {out}" in r.stdout
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["data"] and [o.name for o in model.graph.output] == ["prob"]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 1, 28, 28]

    r = run("verify", LENET, "--batch", "2")
    assert r.returncode == 0, r.stderr
    assert "verify: OK" in r.stdout and "on CPU" in r.stdout

    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("infer", str(out), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "out.npz"))
    assert r.returncode == 0, r.stderr
    assert "output 'prob': shape (2, 10)" in r.stdout and "top-5" in r.stdout
    with np.load(tmp_path / "out.npz") as z:
        assert z.files == ["prob"]
        np.testing.assert_allclose(z["prob"].sum(axis=1), 1.0, rtol=1e-5)

    # the same net run from its definition gives the same outputs (same seed, same fillers)
    r2 = run("infer", LENET, "--batch", "2", "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o2.npz"))
    assert r2.returncode == 0, r2.stderr
    with np.load(tmp_path / "out.npz") as a, np.load(tmp_path / "o2.npz") as b:
        np.testing.assert_allclose(a["prob"], b["prob"], rtol=1e-5)


def test_infer_rejects_wrong_input_shape(tmp_path: Path):
    out = tmp_path / "lenet.onnx"
    assert run("compile", LENET, "-o", str(out)).returncode == 0
    np.save(tmp_path / "x.npy", np.zeros((3, 1, 28, 28), np.float32))
    r = run("infer", str(out), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o.npz"))
    assert r.returncode == 2
    assert r.stderr.strip().endswith("input 'data' has shape (3, 1, 28, 28), the model expects (1, 1, 28, 28) "
                                     "(recompile with --batch)")
    assert not (tmp_path / "o.npz").exists()


def test_summary_json_totals():
    r = run("summary", LENET, "--format", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    # LeNet: conv1 20*1*25+20, conv2 50*20*25+50, ip1 500*800+500, ip2 10*500+10
    assert data["total"]["params"] == 520 + 25_050 + 400_500 + 5_010
    # MACs: conv1 20*24*24*25, conv2 50*8*8*500, ip1 800*500, ip2 500*10
    assert data["total"]["macs"] == 288_000 + 1_600_000 + 400_000 + 5_000
    assert [row["name"] for row in data["layers"]][:2] == ["data", "conv1"]
    assert data["layers"][1]["output_shapes"] == [[1, 20, 24, 24]]


def test_summary_compare_side_by_side():
    r = run("summary", "--compare", LENET, str(ROOT / "nets" / "squeezenet1_1.prototxt"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["network", "params", "MACs"]
    assert lines[2].startswith("lenet") and lines[3].startswith("squeezenet1_1")


def test_compile_output_selection_and_unknown_blob(tmp_path: Path):
    r = run("compile", LENET, "-o", str(tmp_path / "a.onnx"), "--output", "ip1")
    assert r.returncode == 0, r.stderr
    model = onnx.load(tmp_path / "a.onnx")
    assert [o.name for o in model.graph.output] == ["ip1"]
    assert not any(n.op_type == "Softmax" for n in model.graph.node)
    r = run("compile", LENET, "-o", str(tmp_path / "b.onnx"), "--output", "nope")
    assert r.returncode == 2 and "no blob named 'nope'" in r.stderr
    assert not (tmp_path / "b.onnx").exists()


def test_unknown_pass_is_a_clear_error(tmp_path: Path):
    r = run("compile", LENET, "-o", str(tmp_path / "a.onnx"), "--passes", "fold_batchnorm,squash")
    assert r.returncode == 2 and "squash" in r.stderr and "fold_batchnorm" in r.stderr
    assert "Traceback" not in r.stderr


def test_provider_cuda_without_gpu_is_a_clear_error():
    from protonet.runtime import cuda_available

    if cuda_available():  # on a GPU machine the CUDA run itself is the check
        r = run("verify", LENET, "--provider", "cuda")
        assert r.returncode == 0 and "on CUDA" in r.stdout
    else:
        r = run("verify", LENET, "--provider", "cuda")
        assert r.returncode == 2 and "CUDA execution provider" in r.stderr


def test_layers_lists_every_type():
    r = run("layers", "--format", "names")
    assert r.returncode == 0
    names = set(r.stdout.split())
    assert set(registry.all_types()) == names and {"Convolution", "LSTM", "DetectionOutput"} <= names


class _WrongReLU(ReLU):
    """A deliberately broken lowering: ONNX computes 2*relu(x), the kernel relu(x)."""

    type_name = "WrongReLU"

    def lower(self, a, g):
        y = g.op("Relu", g.inputs)
        g.op("Mul", [y, g.const(2.0, "two")], g.outputs)


def test_verify_mismatch_exits_3(tmp_path: Path, capsys):
    registry.register(_WrongReLU)
    try:
        net = tmp_path / "n.prototxt"
        net.write_text('input: "x"\ninput_shape { dim: 1 dim: 4 }\n'
                       'layer { name: "r" type: "WrongReLU" bottom: "x" top: "y" }\n')
        assert cli.main(["verify", str(net), "--no-optimize"]) == 3
        captured = capsys.readouterr()
        assert "MISMATCH" in captured.out
        assert captured.err.strip() == "protonet: 1 blob(s) differ beyond tolerance: y"
    finally:
        registry.unregister("WrongReLU")


def test_upgrade_command(tmp_path: Path):
    old = tmp_path / "old.prototxt"
    old.write_text('name: "v1"\ninput: "data"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 4\ninput_dim: 4\n'
                   'layers { name: "relu" type: RELU bottom: "data" top: "out" }\n')
    r = run("upgrade", str(old), "-o", str(tmp_path / "new.prototxt"))
    assert r.returncode == 0, r.stderr
    assert "V1" in r.stdout
    r = run("upgrade", str(tmp_path / "new.prototxt"), "-o", str(tmp_path / "again.prototxt"))
    assert "nothing to upgrade" in r.stdout
    assert (tmp_path / "new.prototxt").read_text() == (tmp_path / "again.prototxt").read_text()
    r = run("verify", str(old))
    assert r.returncode == 0 and "upgraded from a legacy format" in r.stdout


@pytest.mark.parametrize("args", [["compile"], ["bogus"], ["verify", LENET, "--batch", "x"]])
def test_usage_errors_exit_2(args):
    r = run(*args)
    assert r.returncode == 2 and "usage:" in r.stderr


TRAIN_VAL = """
name: "tiny_imagenet_style"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { crop_size: 8 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5 }
        data_param { source: "train_lmdb" batch_size: 32 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { crop_size: 8 mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5 }
        data_param { source: "val_lmdb" batch_size: 2 backend: LMDB } }
layer { name: "copy" type: "Split" bottom: "data" top: "data_seen" top: "data_fc" }
layer { name: "fc" type: "InnerProduct" bottom: "data_fc" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include { phase: TEST } }
"""


def test_train_val_compiles_and_infers_on_a_photo(tmp_path: Path):
    from PIL import Image

    (tmp_path / "train_val.prototxt").write_text(TRAIN_VAL)
    r = run("compile", "train_val.prototxt", "-o", "m.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "became Input 'data' of shape (2, 3, 8, 8)" in r.stdout
    model = onnx.load(tmp_path / "m.onnx")
    assert [o.name for o in model.graph.output] == ["data_seen", "loss"]
    assert "protonet.preprocess" in {p.key for p in model.metadata_props}
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "photo.png")
    r = run("infer", "m.onnx", "--input", "photo.png", "-o", "out.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "out.npz") as z:
        seen = z["data_seen"]
        probs = z["loss"]
    # Caffe's test transform of a uniform RGB (10, 20, 30) photo: BGR (30, 20, 10) minus the mean
    # values (104, 117, 123), times scale 0.5
    want = np.array([(30 - 104) * 0.5, (20 - 117) * 0.5, (10 - 123) * 0.5]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(seen, np.broadcast_to(want, (2, 3, 8, 8)))
    assert probs.shape == (2, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_other_opsets_through_the_version_converter(tmp_path: Path):
    outs = {}
    for opset in (17, 18, 21):
        model = tmp_path / f"m{opset}.onnx"
        r = run("compile", str(ROOT / "nets" / "googlenet.prototxt"), "-o", str(model), "--opset", str(opset))
        assert r.returncode == 0, r.stderr
        assert onnx.load(model).opset_import[0].version == opset
        r = run("infer", str(model), "--input", "random", "-o", str(tmp_path / f"o{opset}.npz"))
        assert r.returncode == 0, r.stderr
        with np.load(tmp_path / f"o{opset}.npz") as z:
            outs[opset] = z["prob"]
    np.testing.assert_allclose(outs[18], outs[17], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(outs[21], outs[17], rtol=1e-5, atol=1e-7)
    r = run("compile", LENET, "-o", str(tmp_path / "old.onnx"), "--opset", "5")
    assert r.returncode == 2 and r.stderr.startswith("protonet: cannot convert the model to opset 5")
    assert not (tmp_path / "old.onnx").exists()


@pytest.mark.parametrize("make,message", [
    (lambda p: np.save(p / "x.npy", np.zeros((1, 1, 28, 28), np.complex64)), r"x.npy: array 'data' has dtype complex64"),
    (lambda p: np.save(p / "x.npy", np.full((1, 1, 28, 28), np.nan, np.float32)), r"x.npy: array 'data' holds NaN"),
    (lambda p: (p / "x.npy").write_bytes(b"not numpy"), r"x.npy: not a readable numpy .npy file"),
    (lambda p: (p / "x.npz").write_bytes(b"PK\x03\x04 broken"), r"x.npz: not a readable numpy .npz file"),
    (lambda p: np.savez(p / "x.npz", other=np.zeros(3)), r"x.npz: no array for input\(s\) data \(has other\)"),
])
def test_bad_input_arrays(tmp_path: Path, make, message):
    make(tmp_path)
    name = "x.npz" if (tmp_path / "x.npz").exists() else "x.npy"
    r = run("infer", LENET, "--input", name, "-o", "o.npz", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert re.search(message, r.stderr) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o.npz").exists()


def test_outputs_never_clobber_inputs_or_special_files(tmp_path: Path):
    net = tmp_path / "lenet.prototxt"
    net.write_text(Path(LENET).read_text())
    r = run("compile", "lenet.prototxt", "-o", "lenet.prototxt", cwd=tmp_path)
    assert r.returncode == 2 and "lenet.prototxt: refusing to overwrite an input file" in r.stderr
    assert net.read_text() == Path(LENET).read_text()
    r = run("compile", "lenet.prototxt", "-o", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"{tmp_path}: is a directory"
    r = run("compile", "lenet.prototxt", "-o", "missing/dir/m.onnx", cwd=tmp_path)
    assert r.returncode == 2 and "missing/dir/m.onnx: cannot write: No such file or directory" in r.stderr
    r = run("compile", "lenet.prototxt", "-o", "/dev/null", cwd=tmp_path)
    assert r.returncode == 0 and Path("/dev/null").is_char_device()
    r = run("compile", "lenet.prototxt", "-o", "model.json", cwd=tmp_path)  # binary whatever the suffix
    assert r.returncode == 0
    onnx.checker.check_model(onnx.load(tmp_path / "model.json", format="protobuf"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.prototxt", "model.json"]


def test_malformed_shapes_on_the_command_line(tmp_path: Path):
    for bad in ("1,3,x,4", "data=1,,3", "a=b=1", "data=1,3,0,4", "data=99999999999,1"):
        r = run("compile", LENET, "-o", str(tmp_path / "m.onnx"), "--input-shape", bad)
        assert r.returncode == 2 and "--input-shape" in r.stderr, (bad, r.stderr)
    r = run("compile", LENET, "-o", str(tmp_path / "m.onnx"), "--input-shape", "image=1,1,28,28")
    assert r.returncode == 2 and "--input-shape names 'image', which is not an input of the net" in r.stderr
    assert not (tmp_path / "m.onnx").exists()
