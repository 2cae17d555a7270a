"""Caffe's format-upgrade chain (protonet.frontend.upgrade / protonet.frontend.legacy).

Each legacy sample in tests/data/legacy/<name>.prototxt has its expected current-format text in
<name>.expected.prototxt, compared literally with text_format's output after the upgrade.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from protonet.frontend import legacy
from protonet.errors import Location, ProtonetError, SchemaError
from protonet.frontend import load_net, read_net
from protonet.frontend.reader import parse_binary
from protonet.frontend.schema import pb
from protonet.frontend.load import upgrade_file
from protonet.frontend.upgrade import CHAIN, upgrade_net

DATA = Path(__file__).parent / "data" / "legacy"

V0V1 = "V0 -> V1 layers"
DATA_STEP = "data transform fields -> transform_param"
V1V2 = "V1 -> V2 layers"
INPUT = "input fields -> Input layer"
BN = "BatchNorm param blocks"

SAMPLES = {
    "v0_padding": [V0V1, V1V2, INPUT],
    "v0_types": [V0V1, V1V2],
    "v1_lenet": [V1V2, INPUT],
    "v1_types": [V1V2],
    "v1_data_transform": [DATA_STEP, V1V2],
    "batchnorm": [BN],
    "input_shape": [INPUT],
}


def _text(net) -> str:
    return text_format.MessageToString(net)


def _parse(text: str):
    net = pb.NetParameter()
    text_format.Parse(text, net)
    return net


def _upgrade_text(text: str):
    return upgrade_net(_parse(text), Location("t.prototxt"))


# -- the chain -----------------------------------------------------------------------------------

def test_chain_is_in_caffes_order():
    assert [s.name for s in CHAIN] == [V0V1, DATA_STEP, V1V2, INPUT, BN]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_upgrades_to_expected_text(name):
    loaded = read_net(DATA / f"{name}.prototxt")
    net, ran = upgrade_net(loaded.net, loaded.loc())
    assert ran == SAMPLES[name]
    assert _text(net) == (DATA / f"{name}.expected.prototxt").read_text()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_upgrade_is_idempotent(name):
    loaded = read_net(DATA / f"{name}.prototxt")
    once, _ = upgrade_net(loaded.net, loaded.loc())
    twice, ran = upgrade_net(once, loaded.loc())
    assert ran == []
    assert twice.SerializeToString() == once.SerializeToString()
    assert not any(step.needs(once) for step in CHAIN)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_steps_do_not_mutate_their_argument(name):
    loaded = read_net(DATA / f"{name}.prototxt")
    net = loaded.net
    for step in CHAIN:
        if step.needs(net):
            before = net.SerializeToString()
            new = step.apply(net, loaded.loc())
            assert net.SerializeToString() == before, step.name
            assert new is not net
            assert not step.needs(new), f"{step.name} still needed after it ran"
            net = new


# -- V0 -> V1 ----------------------------------------------------------------------------------

def test_v0_padding_folds_into_conv_and_pool():
    net, _ = upgrade_net(read_net(DATA / "v0_padding.prototxt").net, Location("x"))
    layers = {layer.name: layer for layer in net.layer}
    assert "pad1" not in layers and "pad2" not in layers
    assert list(layers["conv1"].convolution_param.pad) == [2]
    assert list(layers["conv1"].bottom) == ["data"]
    assert layers["pool1"].pooling_param.pad == 1
    assert list(layers["pool1"].bottom) == ["conv1"]


_V0_HEAD = 'input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'


def test_v0_padding_into_non_conv_is_an_error():
    text = _V0_HEAD + """
layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "data" top: "p" }
layers { layer { name: "act" type: "relu" } bottom: "p" top: "r" }
"""
    with pytest.raises(SchemaError, match=r"t.prototxt: layer 'act' \(relu\): reads the output of V0 "
                                          r"padding layer 'pad'.*only 'conv' and 'pool'"):
        _upgrade_text(text)


def test_v0_padding_with_two_bottoms_is_an_error():
    text = _V0_HEAD + """
layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "data" bottom: "data" top: "p" }
layers { layer { name: "c" type: "conv" num_output: 2 kernelsize: 3 } bottom: "p" top: "c" }
"""
    with pytest.raises(SchemaError, match=r"layer 'pad' \(padding\): a V0 padding layer must have one "
                                          r"bottom and one top"):
        _upgrade_text(text)


def test_v0_conv_with_two_bottoms_after_padding_is_an_error():
    text = _V0_HEAD + """
layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "data" top: "p" }
layers { layer { name: "c" type: "conv" num_output: 2 kernelsize: 3 } bottom: "p" bottom: "data" top: "c" }
"""
    with pytest.raises(SchemaError, match=r"layer 'c' \(conv\): .*must have exactly one bottom, it has 2"):
        _upgrade_text(text)


def test_v0_unknown_bottom_is_an_error():
    text = _V0_HEAD + 'layers { layer { name: "r" type: "relu" } bottom: "nope" top: "r" }'
    with pytest.raises(SchemaError, match=r"layer 'r' \(relu\): bottom 'nope' is not produced"):
        _upgrade_text(text)


def test_v0_unknown_types_are_reported_together():
    text = _V0_HEAD + """
layers { layer { name: "a" type: "wobble" } bottom: "data" top: "a" }
layers { layer { name: "b" type: "convolution" } bottom: "a" top: "b" }
"""
    with pytest.raises(SchemaError, match=r"^t.prototxt: unknown V0 layer type\(s\): 'wobble' \(layer 'a'\), "
                                          r"'convolution' \(layer 'b'\); known V0 types: accuracy, .*conv"):
        _upgrade_text(text)


def test_v0_entries_mixed_with_v1_entries_is_an_error():
    text = _V0_HEAD + """
layers { layer { name: "a" type: "relu" } bottom: "data" top: "a" }
layers { name: "b" type: RELU bottom: "a" top: "b" }
"""
    with pytest.raises(SchemaError, match=r"mixes V0 entries .* with V1 entries .*\('b'\); write every layer"):
        _upgrade_text(text)


def test_v0_field_without_meaning_is_dropped_with_a_warning(caplog):
    text = _V0_HEAD + 'layers { layer { name: "r" type: "relu" kernelsize: 3 new_num: 2 } bottom: "data" top: "r" }'
    with caplog.at_level(logging.WARNING, logger="protonet.frontend.legacy"):
        net, _ = _upgrade_text(text)
    assert "layer 'r' (relu): V0 field 'kernelsize' has no meaning for a 'relu' layer" in caplog.text
    assert "'new_num' is not carried over" in caplog.text
    relu = net.layer[1]
    assert relu.type == "ReLU" and not relu.HasField("pooling_param") and not relu.HasField("convolution_param")


def test_v0_blobs_are_carried_over():
    text = _V0_HEAD + """
layers { layer { name: "fc" type: "innerproduct" num_output: 2
  blobs { num: 1 channels: 1 height: 2 width: 3 data: 1 data: 2 data: 3 data: 4 data: 5 data: 6 }
  blobs { num: 1 channels: 1 height: 1 width: 2 data: 7 data: 8 } } bottom: "data" top: "fc" }
"""
    net, _ = _upgrade_text(text)
    fc = net.layer[1]
    assert [list(b.data) for b in fc.blobs] == [[1, 2, 3, 4, 5, 6], [7, 8]]
    assert (fc.blobs[0].height, fc.blobs[0].width) == (2, 3)


# -- tables ------------------------------------------------------------------------------------

def test_v1_type_table_covers_every_enum_value():
    assert set(legacy.V1_LAYER_TYPES) == set(pb.V1LayerParameter.LayerType.keys())


def test_v0_type_table_targets_are_v1_enums():
    for v0, v1 in legacy.V0_LAYER_TYPES.items():
        assert v1 in pb.V1LayerParameter.LayerType.keys(), v0


def test_every_v0_field_is_handled():
    handled = set(legacy.V0_FIELDS) | set(legacy.V0_STRUCTURAL) | set(legacy.V0_IGNORED)
    assert {f.name for f in pb.V0LayerParameter.DESCRIPTOR.fields} == handled


def test_v0_field_targets_exist():
    for field, targets in legacy.V0_FIELDS.items():
        for kind, t in targets.items():
            assert kind == legacy.ANY or kind in legacy.V0_LAYER_TYPES, (field, kind)
            msg = pb.V1LayerParameter.DESCRIPTOR.fields_by_name[t.param].message_type
            if t.field:
                assert t.field in msg.fields_by_name, (field, t)


def test_every_v1_param_message_has_a_v2_field():
    assert len(legacy.V1_PARAM_FIELDS) == 30 + 18  # BVLC's, and DeepLab's own V1 layers'
    for name in legacy.V1_PARAM_FIELDS:
        v1 = pb.V1LayerParameter.DESCRIPTOR.fields_by_name[name].message_type
        v2 = pb.LayerParameter.DESCRIPTOR.fields_by_name[name].message_type
        assert v1 is v2, name


# -- input fields, BatchNorm, mixed ----------------------------------------------------------------

def test_mixed_layer_and_layers_is_an_error():
    with pytest.raises(SchemaError, match=r"mixed.prototxt: the file mixes current 'layer \{ \.\.\. \}' "
                                          r"blocks with legacy 'layers \{ \.\.\. \}' blocks; convert all"):
        load_net(DATA / "mixed.prototxt")


def test_input_dim_needs_four_values_per_input():
    with pytest.raises(SchemaError, match="5 input_dim values for 1 input"):
        _upgrade_text('input: "x" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 5')


def test_input_shape_count_must_match():
    with pytest.raises(SchemaError, match="1 input_shape blocks for 2 input"):
        _upgrade_text('input: "x" input: "y" input_shape { dim: 1 }')


def test_input_without_shape_is_dropped_as_in_a_legacy_caffemodel():
    net, ran = _upgrade_text('input: "x" layer { name: "fc" type: "InnerProduct" blobs { shape { dim: 1 } data: 3 } }')
    assert ran == [INPUT]
    assert list(net.input) == [] and [layer.name for layer in net.layer] == ["fc"]


def test_definition_with_shapeless_input_says_what_is_missing(tmp_path):
    from protonet.build import BuildOptions
    from protonet.pipeline import compile_net

    p = tmp_path / "noshape.prototxt"
    p.write_text('input: "x"\nlayer {\n  name: "r"\n  type: "ReLU"\n  bottom: "x"\n  top: "r"\n}\n')
    with pytest.raises(ProtonetError, match=r"noshape.prototxt: input 'x' has no shape: add input_shape .* "
                                            r"or give --input-shape x=N,C,H,W"):
        compile_net(p)
    g = compile_net(p, options=BuildOptions(input_shapes={"x": (2, 3)})).graph
    assert g.inputs[0].shape == (2, 3)


def test_current_batchnorm_is_left_alone():
    text = """layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }
layer { name: "bn2" type: "BatchNorm" bottom: "y" top: "z" param { lr_mult: 0 } param { lr_mult: 0 } }"""
    net, ran = _upgrade_text(text)
    assert ran == []
    assert len(net.layer[1].param) == 2


# -- files ---------------------------------------------------------------------------------------

def _no_temp_files(d: Path) -> bool:
    return not [p for p in os.listdir(d) if p.endswith(".tmp")]


def test_upgrade_file_text_round_trip(tmp_path):
    out = tmp_path / "lenet.prototxt"
    assert upgrade_file(DATA / "v1_lenet.prototxt", out) == [V1V2, INPUT]
    assert out.read_text() == (DATA / "v1_lenet.expected.prototxt").read_text()
    again = tmp_path / "again.prototxt"
    assert upgrade_file(out, again) == []
    assert again.read_bytes() == out.read_bytes()
    # in place, already current: the same bytes
    assert upgrade_file(out, out) == []
    assert out.read_bytes() == again.read_bytes()
    assert _no_temp_files(tmp_path)


def test_upgrade_file_text_to_binary_and_back(tmp_path):
    binary = tmp_path / "v0.caffemodel"
    assert upgrade_file(DATA / "v0_padding.prototxt", binary) == [V0V1, V1V2, INPUT]
    expected = (DATA / "v0_padding.expected.prototxt").read_text()
    assert _text(parse_binary(binary.read_bytes(), str(binary))) == expected
    assert upgrade_file(binary, tmp_path / "v0b.binaryproto") == []
    assert (tmp_path / "v0b.binaryproto").read_bytes() == binary.read_bytes()
    text = tmp_path / "v0.pbtxt"
    assert upgrade_file(binary, text) == []
    assert text.read_text() == expected
    assert _no_temp_files(tmp_path)


def test_upgrade_file_unknown_extension(tmp_path):
    with pytest.raises(ProtonetError, match=r"out.onnx: cannot tell the output format from the extension "
                                            r"'.onnx': use .prototxt/.pbtxt/.txt for text or "
                                            r".caffemodel/.binaryproto/.pb for binary"):
        upgrade_file(DATA / "v1_lenet.prototxt", tmp_path / "out.onnx")
    assert not list(tmp_path.iterdir())


def test_upgrade_file_failure_leaves_no_output(tmp_path):
    out = tmp_path / "mixed.prototxt"
    with pytest.raises(SchemaError, match="mixes"):
        upgrade_file(DATA / "mixed.prototxt", out)
    assert not list(tmp_path.iterdir())


# -- V1 caffemodel with blobs --------------------------------------------------------------------

#: LeNet blob shapes in the net (weights, bias), as a V1 caffemodel stores them (legacy 4-D).
_LENET_BLOBS = {
    "conv1": [(20, 1, 5, 5), (1, 1, 1, 20)],
    "conv2": [(50, 20, 5, 5), (1, 1, 1, 50)],
    "ip1": [(1, 1, 500, 800), (1, 1, 1, 500)],
    "ip2": [(1, 1, 10, 500), (1, 1, 1, 10)],
}


def _v1_caffemodel(path: Path) -> dict[str, list[np.ndarray]]:
    """A V1 caffemodel as old Caffe's Net::ToProto wrote it: ``input`` names without dims, the
    definition's layers with their blobs in num/channels/height/width form."""
    net = read_net(DATA / "v1_lenet.prototxt").net
    del net.input_dim[:]
    rng = np.random.default_rng(0)
    arrays: dict[str, list[np.ndarray]] = {}
    for layer in net.layers:
        for shape in _LENET_BLOBS.get(layer.name, []):
            a = rng.standard_normal(shape).astype(np.float32)
            arrays.setdefault(layer.name, []).append(a)
            b = layer.blobs.add()
            b.num, b.channels, b.height, b.width = shape
            b.data.extend(a.ravel().tolist())
    path.write_bytes(net.SerializeToString())
    return arrays


def test_v1_caffemodel_upgrades_with_blobs_intact(tmp_path):
    old = tmp_path / "lenet_v1.caffemodel"
    arrays = _v1_caffemodel(old)
    new = tmp_path / "lenet_v2.caffemodel"
    assert upgrade_file(old, new) == [V1V2, INPUT]
    before = parse_binary(old.read_bytes(), str(old))
    after = parse_binary(new.read_bytes(), str(new))
    assert not after.layers and not after.input
    assert [layer.type for layer in after.layer] == ["Convolution", "Pooling", "Convolution", "Pooling",
                                                     "InnerProduct", "ReLU", "InnerProduct", "Softmax",
                                                     "SoftmaxWithLoss"]
    for v1 in before.layers:
        v2 = next(layer for layer in after.layer if layer.name == v1.name)
        assert [b.SerializeToString() for b in v2.blobs] == [b.SerializeToString() for b in v1.blobs]
        for blob, a in zip(v2.blobs, arrays.get(v1.name, [])):
            np.testing.assert_array_equal(np.asarray(blob.data, np.float32), a.ravel())
    assert upgrade_file(new, tmp_path / "again.caffemodel") == []


def test_v1_caffemodel_weights_reach_the_graph(tmp_path):
    from protonet.pipeline import compile_net

    old = tmp_path / "lenet_v1.caffemodel"
    arrays = _v1_caffemodel(old)
    from protonet.frontend.weights import load_caffemodel

    wfile = load_caffemodel(old)
    assert wfile.upgrades == [V1V2, INPUT]
    assert not wfile.report.warnings
    c = compile_net(DATA / "v1_lenet.prototxt", weights=old)
    assert sorted(c.report.matched) == sorted(_LENET_BLOBS)
    nodes = {n.name: n for n in c.graph.nodes}
    conv1 = list(nodes["conv1"].weights.values())
    np.testing.assert_array_equal(conv1[0], arrays["conv1"][0])
    np.testing.assert_array_equal(conv1[1].ravel(), arrays["conv1"][1].ravel())


# -- end to end ----------------------------------------------------------------------------------

def test_upgraded_v1_lenet_compiles():
    from protonet.pipeline import compile_net

    c = compile_net(DATA / "v1_lenet.prototxt")
    assert c.loaded.upgrades == [V1V2, INPUT]
    assert [n.type for n in c.graph.nodes] == ["Input", "Convolution", "Pooling", "Convolution", "Pooling",
                                               "InnerProduct", "ReLU", "InnerProduct", "Softmax"]
    assert [v.shape for v in c.graph.outputs] == [(2, 10)]
    assert [tuple(n.param_names) for n in c.graph.nodes if n.name == "conv2"] == [("", "")]


def test_upgraded_v0_net_compiles_with_folded_padding():
    from protonet.pipeline import compile_net

    c = compile_net(DATA / "v0_padding.prototxt")
    assert [n.type for n in c.graph.nodes] == ["Input", "Convolution", "ReLU", "Pooling", "LRN",
                                               "InnerProduct", "Dropout", "Softmax"]
    shapes = {n.name: n.outputs[0].shape for n in c.graph.nodes}
    assert shapes["conv1"] == (1, 8, 32, 32)  # pad 2, kernel 5: the padding layer's pad reached conv1
    assert shapes["pool1"] == (1, 8, 17, 17)  # pad 1, kernel 3, stride 2, ceil: (32 + 2 - 3) / 2 + 1


@pytest.mark.parametrize("sample", ["batchnorm", "input_shape", "v0_padding", "v1_data_transform", "v1_lenet"])
def test_legacy_sample_compiles_and_verifies(sample):
    """The samples that are whole nets (not type catalogues) compile straight from the legacy
    file and verify blob by blob, like the upgraded file does."""
    from protonet.pipeline import compile_net, random_inputs, verify_compiled

    src = Path(__file__).parent / "data" / "legacy" / f"{sample}.prototxt"
    c = compile_net(src, optimize=True)
    assert c.loaded.upgrades
    res = verify_compiled(c, random_inputs(c.graph))
    assert res.ok, f"worst {res.worst.name}: {res.worst.ratio:.3g}"
    expected = compile_net(src.with_name(f"{sample}.expected.prototxt"), optimize=True)
    assert [n.type for n in c.graph.nodes] == [n.type for n in expected.graph.nodes]
