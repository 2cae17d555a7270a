"""``--opset N``: converted models keep Caffe's meaning (protonet/opset.py).

Softmax below opset 13 normalises over every axis from ``axis`` on; Caffe's over the one axis.
A 4-D softmax head converted to 11 and 12 must still match the float64 reference (measured:
~4e-8 absolute, fp32 rounding), where the plain version_converter output is off by ~0.5; and
every converted model is run against the opset-17 one before it is returned. The registry's
layer examples that onnx.version_converter can take to 11, 12 and 13 are all run against the
numpy reference (a quick sample by default, every example under ``-m slow``).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, version_converter

from harness import build_text, example_inputs, example_net_text
from test_cli import run
from protonet.errors import ProtonetError
from protonet.export import export
from protonet.layers import registry
from protonet.opset import ConversionMismatch, check_same_outputs, convert_opset, one_axis_to_last
from protonet.reference import ReferenceInterpreter
from protonet.runtime import make_session
from protonet.tolerances import LAYER, compare

HEAD = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 4 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" %s }
"""


def _run(model: onnx.ModelProto, feeds) -> dict[str, np.ndarray]:
    return make_session(model, "cpu").run(feeds)


@pytest.mark.parametrize("param", ["", "softmax_param { axis: 2 }", "softmax_param { axis: -1 }"])
@pytest.mark.parametrize("opset", [11, 12, 13])
def test_softmax_head_keeps_its_axis(opset, param):
    graph = build_text(HEAD % param)
    feeds = {"data": np.random.default_rng(3).standard_normal((2, 3, 5, 4)).astype(np.float32)}
    ref = ReferenceInterpreter(graph).run(feeds)["prob"]
    model = export(graph)
    converted = convert_opset(model, opset)
    assert converted.opset_import[0].version == opset
    err = float(np.abs(_run(converted, feeds)["prob"] - ref).max())
    assert err < 1e-6, err  # fp32 rounding only
    axis = {"": 1, "softmax_param { axis: 2 }": 2, "softmax_param { axis: -1 }": 3}[param]
    ops = [n.op_type for n in converted.graph.node]
    if opset < 13 and axis != 3:
        assert ops == ["Conv", "Transpose", "Softmax", "Transpose"]
    else:
        assert ops == ["Conv", "Softmax"]
    # what the plain converter gives: Softmax over every axis from `axis` on
    raw = _run(version_converter.convert_version(model, opset), feeds)["prob"]
    raw_err = float(np.abs(raw - ref).max())
    assert (raw_err > 0.1) == (opset < 13 and axis != 3), raw_err
    if opset < 13 and axis != 3:  # and the run-time check refuses it
        with pytest.raises(ConversionMismatch, match="output 'prob'"):
            check_same_outputs(model, version_converter.convert_version(model, opset))


def test_softmax_over_an_axis_followed_by_ones_needs_no_transpose():
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 7, 1, 1])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 7, 1, 1])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    out = one_axis_to_last(model)
    assert [n.op_type for n in out.graph.node] == ["Softmax"]
    assert out.graph.node[0].attribute[0].i == 1


def test_conversion_mismatch_is_an_internal_error_and_nothing_is_written(tmp_path):
    """A converted model that computes something else is refused, not written."""
    graph = build_text(HEAD % "")
    model = export(graph)
    wrong = version_converter.convert_version(model, 12)  # the unpatched Softmax
    with pytest.raises(ConversionMismatch) as e:
        check_same_outputs(model, wrong)
    assert not isinstance(e.value, ProtonetError)  # the CLI reports it as an internal error (exit 1)
    assert "opset-12 model differs from the opset-17 one at output 'prob'" in str(e.value)


def test_cli_opset_11_writes_a_model_that_matches_the_reference(tmp_path):
    net = tmp_path / "head.prototxt"
    net.write_text(HEAD % "")
    out = tmp_path / "head11.onnx"
    r = run("compile", str(net), "-o", str(out), "--opset", "11", "--verify")
    assert r.returncode == 0, r.stderr
    assert "verify: OK" in r.stdout and onnx.load(str(out)).opset_import[0].version == 11
    r = run("verify", str(out), str(net))
    assert r.returncode == 0, r.stderr


def test_unreachable_opset_is_bad_input():
    model = export(build_text(HEAD % ""))
    with pytest.raises(ProtonetError, match="cannot convert the model to opset 99"):
        convert_opset(model, 99)


def _examples(sample: bool):
    keep = {"Softmax", "Pooling", "Convolution", "Slice", "Reduction", "PReLU", "Interp", "Crop", "Clip"}
    return [pytest.param(name, ex, id=f"{name}-{ex.name or i}")
            for name, layer in sorted(registry.all_types().items()) if not sample or name in keep
            for i, ex in enumerate(layer.examples)]


def _check_example(name, ex):
    graph = build_text(example_net_text(ex))
    feeds = example_inputs(graph, ex)
    ref = ReferenceInterpreter(graph).run(feeds)
    model = export(graph)
    converted = 0
    for opset in (11, 12, 13):
        try:
            m = convert_opset(model, opset)  # runs it against the opset-17 model too
        except ProtonetError as e:  # onnx.version_converter has no adapter for some op: a clear refusal
            assert "No Adapter" in str(e) and f"opset {opset}" in str(e)
            continue
        converted += 1
        got = _run(m, feeds)
        for k in ref:
            res = compare(got[k], ref[k], LAYER)
            assert res.ok, f"{name} at opset {opset}, {k}: {res.describe()}"
    return converted


@pytest.mark.parametrize("name,ex", _examples(sample=True))
def test_converted_layer_examples_match_the_reference(name, ex):
    _check_example(name, ex)


@pytest.mark.slow
@pytest.mark.parametrize("name,ex", _examples(sample=False))
def test_every_converted_layer_example_matches_the_reference(name, ex):
    _check_example(name, ex)
