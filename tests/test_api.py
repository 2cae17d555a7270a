"""The Python API (protonet.api): compile / save / run / verify / summary / load / upgrade, its
errors (the CLI's located messages), the README's example as written, and a cheap import."""
from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import protonet
from protonet import cli

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "nets" / "lenet.prototxt"


@pytest.fixture(scope="module")
def lenet():
    return protonet.compile(LENET)


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_prints_what_its_comments_say(tmp_path, monkeypatch):
    """The README's API example, run as written in a folder with lenet.prototxt and a photo:
    every ``print(...)  # text`` line prints exactly ``text`` (LeNet's 431,080 params and 2.293M
    MACs are the hand counts: conv1 20*25+20, conv2 50*20*25+50, ip1 800*500+500, ip2 500*10+10;
    MACs 20*24*24*25 + 50*8*8*500 + 800*500 + 500*10)."""
    code = readme_example()
    expected = [line.split("  # ", 1)[1] for line in code.splitlines()
                if line.lstrip().startswith("print(") and "  # " in line]
    assert len(expected) >= 5
    shutil.copy(LENET, tmp_path / "lenet.prototxt")
    Image.fromarray(np.arange(28 * 28 * 3, dtype=np.uint8).reshape(28, 28, 3), "RGB").save(tmp_path / "digit.png")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().splitlines() == expected
    assert onnx.load(tmp_path / "lenet.onnx").graph.output[0].name == "prob"


def test_save_writes_what_the_cli_writes(lenet, tmp_path):
    """Model.save and ``protonet compile`` write the same bytes."""
    lenet.save(tmp_path / "api.onnx")
    assert cli.main(["compile", str(LENET), "-o", str(tmp_path / "cli.onnx")]) == 0
    assert (tmp_path / "api.onnx").read_bytes() == (tmp_path / "cli.onnx").read_bytes()


def test_run_matches_the_reference_and_a_loaded_model(lenet, tmp_path):
    from protonet.reference import ReferenceInterpreter

    x = np.random.default_rng(3).standard_normal((1, 1, 28, 28)).astype(np.float32)
    y = lenet.run({"data": x})["prob"]
    ref = ReferenceInterpreter(lenet.graph).run({"data": x})["prob"]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-6)
    assert lenet.provider in ("cpu", "cuda")
    lenet.save(tmp_path / "m.onnx")
    loaded = protonet.load(tmp_path / "m.onnx")
    assert loaded.inputs == {"data": (1, 1, 28, 28)} and loaded.outputs == {"prob": (1, 10)}
    np.testing.assert_array_equal(loaded.run(x)["prob"], y)  # one array: the single input


def test_a_loaded_model_with_external_data_saves_whole(lenet, tmp_path):
    """A model whose weights live in a data file beside it (as protonet writes models over 1.8 GB)
    is loaded, saved elsewhere with its weights, and runs there as before."""
    from onnx.external_data_helper import convert_model_to_external_data

    lenet.save(tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    convert_model_to_external_data(model, location="m.onnx.data", size_threshold=0)
    (tmp_path / "ext").mkdir()
    onnx.save(model, tmp_path / "ext" / "m.onnx")
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    want = protonet.load(tmp_path / "ext" / "m.onnx").run(x)["prob"]
    protonet.load(tmp_path / "ext" / "m.onnx").save(tmp_path / "copy.onnx")
    assert not (tmp_path / "copy.onnx.data").exists()
    np.testing.assert_array_equal(protonet.load(tmp_path / "copy.onnx").run(x)["prob"], want)
    np.testing.assert_allclose(want, lenet.run(x)["prob"], rtol=1e-6)


def test_run_rejects_wrong_inputs(lenet):
    with pytest.raises(protonet.ProtonetError, match=r"no model input named 'image'; missing 'data'"):
        lenet.run({"image": np.zeros((1, 1, 28, 28), np.float32)})
    with pytest.raises(protonet.ProtonetError, match=r"has shape \(2, 1, 28, 28\), the model expects "
                                                     r"\(1, 1, 28, 28\) \(recompile with --batch\)"):
        lenet.run(np.zeros((2, 1, 28, 28), np.float32))


TRAIN_VAL = """name: "tv"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.5 mean_value: 1 mean_value: 2 mean_value: 3 }
  data_param { source: "x" batch_size: 1 backend: LMDB } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 1 } }
"""


def test_run_on_a_photo_applies_the_model_preprocessing(tmp_path):
    """A train_val's transform_param travels in the model and is applied to a photo: a 2x2 image
    of one colour (R, G, B) = (11, 22, 33) gives (B - 1, G - 2, R - 3) * 0.5 = (16, 10, 4), BGR."""
    (tmp_path / "tv.prototxt").write_text(TRAIN_VAL)
    Image.new("RGB", (2, 2), (11, 22, 33)).save(tmp_path / "p.png")
    want = np.broadcast_to(np.array([16, 10, 4], np.float32)[None, :, None, None], (1, 3, 2, 2))
    m = protonet.compile(tmp_path / "tv.prototxt", input_shapes={"data": (1, 3, 2, 2)})
    assert m.preprocess is not None and m.preprocess.scale == 0.5
    np.testing.assert_array_equal(m.run(tmp_path / "p.png")["pool"], want)
    m.save(tmp_path / "tv.onnx")
    np.testing.assert_array_equal(protonet.load(tmp_path / "tv.onnx").run(str(tmp_path / "p.png"))["pool"], want)


def test_compile_takes_the_preprocessing_options(tmp_path, caplog):
    """compile(mean=, scale=, channels=) stores the preprocessing as ``protonet compile --mean
    --scale --channels`` does: a one-colour photo (R, G, B) = (11, 22, 33) through mean (1, 2, 3)
    in RGB order and scale 0.5 gives ((R - 1), (G - 2), (B - 3)) * 0.5 = (5, 10, 15)."""
    net = tmp_path / "d.prototxt"
    net.write_text('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 2 dim: 2 }\n'
                   'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 1 } }\n')
    Image.new("RGB", (2, 2), (11, 22, 33)).save(tmp_path / "p.png")
    m = protonet.compile(net, mean=(1, 2, 3), scale=0.5, channels="RGB")
    want = np.broadcast_to(np.array([5, 10, 15], np.float32)[None, :, None, None], (1, 3, 2, 2))
    np.testing.assert_array_equal(m.run(tmp_path / "p.png")["pool"], want)
    m.save(tmp_path / "m.onnx")
    assert cli.main(["compile", str(net), "-o", str(tmp_path / "c.onnx"), "--mean", "1,2,3", "--scale", "0.5",
                     "--channels", "RGB"]) == 0
    assert protonet.load(tmp_path / "m.onnx").preprocess == protonet.load(tmp_path / "c.onnx").preprocess
    with caplog.at_level("WARNING", logger="protonet"):
        raw = protonet.compile(net).run(tmp_path / "p.png")["pool"]
    assert "carries no preprocessing: feeding the raw pixels" in caplog.text
    np.testing.assert_array_equal(raw[0, :, 0, 0], [33, 22, 11])  # BGR, as Caffe reads photos
    with pytest.raises(protonet.ProtonetError, match="give --mean or --mean-file, not both"):
        protonet.compile(net, mean=1, mean_file="m.binaryproto")


def test_verify_returns_rows_and_raises_only_when_asked(lenet, tmp_path):
    """A model whose ip2 weights were changed after compiling is caught: verify returns ok False
    with the output row failing; check=True raises VerificationError (the CLI's exit 3, same text)."""
    res = lenet.verify()
    assert res.ok and {b.name for b in res.blobs} >= {"conv1", "pool2", "ip1", "prob"}
    assert all(b.ratio <= 1 for b in res.blobs)
    lenet.save(tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    init = next(t for t in model.graph.initializer if t.name.startswith("ip2") and len(t.dims) == 2)
    arr = onnx.numpy_helper.to_array(init).copy()
    arr[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, tmp_path / "bad.onnx")
    bad = protonet.load(tmp_path / "bad.onnx", net=LENET)
    res = bad.verify()
    assert not res.ok and [b.name for b in res.blobs if not b.ok][0] == "prob"
    with pytest.raises(protonet.VerificationError) as e:
        bad.verify(check=True)
    assert e.value.exit_code == 3
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["verify", str(tmp_path / "bad.onnx"), str(LENET)]) == 3
    assert err.getvalue().strip() == f"protonet: {e.value}"


def test_loaded_model_needs_its_net_to_verify(lenet, tmp_path):
    lenet.save(tmp_path / "m.onnx")
    m = protonet.load(tmp_path / "m.onnx")
    with pytest.raises(protonet.ProtonetError, match=r"m\.onnx: this needs the net the model was compiled from"):
        m.verify()
    with pytest.raises(protonet.ProtonetError, match="give net= too"):
        protonet.load(tmp_path / "m.onnx", batch=2)
    with pytest.raises(protonet.ProtonetError, match=r"the model's inputs data 1x1x28x28 are not the net's "
                                                     r"data 2x1x28x28"):
        protonet.load(tmp_path / "m.onnx", net=LENET, batch=2).verify()


def test_summary_is_data_and_matches_the_cli_json(lenet, capsys):
    import json

    from protonet.analysis import LayerStats, Totals

    s = lenet.summary()
    assert all(isinstance(r, LayerStats) for r in s.layers) and isinstance(s.total, Totals)
    assert (s.total.params, s.total.macs, s.total.depth) == (431080, 2293000, 4)
    assert cli.main(["summary", str(LENET), "--format", "json", "--optimized"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(s.to_json()))
    assert [r.fused for r in s.layers if r.name == "ip1"] == [["relu1"]]  # the optimizer fused it
    assert cli.main(["summary", str(LENET), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(lenet.summary(optimized=False).to_json()))


def test_errors_are_the_cli_messages(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('input: "x"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                   'layer { name: "c" type: "Convolution" bottom: "x" top: "y"\n'
                   '  convolution_param { num_output: 4 } }\n')
    with pytest.raises(protonet.ProtonetError) as e:
        protonet.compile(bad)
    assert str(e.value).startswith(f"{bad}:3: layer 'c' (Convolution): ")
    assert cli.main(["compile", str(bad), "-o", str(tmp_path / "o.onnx")]) == 2
    assert capsys.readouterr().err.strip() == str(e.value)
    with pytest.raises(protonet.ProtonetError, match="batch: 0 is not a positive integer"):
        protonet.compile(LENET, batch=0)
    with pytest.raises(protonet.ProtonetError, match=r"lenet.onnx: no such file"):
        protonet.load(tmp_path / "lenet.onnx")


def test_upgrade(tmp_path):
    """A V0 definition upgraded through the API equals the checked-in expected upgrade."""
    src = ROOT / "tests" / "data" / "legacy" / "v0_types.prototxt"
    steps = protonet.upgrade(src, tmp_path / "new.prototxt")
    assert steps == ["V0 -> V1 layers", "V1 -> V2 layers"]
    assert protonet.upgrade(tmp_path / "new.prototxt", tmp_path / "again.prototxt") == []  # already current
    from protonet.frontend import read_net

    got = read_net(tmp_path / "new.prototxt").net
    want = read_net(ROOT / "tests" / "data" / "legacy" / "v0_types.expected.prototxt").net
    assert got == want


def test_import_is_cheap_and_exports_are_lazy():
    """``import protonet`` loads neither numpy, onnx, onnxruntime nor protobuf; the API's names
    resolve on first use."""
    code = ("import sys, protonet; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'onnx', 'onnxruntime', 'google', 'PIL')); print(heavy); "
            "print(protonet.compile.__module__, protonet.ProtonetError.__module__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[]", "protonet.api protonet.errors"]
    assert set(protonet.__all__) >= {"compile", "load", "upgrade", "Model", "ProtonetError", "VerificationError"}
    with pytest.raises(AttributeError):
        protonet.nothing_here


def test_package_is_typed():
    assert (ROOT / "protonet" / "py.typed").exists()
    assert '"protonet" = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()
