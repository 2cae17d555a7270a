"""Every numeric tolerance in one place, and the one rule that applies them.

Two blobs agree when, element by element,

    |a - r| <= atol + rtol * |r|,     atol = atol_factor * scale(r)

where ``r`` is the reference, ``a`` the value under test and ``scale(r)`` the root mean square
of the blob's ordinary nonzero reference values. The absolute part follows the blob's units (a
blob times 1000 gets the same verdict) and covers fp32 rounding where an entry cancels to near
zero; the RMS, unlike the maximum, is not set by one large entry, so a confident softmax row does
not hide the error of its small entries, and the per-element ``rtol`` term holds every entry to
its own size. Exact zeros stay out of the scale: the zeros a layer writes by construction (a
ReLU's negative half, an unpooling's empty cells, padding) carry no magnitude, and counting them
would make one element's verdict depend on how many zeros stand beside it (SegNet's train net:
the same element, with the same error, was 0.72 of the tolerance in a BN output, 1.03 after the
ReLU that zeroes half the blob and 2.04 after the Upsample that zeroes three quarters).

Special values are compared exactly and in place: where either side holds a non-finite value
(NaN, +-inf) or a magnitude of at least float32's largest value (Caffe's -FLT_MAX, which MAX
pooling writes for a window that lies wholly past the input), both sides must hold the same
value at the same index (NaN matching NaN). Such entries never enter the scale.

A check reports the worst element (the largest ``|a - r| / (atol + rtol*|r|)``, a ratio of at
most 1 passing) with its index and both values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layers.base import FLT_MAX  # Caffe's -FLT_MAX sentinel, and the edge of what fp32 holds


@dataclass(frozen=True)
class Tolerance:
    """``|a - r| <= atol_factor * rms(r) + rtol * |r|`` element-wise (see the module docstring)."""

    rtol: float
    atol_factor: float


#: verify: onnxruntime (fp32) vs the float64 reference, per blob; also an opset-converted model
#: against the opset-17 one
VERIFY = Tolerance(rtol=1e-4, atol_factor=1e-4)
#: passes: reference(before) vs reference(after), float64
PASS = Tolerance(rtol=1e-5, atol_factor=1e-5)
#: layer tests: ONNX lowering in onnxruntime vs the numpy kernel
LAYER = Tolerance(rtol=1e-4, atol_factor=1e-4)
#: a scale below this is treated as this (an all-zero blob then allows only rounding-level noise)
TINY = 1e-30


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing one blob: the worst element and the verdict."""

    shape: tuple[int, ...]
    max_abs: float  # largest |a - r| over ordinary entries (inf when a special value differs)
    ratio: float  # worst |a - r| / (atol + rtol*|r|); inf when a special value differs
    index: tuple[int, ...] | None  # where the worst element is (None for an empty blob)
    actual: float  # the value under test at ``index``
    reference: float  # the reference value at ``index``
    atol: float  # the absolute part used for this blob
    tolerance: Tolerance

    @property
    def ok(self) -> bool:
        return self.ratio <= 1.0

    def describe(self) -> str:
        """``[i, j, ...] onnx V vs reference R`` for the worst element."""
        if self.index is None:
            return "empty"
        return f"[{', '.join(map(str, self.index))}] got {self.actual:.7g} vs reference {self.reference:.7g}"


def _special(x: np.ndarray) -> np.ndarray:
    return ~np.isfinite(x) | (np.abs(x) >= FLT_MAX)


def _scale(x: np.ndarray) -> float:
    """The root mean square of the ordinary (not special) nonzero entries of ``x``."""
    v = x[~_special(x) & (x != 0)]
    return float(np.sqrt(np.mean(v * v))) if v.size else 0.0


def within(values, reference, like, tol: Tolerance = VERIFY) -> np.ndarray:
    """Element-wise: ``values`` equal ``reference`` under ``tol`` for a blob like ``like`` (the
    module's rule, its absolute part from ``like``'s scale); special values only when equal."""
    a = np.asarray(values, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    atol = tol.atol_factor * max(_scale(np.asarray(like, dtype=np.float64)), TINY)
    with np.errstate(invalid="ignore", over="ignore"):
        special = _special(a) | _special(r)
        return np.where(special, a == r, np.abs(a - r) <= atol + tol.rtol * np.abs(r))


def compare(actual, reference, tol: Tolerance = VERIFY) -> Comparison:
    """Compare ``actual`` against ``reference`` element-wise (module docstring)."""
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        raise ValueError(f"shape {a.shape} vs {r.shape}")
    shape = tuple(r.shape)
    if r.size == 0:
        return Comparison(shape, 0.0, 0.0, None, 0.0, 0.0, 0.0, tol)
    with np.errstate(invalid="ignore", over="ignore"):
        return _compare(a, r, tol)


def _compare(a: np.ndarray, r: np.ndarray, tol: Tolerance) -> Comparison:
    shape = tuple(r.shape)
    special = _special(a) | _special(r)
    # special values must agree exactly as float32 values (NaN with NaN)
    a32, r32 = a.astype(np.float32), r.astype(np.float32)
    same = (a32 == r32) | (np.isnan(a32) & np.isnan(r32))
    bad_special = special & ~same
    ordinary = ~special
    atol = tol.atol_factor * max(_scale(r), TINY)
    if bad_special.any():
        flat = int(np.flatnonzero(bad_special)[0])
        idx = tuple(int(i) for i in np.unravel_index(flat, shape))
        return Comparison(shape, float("inf"), float("inf"), idx, float(a.flat[flat]), float(r.flat[flat]),
                          atol, tol)
    diff = np.where(ordinary, np.abs(a - r), 0.0)
    ratio = diff / (atol + tol.rtol * np.abs(np.where(ordinary, r, 0.0)))
    flat = int(np.argmax(ratio))
    idx = tuple(int(i) for i in np.unravel_index(flat, shape))
    return Comparison(shape, float(diff.max()), float(ratio.flat[flat]), idx, float(a.flat[flat]),
                      float(r.flat[flat]), atol, tol)
