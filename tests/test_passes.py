"""The optimizer passes: for each pass its structural result on a tiny net, the reference
before == after (float64, tolerances.PASS), idempotence, Graph.lint(), one test per decline reason;
then every net in nets/ optimized vs unoptimized through onnxruntime, and verify (reference vs
onnxruntime, blob by blob) on the optimized graph of the smaller nets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness import build_text
from protonet.build import BuildOptions
from protonet.errors import LayerContext, ProtonetError
from protonet.export import export
from protonet.ir import Graph
from protonet.layers import registry
from protonet.layers.affine import Affine
from protonet.layers.base import Layer
from protonet.plugins import register_layer, unregister_layer
from protonet.passes import PASS_NAMES, PassError, explain, run_pass, run_passes
from protonet.pipeline import compile_net, random_inputs, verify_graph
from protonet.reference import ReferenceInterpreter
from protonet.runtime import make_session
from protonet.tolerances import PASS, compare

NETS = Path(__file__).resolve().parent.parent / "nets"


def inp(shape: tuple[int, ...], top: str = "data") -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "input_{top}" type: "Input" top: "{top}" input_param {{ shape {{ {dims} }} }} }}\n'


def conv(name: str, bottom: str, top: str, n: int = 4, extra: str = "", param: str = "") -> str:
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}" {param}'
            f'convolution_param {{ num_output: {n} kernel_size: 3 pad: 1 {extra} }} }}\n')


def layer(name: str, type_: str, bottoms: str | list[str], top: str | list[str], body: str = "") -> str:
    bs = [bottoms] if isinstance(bottoms, str) else bottoms
    ts = [top] if isinstance(top, str) else top
    return (f'layer {{ name: "{name}" type: "{type_}" ' + "".join(f'bottom: "{b}" ' for b in bs)
            + "".join(f'top: "{t}" ' for t in ts) + body + " }\n")


def bn(name: str, blob: str, top: str | None = None, body: str = "") -> str:
    return layer(name, "BatchNorm", blob, top or blob, body)


def scale(name: str, blob: str, top: str | None = None, body: str = "scale_param { bias_term: true }") -> str:
    return layer(name, "Scale", blob, top or blob, body)


def feeds_for(g: Graph, seed: int = 3) -> dict[str, np.ndarray]:
    return random_inputs(g, seed)


def check_pass(text: str, name: str, init: str = "random", outputs: list[str] | None = None,
               graph: Graph | None = None):
    """Build, run one pass on a copy; check lint, names kept, the reference before == after,
    and that a second run changes nothing. Returns (before, after, result)."""
    g0 = graph if graph is not None else build_text(text, init=init)
    if outputs is not None:
        g0.outputs = [g0.values[o] for o in outputs]
    g1 = g0.copy()
    res = run_pass(g1, name)
    g1.lint()
    for node in g1.nodes:  # nodes a pass creates carry resolved attrs, as built ones do
        again = registry.get(node.type).resolve(node.attrs, [v.shape for v in node.inputs], LayerContext(node.loc))
        assert again == node.attrs, (node.name, node.attrs, again)
    assert [v.name for v in g1.inputs] == [v.name for v in g0.inputs]
    assert [v.name for v in g1.outputs] == [v.name for v in g0.outputs]
    feeds = feeds_for(g0)
    before = ReferenceInterpreter(g0).run(feeds)
    after = ReferenceInterpreter(g1).run(feeds)
    for k, ref in before.items():
        assert compare(after[k], ref, PASS).ok, k
    again = run_pass(g1, name)
    assert not again.changed, again.changes
    return g0, g1, res


def declined(res, layer_name: str, words: str) -> bool:
    return any(l == layer_name and words in why for l, why in res.declines)


# -- fold_batchnorm ------------------------------------------------------------------------------

def test_fold_bn_scale_into_conv():
    text = inp((2, 3, 6, 6)) + conv("c1", "data", "c1") + bn("bn1", "c1") + scale("sc1", "c1") \
        + layer("r1", "ReLU", "c1", "c1")
    g0, g1, res = check_pass(text, "fold_batchnorm")
    assert g0.count_types() == {"Input": 1, "Convolution": 1, "BatchNorm": 1, "Scale": 1, "ReLU": 1}
    assert g1.count_types() == {"Input": 1, "Convolution": 1, "ReLU": 1}
    assert res.changed and res.matched == ["bn1"] and not res.declines
    # the survivor takes the name of the latest version it replaces (c1#0 -> c1#2; the ReLU has c1)
    assert g1.node("c1").outputs[0].name == "c1#2"


def test_fold_adds_bias_when_producer_has_none():
    text = inp((2, 3, 5, 5)) + conv("c1", "data", "c1", extra="bias_term: false") + bn("bn1", "c1") \
        + scale("sc1", "c1", body="")  # Scale without bias
    g0, g1, _ = check_pass(text, "fold_batchnorm")
    c = g1.node("c1")
    assert c.attrs.bias_term and c.weights["bias"].shape == (4,)
    assert "bias" not in g0.node("c1").weights and not g0.node("c1").attrs.bias_term  # the copy is untouched
    assert [n.type for n in g1.nodes] == ["Input", "Convolution"]


def test_fold_bn_bias_into_inner_product():
    text = inp((3, 2, 2, 2)) + layer("fc", "InnerProduct", "data", "fc", "inner_product_param { num_output: 5 }") \
        + bn("bn", "fc") + layer("b", "Bias", "fc", "fc")
    _, g1, _ = check_pass(text, "fold_batchnorm")
    assert [n.type for n in g1.nodes] == ["Input", "InnerProduct"]


def test_fold_into_transposed_inner_product():
    text = inp((3, 6)) + layer("fc", "InnerProduct", "data", "fc",
                               "inner_product_param { num_output: 4 transpose: true bias_term: false }") \
        + bn("bn", "fc") + scale("s", "fc")
    _, g1, _ = check_pass(text, "fold_batchnorm")
    assert [n.type for n in g1.nodes] == ["Input", "InnerProduct"]


def test_fold_into_grouped_deconvolution():
    assert registry.get("Deconvolution") is not None
    text = inp((2, 4, 3, 3)) + layer("d", "Deconvolution", "data", "d",
                                     "convolution_param { num_output: 6 kernel_size: 3 stride: 2 group: 2 }") \
        + bn("bn", "d") + scale("s", "d")
    _, g1, res = check_pass(text, "fold_batchnorm")
    assert [n.type for n in g1.nodes] == ["Input", "Deconvolution"], res


def test_fold_into_depthwise_convolution():
    text = inp((1, 3, 5, 5)) + layer("dw", "DepthwiseConvolution", "data", "dw",
                                     "convolution_param { num_output: 3 kernel_size: 3 bias_term: false }") \
        + bn("bn", "dw") + scale("s", "dw")
    _, g1, _ = check_pass(text, "fold_batchnorm")
    assert [n.type for n in g1.nodes] == ["Input", "DepthwiseConvolution"]


def test_fold_matches_by_dataflow_not_file_order():
    # the BatchNorm of branch a is written after branch b's layers
    text = inp((1, 3, 5, 5)) + conv("ca", "data", "a") + conv("cb", "data", "b") + bn("bnb", "b") \
        + bn("bna", "a") + scale("sa", "a") + layer("cat", "Concat", ["a", "b"], "out")
    _, g1, res = check_pass(text, "fold_batchnorm")
    assert g1.count_types() == {"Input": 1, "Convolution": 2, "Concat": 1}
    assert sorted(res.matched) == ["bna", "bnb"]


def test_standalone_bn_scale_becomes_one_affine():
    text = inp((2, 3, 6, 6)) + layer("pool", "Pooling", "data", "p", "pooling_param { pool: MAX kernel_size: 2 }") \
        + bn("bn", "p") + scale("s", "p")
    _, g1, res = check_pass(text, "fold_batchnorm")
    assert g1.count_types() == {"Input": 1, "Pooling": 1, "Scale": 1}
    s = g1.nodes_of("Scale")[0]
    assert s.attrs.bias_term and s.attrs.axis == 1 and s.attrs.num_axes == 1 and set(s.weights) == {"scale", "bias"}
    assert declined(res, "bn", "no weights to fold into")


def test_fold_bn_numerics_not_trivial():
    """With random statistics the folded weights differ from the originals (the fold did work)."""
    text = inp((1, 3, 4, 4)) + conv("c1", "data", "c1") + bn("bn1", "c1") + scale("sc1", "c1")
    g0, g1, _ = check_pass(text, "fold_batchnorm")
    assert not np.allclose(g0.node("c1").weights["weight"], g1.node("c1").weights["weight"])


def test_fold_declines_producer_output_with_other_users():
    text = inp((1, 3, 6, 6)) + conv("c1", "data", "c1") + bn("bn1", "c1", "b1") + scale("sc1", "b1") \
        + layer("pool", "Pooling", "c1", "p", "pooling_param { pool: MAX kernel_size: 2 }")
    _, g1, res = check_pass(text, "fold_batchnorm")
    assert declined(res, "bn1", "other users (pool)")
    assert g1.count_types()["Scale"] == 1 and "BatchNorm" not in g1.count_types()  # standalone affine instead


def test_fold_declines_shared_weights():
    text = inp((1, 3, 6, 6)) + conv("c1", "data", "c1", param='param { name: "shared_w" } ') + bn("bn1", "c1")
    _, g1, res = check_pass(text, "fold_batchnorm")
    assert declined(res, "bn1", "shares its weights")
    assert g1.count_types() == {"Input": 1, "Convolution": 1, "Scale": 1}


def test_fold_declines_batch_statistics():
    text = inp((4, 3, 6, 6)) + conv("c1", "data", "c1") \
        + bn("bn1", "c1", body="batch_norm_param { use_global_stats: false }") + scale("sc1", "c1")
    g0, g1, res = check_pass(text, "fold_batchnorm")
    assert declined(res, "bn1", "batch statistics")
    assert not res.changed and g1.count_types() == g0.count_types()


def test_fold_declines_scale_off_the_channel_axis():
    text = inp((2, 3, 4, 4)) + conv("c1", "data", "c1") + bn("bn1", "c1") \
        + scale("sc1", "c1", body="scale_param { axis: 2 num_axes: 1 bias_term: true }")
    _, g1, res = check_pass(text, "fold_batchnorm")
    assert declined(res, "sc1", "not the channel axis")
    assert g1.count_types() == {"Input": 1, "Convolution": 1, "Scale": 1}  # BN folded, Scale kept


def test_fold_declines_two_bottom_scale():
    text = inp((2, 3, 4, 4)) + inp((4,), "gamma") + conv("c1", "data", "c1") + bn("bn1", "c1") \
        + layer("sc1", "Scale", ["c1", "gamma"], "c1")
    _, g1, res = check_pass(text, "fold_batchnorm")
    assert declined(res, "sc1", "second bottom")
    assert g1.count_types() == {"Input": 2, "Convolution": 1, "Scale": 1}


def test_fold_declines_inner_product_off_axis():
    text = inp((2, 3, 6)) + layer("fc", "InnerProduct", "data", "fc", "inner_product_param { num_output: 4 axis: 2 }") \
        + bn("bn", "fc")
    _, _, res = check_pass(text, "fold_batchnorm")
    assert declined(res, "bn", "not the output-channel axis")


def test_fold_declines_producer_with_fused_activation():
    text = inp((1, 3, 5, 5)) + conv("c1", "data", "c1") + layer("r1", "ReLU", "c1", "c1") + bn("bn1", "c1")
    g = build_text(text)
    run_pass(g, "fuse_activation")
    _, _, res = check_pass("", "fold_batchnorm", graph=g)
    assert declined(res, "bn1", "already applies a fused ReLU")


def test_fold_declines_producer_output_that_is_a_graph_output():
    text = inp((1, 3, 5, 5)) + conv("c1", "data", "c1") + bn("bn1", "c1", "b1")
    _, _, res = check_pass(text, "fold_batchnorm", outputs=["c1", "b1"])
    assert declined(res, "bn1", "graph output")


def test_fold_declines_scale_when_bn_output_has_other_users():
    text = inp((1, 3, 5, 5)) + conv("c1", "data", "c1") + bn("bn1", "c1", "b1") + scale("sc1", "b1", "s1") \
        + layer("r", "ReLU", "b1", "r1")
    _, g1, res = check_pass(text, "fold_batchnorm")
    assert declined(res, "sc1", "other users")
    assert g1.count_types() == {"Input": 1, "Convolution": 1, "Scale": 1, "ReLU": 1}


# -- fuse_activation ------------------------------------------------------------------------------

def test_fuse_relu_and_chain_into_conv():
    text = inp((1, 3, 5, 5)) + conv("c1", "data", "c1") + layer("r1", "ReLU", "c1", "c1") \
        + layer("t1", "TanH", "c1", "c1")
    _, g1, res = check_pass(text, "fuse_activation")
    assert [n.type for n in g1.nodes] == ["Input", "Convolution"]
    assert [p.type for p in g1.node("c1").post_ops] == ["ReLU", "TanH"]
    assert sorted(res.matched) == ["r1", "t1"]
    model = export(g1)  # standard ONNX: the post-ops are lowered after the Conv
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "Tanh"]
    feeds = feeds_for(g1)
    got = make_session(model, "cpu").run(feeds)["c1"]
    assert compare(got, ReferenceInterpreter(g1).run(feeds)["c1"]).ok


def test_fuse_leaky_relu_and_relu6_into_inner_product():
    text = inp((2, 6)) + layer("fc", "InnerProduct", "data", "fc", "inner_product_param { num_output: 4 }") \
        + layer("r", "ReLU", "fc", "fc", "relu_param { negative_slope: 0.2 }") \
        + layer("fc2", "InnerProduct", "fc", "fc2", "inner_product_param { num_output: 3 }") \
        + layer("r6", "ReLU6", "fc2", "out")
    _, g1, _ = check_pass(text, "fuse_activation")
    assert [n.type for n in g1.nodes] == ["Input", "InnerProduct", "InnerProduct"]
    assert g1.outputs[0].name == "out" and g1.outputs[0].producer is g1.node("fc2")


def _hard_swish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


class _HSwishNoTrait(Layer):
    """A plugin named like a well-known activation, without the post_op trait."""

    type_name = "HSwish"

    def infer(self, a, shapes, ctx):
        return [shapes[0]]

    def kernel(self, a, xs, w):
        return [_hard_swish(xs[0])]

    def lower(self, a, g):
        g.op("HardSwish", g.inputs, g.outputs)


class _HSwishPostOp(_HSwishNoTrait):
    post_op = True


@pytest.fixture
def plugin():
    """Register a plugin layer class for the test; unregistered afterwards."""
    names = []

    def add(cls):
        register_layer(cls)
        names.append(cls.type_name)
        return cls

    yield add
    for n in names:
        unregister_layer(n)


def test_fuse_asks_the_trait_not_the_type_name(plugin):
    plugin(_HSwishNoTrait)
    text = inp((1, 3, 5, 5)) + conv("c1", "data", "c1") + layer("hs", "HSwish", "c1", "y")
    _, g1, res = check_pass(text, "fuse_activation")
    assert not res.changed and not res.matched and g1.count_types()["HSwish"] == 1


def test_fuse_plugin_with_the_post_op_trait(plugin):
    plugin(_HSwishPostOp)
    text = inp((1, 3, 5, 5)) + conv("c1", "data", "c1") + layer("hs", "HSwish", "c1", "y")
    g0, g1, res = check_pass(text, "fuse_activation")
    assert res.matched == ["hs"] and g1.count_types() == {"Input": 1, "Convolution": 1}
    assert [p.type for p in g1.node("c1").post_ops] == ["HSwish"] and g1.outputs[0].name == "y"
    model = export(g1)
    assert [n.op_type for n in model.graph.node] == ["Conv", "HardSwish"]
    feeds = feeds_for(g1)
    ref = ReferenceInterpreter(g1).run(feeds)["y"]
    before = ReferenceInterpreter(g0).run(feeds, keep_all=True)["c1"]  # the conv alone, unfused
    assert np.allclose(ref, _hard_swish(before), rtol=1e-12, atol=1e-12)
    assert compare(make_session(model, "cpu").run(feeds)["y"], ref).ok


class _Doubler(Layer):
    """A plugin with a constant affine map (y = 2x + 1) declared through the ``affine`` trait."""

    type_name = "Doubler"

    def infer(self, a, shapes, ctx):
        return [shapes[0]]

    def kernel(self, a, xs, w):
        return [xs[0] * 2.0 + 1.0]

    def lower(self, a, g):
        raise NotImplementedError

    def affine(self, a, ins, w):
        return Affine(0, np.asarray(2.0), np.asarray(1.0))


def test_fold_constants_folds_a_plugin_by_its_affine_trait(plugin):
    plugin(_Doubler)
    text = inp((2, 3)) + layer("d", "Doubler", "data", "a") \
        + layer("p", "Power", "a", "out", "power_param { scale: 3 shift: -1 }")
    _, g1, res = check_pass(text, "fold_constants")
    (p,) = g1.nodes_of("Power")
    assert res.matched == ["d", "p"] and g1.count_types() == {"Input": 1, "Power": 1}
    assert (p.attrs.power, p.attrs.scale, p.attrs.shift) == (1.0, 6.0, 2.0)  # 3 * (2x + 1) - 1


def test_fuse_clip_into_conv():
    text = inp((1, 2, 4, 4)) + conv("c1", "data", "c1") + layer("cl", "Clip", "c1", "y", "clip_param { min: -0.1 max: 0.2 }")
    _, g1, _ = check_pass(text, "fuse_activation")
    assert g1.count_types() == {"Input": 1, "Convolution": 1}


def test_fuse_declines_other_users():
    text = inp((1, 3, 5, 5)) + conv("c1", "data", "c1") + layer("r1", "ReLU", "c1", "r1") \
        + layer("pool", "Pooling", "c1", "p", "pooling_param { pool: MAX kernel_size: 2 }")
    g0, g1, res = check_pass(text, "fuse_activation")
    assert declined(res, "r1", "other users (pool)") and g1.count_types() == g0.count_types()


def test_fuse_declines_unfusable_producer():
    text = inp((1, 3, 6, 6)) + layer("pool", "Pooling", "data", "p", "pooling_param { pool: MAX kernel_size: 2 }") \
        + layer("r1", "ReLU", "p", "p")
    _, _, res = check_pass(text, "fuse_activation")
    assert declined(res, "r1", "takes no fused activations")


def test_fuse_declines_graph_input():
    _, _, res = check_pass(inp((2, 3)) + layer("r1", "ReLU", "data", "y"), "fuse_activation")
    assert declined(res, "r1", "graph input")


def test_fuse_declines_producer_output_that_is_a_graph_output():
    text = inp((1, 3, 5, 5)) + conv("c1", "data", "c1") + layer("r1", "ReLU", "c1", "y")
    _, _, res = check_pass(text, "fuse_activation", outputs=["c1", "y"])
    assert declined(res, "r1", "graph output")


# -- eliminate_dropout / eliminate_split ------------------------------------------------------------

def test_eliminate_dropout():
    text = inp((2, 6)) + layer("fc", "InnerProduct", "data", "fc", "inner_product_param { num_output: 4 }") \
        + layer("d1", "Dropout", "fc", "fc") + layer("d2", "Dropout", "fc", "out")
    _, g1, res = check_pass(text, "eliminate_dropout")
    assert [n.type for n in g1.nodes] == ["Input", "InnerProduct"] and res.matched == ["d1", "d2"]
    assert g1.outputs[0].name == "out" and g1.node("fc").outputs[0] is g1.outputs[0]


def test_eliminate_dropout_declines_input_to_output():
    g0, g1, res = check_pass(inp((2, 6)) + layer("d", "Dropout", "data", "out"), "eliminate_dropout")
    assert declined(res, "d", "graph input") and g1.count_types() == g0.count_types()


def test_eliminate_split():
    text = inp((1, 3, 4, 4)) + layer("sp", "Split", "data", ["a", "b"]) + conv("ca", "a", "ya") + conv("cb", "b", "yb") \
        + layer("sum", "Eltwise", ["ya", "yb"], "out")
    _, g1, res = check_pass(text, "eliminate_split")
    assert "Split" not in g1.count_types() and res.changed
    assert g1.node("ca").inputs[0] is g1.inputs[0] and g1.node("cb").inputs[0] is g1.inputs[0]


def test_eliminate_split_passes_output_name():
    text = inp((1, 3, 4, 4)) + conv("c", "data", "y") + layer("sp", "Split", "y", ["a", "out"]) + conv("ca", "a", "za")
    _, g1, _ = check_pass(text, "eliminate_split")
    assert "Split" not in g1.count_types() and g1.node("c").outputs[0].name == "out"


def test_eliminate_split_declines_two_graph_outputs():
    text = inp((1, 3, 4, 4)) + conv("c", "data", "y") + layer("sp", "Split", "y", ["a", "b"])
    _, g1, res = check_pass(text, "eliminate_split")
    assert declined(res, "sp", "2 of its tops are graph outputs") and "Split" in g1.count_types()


def test_eliminate_split_declines_input_to_output():
    text = inp((1, 3, 4, 4)) + layer("sp", "Split", "data", ["a", "b"]) + conv("ca", "a", "za")
    _, _, res = check_pass(text, "eliminate_split")
    assert declined(res, "sp", "graph input")


# -- eliminate_identity --------------------------------------------------------------------------

def test_eliminate_identity_layers():
    text = inp((2, 3, 4, 4)) + conv("c", "data", "c") \
        + layer("rs", "Reshape", "c", "r", "reshape_param { shape { dim: 0 dim: 0 dim: -1 dim: 4 } }") \
        + layer("pw", "Power", "r", "p", "power_param { power: 1 scale: 1 shift: 0 }") \
        + layer("cat", "Concat", "p", "q") + layer("ew", "Eltwise", "q", "e", "eltwise_param { coeff: 1 }") \
        + layer("sc", "Scale", "e", "s") + layer("bi", "Bias", "s", "b") \
        + layer("fl", "Flatten", "b", "f") + layer("fc", "InnerProduct", "f", "fc", "inner_product_param { num_output: 2 }") \
        + layer("fl2", "Flatten", "fc", "out")
    g = build_text(text, init="filler")  # filler: Scale is all 1, Bias all 0
    _, g1, res = check_pass("", "eliminate_identity", graph=g)
    assert g1.count_types() == {"Input": 1, "Convolution": 1, "Flatten": 1, "InnerProduct": 1}
    assert sorted(res.matched) == ["bi", "cat", "ew", "fl2", "pw", "rs", "sc"]
    assert g1.outputs[0].name == "out" and g1.outputs[0].producer is g1.node("fc")


def test_eliminate_identity_keeps_non_identities():
    text = inp((2, 3, 4, 4)) + layer("pw", "Power", "data", "p", "power_param { power: 1 scale: 2 shift: 0 }") \
        + layer("sc", "Scale", "p", "s") + layer("ew", "Eltwise", "s", "e", "eltwise_param { coeff: 2 }")
    g0, g1, res = check_pass(text, "eliminate_identity")  # random init: the Scale is not all 1
    assert not res.changed and g1.count_types() == g0.count_types()


def test_eliminate_identity_declines_input_to_output():
    text = inp((2, 3)) + layer("rs", "Reshape", "data", "out", "reshape_param { shape { dim: 2 dim: 3 } }")
    _, g1, res = check_pass(text, "eliminate_identity")
    assert declined(res, "rs", "graph input") and "Reshape" in g1.count_types()


def test_eliminate_identity_declines_output_to_output():
    text = inp((2, 3)) + layer("fc", "InnerProduct", "data", "y", "inner_product_param { num_output: 3 }") \
        + layer("pw", "Power", "y", "out")
    _, _, res = check_pass(text, "eliminate_identity", outputs=["y", "out"])
    assert declined(res, "pw", "both graph outputs")


# -- fold_constants ------------------------------------------------------------------------------

def test_fold_two_channel_scales():
    text = inp((2, 3, 4, 4)) + conv("c", "data", "c") \
        + layer("p", "Pooling", "c", "p", "pooling_param { pool: AVE kernel_size: 2 }") \
        + scale("s1", "p") + scale("s2", "p", body="")
    _, g1, res = check_pass(text, "fold_constants")
    assert g1.count_types() == {"Input": 1, "Convolution": 1, "Pooling": 1, "Scale": 1}
    assert res.matched == ["s1", "s2"] and g1.nodes_of("Scale")[0].weights["scale"].shape == (4,)


def test_fold_power_chain_into_one_power():
    text = inp((2, 3)) + layer("p1", "Power", "data", "a", "power_param { scale: 2 shift: 1 }") \
        + layer("p2", "Power", "a", "b", "power_param { scale: -0.5 shift: 3 }") \
        + layer("p3", "Power", "b", "out", "power_param { scale: 4 }")
    _, g1, _ = check_pass(text, "fold_constants")
    (p,) = g1.nodes_of("Power")
    assert (p.attrs.power, p.attrs.scale, p.attrs.shift) == (1.0, -4.0, 10.0)  # ((2x+1)(-0.5)+3)*4 = -4x + 10
    assert g1.outputs[0].name == "out"


def test_fold_mixed_chain_over_the_union_of_axes():
    text = inp((2, 3, 4)) + layer("s1", "Scale", "data", "a", "scale_param { num_axes: 0 bias_term: true }") \
        + layer("b1", "Scale", "a", "b", "scale_param { axis: 1 num_axes: 2 bias_term: true }") \
        + layer("p1", "Power", "b", "c", "power_param { scale: 3 shift: -1 }") \
        + layer("s2", "Scale", "c", "out", "scale_param { axis: 1 num_axes: 1 }")
    _, g1, res = check_pass(text, "fold_constants")
    s = g1.nodes_of("Scale")[0]
    assert len(g1.nodes) == 2 and (s.attrs.axis, s.attrs.num_axes) == (1, 2) and s.weights["scale"].shape == (3, 4)
    assert s.attrs.bias_term and s.weights["bias"].shape == (3, 4)  # 2 + 24 + 0 + 3 = 29 values became 24


def test_fold_constants_declines_a_fold_that_grows_the_parameters():
    """A per-channel Scale (64 scales + 64 biases) then a spatial Bias (32·32) would fold into one
    64·32·32 Scale with bias: 131,072 values for 1,152. Declined, with the counts."""
    text = inp((1, 64, 32, 32)) + layer("s1", "Scale", "data", "a", "scale_param { bias_term: true }") \
        + layer("b1", "Bias", "a", "out", "bias_param { axis: 2 num_axes: 2 }")
    g0, g1, res = check_pass(text, "fold_constants")
    assert declined(res, "b1", "would grow the parameters from 1,152 to 131,072")
    assert not res.changed and g1.count_types() == g0.count_types()
    assert "declined 'b1': folding it into 's1' would grow the parameters from 1,152 to 131,072" in explain([res])


def test_fold_power_into_scale_without_a_shift_keeps_no_bias():
    text = inp((2, 3, 4)) + layer("p1", "Power", "data", "a", "power_param { scale: 2 }") \
        + layer("s1", "Scale", "a", "out", "scale_param { axis: 1 num_axes: 1 }")
    _, g1, res = check_pass(text, "fold_constants")
    (s,) = g1.nodes_of("Scale")
    assert res.changed and not s.attrs.bias_term and list(s.weights) == ["scale"]


def test_dead_code_runs_before_the_folds():
    """A dead reader of a chain's inner value would block the fold; dead_code goes first."""
    assert PASS_NAMES[0] == "dead_code" and PASS_NAMES.index("dead_code") < PASS_NAMES.index("fold_constants")
    text = inp((2, 3)) + layer("p1", "Power", "data", "a", "power_param { scale: 3 }") \
        + layer("p2", "Power", "a", "out", "power_param { scale: 2 }") + layer("r", "ReLU", "a", "dead")
    g = build_text(text)
    g.outputs = [g.values["out"]]
    results = {r.name: r for r in run_passes(g, ["dead_code", "fold_constants"], max_rounds=1)}
    assert results["fold_constants"].changed and g.count_types() == {"Input": 1, "Power": 1}


def test_fold_constants_declines_non_affine_power():
    text = inp((2, 3)) + layer("p1", "Power", "data", "a", "power_param { power: 2 }") \
        + layer("p2", "Power", "a", "b", "power_param { scale: 3 }")
    g0, g1, res = check_pass(text, "fold_constants")
    assert declined(res, "p1", "not affine") and g1.count_types() == g0.count_types()


def test_fold_constants_declines_two_bottom_scale():
    text = inp((2, 3)) + inp((2, 3), "w") + layer("p1", "Power", "data", "a", "power_param { scale: 3 }") \
        + layer("s", "Scale", ["a", "w"], "b", "scale_param { axis: 0 }")
    g0, g1, res = check_pass(text, "fold_constants")
    assert declined(res, "s", "second bottom") and g1.count_types() == g0.count_types()


def test_fold_constants_declines_shared_intermediate():
    text = inp((2, 3)) + layer("p1", "Power", "data", "a", "power_param { scale: 3 }") \
        + layer("p2", "Power", "a", "b", "power_param { scale: 2 }") + layer("r", "ReLU", "a", "c")
    g0, g1, res = check_pass(text, "fold_constants")
    assert declined(res, "p2", "other users") and g1.count_types() == g0.count_types()


# -- dead_code ------------------------------------------------------------------------------------

AUX_NET = inp((1, 3, 8, 8)) + conv("c1", "data", "c1") + layer("r1", "ReLU", "c1", "c1") \
    + layer("fc", "InnerProduct", "c1", "fc", "inner_product_param { num_output: 5 }") \
    + layer("prob", "Softmax", "fc", "prob") \
    + layer("aux_pool", "Pooling", "c1", "ap", "pooling_param { pool: AVE kernel_size: 4 stride: 4 }") \
    + layer("aux_fc", "InnerProduct", "ap", "afc", "inner_product_param { num_output: 5 }") \
    + layer("aux_prob", "Softmax", "afc", "aux_prob")


def test_dead_code_removes_unused_heads():
    _, g1, res = check_pass(AUX_NET, "dead_code", outputs=["prob"])
    assert g1.count_types() == {"Input": 1, "Convolution": 1, "ReLU": 1, "InnerProduct": 1, "Softmax": 1}
    assert sorted(res.matched) == ["aux_fc", "aux_pool", "aux_prob"]


def test_dead_code_keeps_everything_needed_and_inputs():
    text = inp((2, 3)) + inp((2, 3), "unused") + layer("r", "ReLU", "data", "out")
    g0, g1, res = check_pass(text, "dead_code")
    assert not res.changed and g1.count_types() == g0.count_types() == {"Input": 2, "ReLU": 1}


# -- the manager ----------------------------------------------------------------------------------

def test_run_passes_default_order_to_fixed_point():
    text = inp((1, 3, 6, 6)) + conv("c1", "data", "c1") + bn("bn1", "c1") + scale("sc1", "c1") \
        + layer("r1", "ReLU", "c1", "c1") + layer("d", "Dropout", "c1", "c1") \
        + layer("sp", "Split", "c1", ["x", "z"]) + layer("s2", "Scale", "x", "x2", "scale_param { bias_term: true }") \
        + layer("s3", "Scale", "x2", "out") + layer("fc", "InnerProduct", "z", "aux", "inner_product_param { num_output: 2 }")
    g0 = build_text(text)
    g0.outputs = [g0.values["out"]]
    g1 = g0.copy()
    results = run_passes(g1)
    assert [r.name for r in results] == list(PASS_NAMES)
    assert g1.count_types() == {"Input": 1, "Convolution": 1, "Scale": 1}
    assert [p.type for p in g1.node("c1").post_ops] == ["ReLU"]
    feeds = feeds_for(g0)
    a, b = ReferenceInterpreter(g0).run(feeds), ReferenceInterpreter(g1).run(feeds)
    assert compare(b["out"], a["out"], PASS).ok
    assert not any(r.changed for r in run_passes(g1))
    text_out = explain(results)
    for words in ("fold_batchnorm: 1 matched", "changed: folded 'bn1' + 'sc1' into Convolution 'c1'",
                  "fuse_activation", "dead_code", "removed InnerProduct 'fc'"):
        assert words in text_out, text_out


def test_explain_lists_declines():
    text = inp((4, 3, 6, 6)) + conv("c1", "data", "c1") + bn("bn1", "c1", body="batch_norm_param { use_global_stats: false }")
    results = run_passes(build_text(text), ["fold_batchnorm"])
    assert "declined 'bn1': uses batch statistics" in explain(results)


def test_unknown_pass_names_list_the_valid_ones():
    g = build_text(inp((2, 3)) + layer("r", "ReLU", "data", "out"))
    with pytest.raises(ProtonetError, match="unknown pass 'fold_everything'; valid passes: dead_code, eliminate_dropout, "):
        run_passes(g, ["fold_batchnorm", "fold_everything"])


def test_failures_name_the_pass_and_layer():
    g = build_text(inp((1, 3, 4, 4)) + conv("c1", "data", "c1") + bn("bn_broken", "c1"))
    del g.node("bn_broken").weights["variance"]
    with pytest.raises(PassError, match="pass fold_batchnorm failed on layer 'bn_broken': KeyError"):
        run_passes(g, ["fold_batchnorm"])


def test_compile_net_optimize_runs_the_passes():
    c = compile_net(NETS / "lenet.prototxt", options=BuildOptions(batch=1, init="random"), optimize=True)
    assert [r.name for r in c.passes] == list(PASS_NAMES) and "ReLU" not in c.graph.count_types()


# -- the zoo --------------------------------------------------------------------------------------

ALL_NETS = sorted(p.name for p in NETS.glob("*.prototxt"))
#: nets small enough for the float64 reference (verify: every blob, reference vs onnxruntime)
VERIFY_NETS = ("lenet", "alexnet", "googlenet", "resnet50", "mobilenet_v1", "squeezenet1_1")


def _ort(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # onnx.checker's full check is the exporter's test; here it would dominate the time (VGG: 0.5 GB)
    return make_session(export(graph, check=False), "cpu").run(feeds)


def _count_onnx_nodes(graph: Graph) -> int:
    return len(export(graph, check=False).graph.node)


#: nets whose fully connected layers hold 60-140 M parameters at full size run at a smaller
#: input here (the passes do not depend on the spatial size; alexnet runs at full size in
#: test_zoo_verify_optimized_graph, and tools/bench_passes.py runs them at full size)
SMALL_INPUT = {"alexnet.prototxt": 131, "caffenet.prototxt": 131, "zfnet.prototxt": 131,
               "overfeat_fast.prototxt": 135, "vgg11.prototxt": 64, "vgg13.prototxt": 64, "vgg16.prototxt": 64,
               "vgg19.prototxt": 64}


@pytest.mark.parametrize("net", ALL_NETS)
def test_zoo_optimized_matches_unoptimized_in_onnxruntime(net: str):
    shapes = {"data": (1, 3, SMALL_INPUT[net], SMALL_INPUT[net])} if net in SMALL_INPUT else {}
    g0 = compile_net(NETS / net, options=BuildOptions(batch=1, init="random", input_shapes=shapes)).graph
    g1 = g0.copy()
    results = run_passes(g1)
    g1.lint()
    assert [v.name for v in g1.outputs] == [v.name for v in g0.outputs]
    assert len(g1.nodes) <= len(g0.nodes)
    if any(n.type in ("BatchNorm", "Dropout", "ReLU") for n in g0.nodes):
        assert any(r.changed for r in results)
    feeds = random_inputs(g0, seed=1)
    a, b = _ort(g0, feeds), _ort(g1, feeds)
    for k, ref in a.items():
        assert compare(b[k], ref).ok, (net, k)
    assert not any(r.changed for r in run_passes(g1)), "a second run changes nothing"


@pytest.mark.parametrize("net", VERIFY_NETS)
def test_zoo_verify_optimized_graph(net: str):
    c = compile_net(NETS / f"{net}.prototxt", options=BuildOptions(batch=1, init="random"))
    run_passes(c.graph)
    res = verify_graph(c.graph, random_inputs(c.graph, seed=2), "cpu")
    assert res.ok, res.worst
