"""fold_batchnorm: fold inference-mode BatchNorm (and the per-channel affine after it) into the
weights of the channel producer (Convolution / Deconvolution / InnerProduct ...) of its input."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..ir import Graph, Node
from ..layers.affine import Affine, compose
from ..layers.base import CONSTANT_ONE, CONSTANT_ZERO
from ..layers.core import ScaleAttrs
from .base import (PassResult, affine_of, bypass, is_source, layer_of, on_layer, private_output_reason,
                   replace_chain, sole_user)

#: the axis a BatchNorm normalises (Caffe's channels)
CHANNEL_AXIS = 1


def per_channel(aff: Affine) -> bool:
    """A map on the channel axis alone, or one scalar for every element."""
    return aff.scale.ndim == 0 or (aff.start, aff.end) == (CHANNEL_AXIS, CHANNEL_AXIS + 1)


def _producer_reason(graph: Graph, bn: Node) -> str | None:
    """Why the BatchNorm cannot fold into the producer of its input (None when it can)."""
    x = bn.inputs[0]
    p = x.producer
    if p is None or is_source(p):
        return f"its input '{x.name}' is a graph input"
    layer = layer_of(p)
    if not layer.channel_producer:
        return f"its input comes from '{p.name}' ({p.type}), which has no weights to fold into"
    if len(p.outputs) != 1:
        return f"producer '{p.name}' has {len(p.outputs)} outputs"
    why = layer.fold_reason(p.attrs)
    if why is not None:
        return f"producer '{p.name}' {why}"
    why = private_output_reason(graph, x, bn)
    if why is not None:
        return f"producer '{p.name}' output {why}"
    if p.shares_weights:
        return f"producer '{p.name}' shares its weights (param names {', '.join(n for n in p.param_names if n)})"
    if p.post_ops:
        return f"producer '{p.name}' already applies a fused {p.post_ops[0].type}"
    if len(p.inputs) != 1 or "weight" not in p.weights:
        return f"producer '{p.name}' has no single-input weight layout"
    if layer.output_channel_axis(p.attrs, x.shape) != CHANNEL_AXIS:
        return f"BatchNorm's channel axis {CHANNEL_AXIS} is not the output-channel axis of '{p.name}'"
    return None


def _follower(graph: Graph, bn: Node, res: PassResult) -> tuple[Node | None, Affine | None]:
    """The constant per-channel (or scalar) affine layer that may fold along with the BatchNorm."""
    y = bn.outputs[0]
    nxt = sole_user(graph, y)
    if nxt is None:
        for u in y.users:
            if affine_of(u) is not None:
                res.decline(u, f"BatchNorm '{bn.name}' output '{y.name}' has other users or is a graph output; "
                               f"'{u.name}' stays separate")
        return None, None
    aff = affine_of(nxt)
    if aff is None:
        return None, None
    if isinstance(aff, str):
        res.decline(nxt, aff)
        return None, None
    if not per_channel(aff):
        res.decline(nxt, f"{nxt.type} covers axes {(aff.start, aff.end)}, not the channel axis "
                         f"{(CHANNEL_AXIS, CHANNEL_AXIS + 1)}")
        return None, None
    return nxt, aff


def fold_batchnorm(graph: Graph) -> PassResult:
    """Rule: ``P -> BatchNorm(use_global_stats) [-> A]``, matched by dataflow, with P a
    ``channel_producer`` (Convolution, Deconvolution, DepthwiseConvolution, InnerProduct) whose
    output is read by the BatchNorm alone and A a layer whose ``affine`` trait gives a
    constant map on the channel axis or a scalar (Scale with or without bias, Bias, Power 1),
    becomes P with ``W' = W * s`` per output channel and ``b' = b * s + t``
    (a bias blob is added when P had none), where ``s = gamma / sqrt(var + eps)`` and
    ``t = beta - mean * s``. A BatchNorm (+Scale) with nothing to fold into becomes one Scale
    with bias (a per-channel affine).

    Declines (leaving the graph as it was) when the BatchNorm uses batch statistics; when P's
    output has other users or is a graph output; when P shares weights (``param { name }``)
    or already carries a fused activation; when the BatchNorm's channel axis is not P's
    output-channel axis (an InnerProduct with axis != 1). An affine layer after the BatchNorm
    is left separate (declined) when its factors are not constant (the two-bottom form), when
    it covers other axes than the channel axis, or when the BatchNorm output has other users."""
    res = PassResult(name="fold_batchnorm")
    for bn in [n for n in graph.nodes if layer_of(n).folds_into_producer]:
        if bn not in graph.nodes:
            continue
        with on_layer(bn):
            res.match(bn)
            aff = affine_of(bn)
            if not isinstance(aff, Affine):
                res.decline(bn, aff or f"{bn.type} has no constant affine map")
                continue
            follower, faff = _follower(graph, bn, res)
            if follower is not None:
                aff = compose(aff, faff, bn.inputs[0].shape)
            chain = [bn] + ([follower] if follower is not None else [])
            names = " + ".join(f"'{n.name}'" for n in chain)
            why = _producer_reason(graph, bn)
            if why is None:
                p = bn.inputs[0].producer
                _fold_into(graph, p, chain, aff)
                res.change(f"folded {names} into {p.type} '{p.name}'")
            else:
                res.decline(bn, f"not folded: {why}")
                attrs = ScaleAttrs(1, 1, True, CONSTANT_ONE, CONSTANT_ZERO, False)
                dtype = next(iter(bn.weights.values())).dtype
                weights = {"scale": aff.scale.astype(dtype), "bias": aff.shift.astype(dtype)}
                node = replace_chain(graph, chain, "Scale", chain[-1].name, attrs, weights)
                res.change(f"{names} became one per-channel affine Scale '{node.name}'")
    return res


def _fold_into(graph: Graph, p: Node, chain: list[Node], aff: Affine) -> None:
    s, t = aff.scale.reshape(-1), aff.shift.reshape(-1)
    w = p.weights["weight"]
    new_w = layer_of(p).scale_output_channels(p.attrs, np.asarray(w, np.float64), s).astype(w.dtype)
    if "bias" in p.weights:
        b = np.asarray(p.weights["bias"], np.float64).reshape(-1)
        new_b = (b * s + t).astype(p.weights["bias"].dtype)
    else:
        new_b = t.astype(w.dtype)
    p.weights["weight"] = new_w
    p.weights["bias"] = new_b
    if not p.attrs.bias_term:
        p.attrs = dataclasses.replace(p.attrs, bias_term=True)
    for n in reversed(chain):
        bypass(graph, n)
