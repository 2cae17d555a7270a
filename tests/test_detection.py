"""Two-stage detector layers with hand-checked cases: py-faster-rcnn's proposal layer (anchors,
decoding, clipping, min-size, NMS and its order), known Python layers by name (and every other
Python layer refused), Python data layers as inputs, and R-FCN's PSROIPooling."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from harness import build_text
from protonet.errors import ProtonetError, UnsupportedError
from protonet.export import export
from protonet.layers.detection import (clip_boxes, decode_boxes, generate_anchors, min_size_keep, nms_order,
                                       psroi_bins)
from protonet.reference import ReferenceInterpreter
from protonet.runtime import make_session

# generate_anchors() as py-faster-rcnn prints it (lib/rpn/generate_anchors.py; the MATLAB
# values in its comment are these plus one on x1/y1 and plus one on x2/y2)
PUBLISHED_ANCHORS = [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                     [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                     [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]]


def test_anchors_are_the_published_nine():
    np.testing.assert_array_equal(generate_anchors(), np.array(PUBLISHED_ANCHORS, dtype=float))


def test_anchor_sizes_round_half_to_even():
    # ratio 0.5 of a 16 px window: width round(sqrt(512)) = 23, height round(11.5) = 12 (to even)
    a = generate_anchors(16, [0.5], [1])
    assert (a[0, 2] - a[0, 0] + 1, a[0, 3] - a[0, 1] + 1) == (23, 12)


def test_decoding_with_the_plus_one_width():
    # anchor (0, 0, 15, 15): w = h = 16, centre (8, 8); dx 0.5 -> cx 16, dy -0.25 -> cy 4,
    # dw ln 2 -> w 32, dh 0 -> h 16; corners centre -/+ half the size
    box = decode_boxes(np.array([[0, 0, 15, 15]], np.float32), np.array([[0.5, -0.25, np.log(2), 0]], np.float32))
    np.testing.assert_allclose(box, [[0, -4, 32, 12]], atol=1e-5)


def test_clip_to_image_minus_one():
    boxes = np.array([[-5, -5, 30, 30], [3, 4, 5, 6]], np.float32)
    np.testing.assert_array_equal(clip_boxes(boxes, 10, 20), [[0, 0, 19, 9], [3, 4, 5, 6]])


def test_min_size_counts_plus_one_and_scales_by_im_info():
    boxes = np.array([[0, 0, 14, 30], [0, 0, 15, 15], [0, 0, 31, 31]], np.float32)
    assert min_size_keep(boxes, 16, 1.0).tolist() == [False, True, True]  # width 15 < 16
    assert min_size_keep(boxes, 16, 2.0).tolist() == [False, False, True]  # threshold 32


def test_nms_keeps_an_overlap_equal_to_the_threshold():
    # IoU of (0,0,9,9) and (0,0,9,6) is 70/100 = 0.7 exactly: the GPU rule (IoU > 0.7) keeps it
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 6], [1, 1, 9, 9]], np.float32)
    assert nms_order(boxes, 0.7) == [0, 1]  # box 2: IoU 81/100 with box 0
    assert nms_order(boxes, 0.69) == [0]
    assert nms_order(boxes, 0.7, limit=1) == [0]


PROPOSAL_NET = """
layer {{ name: "in" type: "Input" top: "cls_prob" top: "bbox_pred" top: "im_info"
  input_param {{ shape {{ dim: 1 dim: 18 dim: 1 dim: 1 }} shape {{ dim: 1 dim: 36 dim: 1 dim: 1 }}
                shape {{ dim: 1 dim: 3 }} }} }}
{layer}
"""
PY_PROPOSAL = """layer { name: "proposal" type: "Python" bottom: "cls_prob" bottom: "bbox_pred" bottom: "im_info"
  top: "rois" top: "scores"
  python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "'feat_stride': 16" } }"""
CV_PROPOSAL = """layer { name: "proposal" type: "Proposal" bottom: "cls_prob" bottom: "bbox_pred" bottom: "im_info"
  top: "rois" top: "scores" proposal_param { feat_stride: 16 } }"""


def _run_both(graph, feeds):
    ref = ReferenceInterpreter(graph).run(feeds)
    got = make_session(export(graph), "cpu").run(feeds)
    return ref, got


def _proposal_feeds(fg, scale=1.0):
    scores = np.concatenate([1 - np.asarray(fg, np.float32), np.asarray(fg, np.float32)]).reshape(1, 18, 1, 1)
    return {"cls_prob": scores, "bbox_pred": np.zeros((1, 36, 1, 1), np.float32),
            "im_info": np.array([[100, 100, scale]], np.float32)}


@pytest.mark.parametrize("layer", [PY_PROPOSAL, CV_PROPOSAL], ids=["python_param", "proposal_param"])
def test_proposal_by_hand(layer):
    """One cell, the nine anchors, zero deltas. bbox_transform_inv's centre x1 + 0.5·(x2 − x1 + 1)
    moves a box by half a pixel, so zero deltas give (x1, y1, x2 + 1, y2 + 1), then clipped to the
    100 x 100 image. Scores 0.1, 0.9, 0.8, ... 0.2 for anchors 0..8. By hand: anchor 1
    (0,0,99,99) first; 2, 4, 5, 8 are the same box (IoU 1) and 7 (0,0,96,99) overlaps it by
    0.97; anchor 3 (0,0,72,72) overlaps anchor 1 by 0.533; 6 (0,0,52,96) by 0.514 and 0.586;
    0 (0,0,99,56) by 0.57, 0.606, 0.386: kept in score order 1, 3, 6, 0."""
    graph = build_text(PROPOSAL_NET.format(layer=layer))
    assert [n.type for n in graph.nodes][-1] == "Proposal"
    assert graph.values["rois"].shape == (300, 5) and graph.values["scores"].shape == (300, 1)
    feeds = _proposal_feeds([0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    want = np.zeros((300, 5), np.float32)
    want[:4, 1:] = [[0, 0, 99, 99], [0, 0, 72, 72], [0, 0, 52, 96], [0, 0, 99, 56]]
    for out in _run_both(graph, feeds):
        np.testing.assert_allclose(out["rois"], want, atol=1e-4)
        np.testing.assert_allclose(out["scores"][:, 0], [0.9, 0.7, 0.4, 0.1] + [0] * 296, atol=1e-6)


def test_proposal_equal_scores_keep_anchor_order():
    """All scores equal: candidates in anchor order (0, 1, 2, ...); 0 and 1 overlap by 0.57, so
    both stay; 3 and 6 stay as above; the rest are suppressed."""
    graph = build_text(PROPOSAL_NET.format(layer=PY_PROPOSAL))
    for out in _run_both(graph, _proposal_feeds([0.5] * 9)):
        np.testing.assert_allclose(out["rois"][:4, 1:], [[0, 0, 99, 56], [0, 0, 99, 99], [0, 0, 72, 72],
                                                         [0, 0, 52, 96]], atol=1e-4)
        assert not out["rois"][4:].any()


def test_proposal_min_size_scaled_by_im_info():
    """im_info scale 3.5625: boxes need sides (x2 − x1 + 1) >= 57; anchor 6 (53 wide) goes,
    anchor 0 (57 high) stays."""
    graph = build_text(PROPOSAL_NET.format(layer=PY_PROPOSAL))
    for out in _run_both(graph, _proposal_feeds([0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], scale=3.5625)):
        np.testing.assert_allclose(out["rois"][:3, 1:], [[0, 0, 99, 99], [0, 0, 72, 72], [0, 0, 99, 56]],
                                   atol=1e-4)
        assert not out["rois"][3:].any()


def test_proposal_random_map_matches_on_valid_rows():
    """A 12 x 10 map, six anchors, random scores and deltas, pre-NMS 200, post-NMS 50: the
    reference and onnxruntime return the same proposals in the same order."""
    layer = CV_PROPOSAL.replace('top: "scores" ', "").replace(
        "feat_stride: 16", "feat_stride: 8 scale: 2 scale: 4 pre_nms_topn: 200 post_nms_topn: 50")
    text = (PROPOSAL_NET.replace("dim: 18 dim: 1 dim: 1", "dim: 12 dim: 12 dim: 10")
            .replace("dim: 36 dim: 1 dim: 1", "dim: 24 dim: 12 dim: 10").format(layer=layer))
    graph = build_text(text)
    assert graph.values["rois"].shape == (50, 5)
    rng = np.random.default_rng(5)
    feeds = {"cls_prob": rng.uniform(size=(1, 12, 12, 10)).astype(np.float32),
             "bbox_pred": (0.2 * rng.standard_normal((1, 24, 12, 10))).astype(np.float32),
             "im_info": np.array([[90, 75, 0.5]], np.float32)}
    ref, got = _run_both(graph, feeds)
    valid = ref["rois"][:, 3] > 0
    assert 20 <= valid.sum() <= 50
    np.testing.assert_allclose(got["rois"][valid], ref["rois"][valid], rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(got["rois"][~valid], 0)


def test_proposal_agrees_with_opencv(tmp_path):
    """OpenCV 4.10's own Proposal layer (a second implementation, built from SSD's PriorBox and
    DetectionOutput) on a random 7 x 6 map: the same proposals in the same order, padded to
    post_nms_topn rows. OpenCV has no min-size filter, so im_info's scale makes it
    non-binding here (16 · 0.01 < 1)."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless==4.10.*, the test extra) is not installed")
    text = ('input: "cls_prob" input_shape { dim: 1 dim: 18 dim: 7 dim: 6 }\n'
            'input: "bbox_pred" input_shape { dim: 1 dim: 36 dim: 7 dim: 6 }\n'
            'input: "im_info" input_shape { dim: 1 dim: 3 }\n'
            'layer { name: "proposal" type: "Proposal" bottom: "cls_prob" bottom: "bbox_pred" bottom: "im_info" '
            'top: "rois" proposal_param { feat_stride: 16 ratio: 0.5 ratio: 1 ratio: 2 scale: 8 scale: 16 scale: 32 '
            'pre_nms_topn: 200 post_nms_topn: 60 } }\n')
    rng = np.random.default_rng(11)
    fg = rng.uniform(size=(1, 9, 7, 6)).astype(np.float32)
    feeds = {"cls_prob": np.concatenate([1 - fg, fg], axis=1),
             "bbox_pred": (0.3 * rng.standard_normal((1, 36, 7, 6))).astype(np.float32),
             "im_info": np.array([[110, 100, 0.01]], np.float32)}
    path = tmp_path / "proposal.prototxt"
    path.write_text(text)
    net = cv2.dnn.readNetFromCaffe(str(path))
    for name, value in feeds.items():
        net.setInput(value, name)
    theirs = net.forward("proposal")
    ours = ReferenceInterpreter(build_text(text)).run(feeds)["rois"]
    assert ours.shape == theirs.shape == (60, 5)
    valid = ours[:, 3] > 0
    assert 15 <= valid.sum() < 60
    np.testing.assert_allclose(ours, theirs, atol=1e-4)  # 41 proposals here, 1.5e-5 apart at most


@pytest.mark.parametrize("param_str", [
    "'feat_stride': 16 \\n'scales': !!python/tuple [4, 8, 16, 32]",
    "{'feat_stride': 16, 'scales': [4, 8, 16, 32]}",
    "feat_stride: 16, \\\"scales\\\": (4, 8, 16, 32)",
])
def test_param_str_spellings(param_str):
    graph = build_text(PROPOSAL_NET.format(layer=PY_PROPOSAL.replace("'feat_stride': 16", param_str))
                       .replace("dim: 18", "dim: 24").replace("dim: 36", "dim: 48"))
    assert graph.nodes[-1].attrs.scales == (4.0, 8.0, 16.0, 32.0)


@pytest.mark.parametrize("param_str,why", [
    ("__import__('os').system('true')", "cannot read"),
    ("'feat_stride': !!python/object/apply:os.system ['true']", "cannot read"),
    ("'feat_stride': 16, 'ratios': [1, 2]", "'ratios' is not read by py-faster-rcnn's ProposalLayer"),
    ("'scales': [8]", "'feat_stride' missing"),
    ("'feat_stride': 16, 'feat_stride': 8", "given twice"),
    ("'feat_stride': 2.5", "positive integer"),
])
def test_param_str_refused_without_evaluating(param_str, why):
    with pytest.raises(UnsupportedError, match=why) as info:
        build_text(PROPOSAL_NET.format(layer=PY_PROPOSAL.replace("'feat_stride': 16", param_str)))
    assert str(info.value).startswith("test.prototxt:5: layer 'proposal' (Python): param_str")


def test_other_python_layers_refused_naming_module_and_class():
    text = PROPOSAL_NET.format(layer="""layer { name: "anchors" type: "Python" bottom: "cls_prob" top: "labels"
  python_param { module: "rpn.anchor_target_layer" layer: "AnchorTargetLayer" } }""")
    with pytest.raises(UnsupportedError) as info:
        build_text(text)
    msg = str(info.value)
    assert msg.startswith("test.prototxt:5: layer 'anchors' (Python): Python layer (module "
                          "'rpn.anchor_target_layer', layer 'AnchorTargetLayer')")
    assert "never imports" in msg and "rpn.proposal_layer.ProposalLayer" in msg
    assert "rpn" not in sys.modules and "rpn.anchor_target_layer" not in sys.modules


DATA_NET = """
layer { name: "input-data" type: "Python" top: "data" top: "im_info" top: "gt_boxes"
  python_param { module: "roi_data_layer.layer" layer: "RoIDataLayer" param_str: "'num_classes': 21" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
"""


def test_python_data_layer_tops_become_inputs():
    graph = build_text(DATA_NET, input_shapes={"data": (1, 3, 8, 8), "im_info": (1, 3)})
    assert [(v.name, v.shape) for v in graph.inputs] == [("data", (1, 3, 8, 8)), ("im_info", (1, 3))]
    assert "roi_data_layer" not in sys.modules


def test_python_data_layer_without_shapes_asks_for_them():
    with pytest.raises(ProtonetError) as info:
        build_text(DATA_NET)
    msg = str(info.value)
    assert msg.startswith("test.prototxt:2: layer 'input-data' (Python): cannot tell the shape of input 'data'")
    assert "--input-shape data=... --input-shape im_info=... --input-shape gt_boxes=..." in msg


# -- PSROIPooling ------------------------------------------------------------------------------

def test_psroi_bins_round_half_away_and_scale():
    # x1 0.5 -> 1 (halves away from zero; numpy's round would give 0), x2 4.5 -> 5: columns
    # [1, 6) at scale 1, two bins of 2.5: [floor 1, ceil 3.5) = [1, 4) and [floor 3.5, ceil 6) = [3, 6)
    hs, he, ws, we = psroi_bins(np.array([[0, 0.5, -0.5, 4.5, 3.0]], np.float32), 1.0, 2, 10, 10)
    assert (ws.tolist(), we.tolist()) == ([[1, 3]], [[4, 6]])
    # y1 -0.5 -> -1, y2 3 -> end 4: extent 5, bins [-1, 2) clipped to [0, 2) and [1, 4)
    assert (hs.tolist(), he.tolist()) == ([[0, 1]], [[2, 4]])


PSROI_NET = """
layer { name: "in" type: "Input" top: "maps" top: "rois"
  input_param { shape { dim: 1 dim: 8 dim: 4 dim: 4 } shape { dim: 2 dim: 5 } } }
layer { name: "ps" type: "PSROIPooling" bottom: "maps" bottom: "rois" top: "out"
  psroi_pooling_param { spatial_scale: 1 output_dim: 2 group_size: 2 } }
"""


def test_psroi_pooling_by_hand():
    """Channel k holds k·100 + (row·4 + col). ROI (0,0)-(3,3): 2 × 2 bins of 2 × 2 pixels; output
    (c, i, j) averages channel (c·2 + i)·2 + j over bin (i, j). ROI (3,3)-(3,3): a 1-pixel box;
    bin extent 0.5, so bin 0 is [3, 4) and bin 1 is [floor 3.5, ceil 4) = [3, 4)."""
    graph = build_text(PSROI_NET)
    pix = np.arange(16, dtype=np.float32).reshape(4, 4)
    maps = (np.arange(8, dtype=np.float32)[:, None, None] * 100 + pix)[None]
    feeds = {"maps": maps, "rois": np.array([[0, 0, 0, 3, 3], [0, 3, 3, 3, 3]], np.float32)}
    bin_mean = np.array([[pix[:2, :2].mean(), pix[:2, 2:].mean()], [pix[2:, :2].mean(), pix[2:, 2:].mean()]])
    want0 = np.arange(8).reshape(2, 2, 2) * 100 + bin_mean[None]
    want1 = np.arange(8).reshape(2, 2, 2) * 100 + 15.0
    for out in _run_both(graph, feeds):
        np.testing.assert_allclose(out["out"][0], want0, rtol=1e-6)
        np.testing.assert_allclose(out["out"][1], want1, rtol=1e-6)


def test_psroi_pooling_checks_channels():
    with pytest.raises(ProtonetError, match=r"8 channels; output_dim 3 × group_size² 4 = 12 expected"):
        build_text(PSROI_NET.replace("output_dim: 2", "output_dim: 3"))


def test_psroi_bin_edges_use_a_fused_multiply_add():
    """scale 1/3, 6 bins over x 58..211: start 58/3 = 19.333334, bin 8.555556 (float32); bin 2
    ends at ceil(3·bin + start). Rounded once (fmaf, as nvcc compiles R-FCN's kernel) that is
    45.000004 -> 46; rounding the product first would give 45.0 -> 45. The ONNX lowering
    (float64 multiply-add, one rounding to float32) agrees with the reference."""
    rois = np.array([[0, 58, 0, 211, 0]], np.float32)
    _, _, ws, we = psroi_bins(rois, 1 / 3, 6, 100, 100)
    assert we[0, 2] == 46 and ws[0, 3] == 45
    graph = build_text("""
layer { name: "in" type: "Input" top: "maps" top: "rois"
  input_param { shape { dim: 1 dim: 36 dim: 4 dim: 80 } shape { dim: 1 dim: 5 } } }
layer { name: "ps" type: "PSROIPooling" bottom: "maps" bottom: "rois" top: "out"
  psroi_pooling_param { spatial_scale: 0.33333334 output_dim: 1 group_size: 6 } }
""")
    maps = np.zeros((1, 36, 4, 80), np.float32)
    maps[0, 2, :, 45] = 1.0  # column 45 only counts in bin (0, 2) when that bin ends at 46
    ref, got = _run_both(graph, {"maps": maps, "rois": rois})
    assert ref["out"][0, 0, 0, 2] > 0
    np.testing.assert_allclose(got["out"], ref["out"], rtol=1e-6)
