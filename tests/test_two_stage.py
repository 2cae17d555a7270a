"""Two-stage detectors (py-faster-rcnn, py-R-FCN) read as their test code reads them
(protonet.answers.two_stage_detections): bbox_transform_inv, clip_boxes, per-class NMS with the
+1 IoU convention, im_info filled from the photo, and `protonet infer` on a small Faster R-CNN-style
net, checked against the function applied to the raw outputs and against `protonet verify`."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from protonet import cli
from protonet.answers import (Geometry, Labels, TwoStage, im_info, im_info_input, photo_geometry,
                              two_stage_detections, two_stage_outputs)
from protonet.frontend.preprocess import Preprocess
from protonet.images import photo_feed


def _boxes(found):
    return [(b.index, b.score, (b.x1, b.y1, b.x2, b.y2)) for b in found]


def test_bbox_transform_inv_two_boxes_by_hand():
    """A = (0, 0, 9, 19): w 10, h 20, centre (5, 10); deltas (0.1, -0.2, ln 2, 0) move the centre
    to (0.1·10 + 5, -0.2·20 + 10) = (6, 6) and make it 20 x 20: (-4, -4, 16, 16) (x2 = ctr + 0.5·w,
    no -1). B = (10, 10, 13, 13): w = h = 4, centre (12, 12); (0, 0, 0, ln 0.5) halves the height:
    (10, 11, 14, 13). Without a geometry nothing is clipped; IoU(A', B') = 15 / 441, both kept."""
    rois = np.float32([[0, 0, 0, 9, 19], [0, 10, 10, 13, 13]])
    scores = np.float32([[0.1, 0.9], [0.2, 0.8]])
    deltas = np.zeros((2, 8), np.float32)
    deltas[0, 4:] = [0.1, -0.2, math.log(2), 0]
    deltas[1, 4:] = [0, 0, 0, math.log(0.5)]
    deltas[:, :4] = 5  # class 0 (background) is never read
    got = _boxes(two_stage_detections(rois, scores, deltas, None, threshold=0.5))
    assert [(k, s) for k, s, _ in got] == [(1, 0.9), (1, 0.8)]
    np.testing.assert_allclose([b for _, _, b in got], [[-4, -4, 16, 16], [10, 11, 14, 13]], atol=1e-5)


def test_rois_to_photo_and_clip_to_photo():
    """rois in input pixels / im_scale 0.5 -> photo pixels; zero deltas still add 1 to x2 and y2
    (x2' = ctr + 0.5·w = x1 + w); then x into [0, W - 1], y into [0, H - 1] of the 30 x 40 (H x W)
    photo."""
    geo = Geometry((30, 40), (0.5, 0.5), (0, 0), (15, 20))
    rois = np.float32([[0, 2, 3, 6, 7], [0, 15, 10, 30, 20]])  # -> (4, 6, 12, 14) and (30, 20, 60, 40)
    scores = np.float32([[0, 1], [0, 0.9]])
    got = _boxes(two_stage_detections(rois, scores, np.zeros((2, 8), np.float32), geo, threshold=0.5))
    np.testing.assert_allclose([b for _, _, b in got], [[4, 6, 13, 15], [30, 20, 39, 29]])


def test_nms_with_plus_one_iou_by_hand():
    """rois P (0,0,9,9) 0.9, Q (1,1,10,10) 0.8, R (5,0,14,9) 0.7, all class 1; zero deltas make
    them (0,0,10,10), (1,1,11,11), (5,0,15,10). With +1: IoU(P, Q) = 100/142 = 0.70, IoU(P, R) =
    66/176 = 0.375 (without +1 it would be 50/150 = 0.333). NMS 0.35: only P; NMS 0.4: P and R.
    A score equal to the threshold is not above it; class 0 never shows; class 2's boxes are
    suppressed among themselves only."""
    rois = np.float32([[0, 0, 0, 9, 9], [0, 1, 1, 10, 10], [0, 5, 0, 14, 9], [0, 0, 0, 9, 9]])
    scores = np.float32([[0.05, 0.9, 0.05], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.4, 0.25, 0.35]])
    deltas = np.zeros((4, 12), np.float32)
    got = _boxes(two_stage_detections(rois, scores, deltas, None, threshold=0.25, nms=0.35))
    assert [(k, s) for k, s, _ in got] == [(1, 0.9), (2, 0.35)]
    got = _boxes(two_stage_detections(rois, scores, deltas, None, threshold=0.25, nms=0.4))
    assert [(k, s, b) for k, s, b in got] == [(1, 0.9, (0, 0, 10, 10)), (1, 0.7, (5, 0, 15, 10)), (2, 0.35, (0, 0, 10, 10))]


def test_equal_scores_later_row_first_and_padding_rows_dropped():
    """Equal scores: numpy's argsort()[::-1] puts the later row first, so it is the one kept;
    all-zero rois rows (padding) and rows of another image are not boxes."""
    rois = np.float32([[0, 0, 0, 9, 9], [0, 1, 0, 10, 9], [0, 0, 0, 0, 0], [1, 0, 0, 9, 9]])
    scores = np.float32([[0, 0.6], [0, 0.6], [0, 0.99], [0, 0.99]])
    got = _boxes(two_stage_detections(rois, scores, np.zeros((4, 8), np.float32), None, threshold=0.5))
    assert got == [(1, 0.6, (1, 0, 11, 10))]


def test_rfcn_class_agnostic_deltas_use_columns_4_to_8():
    """R-FCN's bbox_pred (R, 8): columns 4:8 move the box for every class (0:4 are background's)."""
    rois = np.float32([[0, 0, 0, 9, 19]])
    scores = np.float32([[0.0, 0.6, 0.7]])
    deltas = np.float32([[9, 9, 9, 9, 0.1, -0.2, math.log(2), 0]])
    got = _boxes(two_stage_detections(rois, scores, deltas, None, threshold=0.5))
    assert [k for k, _, _ in got] == [1, 2]
    np.testing.assert_allclose([b for _, _, b in got], [[-4, -4, 16, 16]] * 2, atol=1e-5)


def test_mismatched_outputs_are_refused():
    from protonet.errors import ProtonetError

    with pytest.raises(ProtonetError, match="fit neither 4 per class of 3 nor the class-agnostic 8"):
        two_stage_detections(np.zeros((2, 5)), np.zeros((2, 3)), np.zeros((2, 16)), None)
    with pytest.raises(ProtonetError, match="outputs disagree"):
        two_stage_detections(np.zeros((2, 5)), np.zeros((3, 3)), np.zeros((2, 12)), None)


def test_im_info_values():
    """A 96 x 120 photo resized to the 64 x 80 input: im_info = (64, 80, 2/3); sides resized by
    0.5 and 2: the scale is their geometric mean, 1."""
    np.testing.assert_array_equal(im_info(Geometry((96, 120), (64 / 96, 80 / 120), (0, 0), (64, 80))),
                                  np.float32([[64, 80, 2 / 3]]))
    np.testing.assert_array_equal(im_info(Geometry((10, 10), (0.5, 2.0), (0, 0), (5, 20))), np.float32([[5, 20, 1]]))


def test_two_stage_outputs_recognised():
    ins = {"data": (1, 3, 64, 80), "im_info": (1, 3)}
    outs = {"rois": (300, 5), "cls_prob": (300, 21), "bbox_pred": (300, 84)}
    types = {"rois": "Proposal", "cls_prob": "Softmax", "bbox_pred": "InnerProduct"}
    assert im_info_input(ins) == "im_info"
    assert two_stage_outputs(types, outs, ins) == TwoStage("rois", "cls_prob", "bbox_pred")
    rfcn = {"rois": (300, 5), "bbox_pred": (300, 8), "cls_prob": (300, 21)}
    assert two_stage_outputs({"rois": "Proposal"}, rfcn, ins) == TwoStage("rois", "cls_prob", "bbox_pred")
    assert two_stage_outputs(types, outs, {"data": (1, 3, 64, 80)}) is None  # no im_info
    assert two_stage_outputs({}, outs, ins) is None  # rois not known to be a Proposal's
    assert two_stage_outputs(types, {"cls_prob": (300, 21), "bbox_pred": (300, 84)}, ins) is None


NET = """name: "tiny_frcnn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 64 dim: 80 } } }
layer { name: "im_info" type: "Input" top: "im_info" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 16 stride: 16 weight_filler { type: "xavier" } } }
layer { name: "rpn_cls" type: "Convolution" bottom: "conv1" top: "rpn_cls_prob_reshape"
  convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "rpn_bbox" type: "Convolution" bottom: "conv1" top: "rpn_bbox_pred"
  convolution_param { num_output: 16 kernel_size: 1 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "proposal" type: "Proposal" bottom: "rpn_cls_prob_reshape" bottom: "rpn_bbox_pred" bottom: "im_info"
  top: "rois" proposal_param { feat_stride: 16 min_size: 4 ratio: 1 ratio: 2 scale: 2 scale: 4
  pre_nms_topn: 60 post_nms_topn: 16 nms_thresh: 0.7 } }
layer { name: "roi_pool" type: "ROIPooling" bottom: "conv1" bottom: "rois" top: "pool"
  roi_pooling_param { pooled_w: 2 pooled_h: 2 spatial_scale: 0.0625 } }
layer { name: "cls_score" type: "InnerProduct" bottom: "pool" top: "cls_score"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "pool" top: "bbox_pred"
  inner_product_param { num_output: 16 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "cls_prob" type: "Softmax" bottom: "cls_score" top: "cls_prob" }
"""
KEEP = ["--output", "rois", "--output", "cls_prob", "--output", "bbox_pred"]


def test_infer_two_stage_photo_end_to_end(tmp_path: Path, capsys):
    """A photo fed to a compiled two-stage net: im_info is filled (and said), the printed boxes
    are two_stage_detections of the raw outputs on the photo's geometry, the same outputs come
    from the --input x.npz run fed the photo's array and the expected im_info, and protonet
    verify agrees with onnxruntime on that input."""
    from PIL import Image

    net, model, photo = tmp_path / "net.prototxt", tmp_path / "m.onnx", tmp_path / "photo.png"
    net.write_text(NET)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 120, 3), dtype=np.uint8)).save(photo)
    labels = tmp_path / "labels.txt"
    labels.write_text("background\ncat\ndog\ncar\n")
    pre = ["--mean", "100,110,120", "--scale", "0.02"]
    assert cli.main(["compile", str(net), "-o", str(model), *KEEP, *pre]) == 0
    capsys.readouterr()
    code = cli.main(["infer", str(model), str(photo), "--threshold", "0.3", "--labels", str(labels),
                     "--draw", str(tmp_path / "out.jpg"), "-o", str(tmp_path / "out.npz")])
    out = capsys.readouterr().out
    assert code == 0
    assert "; im_info = (64, 80, 0.666667) (input height, width, photo scale)" in out
    with np.load(tmp_path / "out.npz") as z:
        outs = {k: z[k] for k in z.files}
    meta = Preprocess(input="data", shape=(1, 3, 64, 80), mean_value=(100.0, 110.0, 120.0), scale=0.02)
    geo = photo_geometry(photo, meta, (1, 3, 64, 80))
    want = two_stage_detections(outs["rois"], outs["cls_prob"], outs["bbox_pred"], geo, 0.3, 0.3,
                                Labels(("background", "cat", "dog", "car"), "labels.txt"))
    assert len(want) >= 2 and len({b.index for b in want}) >= 2
    lines = [f"    {b.score:.4f}  {b.label}  at {b.x1:.1f}, {b.y1:.1f}, {b.x2:.1f}, {b.y2:.1f}" for b in want]
    assert f"output 'cls_prob': shape (16, 4)\n  {len(want)} box(es) (x1, y1, x2, y2):\n" + "\n".join(lines) in out
    assert f"wrote {tmp_path / 'out.jpg'} ({len(want)} box(es))" in out
    # the net itself, compiled for the run: its rois are kept as an output by themselves
    capsys.readouterr()
    assert cli.main(["infer", str(net), str(photo), "--threshold", "0.3", "--labels", str(labels), *pre]) == 0
    assert "\n".join(lines) in capsys.readouterr().out
    # the same outputs from the arrays: the photo's data and the im_info py-faster-rcnn would give
    np.savez(tmp_path / "x.npz", data=photo_feed(photo, meta, (1, 3, 64, 80)), im_info=np.float32([[64, 80, 2 / 3]]))
    assert cli.main(["infer", str(model), "--input", str(tmp_path / "x.npz"), "-o", str(tmp_path / "raw.npz")]) == 0
    with np.load(tmp_path / "raw.npz") as z:
        for k in outs:
            np.testing.assert_array_equal(z[k], outs[k], err_msg=k)
    capsys.readouterr()
    assert cli.main(["verify", str(model), str(net), *KEEP, "--input", str(tmp_path / "x.npz")]) == 0


def test_folder_of_photos_refused_for_two_stage(tmp_path: Path, capsys):
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    (tmp_path / "dir").mkdir()
    assert cli.main(["infer", str(net), str(tmp_path / "dir"), "-o", str(tmp_path / "r.csv")]) == 2
    assert "folders and lists feed single-input nets" in capsys.readouterr().err
