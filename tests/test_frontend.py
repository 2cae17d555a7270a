"""Frontend: the three input spellings, --batch, phase filtering (Caffe's NetStateRule), binary."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from protonet.build import BuildOptions
from protonet.errors import ProtonetError
from protonet.export import export, save_model
from protonet.frontend import filter_phase, load_net
from protonet.frontend.reader import scan_layer_blocks
from protonet.pipeline import compile_net
from protonet.frontend.schema import pb
from google.protobuf import text_format

BODY = 'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" ' \
       'convolution_param { num_output: 2 kernel_size: 3 } }\n'
SPELLINGS = {
    "input_dim": 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n',
    "input_shape": 'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n',
    "Input layer": 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n',
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_three_input_spellings_build_the_same_graph(spelling, tmp_path: Path):
    p = tmp_path / "n.prototxt"
    p.write_text(SPELLINGS[spelling] + BODY)
    g = compile_net(p).graph
    assert [v.name for v in g.inputs] == ["data"] and g.inputs[0].shape == (1, 3, 8, 8)
    assert g.outputs[0].shape == (1, 2, 6, 6)
    g4 = compile_net(p, options=BuildOptions(batch=4)).graph
    assert g4.inputs[0].shape == (4, 3, 8, 8) and g4.outputs[0].shape == (4, 2, 6, 6)


PHASED = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "train_only" type: "ReLU" bottom: "data" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "data" top: "a" include { phase: TEST } }
layer { name: "not_test" type: "Sigmoid" bottom: "a" top: "b" exclude { phase: TEST } }
layer { name: "staged" type: "TanH" bottom: "a" top: "c" include { stage: "deploy" } }
layer { name: "leveled" type: "TanH" bottom: "a" top: "d" include { min_level: 1 } }
layer { name: "unstaged" type: "TanH" bottom: "a" top: "e" include { not_stage: "deploy" } }
"""


def _names(net) -> list[str]:
    return [l.name for l in net.layer]


def test_phase_filtering_follows_caffe_rules():
    net = text_format.Parse(PHASED, pb.NetParameter())
    assert _names(filter_phase(net)) == ["data", "test_only", "unstaged"]
    assert _names(filter_phase(net, "TRAIN")) == ["data", "train_only", "not_test", "unstaged"]
    assert _names(filter_phase(net, stages=("deploy",))) == ["data", "test_only", "staged"]
    assert _names(filter_phase(net, level=1)) == ["data", "test_only", "leveled", "unstaged"]


def test_phase_filtered_duplicate_names_point_at_the_kept_block(tmp_path: Path):
    p = tmp_path / "n.prototxt"
    p.write_text(PHASED + 'layer { name: "bad" type: "ReLU" bottom: "zzz" top: "f" }\n')
    with pytest.raises(ProtonetError, match=r"n.prototxt:9: layer 'bad' \(ReLU\): bottom 'zzz'"):
        compile_net(p)


def test_scanner_skips_comments_and_strings():
    text = '# layer { name: "no" }\nlayer {\n  name: "a{b}"  # }\n  type: "ReLU"\n}\nlayer { name: "c" }\n'
    blocks = scan_layer_blocks(text)
    assert [(b.line, b.name) for b in blocks] == [(2, "a{b}"), (6, "c")]


def test_binary_netparameter_definition(tmp_path: Path):
    net = text_format.Parse(SPELLINGS["input_shape"] + BODY, pb.NetParameter())
    p = tmp_path / "net.binaryproto"
    p.write_bytes(net.SerializeToString())
    loaded = load_net(p)
    assert loaded.binary and _names(loaded.net) == ["input", "conv"]


def test_truncated_binary_is_a_clear_error(tmp_path: Path):
    net = text_format.Parse(SPELLINGS["input_shape"] + BODY, pb.NetParameter())
    p = tmp_path / "net.binaryproto"
    p.write_bytes(b"\x0a\xff" + net.SerializeToString()[:5])
    with pytest.raises(ProtonetError, match=r"net.binaryproto: .*(truncated|not a valid)"):
        load_net(p)


def test_large_models_use_external_data(tmp_path: Path, monkeypatch):
    import protonet.export as ex

    p = tmp_path / "n.prototxt"
    p.write_text(SPELLINGS["input_shape"] + BODY.replace("num_output: 2", "num_output: 64 weight_filler { type: 'xavier' }"))
    g = compile_net(p).graph
    monkeypatch.setattr(ex, "EXTERNAL_DATA_THRESHOLD", 100)  # stand-in for 2 GB
    files = save_model(export(g), tmp_path / "m.onnx")
    assert [f.name for f in files] == ["m.onnx", "m.onnx.data"]
    lazy = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    assert onnx.external_data_helper.uses_external_data(
        [t for t in lazy.graph.initializer if t.name == "conv.weight"][0])
    model = onnx.load(tmp_path / "m.onnx")
    w = [t for t in model.graph.initializer if t.name == "conv.weight"][0]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(w), g.node("conv").weights["weight"])
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data", "n.prototxt"]


def test_locations_in_unusual_but_valid_files(tmp_path: Path):
    cases = {
        # text format's <...> message brackets
        "angle.prototxt": ('layer < name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } >\n'
                           'layer <\n  name: "bad" type: "Pooling" bottom: "d" top: "p" >\n',
                           r"angle.prototxt:2: layer 'bad' \(Pooling\): kernel_size missing"),
        # a block that never closes is the one the syntax error is in
        "unclosed.prototxt": ('layer { name: "d" type: "Input" top: "d" }\nlayer { name: "c" type: "ReLU"\n',
                              r"unclosed.prototxt:2:25: in layer 'c': Expected \"}\""),
        "inclexcl.prototxt": ('input: "d"\ninput_shape { dim: 1 }\nlayer { name: "r" type: "ReLU" bottom: "d" top: "r"\n'
                              '  include { phase: TEST } exclude { phase: TRAIN } }\n',
                              r"inclexcl.prototxt:3: layer 'r' \(ReLU\): a layer may have include rules or exclude"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ProtonetError, match=message):
            compile_net(tmp_path / name)


def test_bom_and_latin1_text(tmp_path: Path):
    body = (SPELLINGS["input_shape"] + "# r\xe9seau de test\n" + BODY).encode("latin-1")
    (tmp_path / "latin1.prototxt").write_bytes(body)
    (tmp_path / "bom.prototxt").write_bytes(b"\xef\xbb\xbf" + (SPELLINGS["input_shape"] + BODY).encode())
    for name in ("latin1.prototxt", "bom.prototxt"):
        assert compile_net(tmp_path / name).graph.outputs[0].shape == (1, 2, 6, 6)
