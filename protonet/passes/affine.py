"""Per-channel and element-wise affine maps ``y = x * a + b`` read off the layers that are one
(BatchNorm with global statistics, learned Scale / Bias, Power with power 1), shared by
fold_batchnorm and fold_constants."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Node
from ..layers.core import BatchNorm, scale_span


@dataclass(frozen=True)
class Affine:
    """``y = x * scale + shift`` where both broadcast against the input from axis ``start``
    (their shape is the input's shape on axes [start, start + scale.ndim))."""

    start: int
    scale: np.ndarray
    shift: np.ndarray

    @property
    def end(self) -> int:
        return self.start + self.scale.ndim

    def full(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """Scale and shift reshaped to broadcast against an ``ndim``-D input."""
        pad = (1,) * self.start
        tail = (1,) * (ndim - self.end)
        return self.scale.reshape(pad + self.scale.shape + tail), self.shift.reshape(pad + self.shift.shape + tail)


def batchnorm_affine(node: Node) -> Affine:
    """BatchNorm with global stats: a = 1/sqrt(var + eps), b = -mean * a, on axis 1."""
    mean, var = BatchNorm.stats(node.weights)
    a = 1.0 / np.sqrt(np.asarray(var, np.float64) + node.attrs.eps)
    return Affine(1, a, -np.asarray(mean, np.float64) * a)


def span_of(node: Node) -> tuple[int, int] | None:
    """[start, end) of the axes a single-bottom Scale/Bias blob covers; None for the
    two-bottom form or attrs this pass does not know."""
    a = node.attrs
    if len(node.inputs) != 1 or getattr(a, "two_bottoms", False):
        return None
    if not hasattr(a, "axis") or not hasattr(a, "num_axes"):
        return None
    return scale_span(int(a.axis), int(a.num_axes), node.inputs[0].shape, None)


def learned_affine(node: Node) -> Affine | None:
    """A single-bottom Scale (scale blob, optional bias) or Bias (bias blob) as an Affine."""
    span = span_of(node)
    if span is None:
        return None
    start, end = span
    pshape = tuple(node.inputs[0].shape[start:end])
    w = node.weights
    if node.type == "Scale":
        if "scale" not in w:
            return None
        scale = np.asarray(w["scale"], np.float64).reshape(pshape)
        shift = np.asarray(w["bias"], np.float64).reshape(pshape) if "bias" in w else np.zeros(pshape)
        return Affine(start, scale, shift)
    if node.type == "Bias":
        if "bias" not in w:
            return None
        return Affine(start, np.ones(pshape), np.asarray(w["bias"], np.float64).reshape(pshape))
    return None


def power_affine(node: Node) -> Affine | None:
    """Power with power 1: y = shift + scale * x (a scalar affine map)."""
    a = node.attrs
    if node.type != "Power" or not all(hasattr(a, f) for f in ("power", "scale", "shift")):
        return None
    if float(a.power) != 1.0:
        return None
    return Affine(0, np.asarray(float(a.scale)), np.asarray(float(a.shift)))


def compose(first: Affine, second: Affine, shape: tuple[int, ...]) -> Affine:
    """``second(first(x))`` as one Affine over the union of the two spans (scalars span nothing)."""
    spans = [(f.start, f.end) for f in (first, second) if f.scale.ndim]
    nd = len(shape)
    a1, b1 = first.full(nd)
    a2, b2 = second.full(nd)
    a, b = a1 * a2, b1 * a2 + b2
    if not spans:
        return Affine(0, a.reshape(()), b.reshape(()))
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    pshape = tuple(shape[start:end])
    full = (1,) * start + pshape + (1,) * (nd - end)
    return Affine(start, np.broadcast_to(a, full).reshape(pshape).copy(),
                  np.broadcast_to(b, full).reshape(pshape).copy())
