"""fuse_activation: an element-wise activation right after a channel producer (Convolution,
Deconvolution, DepthwiseConvolution, InnerProduct) becomes a post-op of that layer."""
from __future__ import annotations

from ..ir import Graph, PostOp
from .base import PassResult, bypass, is_source, layer_of, on_layer, private_output_reason


def fuse_activation(graph: Graph) -> PassResult:
    """Rule: ``P -> A`` with A's layer declaring the ``post_op`` trait (an element-wise map
    without weights; one bottom and one top of P's shape) and P's layer the
    ``channel_producer`` trait becomes P with ``PostOp(A)`` appended to ``P.post_ops``; A's
    users read P's output (which keeps A's blob name). The reference interpreter applies
    post-ops after P's kernel; export lowers them as standard ONNX nodes after P's. A type is
    fused on its trait alone, never on its name.

    Declines when P is not a channel producer; when P has several outputs; when P's output
    has other users or is a graph output (the value before the activation must stay
    observable); when A changes the shape."""
    res = PassResult(name="fuse_activation")
    for act in [n for n in graph.nodes if layer_of(n).post_op]:
        if act.weights or len(act.inputs) != 1 or len(act.outputs) != 1:
            continue
        with on_layer(act):
            res.match(act)
            x = act.inputs[0]
            p = x.producer
            if p is None or is_source(p):
                res.decline(act, f"its input '{x.name}' is a graph input")
                continue
            if not layer_of(p).channel_producer:
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
