"""Registry-driven tests: every example of every layer type through every facet.

- the shape rule (``infer``) agrees with the numpy kernel's output shapes;
- the ONNX lowering, run in onnxruntime, agrees with the numpy kernel (two implementations);
- onnx.shape_inference derives the same shapes as ``infer``;
- ``cost`` is a non-negative integer and params come from the weight specs.
"""
from __future__ import annotations

import pytest

from harness import build_text, example_inputs, example_net_text, onnx_inferred_shapes
from protonet.export import export
from protonet.layers import registry
from protonet.errors import LayerContext
from protonet.layers.base import Example, Layer
from protonet.reference import ReferenceInterpreter
from protonet.runtime import make_session
from protonet.tolerances import LAYER, compare

CASES = [pytest.param(name, ex, id=f"{name}-{ex.name or i}")
         for name, layer in sorted(registry.all_types().items())
         for i, ex in enumerate(layer.examples)]


def test_every_type_has_every_facet():
    missing = []
    for name, layer in registry.all_types().items():
        cls = type(layer)
        for facet in ("infer", "kernel", "lower"):
            if getattr(cls, facet) is getattr(Layer, facet):
                missing.append(f"{name}.{facet}")
        if not layer.is_source and not layer.examples:
            missing.append(f"{name}.examples")
    assert not missing, f"layer types lacking facets: {missing}"


@pytest.mark.parametrize("name,ex", CASES)
def test_layer_example(name, ex):
    graph = build_text(example_net_text(ex))
    nodes = [n for n in graph.nodes if registry.canonical_name(n.type) == name]
    assert nodes, f"example builds no {name} layer"
    node = nodes[-1]
    feeds = example_inputs(graph, ex)
    ref = ReferenceInterpreter(graph).run(feeds, keep_all=True)  # checks kernel shapes == infer
    model = export(graph, expose_all=True)
    sess = make_session(model, "cpu")
    got = sess.run(feeds)
    for v in graph.iter_values():
        if v in graph.inputs:
            continue
        assert got[v.name].shape == v.shape
        res = compare(got[v.name], ref[v.name], LAYER)
        assert res.ok, f"{v.name}: onnxruntime vs kernel {res.describe()} ({res.ratio:.3g}x the tolerance)"
    inferred = onnx_inferred_shapes(export(graph))
    for v in graph.outputs:
        assert inferred.get(v.name) == v.shape, f"onnx shape inference {inferred.get(v.name)} vs infer {v.shape}"
    layer = registry.get(node.type)
    macs = layer.cost(node.attrs, [v.shape for v in node.inputs], [v.shape for v in node.outputs])
    assert isinstance(macs, int) and macs >= 0


@pytest.mark.parametrize("name,ex", CASES)
def test_built_attrs_are_resolved_once(name, ex):
    """Build resolves attrs against the input shapes; resolving them again changes nothing
    (kernel and lower read them as they are)."""
    graph = build_text(example_net_text(ex))
    for node in graph.nodes:
        layer = registry.get(node.type)
        again = layer.resolve(node.attrs, [v.shape for v in node.inputs], LayerContext(node.loc))
        assert again == node.attrs, f"{node.name}: {node.attrs} resolves again to {again}"


@pytest.mark.parametrize("text,shapes,field,want", [
    ('layer { name: "l" type: "Softmax" bottom: "in0" top: "out" softmax_param { axis: -1 } }', [(2, 3, 4)],
     "axis", 2),
    ('layer { name: "l" type: "Concat" bottom: "in0" bottom: "in1" top: "out" concat_param { axis: -2 } }',
     [(2, 3, 4), (2, 5, 4)], "axis", 1),
    ('layer { name: "l" type: "InnerProduct" bottom: "in0" top: "out" inner_product_param { num_output: 2 '
     'axis: -1 } }', [(2, 3, 4)], "axis", 2),
    ('layer { name: "l" type: "Scale" bottom: "in0" top: "out" scale_param { axis: -2 num_axes: -1 } }',
     [(2, 3, 4)], "num_axes", 2),
    ('layer { name: "l" type: "Bias" bottom: "in0" top: "out" bias_param { axis: -1 } }', [(2, 3, 4)], "axis", 2),
    ('layer { name: "l" type: "Flatten" bottom: "in0" top: "out" flatten_param { end_axis: -2 } }',
     [(2, 3, 4, 5)], "end_axis", 2),
    ('layer { name: "l" type: "Reshape" bottom: "in0" top: "out" reshape_param { shape { dim: 0 dim: -1 } '
     'axis: -2 } }', [(2, 3, 4)], "out", (2, 3, 4, 1)),  # replaces axes [2, 3): 4 copied, 1 inferred
])
def test_resolve_makes_axes_canonical(text, shapes, field, want):
    graph = build_text(example_net_text(Example(text, tuple(shapes))))
    assert getattr(graph.node("l").attrs, field) == want

