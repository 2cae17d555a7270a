"""sfzhang15/FaceBoxes' PriorBox: a fork's layer of SSD's type name that densifies small anchors.

The fork (github.com/sfzhang15/FaceBoxes, src/caffe/layers/prior_box_layer.cpp at commit b52cc92)
gives a square min box half side (min_size - 1)/2 where SSD's gives min_size/2, writes 4x4 boxes
for min_size 32 (centres shifted by -16, -8, 0, +8 pixels) and 2x2 for min_size 64 (-16, 0), row
by row, and sizes its output for 21 priors per cell whenever a layer has three min_sizes. protonet
reads a net that way when its DetectionOutput's loc bottom fits that rule and not SSD's.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from protonet.errors import LayerContext, Location, ProtonetError
from protonet.export import export
from protonet.frontend import load_net
from protonet.layers.ssd import FACEBOXES, PriorBox, prior_boxes
from protonet.pipeline import compile_net, verify_graph
from protonet.reference import ReferenceInterpreter
from protonet.runtime import make_session
from protonet.build import BuildOptions

CORPUS = Path(os.environ.get("PROTONET_CORPUS", "/work/corpus"))
FACEBOXES_DIR = CORPUS / "sfzhang15__FaceBoxes" / "models" / "faceboxes"

# One cell of a 2x2 feature map of a 64x64 image (step 32, offset 0.5: the cell's centre is
# (16, 16)), min_size 32, 64, 128, in FaceBoxes' order; pixels, divided by 64 below.
#   min 32: half side (32 - 1)/2 = 15.5; centres (16 + 8j, 16 + 8i) for i (rows) and j (columns)
#           in -2..1, i outer: x centres 0, 8, 16, 24, y likewise
#   min 64: half side 31.5; centres (16 + 16j, 16 + 16i), i, j in -1..0: 0 and 16
#   min 128: half side 63.5, one box at the centre (16, 16)
CELL_00_PIXELS = [
    # min 32, row y = 0
    [-15.5, -15.5, 15.5, 15.5], [-7.5, -15.5, 23.5, 15.5], [0.5, -15.5, 31.5, 15.5], [8.5, -15.5, 39.5, 15.5],
    # min 32, row y = 8
    [-15.5, -7.5, 15.5, 23.5], [-7.5, -7.5, 23.5, 23.5], [0.5, -7.5, 31.5, 23.5], [8.5, -7.5, 39.5, 23.5],
    # min 32, row y = 16
    [-15.5, 0.5, 15.5, 31.5], [-7.5, 0.5, 23.5, 31.5], [0.5, 0.5, 31.5, 31.5], [8.5, 0.5, 39.5, 31.5],
    # min 32, row y = 24
    [-15.5, 8.5, 15.5, 39.5], [-7.5, 8.5, 23.5, 39.5], [0.5, 8.5, 31.5, 39.5], [8.5, 8.5, 39.5, 39.5],
    # min 64: (0, 0), (16, 0), (0, 16), (16, 16)
    [-31.5, -31.5, 31.5, 31.5], [-15.5, -31.5, 47.5, 31.5], [-31.5, -15.5, 31.5, 47.5], [-15.5, -15.5, 47.5, 47.5],
    # min 128
    [-47.5, -47.5, 79.5, 79.5],
]
# SSD's rule for the same layer: three boxes per cell, half sides 16, 32, 64 around (16, 16)
SSD_CELL_00_PIXELS = [[0, 0, 32, 32], [-16, -16, 48, 48], [-48, -48, 80, 80]]


def _expected(cell_pixels: list[list[float]], side: int = 2, step: float = 32, image: float = 64) -> np.ndarray:
    """Cell (h, w) is cell (0, 0) moved by (32 w, 32 h) pixels; rows of the map outer, columns inner."""
    cell = np.array(cell_pixels, dtype=np.float64)
    out = [cell + np.array([w * step, h * step, w * step, h * step]) for h in range(side) for w in range(side)]
    return np.concatenate(out).reshape(-1) / image


def _layer(params: str):
    net = load_net("pb.prototxt", text='input: "f" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n'
                   'input: "img" input_shape { dim: 1 dim: 1 dim: 64 dim: 64 }\n'
                   f'layer {{ name: "pb" type: "PriorBox" bottom: "f" bottom: "img" top: "pb" '
                   f'prior_box_param {{ {params} }} }}\n').net
    return net.layer[-1]


def _attrs(params: str, dialects: frozenset[str] = frozenset({FACEBOXES})):
    return PriorBox().parse(_layer(params), LayerContext(Location("pb.prototxt", 3, layer="pb", layer_type="PriorBox"), dialects))


THREE = "min_size: 32 min_size: 64 min_size: 128 clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2"


def test_densified_priors_by_hand():
    a = _attrs(THREE)
    assert a.num_priors == 21
    out = prior_boxes(a, (2, 2), (64, 64))
    assert out.shape == (1, 2, 2 * 2 * 21 * 4)
    np.testing.assert_array_equal(out[0, 0], _expected(CELL_00_PIXELS))  # all binary fractions: exact
    np.testing.assert_array_equal(out[0, 1], np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), 2 * 2 * 21))


def test_ssd_rule_for_the_same_layer_is_unchanged():
    a = _attrs(THREE, frozenset())
    assert a.num_priors == 3
    np.testing.assert_array_equal(prior_boxes(a, (2, 2), (64, 64))[0, 0], _expected(SSD_CELL_00_PIXELS))


def test_clip_and_one_variance_apply_to_the_densified_boxes():
    a = _attrs("min_size: 32 min_size: 64 min_size: 128 clip: true variance: 0.3")
    out = prior_boxes(a, (2, 2), (64, 64))
    np.testing.assert_array_equal(out[0, 0], np.clip(_expected(CELL_00_PIXELS), 0, 1))
    np.testing.assert_allclose(out[0, 1], 0.3)


def test_max_size_follows_the_dense_group_of_its_min_size():
    # the fork: per min_size, its (dense) square boxes, then the sqrt(min*max) box at the cell's
    # centre with half side sqrt/2 (SSD's arithmetic, no -1): 16 + 1, 4 + 1, 1 + 1 = 24 per cell,
    # and the fork sizes its output for 21 + 3 max_sizes = 24
    a = _attrs("min_size: 32 min_size: 64 min_size: 128 max_size: 50 max_size: 100 max_size: 200")
    assert a.num_priors == 24
    cell = prior_boxes(a, (2, 2), (64, 64))[0, 0].reshape(4, 24, 4)[0] * 64  # cell (0, 0), pixels
    half = [np.sqrt(32 * 50) / 2, np.sqrt(64 * 100) / 2, np.sqrt(128 * 200) / 2]
    for index, h in zip((16, 21, 23), half):
        np.testing.assert_allclose(cell[index], [16 - h, 16 - h, 16 + h, 16 + h])
    np.testing.assert_allclose(cell[:16], CELL_00_PIXELS[:16])
    np.testing.assert_allclose(cell[17:21], CELL_00_PIXELS[16:20])
    np.testing.assert_allclose(cell[22], CELL_00_PIXELS[20])


@pytest.mark.parametrize("params, written, sized", [
    ("min_size: 32", 16, 1),  # one min_size: the fork sizes for aspect ratios x min_sizes = 1
    ("min_size: 32 min_size: 64 min_size: 128 aspect_ratio: 2", 27, 21),
    ("min_size: 100 min_size: 200 min_size: 300", 3, 21),
])
def test_a_layer_the_fork_would_overrun_or_leave_unset_is_refused(params, written, sized):
    with pytest.raises(ProtonetError, match=rf"^pb\.prototxt:3: layer 'pb' \(PriorBox\): sfzhang15/FaceBoxes' PriorBox "
                                            rf"would write {written} boxes per cell into an output sized for {sized} "):
        _attrs(params)


def _net(loc_per_cell: int) -> str:
    """A FaceBoxes-shaped head on a 64x64 image: a 2x2 map (min_size 32/64/128) and a 1x1 map
    (min_size 48); ``loc_per_cell`` priors per cell of the first map in the loc/conf convolutions."""
    def branch(src: str, k: str, per_cell: int, prior: str) -> str:
        return f"""
layer {{ name: "{k}_loc" type: "Convolution" bottom: "{src}" top: "{k}_loc"
  convolution_param {{ num_output: {4 * per_cell} kernel_size: 1 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "{k}_loc_perm" type: "Permute" bottom: "{k}_loc" top: "{k}_loc_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{k}_loc_flat" type: "Flatten" bottom: "{k}_loc_perm" top: "{k}_loc_flat" }}
layer {{ name: "{k}_conf" type: "Convolution" bottom: "{src}" top: "{k}_conf"
  convolution_param {{ num_output: {2 * per_cell} kernel_size: 1 weight_filler {{ type: "gaussian" std: 1 }}
    bias_filler {{ type: "constant" value: 0.6 }} }} }}
layer {{ name: "{k}_conf_perm" type: "Permute" bottom: "{k}_conf" top: "{k}_conf_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{k}_conf_flat" type: "Flatten" bottom: "{k}_conf_perm" top: "{k}_conf_flat" }}
layer {{ name: "{k}_priorbox" type: "PriorBox" bottom: "{src}" bottom: "data" top: "{k}_priorbox"
  prior_box_param {{ {prior} variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }} }}"""
    return f"""name: "tiny_faceboxes"
input: "data"
input_shape {{ dim: 1 dim: 3 dim: 64 dim: 64 }}
layer {{ name: "p1" type: "Pooling" bottom: "data" top: "p1" pooling_param {{ pool: AVE kernel_size: 32 stride: 32 }} }}
layer {{ name: "p2" type: "Pooling" bottom: "data" top: "p2" pooling_param {{ pool: AVE kernel_size: 64 stride: 64 }} }}
{branch("p1", "f1", loc_per_cell, "min_size: 32 min_size: 64 min_size: 128")}
{branch("p2", "f2", 1, "min_size: 48")}
layer {{ name: "mbox_loc" type: "Concat" bottom: "f1_loc_flat" bottom: "f2_loc_flat" top: "mbox_loc" }}
layer {{ name: "mbox_conf" type: "Concat" bottom: "f1_conf_flat" bottom: "f2_conf_flat" top: "mbox_conf" }}
layer {{ name: "mbox_priorbox" type: "Concat" bottom: "f1_priorbox" bottom: "f2_priorbox" top: "mbox_priorbox"
  concat_param {{ axis: 2 }} }}
layer {{ name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "mbox_conf" bottom: "mbox_priorbox"
  top: "detection_out"
  detection_output_param {{ num_classes: 2 share_location: true background_label_id: 0
    nms_param {{ nms_threshold: 0.45 top_k: 50 }} code_type: CENTER_SIZE keep_top_k: 10 confidence_threshold: 0.5 }} }}
"""


def _compile(tmp_path: Path, loc_per_cell: int):
    path = tmp_path / "net.prototxt"
    path.write_text(_net(loc_per_cell))
    return compile_net(path, options=BuildOptions(seed=2), optimize=False)


def test_a_net_whose_loc_fits_only_the_forks_rule_is_read_as_faceboxes(tmp_path):
    c = _compile(tmp_path, 21)
    assert c.loaded.dialects == {FACEBOXES}
    notes = [n for n in c.loaded.notes if "FaceBoxes" in n]
    line = next(i for i, text in enumerate(_net(21).splitlines(), 1) if 'name: "f1_priorbox"' in text)
    assert notes == [f"{tmp_path / 'net.prototxt'}:{line}: layer 'f1_priorbox' (PriorBox): read as sfzhang15/FaceBoxes' "
                     f"PriorBox (21 priors per cell for three min_sizes, the anchors of min_size 32 and 64 densified): "
                     f"DetectionOutput 'detection_out' gets predictions for 85 priors, which that fork's rule gives "
                     f"and SSD's (13) does not; every PriorBox of the net follows the fork"]
    feeds = {"data": np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    blobs = ReferenceInterpreter(c.graph).run(feeds, keep_all=True)
    np.testing.assert_array_equal(blobs["f1_priorbox"][0, 0], _expected(CELL_00_PIXELS).astype(np.float32))
    # the 1x1 map's min_size 48 follows the fork too: half side 23.5 around (32, 32)
    np.testing.assert_array_equal(blobs["f2_priorbox"][0, 0], np.array([8.5, 8.5, 55.5, 55.5], np.float32) / 64)
    # onnxruntime runs the exported model as the reference does, blob by blob (the priors included)
    result = verify_graph(c.graph, feeds, provider="cpu")
    assert result.ok, [(b.name, b.result.describe()) for b in result.blobs if not b.ok]
    assert {"f1_priorbox", "mbox_priorbox", "detection_out"} <= {b.name for b in result.blobs}
    got = make_session(export(c.graph), "cpu").run(feeds)
    rows = got["detection_out"].reshape(-1, 7)
    assert (rows[:, 1] == 1).sum() >= 1  # some faces found, as the reference finds them
    np.testing.assert_allclose(rows, blobs["detection_out"].reshape(-1, 7), rtol=1e-5, atol=1e-6)


def test_an_ssd_net_with_three_min_sizes_keeps_ssds_rule(tmp_path):
    c = _compile(tmp_path, 3)
    assert c.loaded.dialects == set() and not any("FaceBoxes" in n for n in c.loaded.notes)
    prior = ReferenceInterpreter(c.graph).run({"data": np.zeros((1, 3, 64, 64), np.float32)}, keep_all=True)
    np.testing.assert_array_equal(prior["f1_priorbox"][0, 0], _expected(SSD_CELL_00_PIXELS).astype(np.float32))
    np.testing.assert_array_equal(prior["f2_priorbox"][0, 0], np.array([8, 8, 56, 56], np.float32) / 64)


def test_a_net_that_fits_neither_rule_keeps_ssds_error(tmp_path):
    with pytest.raises(ProtonetError, match=r"net\.prototxt:\d+: layer 'detection_out' \(DetectionOutput\): bottom 0 "
                                            r"\(loc\) holds 164 values per image; 13 priors × 1 location class\(es\) "
                                            r"× 4 = 52 expected$") as e:
        _compile(tmp_path, 10)
    assert "FaceBoxes" not in str(e.value)


needs_corpus = pytest.mark.skipif(not FACEBOXES_DIR.is_dir(), reason=f"the corpus is not at {CORPUS} (PROTONET_CORPUS)")


@needs_corpus
def test_the_faceboxes_deploy_file_compiles_and_verifies():
    path = FACEBOXES_DIR / "deploy.prototxt"
    c = compile_net(path, options=BuildOptions(seed=0, input_shapes={"data": (1, 3, 160, 120)}))
    assert any(n.startswith(f"{path}:1443: layer 'inception_a3_concat_mbox_priorbox' (PriorBox): read as "
                            f"sfzhang15/FaceBoxes'") for n in c.loaded.notes)
    # 160x120: maps 5x4 (step 32, 21 per cell), 3x2 and 2x1 (one each)
    assert c.graph.node("detection_out").attrs.geometry.num_priors == 5 * 4 * 21 + 3 * 2 + 2 * 1
    feeds = {"data": np.random.default_rng(1).standard_normal((1, 3, 160, 120)).astype(np.float32)}
    assert verify_graph(c.graph, feeds, provider="cpu").ok


@needs_corpus
def test_opencv_reads_the_faceboxes_file_with_ssds_rule_and_stops(tmp_path):
    cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless==4.10.*, the test extra) is not installed")
    from protonet.pipeline import save_caffemodel

    text = (FACEBOXES_DIR / "deploy.prototxt").read_text().replace("dim: 640\n  dim: 480", "dim: 160\n  dim: 120")
    path = tmp_path / "deploy.prototxt"
    path.write_text(text)
    c = compile_net(path, options=BuildOptions(seed=0, init="random"))
    assert c.graph.inputs[0].shape == (1, 3, 160, 120)
    weights = tmp_path / "w.caffemodel"
    save_caffemodel(c.graph, str(weights))
    x = np.random.default_rng(1).standard_normal((1, 3, 160, 120)).astype(np.float32)
    net = cv2.dnn.readNetFromCaffe(str(path), str(weights))
    net.setInput(x)
    with pytest.raises(cv2.error, match=r"numPriors \* _numLocClasses \* 4\) == total\(inputs\[0\], 1\)"):
        net.forward()
    # without its DetectionOutput OpenCV runs the file: the same loc and conf predictions as
    # protonet's, and SSD's priors (3 per cell of the first map: 5x4x3 + 3x2 + 2x1 = 68), where
    # the fork's (and protonet's) are 5x4x21 + 3x2 + 2x1 = 428
    cut = tmp_path / "no_detection_out.prototxt"
    cut.write_text(text[:text.rindex("layer {")])
    net = cv2.dnn.readNetFromCaffe(str(cut), str(weights))
    net.enableFusion(False)
    net.setInput(x)
    names = ["mbox_loc", "mbox_conf", "mbox_priorbox"]
    cv = dict(zip(names, net.forward(names)))
    ours = ReferenceInterpreter(c.graph).run({"data": x}, keep_all=True)
    for name in names[:2]:
        want = ours[name]
        np.testing.assert_allclose(cv[name].reshape(want.shape), want, rtol=1e-4,
                                   atol=1e-4 * float(np.sqrt(np.mean(want ** 2))))
    assert cv["mbox_priorbox"].size == 2 * 68 * 4 and ours["mbox_priorbox"].size == 2 * 428 * 4
    # the cut file has no count to tell: protonet reads it with SSD's rule, as OpenCV does
    plain = compile_net(cut, str(weights))
    assert plain.loaded.dialects == set()
    ssd = ReferenceInterpreter(plain.graph).run({"data": x})["mbox_priorbox"]
    np.testing.assert_allclose(cv["mbox_priorbox"].reshape(ssd.shape), ssd, rtol=0, atol=1e-6)


@needs_corpus
def test_the_faceboxes_train_file_is_refused_as_caffes_test_phase_refuses_it():
    # its only data layer (AnnotatedData) is TRAIN-only and no TEST layer produces 'data': Caffe's
    # TEST-phase Net::Init stops at conv1 too ("Unknown bottom blob 'data'")
    path = FACEBOXES_DIR / "train.prototxt"
    with pytest.raises(ProtonetError, match=r"train\.prototxt:117: layer 'conv1' \(Convolution\): bottom 'data' is not "
                                            r"produced by any earlier layer \(layer 'data' produces it, but not in the "
                                            r"TEST phase\)$"):
        compile_net(path)


PRIORS_ONLY = """name: "priors_only"
input: "data"
input_shape { dim: 1 dim: 3 dim: 64 dim: 64 }
layer { name: "p1" type: "Pooling" bottom: "data" top: "p1" pooling_param { pool: AVE kernel_size: 32 stride: 32 } }
layer { name: "pb" type: "PriorBox" bottom: "p1" bottom: "data" top: "pb"
  prior_box_param { min_size: 32 min_size: 64 min_size: 128 variance: 0.1 } }
"""


def test_the_fork_option_chooses_the_forks_rule_where_no_count_tells(tmp_path, capsys):
    # no DetectionOutput: SSD's rule unless --fork faceboxes says otherwise
    from protonet import cli

    net = tmp_path / "priors.prototxt"
    net.write_text(PRIORS_ONLY)
    feeds = {"data": np.zeros((1, 3, 64, 64), np.float32)}
    plain = compile_net(net)
    assert plain.loaded.dialects == set()
    np.testing.assert_array_equal(ReferenceInterpreter(plain.graph).run(feeds)["pb"][0, 0],
                                  _expected(SSD_CELL_00_PIXELS).astype(np.float32))
    out = tmp_path / "fb.onnx"
    assert cli.main(["compile", str(net), "-o", str(out), "--fork", "faceboxes"]) == 0
    assert "--fork faceboxes: sfzhang15/FaceBoxes' PriorBox" in capsys.readouterr().out
    got = make_session(str(out), "cpu").run(feeds)["pb"]
    np.testing.assert_array_equal(got[0, 0], _expected(CELL_00_PIXELS).astype(np.float32))
    assert cli.main(["compile", str(net), "-o", str(tmp_path / "x.onnx"), "--fork", "ssd-fork"]) == 2
    assert "--fork 'ssd-fork' is not a fork protonet knows; known: faceboxes" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
