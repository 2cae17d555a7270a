"""The IR: SSA names for in-place layers, use lists, lint, copies."""
from __future__ import annotations

import pytest

from harness import build_text
from protonet.ir import IRError

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
