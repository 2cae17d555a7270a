"""MobileNet-YOLO's detection heads (protonet.layers.yolo): hand-computed cases run through the
numpy reference and the ONNX model in onnxruntime, and the fork's own files when the corpus is here.

Logits are chosen so that the sigmoids and softmaxes are simple fractions:
σ(0) = 1/2, σ(ln 3) = 3/4, σ(−ln 3) = 1/4, σ(ln 4) = 4/5; softmax(ln 3, 0) = (3/4, 1/4).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from harness import build_text
from protonet.answers import output_kind
from protonet.build import BuildOptions
from protonet.errors import ProtonetError
from protonet.export import export
from protonet.layers import registry
from protonet.pipeline import compile_net, verify_compiled
from protonet.quantize import head_regions, output_kinds
from protonet.reference import ReferenceInterpreter
from protonet.runtime import make_session
from protonet.tolerances import within

LN3, LN4, OFF = math.log(3), math.log(4), -20.0  # OFF: objectness that no threshold passes


def _net(layer: str, *shapes: tuple[int, ...]) -> str:
    lines = [f'layer {{ name: "in{i}" type: "Input" top: "in{i}" input_param {{ shape {{ '
             + " ".join(f"dim: {d}" for d in s) + " } } }" for i, s in enumerate(shapes)]
    return "\n".join(lines + [layer]) + "\n"


def _run(text: str, *xs: np.ndarray) -> np.ndarray:
    """The layer's top from the reference and from onnxruntime, which must agree; (rows, 7)."""
    graph = build_text(text)
    feeds = {f"in{i}": x.astype(np.float32) for i, x in enumerate(xs)}
    ref = ReferenceInterpreter(graph).run(feeds)["out"]
    got = make_session(export(graph), "cpu").run(feeds)["out"]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    return ref[0, 0]


def _v2(nms: float, batch: int = 1) -> str:
    return _net('layer { name: "det" type: "YoloDetectionOutput" bottom: "in0" top: "out" '
                'yolo_detection_output_param { num_classes: 2 num_box: 1 confidence_threshold: 0.3 '
                f'nms_threshold: {nms} biases: 1 biases: 1 }} }}', (batch, 7, 2, 2))


def _v2_grid(batch: int = 1) -> np.ndarray:
    """(batch, 7, 2, 2), every cell off: channels [tx, ty, tw, th, obj, class 0, class 1]."""
    x = np.zeros((batch, 7, 2, 2))
    x[:, 4] = OFF
    return x


def _cell(x: np.ndarray, b: int, j: int, i: int, values: list[float], anchor: int = 0, length: int = 7) -> None:
    x[b, anchor * length:anchor * length + len(values), j, i] = values


def test_v2_one_cell_decodes_by_hand():
    # 1x1 grid, anchor (0.25, 0.5): x = (0 + σ(0)) / 1 = 0.5, y = σ(ln 3) = 0.75,
    # w = e^{ln 2}·0.25 / 1 = 0.5, h = e^0·0.5 = 0.5; softmax(0, ln 3) = (1/4, 3/4): class 1
    # (label 2) with 0.75, score σ(ln 4)·0.75 = 0.8·0.75 = 0.6 >= 0.5
    text = _net('layer { name: "det" type: "YoloDetectionOutput" bottom: "in0" top: "out" '
                'yolo_detection_output_param { num_classes: 2 num_box: 1 confidence_threshold: 0.5 '
                'biases: 0.25 biases: 0.5 } }', (1, 7, 1, 1))
    x = np.array([0, LN3, math.log(2), 0, LN4, 0, LN3]).reshape(1, 7, 1, 1)
    out = _run(text, x)
    np.testing.assert_allclose(out, [[0, 2, 0.6, 0.25, 0.5, 0.75, 1.0]], rtol=1e-6)


def test_v2_nms_ignores_the_class_and_suppresses_at_its_threshold():
    # 2x2 grid, anchor (1, 1)/2 = 0.5 wide and high. Box A at cell (row 0, col 0): x = (0 + 3/4)/2
    # = 0.375, y = 0.25; score 0.8 · 3/4 = 0.6, class 0 (label 1). Box B at (row 0, col 1):
    # x = (1 + 1/4)/2 = 0.625, y = 0.25; score 0.5 · 3/4 = 0.375, class 1 (label 2).
    # A = [0.125, 0.625] x [0, 0.5], B = [0.375, 0.875] x [0, 0.5]: intersection 0.25 · 0.5
    # = 0.125, union 0.25 + 0.25 − 0.125 = 0.375, IoU 1/3.
    x = _v2_grid()
    _cell(x, 0, 0, 0, [LN3, 0, 0, 0, LN4, LN3, 0])
    _cell(x, 0, 0, 1, [-LN3, 0, 0, 0, 0, 0, LN3])
    a = [0, 1, 0.6, 0.125, 0.0, 0.625, 0.5]
    b = [0, 2, 0.375, 0.375, 0.0, 0.875, 0.5]
    out = _run(_v2(0.3), x)  # 1/3 >= 0.3: B goes, though its class differs
    assert out.shape == (4, 7)  # one row per cell and anchor
    np.testing.assert_allclose(out, [a] + [[-1] * 7] * 3, rtol=1e-6, atol=1e-7)
    out = _run(_v2(0.4), x)  # 1/3 < 0.4: both, best first
    np.testing.assert_allclose(out, [a, b] + [[-1] * 7] * 2, rtol=1e-6, atol=1e-7)


def test_v2_pools_the_batch_into_one_list():
    # the fork gives every row image_id 0 and runs one NMS over the batch: image 1's box B is
    # suppressed by image 0's box A (IoU 1/3 >= 0.3)
    x = _v2_grid(batch=2)
    _cell(x, 0, 0, 0, [LN3, 0, 0, 0, LN4, LN3, 0])
    _cell(x, 1, 0, 1, [-LN3, 0, 0, 0, 0, 0, LN3])
    out = _run(_v2(0.3, batch=2), x)
    assert out.shape == (8, 7)
    np.testing.assert_allclose(out[0], [0, 1, 0.6, 0.125, 0.0, 0.625, 0.5], rtol=1e-6, atol=1e-7)
    assert (out[1:] == -1).all()


def test_no_detection_gives_the_forks_row_per_image():
    out = _run(_v2(0.45, batch=2), _v2_grid(batch=2))
    expected = np.full((8, 7), -1.0)
    expected[:2, 0] = [0, 1]  # [i, -1, -1, -1, -1, -1, -1] for each image i
    np.testing.assert_array_equal(out, expected)


def _v3(nms: float, thr: float) -> str:
    # bias pairs (16, 8) and (64, 32); bottom 0 (2x2, scale 16: a 32x32 net) takes pair mask[0] = 0,
    # anchor (16/32, 8/32) = (0.5, 0.25); bottom 1 (1x1, scale 32) pair mask[1] = 1, (64/32, 32/32) = (2, 1)
    return _net('layer { name: "det" type: "Yolov3DetectionOutput" bottom: "in0" bottom: "in1" top: "out" '
                f'yolov3_detection_output_param {{ num_classes: 2 num_box: 1 confidence_threshold: {thr} '
                f'nms_threshold: {nms} biases: 16 biases: 8 biases: 64 biases: 32 mask: 0 mask: 1 '
                'mask_group_num: 2 anchors_scale: 16 anchors_scale: 32 } }', (1, 7, 2, 2), (1, 7, 1, 1))


def _v3_inputs() -> tuple[np.ndarray, np.ndarray]:
    # bottom 0, cell (row 1, col 0): x = (0 + 1/2)/2 = 0.25, y = (1 + 1/2)/2 = 0.75, w = 2·0.5 = 1,
    # h = 0.25, unclipped: [-0.25, 0.625, 0.75, 0.875]; objectness 0.8, class scores
    # 0.8·σ(ln 3) = 0.6 and 0.8·σ(0) = 0.4 (two candidates with one box).
    # bottom 1: x = y = 0.5, w = 2, h = 1: [-0.5, 0, 1.5, 1]; objectness 1/2, class scores
    # 0.5·σ(0) = 0.25 and 0.5·σ(ln 3) = 0.375. IoU with bottom 0's box: 0.25 / 2 = 0.125.
    x0 = _v2_grid()
    _cell(x0, 0, 1, 0, [0, 0, math.log(2), 0, LN4, LN3, 0])
    x1 = np.array([0, 0, 0, 0, 0, 0, LN3]).reshape(1, 7, 1, 1)
    return x0, x1


def test_v3_each_class_is_a_candidate_and_copies_of_a_box_suppress_each_other():
    box0, box1 = [-0.25, 0.625, 0.75, 0.875], [-0.5, 0.0, 1.5, 1.0]
    out = _run(_v3(0.45, 0.3), *_v3_inputs())
    # 0.6 (class 0), 0.4 (class 1, the same box: IoU 1, suppressed), 0.375 (IoU 0.125, kept);
    # 0.25 is under the threshold
    assert out.shape == (5, 7)  # 4 + 1 boxes, at most one class of each survives NMS
    np.testing.assert_allclose(out[:2], [[0, 1, 0.6, *box0], [0, 2, 0.375, *box1]], rtol=1e-6, atol=1e-7)
    assert (out[2:] == -1).all()
    # at threshold 1 a box's classes still suppress each other (IoU 1), and the rows stay 5
    out = _run(_v3(1.0, 0.3), *_v3_inputs())
    np.testing.assert_allclose(out[:2], [[0, 1, 0.6, *box0], [0, 2, 0.375, *box1]], rtol=1e-6, atol=1e-7)
    assert out.shape == (5, 7) and (out[2:] == -1).all()
    # above IoU 1 nothing is suppressed: every candidate over the threshold, by score
    out = _run(_v3(1.5, 0.3), *_v3_inputs())
    assert out.shape == (10, 7)  # now every class of every box may survive
    np.testing.assert_allclose(out[:3], [[0, 1, 0.6, *box0], [0, 2, 0.4, *box0], [0, 2, 0.375, *box1]],
                               rtol=1e-6, atol=1e-7)
    assert (out[3:] == -1).all()
    # the score test: 0.375 and 0.4 are under 0.45
    out = _run(_v3(1.5, 0.45), *_v3_inputs())
    np.testing.assert_allclose(out[:1], [[0, 1, 0.6, *box0]], rtol=1e-6, atol=1e-7)
    assert (out[1:] == -1).all()


@pytest.mark.parametrize("param,message", [
    ("num_classes: 2 num_box: 1 mask: 0 mask_group_num: 1 anchors_scale: 8 biases: 1 biases: 1 gaussian_box: true",
     r"gaussian_box .* not supported"),
    ("num_classes: 2 num_box: 1 mask: 3 mask_group_num: 1 anchors_scale: 8 biases: 1 biases: 1", r"mask value 3 picks bias pair 3"),
    ("num_classes: 2 num_box: 2 mask: 0 mask_group_num: 1 anchors_scale: 8 biases: 1 biases: 1 biases: 2 biases: 2",
     r"1 mask values for 1 groups of 2 anchors"),
    ("num_classes: 2 num_box: 1 mask: 0 mask_group_num: 1 biases: 1 biases: 1", r"anchors_scale needs a positive value"),
    ("mask: 0 mask_group_num: 1 anchors_scale: 8 biases: 1 biases: 1", r"num_classes must be set"),
    ("num_classes: 2 num_box: 1 mask: 0 mask_group_num: 1 anchors_scale: 8 biases: 1 biases: 0",
     r"biases are anchor sizes and must be positive finite numbers, got 0"),
])
def test_v3_bad_params_are_located(param, message):
    text = _net(f'layer {{ name: "det" type: "Yolov3DetectionOutput" bottom: "in0" top: "out" '
                f'yolov3_detection_output_param {{ {param} }} }}', (1, 7, 2, 2))
    with pytest.raises(ProtonetError, match=r"test\.prototxt:2: layer 'det' \(Yolov3DetectionOutput\): " + message):
        build_text(text)


def test_v2_needs_a_square_grid_and_whole_anchor_blocks():
    text = _net('layer { name: "det" type: "YoloDetectionOutput" bottom: "in0" top: "out" '
                'yolo_detection_output_param { num_classes: 2 num_box: 1 biases: 1 biases: 1 } }', (1, 7, 2, 3))
    with pytest.raises(ProtonetError, match=r"layer 'det' \(YoloDetectionOutput\): bottom 0 is 2x3; .*square"):
        build_text(text)
    text = text.replace("dim: 7 dim: 2 dim: 3", "dim: 6 dim: 2 dim: 2")
    with pytest.raises(ProtonetError, match=r"bottom 0 has 6 channels; 1 anchors × \(5 \+ 2 classes\) = 7 needed"):
        build_text(text)


CORPUS = Path("/work/corpus/eric612__MobileNet-YOLO/models")
FILES = ["darknet_yolov3/yolov3-tiny.prototxt", "darknet/darknet19_deploy.prototxt",
         "cityscapes/mobilenet_yolov3_deploy.prototxt"]


@pytest.mark.skipif(not CORPUS.is_dir(), reason="the corpus (tools/corpus_report.py's files) is not on this machine")
@pytest.mark.parametrize("name", FILES)
def test_corpus_file_compiles_and_verifies(name):
    """The fork's own files at their own 416x416, compiled with random weights (seed 1: random
    weights saturate many sigmoids, so that float32 meets near-ties at the outputs) and verified
    blob by blob, the compiled model's detection rows included."""
    c = compile_net(CORPUS / name, options=BuildOptions(init="random", seed=1), optimize=True)
    det = [n for n in c.graph.nodes if n.type in ("YoloDetectionOutput", "Yolov3DetectionOutput")]
    assert len(det) == 1 and c.graph.inputs[0].shape == (1, 3, 416, 416)
    feeds = {"data": np.random.default_rng(1).standard_normal((1, 3, 416, 416)).astype(np.float32)}
    res = verify_compiled(c, feeds, provider="cpu")
    assert res.ok, [(b.name, b.result.describe()) for b in res.blobs if not b.ok]


def test_near_tie_in_the_sort_is_followed_and_a_real_difference_is_not():
    # boxes A (cell row 0, col 0) and C (row 1, col 1) do not overlap; their scores differ by
    # about 4e-7 (six float32 steps), so float32 may sort them either way: the other order is followed, with the
    # reference's own values; a changed score or a dropped detection is not
    x = _v2_grid()
    _cell(x, 0, 0, 0, [0, 0, 0, 0, LN4, LN3, 0])
    _cell(x, 0, 1, 1, [0, 0, 0, 0, LN4 + 3e-6, LN3, 0])
    graph = build_text(_v2(0.45))
    node = graph.node("det")
    layer = registry.get(node.type)
    xs = [x.astype(np.float64)]
    (ref,) = layer.kernel(node.attrs, xs, {})
    assert ref[0, 0, 0, 2] > ref[0, 0, 1, 2] and ref[0, 0, 0, 3] == 0.5  # C (xmin 0.5) first
    swapped = ref.copy()
    swapped[0, 0, [0, 1]] = ref[0, 0, [1, 0]]
    (new,) = layer.follow_choice(node.attrs, xs, [ref], [swapped], within)
    np.testing.assert_array_equal(new, swapped)
    off = swapped.copy()
    off[0, 0, 1, 2] = 0.5
    assert layer.follow_choice(node.attrs, xs, [ref], [off], within) is None
    dropped = ref.copy()
    dropped[0, 0, 1] = -1
    assert layer.follow_choice(node.attrs, xs, [ref], [dropped], within) is None


@pytest.mark.parametrize("layer_type", ["YoloDetectionOutput", "Yolov3DetectionOutput"])
def test_answers_read_the_heads_as_detections(layer_type):
    # (1, 1, R, 7) with R > 1 would otherwise read as a segmentation score map
    assert output_kind(layer_type, (1, 1, 2535, 7)) == "detections"


def test_int8_keeps_the_head_in_float_and_gates_it_by_box_agreement():
    graph = build_text(_v3(0.45, 0.3))
    assert output_kinds(graph) == {"out": "detection"}
    assert head_regions(graph) == [(["in0", "in1"], ["out"])]


def test_near_tie_between_overlapping_boxes_may_keep_either():
    # A and B overlap with IoU 1/3 >= 0.3 (test_v2_nms_ignores_the_class...): only one is kept.
    # At scores 0.6 and 0.6·(1 + 4e-7) either may be the fork's (its sort leaves near-ties to
    # rounding); at 0.6 and 0.375 only the higher one is
    x = _v2_grid()
    _cell(x, 0, 0, 0, [LN3, 0, 0, 0, LN4, LN3, 0])
    _cell(x, 0, 0, 1, [-LN3, 0, 0, 0, LN4 + 3e-6, LN3, 0])
    graph = build_text(_v2(0.3))
    node = graph.node("det")
    layer = registry.get(node.type)
    xs = [x.astype(np.float64)]
    (ref,) = layer.kernel(node.attrs, xs, {})
    np.testing.assert_allclose(ref[0, 0, 0], [0, 1, 0.6, 0.375, 0.0, 0.875, 0.5], rtol=1e-5)  # B, just higher
    assert (ref[0, 0, 1:] == -1).all()
    other = ref.copy()
    other[0, 0, 0] = [0, 1, 0.6, 0.125, 0.0, 0.625, 0.5]  # A kept instead
    (new,) = layer.follow_choice(node.attrs, xs, [ref], [other], within)
    np.testing.assert_allclose(new, other, rtol=1e-6)
    x[0, 4, 0, 0] = 0  # A's score 0.375: keeping A is no longer a near-tie
    xs = [x.astype(np.float64)]
    (ref,) = layer.kernel(node.attrs, xs, {})
    other = ref.copy()
    other[0, 0, 0] = [0, 1, 0.375, 0.125, 0.0, 0.625, 0.5]
    assert layer.follow_choice(node.attrs, xs, [ref], [other], within) is None


def test_bottoms_must_match_the_mask_groups_and_the_batch_is_fixed(tmp_path):
    text = _v3(0.45, 0.3).replace('bottom: "in1" ', "")
    with pytest.raises(ProtonetError, match=r"layer 'det' \(Yolov3DetectionOutput\): 1 bottoms, but mask_group_num "
                                            r"is 2; the fork requires one bottom per mask group"):
        build_text(text)
    net = tmp_path / "yolo.prototxt"
    net.write_text(_v3(0.45, 0.3))
    with pytest.raises(ProtonetError, match=r"yolo\.prototxt:3: layer 'det' \(Yolov3DetectionOutput\): --batch dynamic "
                                            r"needs every layer to run at any batch size, but the fork pools"):
        compile_net(net, options=BuildOptions(dynamic_batch=True), optimize=True)
