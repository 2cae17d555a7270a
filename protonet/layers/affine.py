"""Element-wise affine maps ``y = x * scale + shift`` with constant factors: what a layer's
``affine`` trait returns (BatchNorm with global statistics, learned Scale / Bias, Power with
power 1), and how two of them compose. The optimizer folds chains of them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Affine:
    """``y = x * scale + shift`` where both broadcast against the input from axis ``start``
    (their shape is the input's shape on axes [start, start + scale.ndim)); a 0-d scale and
    shift apply to every element."""

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


def scale_along(w: np.ndarray, s: np.ndarray, axis: int) -> np.ndarray:
    """``w`` with its slices along ``axis`` multiplied by the vector ``s`` (one factor each)."""
    return w * s.reshape((1,) * axis + (-1,) + (1,) * (w.ndim - axis - 1))
