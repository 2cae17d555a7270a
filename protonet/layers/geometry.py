"""Window arithmetic shared by convolution-like and pooling layers (Caffe's rules)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import LayerContext


@dataclass(frozen=True)
class Window2D:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)


def _pick(ctx: LayerContext, p: Any, name: str, repeated: bool, default: int | None) -> tuple[int, int]:
    """Read ``name`` either as ``name_h``/``name_w`` or as ``name`` (repeated or scalar)."""
    base = "kernel" if name == "kernel_size" else name
    has_h, has_w = p.HasField(f"{base}_h"), p.HasField(f"{base}_w")
    if has_h or has_w:
        if not (has_h and has_w):
            raise ctx.error(f"{base}_h and {base}_w must be given together")
        if repeated and len(getattr(p, name)) or (not repeated and p.HasField(name)):
            raise ctx.error(f"give either {name} or {base}_h/{base}_w, not both")
        return int(getattr(p, f"{base}_h")), int(getattr(p, f"{base}_w"))
    if repeated:
        vals = list(getattr(p, name))
        if len(vals) == 0:
            if default is None:
                raise ctx.error(f"{name} missing; set {name} or {base}_h/{base}_w")
            return default, default
        if len(vals) == 1:
            return int(vals[0]), int(vals[0])
        if len(vals) == 2:
            return int(vals[0]), int(vals[1])
        raise ctx.error(f"{name} has {len(vals)} values; only 2-D windows are supported")
    if p.HasField(name):
        v = int(getattr(p, name))
        return v, v
    if default is None:
        raise ctx.error(f"{name} missing; set {name} or {base}_h/{base}_w")
    return default, default


def conv_window(p: Any, ctx: LayerContext) -> Window2D:
    """Kernel/stride/pad/dilation of a ConvolutionParameter (repeated or _h/_w forms)."""
    kernel = _pick(ctx, p, "kernel_size", True, None)
    stride = _pick(ctx, p, "stride", True, 1)
    pad = _pick(ctx, p, "pad", True, 0)
    dil = list(p.dilation)
    if len(dil) > 2:
        raise ctx.error(f"dilation has {len(dil)} values; only 2-D windows are supported")
    dilation = (1, 1) if not dil else (int(dil[0]), int(dil[-1]))
    w = Window2D(kernel, stride, pad, dilation)
    check_window(w, ctx)
    return w


def pool_window(p: Any, ctx: LayerContext) -> Window2D:
    """Kernel/stride/pad of a PoolingParameter (scalar or _h/_w forms)."""
    kernel = _pick(ctx, p, "kernel_size", False, None)
    stride = _pick(ctx, p, "stride", False, 1)
    pad = _pick(ctx, p, "pad", False, 0)
    w = Window2D(kernel, stride, pad)
    check_window(w, ctx)
    return w


def check_window(w: Window2D, ctx: LayerContext) -> None:
    if min(w.kernel) <= 0:
        raise ctx.error(f"kernel size must be positive, got {w.kernel}")
    if min(w.stride) <= 0:
        raise ctx.error(f"stride must be positive, got {w.stride}")
    if min(w.pad) < 0:
        raise ctx.error(f"pad must be non-negative, got {w.pad}")
    if min(w.dilation) <= 0:
        raise ctx.error(f"dilation must be positive, got {w.dilation}")


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Caffe convolution: floor((size + 2*pad - extent) / stride) + 1, extent = dilation*(kernel-1)+1."""
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


def deconv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Caffe deconvolution (no output padding): stride*(size-1) + extent - 2*pad."""
    extent = dilation * (kernel - 1) + 1
    return stride * (size - 1) + extent - 2 * pad


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool = True,
                     clip: bool | None = None) -> int:
    """Caffe pooling: round up (CEIL, the default) or down, then, when the layer pads (on either
    axis: ``clip``, default ``pad > 0``), drop the last window if it would start at or beyond
    ``size + pad`` (in the padding).
    """
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if (pad > 0 if clip is None else clip) and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool_nonempty(size: int, out: int, stride: int, pad: int) -> int:
    """How many of ``out`` windows start inside the input (the rest hold no input value: Caffe
    keeps them only without padding, when the stride exceeds the kernel)."""
    return min(out, (size + pad - 1) // stride + 1)
