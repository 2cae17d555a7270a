"""Helpers shared by the tests: build a tiny net around a layer example and run it."""
from __future__ import annotations

import copy

import numpy as np
import onnx

from protonet.build import BuildOptions, build_graph
from protonet.frontend import LoadedNet, load_net
from protonet.layers.base import Example


def example_net_text(ex: Example) -> str:
    lines = []
    for i, shape in enumerate(ex.inputs):
        dims = " ".join(f"dim: {d}" for d in shape)
        lines.append(f'layer {{ name: "input{i}" type: "Input" top: "in{i}" input_param {{ shape {{ {dims} }} }} }}')
    lines.append(ex.prototxt)
    return "\n".join(lines) + "\n"


def load_text(text: str, path: str = "test.prototxt", input_shapes: dict | None = None) -> LoadedNet:
    return load_net(path, text=text, input_shapes=input_shapes)


def build_text(text: str, seed: int = 0, init: str = "random", **kw):
    loaded = load_text(text, input_shapes=kw.get("input_shapes"))
    graph, _ = build_graph(loaded, None, BuildOptions(seed=seed, init=init, **kw))
    return graph


def example_inputs(graph, ex: Example, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i, v in enumerate(graph.inputs):
        if i in ex.values:
            feeds[v.name] = np.asarray(ex.values[i], dtype=np.float32).reshape(v.shape)
        elif i in ex.int_inputs:
            feeds[v.name] = rng.integers(0, ex.int_inputs[i], size=v.shape).astype(np.float32)
        else:
            feeds[v.name] = rng.standard_normal(v.shape).astype(np.float32)
    return feeds


def onnx_inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Shapes that onnx.shape_inference derives on its own (declared output shapes removed), with
    data propagation: a shape built from the input's own (Shape, Concat) as batch-agnostic lowerings do."""
    m = copy.deepcopy(model)
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return out
