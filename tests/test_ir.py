"""The IR: SSA names for in-place layers, use lists, lint, copies."""
from __future__ import annotations

import numpy as np
import pytest

from harness import build_text
from protonet.export import export
from protonet.ir import IRError
from protonet.runtime import make_session

NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "y" top: "y" }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
layer { name: "pool" type: "Pooling" bottom: "y" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "y" top: "z" }
"""


def test_in_place_tops_get_ssa_names():
    g = build_text(NET)
    assert [v.name for v in g.node("conv").outputs] == ["y#0"]
    assert [v.name for v in g.node("bn").outputs] == ["y#1"]
    assert [v.name for v in g.node("relu").outputs] == ["y"]  # the last version keeps the blob name
    assert g.node("pool").inputs[0] is g.node("relu").outputs[0]
    assert {v.blob for v in g.values.values()} == {"x", "y", "p", "z"}
    assert [v.name for v in g.outputs] == ["p", "z"]  # blobs no layer consumes
    assert sorted(n.name for n in g.values["y"].users) == ["pool", "relu2"]
    g.lint()


def test_lint_catches_broken_use_lists():
    g = build_text(NET)
    g.values["y"].users.remove(g.node("pool"))
    with pytest.raises(IRError, match="does not list user 'pool'"):
        g.lint()


def test_lint_catches_order():
    g = build_text(NET)
    g.nodes.remove(g.node("conv"))
    g.nodes.append(g.node_by_name("conv") if hasattr(g, "node_by_name") else None) if False else None
    with pytest.raises(IRError):
        g.lint()


def test_remove_node_refuses_used_outputs():
    g = build_text(NET)
    with pytest.raises(IRError, match="still used"):
        g.remove_node(g.node("bn"))


def test_replace_all_uses_moves_output_names():
    g = build_text(NET)
    relu2 = g.node("relu2")
    z = relu2.outputs[0]
    y = g.values["y"]
    g.replace_all_uses(z, y)  # z was a graph output: y takes over its name
    assert g.outputs[1] is y and y.name == "z"
    relu2.outputs[0].users.clear()
    g.remove_node(relu2)
    g.lint()


def test_copy_is_independent():
    g = build_text(NET)
    h = g.copy()
    h.remove_node(h.node("relu2")) if False else None
    h.outputs = h.outputs[:1]
    h.remove_node(h.node("relu2"))
    h.lint()
    g.lint()
    assert "relu2" in [n.name for n in g.nodes] and "relu2" not in [n.name for n in h.nodes]
    assert h.node("conv").weights["weight"] is g.node("conv").weights["weight"]


INPUT = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }\n'


def test_graph_input_keeps_its_name_when_rewritten_in_place():
    g = build_text(INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n'
                           'layer { name: "s" type: "Sigmoid" bottom: "x" top: "y" }\n')
    assert [v.name for v in g.inputs] == ["x"]
    assert g.node("r").outputs[0].name == "x#0" and g.node("s").inputs[0].name == "x#0"


def test_input_rewritten_in_place_and_left_as_output_gives_the_output_its_name():
    g = build_text(INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n'
                           'layer { name: "s" type: "Sigmoid" bottom: "x" top: "x" }\n')
    assert [v.name for v in g.outputs] == ["x"] and g.outputs[0].producer is g.node("s")
    assert [v.name for v in g.inputs] == ["x#0"] and g.node("r").outputs[0].name == "x#1"
    model = export(g)
    assert [i.name for i in model.graph.input] == ["x#0"] and [o.name for o in model.graph.output] == ["x"]
    feeds = {"x#0": np.linspace(-3, 3, 32, dtype=np.float32).reshape(1, 2, 4, 4)}
    want = 1.0 / (1.0 + np.exp(-np.maximum(feeds["x#0"].astype(np.float64), 0.0)))  # sigmoid(relu(x))
    got = make_session(model, "cpu").run(feeds)["x"]
    assert np.allclose(got, want, rtol=1e-6, atol=1e-7)


def test_blob_names_like_ssa_names_do_not_collide():
    g = build_text(INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "x#0" }\n'
                           'layer { name: "s" type: "Sigmoid" bottom: "x#0" top: "x#0" }\n')
    assert sorted(g.values) == ["x", "x#0", "x#0#0"]
    g.lint()


def test_shared_params_share_one_blob_and_count_once():
    from protonet.analysis import summarize

    text = (INPUT + 'layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } '
            'inner_product_param { num_output: 3 bias_term: false weight_filler { type: "gaussian" } } }\n'
            'layer { name: "b" type: "InnerProduct" bottom: "x" top: "b" param { name: "w" } '
            'inner_product_param { num_output: 3 bias_term: false weight_filler { type: "gaussian" } } }\n')
    g = build_text(text, init="filler")
    assert np.shares_memory(g.node("a").weights["weight"], g.node("b").weights["weight"])
    assert summarize(g).total.params == 3 * 32


@pytest.mark.parametrize("body,message", [
    ('layer { name: "a" type: "ReLU" bottom: "x" top: "y" }\nlayer { name: "b" type: "Sigmoid" bottom: "x" top: "y" }\n',
     r"test.prototxt:3: layer 'b' \(Sigmoid\): top 'y' is already produced by layer 'a' \(line 2\); "
     r"Caffe reuses a blob name only in place"),
    ('layer { name: "p" type: "Pooling" bottom: "x" top: "x" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n',
     r"layer 'p' \(Pooling\): in-place top 'x' would change shape \(1, 2, 4, 4\) -> \(1, 2, 2, 2\)"),
    ('layer { name: "s" type: "Split" bottom: "x" top: "y" top: "y" }\n', r"layer 's' \(Split\): lists a top twice"),
])
def test_caffe_blob_rules(body, message):
    from protonet.errors import ProtonetError

    with pytest.raises(ProtonetError, match=message):
        build_text(INPUT + body)
