"""The plugin hook: registering custom layer types from Python, loading plugin modules, and
exporting custom-domain ONNX nodes. Every type registered here is unregistered in teardown."""
from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx
import pytest

from harness import build_text, example_net_text
from protonet.errors import ProtonetError, UnsupportedError
from protonet.export import export
from protonet.layers import registry
from protonet.layers.base import Example, Layer, NoAttrs, WeightSpec
from protonet.plugins import (CUSTOM_DOMAIN, CustomOpLayer, PluginError, attrs_to_onnx, load_plugins,
                              register_layer, unregister_layer)
from protonet.reference import ReferenceInterpreter
from protonet.runtime import make_session


def _mish(x: np.ndarray) -> np.ndarray:
    return x * np.tanh(np.logaddexp(0.0, x))


class Mish(CustomOpLayer):
    """x * tanh(softplus(x)), exported as a protonet.custom node."""

    type_name = "Mish"
    examples = (Example('layer { name: "m" type: "Mish" bottom: "in0" top: "out" }', ((1, 3),)),)

    def infer(self, a: Any, shapes: Sequence, ctx: Any) -> list:
        return [shapes[0]]

    def kernel(self, a: Any, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [_mish(xs[0])]


class MishStandard(Layer):
    """The same function with a standard ONNX lowering, so onnxruntime can run it."""

    type_name = "MishStd"
    aliases = ("MishStandard",)
    examples = (Example('layer { name: "m" type: "MishStd" bottom: "in0" top: "out" }', ((2, 3, 4),)),)

    def infer(self, a: Any, shapes: Sequence, ctx: Any) -> list:
        return [shapes[0]]

    def kernel(self, a: Any, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [_mish(xs[0])]

    def lower(self, a: Any, g: Any) -> None:
        g.op("Mul", [g.inputs[0], g.op("Tanh", [g.op("Softplus", [g.inputs[0]])])], g.outputs)


@dataclass(frozen=True)
class GainAttrs:
    axis: int
    bias_term: bool
    alpha: float
    dims: tuple[int, ...]
    note: str | None


class Gain(CustomOpLayer):
    """A custom op with a weight and attributes read from scale_param (axis, bias_term)."""

    type_name = "Gain"
    onnx_op_type = "ChannelGain"
    examples = (Example('layer { name: "g" type: "Gain" bottom: "in0" top: "out" }', ((1, 2, 3),)),)

    def parse(self, layer: Any, ctx: Any) -> GainAttrs:
        p = layer.scale_param
        return GainAttrs(int(p.axis), bool(p.bias_term), 0.5, (1, 2), None)

    def infer(self, a: GainAttrs, shapes: Sequence, ctx: Any) -> list:
        return [shapes[0]]

    def weights(self, a: GainAttrs, shapes: Sequence) -> list[WeightSpec]:
        return [WeightSpec("gain", (shapes[0][a.axis],))]

    def kernel(self, a: GainAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [xs[0] * w["gain"].reshape(-1, 1) * a.alpha]


@pytest.fixture
def plugin_types():
    """register(cls, **kw) for the test; every type it registered is unregistered afterwards."""
    names: list[str] = []

    def add(cls: type[Layer], **kw: Any) -> type[Layer]:
        names.append(cls.type_name)
        return register_layer(cls, **kw)

    yield add
    for name in names:
        if registry.get(name) is not None:
            registry.unregister(name)


def _net(layer: str, shape: tuple) -> str:
    return example_net_text(Example(layer, (shape,)))


def test_custom_type_runs_in_reference_and_exports_custom_domain_node(plugin_types):
    plugin_types(Mish)
    graph = build_text(_net('layer { name: "act" type: "Mish" bottom: "in0" top: "out" }', (1, 3)))
    # mish(1) = tanh(ln(1 + e)) = tanh(1.31326168752) = 0.86509838827
    # mish(-1) = -tanh(ln(1 + 1/e)) = -tanh(0.31326168752) = -0.30340146137
    out = ReferenceInterpreter(graph).run({"in0": np.array([[0.0, 1.0, -1.0]])})["out"]
    np.testing.assert_allclose(out, [[0.0, 0.86509838827, -0.30340146137]], atol=1e-10)
    model = export(graph)
    nodes = [(n.op_type, n.domain, list(n.input), list(n.output)) for n in model.graph.node]
    assert nodes == [("Mish", CUSTOM_DOMAIN, ["in0"], ["out"])]
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17), (CUSTOM_DOMAIN, 1)}
    onnx.checker.check_model(model)  # well formed, even though no runtime knows the op


def test_custom_op_passes_weights_and_attributes(plugin_types):
    plugin_types(Gain)
    graph = build_text(_net('layer { name: "g" type: "Gain" bottom: "in0" top: "out" '
                            'scale_param { axis: 1 bias_term: true } }', (1, 2, 3)))
    node = [n for n in graph.nodes if n.type == "Gain"][0]
    node.weights["gain"] = np.array([2.0, -4.0])
    out = ReferenceInterpreter(graph).run({"in0": np.ones((1, 2, 3))})["out"]
    np.testing.assert_allclose(out, [[[1.0] * 3, [-2.0] * 3]])  # x * gain * 0.5
    model = export(graph)
    (onode,) = model.graph.node
    assert (onode.op_type, onode.domain) == ("ChannelGain", CUSTOM_DOMAIN)
    assert list(onode.input) == ["in0", "g.gain"]
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(init["g.gain"], [2.0, -4.0])
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in onode.attribute}
    assert attrs == {"axis": 1, "bias_term": 1, "alpha": 0.5, "dims": [1, 2]}  # None (note) left out


def test_attrs_to_onnx_conversions():
    @dataclass(frozen=True)
    class A:
        flag: bool
        n: int
        x: float
        s: str
        ints: tuple
        floats: tuple
        mixed: tuple
        names: tuple
        empty: tuple
        nested: tuple
        other: object

    got = attrs_to_onnx(A(False, 3, 0.25, "MAX", (1, 2), (0.5, 1.5), (1, 0.5), ("a", "b"), (), ((1,),), object()))
    assert got == {"flag": 0, "n": 3, "x": 0.25, "s": "MAX", "ints": [1, 2], "floats": [0.5, 1.5],
                   "mixed": [1.0, 0.5], "names": ["a", "b"]}
    assert attrs_to_onnx(NoAttrs()) == {}


def test_plugin_with_standard_lowering_matches_onnxruntime(plugin_types):
    plugin_types(MishStandard)
    graph = build_text(_net('layer { name: "m" type: "MishStandard" bottom: "in0" top: "out" }', (2, 3, 4)))
    assert graph.nodes[-1].type == "MishStd"  # the alias resolves to the canonical type
    x = np.linspace(-4, 4, 24, dtype=np.float32).reshape(2, 3, 4)
    ref = ReferenceInterpreter(graph).run({"in0": x})["out"]
    got = make_session(export(graph), "cpu").run({"in0": x})["out"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,aliases", [("Python", ()), ("MyPy", ("Python",))])
def test_python_type_cannot_be_registered(name, aliases):
    cls = type("Sneaky", (Mish,), {"type_name": name, "aliases": aliases})
    for kw in ({}, {"replace": True}):
        with pytest.raises(PluginError, match="'Python' cannot be registered"):
            register_layer(cls, **kw)
    assert registry.get("Python") is None and registry.get("MyPy") is None


def test_python_layer_in_a_prototxt_is_still_refused():
    with pytest.raises(UnsupportedError, match="Python layers"):
        build_text(_net('layer { name: "py" type: "Python" bottom: "in0" top: "out" '
                        'python_param { module: "os" layer: "system" } }', (1, 3)))


def test_duplicate_is_refused_unless_replace(plugin_types):
    plugin_types(Mish)
    other = type("OtherMish", (Mish,), {"kernel": lambda self, a, xs, w: [xs[0]]})
    with pytest.raises(PluginError, match=r"'Mish' \(by .*Mish\).*replace=True"):
        register_layer(other)
    assert type(registry.get("Mish")) is Mish
    with pytest.raises(PluginError, match="already registered.*'ReLU'"):
        register_layer(type("MyReLU", (Mish,), {"type_name": "ReLU"}))
    assert type(registry.get("ReLU")).__module__ == "protonet.layers.core"
    # replace=True, used as a decorator with arguments
    assert register_layer(replace=True)(other) is other
    assert type(registry.get("Mish")) is other


def test_incomplete_or_foreign_classes_are_refused():
    with pytest.raises(PluginError, match="lacks infer, kernel"):
        register_layer(type("Half", (CustomOpLayer,), {"type_name": "Half"}))
    with pytest.raises(PluginError, match="has no type_name"):
        register_layer(type("Nameless", (Mish,), {"type_name": ""}))
    with pytest.raises(PluginError, match="not a subclass"):
        register_layer(object)  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="is not registered"):
        unregister_layer("NoSuchType")
    assert registry.get("Half") is None


PLUGIN_SOURCE = textwrap.dedent('''
    import numpy as np
    from protonet.layers.base import Example
    from protonet.plugins import CustomOpLayer, register_layer

    @register_layer
    class {name}(CustomOpLayer):
        """Doubles its input."""
        type_name = "{name}"
        examples = (Example('layer {{ name: "d" type: "{name}" bottom: "in0" top: "out" }}', ((2,),)),)

        def infer(self, a, shapes, ctx):
            return [shapes[0]]

        def kernel(self, a, xs, w):
            return [2 * xs[0]]
''')


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(("pn_test_plugin", "protonet_plugin_pn_")):
            del sys.modules[name]
    for t in ("DoubleA", "DoubleB"):
        if registry.get(t) is not None:
            registry.unregister(t)


def test_load_plugins_by_module_name_and_by_file(plugin_dir):
    (plugin_dir / "pn_test_plugin_a.py").write_text(PLUGIN_SOURCE.format(name="DoubleA"))
    sub = plugin_dir / "elsewhere"
    sub.mkdir()
    (sub / "pn_b.py").write_text(PLUGIN_SOURCE.format(name="DoubleB"))
    loaded = load_plugins(["pn_test_plugin_a", str(sub / "pn_b.py")])
    assert loaded == {"pn_test_plugin_a": ["DoubleA"], "protonet_plugin_pn_b": ["DoubleB"]}
    graph = build_text(_net('layer { name: "d" type: "DoubleA" bottom: "in0" top: "x" }\n'
                            'layer { name: "e" type: "DoubleB" bottom: "x" top: "out" }', (2,)))
    np.testing.assert_array_equal(ReferenceInterpreter(graph).run({"in0": np.array([1.0, -3.0])})["out"], [4, -12])
    # loading again is a no-op (the module is imported once, nothing registered twice)
    assert load_plugins(["pn_test_plugin_a"]) == {"pn_test_plugin_a": []}


def test_load_plugins_errors_name_the_plugin(plugin_dir):
    with pytest.raises(PluginError, match="plugin module 'pn_test_plugin_missing' not found"):
        load_plugins(["pn_test_plugin_missing"])
    with pytest.raises(PluginError, match="plugin file .*nothere.py does not exist"):
        load_plugins([str(plugin_dir / "nothere.py")])
    (plugin_dir / "pn_test_plugin_broken.py").write_text("import pn_test_plugin_no_such_dependency\n")
    with pytest.raises(PluginError, match="'pn_test_plugin_broken' failed to import: ModuleNotFoundError"):
        load_plugins(["pn_test_plugin_broken"])
    (plugin_dir / "pn_test_plugin_py.py").write_text(
        PLUGIN_SOURCE.format(name="DoubleA").replace('type_name = "DoubleA"', 'type_name = "Python"'))
    with pytest.raises(PluginError, match="'Python' cannot be registered") as info:
        load_plugins(["pn_test_plugin_py"])
    assert isinstance(info.value, ProtonetError)
    assert registry.get("Python") is None
