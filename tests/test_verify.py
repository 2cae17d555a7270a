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


# -- near-ties at an argmax (MAX pooling's mask) ---------------------------------------------------

#: x + z, then 2x2 MAX pooling with its mask, then SegNet's unpooling by that mask. In window 0
#: the sum is 1 at index 0 and 1 + 2**-25 at index 1: float64 keeps the difference (the reference's
#: argmax is 1), float32 rounds it away (a tie: onnxruntime keeps index 0). Window 1 holds 3 at
#: index 2 and 0.5 elsewhere: no tie.
NEAR_TIE_NET = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 4 } } }
layer { name: "z" type: "Input" top: "z" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 4 } } }
layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "z" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool" top: "mask"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "unpool" type: "Upsample" bottom: "pool" bottom: "mask" top: "unpool"
        upsample_param { scale: 2 } }
"""


def _near_tie(tmp_path: Path):
    import numpy as np

    net = tmp_path / "tie.prototxt"
    net.write_text(NEAR_TIE_NET)
    c = compile_net(net, optimize=False)
    x = np.array([[[[1, 1, 0.5, 0.5], [0, 0, 3, 0.5]]]], np.float32)
    z = np.zeros_like(x)
    z[0, 0, 0, 1] = 2.0 ** -25
    return c, {"x": x, "z": z}


def test_a_near_tie_in_a_max_pooling_mask_is_followed(tmp_path: Path):
    import numpy as np

    from protonet.pipeline import verify_graph
    from protonet.reference import ReferenceInterpreter

    c, feeds = _near_tie(tmp_path)
    plain = ReferenceInterpreter(c.graph).run(feeds, keep_all=True)
    assert plain["mask"][0, 0, 0].tolist() == [1, 6]  # float64: 1 + 2**-25 at index 1 wins
    res = verify_graph(c.graph, feeds, "cpu")
    rows = {b.name: b for b in res.blobs}
    assert res.ok, [(b.name, b.result.describe()) for b in res.blobs if not b.ok]
    assert rows["mask"].followed == 1 and res.followed == 1 and rows["unpool"].followed == 0
    # the unpooled blob is compared on onnxruntime's decision: the maximum at index 0
    assert res.outputs["unpool"][0, 0, 0].tolist() == [1, 0, 0, 0]
    assert res.reference["unpool"][0, 0, 0, 0] == 1 + 2.0 ** -25


def test_a_wrong_mask_is_not_taken_for_a_tie(tmp_path: Path, monkeypatch):
    """onnxruntime's mask is replaced: an index at a smaller value of the window (0.5, not 3), an
    index outside the window, a fraction: each is a mismatch, and the reference keeps its own mask."""
    import numpy as np

    from protonet import pipeline
    from protonet.pipeline import verify_graph

    c, feeds = _near_tie(tmp_path)
    take = pipeline._OnnxBlobs.take
    for wrong in (3, 0, 6.5):  # window 1 covers indices 2, 3, 6, 7; its maximum is at 6

        def tampered(self, name, wrong=wrong):
            got = take(self, name)
            if name == "mask":
                got = got.copy()
                got[0, 0, 0, 1] = wrong
            return got

        monkeypatch.setattr(pipeline._OnnxBlobs, "take", tampered)
        res = verify_graph(c.graph, feeds, "cpu")
        failed = {b.name for b in res.blobs if not b.ok}
        assert "mask" in failed and res.followed == 0, wrong
        assert res.reference["unpool"][0, 0, 1, 2] == 3  # the reference's own choice


def test_pooling_follows_only_ties_inside_the_window():
    """Pooling.follow_choice by hand: 2x2 windows, stride 2, on one 2x4 plane."""
    import numpy as np

    from protonet.layers import registry
    from protonet.tolerances import within

    pool = registry.get("Pooling")
    from protonet.layers.core import PoolAttrs
    from protonet.layers.geometry import Window2D

    a = PoolAttrs("MAX", Window2D((2, 2), (2, 2), (0, 0)), True, mask=True, out=(1, 2))
    x = np.array([[[[2.0, 2.0 + 1e-9, 5.0, 1.0], [0.0, 0.0, 1.0, 2.0]]]])
    top, mask = pool.kernel(a, [x], {})
    assert top.ravel().tolist() == [2.0 + 1e-9, 5.0] and mask.ravel().tolist() == [1, 2]
    tie = mask.copy()
    tie[0, 0, 0, 0] = 0  # 2.0 vs 2.000000001: a tie within the tolerance
    out = pool.follow_choice(a, [x], [top, mask], [top, tie], within)
    assert out is not None and out[1].ravel().tolist() == [0, 2] and out[0] is top
    # a smaller value in the window (twice); the tied value 2.0 outside window 0; no index; a
    # fraction; past the plane
    for bad in ((0, 4), (1, 3), (0, 7), (0, -1), (0, 2.5), (1, 8)):
        alt = mask.copy()
        alt[0, 0, 0, bad[0]] = bad[1]
        assert pool.follow_choice(a, [x], [top, mask], [top, alt], within) is None, bad


# -- a Proposal's sort on scores equal within the tolerance ----------------------------------------

#: two anchors (one per cell, 64 px apart: no overlap); the foreground score of cell 1 is
#: 0.5 + 2**-25 + 2**-25: float64 sums it to 0.5 + 2**-24 (the reference ranks cell 1 first),
#: float32 rounds each step back to 0.5 (a tie with cell 0: onnxruntime ranks cell 0 first)
PROPOSAL_TIE_NET = """
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 1 dim: 2 dim: 1 dim: 2 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 1 dim: 2 dim: 1 dim: 2 } } }
layer { name: "c" type: "Input" top: "c" input_param { shape { dim: 1 dim: 2 dim: 1 dim: 2 } } }
layer { name: "deltas" type: "Input" top: "deltas" input_param { shape { dim: 1 dim: 4 dim: 1 dim: 2 } } }
layer { name: "im_info" type: "Input" top: "im_info" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "scores" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "scores" }
layer { name: "proposal" type: "Proposal" bottom: "scores" bottom: "deltas" bottom: "im_info" top: "rois"
        proposal_param { feat_stride: 64 min_size: 1 ratio: 1 scale: 2 post_nms_topn: 2 } }
"""


def _proposal_tie(tmp_path: Path):
    import numpy as np

    net = tmp_path / "proposal.prototxt"
    net.write_text(PROPOSAL_TIE_NET)
    c = compile_net(net, optimize=False)
    a = np.full((1, 2, 1, 2), 0.5, np.float32)
    b = np.zeros_like(a)
    b[0, 1, 0, 1] = 2.0 ** -25
    feeds = {"a": a, "b": b, "c": b.copy(), "deltas": np.zeros((1, 4, 1, 2), np.float32),
             "im_info": np.array([[200, 200, 1]], np.float32)}
    return c, feeds


def test_a_proposal_order_at_a_tie_is_followed(tmp_path: Path):
    from protonet.pipeline import verify_graph
    from protonet.reference import ReferenceInterpreter

    c, feeds = _proposal_tie(tmp_path)
    # the anchor (-8, -8, 23, 23) decoded with zero deltas (centre x1 + w/2 = 8, half width 16:
    # -8 to 24, py-faster-rcnn's bbox_transform_inv) and clipped to the image; cell 1 is 64 px right
    plain = ReferenceInterpreter(c.graph).run(feeds)["rois"]
    assert plain.tolist() == [[0, 56, 0, 88, 24], [0, 0, 0, 24, 24]]  # cell 1 first
    res = verify_graph(c.graph, feeds, "cpu")
    assert res.ok, [(b.name, b.result.describe()) for b in res.blobs if not b.ok]
    assert res.outputs["rois"].tolist() == [[0, 0, 0, 24, 24], [0, 56, 0, 88, 24]]  # cell 0 first
    assert {b.name: b.followed for b in res.blobs}["rois"] == 4 and res.reference["rois"][0, 1] == 0


def test_a_proposal_output_the_kernel_does_not_give_is_a_mismatch(tmp_path: Path, monkeypatch):
    from protonet import pipeline
    from protonet.pipeline import verify_graph

    c, feeds = _proposal_tie(tmp_path)
    take = pipeline._OnnxBlobs.take

    def tampered(self, name):
        got = take(self, name)
        if name == "rois":
            got = got.copy()
            got[1, 3] += 1.0  # one box a pixel wider than the kernel makes it on these inputs
        return got

    monkeypatch.setattr(pipeline._OnnxBlobs, "take", tampered)
    res = verify_graph(c.graph, feeds, "cpu")
    assert "rois" in {b.name for b in res.blobs if not b.ok} and res.followed == 0


def test_verify_in_chunks_compares_every_blob_the_same(monkeypatch):
    """onnxruntime's blobs fetched a few at a time (each chunk its own cut of the graph) give the
    same rows as one run with every blob."""
    from protonet import pipeline
    from protonet.pipeline import verify_graph

    c = compile_net(LENET, optimize=False)
    feeds = random_inputs(c.graph)
    whole = verify_graph(c.graph, feeds, "cpu")
    runs = []
    real = pipeline._OnnxBlobs._run
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 1)  # one blob per chunk
    monkeypatch.setattr(pipeline._OnnxBlobs, "_run", lambda self, names: runs.append(names) or real(self, names))
    chunked = verify_graph(c.graph, feeds, "cpu")
    assert len(runs) == len(whole.blobs) > 5 and all(len(r) == 1 for r in runs)
    assert [(b.name, b.ratio) for b in chunked.blobs] == [(b.name, b.ratio) for b in whole.blobs]
    assert chunked.ok


#: x + 1e5 (float32 rounds it to 2^-7, about 0.004 of x's spread), then SegNet's BN in LEARN
#: mode, which divides the deviations by their spread: the rounding comes out 1e5 / 1 times larger
#: relative to the top than to the bottom
_ILL = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }\n'
        'layer { name: "far" type: "Power" bottom: "x" top: "far" power_param { shift: 100000 } }\n'
        'layer { name: "bn" type: "BN" bottom: "far" top: "y" bn_param { '
        'scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0 } } }\n')


def _ill_conditioned():
    import numpy as np

    from harness import build_text

    return build_text(_ILL), {"x": np.random.default_rng(5).standard_normal((1, 2, 4, 4)).astype(np.float32)}


def test_an_ill_conditioned_layer_is_checked_on_onnxruntime_bottoms():
    """The BN top differs from the float64 reference by many tolerances (the float32 rounding of
    x + 1e5, amplified), while the kernel on onnxruntime's own bottom gives onnxruntime's top: the
    reference continues with it, and the bottom is compared on its own (and passes)."""
    from protonet.pipeline import verify_graph
    from protonet.reference import ReferenceInterpreter
    from protonet.tolerances import compare

    g, feeds = _ill_conditioned()
    res = verify_graph(g, feeds, "cpu")
    assert res.ok, [(b.name, b.result.describe()) for b in res.blobs if not b.ok]
    rows = {b.name: b for b in res.blobs}
    assert rows["y"].followed > 0 and rows["far"].followed == 0 and rows["far"].ratio < 0.1
    plain = ReferenceInterpreter(g).run(feeds)["y"]
    assert compare(res.outputs["y"], plain).ratio > 10  # what an end-to-end comparison would say


def test_an_ill_conditioned_top_the_kernel_does_not_give_is_a_mismatch(monkeypatch):
    from protonet import pipeline
    from protonet.pipeline import verify_graph

    g, feeds = _ill_conditioned()
    take = pipeline._OnnxBlobs.take

    def tampered(self, name):
        got = take(self, name)
        if name == "y":
            got = got.copy()
            got[0, 1, 2, 3] += 0.01  # one value off what the layer computes from onnxruntime's bottom
        return got

    monkeypatch.setattr(pipeline._OnnxBlobs, "take", tampered)
    res = verify_graph(g, feeds, "cpu")
    assert "y" in {b.name for b in res.blobs if not b.ok} and res.followed == 0
