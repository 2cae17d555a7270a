"""Hand-computed literal cases for Caffe's traps, run through the numpy kernel AND onnxruntime.

Each expected array below was worked out by hand from Caffe's rules (comments show the sums).
"""
from __future__ import annotations

import numpy as np
import pytest

from harness import build_text
from protonet.errors import ProtonetError
from protonet.export import export
from protonet.reference import ReferenceInterpreter
from protonet.runtime import make_session


def run_both(layer: str, x: np.ndarray, weights: dict | None = None, extra_inputs: tuple = ()) -> tuple:
    dims = " ".join(f"dim: {d}" for d in x.shape)
    text = f'layer {{ name: "in" type: "Input" top: "in0" input_param {{ shape {{ {dims} }} }} }}\n{layer}\n'
    g = build_text(text)
    node = g.nodes[-1]
    for k, v in (weights or {}).items():
        node.weights[k] = np.asarray(v, dtype=np.float32).reshape(node.weights[k].shape)
    feeds = {"in0": x.astype(np.float32)}
    ref = ReferenceInterpreter(g).run(feeds)
    ort = make_session(export(g), "cpu").run(feeds)
    name = g.outputs[0].name
    return ref[name], ort[name]


def check(layer: str, x, expected, weights=None, rtol=1e-6):
    ref, ort = run_both(layer, np.asarray(x, dtype=np.float64), weights)
    expected = np.asarray(expected, dtype=np.float64)
    assert ref.shape == expected.shape, (ref.shape, expected.shape)
    np.testing.assert_allclose(ref, expected, rtol=rtol, atol=1e-7)
    np.testing.assert_allclose(ort, expected, rtol=1e-5, atol=1e-6)


X33 = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
X44 = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)


def pool(params: str) -> str:
    return f'layer {{ name: "p" type: "Pooling" bottom: "in0" top: "out" pooling_param {{ {params} }} }}'


def test_pooling_rounds_up():
    # MAX 3x3/2 on 4x4: ceil((4-3)/2)+1 = 2; the second window is clipped to rows/cols 2..3
    check(pool("pool: MAX kernel_size: 3 stride: 2"), X44, [[[[10, 11], [14, 15]]]])


def test_pooling_round_mode_floor():
    check(pool("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR"), X44, [[[[10]]]])


def test_pooling_clips_last_window_in_padding():
    # AVE 2x2/2 pad 1 on 3x3: ceil((3+2-2)/2)+1 = 3, but (3-1)*2 = 4 >= 3+1 so 2 outputs.
    # every window spans 2 rows/cols of [-1, 4): divisor 4 (padding counted)
    # [x00]/4, [x01+x02]/4 = 5/4, [x10+x20]/4 = 11/4, [x11+x12+x21+x22]/4 = 28/4
    check(pool("pool: AVE kernel_size: 2 stride: 2 pad: 1"), X33, [[[[0.25, 1.25], [2.75, 7.0]]]])


def test_average_divisor_counts_padding_not_overhang():
    # AVE 3x3/2 pad 1 on 4x4 (values 0..15): 3 outputs (4 < 4+1, no clip). Row windows start at
    # -1, 1, 3 and end at min(start+3, 4+1): sizes 3, 3, 2 (the last loses the overhang past the pad)
    # (0,0): rows 0,1 cols 0,1 -> (0+1+4+5)/9;  (2,0): row 3 cols 0,1 -> (12+13)/(2*3)
    # (2,2): row 3 col 3 -> 15/(2*2);  (1,1): rows 1..3 cols 1..3 -> (5+6+7+9+10+11+13+14+15)/9
    out = np.array([[10 / 9, (1 + 2 + 3 + 5 + 6 + 7) / 9, (3 + 7) / 6],
                    [(4 + 5 + 8 + 9 + 12 + 13) / 9, 90 / 9, (7 + 11 + 15) / 6],
                    [25 / 6, (13 + 14 + 15) / 6, 15 / 4]])
    check(pool("pool: AVE kernel_size: 3 stride: 2 pad: 1"), X44, out[None, None])


def test_lrn_across_channels_divides_alpha_by_size():
    # size 3, alpha 3 (alpha/size = 1), beta 1, k 1 on channels [1, 2, 3]:
    # c0: 1 + (1+4) = 6; c1: 1 + (1+4+9) = 15; c2: 1 + (4+9) = 14
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    check('layer { name: "n" type: "LRN" bottom: "in0" top: "out" lrn_param { local_size: 3 alpha: 3 beta: 1 } }',
          x, (np.array([1 / 6, 2 / 15, 3 / 14])).reshape(1, 3, 1, 1))


def test_lrn_across_channels_beta_three_quarters():
    # AlexNet's beta 0.75 (lowered without Pow); size 3, alpha 3, k 2 on channels [1, 2, 3, 4]:
    # c0: 2 + (1+4) = 7; c1: 2 + (1+4+9) = 16; c2: 2 + (4+9+16) = 31; c3: 2 + (9+16) = 27
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1)
    scale = np.array([7.0, 16.0, 31.0, 27.0]).reshape(1, 4, 1, 1)
    check('layer { name: "n" type: "LRN" bottom: "in0" top: "out" lrn_param { local_size: 3 alpha: 3 beta: 0.75 k: 2 } }',
          x, x / scale ** 0.75)


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 1.0), (3, 2.0, 0.6, 2.0), (7, 0.5, 1.0, 1.0),
                                                (1, 0.3, 0.75, 0.5)])
def test_lrn_across_channels_lowering_agrees_with_onnx_lrn(size, alpha, beta, k):
    """A second implementation: onnxruntime's own LRN kernel (the op protonet no longer emits, for speed)."""
    import onnx.helper as h
    from onnx import TensorProto

    x = np.random.default_rng(size).standard_normal((2, 9, 3, 4)) * 3
    _, ort_out = run_both(f'layer {{ name: "n" type: "LRN" bottom: "in0" top: "out" lrn_param {{ local_size: {size} '
                          f'alpha: {alpha} beta: {beta} k: {k} }} }}', x)
    v = [h.make_tensor_value_info(n, TensorProto.FLOAT, x.shape) for n in ("x", "y")]
    lrn = h.make_graph([h.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=k)], "lrn", v[:1], v[1:])
    model = h.make_model(lrn, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    onnx_lrn = make_session(model, "cpu").run({"x": x.astype(np.float32)})["y"]
    np.testing.assert_allclose(ort_out, onnx_lrn, rtol=1e-5, atol=1e-6)


def test_lrn_within_channel_averages_over_window():
    # size 3 (pad 1), alpha 9, beta 1: each 3x3 window covers the whole 2x2 map: sum of squares 30,
    # mean 30/9, scale 1 + 9*30/9 = 31 (k is not used within a channel)
    x = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    check('layer { name: "n" type: "LRN" bottom: "in0" top: "out" '
          'lrn_param { local_size: 3 alpha: 9 beta: 1 k: 5 norm_region: WITHIN_CHANNEL } }', x, x / 31)


def test_batchnorm_divides_by_stored_scale_factor():
    # mean blob [2, 4], variance blob [8, 18], factor 2 -> mean [1, 2], var [4, 9]
    x = np.array([3.0, 5.0]).reshape(1, 2, 1, 1)
    eps = 1e-5
    want = np.array([2 / np.sqrt(4 + eps), 3 / np.sqrt(9 + eps)]).reshape(1, 2, 1, 1)
    check('layer { name: "bn" type: "BatchNorm" bottom: "in0" top: "out" }', x, want,
          {"mean": [2, 4], "variance": [8, 18], "scale_factor": [2]})


def test_batchnorm_zero_scale_factor_means_zero_stats():
    x = np.array([3.0, 5.0]).reshape(1, 2, 1, 1)
    check('layer { name: "bn" type: "BatchNorm" bottom: "in0" top: "out" batch_norm_param { eps: 0.25 } }',
          x, x / 0.5, {"mean": [2, 4], "variance": [8, 18], "scale_factor": [0]})


def test_eltwise_sum_coefficients():
    x = np.array([[1.0, 4.0]])
    text = ('layer { name: "sp" type: "Split" bottom: "in0" top: "a" top: "b" }\n'
            'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "out" '
            'eltwise_param { operation: SUM coeff: 2 coeff: -0.5 } }')
    check(text, x, [[1.5, 6.0]])  # 2x - 0.5x


def test_convolution_output_size_floors():
    # 5x5, 3x3 kernel, stride 2, no pad: floor((5-3)/2)+1 = 2; all-ones weights sum each window
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    layer = ('layer { name: "c" type: "Convolution" bottom: "in0" top: "out" '
             'convolution_param { num_output: 1 kernel_size: 3 stride: 2 bias_term: false } }')
    want = [[[[x[0, 0, 0:3, 0:3].sum(), x[0, 0, 0:3, 2:5].sum()], [x[0, 0, 2:5, 0:3].sum(), x[0, 0, 2:5, 2:5].sum()]]]]
    check(layer, x, want, {"weight": np.ones(9)})


def test_grouped_convolution_keeps_groups_apart():
    # 2 groups, 1x1 kernels: out0 = 2*in0 (group 0 sees channel 0 only), out1 = 3*in1
    x = np.array([1.0, 10.0]).reshape(1, 2, 1, 1)
    layer = ('layer { name: "c" type: "Convolution" bottom: "in0" top: "out" '
             'convolution_param { num_output: 2 kernel_size: 1 group: 2 } }')
    check(layer, x, np.array([2.0 + 0.5, 30.0 - 1]).reshape(1, 2, 1, 1), {"weight": [2, 3], "bias": [0.5, -1]})


def test_scale_axis_and_bias():
    x = np.ones((1, 2, 1, 2))
    check('layer { name: "s" type: "Scale" bottom: "in0" top: "out" scale_param { bias_term: true } }',
          x, np.array([[[[3, 3]], [[-1, -1]]]]) + np.array([1, 2]).reshape(1, 2, 1, 1),
          {"scale": [3, -1], "bias": [1, 2]})


def test_reshape_zero_copies_and_minus_one_infers():
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    check('layer { name: "r" type: "Reshape" bottom: "in0" top: "out" '
          'reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }', x, x.reshape(2, 6, 2))


def test_inner_product_flattens_from_axis():
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    check('layer { name: "fc" type: "InnerProduct" bottom: "in0" top: "out" '
          'inner_product_param { num_output: 2 } }', x, [[1 + 2 + 3 + 4 + 0.5, 1 - 4]],
          {"weight": [[1, 1, 1, 1], [1, 0, 0, -1]], "bias": [0.5, 0]})


def test_pooling_rejects_pad_not_smaller_than_kernel():
    with pytest.raises(ProtonetError, match=r"layer 'p' \(Pooling\): pad \(2, 2\) must be smaller than the kernel"):
        build_text('layer { name: "in" type: "Input" top: "in0" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }\n'
                   + pool("pool: MAX kernel_size: 2 stride: 1 pad: 2"))


def test_pooling_clips_both_axes_when_either_pads():
    # kernel 1x2, stride 3x1, pad 0x1 on 5x4: rows ceil(4/3)+1 = 3, and because the layer pads
    # (on w), Caffe also clips rows: (3-1)*3 = 6 >= 5+0, so 2 rows; cols ceil(4/1)+1 = 5
    x = np.arange(20, dtype=np.float64).reshape(1, 1, 5, 4)
    layer = pool("pool: MAX kernel_h: 1 kernel_w: 2 stride_h: 3 stride_w: 1 pad_h: 0 pad_w: 1")
    want = [[[[0, 1, 2, 3, 3], [12, 13, 14, 15, 15]]]]
    check(layer, x, want)


def test_max_pool_window_past_the_input_keeps_minus_flt_max():
    # kernel 1, stride 2 on 4x4 without padding: ceil(3/2)+1 = 3 outputs per axis, the last
    # window starts at 4, past the input: Caffe leaves -FLT_MAX there (mask -1)
    m = -float(np.finfo(np.float32).max)
    want = [[[[0, 2, m], [8, 10, m], [m, m, m]]]]
    check(pool("pool: MAX kernel_size: 1 stride: 2"), X44, want)
    text = ('layer { name: "in" type: "Input" top: "in0" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }\n'
            'layer { name: "p" type: "Pooling" bottom: "in0" top: "out" top: "mask" '
            'pooling_param { pool: MAX kernel_size: 1 stride: 2 } }\n')
    g = build_text(text)
    feeds = {"in0": X44.astype(np.float32)}
    ref = ReferenceInterpreter(g).run(feeds)
    ort = make_session(export(g), "cpu").run(feeds)
    mask = [[[[0, 2, -1], [8, 10, -1], [-1, -1, -1]]]]
    np.testing.assert_array_equal(ref["mask"], mask)
    np.testing.assert_array_equal(ort["mask"], mask)


@pytest.mark.parametrize("params", ["pool: AVE kernel_size: 64 stride: 64", "pool: AVE global_pooling: true"])
def test_ave_pool_large_window_mean_is_exact_where_float32_holds_it(params):
    # 64x64 values of 1 + 2^-13: the mean is 1 + 2^-13, a float32. One running float32 sum of the
    # 4096 terms (onnxruntime's AveragePool with stride = kernel) rounds each step down once it
    # passes 2048 (spacing 2^-12 there, a tie to even), giving 1 + 2^-14; by rows, each sum stays
    # below 65 (spacing 2^-17) and every step is exact
    v = 1.0 + 2.0 ** -13
    ref, ort = run_both(pool(params), np.full((1, 1, 64, 64), v))
    assert ref.item() == v and ort.item() == v


def test_ave_pool_window_past_the_input_is_refused():
    with pytest.raises(ProtonetError, match=r"layer 'p' \(Pooling\): the last AVE window\(s\) of the 3x3 output "
                                            r"hold no input value"):
        build_text('layer { name: "in" type: "Input" top: "in0" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }\n'
                   + pool("pool: AVE kernel_size: 1 stride: 2"))


def test_roi_pooling_rounds_corners_like_c_round():
    # x1 = 0.49999997 (the float32 just below 0.5): C's round() gives 0, so the ROI starts at
    # column 0, where the maximum 9 is (a float32 floor(x + 0.5) would give 1 and miss it)
    v = float(np.nextafter(np.float32(0.5), np.float32(0)))
    text = ('layer { name: "d" type: "Input" top: "x" top: "rois" '
            'input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } shape { dim: 1 dim: 5 } } }\n'
            'layer { name: "r" type: "ROIPooling" bottom: "x" bottom: "rois" top: "out" '
            'roi_pooling_param { pooled_h: 1 pooled_w: 1 spatial_scale: 1 } }\n')
    g = build_text(text)
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, :, 0] = 9.0
    feeds = {"x": x, "rois": np.array([[0, v, 0, 3, 3]], np.float32)}
    assert ReferenceInterpreter(g).run(feeds)["out"].ravel().tolist() == [9.0]
    assert make_session(export(g), "cpu").run(feeds)["out"].ravel().tolist() == [9.0]
