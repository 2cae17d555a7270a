"""verify proves the artifact: the bytes ``compile`` writes are the model ``verify`` runs (the
network outputs are compared on it; a separate debug export with every blob exposed serves only
the intermediate blobs), ``compile --verify`` does both in one step and writes nothing on a
mismatch, and ``verify MODEL.onnx NET`` checks a model already on disk."""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import numpy_helper

from test_cli import LENET, run
from protonet.build import BuildOptions
from protonet.pipeline import build_model, compile_net, random_inputs, verify_model

ROOT = Path(__file__).resolve().parent.parent

#: a custom layer whose ONNX lowering is 0.05% off its kernel: every verify must catch it
SKEWED_PLUGIN = '''
import numpy as np
from protonet.plugins import CustomOpLayer, register_layer
from protonet.layers.base import Example


@register_layer
class Skewed(CustomOpLayer):
    """Doubles its input; the lowering multiplies by 2.001."""
    type_name = "Skewed"
    examples = (Example('layer { name: "s" type: "Skewed" bottom: "in0" top: "out" }', ((1, 4),)),)

    def infer(self, attrs, shapes, ctx):
        return [shapes[0]]

    def kernel(self, attrs, xs, w):
        return [xs[0] * 2]

    def lower(self, attrs, g):
        g.op("Mul", [g.inputs[0], g.const(np.float32(2.001), "k")], g.outputs)
'''

SKEWED_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 8 } } }
layer { name: "s" type: "Skewed" bottom: "data" top: "s" }
layer { name: "fc" type: "InnerProduct" bottom: "s" top: "fc" inner_product_param { num_output: 3 } }
"""


def test_verify_runs_the_bytes_compile_writes(tmp_path: Path):
    out = tmp_path / "lenet.onnx"
    r = run("compile", LENET, "-o", str(out), "--seed", "3")
    assert r.returncode == 0, r.stderr
    c = compile_net(LENET, options=BuildOptions(seed=3), optimize=True)
    assert build_model(c).serialize() == out.read_bytes()


def test_outputs_are_checked_on_the_artifact_not_the_debug_export():
    c = compile_net(LENET, optimize=True)
    feeds = random_inputs(c.graph)
    good = build_model(c).to_model()
    res = verify_model(c, good.SerializeToString(), feeds, "cpu")
    assert res.ok
    rows = [(b.name, b.source) for b in res.blobs]
    assert ("prob", "model") in rows and ("prob", "unoptimized") in rows  # the output: from the artifact
    assert ("prob", "debug") not in rows and {s for n, s in rows if n != "prob"} == {"debug"}
    # an artifact with one wrong weight: the debug export (built from the graph) is still right,
    # so only the rows measured on the artifact fail
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    init = next(t for t in bad.graph.initializer if t.name.startswith("ip2"))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    res = verify_model(c, bad.SerializeToString(), feeds, "cpu")
    failed = {(b.name, b.source) for b in res.blobs if not b.ok}
    assert failed and {s for _, s in failed} <= {"model", "unoptimized"}, failed


def test_compile_verify_writes_a_verified_model(tmp_path: Path):
    out = tmp_path / "lenet.onnx"
    r = run("compile", LENET, "-o", str(out), "--verify")
    assert r.returncode == 0, r.stderr
    assert "verify: OK" in r.stdout and f"wrote {out}" in r.stdout
    assert "prob (model)" in r.stdout and "worst element" in r.stdout
    assert out.is_file()


def test_compile_verify_mismatch_exits_3_and_writes_nothing(tmp_path: Path):
    plugin = tmp_path / "skewed.py"
    plugin.write_text(SKEWED_PLUGIN)
    net = tmp_path / "skewed.prototxt"
    net.write_text(SKEWED_NET)
    out = tmp_path / "skewed.onnx"
    r = run("--plugin", str(plugin), "compile", str(net), "-o", str(out), "--verify")
    assert r.returncode == 3, r.stdout + r.stderr
    assert not out.exists() and not list(tmp_path.glob(".skewed.onnx*"))
    assert "MISMATCH" in r.stdout and "differ beyond tolerance: s" in r.stderr
    # the worst element, its index and both values are reported
    row = next(line for line in r.stdout.splitlines() if line.startswith("s ") and "MISMATCH" in line)
    assert "[0, " in row and "got " in row and "vs reference " in row
    out.write_bytes(b"previous")  # an existing file is left as it was
    r = run("--plugin", str(plugin), "compile", str(net), "-o", str(out), "--verify")
    assert r.returncode == 3 and out.read_bytes() == b"previous"
    # without --verify the (wrong) model is written, and verify of that file fails
    r = run("--plugin", str(plugin), "compile", str(net), "-o", str(out))
    assert r.returncode == 0, r.stderr
    r = run("--plugin", str(plugin), "verify", str(out), str(net))
    assert r.returncode == 3 and "fc (model)" in r.stdout


def test_verify_a_compiled_model_file(tmp_path: Path):
    out = tmp_path / "lenet.onnx"
    assert run("compile", LENET, "-o", str(out)).returncode == 0
    r = run("verify", str(out), LENET)
    assert r.returncode == 0, r.stderr
    assert "verify: OK" in r.stdout
    # the same net with other weights: the file is not what this net compiles to
    r = run("verify", str(out), LENET, "--seed", "1")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "prob (model)" in r.stdout and "MISMATCH" in r.stdout
    # compiled with other options: a located bad-input error, not a comparison
    r = run("verify", str(out), LENET, "--batch", "2")
    assert r.returncode == 2
    assert f"{out}: the model's inputs data 1x1x28x28 are not the net's data 2x1x28x28" in r.stderr


def test_verify_arguments_are_checked(tmp_path: Path):
    r = run("verify", LENET, LENET)
    assert r.returncode == 2 and "MODEL.onnx and the NET" in r.stderr
    r = run("verify", str(tmp_path / "missing.onnx"), LENET)
    assert r.returncode == 2 and "no such file" in r.stderr


def test_verify_reports_the_tolerance_rule():
    r = run("verify", LENET)
    assert r.returncode == 0, r.stderr
    assert "|onnx - ref| <= 0.0001*rms(ref) + 0.0001*|ref| per element" in r.stdout
    row = next(line for line in r.stdout.splitlines() if line.startswith("prob (model)"))
    assert "1x10" in row and "[0, " in row and "vs reference" in row
