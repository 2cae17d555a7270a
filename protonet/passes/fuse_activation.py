"""fuse_activation: an element-wise activation right after a Convolution / Deconvolution /
DepthwiseConvolution / InnerProduct becomes a post-op of that layer."""
from __future__ import annotations

from ..ir import Graph, PostOp
from ..layers import registry
from .base import PassResult, bypass, is_source, on_layer, private_output_reason

#: element-wise, parameter-free activations that may run as a producer's post-op
ACTIVATIONS = ("ReLU", "ReLU6", "Clip", "Sigmoid", "TanH", "ELU", "AbsVal", "BNLL", "Swish", "HardSigmoid",
               "HardSwish", "HSwish", "HSigmoid", "Mish", "GELU", "Threshold", "SoftPlus", "Softplus")
#: layers that accept fused post-ops
PRODUCERS = ("Convolution", "Deconvolution", "DepthwiseConvolution", "InnerProduct")


def fuse_activation(graph: Graph) -> PassResult:
    """Rule: ``P -> A`` with A one of :data:`ACTIVATIONS` (registered, no weights, one bottom
    and one top of P's shape) and P a Convolution / Deconvolution / DepthwiseConvolution / InnerProduct becomes P with
    ``PostOp(A)`` appended to ``P.post_ops``; A's users read P's output (which keeps A's blob
    name). The reference interpreter applies post-ops after P's kernel; export lowers them
    as standard ONNX nodes after P's.

    Declines when P is not one of those layer types; when P has several outputs; when P's
    output has other users or is a graph output (the value before the activation must stay
    observable); when P's output is a graph output whose name A's output cannot take."""
    res = PassResult(name="fuse_activation")
    for act in [n for n in graph.nodes if n.type in ACTIVATIONS]:
        layer = registry.get(act.type)
        if layer is None or act.weights or len(act.inputs) != 1 or len(act.outputs) != 1:
            continue
        with on_layer(act):
            res.match(act)
            x = act.inputs[0]
            p = x.producer
            if p is None or is_source(p):
                res.decline(act, f"its input '{x.name}' is a graph input")
                continue
            if p.type not in PRODUCERS:
                res.decline(act, f"its producer '{p.name}' ({p.type}) takes no fused activations")
                continue
            if len(p.outputs) != 1:
                res.decline(act, f"its producer '{p.name}' has {len(p.outputs)} outputs")
                continue
            why = private_output_reason(graph, x, act)
            if why is not None:
                res.decline(act, f"not fused into '{p.name}': {why}")
                continue
            if act.outputs[0].shape != x.shape:
                res.decline(act, f"changes the shape {x.shape} -> {act.outputs[0].shape}")
                continue
            p.post_ops = tuple(p.post_ops) + (PostOp(act.type, act.attrs, act.name),)
            bypass(graph, act, [(act.outputs[0], x)])
            res.change(f"fused {act.type} '{act.name}' into {p.type} '{p.name}'")
    return res
