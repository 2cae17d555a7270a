"""Hand-computed cases for the fork layers' traps (protonet/layers/forks.py and ssd.py), each run
through the numpy kernel AND through onnxruntime, plus their located parameter errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness import build_text, example_net_text
from protonet.errors import ProtonetError
from protonet.export import export
from protonet.layers.base import Example
from protonet.reference import ReferenceInterpreter
from protonet.runtime import make_session


def run_both(layer: str, inputs: list, weights: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Build Input layers + ``layer`` (bottoms in0, in1, ...), set ``weights`` on the layer, and
    return the output blob 'out' from the kernel and from onnxruntime."""
    arrays = [np.asarray(x, dtype=np.float32) for x in inputs]
    graph = build_text(example_net_text(Example(layer, tuple(a.shape for a in arrays))))
    node = graph.nodes[-1]
    for k, v in (weights or {}).items():
        assert k in node.weights, f"{k} not in {list(node.weights)}"
        node.weights[k] = np.asarray(v, dtype=np.float32).reshape(node.weights[k].shape)
    feeds = {f"in{i}": a for i, a in enumerate(arrays)}
    ref = ReferenceInterpreter(graph).run(feeds)["out"]
    got = make_session(export(graph), "cpu").run(feeds)["out"]
    return ref, got


def check(layer: str, inputs: list, expected, weights: dict | None = None, atol: float = 1e-5) -> None:
    ref, got = run_both(layer, inputs, weights)
    expected = np.asarray(expected, dtype=np.float64)
    assert ref.shape == expected.shape, (ref.shape, expected.shape)
    np.testing.assert_allclose(ref, expected, atol=atol, rtol=0)
    np.testing.assert_allclose(got, expected, atol=atol, rtol=0)


def error(layer: str, shapes: tuple, match: str) -> None:
    with pytest.raises(ProtonetError, match=match) as info:
        build_text(example_net_text(Example(layer, shapes)))
    assert "test.prototxt:" in str(info.value)


# -- Upsample -------------------------------------------------------------------------------------

def test_upsample_nearest_pad_out_drops_last_row():
    layer = 'layer { name: "u" type: "Upsample" bottom: "in0" top: "out" upsample_param { scale: 2 pad_out_h: true } }'
    check(layer, [np.array([[1, 2], [3, 4]]).reshape(1, 1, 2, 2)], [[[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4]]]])


def test_upsample_scale_hw():
    layer = 'layer { name: "u" type: "Upsample" bottom: "in0" top: "out" upsample_param { scale_h: 1 scale_w: 3 } }'
    check(layer, [np.array([1, 2]).reshape(1, 1, 1, 2)], [[[[1, 1, 1, 2, 2, 2]]]])


def test_upsample_mask_unpools_to_flat_indices_last_write_wins():
    layer = ('layer { name: "u" type: "Upsample" bottom: "in0" bottom: "in1" top: "out" '
             'upsample_param { upsample_h: 2 upsample_w: 3 } }')
    # plane 0: 5 -> index 4 (row 1, col 1), 6 -> index 0; plane 1: both to index 2, the later (8) wins
    ref, got = run_both(layer, [np.array([5, 6, 7, 8]).reshape(1, 2, 1, 2), np.array([4, 0, 2, 2]).reshape(1, 2, 1, 2)])
    expected = [[[[6, 0, 0], [0, 5, 0]], [[0, 0, 8], [0, 0, 0]]]]
    np.testing.assert_array_equal(ref, expected)
    np.testing.assert_array_equal(got, expected)


def test_upsample_errors():
    error('layer { name: "u" type: "Upsample" bottom: "in0" top: "out" '
          'upsample_param { upsample_h: 4 upsample_w: 4 } }',
          ((1, 1, 2, 2),), "mask as a second bottom")
    error('layer { name: "u" type: "Upsample" bottom: "in0" top: "out" '
          'upsample_param { scale: 2 scale_h: 2 scale_w: 2 } }',
          ((1, 1, 2, 2),), "either scale or scale_h")
    error('layer { name: "u" type: "Upsample" bottom: "in0" top: "out" upsample_param { scale: 3 pad_out_w: true } }',
          ((1, 1, 2, 2),), "scale of 2")
    error('layer { name: "u" type: "Upsample" bottom: "in0" bottom: "in1" top: "out" }', ((1, 1, 2, 2), (1, 1, 2, 3)),
          "mask bottom shape")


# -- Interp ----------------------------------------------------------------------------------------

def test_interp_zoom_is_align_corners():
    # align corners: the corners stay put, so 2 -> 3 samples at 0, 0.5, 1 (half-pixel would not)
    layer = 'layer { name: "i" type: "Interp" bottom: "in0" top: "out" interp_param { zoom_factor: 2 } }'
    check(layer, [np.arange(4).reshape(1, 1, 2, 2)], [[[[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]]]])


def test_interp_shrink_and_single_row():
    # shrink 2: (5-1)/2+1 = 3 columns at 0, 2, 4; H = 1 stays 1 (ratio 0)
    layer = 'layer { name: "i" type: "Interp" bottom: "in0" top: "out" interp_param { shrink_factor: 2 } }'
    check(layer, [np.arange(0, 50, 10).reshape(1, 1, 1, 5)], [[[[0, 20, 40]]]])


def test_interp_negative_pad_crops():
    layer = ('layer { name: "i" type: "Interp" bottom: "in0" top: "out" '
             'interp_param { height: 3 width: 2 pad_beg: -1 pad_end: -1 } }')
    x = np.arange(16).reshape(1, 1, 4, 4)  # crop [[5, 6], [9, 10]], then 2 -> 3 rows
    check(layer, [x], [[[[5, 6], [7, 8], [9, 10]]]])


def test_interp_errors():
    error('layer { name: "i" type: "Interp" bottom: "in0" top: "out" interp_param { zoom_factor: 2 pad_beg: 1 } }',
          ((1, 1, 2, 2),), "pad_beg/pad_end must be <= 0")
    error('layer { name: "i" type: "Interp" bottom: "in0" top: "out" interp_param { height: 3 } }',
          ((1, 1, 2, 2),), "set zoom_factor, shrink_factor, or both height and width")
    error('layer { name: "i" type: "Interp" bottom: "in0" top: "out" interp_param { zoom_factor: 0 } }',
          ((1, 1, 2, 2),), "zoom_factor must be >= 1")


# -- ReLU6 ---------------------------------------------------------------------------------------------

def test_relu6_clips_at_six():
    check('layer { name: "r" type: "ReLU6" bottom: "in0" top: "out" }', [[[-3, 0.5, 6.5, 7]]], [[0, 0.5, 6, 6]])


def test_relu6_leaky_below_zero():
    check('layer { name: "r" type: "ReLU6" bottom: "in0" top: "out" relu6_param { negative_slope: 0.1 } }',
          [[[-3, 0.5, 7]]], [[-0.3, 0.5, 6]])


# -- DepthwiseConvolution ------------------------------------------------------------------------------

def test_depthwise_group_is_channels_and_multiplier_maps_outputs_to_inputs():
    # 2 input channels, 4 outputs: output j reads input channel j // 2 (group = channels = 2)
    layer = ('layer { name: "dw" type: "DepthwiseConvolution" bottom: "in0" top: "out" '
             'convolution_param { num_output: 4 kernel_size: 1 bias_term: false } }')
    x = [[[[1.0]], [[2.0]]]]
    check(layer, [x], [[[[1.0]], [[2.0]], [[6.0]], [[8.0]]]], {"weight": [1, 2, 3, 4]})


def test_convolution_depthwise_alias_3x3_with_bias():
    layer = ('layer { name: "dw" type: "ConvolutionDepthwise" bottom: "in0" top: "out" '
             'convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }')
    x = np.stack([np.ones((3, 3)), 2 * np.ones((3, 3))])[None]
    w = np.ones((2, 1, 3, 3))
    # centre sees 9 taps, corners 4, edges 6; channel 1 doubles; bias 10 and 20
    ch0 = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    check(layer, [x], np.stack([ch0 + 10, 2 * ch0 + 20])[None], {"weight": w, "bias": [10, 20]})


def test_depthwise_errors():
    error('layer { name: "dw" type: "DepthwiseConvolution" bottom: "in0" top: "out" '
          'convolution_param { num_output: 4 kernel_size: 3 group: 2 } }', ((1, 4, 5, 5),), "group 2 contradicts")
    error('layer { name: "dw" type: "DepthwiseConvolution" bottom: "in0" top: "out" '
          'convolution_param { num_output: 5 kernel_size: 3 } }', ((1, 2, 5, 5),), "multiple of the 2 input channels")


# -- ShuffleChannel ----------------------------------------------------------------------------------

def test_shuffle_channel_order():
    # C = 6, group 2: output j*2 + i = input i*3 + j -> input channels 0 3 1 4 2 5
    layer = 'layer { name: "s" type: "ShuffleChannel" bottom: "in0" top: "out" shuffle_channel_param { group: 2 } }'
    x = np.arange(6).reshape(1, 6, 1, 1)
    check(layer, [x], np.array([0, 3, 1, 4, 2, 5]).reshape(1, 6, 1, 1))


def test_shuffle_channel_error():
    error('layer { name: "s" type: "ShuffleChannel" bottom: "in0" top: "out" shuffle_channel_param { group: 4 } }',
          ((1, 6, 2, 2),), "not divisible by group 4")


# -- Permute -------------------------------------------------------------------------------------------

def test_permute_appends_missing_axes_in_order():
    # order 0 2 on 4-D means 0 2 1 3
    layer = 'layer { name: "p" type: "Permute" bottom: "in0" top: "out" permute_param { order: 0 order: 2 } }'
    x = np.arange(6).reshape(1, 2, 3, 1)
    check(layer, [x], [[[[0], [3]], [[1], [4]], [[2], [5]]]])


def test_permute_errors():
    error('layer { name: "p" type: "Permute" bottom: "in0" top: "out" permute_param { order: 0 order: 4 } }',
          ((1, 2, 3, 4),), "names axis 4")
    error('layer { name: "p" type: "Permute" bottom: "in0" top: "out" permute_param { order: 1 order: 1 } }',
          ((1, 2, 3, 4),), "repeats an axis")


# -- Normalize -----------------------------------------------------------------------------------------

def test_normalize_eps_inside_the_root_across_spatial():
    # sqrt(3² + 4² + eps 11) = 6 (eps added to the norm would give 16)
    layer = 'layer { name: "n" type: "Normalize" bottom: "in0" top: "out" norm_param { eps: 11 } }'
    check(layer, [[[[[3.0]], [[4.0]]]]], [[[[1.0]], [[4.0 / 3]]]], {"scale": 2.0})


def test_normalize_per_pixel_per_channel_scale():
    layer = ('layer { name: "n" type: "Normalize" bottom: "in0" top: "out" '
             'norm_param { across_spatial: false channel_shared: false eps: 11 } }')
    x = [[[[3.0, 0.0]], [[4.0, 5.0]]]]  # both pixels: sqrt(25 + 11) = 6
    check(layer, [x], [[[[0.5, 0.0]], [[2.0, 2.5]]]], {"scale": [1.0, 3.0]})


# happynear/caffe-windows (AM-Softmax): normalize_param's Normalize, InnerProduct's normalize, Flip

def test_happynear_l2_normalize_is_per_position_over_channels():
    # 1x2x1x2, positions (3, 4) and (0, 5): each one's L2 norm over the 2 channels is
    # sqrt(25 + 1e-6) = 5 (over all of C*H*W it would be sqrt(50)), no scale blob
    layer = ('layer { name: "n" type: "Normalize" bottom: "in0" top: "out" '
             'normalize_param { normalize_type: "L2" fix_gradient: true bp_norm: true } }')
    check(layer, [[[[[3.0, 0.0]], [[4.0, 5.0]]]]], [[[[0.6, 0.0]], [[0.8, 1.0]]]])


def test_happynear_l2_normalize_eps_and_legacy_4d_top():
    # a 2-D (1, 2) bottom gives the fork's (N, C, 1, 1) top; x = (3e-4, 4e-4): Σx² = 2.5e-7, plus
    # the CPU code's 1e-6 inside the root: sqrt(1.25e-6) = 1.118034e-3, so 0.2683282 and 0.3577709
    # (eps 1e-12, the CUDA kernel's, would give 0.6 and 0.8)
    layer = 'layer { name: "n" type: "Normalize" bottom: "in0" top: "out" normalize_param { } }'
    root = math.sqrt(2.5e-7 + 1e-6)
    check(layer, [[[3e-4, 4e-4]]], [[[[3e-4 / root]], [[4e-4 / root]]]])
    assert abs(3e-4 / root - 0.2683282) < 1e-7


def test_happynear_l1_normalize():
    # positions (3, -1) and (0, 2): Σ|x| + 1e-6 = 4 and 2, no root
    layer = 'layer { name: "n" type: "Normalize" bottom: "in0" top: "out" normalize_param { normalize_type: "L1" } }'
    check(layer, [[[[[3.0, 0.0]], [[-1.0, 2.0]]]]], [[[[0.75, 0.0]], [[-0.25, 1.0]]]])


def test_happynear_normalize_errors():
    error('layer { name: "n" type: "Normalize" bottom: "in0" top: "out" normalize_param { normalize_type: "L3" } }',
          ((1, 2),), 'normalize_type must be "L2" or "L1"')
    error('layer { name: "n" type: "Normalize" bottom: "in0" top: "out" normalize_param { } norm_param { } }',
          ((1, 2),), "both norm_param")


def test_inner_product_normalize_divides_each_weight_row_by_its_norm():
    # W rows (3, 4) and (0, 2): norms sqrt(25 + 1e-6) = 5 and sqrt(4 + 1e-6) = 2, so rows (0.6, 0.8)
    # and (0, 1); the bias (1, -1) is added as it is: x = (1, 1) gives 1.4 + 1 and 1 - 1
    layer = ('layer { name: "fc" type: "InnerProduct" bottom: "in0" top: "out" '
             'inner_product_param { num_output: 2 normalize: true } }')
    check(layer, [[[1.0, 1.0]]], [[2.4, 0.0]], {"weight": [[3.0, 4.0], [0.0, 2.0]], "bias": [1.0, -1.0]})
    # K = 3 on axis 2 (the MatMul lowering): rows (3, 0, 4) and (0, 0, 2), x rows (1, 1, 1), (1, 0, 0)
    layer = ('layer { name: "fc" type: "InnerProduct" bottom: "in0" top: "out" '
             'inner_product_param { num_output: 2 normalize: true axis: 2 bias_term: false } }')
    check(layer, [[[[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]]], [[[1.4, 1.0], [0.6, 0.0]]],
          {"weight": [[3.0, 0.0, 4.0], [0.0, 0.0, 2.0]]})


def test_inner_product_normalize_with_transpose_cuts_the_blob_in_memory_order():
    # transpose: the blob is (K, N) = (3, 2) = [[3, 4], [0, 0], [0, 2]], which the fork still
    # normalizes as N = 2 runs of K = 3 values in memory: (3, 4, 0) / 5 and (0, 0, 2) / 2, giving
    # [[0.6, 0.8], [0, 0], [0, 1]]; x = (1, 1, 1) -> (0.6, 1.8). Per output column it would be
    # (1, (4 + 2) / sqrt(20)).
    layer = ('layer { name: "fc" type: "InnerProduct" bottom: "in0" top: "out" '
             'inner_product_param { num_output: 2 normalize: true transpose: true bias_term: false } }')
    check(layer, [[[1.0, 1.0, 1.0]]], [[0.6, 1.8]], {"weight": [[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]]})


def test_flip_mirrors_width_by_default_and_height_when_asked():
    x = [[[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]]]  # 1x1x2x3
    flip = 'layer { name: "f" type: "Flip" bottom: "in0" top: "out" %s }'
    check(flip % "", [x], [[[[2, 1, 0], [5, 4, 3]]]])
    check(flip % "flip_param { flip_width: false flip_height: true }", [x], [[[[3, 4, 5], [0, 1, 2]]]])
    check(flip % "flip_param { flip_height: true }", [x], [[[[5, 4, 3], [2, 1, 0]]]])
    check(flip % "flip_param { flip_width: false }", [x], x)
    # a 3-D bottom has no width axis (Caffe's width() is 1): flip_width leaves it as it is
    check(flip % "", [[[[0.0, 1.0]]]], [[[0.0, 1.0]]])


# -- Axpy ----------------------------------------------------------------------------------------------

def test_axpy_scales_per_channel():
    layer = 'layer { name: "a" type: "Axpy" bottom: "in0" bottom: "in1" bottom: "in2" top: "out" }'
    check(layer, [[[[[2.0]], [[-1.0]]]], [[[[1, 2]], [[3, 4]]]], np.ones((1, 2, 1, 2))],
          [[[[3, 5]], [[-2, -3]]]])


def test_axpy_error():
    error('layer { name: "a" type: "Axpy" bottom: "in0" bottom: "in1" bottom: "in2" top: "out" }',
          ((1, 3, 1, 1), (1, 2, 2, 2), (1, 2, 2, 2)), "must be \\(N, C\\) or \\(N, C, 1, 1\\)")


# -- BN -----------------------------------------------------------------------------------------------

def test_bn_pspnet_formula_and_blob_order():
    # slope·(x − mean)/sqrt(var + eps) + bias: channel 0 2·4/2 + 1 = 5, channel 1 (5 − 3)/1 + 0 = 2
    layer = 'layer { name: "bn" type: "BN" bottom: "in0" top: "out" bn_param { eps: 1 } }'
    check(layer, [[[[[5.0]], [[5.0]]]]], [[[[5.0]], [[2.0]]]],
          {"slope": [2, 1], "bias": [1, 0], "mean": [1, 3], "variance": [3, 0]})


def test_bn_segnet_inference_is_affine_only():
    layer = 'layer { name: "bn" type: "BN" bottom: "in0" top: "out" bn_param { bn_mode: INFERENCE } }'
    check(layer, [[[[[5.0]], [[-1.0]]]]], [[[[11.0]], [[-2.0]]]], {"scale": [2, 3], "shift": [1, 1]})


def test_bn_segnet_learn_uses_batch_statistics():
    # batch [1, 3]: mean 2, var E[x²] − mean² = 5 − 4 = 1, eps 1e-9
    layer = 'layer { name: "bn" type: "BN" bottom: "in0" top: "out" bn_param { bn_mode: LEARN } }'
    check(layer, [[[[[1.0]]], [[[3.0]]]]], [[[[-1.0]]], [[[1.0]]]], {"scale": [1], "shift": [0]})


def test_bn_segnet_learn_large_mean_small_spread():
    # one channel, 4096 ± 1 over N, H, W: mean 4096, variance 1, so y = 2·(±1) + 0.5. In float32
    # E[x²] − E[x]² is (2^24 + 1) − 2^24, and 2^24 + 1 is not a float32: written that way the
    # variance comes out 0 or 2 and y as ±31623 or ±1.4; the lowering computes it stably
    signs = np.array([-1, 1, 1, -1, 1, -1, -1, 1], dtype=np.float64).reshape(2, 1, 2, 2)
    layer = 'layer { name: "bn" type: "BN" bottom: "in0" top: "out" bn_param { bn_mode: LEARN } }'
    check(layer, [4096.0 + signs], 2.0 * signs + 0.5, {"scale": [2], "shift": [0.5]})


def test_bn_error_mixed_layouts():
    error('layer { name: "bn" type: "BN" bottom: "in0" top: "out" '
          'bn_param { bn_mode: INFERENCE slope_filler { type: "constant" } } }', ((1, 2, 2, 2),), "mixes SegNet")


# -- ROIPooling -----------------------------------------------------------------------------------------

NEG = -(np.arange(16, dtype=np.float32) + 1).reshape(1, 1, 4, 4)  # value at (r, c) is -(4r + c + 1)


def test_roi_pooling_rounds_half_away_and_keeps_negative_maxima():
    layer = ('layer { name: "r" type: "ROIPooling" bottom: "in0" bottom: "in1" top: "out" '
             'roi_pooling_param { pooled_h: 1 pooled_w: 1 spatial_scale: 1 } }')
    # x1 = round(0.5) = 1, y1 = 1, x2 = round(2.4) = 2, y2 = round(2.5) = 3: rows 1..3, cols 1..2 -> max -6
    # (round-half-even would give rows/cols 0..2 -> -1); a ROI outside the map pools an empty bin -> 0
    rois = [[0, 0.5, 0.5, 2.4, 2.5], [0, 10, 10, 12, 12]]
    check(layer, [NEG, rois], np.array([-6.0, 0.0]).reshape(2, 1, 1, 1))


def test_roi_pooling_scale_and_bins():
    layer = ('layer { name: "r" type: "ROIPooling" bottom: "in0" bottom: "in1" top: "out" '
             'roi_pooling_param { pooled_h: 2 pooled_w: 1 spatial_scale: 0.5 } }')
    # corners round(1.5) = 2 and round(3) = 3 in x, round(0.5) = 1 and round(2.5) = 3 in y:
    # rows 1..3 (3 rows, bins [floor(0), ceil(1.5)) = rows 1, 2 and [floor(1.5), ceil(3)) = rows 2, 3),
    # cols 2..3 -> maxima -(4·1 + 2 + 1) = -7 and -(4·2 + 2 + 1) = -11
    rois = [[0, 3, 1, 6, 5]]
    check(layer, [NEG, rois], np.array([-7.0, -11.0]).reshape(1, 1, 2, 1))


def _caffe_roi_pool(x: np.ndarray, rois: np.ndarray, ph: int, pw: int, scale: float) -> np.ndarray:
    """A transcription of Caffe's ROIPoolingLayer::Forward_cpu, one output element at a time
    (float32 bin arithmetic, C's round, -FLT_MAX start, 0 for an empty bin)."""
    f32 = np.float32

    def c_round(v: np.float32) -> int:
        return int(math.copysign(math.floor(abs(float(v)) + 0.5), float(v)))

    _, c, h, w = x.shape
    out = np.zeros((len(rois), c, ph, pw), np.float32)
    for r, roi in enumerate(np.asarray(rois, np.float32)):
        b = int(roi[0])
        sw, sh, ew, eh = (c_round(v * f32(scale)) for v in roi[1:])
        bin_h = f32(max(eh - sh + 1, 1)) / f32(ph)
        bin_w = f32(max(ew - sw + 1, 1)) / f32(pw)
        for ch in range(c):
            for i in range(ph):
                for j in range(pw):
                    hs = min(max(int(math.floor(f32(i) * bin_h)) + sh, 0), h)
                    he = min(max(int(math.ceil(f32(i + 1) * bin_h)) + sh, 0), h)
                    ws = min(max(int(math.floor(f32(j) * bin_w)) + sw, 0), w)
                    we = min(max(int(math.ceil(f32(j + 1) * bin_w)) + sw, 0), w)
                    best = 0.0 if he <= hs or we <= ws else -np.finfo(np.float32).max
                    for yy in range(hs, he):
                        for xx in range(ws, we):
                            best = max(best, x[b, ch, yy, xx])
                    out[r, ch, i, j] = best
    return out


def test_roi_pooling_matches_caffes_loop_on_random_rois():
    """The per-bin vectorised kernel and the ONNX lowering against Caffe's element loop: ROIs
    inside, across and outside the map, tiny and large, negative maps, two images."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32) - 1.0
    n_rois = 24
    corners = rng.uniform(-6, 30, size=(n_rois, 4)).astype(np.float32)
    rois = np.concatenate([rng.integers(0, 2, (n_rois, 1)).astype(np.float32),
                           np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])],
                          axis=1)
    rois[0] = [1, 2.5, 1.5, 2.5, 1.5]  # a one-cell ROI, halves rounding away from zero
    rois[1] = [0, 40, 40, 50, 50]  # outside the map: all bins empty
    layer = ('layer { name: "r" type: "ROIPooling" bottom: "in0" bottom: "in1" top: "out" '
             'roi_pooling_param { pooled_h: 3 pooled_w: 4 spatial_scale: 0.5 } }')
    check(layer, [x, rois], _caffe_roi_pool(x, rois, 3, 4, 0.5))


def test_roi_pooling_errors():
    error('layer { name: "r" type: "ROIPooling" bottom: "in0" bottom: "in1" top: "out" '
          'roi_pooling_param { pooled_h: 0 pooled_w: 2 } }', ((1, 1, 4, 4), (1, 5)), "pooled_h and pooled_w")
    error('layer { name: "r" type: "ROIPooling" bottom: "in0" bottom: "in1" top: "out" '
          'roi_pooling_param { pooled_h: 2 pooled_w: 2 } }', ((1, 1, 4, 4), (1, 4)), "rows \\[batch_index")


# -- PriorBox ---------------------------------------------------------------------------------------------

def test_prior_box_order_and_int_sizes():
    # 1x1 map on a 10x10 image: centre (5, 5). min_size 4.7 acts as 4 and max_size 9.2 as 9 (Caffe
    # stores them in ints). Order: min box, sqrt(4·9) = 6 box, then ar 4 (8 wide, 2 high), ar 1/4.
    layer = ('layer { name: "pb" type: "PriorBox" bottom: "in0" bottom: "in1" top: "out" prior_box_param { '
             'min_size: 4.7 max_size: 9.2 aspect_ratio: 4 flip: true } }')
    boxes = [0.3, 0.3, 0.7, 0.7, 0.2, 0.2, 0.8, 0.8, 0.1, 0.4, 0.9, 0.6, 0.4, 0.1, 0.6, 0.9]
    check(layer, [np.zeros((1, 1, 1, 1)), np.zeros((1, 3, 10, 10))], [[boxes, [0.1] * 16]])


def test_prior_box_step_offset_clip_and_four_variances():
    # img 10x10 given, step 4, offset 0: centres x = 0 and 4, y = 0; min box 2x2, clipped to [0, 1]
    layer = ('layer { name: "pb" type: "PriorBox" bottom: "in0" bottom: "in1" top: "out" prior_box_param { '
             'min_size: 2 img_size: 10 step: 4 offset: 0 clip: true variance: 0.1 variance: 0.1 '
             'variance: 0.2 variance: 0.2 } }')
    boxes = [0, 0, 0.1, 0.1, 0.3, 0, 0.5, 0.1]
    check(layer, [np.zeros((1, 1, 1, 2)), np.zeros((1, 3, 7, 7))], [[boxes, [0.1, 0.1, 0.2, 0.2] * 2]])


def test_prior_box_errors():
    shapes = ((1, 1, 2, 2), (1, 3, 8, 8))
    error('layer { name: "pb" type: "PriorBox" bottom: "in0" bottom: "in1" top: "out" '
          'prior_box_param { min_size: 10 max_size: 5 } }', shapes, "max_size 5 must be greater than min_size 10")
    error('layer { name: "pb" type: "PriorBox" bottom: "in0" bottom: "in1" top: "out" prior_box_param { } }',
          shapes, "min_size missing")
    error('layer { name: "pb" type: "PriorBox" bottom: "in0" bottom: "in1" top: "out" '
          'prior_box_param { min_size: 4 variance: 0.1 variance: 0.2 } }', shapes, "1 or 4 variance")


# -- DetectionOutput -------------------------------------------------------------------------------------

P0, P1, P2 = [0.1, 0.1, 0.3, 0.3], [0.15, 0.1, 0.35, 0.3], [0.6, 0.6, 0.8, 0.8]  # IoU(P0, P1) = 0.6


def _det_layer(extra: str) -> str:
    return ('layer { name: "det" type: "DetectionOutput" bottom: "in0" bottom: "in1" bottom: "in2" top: "out" '
            f'detection_output_param {{ num_classes: 3 background_label_id: 0 code_type: CENTER_SIZE {extra} }} }}')


def _det_inputs(priors: list, conf: list) -> list:
    n = len(priors)
    prior = np.array([np.ravel(priors), [0.1, 0.1, 0.2, 0.2] * n], dtype=np.float32)[None]
    return [np.zeros((1, 4 * n)), np.array(conf, dtype=np.float32).reshape(1, -1), prior]


def test_detection_output_rows_are_label_major_with_nms():
    # class 1: P0 (0.3) beats P1 (0.25, IoU 0.6 > 0.5); class 2: P1 (0.65) beats P0 (0.6).
    # Caffe writes label 1 before label 2 although 0.65 > 0.3; the third row is padding.
    conf = [[0.1, 0.3, 0.6], [0.1, 0.25, 0.65]]
    expected = [[0, 1, 0.3, *P0], [0, 2, 0.65, *P1], [-1] * 7]
    check(_det_layer("nms_param { nms_threshold: 0.5 } keep_top_k: 3"), _det_inputs([P0, P1], conf),
          np.array(expected).reshape(1, 1, 3, 7))


def test_detection_output_keep_top_k_keeps_best_overall():
    conf = [[0.1, 0.3, 0.6], [0.1, 0.25, 0.65]]
    check(_det_layer("nms_param { nms_threshold: 0.5 } keep_top_k: 1"), _det_inputs([P0, P1], conf),
          np.array([0, 2, 0.65, *P1]).reshape(1, 1, 1, 7))


def test_detection_output_top_k_limits_candidates_before_nms():
    # class 1 scores P0 0.9, P1 0.8, P2 0.7; top_k 2 keeps P0, P1 as candidates and NMS drops P1,
    # so P2 never appears (limiting the NMS output to 2 would have kept P2). class 2 is below 0.5.
    conf = [[0, 0.9, 0.1], [0, 0.8, 0.1], [0, 0.7, 0.1]]
    expected = [[0, 1, 0.9, *P0]] + [[-1] * 7] * 3
    check(_det_layer("nms_param { nms_threshold: 0.5 top_k: 2 } confidence_threshold: 0.5"),
          _det_inputs([P0, P1, P2], conf), np.array(expected).reshape(1, 1, 4, 7))


def test_detection_output_decodes_center_size_with_variances():
    # prior P2 (centre 0.7, size 0.2); loc (1, 0, ln 2, 0) with variances 0.1, 0.1, 0.2, 0.2:
    # centre x 0.7 + 0.1·1·0.2 = 0.72, width 0.2·exp(0.2·ln 2) = 0.2·2^0.2
    w = 0.2 * 2 ** 0.2
    inputs = _det_inputs([P2], [[0, 0.9, 0.1]])
    inputs[0] = np.array([[1.0, 0.0, np.log(2.0), 0.0]])
    expected = [[0, 1, 0.9, 0.72 - w / 2, 0.6, 0.72 + w / 2, 0.8], [-1] * 7]  # 2 classes x 1 prior rows
    check(_det_layer("nms_param { nms_threshold: 0.5 } confidence_threshold: 0.2"), inputs,
          np.array(expected).reshape(1, 1, 2, 7))


def test_detection_output_errors():
    shapes = ((1, 8), (1, 6), (1, 2, 8))
    error(_det_layer("nms_param { nms_threshold: 0.5 eta: 0.9 }"), shapes, "eta 0.9")
    error(_det_layer("keep_top_k: 0"), shapes, "keep_top_k must be positive")
    error(_det_layer(""), ((1, 12), (1, 6), (1, 2, 8)), "bottom 0 \\(loc\\) holds 12 values")
    error('layer { name: "det" type: "DetectionOutput" bottom: "in0" bottom: "in1" bottom: "in2" top: "out" }',
          shapes, "num_classes must be set")


# -- Reorg ----------------------------------------------------------------------------------------

def test_reorg_reads_the_bottom_as_darknet_does():
    """darknet's reorg_cpu (forward = reverse = 0) with the bottom's C=4, H=2, W=2, stride 2:
    the bottom's memory 0..15 is read as a (1, 4, 4) array X (not as its own (4, 2, 2)), and
    plane (oy·2 + ox) of the (4, 2, 2) result is X[2j + oy, 2i + ox]: [[0, 2], [8, 10]], then
    [[1, 3], [9, 11]], [[4, 6], [12, 14]], [[5, 7], [13, 15]]; the top is that memory as (16, 1, 1)."""
    layer = 'layer { name: "r" type: "Reorg" bottom: "in0" top: "out" reorg_param { stride: 2 } }'
    flat = [0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15]
    check(layer, [np.arange(16).reshape(1, 4, 2, 2)], np.array(flat).reshape(1, 16, 1, 1))


def test_reorg_reverse_scatters_channels_into_a_finer_grid():
    """reverse: true (darknet's forward flag 1), bottom (8, 1, 1), stride 2, C' = 2: top
    (2, 2, 2)[c, oy, ox] = bottom[(2·oy + ox)·2 + c]: [[0, 2], [4, 6]] and [[1, 3], [5, 7]]."""
    layer = 'layer { name: "r" type: "Reorg" bottom: "in0" top: "out" reorg_param { stride: 2 reverse: true } }'
    check(layer, [np.arange(8).reshape(1, 8, 1, 1)], [[[[0, 2], [4, 6]], [[1, 3], [5, 7]]]])


def test_reorg_errors():
    error('layer { name: "r" type: "Reorg" bottom: "in0" top: "out" reorg_param { stride: 2 } }', ((1, 4, 3, 2),),
          "height and width by 2")
    error('layer { name: "r" type: "Reorg" bottom: "in0" top: "out" reorg_param { stride: 2 reverse: true } }',
          ((1, 6, 3, 3),), "channels divisible by 4")
    error('layer { name: "r" type: "Reorg" bottom: "in0" top: "out" }', ((1, 4, 2, 2),), "stride must be set")


# -- Padding (DeepLab) ----------------------------------------------------------------------------

def test_padding_pads_with_zeros_and_crops_with_negative_pads():
    """DeepLab v1's padding_layer.cpp: top[h + pad_beg, w + pad_beg] = bottom[h, w] on both axes."""
    x = np.arange(1, 7).reshape(1, 1, 2, 3)
    check('layer { name: "p" type: "Padding" bottom: "in0" top: "out" padding_param { pad_beg: 1 pad_end: 0 } }',
          [x], [[[[0, 0, 0, 0], [0, 1, 2, 3], [0, 4, 5, 6]]]])
    y = np.arange(20).reshape(1, 1, 4, 5)  # crop 1 at the start, 2 at the end: rows 1, columns 1..2
    check('layer { name: "p" type: "Padding" bottom: "in0" top: "out" padding_param { pad_beg: -1 pad_end: -2 } }',
          [y], [[[[6, 7]]]])
    error('layer { name: "p" type: "Padding" bottom: "in0" top: "out" padding_param { pad_beg: 1 pad_end: -1 } }',
          ((1, 1, 4, 4),), "must both be >= 0")
    error('layer { name: "p" type: "Padding" bottom: "in0" top: "out" padding_param { pad_beg: -2 pad_end: -2 } }',
          ((1, 1, 4, 4),), "leave a 0x0 output")


def test_matwrite_is_a_sink_whose_bottom_is_the_output(tmp_path):
    """DeepLab's test nets end in MatWrite (a .mat file per image, at a path the file names):
    nothing is written, and the blob it consumes is the net's output, as with Silence."""
    from protonet.pipeline import compile_net

    net = tmp_path / "deeplab.prototxt"
    net.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } } }\n'
                   'layer { name: "crop" type: "Padding" bottom: "data" top: "crop" padding_param { pad_beg: -1 pad_end: -2 } }\n'
                   'layer { name: "mat" type: "MatWrite" bottom: "crop" mat_write_param { prefix: "' + str(tmp_path) + '/x" } }\n')
    c = compile_net(net)
    assert [v.name for v in c.graph.outputs] == ["crop"] and c.graph.outputs[0].shape == (1, 2, 3, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deeplab.prototxt"]
