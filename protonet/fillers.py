"""Caffe's weight fillers, deterministic per (seed, layer name, blob index)."""
from __future__ import annotations

import zlib

import numpy as np

from .errors import LayerContext
from .layers.base import Filler, Shape, prod


def layer_rng(seed: int, layer: str, blob: int) -> np.random.Generator:
    """An independent stream per layer blob, so adding a layer does not change the others."""
    return np.random.default_rng([seed, zlib.crc32(layer.encode("utf-8")), blob])


def _fans(shape: Shape) -> tuple[int, int]:
    """Caffe: fan_in = count / shape[0]; fan_out = count / shape[1] (count when 1-D)."""
    count = prod(shape)
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _norm(f: Filler, shape: Shape) -> float:
    fan_in, fan_out = _fans(shape)
    if f.variance_norm == "AVERAGE":
        return (fan_in + fan_out) / 2.0
    if f.variance_norm == "FAN_OUT":
        return float(fan_out)
    return float(fan_in)


def fill(f: Filler, shape: Shape, rng: np.random.Generator, ctx: LayerContext) -> np.ndarray:
    """Draw a blob of ``shape`` the way Caffe's filler of this type would (in distribution)."""
    t = f.type
    if t == "constant":
        out = np.full(shape, f.value, dtype=np.float64)
    elif t == "uniform":
        if not (np.isfinite(f.min) and np.isfinite(f.max) and f.min <= f.max):
            raise ctx.error(f"uniform filler needs finite min <= max (Caffe checks it), got min {f.min:g}, "
                            f"max {f.max:g}")
        out = rng.uniform(f.min, f.max, size=shape)
    elif t == "gaussian":
        if not (np.isfinite(f.mean) and np.isfinite(f.std) and f.std > 0):
            raise ctx.error(f"gaussian filler needs a finite mean and a finite std > 0 (Caffe checks it), got "
                            f"mean {f.mean:g}, std {f.std:g}")
        out = rng.standard_normal(size=shape, dtype=np.float32) * np.float32(f.std) + np.float32(f.mean)
        if f.sparse >= 0:
            # Caffe: each weight is kept with probability sparse / num_outputs (num_outputs = shape[0])
            num_outputs = shape[0] if shape else 1
            keep = rng.uniform(size=shape) < (f.sparse / max(num_outputs, 1))
            out = out * keep
    elif t == "xavier":
        scale = np.sqrt(3.0 / _norm(f, shape))
        out = (rng.random(size=shape, dtype=np.float32) * np.float32(2 * scale) - np.float32(scale))
    elif t == "msra":
        out = rng.standard_normal(size=shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / _norm(f, shape)))
    elif t == "positive_unitball":
        out = rng.uniform(0.0, 1.0, size=shape)
        rows = out.reshape(shape[0], -1) if shape else out.reshape(1, -1)
        rows /= rows.sum(axis=1, keepdims=True)
    elif t == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise ctx.error(f"bilinear filler needs a 4-D blob with square kernels, got {shape}")
        k = shape[3]
        fct = np.ceil(k / 2.0)
        c = (2 * fct - 1 - fct % 2) / (2.0 * fct)
        ax = 1 - np.abs(np.arange(k) / fct - c)
        out = np.broadcast_to(np.outer(ax, ax), shape).copy()
    else:
        raise ctx.error(f"unknown filler type '{t}' (constant, uniform, gaussian, xavier, msra, "
                        f"positive_unitball, bilinear)")
    return np.asarray(out, dtype=np.float32)


def random_init(shape: Shape, positive: bool, rng: np.random.Generator) -> np.ndarray:
    """Test initialisation: well-scaled random values (positive for variances)."""
    fan_in = max(_fans(shape)[0], 1)
    x = rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=shape)
    if positive:
        x = np.abs(rng.normal(0.0, 1.0, size=shape)) + 0.5
    return x.astype(np.float32)
