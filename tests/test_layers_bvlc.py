"""Hand-computed cases for the Caffe traps of the BVLC layers in protonet/layers/bvlc.py.

Each case runs a tiny net through the numpy kernel (ReferenceInterpreter) and through the ONNX
lowering in onnxruntime, and compares both with literal numbers computed by hand from Caffe's
rules. Bad parameters are checked for a located error.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness import build_text
from protonet.build import BuildOptions, build_graph
from protonet.errors import ProtonetError
from protonet.export import export
from protonet.frontend import load_net
from protonet.reference import ReferenceInterpreter
from protonet.runtime import make_session


def input_layers(*shapes: tuple[int, ...]) -> str:
    lines = []
    for i, shape in enumerate(shapes):
        dims = " ".join(f"dim: {d}" for d in shape)
        lines.append(f'layer {{ name: "input{i}" type: "Input" top: "in{i}" input_param {{ shape {{ {dims} }} }} }}')
    return "\n".join(lines) + "\n"


def build_as_written(text: str, init: str = "random"):
    """Build without the deploy conversion (which turns data layers into Input layers and drops
    Silence), so that these layers' own classes are what gets tested."""
    graph, _ = build_graph(load_net("test.prototxt", text=text, deploy=False), None, BuildOptions(init=init))
    return graph


def run_both(layers: str, inputs: list, weights: dict | None = None, init: str = "random"):
    """Build Input layers for ``inputs`` (in0, in1, ...) followed by ``layers``; optionally
    replace node weights ({layer: {blob: values}}); run kernel and onnxruntime.
    Returns (graph, reference results, onnxruntime results)."""
    arrays = [np.asarray(x, dtype=np.float32) for x in inputs]
    graph = build_as_written(input_layers(*[a.shape for a in arrays]) + layers, init=init)
    for node in graph.nodes:
        for key, value in (weights or {}).get(node.name, {}).items():
            assert node.weights[key].shape == np.shape(value), (key, node.weights[key].shape)
            node.weights[key] = np.asarray(value, dtype=np.float32)
    feeds = {f"in{i}": a for i, a in enumerate(arrays)}
    ref = ReferenceInterpreter(graph).run(feeds, keep_all=True)
    got = make_session(export(graph, expose_all=True), "cpu").run(feeds)
    return graph, ref, got


def check(layers: str, inputs: list, expected: dict, weights: dict | None = None, init: str = "random",
          rtol: float = 1e-6, atol: float = 1e-6):
    """Both implementations give the literal ``expected`` blobs (values and shapes)."""
    graph, ref, got = run_both(layers, inputs, weights, init)
    for name, want in expected.items():
        want = np.asarray(want, dtype=np.float64)
        for impl, res in (("kernel", ref), ("onnxruntime", got)):
            assert res[name].shape == want.shape, f"{impl} {name}: shape {res[name].shape} vs {want.shape}"
            np.testing.assert_allclose(res[name], want, rtol=rtol, atol=atol, err_msg=f"{impl} {name}")
    return graph


def build_error(layers: str, *shapes: tuple[int, ...], match: str) -> None:
    with pytest.raises(ProtonetError, match=match) as info:
        build_as_written(input_layers(*shapes) + layers)
    assert "test.prototxt:" in str(info.value)  # located


# -- element-wise ------------------------------------------------------------------------------

def test_absval():
    check('layer { name: "a" type: "AbsVal" bottom: "in0" top: "out" }', [[-1.5, 0.0, 2.0]],
          {"out": [1.5, 0.0, 2.0]})


def test_absval_refuses_in_place():
    build_error('layer { name: "a" type: "AbsVal" bottom: "in0" top: "in0" }', (2,), match="in-place")


def test_bnll_is_stable_for_large_inputs():
    # x + log(1 + exp(-x)) for x > 0, log(1 + exp(x)) otherwise: no overflow at +-100
    check('layer { name: "b" type: "BNLL" bottom: "in0" top: "out" }', [[-100.0, 0.0, 1.0, 100.0]],
          {"out": [3.720075976020836e-44, 0.6931471805599453, 1.3132616875182228, 100.0]}, rtol=1e-6, atol=1e-7)


def test_clip_min_above_max_gives_min():
    # Caffe: max(min, min(x, max)); with min 1 > max -1 every output is 1 (ONNX Clip would give -1)
    check('layer { name: "c" type: "Clip" bottom: "in0" top: "out" clip_param { min: 1 max: -1 } }',
          [[-3.0, 0.0, 3.0]], {"out": [1.0, 1.0, 1.0]})
    check('layer { name: "c" type: "Clip" bottom: "in0" top: "out" clip_param { min: -0.5 max: 2 } }',
          [[-3.0, 0.25, 3.0, float("nan")]], {"out": [-0.5, 0.25, 2.0, -0.5]})  # std::max(min, NaN) is min


def test_clip_needs_min_and_max():
    build_error('layer { name: "c" type: "Clip" bottom: "in0" top: "out" clip_param { min: 1 } }', (2,),
                match="min and max")


def test_elu_alpha():
    check('layer { name: "e" type: "ELU" bottom: "in0" top: "out" elu_param { alpha: 0.5 } }', [[-1.0, 0.0, 2.0]],
          {"out": [0.5 * (math.exp(-1.0) - 1.0), 0.0, 2.0]})
    check('layer { name: "e" type: "ELU" bottom: "in0" top: "out" elu_param { alpha: 0.5 } }', [[-1.0]],
          {"out": [-0.31606027941427883]})


def test_swish_beta():
    check('layer { name: "s" type: "Swish" bottom: "in0" top: "out" swish_param { beta: 2 } }', [[1.0, -1.0, 0.0]],
          {"out": [0.8807970779778823, -0.11920292202211755, 0.0]})


def test_threshold_is_strictly_greater():
    check('layer { name: "t" type: "Threshold" bottom: "in0" top: "out" threshold_param { threshold: 0.5 } }',
          [[0.5, 0.6, -1.0, 0.4999]], {"out": [0.0, 1.0, 0.0, 0.0]})


def test_exp_base_scale_shift():
    # 2^(1 + 3x)
    check('layer { name: "e" type: "Exp" bottom: "in0" top: "out" exp_param { base: 2 scale: 3 shift: 1 } }',
          [[1.0, 0.0, -1.0]], {"out": [16.0, 2.0, 0.25]})
    # base -1 means e: e^(1 + x)
    check('layer { name: "e" type: "Exp" bottom: "in0" top: "out" exp_param { shift: 1 } }',
          [[0.0, -1.0]], {"out": [math.e, 1.0]})


def test_exp_bad_base():
    build_error('layer { name: "e" type: "Exp" bottom: "in0" top: "out" exp_param { base: -2 } }', (2,),
                match="base must be strictly positive")


def test_log_base_scale_shift():
    # log10(1 + 2x)
    check('layer { name: "l" type: "Log" bottom: "in0" top: "out" log_param { base: 10 scale: 2 shift: 1 } }',
          [[4.5, 49.5, 0.0]], {"out": [1.0, 2.0, 0.0]})
    check('layer { name: "l" type: "Log" bottom: "in0" top: "out" }', [[1.0, math.e]], {"out": [0.0, 1.0]})


def test_log_base_one_refused():
    build_error('layer { name: "l" type: "Log" bottom: "in0" top: "out" log_param { base: 1 } }', (2,),
                match="base 1")


def test_power_general():
    # (1 + 2x)^2
    check('layer { name: "p" type: "Power" bottom: "in0" top: "out" power_param { power: 2 scale: 2 shift: 1 } }',
          [[1.0, -1.0, 0.0]], {"out": [9.0, 1.0, 1.0]})


def test_power_scale_zero_is_constant_even_for_nan():
    # Caffe's shortcut: power * scale == 0 -> the constant shift^power, whatever x holds
    check('layer { name: "p" type: "Power" bottom: "in0" top: "out" power_param { power: 2 scale: 0 shift: 3 } }',
          [[float("nan"), float("inf"), -5.0]], {"out": [9.0, 9.0, 9.0]})
    # power 0 -> 1, even where (shift + scale*x) would be 0 or NaN
    check('layer { name: "p" type: "Power" bottom: "in0" top: "out" power_param { power: 0 scale: 2 } }',
          [[0.0, float("nan")]], {"out": [1.0, 1.0]})


def test_prelu_default_slope_is_quarter():
    g = check('layer { name: "p" type: "PReLU" bottom: "in0" top: "out" }', [[[-4.0, 4.0], [-8.0, 1.0]]],
              {"out": [[-1.0, 4.0], [-2.0, 1.0]]}, init="filler")
    assert g.nodes[-1].weights["slope"].shape == (2,)


def test_prelu_slope_along_axis1_and_shared():
    check('layer { name: "p" type: "PReLU" bottom: "in0" top: "out" }', [[[[[-1.0, 1.0]], [[-10.0, 10.0]]]]],
          {"out": [[[[-0.5, 1.0]], [[-1.0, 10.0]]]]}, weights={"p": {"slope": [0.5, 0.1]}})
    g = check('layer { name: "p" type: "PReLU" bottom: "in0" top: "out" prelu_param { channel_shared: true } }',
              [[[-1.0, 1.0], [-10.0, 10.0]]], {"out": [[-0.5, 1.0], [-5.0, 10.0]]}, weights={"p": {"slope": 0.5}})
    assert g.nodes[-1].weights["slope"].shape == ()  # a 0-axis blob, as Caffe stores it


def test_prelu_needs_two_axes():
    build_error('layer { name: "p" type: "PReLU" bottom: "in0" top: "out" }', (3,), match="at least 2 axes")


# -- ArgMax ------------------------------------------------------------------------------------

ARGMAX = 'layer {{ name: "a" type: "ArgMax" bottom: "in0" top: "out" argmax_param {{ {} }} }}'


def test_argmax_ties_go_to_the_higher_index():
    # Caffe sorts (value, index) pairs with std::greater: equal values, higher index first
    x = [[1.0, 3.0, 3.0, 2.0]]
    check(ARGMAX.format("top_k: 2"), [x], {"out": [[[2.0, 1.0]]]})  # (N, 1, top_k)
    check(ARGMAX.format("top_k: 2 out_max_val: true"), [x], {"out": [[[2.0, 1.0], [3.0, 3.0]]]})  # indices, values
    check(ARGMAX.format("axis: 1 top_k: 3"), [x], {"out": [[2.0, 1.0, 3.0]]})
    check(ARGMAX.format("axis: 1 top_k: 2 out_max_val: true"), [x], {"out": [[3.0, 3.0]]})  # values only


def test_argmax_flattens_items_and_pads_to_input_rank():
    # no axis: each item flattened; top (N, 1, top_k, 1) for a 4-D input
    x = [[[[3.0, 1.0]], [[3.0, 0.0]]]]  # (1, 2, 1, 2), flat [3, 1, 3, 0]
    check(ARGMAX.format(""), [x], {"out": [[[[2.0]]]]})
    check(ARGMAX.format("out_max_val: true top_k: 2"), [x], {"out": [[[[2.0], [0.0]], [[3.0], [3.0]]]]})


def test_argmax_axis_keeps_other_axes():
    x = [[[1.0, 5.0], [4.0, 2.0], [4.0, 7.0]]]  # (1, 3, 2), along axis 1
    check(ARGMAX.format("axis: 1"), [x], {"out": [[[2.0, 2.0]]]})
    check(ARGMAX.format("axis: 1 out_max_val: true"), [x], {"out": [[[4.0, 7.0]]]})


def test_argmax_top_k_too_large():
    build_error(ARGMAX.format("top_k: 7"), (2, 3, 2), match="top_k 7 exceeds")
    build_error(ARGMAX.format("axis: 1 top_k: 4"), (2, 3, 2), match="top_k 4 exceeds")


# -- Bias --------------------------------------------------------------------------------------

def test_bias_two_bottoms():
    check('layer { name: "b" type: "Bias" bottom: "in0" bottom: "in1" top: "out" }',
          [[[[[1.0, 2.0]], [[3.0, 4.0]]]], [10.0, 20.0]],  # (1, 2, 1, 2) + b along axis 1
          {"out": [[[[11.0, 12.0]], [[23.0, 24.0]]]]})


def test_bias_learned_blob_num_axes():
    g = check('layer { name: "b" type: "Bias" bottom: "in0" top: "out" bias_param { axis: 1 num_axes: -1 } }',
              [[[[1.0, 2.0], [3.0, 4.0]]]], {"out": [[[1.5, 2.0], [2.0, 5.0]]]},
              weights={"b": {"bias": [[0.5, 0.0], [-1.0, 1.0]]}})
    assert g.nodes[-1].weights["bias"].shape == (2, 2)
    # no filler: Caffe's default constant 0
    check('layer { name: "b" type: "Bias" bottom: "in0" top: "out" }', [[[1.0, 2.0]]], {"out": [[1.0, 2.0]]},
          init="filler")


def test_bias_shape_mismatch():
    build_error('layer { name: "b" type: "Bias" bottom: "in0" bottom: "in1" top: "out" }', (2, 3, 4), (4,),
                match="does not match")


# -- Crop --------------------------------------------------------------------------------------

def test_crop_per_axis_offsets_take_second_bottom_shape():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    check('layer { name: "c" type: "Crop" bottom: "in0" bottom: "in1" top: "out" '
          'crop_param { offset: 1 offset: 0 } }', [x, np.zeros((5, 5, 2, 3))],
          {"out": [[[[4.0, 5.0, 6.0], [8.0, 9.0, 10.0]]]]})


def test_crop_one_offset_for_all_axes_from_axis():
    x = np.arange(18.0).reshape(1, 2, 3, 3)  # channel 1 is 9..17
    check('layer { name: "c" type: "Crop" bottom: "in0" bottom: "in1" top: "out" crop_param { axis: 1 offset: 1 } }',
          [x, np.zeros((7, 1, 2, 2))], {"out": [[[[13.0, 14.0], [16.0, 17.0]]]]})


def test_crop_errors():
    build_error('layer { name: "c" type: "Crop" bottom: "in0" bottom: "in1" top: "out" crop_param { offset: 2 } }',
                (1, 1, 4, 4), (1, 1, 3, 3), match="out of bounds")
    build_error('layer { name: "c" type: "Crop" bottom: "in0" bottom: "in1" top: "out" '
                'crop_param { offset: 1 offset: 1 offset: 1 } }', (1, 1, 4, 4), (1, 1, 3, 3), match="3 offsets")


# -- Deconvolution -----------------------------------------------------------------------------

DECONV = 'layer {{ name: "d" type: "Deconvolution" bottom: "in0" top: "out" convolution_param {{ {} }} }}'


def test_deconvolution_scatters_without_flipping():
    # y[i + ki, j + kj] += x[i, j] * w[ki, kj]; output 1*(2-1) + 2 = 3
    x = [[[[1.0, 2.0], [3.0, 4.0]]]]
    w = [[[[1.0, 10.0], [100.0, 1000.0]]]]
    check(DECONV.format("num_output: 1 kernel_size: 2"), [x],
          {"out": [[[[1.5, 12.5, 20.5], [103.5, 1234.5, 2040.5], [300.5, 3400.5, 4000.5]]]]},
          weights={"d": {"weight": w, "bias": [0.5]}})


def test_deconvolution_stride_and_pad_crop():
    # stride 2: each pixel stamps x*w into its own 2x2 block of a 4x4; pad 1 keeps rows/cols 1..2
    x = [[[[1.0, 2.0], [3.0, 4.0]]]]
    w = [[[[1.0, 10.0], [100.0, 1000.0]]]]
    check(DECONV.format("num_output: 1 kernel_size: 2 stride: 2 pad: 1 bias_term: false"), [x],
          {"out": [[[[1000.0, 200.0], [30.0, 4.0]]]]}, weights={"d": {"weight": w}})


def test_deconvolution_weight_layout_is_cin_by_cout_per_group():
    # weight (C_in=2, num_output/group=2, 1, 1): group 0 maps channel 0 to outputs 0,1; group 1 channel 1 to 2,3
    g = check(DECONV.format("num_output: 4 kernel_size: 1 group: 2 bias_term: false"), [[[[[1.0]], [[2.0]]]]],
              {"out": [[[[1.0]], [[2.0]], [[6.0]], [[8.0]]]]},
              weights={"d": {"weight": [[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]]}})
    assert g.nodes[-1].weights["weight"].shape == (2, 2, 1, 1)


def test_deconvolution_bilinear_upsampling():
    # bilinear filler, kernel 4: 1-D taps [0.25, 0.75, 0.75, 0.25]; stride 2 over two ones gives
    # [0.25, 0.75, 1, 1, 0.75, 0.25], pad 1 crops to [0.75, 1, 1, 0.75]; 2-D is the outer product
    row = [0.75, 1.0, 1.0, 0.75]
    check(DECONV.format('num_output: 1 kernel_size: 4 stride: 2 pad: 1 bias_term: false '
                        'weight_filler { type: "bilinear" }'), [np.ones((1, 1, 2, 2))],
          {"out": [[[[a * b for b in row] for a in row]]]}, init="filler")


def test_deconvolution_output_size_and_cost():
    g = build_text(input_layers((1, 4, 5, 6)) + DECONV.format(
        "num_output: 6 kernel_size: 3 stride: 2 pad: 1 dilation: 2 group: 2"))
    node = g.nodes[-1]
    # 2*(5-1) + 2*(3-1)+1 - 2 = 11; 2*(6-1) + 5 - 2 = 13
    assert node.outputs[0].shape == (1, 6, 11, 13)
    assert node.weights["weight"].shape == (4, 3, 3, 3)
    from protonet.layers import registry
    assert registry.get("Deconvolution").cost(node.attrs, [(1, 4, 5, 6)], [(1, 6, 11, 13)]) == 4 * 5 * 6 * 3 * 9


def test_deconvolution_errors():
    build_error(DECONV.format("num_output: 3 kernel_size: 2 group: 2"), (1, 4, 3, 3), match="not divisible by group")
    build_error(DECONV.format("num_output: 2 kernel_size: 1 pad: 1"), (1, 2, 1, 1), match="leaves no output")


# -- Embed -------------------------------------------------------------------------------------

def test_embed_lookup_with_bias():
    w = [[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]]
    check('layer { name: "e" type: "Embed" bottom: "in0" top: "out" embed_param { num_output: 2 input_dim: 3 } }',
          [[[2.0, 0.0], [1.0, 2.0]]],
          {"out": [[[20.5, 20.5], [0.5, 0.5]], [[10.5, 10.5], [20.5, 20.5]]]},
          weights={"e": {"weight": w, "bias": [0.5, -0.5]}})


def test_embed_index_out_of_range_and_missing_dims():
    graph = build_text(input_layers((2,)) +
                       'layer { name: "e" type: "Embed" bottom: "in0" top: "out" '
                       'embed_param { num_output: 2 input_dim: 3 } }')
    with pytest.raises(ProtonetError, match="out of range"):
        ReferenceInterpreter(graph).run({"in0": np.array([0.0, 3.0])})
    build_error('layer { name: "e" type: "Embed" bottom: "in0" top: "out" embed_param { num_output: 2 } }', (2,),
                match="input_dim")


# -- Reduction, MVN ----------------------------------------------------------------------------

RED = 'layer {{ name: "r" type: "Reduction" bottom: "in0" top: "out" reduction_param {{ {} }} }}'
X23 = [[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]]


def test_reduction_operations_and_coeff():
    check(RED.format("operation: ASUM axis: 1 coeff: 0.5"), [X23], {"out": [3.0, 7.5]})
    check(RED.format("operation: SUMSQ axis: 1"), [X23], {"out": [14.0, 77.0]})
    check(RED.format("operation: MEAN axis: -1 coeff: 2"), [X23], {"out": [4.0 / 3.0, -10.0 / 3.0]})


def test_reduction_default_axis_0_gives_a_scalar():
    check(RED.format(""), [X23], {"out": -3.0})
    check(RED.format("operation: MEAN coeff: 2"), [X23], {"out": -1.0})


def test_reduction_axis_out_of_range():
    build_error(RED.format("axis: 2"), (2, 3), match="axis 2 is out of range")


def test_mvn_eps_is_added_to_the_std():
    # mean 2, std 1: (x - 2) / (1 + eps), eps = 1 -> +-0.5 (eps on the variance would give +-1/sqrt(2))
    check('layer { name: "m" type: "MVN" bottom: "in0" top: "out" mvn_param { eps: 1 } }', [[[[[1.0, 3.0]]]]],
          {"out": [[[[-0.5, 0.5]]]]})


def test_mvn_across_channels_and_mean_only():
    x = [[[[1.0]], [[3.0]]]]  # (1, 2, 1, 1)
    check('layer { name: "m" type: "MVN" bottom: "in0" top: "out" mvn_param { across_channels: true eps: 1 } }', [x],
          {"out": [[[[-0.5]], [[0.5]]]]})
    # per channel a single value: x - mean = 0
    check('layer { name: "m" type: "MVN" bottom: "in0" top: "out" mvn_param { eps: 1 } }', [x],
          {"out": [[[[0.0]], [[0.0]]]]})
    check('layer { name: "m" type: "MVN" bottom: "in0" top: "out" mvn_param { normalize_variance: false } }',
          [[[[[1.0, 2.0, 6.0]]]]], {"out": [[[[-2.0, -1.0, 3.0]]]]})


def test_mvn_top_is_4d():
    # Caffe reshapes the top to (num, channels, height, width): a 2-D bottom gives a 4-D top
    check('layer { name: "m" type: "MVN" bottom: "in0" top: "out" mvn_param { across_channels: true eps: 1 } }',
          [[[1.0, 3.0], [5.0, 5.0]]], {"out": [[[[-0.5]], [[0.5]]], [[[0.0]], [[0.0]]]]})


def test_mvn_refuses_5d():
    build_error('layer { name: "m" type: "MVN" bottom: "in0" top: "out" }', (1, 2, 2, 2, 2), match="legacy 4-D")


# -- Parameter, Silence ------------------------------------------------------------------------

def test_parameter_is_a_constant_not_an_input():
    text = 'layer { name: "p" type: "Parameter" top: "out" parameter_param { shape { dim: 2 dim: 2 } } }\n'
    graph = build_text(text, init="filler")
    assert graph.inputs == []
    assert [v.name for v in graph.outputs] == ["out"]
    np.testing.assert_array_equal(ReferenceInterpreter(graph).run({})["out"], np.zeros((2, 2)))
    check('layer { name: "p" type: "Parameter" top: "out" parameter_param { shape { dim: 2 dim: 2 } } }', [],
          {"out": [[1.0, 2.0], [3.0, 4.0]]}, weights={"p": {"data": [[1.0, 2.0], [3.0, 4.0]]}})


def test_parameter_bad_shape():
    with pytest.raises(ProtonetError, match="positive dimensions") as info:
        build_text('layer { name: "p" type: "Parameter" top: "out" parameter_param { shape { dim: 2 dim: 0 } } }\n')
    assert "test.prototxt:1" in str(info.value)


def test_silence_consumes_blobs():
    graph = check('layer { name: "s" type: "Silence" bottom: "in0" }\n'
                  'layer { name: "r" type: "ReLU" bottom: "in1" top: "out" }', [[1.0, 2.0], [-1.0, 1.0]],
                  {"out": [0.0, 1.0]})
    assert [v.name for v in graph.outputs] == ["out"]
    build_error('layer { name: "s" type: "Silence" bottom: "in0" top: "x" }', (2,), match="needs 0 top")


# -- Slice, Tile -------------------------------------------------------------------------------

def test_slice_points():
    check('layer { name: "s" type: "Slice" bottom: "in0" top: "a" top: "b" top: "c" '
          'slice_param { axis: 1 slice_point: 1 slice_point: 3 } }', [[[0.0, 1.0, 2.0, 3.0, 4.0]]],
          {"a": [[0.0]], "b": [[1.0, 2.0]], "c": [[3.0, 4.0]]})


def test_slice_equal_parts_and_legacy_slice_dim():
    check('layer { name: "s" type: "Slice" bottom: "in0" top: "a" top: "b" slice_param { slice_dim: 0 } }',
          [[[1.0, 2.0], [3.0, 4.0]]], {"a": [[1.0, 2.0]], "b": [[3.0, 4.0]]})


def test_slice_errors():
    s = 'layer {{ name: "s" type: "Slice" bottom: "in0" top: "a" top: "b" slice_param {{ {} }} }}'
    build_error(s.format("axis: 1 slice_dim: 1"), (2, 4), match="not both")
    build_error(s.format("slice_point: 1 slice_point: 2"), (2, 4), match="one fewer than the tops")
    build_error(s.format(""), (2, 3), match="do not divide")
    build_error(s.format("slice_point: 3"), (2, 3), match="leaves nothing")


def test_tile_repeats_the_whole_block():
    # abab, not aabb
    check('layer { name: "t" type: "Tile" bottom: "in0" top: "out" tile_param { axis: 1 tiles: 2 } }',
          [[[[1.0, 2.0], [3.0, 4.0]]]], {"out": [[[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [3.0, 4.0]]]})


def test_tile_needs_tiles():
    build_error('layer { name: "t" type: "Tile" bottom: "in0" top: "out" tile_param { axis: 1 } }', (2, 2),
                match="tiles must be given")


# -- SPP ---------------------------------------------------------------------------------------

def test_spp_ave_levels_with_padding_divisor():
    # level 0: kernel 3, mean 45/9 = 5; level 1 (2 bins): kernel 2, pad 1, stride 2 -> windows
    # start at -1 and 1, each divisor 4 (padding counted): 1/4, (2+3)/4, (4+7)/4, (5+6+8+9)/4
    x = [[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]]
    check('layer { name: "s" type: "SPP" bottom: "in0" top: "out" spp_param { pyramid_height: 2 pool: AVE } }',
          [x], {"out": [[5.0, 0.25, 1.25, 2.75, 7.0]]})


def test_spp_max_and_one_level_keeps_4d():
    x = [[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]]
    check('layer { name: "s" type: "SPP" bottom: "in0" top: "out" spp_param { pyramid_height: 2 } }',
          [x], {"out": [[9.0, 1.0, 3.0, 7.0, 9.0]]})
    # pyramid_height 1: the pooling's top directly, (N, C, 1, 1), not flattened
    check('layer { name: "s" type: "SPP" bottom: "in0" top: "out" spp_param { pyramid_height: 1 } }',
          [x], {"out": [[[[9.0]]]]})


def test_spp_input_too_small_for_the_pyramid():
    # 3x3 at level 2 (4 bins): kernel 1, pad 1 -> Caffe's pooling refuses pad >= kernel
    build_error('layer { name: "s" type: "SPP" bottom: "in0" top: "out" spp_param { pyramid_height: 3 } }',
                (1, 1, 3, 3), match="pyramid level 2")
    build_error('layer { name: "s" type: "SPP" bottom: "in0" top: "out" }', (1, 1, 3, 3), match="pyramid_height")


# -- DummyData, MemoryData ---------------------------------------------------------------------

def test_dummy_data_tops_are_inputs():
    graph = build_as_written('layer { name: "d" type: "DummyData" top: "a" top: "b" '
                       'dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 } } }\n'
                       'layer { name: "s" type: "Silence" bottom: "b" }\n'
                       'layer { name: "r" type: "ReLU" bottom: "a" top: "out" }\n')
    assert [(v.name, v.shape) for v in graph.inputs] == [("a", (2, 3)), ("b", (4,))]
    feeds = {"a": np.array([[-1.0, 2.0, 0.5], [3.0, -4.0, 0.0]], dtype=np.float32), "b": np.zeros(4, np.float32)}
    want = [[0.0, 2.0, 0.5], [3.0, 0.0, 0.0]]
    np.testing.assert_allclose(ReferenceInterpreter(graph).run(feeds)["out"], want)
    np.testing.assert_allclose(make_session(export(graph), "cpu").run(feeds)["out"], want)


def test_dummy_data_legacy_dims_once_or_per_top():
    graph = build_as_written('layer { name: "d" type: "DummyData" top: "a" top: "b" '
                       'dummy_data_param { num: 2 channels: 3 channels: 1 height: 4 width: 5 } }\n')
    assert [v.shape for v in graph.inputs] == [(2, 3, 4, 5), (2, 1, 4, 5)]


def test_dummy_data_errors():
    build_error('layer { name: "d" type: "DummyData" top: "a" '
                'dummy_data_param { num: 2 channels: 3 height: 4 width: 5 shape { dim: 1 } } }', match="not both")
    build_error('layer { name: "d" type: "DummyData" top: "a" top: "b" top: "c" '
                'dummy_data_param { shape { dim: 1 } shape { dim: 2 } } }', match="once per top")
    build_error('layer { name: "d" type: "DummyData" top: "a" }', match="needs a shape")


def test_memory_data_data_and_label_inputs():
    graph = build_as_written('layer { name: "m" type: "MemoryData" top: "data" top: "label" '
                       'memory_data_param { batch_size: 2 channels: 3 height: 4 width: 5 } }\n'
                       'layer { name: "s" type: "Silence" bottom: "label" }\n'
                       'layer { name: "r" type: "AbsVal" bottom: "data" top: "out" }\n')
    assert [(v.name, v.shape) for v in graph.inputs] == [("data", (2, 3, 4, 5)), ("label", (2, 1, 1, 1))]
    feeds = {"data": -np.ones((2, 3, 4, 5), np.float32), "label": np.zeros((2, 1, 1, 1), np.float32)}
    np.testing.assert_allclose(make_session(export(graph), "cpu").run(feeds)["out"], np.ones((2, 3, 4, 5)))


def test_memory_data_errors():
    build_error('layer { name: "m" type: "MemoryData" top: "data" top: "label" '
                'memory_data_param { batch_size: 2 channels: 3 height: 4 } }', match="must all be")
    build_error('layer { name: "m" type: "MemoryData" top: "data" '
                'memory_data_param { batch_size: 2 channels: 3 height: 4 width: 4 } }', match="needs 2 top")


def test_conv2d_in_bands_of_output_rows_is_the_whole_product(monkeypatch):
    """The reference's convolution copies its im2col windows a band of output rows at a time
    (memory); bands of one row, of two rows and the whole map give the same result, which a
    direct sum over the window (stride 2, dilation 2, padding 1, two groups) also gives."""
    import numpy as np

    from protonet.layers import core
    from protonet.layers.geometry import Window2D

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 9, 7))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    win = Window2D((3, 2), (2, 1), (1, 1), (2, 1))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ho, wo = (9 + 2 - 2 * 2 - 1) // 2 + 1, (7 + 2 - 1 - 1) // 1 + 1
    direct = np.zeros((2, 6, ho, wo))
    for o in range(6):
        g = o // 3
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, 2 * g:2 * g + 2, 2 * i:2 * i + 5:2, j:j + 2]
                direct[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3)) + b[o]
    whole = core.conv2d(x, w, b, win, 2)
    np.testing.assert_allclose(whole, direct, rtol=1e-12, atol=1e-12)
    row = 2 * 3 * 2 * wo * 8  # bytes of one output row's windows (per group's channels x kernel)
    for limit in (1, row * 2, row * 2 + 1):
        monkeypatch.setattr(core, "IM2COL_BYTES", limit)
        np.testing.assert_allclose(core.conv2d(x, w, b, win, 2), direct, rtol=1e-12, atol=1e-12)
