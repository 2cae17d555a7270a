"""fold_batchnorm: fold inference-mode BatchNorm (and the Scale or Bias after it) into the
weights of the Convolution / Deconvolution / InnerProduct that produces its input."""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ..ir import Graph, Node
from ..layers.base import CONSTANT_ONE, CONSTANT_ZERO
from ..layers.core import ScaleAttrs
from .affine import Affine, batchnorm_affine, compose, learned_affine, span_of
from .base import PassResult, bypass, is_source, on_layer, private_output_reason, replace_chain, sole_user


def _scale_rows(w: np.ndarray, s: np.ndarray, node: Node) -> np.ndarray:
    """Convolution (O, C/g, kh, kw) and InnerProduct (N, K): output channels on axis 0;
    InnerProduct with transpose (K, N): on axis 1."""
    if node.type == "InnerProduct" and getattr(node.attrs, "transpose", False):
        return w * s.reshape(1, -1)
    return w * s.reshape((-1,) + (1,) * (w.ndim - 1))


def _scale_deconv(w: np.ndarray, s: np.ndarray, node: Node) -> np.ndarray:
    """Deconvolution (C_in, C_out/g, kh, kw): output channel g_i * C_out/g + j lives at
    column j of the rows of group g_i."""
    g = int(getattr(node.attrs, "group", 1))
    cin, cog = w.shape[0], w.shape[1]
    wg = w.reshape((g, cin // g, cog) + w.shape[2:])
    return (wg * s.reshape((g, 1, cog) + (1,) * (w.ndim - 2))).reshape(w.shape)


#: producer type -> how to scale its weight per output channel
PRODUCERS: dict[str, Callable[[np.ndarray, np.ndarray, Node], np.ndarray]] = {
    "Convolution": _scale_rows,
    "InnerProduct": _scale_rows,
    "Deconvolution": _scale_deconv,
    "DepthwiseConvolution": _scale_rows,
}


def _producer_reason(graph: Graph, bn: Node) -> str | None:
    """Why the BatchNorm cannot fold into the producer of its input (None when it can)."""
    x = bn.inputs[0]
    p = x.producer
    if p is None or is_source(p):
        return f"its input '{x.name}' is a graph input"
    if p.type not in PRODUCERS:
        return f"its input comes from '{p.name}' ({p.type}), which has no weights to fold into"
    if len(p.outputs) != 1:
        return f"producer '{p.name}' has {len(p.outputs)} outputs"
    why = private_output_reason(graph, x, bn)
    if why is not None:
        return f"producer '{p.name}' output {why}"
    if p.shares_weights:
        return f"producer '{p.name}' shares its weights (param names {', '.join(n for n in p.param_names if n)})"
    if p.post_ops:
        return f"producer '{p.name}' already applies a fused {p.post_ops[0].type}"
    if len(p.inputs) != 1 or "weight" not in p.weights:
        return f"producer '{p.name}' has no single-input weight layout"
    if x.shape[1] != p.outputs[0].shape[1] or (p.type == "InnerProduct" and len(x.shape) != 2):
        return f"BatchNorm's channel axis 1 is not the output-channel axis of '{p.name}'"
    return None


def _follower(graph: Graph, bn: Node, res: PassResult) -> tuple[Node | None, Affine | None]:
    """The Scale or Bias that may fold along with the BatchNorm, as an affine map on axis 1."""
    y = bn.outputs[0]
    nxt = sole_user(graph, y)
    if nxt is None:
        users = [u for u in y.users if u.type in ("Scale", "Bias")]
        for u in users:
            res.decline(u, f"BatchNorm '{bn.name}' output '{y.name}' has other users or is a graph output; "
                           f"'{u.name}' stays separate")
        return None, None
    if nxt.type not in ("Scale", "Bias"):
        return None, None
    if len(nxt.inputs) != 1 or getattr(nxt.attrs, "two_bottoms", False):
        res.decline(nxt, f"{nxt.type} takes its factors from a second bottom, not learned blobs")
        return None, None
    if nxt.shares_weights:
        pass  # reading a shared blob is fine: the other users keep their own copy
    span = span_of(nxt)
    if span != (1, 2):
        res.decline(nxt, f"{nxt.type} covers axes {span} (axis {nxt.attrs.axis}, num_axes {nxt.attrs.num_axes}), "
                         f"not the channel axis (1, 2)")
        return None, None
    aff = learned_affine(nxt)
    if aff is None:
        res.decline(nxt, f"{nxt.type} has no learned blob to fold")
        return None, None
    return nxt, aff


def fold_batchnorm(graph: Graph) -> PassResult:
    """Rule: ``P -> BatchNorm(use_global_stats) [-> Scale (bias or not) | -> Bias]``, matched by
    dataflow, with P a Convolution, Deconvolution, DepthwiseConvolution or InnerProduct whose output is read by the
    BatchNorm alone, becomes P with ``W' = W * s`` per output channel and ``b' = b * s + t``
    (a bias blob is added when P had none), where ``s = gamma / sqrt(var + eps)`` and
    ``t = beta - mean * s``. A BatchNorm (+Scale) with nothing to fold into becomes one Scale
    with bias (a per-channel affine).

    Declines (leaving the graph as it was) when the BatchNorm uses batch statistics; when P's
    output has other users or is a graph output; when P shares weights (``param { name }``)
    or already carries a fused activation; when the BatchNorm's channel axis is not P's
    output-channel axis (an InnerProduct with axis != 1). A Scale/Bias after the BatchNorm is
    left separate (declined) when it is the two-bottom form or its axis/num_axes are not the
    channel axis alone, or when the BatchNorm output has other users."""
    res = PassResult(name="fold_batchnorm")
    for bn in [n for n in graph.nodes if n.type == "BatchNorm"]:
        if bn not in graph.nodes:
            continue
        with on_layer(bn):
            res.match(bn)
            if not bn.attrs.use_global_stats:
                res.decline(bn, "uses batch statistics (use_global_stats: false), which depend on the input")
                continue
            follower, faff = _follower(graph, bn, res)
            aff = batchnorm_affine(bn)
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
                dtype = bn.weights["mean"].dtype
                weights = {"scale": aff.scale.astype(dtype), "bias": aff.shift.astype(dtype)}
                node = replace_chain(graph, chain, "Scale", chain[-1].name, attrs, weights)
                res.change(f"{names} became one per-channel affine Scale '{node.name}'")
    return res


def _fold_into(graph: Graph, p: Node, chain: list[Node], aff: Affine) -> None:
    s, t = aff.scale.reshape(-1), aff.shift.reshape(-1)
    w = p.weights["weight"]
    new_w = PRODUCERS[p.type](np.asarray(w, np.float64), s, p).astype(w.dtype)
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
