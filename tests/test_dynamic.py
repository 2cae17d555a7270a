"""--batch dynamic: a symbolic batch dimension, proven by running the one dynamic model at several
batch sizes against the float64 reference built at each (protonet.dynamic)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from protonet.build import BuildOptions
from protonet.dynamic import build_dynamic
from protonet.errors import ProtonetError
from protonet.frontend import load_net
from protonet.pipeline import Compiled, _build, build_model, compile_net, probe_graph, verify_batches
from protonet.runtime import make_session
from test_ssd_head import NET as SSD_NET
from test_triton import run_cli  # noqa: F401  (a fixture: the command line in this process)

ROOT = Path(__file__).resolve().parent.parent
NETS = ROOT / "nets"

#: one net with the layers whose lowering has to leave the batch free: Reshape (-1 inferred over
#: the batch, 0 copied), Flatten, InnerProduct on axis 2, Concat on axis 0, Slice, Crop, Tile,
#: Interp, Upsample with a mask, Power's constant form, ROIPooling and PSROIPooling on an ROI input
#: whose row count follows the batch
SHAPES_NET = """
name: "shapes"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "rois" type: "Input" top: "rois" input_param { shape { dim: 1 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "up" type: "Interp" bottom: "conv" top: "up" interp_param { zoom_factor: 2 } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "conv" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "tile" type: "Tile" bottom: "crop" top: "tile" tile_param { axis: 1 tiles: 2 } }
layer { name: "pool" type: "Pooling" bottom: "tile" top: "pool" top: "mask" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "unpool" type: "Upsample" bottom: "pool" bottom: "mask" top: "unpool" upsample_param { scale: 2 } }
layer { name: "const" type: "Power" bottom: "unpool" top: "const" power_param { power: 1 scale: 0 shift: 0.5 } }
layer { name: "sum" type: "Eltwise" bottom: "unpool" bottom: "const" top: "sum" }
layer { name: "flat" type: "Flatten" bottom: "sum" top: "flat" }
layer { name: "rows" type: "Reshape" bottom: "flat" top: "rows" reshape_param { shape { dim: -1 dim: 64 } } }
layer { name: "keep" type: "Reshape" bottom: "sum" top: "keep" reshape_param { shape { dim: 0 dim: 4 dim: -1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "keep" top: "ip" inner_product_param { num_output: 5 axis: 2 } }
layer { name: "slice" type: "Slice" bottom: "ip" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 1 } }
layer { name: "both" type: "Concat" bottom: "s2" bottom: "s2" top: "both" concat_param { axis: 0 } }
layer { name: "roi" type: "ROIPooling" bottom: "conv" bottom: "rois" top: "roi" roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 1 } }
layer { name: "ps" type: "PSROIPooling" bottom: "tile" bottom: "rois" top: "ps" psroi_pooling_param { spatial_scale: 1 output_dim: 4 group_size: 2 } }
"""


def compile_text(text: str, **kw) -> Compiled:
    """--batch dynamic on a net given as text (the compile_net path after loading)."""
    loaded = load_net("net.prototxt", text=text)
    c = _build(loaded, None, BuildOptions(batch=1, dynamic_batch=True, init="random"), True, None, None,
               "net.prototxt")
    c.probe = probe_graph(c)
    return c


def dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_symbolic_dims_named_for_the_batch():
    c = compile_text(SHAPES_NET)
    g = build_model(c).structure.graph
    got = {vi.name: dims(vi) for vi in list(g.input) + list(g.output)}
    assert got["data"] == ["N", 3, 8, 8] and got["rois"] == ["N", 5]
    assert got["rows"] == ["N*16", 64]  # 16·8·8 values per image in rows of 64
    assert got["both"] == ["N*2", 3, 5]  # two copies concatenated on the batch axis
    assert got["roi"] == ["N", 8, 2, 3] and got["ps"] == ["N", 4, 2, 2]


def test_shapes_net_equals_the_reference_at_each_batch():
    c = compile_text(SHAPES_NET)
    res = verify_batches(c, build_model(c), (1, 3, 8), blobs=False)
    assert res.ok, res.worst.result.describe()
    assert {b.source for b in res.blobs} >= {"model, batch 1", "model, batch 3", "model, batch 8"}
    assert res.outputs["rows"].shape == (8 * 16, 64)


def test_reshape_infers_over_the_batch_by_hand():
    """Caffe's Reshape {-1, 3} of a (N, 2, 3) blob is (2N, 3) in C order: rows of three."""
    c = compile_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 3 } } }\n'
                     'layer { name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: -1 dim: 3 } } }')
    sess = make_session(build_model(c), "cpu")
    x = np.arange(18, dtype=np.float32).reshape(3, 2, 3)
    y = sess.run({"x": x})["y"]
    assert y.shape == (6, 3)
    assert y[5].tolist() == [15.0, 16.0, 17.0]


def test_ssd_head_detection_output_per_image():
    """PriorBox depends on the spatial dims only; DetectionOutput keeps its (1, 1, N·keep_top_k, 7)."""
    c = compile_text(SSD_NET)
    g = build_model(c).structure.graph
    assert dims(g.input[0]) == ["N", 3, 32, 32]
    res = verify_batches(c, build_model(c), (1, 3), blobs=False)
    assert res.ok, res.worst.result.describe()


@pytest.mark.parametrize("net", ["lenet"] + [pytest.param(p.stem, marks=pytest.mark.slow)
                                             for p in sorted(NETS.glob("*.prototxt")) if p.stem != "lenet"])
def test_zoo_net_dynamic(net):
    """Every net of the zoo (all but LeNet behind -m slow; tools/dynamic_zoo.py records them all
    at batch 1, 3 and 8 in benchmarks/dynamic.md)."""
    # well-scaled random weights: under Caffe's fillers deep nets' outputs collapse to a constant
    c = compile_net(NETS / f"{net}.prototxt", options=BuildOptions(dynamic_batch=True, init="random"), optimize=True)
    model = build_model(c)
    assert dims(model.structure.graph.input[0])[0] == "N"
    res = verify_batches(c, model, (1, 3, 8), blobs=False)
    assert res.ok, res.worst.result.describe()


@pytest.mark.slow
@pytest.mark.parametrize("net", sorted((NETS / "detection").glob("*.prototxt")), ids=lambda p: p.stem)
def test_detection_nets_refused_at_the_proposal_layer(net):
    """py-faster-rcnn's Proposal handles one image: the Faster R-CNN and R-FCN nets keep a fixed batch."""
    with pytest.raises(ProtonetError, match=r"\.prototxt:\d+: layer 'proposal' \(Proposal\): --batch dynamic"):
        compile_net(net, options=BuildOptions(dynamic_batch=True), optimize=True)


@pytest.mark.parametrize("text,layer,why", [
    ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }\n'
     'layer { name: "s" type: "Scale" bottom: "x" top: "y" scale_param { axis: 0 } }',
     "s", "its constant 's.scale' differs between batch 1 and 2 (shape (1, 1) vs (2, 1))"),
    ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }\n'
     'layer { name: "am" type: "ArgMax" bottom: "x" top: "y" argmax_param { axis: 0 } }',
     "am", "differs between batch 1 and 2"),
    ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 1 dim: 3 } } }\n'
     'layer { name: "c" type: "Input" top: "c" input_param { shape { dim: 2 dim: 1 } } }\n'
     'layer { name: "rnn" type: "RNN" bottom: "x" bottom: "c" top: "y" recurrent_param { num_output: 2 } }',
     "rnn", "time on axis 0"),
])
def test_batch_dependent_layers_refused_at_the_layer(text, layer, why):
    with pytest.raises(ProtonetError) as e:
        build_model(compile_text(text))
    msg = str(e.value)
    assert msg.startswith("net.prototxt:") and f"layer '{layer}'" in msg and "--batch dynamic" in msg, msg
    assert why in msg, msg




def test_cli_compile_and_infer_any_batch(tmp_path, run_cli):
    out = tmp_path / "lenet.onnx"
    r = run_cli("compile", str(NETS / "lenet.prototxt"), "--batch", "dynamic", "-o", str(out))
    assert r.returncode == 0, r.stderr
    x = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run_cli("infer", str(out), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npz"))
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "y.npz")["prob"].shape == (5, 10)
    r = run_cli("verify", str(out), str(NETS / "lenet.prototxt"), "--batch", "dynamic", "--input",
                str(tmp_path / "x.npy"))
    assert r.returncode == 0 and "5x10" in r.stdout, r.stdout + r.stderr


PROPOSAL_NET = """
layer { name: "scores" type: "Input" top: "scores" input_param { shape { dim: 1 dim: 18 dim: 4 dim: 5 } } }
layer { name: "deltas" type: "Input" top: "deltas" input_param { shape { dim: 1 dim: 36 dim: 4 dim: 5 } } }
layer { name: "info" type: "Input" top: "info" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "proposal" type: "Proposal" bottom: "scores" bottom: "deltas" bottom: "info" top: "rois"
  proposal_param { feat_stride: 16 } }
"""


def test_cli_proposal_net_refused(tmp_path, run_cli):
    net = tmp_path / "rpn.prototxt"
    net.write_text(PROPOSAL_NET)
    r = run_cli("compile", str(net), "--batch", "dynamic", "-o", str(tmp_path / "f.onnx"))
    assert r.returncode == 2
    assert f"{net}:5: layer 'proposal' (Proposal): --batch dynamic" in r.stderr and "one image" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rpn.prototxt"]


def test_build_dynamic_rejects_a_batch_baked_graph():
    """The comparison itself: a graph built at batch 2 where a lowering wrote the batch size is refused."""
    text = 'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }\n' \
           'layer { name: "b" type: "Bias" bottom: "x" top: "y" bias_param { axis: 0 } }'
    with pytest.raises(ProtonetError, match="layer 'b' \\(Bias\\): --batch dynamic"):
        c = compile_text(text)
        build_dynamic(c.graph, c.probe)


def test_api_compile_dynamic_runs_any_batch():
    import protonet

    m = protonet.compile(NETS / "lenet.prototxt", batch="dynamic")
    assert m.inputs == {"data": (-1, 1, 28, 28)} and m.outputs == {"prob": (-1, 10)}
    x = np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32)
    assert m.run(x)["prob"].shape == (4, 10)
    res = m.verify()
    assert res.ok and {b.source for b in res.blobs} >= {"model, batch 1", "model, batch 3", "model, batch 8"}
    assert m.verify({"data": x}).blobs[0].shape == (4, 10)


def test_a_lowering_that_writes_the_batch_into_an_attribute_is_refused(monkeypatch):
    """The comparison sees attributes too: a ReLU lowered with the batch size as its slope."""
    from protonet.layers import registry

    relu = registry.get("ReLU")

    def baked(attrs, g):
        g.op("LeakyRelu", [g.inputs[0]], g.outputs, alpha=float(g.in_shapes[0][0]))

    monkeypatch.setattr(relu, "lower", baked)
    text = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }\n'
            'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
    with pytest.raises(ProtonetError) as e:
        build_model(compile_text(text))
    assert str(e.value) == ("net.prototxt:2: layer 'r' (ReLU): --batch dynamic: the lowering of this layer depends on "
                            "the batch size: its ONNX LeakyRelu node differs between batch 1 and 2 (attribute alpha); "
                            "compile with a fixed --batch N")
