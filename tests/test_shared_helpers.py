"""Code that the reference (a layer's ``kernel``) and the ONNX lowering (its ``lower``) share.

verify compares onnxruntime with the reference; where both call one helper, a wrong helper is
wrong in both and verify cannot see it. Each shared piece is therefore pinned here on its own:
the layer run through the reference *and* onnxruntime against a hand-computed literal (Caffe's
rule worked by hand), and against OpenCV 4.10's ``cv2.dnn`` Caffe importer where OpenCV
implements the layer as Caffe does. Found by listing, per layer class, the module functions and
methods reachable from both ``kernel`` and ``lower``, and the attrs that ``resolve`` computes once
from the input shapes (both facets read them):

| shared                                   | layer                | pinned by                              |
|------------------------------------------|----------------------|----------------------------------------|
| ``ssd.prior_boxes`` (the ONNX constant)  | PriorBox             | test_priorbox (hand, OpenCV)           |
| ``ssd.cell_priors`` (one cell's boxes, SSD's and FaceBoxes' rules) | PriorBox | test_priorbox (hand, OpenCV); tests/test_faceboxes.py::test_densified_priors_by_hand (hand) |
| Pooling's resolved window and output size (``geometry.pool_output_size``) | Pooling, SPP | test_pooling_* (hand, OpenCV), test_spp_pyramid (hand) |
| Interp's resolved sizes                  | Interp               | test_interp (hand, OpenCV)             |
| Crop's resolved offsets (the crop plan)  | Crop                 | test_crop (hand, OpenCV)               |
| DetectionOutput's resolved geometry      | DetectionOutput      | test_detection_output (hand, OpenCV)   |
| ``BatchNorm.stats`` (scale factor)       | BatchNorm            | test_batchnorm_stats (hand, OpenCV)    |
| ``core.channel_shape``                   | BatchNorm, BN, Normalize | test_batchnorm_stats, test_bn_fork, test_normalize |
| ``Exp.factors``                          | Exp                  | test_exp (hand, OpenCV)                |
| ``PReLU._slope``                         | PReLU                | test_prelu (hand, OpenCV)              |
| ``core.broadcast_param``                 | Scale, Bias          | test_scale_axes (hand, OpenCV), test_bias_second_bottom (hand) |
| ``Tile._reps``                           | Tile                 | test_tile (hand)                       |
| ``MVN._axes``                            | MVN                  | test_mvn (hand, OpenCV)                |
| ``Normalize._axes``                      | Normalize            | test_normalize (hand, OpenCV); tests/test_layers_forks.py: test_happynear_* (hand, both implementations) |
| ``core.prod`` (InnerProduct's K)         | InnerProduct         | test_inner_product_axis (hand, OpenCV) |
| ``core.normalized_rows``, ``InnerProduct._weight`` (happynear's ``normalize``) | InnerProduct | tests/test_layers_forks.py: test_inner_product_normalize_* (hand, both implementations) |
| ``Flip._axes``                           | Flip                 | tests/test_layers_forks.py::test_flip_mirrors_width_by_default_and_height_when_asked (hand, both implementations) |
| ``Permute.perm``                         | Permute              | test_permute (hand, OpenCV)            |
| recurrent bottoms (``split_inputs``, when present) | LSTM, RNN  | test_recurrent_bottom_order (hand)     |
| ``shifted_anchors``/``generate_anchors``/``anchor_geometry`` | Proposal | tests/test_detection.py: test_anchors_are_the_published_nine, test_proposal_by_hand, test_proposal_agrees_with_opencv |
| PSROIPooling's fused bin edges, resolved bins | PSROIPooling    | tests/test_detection.py: test_psroi_pooling_by_hand, test_psroi_bin_edges_use_a_fused_multiply_add |
| resolved axis                            | Softmax, Concat, Flatten | test_softmax_axis, test_concat_axis, test_flatten_axis (hand, OpenCV) |
| resolved axis, top_k / slice points / reduced axes | ArgMax, Slice, Reduction | tests/test_layers_bvlc.py: test_argmax_*, test_slice_*, test_reduction_* (hand, both implementations) |
| resolved shape                           | Reshape              | tests/test_caffe_semantics.py::test_reshape_zero_copies_and_minus_one_infers |
| resolved output size                     | Upsample             | tests/test_layers_forks.py: test_upsample_* (hand, both implementations) |
| resolved dims                            | LSTM, RNN            | test_recurrent_bottom_order; tests/test_recurrent.py literal cases |
| resolved output count and group          | DepthwiseConvolution | test_depthwise_multiplier (hand)       |
| ``Reorg._views``, ``Reorg.infer_shape`` (darknet's index map) | Reorg | tests/test_layers_forks.py: test_reorg_* (hand, both implementations) |
| resolved grids (anchor sizes per bottom), row count | YoloDetectionOutput, Yolov3DetectionOutput | tests/test_yolo.py: test_v2_*, test_v3_* (hand, both implementations) |

OpenCV is not followed where it departs from Caffe (it ignores LRN's ``k`` and swaps Axpy's
inputs, neither of them shared code here; it writes 0 for a MAX window past the input, ignores
PriorBox's ``img_size``, cannot size a shrink-only Interp or read a 0-axis shared blob): those
cases are pinned by hand alone, each saying why.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from protonet.frontend.schema import pb as caffe_pb2
from protonet.export import export
from protonet.pipeline import compile_net
from protonet.reference import ReferenceInterpreter
from protonet.runtime import make_session
from protonet.tolerances import FLT_MAX

S = -FLT_MAX  # Caffe's value for a MAX window with no input in it


def _inputs(shapes: dict[str, tuple[int, ...]]) -> str:
    return "".join(f'layer {{ name: "{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
                   + " ".join(f"dim: {d}" for d in s) + " } } }\n" for n, s in shapes.items())


def _caffemodel(path: Path, weights: dict[str, list[np.ndarray]]) -> Path:
    net = caffe_pb2.NetParameter()
    for name, blobs in weights.items():
        layer = net.layer.add()
        layer.name = name
        for arr in blobs:
            b = layer.blobs.add()
            b.shape.dim.extend(np.shape(arr))
            b.data.extend(np.asarray(arr, np.float32).reshape(-1).tolist())
    path.write_bytes(net.SerializeToString())
    return path


def run3(tmp_path: Path, layers: str, feeds: dict[str, np.ndarray], out: str = "out",
         weights: dict[str, list[np.ndarray]] | None = None, opencv: bool = True) -> dict[str, np.ndarray]:
    """The output ``out`` from the reference, onnxruntime and (``opencv``) cv2.dnn."""
    net = tmp_path / "net.prototxt"
    net.write_text(_inputs({k: v.shape for k, v in feeds.items()}) + layers)
    w = _caffemodel(tmp_path / "net.caffemodel", weights) if weights else None
    graph = compile_net(net, w).graph
    res = {"reference": ReferenceInterpreter(graph).run(feeds)[out],
           "onnxruntime": make_session(export(graph), "cpu").run(feeds)[out]}
    if opencv:
        cv = cv2.dnn.readNetFromCaffe(str(net), str(w)) if w else cv2.dnn.readNetFromCaffe(str(net))
        for k, v in feeds.items():  # the binding reads a 3-D array as an image with channels
            cv.setInput(np.ascontiguousarray(v[..., None] if v.ndim == 3 else v, np.float32), k)
        res["opencv"] = cv.forward()  # the last layer's first top
    return res


def check(results: dict[str, np.ndarray], expected, atol: float = 1e-5) -> None:
    want = np.asarray(expected, np.float64)
    for impl, got in results.items():
        assert got.shape == want.shape, (impl, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol, err_msg=impl)


def ramp(*shape: int) -> np.ndarray:
    return np.arange(math.prod(shape), dtype=np.float32).reshape(shape)


# -- PriorBox ----------------------------------------------------------------------------------

def test_priorbox(tmp_path):
    """2x2 map on an 8x8 image: step 4, centres (2, 2), (6, 2), ...; per cell the min_size box,
    the sqrt(min*max) box, then aspect ratios 2 and 1/2 (flip), clipped to [0, 1]."""
    layers = ('layer { name: "pb" type: "PriorBox" bottom: "fm" bottom: "img" top: "out" prior_box_param { '
              'min_size: 4 max_size: 8 aspect_ratio: 2 flip: true clip: true '
              'variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }\n')
    feeds = {"fm": np.zeros((1, 1, 2, 2), np.float32), "img": np.zeros((1, 3, 8, 8), np.float32)}
    res = run3(tmp_path, layers, feeds)
    r2 = math.sqrt(2)
    big = (2 + math.sqrt(32) / 2) / 8  # half side sqrt(4*8)/2 around 2, over 8
    cell0 = [[0, 0, 0.5, 0.5],
             [0, 0, big, big],
             [0, (2 - 2 / r2) / 8, (2 + 2 * r2) / 8, (2 + 2 / r2) / 8],  # w 4*sqrt2, h 4/sqrt2
             [(2 - 2 / r2) / 8, 0, (2 + 2 / r2) / 8, (2 + 2 * r2) / 8]]
    for impl, got in res.items():
        assert got.shape == (1, 2, 2 * 2 * 4 * 4), impl
        boxes = got[0, 0].reshape(2, 2, 4, 4)
        np.testing.assert_allclose(boxes[0, 0], cell0, atol=1e-6, err_msg=impl)
        np.testing.assert_allclose(boxes[0, 1, 0], [0.5, 0, 1, 0.5], atol=1e-6, err_msg=impl)  # centre (6, 2)
        np.testing.assert_allclose(boxes[1, 1, 0], [0.5, 0.5, 1, 1], atol=1e-6, err_msg=impl)
        np.testing.assert_allclose(got[0, 1].reshape(-1, 4), np.tile([0.1, 0.1, 0.2, 0.2], (16, 1)), atol=1e-7)


def test_priorbox_step_offset_and_explicit_image_size(tmp_path):
    """OpenCV 4.10 departs from Caffe here: it measures the image bottom (7 wide) instead of
    img_size and clips without ``clip: true`` (it gives 0, 0, 5/7, 5/7 for the first box)."""
    layers = ('layer { name: "pb" type: "PriorBox" bottom: "fm" bottom: "img" top: "out" prior_box_param { '
              'min_size: 10 img_size: 100 step: 30 offset: 0 variance: 0.1 } }\n')
    feeds = {"fm": np.zeros((1, 1, 1, 2), np.float32), "img": np.zeros((1, 3, 7, 7), np.float32)}
    # centres (0, 0) and (30, 0) on a 100x100 image; min_size 10, no clip
    check(run3(tmp_path, layers, feeds, opencv=False),
          [[[-0.05, -0.05, 0.05, 0.05, 0.25, -0.05, 0.35, 0.05], [0.1] * 8]], atol=1e-6)


# -- Pooling, SPP ------------------------------------------------------------------------------

def test_pooling_max_window_past_the_input_is_caffes_sentinel(tmp_path):
    """5 wide, kernel 1, stride 3: ceil(4/3) + 1 = 3 windows starting at 0, 3, 6; the last holds
    no input, and Caffe's MAX leaves its -FLT_MAX there. OpenCV 4.10 has the same 3 x 3 output
    but writes 0 in those windows (Caffe's source decides: -FLT_MAX)."""
    layers = 'layer { name: "p" type: "Pooling" bottom: "x" top: "out" pooling_param { pool: MAX kernel_size: 1 stride: 3 } }\n'
    res = run3(tmp_path, layers, {"x": ramp(1, 1, 5, 5)}, opencv=False)
    check(res, [[[[0, 3, S], [15, 18, S], [S, S, S]]]])
    for got in res.values():
        assert got[0, 0, 0, 2] == np.float32(S)  # exactly, not -inf


def test_pooling_average_divisor_counts_padding(tmp_path):
    """5x5, kernel 3, stride 2, pad 1: ceil(4/2) + 1 = 3 windows (the last starts at 3 < 5 + 1,
    so it stays); every divisor is 9 (padding counted), e.g. (0 + 1 + 5 + 6) / 9."""
    layers = 'layer { name: "p" type: "Pooling" bottom: "x" top: "out" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }\n'
    check(run3(tmp_path, layers, {"x": ramp(1, 1, 5, 5)}),
          np.array([[[[12, 27, 24], [63, 108, 81], [72, 117, 84]]]]) / 9)


def test_pooling_clips_the_window_that_starts_in_the_padding(tmp_path):
    """5 wide, kernel 2, stride 3, pad 1: ceil(5/3) + 1 = 3, but the third window would start at
    3*2 - 1 = 5 >= 5, in the padding, so Caffe drops it: 2 x 2 windows, maxima of x[0:1], x[2:4]."""
    layers = 'layer { name: "p" type: "Pooling" bottom: "x" top: "out" pooling_param { pool: MAX kernel_size: 2 stride: 3 pad: 1 } }\n'
    check(run3(tmp_path, layers, {"x": ramp(1, 1, 5, 5)}), [[[[0, 3], [15, 18]]]])


def test_pooling_floor_without_padding(tmp_path):
    """6 wide, kernel 3, stride 2: ceil(3/2) + 1 = 3 windows, the last [4, 6) half outside."""
    layers = 'layer { name: "p" type: "Pooling" bottom: "x" top: "out" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }\n'
    check(run3(tmp_path, layers, {"x": ramp(1, 1, 6, 6)}), [[[[14, 16, 17], [26, 28, 29], [32, 34, 35]]]])


def test_spp_pyramid(tmp_path):
    """Level 0: one global bin; level 1: 2x2 bins, kernel ceil(5/2) = 3, pad (3*2 - 5 + 1)/2 = 1,
    stride 3 -> rows [0, 2) and [2, 5); MAX of each, levels flattened and concatenated."""
    layers = 'layer { name: "s" type: "SPP" bottom: "x" top: "out" spp_param { pyramid_height: 2 pool: MAX } }\n'
    check(run3(tmp_path, layers, {"x": ramp(1, 1, 5, 5)}, opencv=False), [[24, 6, 9, 21, 24]])


# -- Interp ------------------------------------------------------------------------------------

@pytest.mark.parametrize("param,shape,expected,opencv", [
    # zoom 2: H' = H + (H-1)(2-1); align-corners samples y = i (H-1)/(H'-1)
    ("zoom_factor: 2", (1, 1, 2, 3), [[0, .5, 1, 1.5, 2], [1.5, 2, 2.5, 3, 3.5], [3, 3.5, 4, 4.5, 5]], True),
    # shrink 2: H' = (H-1)/2 + 1 = 3 of 5: every other row and column (OpenCV 4.10 cannot size
    # an Interp with shrink_factor alone: "total(os[i]) > 0" fails)
    ("shrink_factor: 2", (1, 1, 5, 5), [[0, 2, 4], [10, 12, 14], [20, 22, 24]], False),
    ("height: 3 width: 2", (1, 1, 2, 3), [[0, 2], [1.5, 3.5], [3, 5]], True),
])
def test_interp(tmp_path, param, shape, expected, opencv):
    layers = f'layer {{ name: "i" type: "Interp" bottom: "x" top: "out" interp_param {{ {param} }} }}\n'
    check(run3(tmp_path, layers, {"x": ramp(*shape)}, opencv=opencv), [[expected]])


# -- Crop --------------------------------------------------------------------------------------

@pytest.mark.parametrize("param,expected", [
    ("axis: 1 offset: 1 offset: 2 offset: 1", lambda a: a[:, 1:3, 2:4, 1:4]),
    ("offset: 1", lambda a: a[:, :, 1:3, 1:4]),  # axis 2 (default), one offset for every axis
])
def test_crop(tmp_path, param, expected):
    a = ramp(1, 3, 4, 5)
    layers = f'layer {{ name: "c" type: "Crop" bottom: "a" bottom: "b" top: "out" crop_param {{ {param} }} }}\n'
    check(run3(tmp_path, layers, {"a": a, "b": np.zeros((1, 2, 2, 3), np.float32)}), expected(a))


# -- DetectionOutput ---------------------------------------------------------------------------

def test_detection_output(tmp_path):
    """Two priors, CENTER_SIZE with variances 0.1/0.2: prior 1 (centre 0.7, 0.7, size 0.4) moved by
    loc dx = 1 -> centre x 0.7 + 0.1 * 1 * 0.4 = 0.74 -> [0.54, 0.5, 0.94, 0.9]. Rows by score."""
    layers = ('layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "out" '
              'detection_output_param { num_classes: 2 share_location: true background_label_id: 0 '
              'nms_param { nms_threshold: 0.45 top_k: 10 } code_type: CENTER_SIZE keep_top_k: 2 '
              'confidence_threshold: 0.1 } }\n')
    prior = np.array([[[0.1, 0.1, 0.3, 0.3, 0.5, 0.5, 0.9, 0.9], [0.1, 0.1, 0.2, 0.2] * 2]], np.float32)
    feeds = {"loc": np.array([0, 0, 0, 0, 1, 0, 0, 0], np.float32).reshape(1, 8, 1, 1),
             "conf": np.array([0.2, 0.8, 0.3, 0.7], np.float32).reshape(1, 4, 1, 1), "prior": prior}
    check(run3(tmp_path, layers, feeds),
          [[[[0, 1, 0.8, 0.1, 0.1, 0.3, 0.3], [0, 1, 0.7, 0.54, 0.5, 0.94, 0.9]]]], atol=1e-6)


# -- BatchNorm, BN, Normalize, Scale, Bias, PReLU, Exp ------------------------------------------

@pytest.mark.parametrize("factor", [2.0, 0.0])
def test_batchnorm_stats(tmp_path, factor):
    """mean = blob0 / s, var = blob1 / s with s = blob2[0]; s = 0 gives mean 0, var 0."""
    x = np.array([[[[1, 3]], [[5, 9]]]], np.float32)
    f = 0.0 if factor == 0 else 1 / factor
    mean, var, eps = np.array([2, 4]) * f, np.array([8, 16]) * f, 1e-5
    want = (x - mean.reshape(1, 2, 1, 1)) / np.sqrt(var.reshape(1, 2, 1, 1) + eps)
    if factor == 2:
        assert want[0, 1, 0, 0] == pytest.approx(3 / math.sqrt(8.00001))
    layers = 'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "out" }\n'
    weights = {"bn": [np.array([2, 4]), np.array([8, 16]), np.array([factor])]}
    check(run3(tmp_path, layers, {"x": x}, weights=weights), want, atol=1e-3 if factor == 0 else 1e-5)


def test_bn_fork(tmp_path):
    """PSPNet's BN: slope * (x - mean) / sqrt(var + 1e-5) + bias, per channel."""
    x = np.array([[[[1, 3]], [[5, 9]]]], np.float32)
    c = lambda v: np.array(v, np.float32).reshape(1, 2, 1, 1)  # noqa: E731
    weights = {"bn": [c([2, -1]), c([0, 2]), c([1, 5]), c([4, 16])]}
    want = c([2, -1]) * (x - c([1, 5])) / np.sqrt(c([4, 16]) + 1e-5) + c([0, 2])
    assert want[0, 1, 0, 1] == pytest.approx(-1 * 4 / math.sqrt(16.00001) + 2)
    layers = 'layer { name: "bn" type: "BN" bottom: "x" top: "out" }\n'
    check(run3(tmp_path, layers, {"x": x}, weights=weights, opencv=False), want)


@pytest.mark.parametrize("param,scale,expected", [  # OpenCV cannot read a shared (0-axis) blob
    # per position over channels: |(3, 4)| = 5, |(0, 1)| = 1; scale per channel (1, 2)
    ("across_spatial: false channel_shared: false", [1, 2], [[[[0.6, 0]], [[1.6, 2]]]]),
    # over everything: |(3, 0, 4, 1)| = sqrt(26); one shared scale 2
    ("across_spatial: true channel_shared: true", 2.0,
     [[[[6 / math.sqrt(26), 0]], [[8 / math.sqrt(26), 2 / math.sqrt(26)]]]]),
])
def test_normalize(tmp_path, param, scale, expected):
    x = np.array([[[[3, 0]], [[4, 1]]]], np.float32)
    layers = f'layer {{ name: "n" type: "Normalize" bottom: "x" top: "out" norm_param {{ {param} }} }}\n'
    check(run3(tmp_path, layers, {"x": x}, weights={"n": [np.array(scale)]}, opencv=np.ndim(scale) > 0), expected)


def test_scale_axes(tmp_path):
    """axis 1, num_axes 2: the scale blob covers (C, H) and broadcasts over W."""
    x = ramp(1, 2, 2, 2)
    s, b = np.array([[1, 2], [3, 4]]), np.array([[0, 1], [0, 1]])
    layers = 'layer { name: "s" type: "Scale" bottom: "x" top: "out" scale_param { axis: 1 num_axes: 2 bias_term: true } }\n'
    want = [[[[0, 1], [5, 7]], [[12, 15], [25, 29]]]]  # x[c,h,w] * s[c,h] + b[c,h]
    check(run3(tmp_path, layers, {"x": x}, weights={"s": [s, b]}), want)


def test_bias_second_bottom(tmp_path):
    layers = 'layer { name: "b" type: "Bias" bottom: "x" bottom: "y" top: "out" bias_param { axis: 1 } }\n'
    feeds = {"x": ramp(1, 2, 3), "y": np.array([10, 20], np.float32)}
    check(run3(tmp_path, layers, feeds, opencv=False), [[[10, 11, 12], [23, 24, 25]]])


@pytest.mark.parametrize("param,slopes,expected", [  # OpenCV cannot read a shared (0-axis) blob
    ("", [0.1, 0.5], [[[[-0.1, 2]], [[-1.5, 4]]]]),
    ("prelu_param { channel_shared: true }", 0.25, [[[[-0.25, 2]], [[-0.75, 4]]]]),
])
def test_prelu(tmp_path, param, slopes, expected):
    x = np.array([[[[-1, 2]], [[-3, 4]]]], np.float32)
    layers = f'layer {{ name: "p" type: "PReLU" bottom: "x" top: "out" {param} }}\n'
    check(run3(tmp_path, layers, {"x": x}, weights={"p": [np.array(slopes)]}, opencv=np.ndim(slopes) > 0), expected)


@pytest.mark.parametrize("param,expected", [
    ("base: 2 scale: 3 shift: 1", [2, 16, 0.25]),  # 2^(3x + 1)
    ("scale: 1 shift: 1", [math.e, math.e ** 2, 1]),  # base e
])
def test_exp(tmp_path, param, expected):
    layers = f'layer {{ name: "e" type: "Exp" bottom: "x" top: "out" exp_param {{ {param} }} }}\n'
    check(run3(tmp_path, layers, {"x": np.array([[0, 1, -1]], np.float32)}), [expected])


# -- Tile, MVN, InnerProduct, Permute, recurrent bottoms ----------------------------------------

def test_tile(tmp_path):
    layers = 'layer { name: "t" type: "Tile" bottom: "x" top: "out" tile_param { axis: 1 tiles: 3 } }\n'
    check(run3(tmp_path, layers, {"x": np.array([[1, 2]], np.float32)}, opencv=False), [[1, 2, 1, 2, 1, 2]])


@pytest.mark.parametrize("param,expected", [
    # per channel: (1, 3) -> mean 2, std 1; (2, 6) -> mean 4, std 2; divided by std + 1e-9
    ("", [[[[-1 / (1 + 1e-9), 1 / (1 + 1e-9)]], [[-2 / (2 + 1e-9), 2 / (2 + 1e-9)]]]]),
    # over C, H, W: mean 3, variance (4 + 0 + 1 + 9) / 4 = 3.5
    ("mvn_param { across_channels: true }", np.array([[[[-2, 0]], [[-1, 3]]]]) / (math.sqrt(3.5) + 1e-9)),
    ("mvn_param { normalize_variance: false }", [[[[-1, 1]], [[-2, 2]]]]),
])
def test_mvn(tmp_path, param, expected):
    layers = f'layer {{ name: "m" type: "MVN" bottom: "x" top: "out" {param} }}\n'
    check(run3(tmp_path, layers, {"x": np.array([[[[1, 3]], [[2, 6]]]], np.float32)}), expected)


def test_inner_product_axis(tmp_path):
    """axis 2: K = 3 (the product of the axes from 2 on), outputs (1, 2, num_output)."""
    layers = 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "out" inner_product_param { num_output: 2 axis: 2 } }\n'
    weights = {"ip": [np.array([[1, 0, 0], [0, 1, 1]]), np.array([0, 10])]}
    check(run3(tmp_path, layers, {"x": ramp(1, 2, 3, 1)}, weights=weights), [[[0, 13], [3, 19]]])


def test_permute(tmp_path):
    """order (0, 2, 3, 1): y[0, h, 0, c] = x[0, c, h, 0]."""
    layers = ('layer { name: "p" type: "Permute" bottom: "x" top: "out" permute_param { order: 0 order: 2 order: 3 '
              'order: 1 } }\n')
    check(run3(tmp_path, layers, {"x": ramp(1, 2, 3, 1)}), [[[[0, 3]], [[1, 4]], [[2, 5]]]])


def test_recurrent_bottom_order(tmp_path):
    """RNN bottoms are (x, cont, [x_static], [h0]): with expose_hidden and cont 1 the given h0 is
    the previous state. One step, 1 unit, W_xh = 1, b_h = 0, W_hh = 2, W_ho = 1, b_o = 0:
    h = tanh(x + 2 h0), o = tanh(h)."""
    layers = ('layer { name: "r" type: "RNN" bottom: "x" bottom: "cont" bottom: "h0" top: "out" top: "h1" '
              'recurrent_param { num_output: 1 expose_hidden: true } }\n')
    one = np.ones((1, 1), np.float32)
    weights = {"r": [one, np.zeros(1), 2 * one, one, np.zeros(1)]}
    feeds = {"x": np.full((1, 1, 1), 0.5, np.float32), "cont": np.ones((1, 1), np.float32),
             "h0": np.full((1, 1, 1), 0.25, np.float32)}
    h = math.tanh(0.5 + 2 * 0.25)
    check(run3(tmp_path, layers, feeds, weights=weights, opencv=False), [[[math.tanh(h)]]])


# -- resolved axes: Softmax, Concat, Flatten ------------------------------------------------------

def test_softmax_axis(tmp_path):
    """Over the channels at each position: (0, 0) -> (1/2, 1/2); (ln 3, 0) -> (3/4, 1/4)."""
    x = np.array([[[[0, math.log(3)]], [[0, 0]]]], np.float32)
    layers = 'layer { name: "s" type: "Softmax" bottom: "x" top: "out" }\n'
    check(run3(tmp_path, layers, {"x": x}), [[[[0.5, 0.75]], [[0.5, 0.25]]]])


def test_concat_axis(tmp_path):
    layers = 'layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "out" concat_param { axis: 2 } }\n'
    feeds = {"a": ramp(1, 1, 1, 2), "b": ramp(1, 1, 2, 2) + 10}
    check(run3(tmp_path, layers, feeds), [[[[0, 1], [10, 11], [12, 13]]]])


def test_flatten_axis(tmp_path):
    """axis 2 to the end: (1, 2, 2, 3) -> (1, 2, 6), the values in memory order."""
    layers = 'layer { name: "f" type: "Flatten" bottom: "x" top: "out" flatten_param { axis: 2 } }\n'
    check(run3(tmp_path, layers, {"x": ramp(1, 2, 2, 3)}), [[list(range(6)), list(range(6, 12))]])


def test_depthwise_multiplier(tmp_path):
    """2 channels, num_output 4: group = 2, output channel o reads input channel o // 2; 1x1
    weights 1, 2, 3, 4 and biases 0, 0, 0, 1 (OpenCV has no DepthwiseConvolution type)."""
    layers = ('layer { name: "dw" type: "DepthwiseConvolution" bottom: "x" top: "out" '
              'convolution_param { num_output: 4 kernel_size: 1 } }\n')
    w = np.arange(1, 5, dtype=np.float32).reshape(4, 1, 1, 1)
    b = np.array([0, 0, 0, 1], np.float32)
    res = run3(tmp_path, layers, {"x": ramp(1, 2, 1, 2)}, weights={"dw": [w, b]}, opencv=False)
    check(res, [[[[0, 1]], [[0, 2]], [[6, 9]], [[9, 13]]]])


# -- the list above is complete ------------------------------------------------------------------

def _shared_code() -> dict[str, set[str]]:
    """Per layer class: the module functions and own methods that both ``kernel`` and ``lower``
    reach (transitively), plus ``resolve`` when the class computes attrs from the shapes."""
    import ast
    import builtins

    import protonet.layers as pkg

    trees = [ast.parse(f.read_text()) for f in sorted(Path(pkg.__file__).parent.glob("*.py"))]
    funcs = {n.name: n for t in trees for n in t.body if isinstance(n, ast.FunctionDef)}

    def calls(fn: ast.AST) -> set[str]:
        out = set()
        for n in ast.walk(fn):
            if isinstance(n, ast.Call):
                f = n.func
                if isinstance(f, ast.Name) and not hasattr(builtins, f.id):
                    out.add(f.id)
                elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self":
                    out.add(f.attr)
        return out

    found: dict[str, set[str]] = {}
    for t in trees:
        for cls in (n for n in t.body if isinstance(n, ast.ClassDef)):
            meths = {m.name: m for m in cls.body if isinstance(m, ast.FunctionDef)}
            if "kernel" not in meths or "lower" not in meths or cls.name == "Layer":  # the base class
                continue

            def reach(name: str) -> set[str]:
                seen, todo = set(), [name]
                while todo:
                    c = todo.pop()
                    if c not in seen:
                        seen.add(c)
                        node = meths.get(c) or funcs.get(c)
                        if node is not None:
                            todo += calls(node)
                return seen
            both = {c for c in reach("kernel") & reach("lower") - {"kernel", "lower"}
                    if c in meths or c in funcs or c == "Pooling"}
            if "resolve" in meths:
                both.add("resolve")
            if both:
                found[cls.name] = both
    return found


def test_every_shared_helper_is_listed():
    doc = __doc__
    missing = [f"{cls}: {name}" for cls, names in _shared_code().items() for name in sorted(names)
               if cls not in doc or (name not in doc and name not in ("resolve", "Pooling"))]
    assert not missing, f"shared by kernel and lower but not listed (and pinned) here: {missing}"
