"""The rest of BVLC Caffe's inference layers: element-wise maths (AbsVal, BNLL, Clip, ELU, Exp,
Log, Power, PReLU, Swish, Threshold), shape and data movement (ArgMax, Crop, Slice, Tile,
Reduction, MVN, SPP, Silence), layers with blobs (Bias, Deconvolution, Embed, Parameter) and
the data layers that become network inputs (DummyData, MemoryData).

Each class states the Caffe rule it implements; the semantics come from BVLC Caffe's
``src/caffe/layers/*_layer.cpp``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from ..errors import LayerContext, ProtonetError
from .affine import Affine
from .base import (CONSTANT_ZERO, Example, Filler, Layer, NoAttrs, Shape, WeightSpec, canonical_axis,
                   enum_name, need_4d, prod, sigmoid)
from .core import ConvAttrs, PoolAttrs, Pooling, broadcast_param, parse_conv, scale_span
from .geometry import Window2D, deconv_output_size
from .lowering import Lowering
from .registry import register

#: the most negative int64, an ONNX Slice ``end`` that runs past the start of an axis
_INT64_MIN = -(2 ** 63)


def _ex(body: str, inputs: tuple[Shape, ...], name: str = "", int_inputs: dict[int, int] | None = None) -> Example:
    """Shorthand for an :class:`Example` (``int_inputs`` as a fresh dict)."""
    return Example(body, inputs, name, dict(int_inputs or {}))


def _scalar(g: Lowering, value: float, hint: str) -> str:
    """A 0-d float constant (a Constant node: the exporter's initializers come out at least 1-D,
    which would turn a scalar result into shape (1,))."""
    return g.op("Constant", [], [g.tmp(hint)], value_float=float(value))


class _Pointwise(Layer):
    """A layer whose single top has the bottom's shape (element-wise maths)."""

    def infer(self, a: Any, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [shapes[0]]


def _legacy4(shape: Shape) -> Shape:
    """Caffe's num/channels/height/width view of a blob of at most 4 axes: missing ones read as 1."""
    return tuple(shape) + (1,) * (4 - len(shape))


# -- AbsVal, BNLL, ELU, Swish, Threshold, Clip -------------------------------------------------

@register
class AbsVal(_Pointwise):
    """y = |x|. Caffe refuses in-place AbsVal (top == bottom), so protonet does too."""

    type_name = "AbsVal"
    post_op = True
    examples = (_ex('layer { name: "a" type: "AbsVal" bottom: "in0" top: "out" }', ((2, 3, 4),)),)

    def parse(self, layer: Any, ctx: LayerContext) -> NoAttrs:
        if any(t in layer.bottom for t in layer.top):
            raise ctx.error("AbsVal does not allow in-place computation (top equals bottom)")
        return NoAttrs()

    def kernel(self, a: NoAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [np.abs(xs[0])]

    def lower(self, a: NoAttrs, g: Lowering) -> None:
        g.op("Abs", g.inputs, g.outputs)


@register
class BNLL(_Pointwise):
    """Binomial normal log likelihood, log(1 + exp(x)), evaluated as Caffe does without overflow:
    x + log(1 + exp(-x)) for x > 0, log(1 + exp(x)) otherwise."""

    type_name = "BNLL"
    post_op = True
    examples = (_ex('layer { name: "b" type: "BNLL" bottom: "in0" top: "out" }', ((2, 3, 4),)),)

    def kernel(self, a: NoAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        return [np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))]

    def lower(self, a: NoAttrs, g: Lowering) -> None:
        x = g.inputs[0]
        tail = g.op("Log", [g.op("Add", [g.op("Exp", [g.op("Neg", [g.op("Abs", [x])])]), _scalar(g, 1.0, "one")])])
        g.op("Add", [g.op("Relu", [x]), tail], g.outputs)


@dataclass(frozen=True)
class AlphaAttrs:
    alpha: float


@register
class ELU(_Pointwise):
    """y = max(x, 0) + alpha * (exp(min(x, 0)) - 1)."""

    type_name = "ELU"
    post_op = True
    examples = (
        _ex('layer { name: "e" type: "ELU" bottom: "in0" top: "out" }', ((2, 3, 4),), "default"),
        _ex('layer { name: "e" type: "ELU" bottom: "in0" top: "out" elu_param { alpha: 0.3 } }', ((2, 5),), "alpha"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> AlphaAttrs:
        return AlphaAttrs(float(layer.elu_param.alpha))

    def kernel(self, a: AlphaAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        return [np.maximum(x, 0) + a.alpha * np.expm1(np.minimum(x, 0))]

    def lower(self, a: AlphaAttrs, g: Lowering) -> None:
        g.op("Elu", g.inputs, g.outputs, alpha=a.alpha)


@dataclass(frozen=True)
class SwishAttrs:
    beta: float


@register
class Swish(_Pointwise):
    """y = x * sigmoid(beta * x)."""

    type_name = "Swish"
    post_op = True
    examples = (
        _ex('layer { name: "s" type: "Swish" bottom: "in0" top: "out" }', ((2, 3, 4),), "default"),
        _ex('layer { name: "s" type: "Swish" bottom: "in0" top: "out" swish_param { beta: 1.7 } }', ((2, 5),), "beta"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> SwishAttrs:
        return SwishAttrs(float(layer.swish_param.beta))

    def kernel(self, a: SwishAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        return [x * sigmoid(a.beta * x)]

    def lower(self, a: SwishAttrs, g: Lowering) -> None:
        x = g.inputs[0]
        arg = x if a.beta == 1.0 else g.op("Mul", [x, _scalar(g, a.beta, "beta")])
        g.op("Mul", [x, g.op("Sigmoid", [arg])], g.outputs)


@dataclass(frozen=True)
class ThresholdAttrs:
    threshold: float


@register
class Threshold(_Pointwise):
    """y = 1 if x > threshold else 0 (strictly greater: x == threshold gives 0)."""

    type_name = "Threshold"
    post_op = True
    examples = (
        _ex('layer { name: "t" type: "Threshold" bottom: "in0" top: "out" }', ((2, 3, 4),), "zero"),
        _ex('layer { name: "t" type: "Threshold" bottom: "in0" top: "out" threshold_param { threshold: 0.4 } }',
            ((2, 5),), "positive"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ThresholdAttrs:
        return ThresholdAttrs(float(layer.threshold_param.threshold))

    def kernel(self, a: ThresholdAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        return [(x > a.threshold).astype(x.dtype)]

    def lower(self, a: ThresholdAttrs, g: Lowering) -> None:
        above = g.op("Greater", [g.inputs[0], _scalar(g, a.threshold, "threshold")])
        g.cast(above, np.float32, g.outputs)


@dataclass(frozen=True)
class ClipAttrs:
    min: float
    max: float


@register
class Clip(_Pointwise):
    """y = std::max(min, std::min(x, max)), in that order: when min > max every output is
    ``min``, and (by the comparisons std::min/max make) a NaN input gives ``min``."""

    type_name = "Clip"
    post_op = True
    examples = (
        _ex('layer { name: "c" type: "Clip" bottom: "in0" top: "out" clip_param { min: -0.5 max: 0.7 } }',
            ((2, 3, 4),), "range"),
        _ex('layer { name: "c" type: "Clip" bottom: "in0" top: "out" clip_param { min: 0.5 max: -0.5 } }',
            ((2, 5),), "inverted"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ClipAttrs:
        p = layer.clip_param
        if not (layer.HasField("clip_param") and p.HasField("min") and p.HasField("max")):
            raise ctx.error("clip_param needs both min and max")
        return ClipAttrs(float(p.min), float(p.max))

    def kernel(self, a: ClipAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        upper = np.where(a.max < x, a.max, x)  # std::min(x, max) keeps x unless max < x
        return [np.where(a.min < upper, upper, a.min).astype(x.dtype, copy=False)]  # std::max(min, .)

    def lower(self, a: ClipAttrs, g: Lowering) -> None:
        # the same two selections (not ONNX Clip): min > max gives min, NaN gives min
        x = g.inputs[0]
        hi, lo = _scalar(g, a.max, "max"), _scalar(g, a.min, "min")
        upper = g.op("Where", [g.op("Less", [hi, x]), hi, x])
        g.op("Where", [g.op("Less", [lo, upper]), upper, lo], g.outputs)


# -- Exp, Log, Power ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ExpLogAttrs:
    base: float  # -1: e
    scale: float
    shift: float

    @property
    def log_base(self) -> float:
        return 1.0 if self.base == -1 else math.log(self.base)


def _parse_base(p: Any, ctx: LayerContext) -> ExpLogAttrs:
    base = float(p.base)
    if base != -1 and not base > 0:
        raise ctx.error(f"base must be strictly positive (or -1 for e), got {base:g}")
    return ExpLogAttrs(base, float(p.scale), float(p.shift))


@register
class Exp(_Pointwise):
    """y = base^(shift + scale * x), base -1 meaning e. Caffe evaluates it as
    exp(ln(base) * scale * x) * base^shift."""

    type_name = "Exp"
    examples = (
        _ex('layer { name: "e" type: "Exp" bottom: "in0" top: "out" }', ((2, 3, 4),), "natural"),
        _ex('layer { name: "e" type: "Exp" bottom: "in0" top: "out" exp_param { base: 2 scale: 0.5 shift: -1 } }',
            ((2, 5),), "base2"),
        _ex('layer { name: "e" type: "Exp" bottom: "in0" top: "out" exp_param { scale: -1.5 shift: 0.5 } }',
            ((3, 4),), "e_scale_shift"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ExpLogAttrs:
        return _parse_base(layer.exp_param, ctx)

    @staticmethod
    def factors(a: ExpLogAttrs) -> tuple[float, float]:
        """(inner, outer): y = outer * exp(inner * x)."""
        inner = a.log_base * a.scale
        if a.shift == 0:
            outer = 1.0
        else:
            with np.errstate(over="ignore"):  # Caffe's pow/exp overflow to inf, they do not fail
                outer = float(np.exp(np.float64(a.shift)) if a.base == -1 else np.power(np.float64(a.base), a.shift))
        return inner, outer

    def kernel(self, a: ExpLogAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        inner, outer = self.factors(a)
        return [outer * np.exp(inner * xs[0])]

    def lower(self, a: ExpLogAttrs, g: Lowering) -> None:
        inner, outer = self.factors(a)
        x = g.inputs[0] if inner == 1.0 else g.op("Mul", [g.inputs[0], _scalar(g, inner, "inner_scale")])
        if outer == 1.0:
            g.op("Exp", [x], g.outputs)
        else:
            g.op("Mul", [g.op("Exp", [x]), _scalar(g, outer, "outer_scale")], g.outputs)


@register
class Log(_Pointwise):
    """y = log_base(shift + scale * x), base -1 meaning e (natural log)."""

    type_name = "Log"
    examples = (
        _ex('layer { name: "l" type: "Log" bottom: "in0" top: "out" log_param { shift: 6 } }',
            ((2, 3, 4),), "natural_shift"),
        _ex('layer { name: "l" type: "Log" bottom: "in0" top: "out" log_param { base: 10 scale: 0.5 shift: 8 } }',
            ((2, 5),), "base10"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ExpLogAttrs:
        a = _parse_base(layer.log_param, ctx)
        if a.log_base == 0:
            raise ctx.error("base 1 has no logarithm (1/log(base) is infinite)")
        return a

    def kernel(self, a: ExpLogAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [np.log(a.shift + a.scale * xs[0]) * (1.0 / a.log_base)]

    def lower(self, a: ExpLogAttrs, g: Lowering) -> None:
        x = g.inputs[0]
        if a.scale != 1.0:
            x = g.op("Mul", [x, _scalar(g, a.scale, "scale")])
        if a.shift != 0.0:
            x = g.op("Add", [x, _scalar(g, a.shift, "shift")])
        if a.log_base == 1.0:
            g.op("Log", [x], g.outputs)
        else:
            g.op("Mul", [g.op("Log", [x]), _scalar(g, 1.0 / a.log_base, "base_scale")], g.outputs)


@dataclass(frozen=True)
class PowerAttrs:
    power: float
    scale: float
    shift: float

    @property
    def constant(self) -> float | None:
        """Caffe's shortcut: when power * scale == 0 the output ignores x: 1 if power == 0,
        else shift^power."""
        if self.power * self.scale != 0:
            return None
        if self.power == 0:
            return 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.power(np.float64(self.shift), self.power))


@register
class Power(_Pointwise):
    """y = (shift + scale * x)^power; when power == 0 or scale == 0 the output is the constant
    1 (power 0) or shift^power, whatever x holds (NaN and inf included)."""

    type_name = "Power"
    examples = (
        _ex('layer { name: "p" type: "Power" bottom: "in0" top: "out" power_param { power: 2 scale: 0.5 shift: 1 } }',
            ((2, 3, 4),), "square"),
        _ex('layer { name: "p" type: "Power" bottom: "in0" top: "out" power_param { power: 0.5 scale: 1 shift: 8 } }',
            ((2, 5),), "sqrt"),
        _ex('layer { name: "p" type: "Power" bottom: "in0" top: "out" power_param { power: 3 scale: 0 shift: 2 } }',
            ((2, 3),), "scale0"),
        _ex('layer { name: "p" type: "Power" bottom: "in0" top: "out" power_param { power: 0 scale: 2 } }',
            ((2, 3),), "power0"),
        _ex('layer { name: "p" type: "Power" bottom: "in0" top: "out" power_param { scale: -2 } }',
            ((3, 2),), "linear"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> PowerAttrs:
        p = layer.power_param
        return PowerAttrs(float(p.power), float(p.scale), float(p.shift))

    def affine(self, a: PowerAttrs, ins: Sequence[Shape], w: dict) -> Affine | str:
        """Power 1: y = shift + scale * x, one scalar map."""
        if a.power != 1.0:
            return f"Power with power {a.power:g} is not affine"
        return Affine(0, np.asarray(a.scale), np.asarray(a.shift))

    def kernel(self, a: PowerAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        c = a.constant
        if c is not None:
            return [np.full(x.shape, c, dtype=x.dtype)]
        y = x * a.scale + a.shift
        return [y if a.power == 1 else np.power(y, a.power)]

    def lower(self, a: PowerAttrs, g: Lowering) -> None:
        c = a.constant
        if c is not None:
            g.op("Expand", [_scalar(g, c, "value"), g.op("Shape", [g.inputs[0]])], g.outputs)
            return
        y = g.inputs[0]
        steps: list[tuple[str, float]] = []
        if a.scale != 1.0:
            steps.append(("Mul", a.scale))
        if a.shift != 0.0:
            steps.append(("Add", a.shift))
        if a.power != 1.0:
            steps.append(("Pow", a.power))
        if not steps:
            g.op("Identity", [y], g.outputs)
            return
        for i, (op, value) in enumerate(steps):
            y = g.op(op, [y, _scalar(g, value, op.lower())], g.outputs if i == len(steps) - 1 else None)


# -- PReLU -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PReLUAttrs:
    channel_shared: bool
    filler: Filler


PRELU_DEFAULT_FILLER = Filler("constant", value=0.25)


@register
class PReLU(_Pointwise):
    """y = max(x, 0) + slope[c] * min(x, 0), c the index along axis 1; ``channel_shared`` uses
    one slope (a 0-axis blob). The slope blob is filled with 0.25 unless a filler is given."""

    type_name = "PReLU"
    examples = (
        _ex('layer { name: "p" type: "PReLU" bottom: "in0" top: "out" }', ((2, 3, 4, 4),), "channels"),
        _ex('layer { name: "p" type: "PReLU" bottom: "in0" top: "out" prelu_param { channel_shared: true } }',
            ((2, 3, 2),), "shared"),
        _ex('layer { name: "p" type: "PReLU" bottom: "in0" top: "out" '
            'prelu_param { filler { type: "constant" value: 0.1 } } }', ((3, 5),), "2d_filler"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> PReLUAttrs:
        p = layer.prelu_param
        filler = Filler.from_proto(p.filler) if p.HasField("filler") else PRELU_DEFAULT_FILLER
        return PReLUAttrs(bool(p.channel_shared), filler)

    def infer(self, a: PReLUAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        if len(shapes[0]) < 2:
            raise ctx.error(f"expects at least 2 axes, got shape {tuple(shapes[0])}")
        return [shapes[0]]

    def weights(self, a: PReLUAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        return [WeightSpec("slope", () if a.channel_shared else (shapes[0][1],), a.filler)]

    def _slope(self, a: PReLUAttrs, slope: np.ndarray, ndim: int) -> np.ndarray:
        if a.channel_shared:
            return slope.reshape(())
        return slope.reshape((-1,) + (1,) * (ndim - 2))

    def kernel(self, a: PReLUAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        return [np.maximum(x, 0) + self._slope(a, w["slope"], x.ndim) * np.minimum(x, 0)]

    def lower(self, a: PReLUAttrs, g: Lowering) -> None:
        slope = self._slope(a, g.weights["slope"], len(g.in_shapes[0]))
        g.op("PRelu", [g.inputs[0], g.weight("slope", slope)], g.outputs)


# -- Bias --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BiasAttrs:
    axis: int
    num_axes: int
    filler: Filler
    two_bottoms: bool


@register
class Bias(Layer):
    """y = x + b, b broadcast over x from ``axis`` on: a learned blob of shape
    x.shape[axis:axis+num_axes] (num_axes -1: to the end; filled with 0 by default), or the
    second bottom, whose shape must equal x.shape[axis:axis+b.ndim] (a 0-axis b is a scalar)."""

    type_name = "Bias"
    num_bottoms = (1, 2)
    examples = (
        _ex('layer { name: "b" type: "Bias" bottom: "in0" top: "out" }', ((2, 3, 4, 4),), "channel"),
        _ex('layer { name: "b" type: "Bias" bottom: "in0" top: "out" bias_param { axis: 0 num_axes: -1 } }',
            ((2, 3),), "all_axes"),
        _ex('layer { name: "b" type: "Bias" bottom: "in0" top: "out" bias_param { num_axes: 0 } }',
            ((2, 3, 2),), "scalar"),
        _ex('layer { name: "b" type: "Bias" bottom: "in0" top: "out" bias_param { axis: -2 num_axes: 2 '
            'filler { type: "uniform" min: -1 max: 1 } } }', ((2, 3, 4),), "negative_axis"),
        _ex('layer { name: "b" type: "Bias" bottom: "in0" bottom: "in1" top: "out" }',
            ((2, 3, 4, 5), (3, 4)), "two_bottoms"),
        _ex('layer { name: "b" type: "Bias" bottom: "in0" bottom: "in1" top: "out" bias_param { axis: 0 } }',
            ((2, 3, 4), (2, 3)), "two_bottoms_axis0"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> BiasAttrs:
        p = layer.bias_param
        if p.num_axes < -1:
            raise ctx.error(f"num_axes must be >= -1 (-1: to the end), got {p.num_axes}")
        return BiasAttrs(int(p.axis), int(p.num_axes), Filler.from_proto(p.filler, default=CONSTANT_ZERO),
                         len(layer.bottom) == 2)

    def resolve(self, a: BiasAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> BiasAttrs:
        """The canonical axis and the explicit number of axes the bias covers."""
        if a.two_bottoms and len(shapes[1]) == 0:
            return replace(a, axis=0, num_axes=0)  # Caffe: a scalar bias applies from axis 0, whatever axis says
        start, end = scale_span(a.axis, a.num_axes, shapes[0], ctx, shapes[1] if a.two_bottoms else None)
        return replace(a, axis=start, num_axes=end - start)

    def infer(self, a: BiasAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [shapes[0]]

    def weights(self, a: BiasAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        if a.two_bottoms:
            return []
        start, end = a.axis, a.axis + a.num_axes
        return [WeightSpec("bias", tuple(shapes[0][start:end]), a.filler, role="bias")]

    def affine(self, a: BiasAttrs, ins: Sequence[Shape], w: dict) -> Affine | str:
        """The learned bias over the axes it covers (scale 1)."""
        if a.two_bottoms:
            return "Bias with a second bottom adds a computed value, not a constant"
        start, end = a.axis, a.axis + a.num_axes
        pshape = tuple(ins[0][start:end])
        return Affine(start, np.ones(pshape), np.asarray(w["bias"], np.float64).reshape(pshape))

    def kernel(self, a: BiasAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        start = a.axis
        b = xs[1] if a.two_bottoms else w["bias"]
        return [x + broadcast_param(b, start, x.ndim)]

    def lower(self, a: BiasAttrs, g: Lowering) -> None:
        s = g.in_shapes[0]
        start, end = a.axis, a.axis + a.num_axes
        if a.two_bottoms:
            b = g.inputs[1]
            if end < len(s):
                b = g.op("Reshape", [b, g.int64s(list(s[start:end]) + [1] * (len(s) - end), "shape")])
        else:
            b = g.weight("bias", broadcast_param(g.weights["bias"], start, len(s)))
        g.op("Add", [g.inputs[0], b], g.outputs)


# -- Deconvolution -----------------------------------------------------------------------------

def deconv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, win: Window2D, group: int) -> np.ndarray:
    """Caffe's deconvolution (the backward pass of convolution): a grouped matrix product gives
    the columns, then col2im adds each kernel offset's plane into a strided slice of the
    uncropped output, which is finally cropped by ``pad`` on each side.
    ``w`` is (C_in, C_out / group, kh, kw)."""
    n, c, h, wd = x.shape
    og = w.shape[1]
    kh, kw = win.kernel
    (sh, sw), (ph, pw), (dh, dw) = win.stride, win.pad, win.dilation
    cg = c // group
    # (group, og*kh*kw, cg) @ (n, group, cg, h*w) -> (n, group, og, kh, kw, h, w)
    wm = w.reshape(group, cg, og * kh * kw).transpose(0, 2, 1)
    cols = np.matmul(wm, x.reshape(n, group, cg, h * wd)).reshape(n, group, og, kh, kw, h, wd)
    full_h = sh * (h - 1) + dh * (kh - 1) + 1
    full_w = sw * (wd - 1) + dw * (kw - 1) + 1
    y = np.zeros((n, group, og, full_h, full_w), dtype=cols.dtype)
    for i in range(kh):  # offset (i, j) lands on rows i*dh + sh*r and cols j*dw + sw*c
        rows = slice(i * dh, i * dh + sh * (h - 1) + 1, sh)
        for j in range(kw):
            y[:, :, :, rows, j * dw: j * dw + sw * (wd - 1) + 1: sw] += cols[:, :, :, i, j]
    ho = deconv_output_size(h, kh, sh, ph, dh)
    wo = deconv_output_size(wd, kw, sw, pw, dw)
    y = y.reshape(n, group * og, full_h, full_w)[:, :, ph:ph + ho, pw:pw + wo]
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y)


@register
class Deconvolution(Layer):
    """Transposed 2-D convolution with a ConvolutionParameter: output size
    stride*(in-1) + dilation*(k-1) + 1 - 2*pad; weight blob (C_in, num_output/group, kh, kw);
    grouped; optional bias (num_output)."""

    type_name = "Deconvolution"
    channel_producer = True
    examples = (
        _ex('layer { name: "d" type: "Deconvolution" bottom: "in0" top: "out" '
            'convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }', ((2, 3, 4, 5),), "basic"),
        _ex('layer { name: "d" type: "Deconvolution" bottom: "in0" top: "out" convolution_param { num_output: 6 '
            'kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 1 group: 2 bias_term: false } }',
            ((1, 4, 3, 4),), "hw_group_nobias"),
        _ex('layer { name: "d" type: "Deconvolution" bottom: "in0" top: "out" convolution_param { num_output: 2 '
            'kernel_size: 3 dilation: 2 stride: 3 pad: 2 } }', ((1, 2, 4, 4),), "dilated"),
        _ex('layer { name: "d" type: "Deconvolution" bottom: "in0" top: "out" convolution_param { num_output: 3 '
            'kernel_size: 4 stride: 2 pad: 1 group: 3 bias_term: false weight_filler { type: "bilinear" } } }',
            ((1, 3, 3, 3),), "bilinear_upsample"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ConvAttrs:
        return parse_conv(layer, ctx)

    def infer(self, a: ConvAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        s = shapes[0]
        need_4d(s, ctx)
        if s[1] % a.group:
            raise ctx.error(f"input channels {s[1]} are not divisible by group {a.group}")
        w = a.window
        ho = deconv_output_size(s[2], w.kernel[0], w.stride[0], w.pad[0], w.dilation[0])
        wo = deconv_output_size(s[3], w.kernel[1], w.stride[1], w.pad[1], w.dilation[1])
        if ho <= 0 or wo <= 0:
            raise ctx.error(f"pad {w.pad} leaves no output for input {tuple(s[2:])} and kernel {w.kernel}")
        return [(s[0], a.num_output, ho, wo)]

    def weights(self, a: ConvAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        c = shapes[0][1]
        specs = [WeightSpec("weight", (c, a.num_output // a.group, *a.window.kernel), a.weight_filler)]
        if a.bias_term:
            specs.append(WeightSpec("bias", (a.num_output,), a.bias_filler, role="bias"))
        return specs

    def cost(self, a: ConvAttrs, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
        return prod(ins[0]) * (a.num_output // a.group) * prod(a.window.kernel)

    def kernel(self, a: ConvAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [deconv2d(xs[0], w["weight"], w.get("bias"), a.window, a.group)]

    def output_channel_axis(self, a: ConvAttrs, out_shape: Shape) -> int:
        return 1

    def scale_output_channels(self, a: ConvAttrs, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
        """The weight is (C_in, C_out/g, kh, kw): output channel gi * C_out/g + j is column j
        of the rows of group gi."""
        g = a.group
        cin, cog = weight.shape[0], weight.shape[1]
        wg = weight.reshape((g, cin // g, cog) + weight.shape[2:])
        return (wg * s.reshape((g, 1, cog) + (1,) * (weight.ndim - 2))).reshape(weight.shape)

    def lower(self, a: ConvAttrs, g: Lowering) -> None:
        win = a.window
        ins = [g.inputs[0], g.weight("weight")] + ([g.weight("bias")] if a.bias_term else [])
        g.op("ConvTranspose", ins, g.outputs, kernel_shape=list(win.kernel), strides=list(win.stride),
             pads=[win.pad[0], win.pad[1], win.pad[0], win.pad[1]], dilations=list(win.dilation), group=a.group)


# -- Embed -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EmbedAttrs:
    num_output: int
    input_dim: int
    bias_term: bool
    weight_filler: Filler
    bias_filler: Filler


@register
class Embed(Layer):
    """A lookup table: y[..., :] = W[int(x[...]), :] (+ b); the bottom holds indices as floats
    in [0, input_dim); W is (input_dim, num_output); the output appends a num_output axis."""

    type_name = "Embed"
    examples = (
        _ex('layer { name: "e" type: "Embed" bottom: "in0" top: "out" embed_param { num_output: 4 input_dim: 7 } }',
            ((2, 3),), "bias", {0: 7}),
        _ex('layer { name: "e" type: "Embed" bottom: "in0" top: "out" '
            'embed_param { num_output: 3 input_dim: 5 bias_term: false } }', ((4,),), "nobias", {0: 5}),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> EmbedAttrs:
        p = layer.embed_param
        if p.num_output <= 0:
            raise ctx.error("num_output must be set to a positive number")
        if p.input_dim <= 0:
            raise ctx.error("input_dim must be set to a positive number")
        return EmbedAttrs(int(p.num_output), int(p.input_dim), bool(p.bias_term),
                          Filler.from_proto(p.weight_filler), Filler.from_proto(p.bias_filler))

    def infer(self, a: EmbedAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [tuple(shapes[0]) + (a.num_output,)]

    def weights(self, a: EmbedAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        specs = [WeightSpec("weight", (a.input_dim, a.num_output), a.weight_filler)]
        if a.bias_term:
            specs.append(WeightSpec("bias", (a.num_output,), a.bias_filler, role="bias"))
        return specs

    def kernel(self, a: EmbedAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        idx = x.astype(np.int64)  # C's static_cast<int>: truncation toward zero
        if idx.size and (idx.min() < 0 or idx.max() >= a.input_dim):
            raise ProtonetError(f"Embed index out of range [0, {a.input_dim}): got values from "
                                f"{int(idx.min())} to {int(idx.max())}")
        y = w["weight"][idx]
        if a.bias_term:
            y = y + w["bias"]
        return [y]

    def sample_input(self, a: EmbedAttrs, i: int, in_shapes: Sequence[Shape], rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, a.input_dim, size=in_shapes[i]).astype(np.float32)

    def lower(self, a: EmbedAttrs, g: Lowering) -> None:
        idx = g.cast(g.inputs[0], np.int64)
        if a.bias_term:
            y = g.op("Gather", [g.weight("weight"), idx], axis=0)
            g.op("Add", [y, g.weight("bias")], g.outputs)
        else:
            g.op("Gather", [g.weight("weight"), idx], g.outputs, axis=0)


# -- Parameter, Silence ------------------------------------------------------------------------

@dataclass(frozen=True)
class ParameterAttrs:
    shape: Shape


@register
class Parameter(Layer):
    """Exposes a learned blob of ``parameter_param.shape`` as its top. It has no bottoms but is
    not a network input: the blob comes from the weights (zeros when none are given)."""

    type_name = "Parameter"
    num_bottoms = (0, 0)
    examples = (
        _ex('layer { name: "p" type: "Parameter" top: "out" parameter_param { shape { dim: 2 dim: 3 } } }', (),
            "matrix"),
        _ex('layer { name: "p" type: "Parameter" top: "out" '
            'parameter_param { shape { dim: 1 dim: 2 dim: 2 dim: 3 } } }', (), "4d"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ParameterAttrs:
        shape = tuple(int(d) for d in layer.parameter_param.shape.dim)
        if any(d <= 0 for d in shape):
            raise ctx.error(f"parameter_param shape {shape} must have positive dimensions")
        return ParameterAttrs(shape)

    def infer(self, a: ParameterAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [a.shape]

    def weights(self, a: ParameterAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        return [WeightSpec("data", a.shape, CONSTANT_ZERO)]

    def kernel(self, a: ParameterAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [w["data"].reshape(a.shape)]

    def lower(self, a: ParameterAttrs, g: Lowering) -> None:
        g.op("Identity", [g.weight("data")], g.outputs)


@register
class Silence(Layer):
    """Consumes its bottoms and produces nothing, so that they do not become net outputs."""

    type_name = "Silence"
    num_bottoms = (1, None)
    sink = True
    examples = (
        # a second layer keeps the example net with an output
        Example('layer { name: "s" type: "Silence" bottom: "in0" bottom: "in1" }\n'
                'layer { name: "r" type: "ReLU" bottom: "in2" top: "out" }', ((2, 3), (4,), (2, 2)), "two_bottoms"),
    )

    def num_tops(self, attrs: NoAttrs, layer: Any) -> int | None:
        return 0

    def infer(self, a: NoAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return []

    def kernel(self, a: NoAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return []

    def lower(self, a: NoAttrs, g: Lowering) -> None:
        return None


# -- ArgMax ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArgMaxAttrs:
    out_max_val: bool
    top_k: int
    axis: int | None


def _caffe_top_k(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k along the last axis in Caffe's order: (value, index) pairs sorted descending, so
    equal values come out highest index first. Returns (indices, values)."""
    d = x.shape[-1]
    rev = x[..., ::-1]
    order = np.argsort(-rev, axis=-1, kind="stable")[..., :k]  # ties: lowest reversed index first
    vals = np.take_along_axis(rev, order, axis=-1)
    return (d - 1 - order), vals


@register
class ArgMax(Layer):
    """Indices (and/or values) of the top_k largest entries. Without ``axis`` each item's
    entries (all axes but 0) are flattened and the top is (N, 1, top_k), or (N, 2, top_k) with
    indices then values when out_max_val, padded with 1s to the input's rank. With ``axis`` the
    top replaces that axis by top_k and holds values if out_max_val, else indices. Ties are
    broken as Caffe's partial_sort over (value, index) pairs with std::greater does: the higher
    index first (ONNX TopK prefers the lower, so the lowering searches the reversed axis)."""

    type_name = "ArgMax"
    examples = (
        _ex('layer { name: "a" type: "ArgMax" bottom: "in0" top: "out" }', ((2, 5),), "flat_2d"),
        _ex('layer { name: "a" type: "ArgMax" bottom: "in0" top: "out" argmax_param { out_max_val: true top_k: 3 } }',
            ((2, 3, 2, 2),), "flat_values_4d"),
        _ex('layer { name: "a" type: "ArgMax" bottom: "in0" top: "out" argmax_param { axis: 1 top_k: 2 } }',
            ((2, 4, 3),), "axis_indices"),
        _ex('layer { name: "a" type: "ArgMax" bottom: "in0" top: "out" '
            'argmax_param { axis: -1 out_max_val: true top_k: 2 } }', ((2, 3, 4),), "axis_values"),
        _ex('layer { name: "a" type: "ArgMax" bottom: "in0" top: "out" argmax_param { axis: 0 } }',
            ((3, 2),), "axis0"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ArgMaxAttrs:
        p = layer.argmax_param
        if p.top_k < 1:
            raise ctx.error(f"top_k must be at least 1, got {p.top_k}")
        return ArgMaxAttrs(bool(p.out_max_val), int(p.top_k), int(p.axis) if p.HasField("axis") else None)

    def resolve(self, a: ArgMaxAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> ArgMaxAttrs:
        """The canonical axis (None: each item flattened)."""
        return a if a.axis is None else replace(a, axis=canonical_axis(a.axis, len(shapes[0]), ctx))

    def infer(self, a: ArgMaxAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        s = tuple(shapes[0])
        if a.axis is not None:
            ax = a.axis
            if a.top_k > s[ax]:
                raise ctx.error(f"top_k {a.top_k} exceeds the size {s[ax]} of axis {ax}")
            return [s[:ax] + (a.top_k,) + s[ax + 1:]]
        if len(s) < 1:
            raise ctx.error("expects an input with at least one axis")
        if a.top_k > prod(s[1:]):
            raise ctx.error(f"top_k {a.top_k} exceeds the {prod(s[1:])} entries per item of input {s}")
        out = [1] * max(len(s), 3)
        out[0], out[1], out[2] = s[0], 2 if a.out_max_val else 1, a.top_k
        return [tuple(out)]

    def kernel(self, a: ArgMaxAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        if a.axis is None:
            idx, vals = _caffe_top_k(x.reshape(x.shape[0], -1), a.top_k)
            y = np.stack([idx.astype(x.dtype), vals], axis=1) if a.out_max_val else idx[:, None, :].astype(x.dtype)
            out = [1] * max(x.ndim, 3)
            out[0], out[1], out[2] = y.shape
            return [y.reshape(out)]
        ax = a.axis
        idx, vals = _caffe_top_k(np.moveaxis(x, ax, -1), a.top_k)
        y = vals if a.out_max_val else idx.astype(x.dtype)
        return [np.moveaxis(y, -1, ax)]

    def lower(self, a: ArgMaxAttrs, g: Lowering) -> None:
        s = g.in_shapes[0]
        x = g.inputs[0]
        if a.axis is None:
            if len(s) != 2:
                x = g.op("Flatten", [x], axis=1)
            ax, d = 1, prod(s[1:])
        else:
            ax = a.axis
            d = s[ax]
        # reversing the axis turns TopK's lowest-index-first tie rule into Caffe's highest-first
        rev = g.op("Slice", [x, g.int64s([-1], "starts"), g.int64s([_INT64_MIN], "ends"), g.int64s([ax], "axes"),
                             g.int64s([-1], "steps")])
        vals, ridx = g.op("TopK", [rev, g.int64s([a.top_k], "k")], n_out=2, axis=ax, largest=1, sorted=1)
        idx = g.op("Sub", [g.int64s([d - 1], "last"), ridx])
        if a.axis is not None:
            if a.out_max_val:
                g.op("Identity", [vals], g.outputs)
            else:
                g.cast(idx, np.float32, g.outputs)
            return
        fidx = g.cast(idx, np.float32)
        flat = g.op("Concat", [fidx, vals], axis=1) if a.out_max_val else fidx
        g.op("Reshape", [flat, g.int64s([0] + list(g.out_shapes[0][1:]), "shape")], g.outputs)


# -- Crop, Slice, Tile -------------------------------------------------------------------------

@dataclass(frozen=True)
class CropAttrs:
    axis: int  # resolved: canonical
    offsets: tuple[int, ...]  # resolved: one per cropped axis (``axis`` to the last)


@register
class Crop(Layer):
    """Crops bottom 0 to the shape of bottom 1 on every axis from ``axis`` (default 2) on, starting
    at ``offset``: none (0), one value for all cropped axes, or one per cropped axis. Axes before
    ``axis`` are kept whole."""

    type_name = "Crop"
    num_bottoms = (2, 2)
    examples = (
        _ex('layer { name: "c" type: "Crop" bottom: "in0" bottom: "in1" top: "out" }',
            ((2, 3, 6, 7), (1, 1, 4, 4)), "default"),
        _ex('layer { name: "c" type: "Crop" bottom: "in0" bottom: "in1" top: "out" crop_param { offset: 1 } }',
            ((2, 3, 6, 7), (5, 5, 4, 4)), "one_offset"),
        _ex('layer { name: "c" type: "Crop" bottom: "in0" bottom: "in1" top: "out" '
            'crop_param { axis: 1 offset: 1 offset: 0 offset: 2 } }', ((2, 4, 5, 6), (2, 2, 3, 3)), "per_axis"),
        _ex('layer { name: "c" type: "Crop" bottom: "in0" bottom: "in1" top: "out" crop_param { axis: -1 offset: 3 } }',
            ((2, 8), (3, 4)), "negative_axis"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> CropAttrs:
        p = layer.crop_param
        return CropAttrs(int(p.axis), tuple(int(o) for o in p.offset))

    def resolve(self, a: CropAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> CropAttrs:
        """The canonical axis and one offset per cropped axis (none given: 0; one: the same for
        every cropped axis), each crop checked to fit."""
        s0, s1 = shapes
        n = len(s0)
        start = canonical_axis(a.axis, n, ctx)
        if len(s1) != n:
            raise ctx.error(f"bottom 1 has {len(s1)} axes, bottom 0 has {n}; they must agree")
        if len(a.offsets) > 1 and len(a.offsets) != n - start:
            raise ctx.error(f"{len(a.offsets)} offsets given; give one, or one per axis from {start} ({n - start})")
        offs = a.offsets if len(a.offsets) > 1 else (a.offsets[0] if a.offsets else 0,) * (n - start)
        for i, off in enumerate(offs, start):
            if s0[i] - off < s1[i]:
                raise ctx.error(f"crop of axis {i} is out of bounds: size {s1[i]} at offset {off} "
                                f"does not fit in {s0[i]}")
        return CropAttrs(start, offs)

    @staticmethod
    def out_shape(a: CropAttrs, s0: Shape, s1: Shape) -> Shape:
        return tuple(s0[:a.axis]) + tuple(s1[a.axis:])

    def infer(self, a: CropAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [self.out_shape(a, shapes[0], shapes[1])]

    def kernel(self, a: CropAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        out = self.out_shape(a, xs[0].shape, xs[1].shape)
        offs = (0,) * a.axis + a.offsets
        return [xs[0][tuple(slice(o, o + d) for o, d in zip(offs, out))]]

    def lower(self, a: CropAttrs, g: Lowering) -> None:
        s0 = g.in_shapes[0]
        out, offs = g.out_shapes[0], (0,) * a.axis + a.offsets
        axes = [i for i in range(len(s0)) if out[i] != s0[i]]
        if not axes:
            g.op("Identity", [g.inputs[0]], g.outputs)
            return
        g.op("Slice", [g.inputs[0], g.int64s([offs[i] for i in axes], "starts"),
                       g.int64s([offs[i] + out[i] for i in axes], "ends"), g.int64s(axes, "axes")], g.outputs)


@dataclass(frozen=True)
class SliceAttrs:
    axis: int  # resolved: canonical
    slice_points: tuple[int, ...]
    tops: int
    legacy_dim: bool  # axis came from slice_dim (not canonicalised: must be in [0, ndim))
    sizes: tuple[int, ...] = ()  # resolved: each top's size along the axis


@register
class Slice(Layer):
    """Splits the bottom along ``axis`` (or the legacy ``slice_dim``) at the ``slice_point``s
    (one fewer than the tops), or into equal parts, one per top, when none are given."""

    type_name = "Slice"
    examples = (
        _ex('layer { name: "s" type: "Slice" bottom: "in0" top: "a" top: "b" top: "c" '
            'slice_param { slice_point: 1 slice_point: 3 } }', ((2, 5, 3),), "points"),
        _ex('layer { name: "s" type: "Slice" bottom: "in0" top: "a" top: "b" }', ((2, 6, 2, 2),), "equal"),
        _ex('layer { name: "s" type: "Slice" bottom: "in0" top: "a" top: "b" slice_param { slice_dim: 0 } }',
            ((4, 3),), "legacy_dim"),
        _ex('layer { name: "s" type: "Slice" bottom: "in0" top: "a" top: "b" '
            'slice_param { axis: -1 slice_point: 3 } }', ((2, 3, 5),), "last_axis"),
        _ex('layer { name: "s" type: "Slice" bottom: "in0" top: "a" }', ((2, 3),), "one_top"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> SliceAttrs:
        p = layer.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise ctx.error("give axis or the legacy slice_dim, not both")
        points = tuple(int(v) for v in p.slice_point)
        if not layer.top:
            raise ctx.error("needs at least one top")
        if points and len(points) != len(layer.top) - 1:
            raise ctx.error(f"{len(points)} slice_point(s) for {len(layer.top)} tops; give one fewer than the tops")
        prev = 0
        for v in points:
            if v <= prev:
                raise ctx.error(f"slice_point values must be positive and increasing, got {list(points)}")
            prev = v
        if p.HasField("slice_dim"):
            return SliceAttrs(int(p.slice_dim), points, len(layer.top), True)
        return SliceAttrs(int(p.axis), points, len(layer.top), False)

    def num_tops(self, attrs: SliceAttrs, layer: Any) -> int | None:
        return attrs.tops

    def resolve(self, a: SliceAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> SliceAttrs:
        """The canonical axis and the size of each top along it."""
        s = shapes[0]
        n = len(s)
        if a.legacy_dim:
            if not 0 <= a.axis < n:
                raise ctx.error(f"slice_dim {a.axis} is out of range for a {n}-D input")
            ax = a.axis
        else:
            ax = canonical_axis(a.axis, n, ctx)
        d = s[ax]
        if a.slice_points:
            if a.slice_points[-1] >= d:
                raise ctx.error(f"slice_point {a.slice_points[-1]} leaves nothing for the last top "
                                f"(axis {ax} has size {d})")
            bounds = (0,) + a.slice_points + (d,)
            sizes = tuple(bounds[i + 1] - bounds[i] for i in range(a.tops))
        elif d % a.tops:
            raise ctx.error(f"{a.tops} tops do not divide axis {ax} of size {d} evenly; give slice_point values")
        else:
            sizes = (d // a.tops,) * a.tops
        return replace(a, axis=ax, sizes=sizes)

    def infer(self, a: SliceAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        s = tuple(shapes[0])
        return [s[:a.axis] + (k,) + s[a.axis + 1:] for k in a.sizes]

    def kernel(self, a: SliceAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return list(np.split(xs[0], np.cumsum(a.sizes)[:-1], axis=a.axis))

    def lower(self, a: SliceAttrs, g: Lowering) -> None:
        if a.tops == 1:
            g.op("Identity", [g.inputs[0]], g.outputs)
            return
        g.op("Split", [g.inputs[0], g.int64s(a.sizes, "split")], g.outputs, axis=a.axis)


@dataclass(frozen=True)
class TileAttrs:
    axis: int
    tiles: int


@register
class Tile(Layer):
    """Repeats the whole block of axes [axis, end) ``tiles`` times along ``axis``
    (abab, not aabb)."""

    type_name = "Tile"
    examples = (
        _ex('layer { name: "t" type: "Tile" bottom: "in0" top: "out" tile_param { tiles: 3 } }',
            ((2, 2, 3),), "channels"),
        _ex('layer { name: "t" type: "Tile" bottom: "in0" top: "out" tile_param { axis: -1 tiles: 2 } }',
            ((2, 3, 2, 2),), "last"),
        _ex('layer { name: "t" type: "Tile" bottom: "in0" top: "out" tile_param { axis: 0 tiles: 2 } }',
            ((2, 3),), "batch"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> TileAttrs:
        p = layer.tile_param
        if not p.HasField("tiles"):
            raise ctx.error("tile_param.tiles must be given")
        if p.tiles <= 0:
            raise ctx.error(f"tiles must be positive, got {p.tiles}")
        return TileAttrs(int(p.axis), int(p.tiles))

    def resolve(self, a: TileAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> TileAttrs:
        return TileAttrs(canonical_axis(a.axis, len(shapes[0]), ctx), a.tiles)

    def infer(self, a: TileAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        s = tuple(shapes[0])
        return [s[:a.axis] + (s[a.axis] * a.tiles,) + s[a.axis + 1:]]

    def _reps(self, a: TileAttrs, ndim: int) -> list[int]:
        reps = [1] * ndim
        reps[a.axis] = a.tiles
        return reps

    def kernel(self, a: TileAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [np.tile(xs[0], self._reps(a, xs[0].ndim))]

    def lower(self, a: TileAttrs, g: Lowering) -> None:
        g.op("Tile", [g.inputs[0], g.int64s(self._reps(a, len(g.in_shapes[0])), "repeats")], g.outputs)


# -- Reduction, MVN ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ReductionAttrs:
    operation: str  # SUM, ASUM, SUMSQ, MEAN
    axis: int
    coeff: float


@register
class Reduction(Layer):
    """Reduces all axes from ``axis`` (default 0) on, so the top has shape x.shape[:axis]
    (a scalar for axis 0): SUM, ASUM (sum of |x|), SUMSQ (sum of x²) or MEAN, times ``coeff``."""

    type_name = "Reduction"
    examples = (
        _ex('layer { name: "r" type: "Reduction" bottom: "in0" top: "out" }', ((2, 3, 4),), "sum_all"),
        _ex('layer { name: "r" type: "Reduction" bottom: "in0" top: "out" '
            'reduction_param { operation: ASUM axis: 1 coeff: 0.5 } }', ((2, 3, 4),), "asum"),
        _ex('layer { name: "r" type: "Reduction" bottom: "in0" top: "out" '
            'reduction_param { operation: SUMSQ axis: -1 } }', ((2, 3, 4),), "sumsq"),
        _ex('layer { name: "r" type: "Reduction" bottom: "in0" top: "out" '
            'reduction_param { operation: MEAN axis: 2 coeff: -2 } }', ((2, 3, 4, 2),), "mean"),
        _ex('layer { name: "r" type: "Reduction" bottom: "in0" top: "out" '
            'reduction_param { operation: SUM axis: 1 coeff: 3 } }', ((3, 4),), "sum_coeff"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ReductionAttrs:
        p = layer.reduction_param
        return ReductionAttrs(enum_name(p, "operation"), int(p.axis), float(p.coeff))

    def resolve(self, a: ReductionAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> ReductionAttrs:
        return replace(a, axis=canonical_axis(a.axis, len(shapes[0]), ctx))

    def infer(self, a: ReductionAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [tuple(shapes[0])[:a.axis]]

    def kernel(self, a: ReductionAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        flat = x.reshape(x.shape[:a.axis] + (-1,))
        if a.operation == "ASUM":
            y = np.abs(flat).sum(axis=-1)
        elif a.operation == "SUMSQ":
            y = (flat * flat).sum(axis=-1)
        elif a.operation == "MEAN":
            y = flat.mean(axis=-1)
        else:
            y = flat.sum(axis=-1)
        return [np.asarray(y * a.coeff if a.coeff != 1 else y)]

    def lower(self, a: ReductionAttrs, g: Lowering) -> None:
        n = len(g.in_shapes[0])
        axes = list(range(a.axis, n))
        last = a.coeff == 1
        outs = g.outputs if last else None
        x = g.inputs[0]
        if a.operation == "SUM":
            y = g.op("ReduceSum", [x, g.int64s(axes, "axes")], outs, keepdims=0)
        else:
            op = {"ASUM": "ReduceL1", "SUMSQ": "ReduceSumSquare", "MEAN": "ReduceMean"}[a.operation]
            y = g.op(op, [x], outs, axes=axes, keepdims=0)
        if not last:
            g.op("Mul", [y, _scalar(g, a.coeff, "coeff")], g.outputs)


@dataclass(frozen=True)
class MVNAttrs:
    normalize_variance: bool
    across_channels: bool
    eps: float


@register
class MVN(Layer):
    """Mean-variance normalisation per item (``across_channels``) or per item and channel:
    y = (x - mean) / (std + eps), eps added to the standard deviation (not to the variance);
    without normalize_variance, y = x - mean. Caffe views the blob through its legacy 4-D
    accessors, so the top is always 4-D (num, channels, height, width): a (N, C) bottom gives
    a (N, C, 1, 1) top."""

    type_name = "MVN"
    examples = (
        _ex('layer { name: "m" type: "MVN" bottom: "in0" top: "out" }', ((2, 3, 4, 5),), "default"),
        _ex('layer { name: "m" type: "MVN" bottom: "in0" top: "out" '
            'mvn_param { across_channels: true eps: 0.01 } }', ((2, 3, 4, 4),), "across"),
        _ex('layer { name: "m" type: "MVN" bottom: "in0" top: "out" mvn_param { normalize_variance: false } }',
            ((2, 3, 3, 2),), "mean_only"),
        _ex('layer { name: "m" type: "MVN" bottom: "in0" top: "out" mvn_param { across_channels: true } }',
            ((3, 6),), "2d"),
        _ex('layer { name: "m" type: "MVN" bottom: "in0" top: "out" }', ((2, 3, 5),), "3d"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> MVNAttrs:
        p = layer.mvn_param
        return MVNAttrs(bool(p.normalize_variance), bool(p.across_channels), float(p.eps))

    def resolve(self, a: MVNAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> MVNAttrs:
        """Caffe's legacy accessors take at most 4 axes."""
        if len(shapes[0]) > 4:
            raise ctx.error(f"uses Caffe's legacy 4-D (num, channels, height, width) accessors; "
                            f"a {len(shapes[0])}-D input {tuple(shapes[0])} is not allowed")
        return a

    def infer(self, a: MVNAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [_legacy4(shapes[0])]

    def _axes(self, a: MVNAttrs) -> tuple[int, ...]:
        return (1, 2, 3) if a.across_channels else (2, 3)

    def kernel(self, a: MVNAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0].reshape(_legacy4(xs[0].shape))
        axes = self._axes(a)
        d = x - x.mean(axis=axes, keepdims=True)
        if not a.normalize_variance:
            return [d]
        std = np.sqrt((d * d).mean(axis=axes, keepdims=True))
        return [d / (std + a.eps)]

    def lower(self, a: MVNAttrs, g: Lowering) -> None:
        x = g.inputs[0]
        if len(g.in_shapes[0]) != 4:
            x = g.op("Reshape", [x, g.int64s([0] + list(g.out_shapes[0][1:]), "shape")])
        axes = list(self._axes(a))
        mean = g.op("ReduceMean", [x], axes=axes, keepdims=1)
        if not a.normalize_variance:
            g.op("Sub", [x, mean], g.outputs)
            return
        d = g.op("Sub", [x, mean])
        std = g.op("Sqrt", [g.op("ReduceMean", [g.op("Mul", [d, d])], axes=axes, keepdims=1)])
        g.op("Div", [d, g.op("Add", [std, _scalar(g, a.eps, "eps")])], g.outputs)


# -- SPP ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SPPAttrs:
    pyramid_height: int
    method: str  # MAX or AVE
    #: resolved: per level, the pooling it runs and that pooling's 4-D output shape
    levels: tuple[tuple[PoolAttrs, Shape], ...] = ()


@register
class SPP(Layer):
    """Spatial pyramid pooling. Level l (0 .. pyramid_height-1) pools with 2^l bins per side:
    kernel = ceil(size / bins), pad = (kernel*bins - size + 1) // 2, stride = kernel, with
    Caffe's Pooling rules (round up, clip, pad < kernel). Each level is flattened to (N, -1) and
    the levels are concatenated; with pyramid_height 1 the single pooling's 4-D top is the top."""

    type_name = "SPP"
    examples = (
        _ex('layer { name: "s" type: "SPP" bottom: "in0" top: "out" spp_param { pyramid_height: 3 } }',
            ((2, 3, 7, 7),), "max3"),
        _ex('layer { name: "s" type: "SPP" bottom: "in0" top: "out" spp_param { pyramid_height: 3 pool: AVE } }',
            ((1, 2, 6, 9),), "ave3"),
        _ex('layer { name: "s" type: "SPP" bottom: "in0" top: "out" spp_param { pyramid_height: 2 pool: AVE } }',
            ((1, 2, 3, 5),), "ave_small"),
        _ex('layer { name: "s" type: "SPP" bottom: "in0" top: "out" spp_param { pyramid_height: 1 } }',
            ((2, 3, 5, 4),), "one_level"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> SPPAttrs:
        p = layer.spp_param
        if not p.HasField("pyramid_height") or p.pyramid_height < 1:
            raise ctx.error("spp_param.pyramid_height must be set to a positive number")
        method = enum_name(p, "pool")
        if method == "STOCHASTIC":
            raise ctx.error("STOCHASTIC pooling is not supported (Caffe itself has no CPU inference for it)")
        return SPPAttrs(int(p.pyramid_height), method)

    @staticmethod
    def level_window(level: int, h: int, w: int) -> Window2D:
        bins = 2 ** level
        kernel, pad = [], []
        for size in (h, w):
            k = -(-size // bins)
            kernel.append(k)
            pad.append((k * bins - size + 1) // 2)
        return Window2D((kernel[0], kernel[1]), (kernel[0], kernel[1]), (pad[0], pad[1]))

    def resolve(self, a: SPPAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> SPPAttrs:
        """Per level: the pooling it runs and that pooling's 4-D output shape."""
        s = tuple(shapes[0])
        need_4d(s, ctx)
        out = []
        for level in range(a.pyramid_height):
            win = self.level_window(level, s[2], s[3])
            if win.pad[0] >= win.kernel[0] or win.pad[1] >= win.kernel[1]:
                raise ctx.error(f"pyramid level {level} ({2 ** level} bins) needs pad {win.pad} >= kernel "
                                f"{win.kernel} for a {s[2]}x{s[3]} input, which Caffe's pooling refuses; "
                                f"lower pyramid_height or use a larger input")
            pa = Pooling().resolve(PoolAttrs(a.method, win, True), [s], ctx)
            out.append((pa, (s[0], s[1]) + pa.out))
        return replace(a, levels=tuple(out))

    def infer(self, a: SPPAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        s = tuple(shapes[0])
        levels = a.levels
        if a.pyramid_height == 1:
            return [levels[0][1]]
        return [(s[0], sum(prod(shape[1:]) for _, shape in levels))]

    def kernel(self, a: SPPAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        pool = Pooling()
        pooled = [pool.kernel(pa, [x], {})[0] for pa, _ in a.levels]
        if a.pyramid_height == 1:
            return pooled
        return [np.concatenate([p.reshape(x.shape[0], -1) for p in pooled], axis=1)]

    def lower(self, a: SPPAttrs, g: Lowering) -> None:
        s = g.in_shapes[0]
        pool = Pooling()
        levels = a.levels
        if a.pyramid_height == 1:
            pool.lower(levels[0][0], g.with_io(g.inputs, g.outputs, [s], [levels[0][1]]))
            return
        flats = []
        for level, (pa, shape) in enumerate(levels):
            out = g.tmp(f"level{level}")
            pool.lower(pa, g.with_io(g.inputs, [out], [s], [shape]))
            flats.append(g.op("Flatten", [out], axis=1))
        g.op("Concat", flats, g.outputs, axis=1)


# -- data layers that become network inputs -----------------------------------------------------

@dataclass(frozen=True)
class DataShapesAttrs:
    shapes: tuple[Shape, ...]


def _per_top(values: Sequence[Any], n: int, what: str, ctx: LayerContext) -> list[Any]:
    """Caffe's 'once, or once per top' rule for a repeated field."""
    if len(values) == 1:
        return list(values) * n
    if len(values) == n:
        return list(values)
    raise ctx.error(f"give {what} once or once per top ({n}); got {len(values)}")


@register
class DummyData(Layer):
    """A data layer whose tops protonet treats as network inputs (Caffe fills them from
    ``data_filler``; protonet lets the caller feed them). Shapes come from ``shape`` (once or
    once per top) or from the legacy num/channels/height/width (each once or once per top)."""

    type_name = "DummyData"
    is_source = True
    num_bottoms = (0, 0)
    examples = ()  # a source layer: its tops are the example net's inputs

    def parse(self, layer: Any, ctx: LayerContext) -> DataShapesAttrs:
        p = layer.dummy_data_param
        n = len(layer.top)
        if n < 1:
            raise ctx.error("needs at least one top")
        if len(p.data_filler) not in (0, 1, n):
            raise ctx.error(f"give data_filler 0 times, once or once per top ({n}); got {len(p.data_filler)}")
        legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
        if any(legacy):
            if len(p.shape):
                raise ctx.error("give shape or the legacy num/channels/height/width, not both")
            cols = [_per_top(v, n, name, ctx) for v, name in zip(legacy, ("num", "channels", "height", "width"))]
            shapes = [tuple(int(c[i]) for c in cols) for i in range(n)]
        else:
            if not len(p.shape):
                raise ctx.error("dummy_data_param needs a shape (or num/channels/height/width)")
            shapes = [tuple(int(d) for d in s.dim) for s in _per_top(list(p.shape), n, "shape", ctx)]
        return DataShapesAttrs(tuple(shapes))

    def num_tops(self, attrs: DataShapesAttrs, layer: Any) -> int | None:
        return None

    def infer(self, a: DataShapesAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return list(a.shapes)

    def kernel(self, a: Any, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        raise RuntimeError("DummyData tops are network inputs: they are fed, not executed")

    def lower(self, a: Any, g: Lowering) -> None:
        return None  # graph inputs are declared by the exporter


@register
class MemoryData(Layer):
    """A data layer fed from memory: top 0 is the data (batch_size, channels, height, width),
    top 1 the labels, (batch_size, 1, 1, 1) as Caffe's forward pass shapes them (its setup says
    (batch_size,)). In Caffe both come from the caller (Reset/AddDatumVector), so both are network
    inputs here. The default load path's deploy step (protonet.frontend.deploy) replaces MemoryData by an
    Input for the data top before build; this class serves nets built as written."""

    type_name = "MemoryData"
    is_source = True
    num_bottoms = (0, 0)
    examples = ()  # a source layer: its tops are the example net's inputs

    def parse(self, layer: Any, ctx: LayerContext) -> DataShapesAttrs:
        p = layer.memory_data_param
        dims = (int(p.batch_size), int(p.channels), int(p.height), int(p.width))
        if min(dims) <= 0:
            raise ctx.error("memory_data_param batch_size, channels, height and width must all be "
                            f"given and positive, got {dims}")
        return DataShapesAttrs((dims, (dims[0], 1, 1, 1)))

    def num_tops(self, attrs: DataShapesAttrs, layer: Any) -> int | None:
        return 2

    def infer(self, a: DataShapesAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return list(a.shapes)

    def kernel(self, a: Any, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        raise RuntimeError("MemoryData tops are network inputs: they are fed, not executed")

    def lower(self, a: Any, g: Lowering) -> None:
        return None  # graph inputs are declared by the exporter
