"""fold_constants: a chain of element-wise affine layers with constant parameters becomes one."""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from ..layers.affine import Affine, compose
from ..layers.base import CONSTANT_ONE, CONSTANT_ZERO
from ..layers.bvlc import PowerAttrs
from ..layers.core import ScaleAttrs
from .base import PassResult, affine_of, on_layer, replace_chain, sole_user


def _affine(node: Node) -> Affine | None:
    aff = affine_of(node)
    return aff if isinstance(aff, Affine) else None


def _candidate(node: Node) -> bool:
    """A node of an affine kind (whether or not this one has constant factors)."""
    return affine_of(node) is not None


def _params(node: Node) -> int:
    return sum(int(w.size) for w in node.weights.values())


def _folded_params(aff: Affine) -> int:
    """Learned values of the folded layer: none for a Power (a scalar map), else the scale and
    (when not all zero) the bias of one Scale."""
    if aff.scale.ndim == 0:
        return 0
    return int(aff.scale.size) + (int(aff.shift.size) if np.any(aff.shift) else 0)


def fold_constants(graph: Graph) -> PassResult:
    """Rule: a chain ``L1 -> L2 -> ... -> Lk`` (k >= 2, each output read only by the next
    link and not a graph output) of layers whose ``affine`` trait gives a constant map --
    Power with power 1 (``y = shift + scale * x``), single-bottom Scale (learned scale,
    optional bias), single-bottom Bias (learned bias), BatchNorm with global statistics --
    becomes one layer: a Power when the composed map is one scalar (e.g. a chain of Powers),
    else one Scale with bias over the union of the links' axes (e.g. two per-channel Scales
    -> one per-channel Scale).

    Declines a link (ending the chain before it) whose layer is of an affine kind but not
    constant here (the reason comes from the layer: a Power with power != 1, a Scale/Bias
    whose factor is a second bottom, a BatchNorm with batch statistics) or that would give the
    folded layer more learned values than the links hold together (a per-channel Scale then a
    spatial Bias would become one C·H·W Scale), and a chain whose inner output has other users
    or is a graph output. A folded Scale has a bias only when some shift is non-zero."""
    res = PassResult(name="fold_constants")
    for head in [n for n in graph.nodes if _candidate(n)]:
        if head not in graph.nodes:
            continue
        with on_layer(head):
            why = affine_of(head)
            if isinstance(why, str):
                res.decline(head, why)
                continue
            prev = head.inputs[0].producer
            if prev is not None and _affine(prev) is not None \
                    and sole_user(graph, head.inputs[0]) is head:
                continue  # not the head of its chain
            chain = [head]
            aff = _affine(head)
            assert aff is not None
            while True:
                out = chain[-1].outputs[0]
                nxt = sole_user(graph, out)
                if nxt is None:
                    for u in out.users:
                        if _candidate(u):
                            res.decline(u, f"its input '{out.name}' has other users or is a graph output")
                    break
                nxt_aff = affine_of(nxt)
                if nxt_aff is None:
                    break
                if isinstance(nxt_aff, str):
                    res.decline(nxt, nxt_aff)
                    break
                composed = compose(aff, nxt_aff, head.inputs[0].shape)
                before, after = sum(_params(n) for n in chain) + _params(nxt), _folded_params(composed)
                if after > before:
                    res.decline(nxt, f"folding it into '{chain[-1].name}' would grow the parameters from "
                                     f"{before:,} to {after:,}")
                    break
                aff = composed
                chain.append(nxt)
            if len(chain) < 2:
                continue
            for n in chain:
                res.match(n)
            names = " -> ".join(f"'{n.name}'" for n in chain)
            if aff.scale.ndim == 0:
                attrs = PowerAttrs(1.0, float(aff.scale), float(aff.shift))
                node = replace_chain(graph, chain, "Power", chain[-1].name, attrs, {})
                res.change(f"{names} became Power '{node.name}' (scale {float(aff.scale):g}, "
                           f"shift {float(aff.shift):g})")
                continue
            ndim = len(head.inputs[0].shape)
            num_axes = aff.scale.ndim
            with_bias = bool(np.any(aff.shift))
            attrs = ScaleAttrs(aff.start if num_axes else 0, num_axes, with_bias, CONSTANT_ONE, CONSTANT_ZERO, False)
            dtype = next((w.dtype for n in chain for w in n.weights.values()), None)
            weights = {"scale": aff.scale.astype(dtype or "float32")}
            if with_bias:
                weights["bias"] = aff.shift.astype(dtype or "float32")
            node = replace_chain(graph, chain, "Scale", chain[-1].name, attrs, weights)
            res.change(f"{names} became one Scale '{node.name}' over axes [{aff.start}, {aff.start + num_axes}) "
                       f"of the {ndim}-D input")
    return res
