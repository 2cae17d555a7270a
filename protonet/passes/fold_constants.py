"""fold_constants: a chain of element-wise affine layers with constant parameters becomes one."""
from __future__ import annotations

import dataclasses

from ..ir import Graph, Node
from ..layers.base import CONSTANT_ONE, CONSTANT_ZERO
from ..layers.core import ScaleAttrs
from .affine import Affine, compose, learned_affine, power_affine
from .base import PassResult, on_layer, replace_chain, sole_user

FOLDABLE = ("Scale", "Bias", "Power")


def _affine(node: Node) -> Affine | None:
    if len(node.outputs) != 1 or node.post_ops:
        return None
    return power_affine(node) if node.type == "Power" else learned_affine(node)


def _why_not(node: Node) -> str:
    if node.type == "Power":
        return f"Power with power {getattr(node.attrs, 'power', '?')} is not affine"
    if len(node.inputs) != 1 or getattr(node.attrs, "two_bottoms", False):
        return f"{node.type} with a second bottom multiplies by a computed value, not a constant"
    return f"{node.type} has no learned blob to fold"


def fold_constants(graph: Graph) -> PassResult:
    """Rule: a chain ``L1 -> L2 -> ... -> Lk`` (k >= 2, each output read only by the next
    link and not a graph output) of element-wise affine layers with constant parameters --
    Power with power 1 (``y = shift + scale * x``), single-bottom Scale (learned scale,
    optional bias) and single-bottom Bias (learned bias) -- becomes one layer: a Power when
    every link is a Power, else one Scale with bias over the union of the links' axes
    (e.g. two per-channel Scales -> one per-channel Scale).

    Declines a link (ending the chain before it) when it is a Power with power != 1 or a
    Scale/Bias whose factor is a second bottom, and a chain whose inner output has other
    users or is a graph output."""
    res = PassResult(name="fold_constants")
    for head in [n for n in graph.nodes if n.type in FOLDABLE]:
        if head not in graph.nodes:
            continue
        with on_layer(head):
            if _affine(head) is None:
                res.decline(head, _why_not(head))
                continue
            prev = head.inputs[0].producer
            if prev is not None and prev.type in FOLDABLE and _affine(prev) is not None \
                    and sole_user(graph, head.inputs[0]) is head:
                continue  # not the head of its chain
            chain = [head]
            aff = _affine(head)
            assert aff is not None
            while True:
                out = chain[-1].outputs[0]
                nxt = sole_user(graph, out)
                if nxt is None:
                    if any(u.type in FOLDABLE for u in out.users):
                        for u in out.users:
                            if u.type in FOLDABLE:
                                res.decline(u, f"its input '{out.name}' has other users or is a graph output")
                    break
                if nxt.type not in FOLDABLE:
                    break
                nxt_aff = _affine(nxt)
                if nxt_aff is None:
                    res.decline(nxt, _why_not(nxt))
                    break
                aff = compose(aff, nxt_aff, head.inputs[0].shape)
                chain.append(nxt)
            if len(chain) < 2:
                continue
            for n in chain:
                res.match(n)
            names = " -> ".join(f"'{n.name}'" for n in chain)
            if all(n.type == "Power" for n in chain):
                attrs = dataclasses.replace(chain[-1].attrs, power=1.0, scale=float(aff.scale),
                                            shift=float(aff.shift))
                node = replace_chain(graph, chain, "Power", chain[-1].name, attrs, {})
                res.change(f"{names} became Power '{node.name}' (scale {float(aff.scale):g}, "
                           f"shift {float(aff.shift):g})")
                continue
            ndim = len(head.inputs[0].shape)
            num_axes = aff.scale.ndim
            attrs = ScaleAttrs(aff.start if num_axes else 0, num_axes, True, CONSTANT_ONE, CONSTANT_ZERO, False)
            dtype = next((w.dtype for n in chain for w in n.weights.values()), None)
            weights = {"scale": aff.scale.astype(dtype or "float32"), "bias": aff.shift.astype(dtype or "float32")}
            node = replace_chain(graph, chain, "Scale", chain[-1].name, attrs, weights)
            res.change(f"{names} became one Scale '{node.name}' over axes [{aff.start}, {aff.start + num_axes}) "
                       f"of the {ndim}-D input")
    return res
