"""The core Caffe layer set: Input, Convolution, InnerProduct, Pooling, LRN, activations,
Concat, Eltwise, Softmax, Dropout, BatchNorm, Scale, Split, Flatten, Reshape."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..errors import LayerContext
from ..limits import check_blob
from .affine import Affine, scale_along
from .base import (CONSTANT_ONE, CONSTANT_ZERO, FLT_MAX, Close, Example, Filler, Layer, Shape, WeightSpec,
                   canonical_axis, enum_name, need_4d, prod, sigmoid)
from .geometry import Window2D, conv_output_size, conv_window, pool_nonempty, pool_output_size, pool_window
from .lowering import Lowering
from .registry import register


def _windows(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int],
             out: tuple[int, int]) -> np.ndarray:
    """A strided view (N, C, kh, kw, Ho, Wo) of the sliding windows of an NCHW array."""
    n, c = x.shape[:2]
    sn, sc, sh, sw = x.strides
    return as_strided(x, shape=(n, c, k[0], k[1], out[0], out[1]),
                      strides=(sn, sc, sh * d[0], sw * d[1], sh * s[0], sw * s[1]), writeable=False)


# -- Input -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputAttrs:
    shapes: tuple[Shape, ...]


@register
class Input(Layer):
    """Network input: one shape per top, or one shape shared by every top."""

    type_name = "Input"
    is_source = True
    num_bottoms = (0, 0)
    examples = ()  # every example net starts with Input layers

    def parse(self, layer: Any, ctx: LayerContext) -> InputAttrs:
        shapes = tuple(tuple(int(d) for d in s.dim) for s in layer.input_param.shape)
        n = len(layer.top)
        if len(shapes) not in (0, 1, n):
            raise ctx.error(f"{len(shapes)} input_param shapes for {n} tops; give one per top or one for all")
        if len(shapes) == 1 and n > 1:
            shapes = shapes * n
        return InputAttrs(shapes)

    def num_tops(self, attrs: InputAttrs, layer: Any) -> int | None:
        return None

    def infer(self, attrs: InputAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return list(attrs.shapes) if attrs.shapes else [()]

    def kernel(self, attrs: Any, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        raise RuntimeError("Input layers are fed, not executed")

    def lower(self, attrs: Any, g: Lowering) -> None:
        return None  # graph inputs are declared by the exporter


# -- Convolution -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvAttrs:
    num_output: int
    window: Window2D
    group: int
    bias_term: bool
    weight_filler: Filler
    bias_filler: Filler


def parse_conv(layer: Any, ctx: LayerContext) -> ConvAttrs:
    p = layer.convolution_param
    if not p.HasField("num_output") or p.num_output <= 0:
        raise ctx.error("num_output must be set to a positive number")
    if p.group <= 0:
        raise ctx.error(f"group must be positive, got {p.group}")
    if p.num_output % p.group:
        raise ctx.error(f"num_output {p.num_output} is not divisible by group {p.group}")
    if p.axis != 1:
        raise ctx.error(f"axis {p.axis} is not supported (channels must be axis 1)")
    return ConvAttrs(int(p.num_output), conv_window(p, ctx), int(p.group), bool(p.bias_term),
                     Filler.from_proto(p.weight_filler), Filler.from_proto(p.bias_filler))


#: the most bytes of im2col windows that conv2d copies at once (it runs a band of output rows at a time)
IM2COL_BYTES = 64 << 20


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, win: Window2D, group: int) -> np.ndarray:
    """Caffe convolution as a grouped matrix product over im2col windows, per image and per band
    of output rows (the windows' copy stays under IM2COL_BYTES)."""
    n, c, h, wd = x.shape
    o = w.shape[0]
    kh, kw = win.kernel
    (sh, _), (dh, _) = win.stride, win.dilation
    ho = conv_output_size(h, kh, win.stride[0], win.pad[0], win.dilation[0])
    wo = conv_output_size(wd, kw, win.stride[1], win.pad[1], win.dilation[1])
    ph, pw = win.pad
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    wm = w.reshape(group, o // group, -1)
    y = np.empty((n, o, ho * wo), dtype=np.result_type(x, w))
    band = max(1, IM2COL_BYTES // max(1, c * kh * kw * wo * y.itemsize))
    for i in range(n):
        for r0 in range(0, ho, band):
            r1 = min(ho, r0 + band)
            rows = xp[i:i + 1, :, r0 * sh:(r1 - 1) * sh + dh * (kh - 1) + 1]
            cols = _windows(rows, win.kernel, win.stride, win.dilation, (r1 - r0, wo))
            cols = cols.reshape(group, (c // group) * kh * kw, (r1 - r0) * wo)
            y[i, :, r0 * wo:r1 * wo] = np.matmul(wm, cols).reshape(o, (r1 - r0) * wo)
    y = y.reshape(n, o, ho, wo)
    if b is not None:
        y += b.reshape(1, o, 1, 1)
    return y


@register
class Convolution(Layer):
    """2-D convolution, Caffe's output size floor((H + 2p - d(k-1) - 1)/s) + 1, grouped."""

    type_name = "Convolution"
    channel_producer = True
    examples = (
        Example('layer { name: "c" type: "Convolution" bottom: "in0" top: "out" '
                'convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }', ((2, 3, 9, 8),), "basic"),
        Example('layer { name: "c" type: "Convolution" bottom: "in0" top: "out" convolution_param { num_output: 6 '
                'kernel_h: 3 kernel_w: 1 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0 group: 3 bias_term: false } }',
                ((1, 6, 7, 7),), "hw_group_nobias"),
        Example('layer { name: "c" type: "Convolution" bottom: "in0" top: "out" convolution_param { num_output: 4 '
                'kernel_size: 3 dilation: 2 pad: 2 } }', ((1, 2, 9, 9),), "dilated"),
        Example('layer { name: "c" type: "Convolution" bottom: "in0" top: "out" convolution_param { num_output: 4 '
                'kernel_size: 3 group: 4 } }', ((1, 4, 5, 5),), "depthwise"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ConvAttrs:
        return parse_conv(layer, ctx)

    def infer(self, a: ConvAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        s = shapes[0]
        need_4d(s, ctx)
        if s[1] % a.group:
            raise ctx.error(f"input channels {s[1]} are not divisible by group {a.group}")
        w = a.window
        ho = conv_output_size(s[2], w.kernel[0], w.stride[0], w.pad[0], w.dilation[0])
        wo = conv_output_size(s[3], w.kernel[1], w.stride[1], w.pad[1], w.dilation[1])
        if ho <= 0 or wo <= 0:
            raise ctx.error(f"kernel {w.kernel} (dilation {w.dilation}) does not fit the padded input {s[2:]}")
        return [(s[0], a.num_output, ho, wo)]

    def weights(self, a: ConvAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        c = shapes[0][1]
        specs = [WeightSpec("weight", (a.num_output, c // a.group, *a.window.kernel), a.weight_filler)]
        if a.bias_term:
            specs.append(WeightSpec("bias", (a.num_output,), a.bias_filler, role="bias"))
        return specs

    def cost(self, a: ConvAttrs, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
        c = ins[0][1]
        return prod(outs[0]) * (c // a.group) * prod(a.window.kernel)

    def kernel(self, a: ConvAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [conv2d(xs[0], w["weight"], w.get("bias"), a.window, a.group)]

    def output_channel_axis(self, a: ConvAttrs, out_shape: Shape) -> int:
        return 1

    def scale_output_channels(self, a: ConvAttrs, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
        """The weight is (O, C/g, kh, kw): output channels on axis 0."""
        return scale_along(weight, s, 0)

    def lower(self, a: ConvAttrs, g: Lowering) -> None:
        win = a.window
        ins = [g.inputs[0], g.weight("weight")] + ([g.weight("bias")] if a.bias_term else [])
        g.op("Conv", ins, g.outputs, kernel_shape=list(win.kernel), strides=list(win.stride),
             pads=[win.pad[0], win.pad[1], win.pad[0], win.pad[1]], dilations=list(win.dilation), group=a.group)


# -- InnerProduct ------------------------------------------------------------------------------

@dataclass(frozen=True)
class InnerProductAttrs:
    num_output: int
    bias_term: bool
    axis: int
    transpose: bool
    weight_filler: Filler
    bias_filler: Filler
    #: happynear/caffe-windows' ``normalize``: the weight is L2-normalized row by row first
    normalize: bool = False


#: what happynear/caffe-windows' InnerProduct adds to each weight row's sum of squares under
#: ``normalize`` (1e-6 in its Forward_cpu; its CUDA kernel adds 1e-12; protonet follows the CPU code)
WEIGHT_NORM_EPS = 1e-6


def normalized_rows(weight: np.ndarray, rows: int) -> np.ndarray:
    """happynear's ``normalize``: the weight blob, read in memory order as ``rows`` rows (one per
    output when it is (N, K); with transpose the fork still cuts the (K, N) blob into N runs of
    K values), each divided by sqrt(Σ w² + 1e-6). The bias is not touched."""
    w = weight.reshape(rows, -1)
    return (w / np.sqrt((w * w).sum(axis=1, keepdims=True) + WEIGHT_NORM_EPS)).reshape(weight.shape)


@register
class InnerProduct(Layer):
    """y = x_flat · Wᵀ + b, where x is flattened from ``axis`` on; W is (N, K), or (K, N) with transpose.
    With happynear/caffe-windows' ``normalize: true``, W is first replaced by its rows divided by
    their L2 norms (:func:`normalized_rows`; AM-Softmax's cosine classifier), b added as it is."""

    type_name = "InnerProduct"
    channel_producer = True
    examples = (
        Example('layer { name: "fc" type: "InnerProduct" bottom: "in0" top: "out" '
                'inner_product_param { num_output: 5 } }', ((3, 2, 3, 2),), "flatten"),
        Example('layer { name: "fc" type: "InnerProduct" bottom: "in0" top: "out" '
                'inner_product_param { num_output: 4 axis: 2 transpose: true bias_term: false } }', ((2, 3, 6),),
                "axis2_transpose"),
        Example('layer { name: "fc" type: "InnerProduct" bottom: "in0" top: "out" '
                'inner_product_param { num_output: 4 normalize: true } }', ((2, 3, 2),), "normalize"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> InnerProductAttrs:
        p = layer.inner_product_param
        if not p.HasField("num_output") or p.num_output <= 0:
            raise ctx.error("num_output must be set to a positive number")
        return InnerProductAttrs(int(p.num_output), bool(p.bias_term), int(p.axis), bool(p.transpose),
                                 Filler.from_proto(p.weight_filler), Filler.from_proto(p.bias_filler),
                                 bool(p.normalize))

    def resolve(self, a: InnerProductAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> InnerProductAttrs:
        """The canonical axis (input axes from it on are flattened)."""
        return replace(a, axis=canonical_axis(a.axis, len(shapes[0]), ctx))

    def infer(self, a: InnerProductAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [tuple(shapes[0][:a.axis]) + (a.num_output,)]

    def weights(self, a: InnerProductAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        k = prod(shapes[0][a.axis:])
        wshape = (k, a.num_output) if a.transpose else (a.num_output, k)
        specs = [WeightSpec("weight", wshape, a.weight_filler)]
        if a.bias_term:
            specs.append(WeightSpec("bias", (a.num_output,), a.bias_filler, role="bias"))
        return specs

    def cost(self, a: InnerProductAttrs, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
        return prod(ins[0]) * a.num_output

    def kernel(self, a: InnerProductAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        ax = a.axis
        x2 = x.reshape(prod(x.shape[:ax]), -1)
        wt = self._weight(a, w["weight"])
        y = x2 @ wt
        if a.bias_term:
            y = y + w["bias"]
        return [y.reshape(tuple(x.shape[:ax]) + (a.num_output,))]

    def output_channel_axis(self, a: InnerProductAttrs, out_shape: Shape) -> int:
        return len(out_shape) - 1

    def scale_output_channels(self, a: InnerProductAttrs, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
        """The weight is (N, K), or (K, N) with transpose: output channels on axis 0 or 1."""
        return scale_along(weight, s, 1 if a.transpose else 0)

    def fold_reason(self, a: InnerProductAttrs) -> str | None:
        if a.normalize:
            return "it L2-normalizes its weight rows (normalize: true), which would undo a folded scale"
        return None

    def _weight(self, a: InnerProductAttrs, weight: np.ndarray) -> np.ndarray:
        """The (K, N) matrix that the flattened input is multiplied by."""
        if a.normalize:
            weight = normalized_rows(weight, a.num_output)
        return weight if a.transpose else weight.T

    def lower(self, a: InnerProductAttrs, g: Lowering) -> None:
        s = g.in_shapes[0]
        ax = a.axis
        if ax == 1:
            x = g.inputs[0] if len(s) == 2 else g.op("Flatten", [g.inputs[0]], axis=1)
            w = g.weight("weight", normalized_rows(g.weights["weight"], a.num_output)) if a.normalize \
                else g.weight("weight")
            ins = [x, w] + ([g.weight("bias")] if a.bias_term else [])
            g.op("Gemm", ins, g.outputs, transB=0 if a.transpose else 1)
            return
        wt = self._weight(a, g.weights["weight"])
        k = prod(s[ax:])
        x = g.op("Reshape", [g.inputs[0], g.int64s([0] * ax + [k], "shape")])
        if a.bias_term:
            y = g.op("MatMul", [x, g.weight("weight", wt)])
            g.op("Add", [y, g.weight("bias")], g.outputs)
        else:
            g.op("MatMul", [x, g.weight("weight", wt)], g.outputs)


# -- element-wise activations -------------------------------------------------------------------

@dataclass(frozen=True)
class ReLUAttrs:
    negative_slope: float


@register
class ReLU(Layer):
    """max(x, 0) + negative_slope * min(x, 0)."""

    type_name = "ReLU"
    post_op = True
    examples = (
        Example('layer { name: "r" type: "ReLU" bottom: "in0" top: "out" }', ((2, 3, 4, 4),), "plain"),
        Example('layer { name: "r" type: "ReLU" bottom: "in0" top: "out" relu_param { negative_slope: 0.1 } }',
                ((2, 5),), "leaky"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ReLUAttrs:
        return ReLUAttrs(float(layer.relu_param.negative_slope))

    def infer(self, a: Any, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [shapes[0]]

    def kernel(self, a: ReLUAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        return [np.maximum(x, 0) + a.negative_slope * np.minimum(x, 0)]

    def lower(self, a: ReLUAttrs, g: Lowering) -> None:
        if a.negative_slope == 0:
            g.op("Relu", g.inputs, g.outputs)
        else:
            g.op("LeakyRelu", g.inputs, g.outputs, alpha=a.negative_slope)


class _Unary(Layer):
    """An element-wise layer without parameters: ``fn`` in numpy, ``onnx_op`` in ONNX."""

    post_op = True
    onnx_op = ""

    def infer(self, a: Any, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [shapes[0]]

    def fn(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def kernel(self, a: Any, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [self.fn(xs[0])]

    def lower(self, a: Any, g: Lowering) -> None:
        g.op(self.onnx_op, g.inputs, g.outputs)


@register
class Sigmoid(_Unary):
    """1 / (1 + exp(-x))."""

    type_name = "Sigmoid"
    onnx_op = "Sigmoid"
    examples = (Example('layer { name: "s" type: "Sigmoid" bottom: "in0" top: "out" }', ((2, 3, 4),)),)

    def fn(self, x: np.ndarray) -> np.ndarray:
        return sigmoid(x)


@register
class TanH(_Unary):
    """tanh(x)."""

    type_name = "TanH"
    onnx_op = "Tanh"
    examples = (Example('layer { name: "t" type: "TanH" bottom: "in0" top: "out" }', ((2, 3, 4),)),)

    def fn(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x)


# -- Pooling -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolAttrs:
    method: str  # MAX or AVE
    window: Window2D | None  # resolved: the effective window (global pooling: the whole input)
    ceil_mode: bool
    mask: bool = False  # MAX with a second top: the argmax of each window as h * W + w
    global_pooling: bool = False
    out: tuple[int, int] = (0, 0)  # resolved: the output height and width


#: AVE windows of more values than this (and more than one row and column) are lowered as a mean
#: over each row, then over the rows: two float32 running sums of kw and kh terms instead of one
#: of kh·kw, whose rounding (up to (n − 1)·2⁻²⁴ of the mean) passes 6e-6 above 100 terms
SPLIT_AVE_WINDOW = 100


@register
class Pooling(Layer):
    """MAX / AVE pooling with Caffe's output size (round up, clip the last window when padded)
    and Caffe's average divisor (padding counted, the overhang past the padding not). Large AVE
    windows are lowered row by row (:data:`SPLIT_AVE_WINDOW`)."""

    type_name = "Pooling"
    examples = (
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" '
                'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }', ((2, 3, 8, 8),), "max_ceil"),
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" '
                'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }', ((1, 2, 6, 7),), "ave_pad"),
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" '
                'pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }', ((1, 2, 5, 5),), "ave_clip"),
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" '
                'pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }', ((1, 2, 5, 6),), "max_clip"),
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" '
                'pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 } }', ((1, 2, 5, 7),),
                "ave_hw"),
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" '
                'pooling_param { pool: AVE global_pooling: true } }', ((2, 3, 5, 4),), "global_ave"),
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" '
                'pooling_param { pool: MAX global_pooling: true } }', ((2, 3, 5, 4),), "global_max"),
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" '
                'pooling_param { pool: AVE global_pooling: true } }', ((1, 2, 12, 11),), "global_ave_split"),
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" '
                'pooling_param { pool: AVE kernel_h: 11 kernel_w: 10 stride_h: 6 stride_w: 7 pad_h: 2 pad_w: 1 } }',
                ((1, 2, 20, 19),), "ave_split_clip"),
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" '
                'pooling_param { pool: AVE kernel_size: 11 stride: 5 pad: 2 } }', ((1, 2, 22, 22),), "ave_split_pad"),
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" '
                'pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR } }', ((1, 2, 8, 8),),
                "max_floor"),
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" '
                'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 ceil_mode: false } }', ((1, 2, 6, 7),),
                "ave_ceil_mode_false"),
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" top: "mask" '
                'pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }', ((2, 3, 5, 6),), "max_mask"),
        Example('layer { name: "p" type: "Pooling" bottom: "in0" top: "out" top: "mask" '
                'pooling_param { pool: MAX global_pooling: true } }', ((2, 3, 5, 4),), "global_max_mask"),
    )

    def num_tops(self, attrs: PoolAttrs, layer: Any) -> int | None:
        return 2 if attrs.mask else 1

    def parse(self, layer: Any, ctx: LayerContext) -> PoolAttrs:
        p = layer.pooling_param
        method = enum_name(p, "pool")
        if method == "STOCHASTIC":
            raise ctx.error("STOCHASTIC pooling is not supported (Caffe itself has no CPU inference for it)")
        ceil_mode = True
        if "round_mode" in p.DESCRIPTOR.fields_by_name:
            ceil_mode = enum_name(p, "round_mode") == "CEIL"
        # BVLC pull request 3057's ceil_mode (OpenCV, PyTorch-era converters): false = round down,
        # the same output size and padding rule as round_mode: FLOOR
        if "ceil_mode" in p.DESCRIPTOR.fields_by_name and p.HasField("ceil_mode"):
            if p.HasField("round_mode") and ceil_mode != p.ceil_mode:
                raise ctx.error(f"ceil_mode: {str(p.ceil_mode).lower()} contradicts round_mode: "
                                f"{enum_name(p, 'round_mode')}; set one of them")
            ceil_mode = bool(p.ceil_mode)
        mask = len(layer.top) == 2
        if mask and method != "MAX":
            raise ctx.error("a second top (the argmax mask) needs pool: MAX")
        if p.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise ctx.error("global_pooling and a kernel size cannot both be set")
            if p.pad or p.pad_h or p.pad_w or (p.HasField("stride") and p.stride != 1) or p.stride_h > 1 or p.stride_w > 1:
                raise ctx.error("global_pooling needs pad 0 and stride 1")
            return PoolAttrs(method, None, ceil_mode, mask, global_pooling=True)
        win = pool_window(p, ctx)
        if win.pad[0] >= win.kernel[0] or win.pad[1] >= win.kernel[1]:
            raise ctx.error(f"pad {win.pad} must be smaller than the kernel {win.kernel}")
        return PoolAttrs(method, win, ceil_mode, mask)

    def resolve(self, a: PoolAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> PoolAttrs:
        """The effective window (global pooling covers the input) and Caffe's output size
        (rounded up unless ceil_mode is off; both axes clipped when either pads), checked."""
        s = shapes[0]
        need_4d(s, ctx)
        win = Window2D((s[2], s[3]), (1, 1), (0, 0)) if a.global_pooling else a.window
        assert win is not None  # parse sets a window unless global_pooling
        clip = win.pad[0] > 0 or win.pad[1] > 0
        ho, wo = (pool_output_size(s[2 + i], win.kernel[i], win.stride[i], win.pad[i], a.ceil_mode, clip)
                  for i in range(2))
        if ho <= 0 or wo <= 0:
            raise ctx.error(f"kernel {win.kernel} is larger than the padded input {s[2:]}")
        full = (pool_nonempty(s[2], ho, win.stride[0], win.pad[0]), pool_nonempty(s[3], wo, win.stride[1], win.pad[1]))
        if a.method == "AVE" and full != (ho, wo):
            raise ctx.error(f"the last AVE window(s) of the {ho}x{wo} output hold no input value (stride "
                            f"{win.stride} exceeds kernel {win.kernel} on a {s[2]}x{s[3]} input); Caffe divides "
                            f"0 by 0 there: use round_mode: FLOOR or a stride that covers the input")
        return replace(a, window=win, out=(ho, wo))

    def infer(self, a: PoolAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        s = shapes[0]
        return [(s[0], s[1]) + a.out] * (2 if a.mask else 1)

    def kernel(self, a: PoolAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        h, wd = x.shape[2:]
        win, (ho, wo) = a.window, a.out
        (kh, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.pad
        # right padding so that every window lies inside the padded array
        eh = max(0, (ho - 1) * sh + kh - h - ph)
        ew = max(0, (wo - 1) * sw + kw - wd - pw)
        fill = -np.inf if a.method == "MAX" else 0.0
        xp = np.pad(x, ((0, 0), (0, 0), (ph, eh), (pw, ew)), constant_values=fill)
        win_view = _windows(xp, (kh, kw), (sh, sw), (1, 1), (ho, wo))
        if a.method == "MAX":
            n, c = x.shape[:2]
            flat = win_view.reshape(n, c, kh * kw, ho, wo)
            k = flat.argmax(axis=2)  # first maximum in row-major window order, as Caffe's strict >
            top = np.take_along_axis(flat, k[:, :, None], axis=2)[:, :, 0]
            empty = ~(top > -FLT_MAX)  # a window with no input value keeps Caffe's start, -FLT_MAX
            top = np.where(empty, -FLT_MAX, top)
            if not a.mask:
                return [top]
            hh = np.arange(ho)[:, None] * sh - ph + k // kw
            ww = np.arange(wo)[None, :] * sw - pw + k % kw
            return [top, np.where(empty, -1, hh * wd + ww).astype(x.dtype)]
        # Caffe's divisor: window clipped to [-pad, size + pad), so padding counts, overhang doesn't
        def extent(n_out: int, k: int, s: int, p: int, size: int) -> np.ndarray:
            start = np.arange(n_out) * s - p
            return np.minimum(start + k, size + p) - start
        div = np.outer(extent(ho, kh, sh, ph, h), extent(wo, kw, sw, pw, wd))
        return [win_view.sum(axis=(2, 3)) / div]

    def follow_choice(self, a: PoolAttrs, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
                      other: Sequence[np.ndarray], close: Close) -> list[np.ndarray] | None:
        """The mask of MAX pooling is an argmax: where two inputs of a window are equal up to
        rounding, float32 and float64 may pick different ones. The other mask is followed when
        every index where it differs lies in that output's window and holds a reference input
        value equal to the window's maximum within tolerance; an index outside the window, out
        of range, or at a value below the maximum is a real difference (None). (Exact ties in
        float64 are included: float32 may compute two equal float64 values a rounding apart.)"""
        if not a.mask:
            return None
        x, (top, mask), alt = xs[0], ys, np.asarray(other[1])
        diff = np.argwhere(alt != mask)
        if diff.size == 0 or alt.shape != mask.shape:
            return None
        h, w = x.shape[2:]
        (kh, kw), (sh, sw), (ph, pw) = a.window.kernel, a.window.stride, a.window.pad
        n, c, i, j = diff.T
        k = alt[n, c, i, j].astype(np.float64)
        valid = (k == np.floor(k)) & (k >= 0) & (k < h * w)
        kk = np.where(valid, k, 0).astype(np.int64)
        kh_, kw_ = kk // w, kk % w
        hs, ws = i * sh - ph, j * sw - pw
        valid &= (kh_ >= np.maximum(hs, 0)) & (kh_ < np.minimum(hs + kh, h))
        valid &= (kw_ >= np.maximum(ws, 0)) & (kw_ < np.minimum(ws + kw, w))
        picked = x[n, c, kh_, kw_]
        valid &= close(picked, top[n, c, i, j], x)
        if not valid.all():
            return None
        return [top, alt.astype(mask.dtype)]

    def lower(self, a: PoolAttrs, g: Lowering) -> None:
        s = g.in_shapes[0]
        win, (ho, wo) = a.window, a.out
        (kh, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.pad
        split = a.method == "AVE" and kh > 1 and kw > 1 and kh * kw > SPLIT_AVE_WINDOW
        if a.global_pooling and not a.mask and not split:  # the mask needs MaxPool's indices: a whole-plane window below
            g.op("GlobalMaxPool" if a.method == "MAX" else "GlobalAveragePool", g.inputs, g.outputs)
            return
        # explicit end padding reproduces Caffe's output size in ONNX's floor mode
        eh = max(0, (ho - 1) * sh + kh - s[2] - 2 * ph)
        ew = max(0, (wo - 1) * sw + kw - s[3] - 2 * pw)
        if a.method == "MAX":
            self._lower_max(a, g, win, (ho, wo))
            return
        x = g.inputs[0]
        if (ph or pw) and (eh or ew):
            # zero padding is counted by Caffe, the overhang past it is not
            x = g.op("Pad", [x, g.int64s([0, 0, ph, pw, 0, 0, ph, pw], "pads")], mode="constant")
            ph = pw = 0
            include = 0
        else:
            include = 1 if (ph or pw) else 0
        # Caffe's divisor is a product of one count per axis (padding counted, overhang not), so
        # the window's mean is the mean over its rows of the rows' means: onnxruntime's AveragePool
        # sums a window in one float32 running sum, whose rounding grows with the count (a 90x90
        # window: 8100 terms, about 1e-4 of the mean in PSPNet's pyramid pooling); by rows, the
        # sums are kw and kh terms long
        stages = [((1, kw), (1, sw), (0, pw), (0, ew)), ((kh, 1), (sh, 1), (ph, 0), (eh, 0))] if split else \
            [((kh, kw), (sh, sw), (ph, pw), (eh, ew))]
        for i, (k, st, p, e) in enumerate(stages):
            x = g.op("AveragePool", [x], g.outputs if i == len(stages) - 1 else None, kernel_shape=list(k),
                     strides=list(st), pads=[p[0], p[1], p[0] + e[0], p[1] + e[1]], count_include_pad=include)


    def _lower_max(self, a: PoolAttrs, g: Lowering, win: Window2D, out: tuple[int, int]) -> None:
        """MaxPool over the windows that hold input values; windows past the input (no padding,
        stride > kernel) are appended as Caffe leaves them: -FLT_MAX, mask -1."""
        s = g.in_shapes[0]
        (kh, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.pad
        vh, vw = pool_nonempty(s[2], out[0], sh, ph), pool_nonempty(s[3], out[1], sw, pw)
        eh = max(0, (vh - 1) * sh + kh - s[2] - 2 * ph)
        ew = max(0, (vw - 1) * sw + kw - s[3] - 2 * pw)
        extra = (out[0] - vh, out[1] - vw)
        outs = list(g.outputs) if extra == (0, 0) else [g.tmp("pooled"), g.tmp("mask")][:len(g.outputs)]
        attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph + eh, pw + ew])
        if not a.mask:
            g.op("MaxPool", g.inputs, outs[:1], **attrs)
        else:
            # ONNX indices run over the whole NCHW tensor; Caffe's mask is h * W + w per plane
            idx = g.op("MaxPool", g.inputs, [outs[0], g.tmp("indices")], **attrs)[1]
            plane = g.op("Mod", [idx, g.const(np.array(s[2] * s[3], dtype=np.int64), "plane", np.int64)])
            g.cast(plane, np.float32, [outs[1]])
        if extra != (0, 0):
            pads = g.int64s([0, 0, 0, 0, 0, 0, extra[0], extra[1]], "empty_windows")
            for src, dst, fill in zip(outs, g.outputs, (-FLT_MAX, -1.0)):
                g.op("Pad", [src, pads, g.const(np.float32(fill), "fill")], [dst], mode="constant")


# -- LRN -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LRNAttrs:
    size: int
    alpha: float
    beta: float
    k: float
    across_channels: bool


@register
class LRN(Layer):
    """Local response normalisation. ACROSS_CHANNELS: x / (k + alpha/n · Σ x²)^beta over n channels;
    WITHIN_CHANNEL: x / (1 + alpha · mean(x²) over an n×n window, zero-padded)^beta (k unused)."""

    type_name = "LRN"
    examples = (
        Example('layer { name: "n" type: "LRN" bottom: "in0" top: "out" '
                'lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }', ((2, 7, 3, 3),), "across"),
        Example('layer { name: "n" type: "LRN" bottom: "in0" top: "out" '
                'lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }', ((1, 4, 2, 2),), "across_k"),
        Example('layer { name: "n" type: "LRN" bottom: "in0" top: "out" '
                'lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }', ((1, 2, 5, 4),),
                "within"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> LRNAttrs:
        p = layer.lrn_param
        if p.local_size % 2 == 0 or p.local_size <= 0:
            raise ctx.error(f"local_size must be a positive odd number, got {p.local_size}")
        return LRNAttrs(int(p.local_size), float(p.alpha), float(p.beta), float(p.k),
                        enum_name(p, "norm_region") == "ACROSS_CHANNELS")

    def infer(self, a: LRNAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        need_4d(shapes[0], ctx)
        n, c, h, w = shapes[0]
        half = (a.size - 1) // 2  # the window sums run over the input zero-padded by half a window
        padded = (n, c + 2 * half, h, w) if a.across_channels else (n, c, h + 2 * half, w + 2 * half)
        check_blob(ctx, f"the input padded for local_size {a.size}", padded)
        return [shapes[0]]

    def kernel(self, a: LRNAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        half = (a.size - 1) // 2
        if a.across_channels:
            sq = np.pad(x * x, ((0, 0), (half, half), (0, 0), (0, 0)))
            csum = np.concatenate([np.zeros_like(sq[:, :1]), np.cumsum(sq, axis=1)], axis=1)
            window = csum[:, a.size:] - csum[:, :-a.size]
            scale = a.k + (a.alpha / a.size) * window
        else:
            sq = np.pad(x * x, ((0, 0), (0, 0), (half, half), (half, half)))
            view = _windows(sq, (a.size, a.size), (1, 1), (1, 1), x.shape[2:])
            scale = 1.0 + a.alpha * view.sum(axis=(2, 3)) / (a.size * a.size)
        return [x * scale ** (-a.beta)]

    def lower(self, a: LRNAttrs, g: Lowering) -> None:
        if a.across_channels:
            _lower_lrn_across(a, g)
            return
        half = (a.size - 1) // 2
        x = g.inputs[0]
        sq = g.op("Mul", [x, x])
        avg = g.op("AveragePool", [sq], kernel_shape=[a.size, a.size], strides=[1, 1],
                   pads=[half, half, half, half], count_include_pad=1)
        base = g.op("Add", [g.op("Mul", [avg, g.const(a.alpha, "alpha")]), g.const(1.0, "one")])
        g.op("Mul", [x, g.op("Pow", [base, g.const(-a.beta, "neg_beta")])], g.outputs)


def _lower_lrn_across(a: LRNAttrs, g: Lowering) -> None:
    """ACROSS_CHANNELS as plain arithmetic, several times faster on onnxruntime's CPU than its LRN
    kernel (benchmarks/lrn.md): (√(alpha/n) · x)² through a 1×1 Conv whose C×C weight is 1 on the
    band of channels |c - c'| <= n//2 (the zero padding of the window is the band's clipping at the
    edges) and whose bias is k, then x · scale^-beta; for beta = 0.75 (AlexNet's, GoogLeNet's) as
    x / (√scale · √√scale), which avoids Pow. x is scaled before it is squared so that an fp16 build
    holds the squares (x² alone passes float16's 65504 once |x| > 256)."""
    x, c = g.inputs[0], g.in_shapes[0][1]
    half = (a.size - 1) // 2
    offset = np.arange(c)[:, None] - np.arange(c)[None, :]
    band = (np.abs(offset) <= half).astype(np.float32)
    scaled = g.op("Mul", [x, g.const(np.sqrt(a.alpha / a.size), "sqrt_alpha_over_n")])
    scale = g.op("Conv", [g.op("Mul", [scaled, scaled]), g.const(band.reshape(c, c, 1, 1), "lrn_band"),
                          g.const(np.full(c, a.k), "lrn_k")])
    if a.beta == 0.75:
        root = g.op("Sqrt", [scale])
        g.op("Div", [x, g.op("Mul", [root, g.op("Sqrt", [root])])], g.outputs)
    else:
        g.op("Mul", [x, g.op("Pow", [scale, g.const(-a.beta, "neg_beta")])], g.outputs)


# -- Concat, Eltwise, Split ----------------------------------------------------------------------

@dataclass(frozen=True)
class AxisAttrs:
    axis: int


@register
class Concat(Layer):
    """Concatenate along ``axis`` (legacy ``concat_dim``); all other dimensions must agree."""

    type_name = "Concat"
    num_bottoms = (1, None)
    examples = (
        Example('layer { name: "c" type: "Concat" bottom: "in0" bottom: "in1" top: "out" }',
                ((2, 3, 4, 4), (2, 5, 4, 4)), "channels"),
        Example('layer { name: "c" type: "Concat" bottom: "in0" bottom: "in1" top: "out" concat_param { axis: -1 } }',
                ((2, 3), (2, 4)), "last"),
        Example('layer { name: "c" type: "Concat" bottom: "in0" bottom: "in1" top: "out" '
                'concat_param { concat_dim: 0 } }', ((1, 3, 2), (2, 3, 2)), "legacy_dim"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> AxisAttrs:
        p = layer.concat_param
        if p.HasField("concat_dim"):
            if p.HasField("axis"):
                raise ctx.error("give axis or the legacy concat_dim, not both")
            return AxisAttrs(int(p.concat_dim))
        return AxisAttrs(int(p.axis))

    def resolve(self, a: AxisAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> AxisAttrs:
        return AxisAttrs(canonical_axis(a.axis, len(shapes[0]), ctx))

    def infer(self, a: AxisAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        first = shapes[0]
        ax = a.axis
        total = 0
        for i, s in enumerate(shapes):
            if len(s) != len(first) or any(s[d] != first[d] for d in range(len(s)) if d != ax):
                raise ctx.error(f"bottom {i} has shape {tuple(s)}, which does not match bottom 0 {tuple(first)} "
                                f"outside the concatenation axis {ax}")
            total += s[ax]
        return [tuple(first[:ax]) + (total,) + tuple(first[ax + 1:])]

    def identity(self, a: AxisAttrs, ins: Sequence[Shape], outs: Sequence[Shape], w: dict) -> str | None:
        return "Concat of a single bottom" if len(ins) == 1 else None

    def kernel(self, a: AxisAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [np.concatenate(xs, axis=a.axis)]

    def lower(self, a: AxisAttrs, g: Lowering) -> None:
        g.op("Concat", g.inputs, g.outputs, axis=a.axis)


@dataclass(frozen=True)
class EltwiseAttrs:
    operation: str  # SUM, PROD, MAX
    coeff: tuple[float, ...]


@register
class Eltwise(Layer):
    """Element-wise SUM (with optional per-bottom coefficients), PROD or MAX of equal-shaped bottoms."""

    type_name = "Eltwise"
    num_bottoms = (1, None)
    examples = (
        Example('layer { name: "e" type: "Eltwise" bottom: "in0" bottom: "in1" top: "out" }',
                ((2, 3, 4, 4), (2, 3, 4, 4)), "sum"),
        Example('layer { name: "e" type: "Eltwise" bottom: "in0" bottom: "in1" bottom: "in2" top: "out" '
                'eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 } }', ((2, 3), (2, 3), (2, 3)),
                "sum_coeff"),
        Example('layer { name: "e" type: "Eltwise" bottom: "in0" bottom: "in1" top: "out" '
                'eltwise_param { operation: PROD } }', ((2, 3, 2), (2, 3, 2)), "prod"),
        Example('layer { name: "e" type: "Eltwise" bottom: "in0" bottom: "in1" top: "out" '
                'eltwise_param { operation: MAX } }', ((2, 3, 2), (2, 3, 2)), "max"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> EltwiseAttrs:
        p = layer.eltwise_param
        op = enum_name(p, "operation")
        coeff = tuple(float(c) for c in p.coeff)
        if coeff and op != "SUM":
            raise ctx.error("coeff is only allowed with operation SUM")
        if coeff and len(coeff) != len(layer.bottom):
            raise ctx.error(f"{len(coeff)} coeff values for {len(layer.bottom)} bottoms; give one per bottom")
        return EltwiseAttrs(op, coeff)

    def infer(self, a: EltwiseAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        for i, s in enumerate(shapes[1:], 1):
            if tuple(s) != tuple(shapes[0]):
                raise ctx.error(f"bottom {i} has shape {tuple(s)}, which does not match bottom 0 {tuple(shapes[0])}")
        return [shapes[0]]

    def identity(self, a: EltwiseAttrs, ins: Sequence[Shape], outs: Sequence[Shape], w: dict) -> str | None:
        if len(ins) != 1 or (a.operation == "SUM" and a.coeff and a.coeff[0] != 1.0):
            return None
        return f"Eltwise {a.operation} of a single bottom" + (" with coeff 1" if a.coeff else "")

    def kernel(self, a: EltwiseAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        if a.operation == "PROD":
            y = xs[0].copy()
            for x in xs[1:]:
                y = y * x
        elif a.operation == "MAX":
            y = xs[0]
            for x in xs[1:]:
                y = np.maximum(y, x)
        else:
            coeff = a.coeff or (1.0,) * len(xs)
            y = sum(c * x for c, x in zip(coeff, xs))
        return [np.asarray(y)]

    def lower(self, a: EltwiseAttrs, g: Lowering) -> None:
        ins = list(g.inputs)
        if len(ins) == 1 and (a.operation != "SUM" or not a.coeff or a.coeff[0] == 1.0):
            g.op("Identity", ins, g.outputs)
            return
        if a.operation == "PROD":
            g.op("Mul", ins, g.outputs) if len(ins) == 2 else _chain(g, "Mul", ins)
        elif a.operation == "MAX":
            g.op("Max", ins, g.outputs)
        else:
            if a.coeff and any(c != 1.0 for c in a.coeff):
                ins = [x if c == 1.0 else g.op("Mul", [x, g.const(c, f"coeff{i}")])
                       for i, (c, x) in enumerate(zip(a.coeff, ins))]
            g.op("Sum", ins, g.outputs) if len(ins) > 1 else g.op("Identity", ins, g.outputs)


def _chain(g: Lowering, op: str, ins: list[str]) -> None:
    y = ins[0]
    for i, x in enumerate(ins[1:], 1):
        y = g.op(op, [y, x], g.outputs if i == len(ins) - 1 else None)


@dataclass(frozen=True)
class SplitAttrs:
    tops: int


@register
class Split(Layer):
    """Copies its bottom to every top."""

    type_name = "Split"
    copies_bottom = True
    examples = (Example('layer { name: "s" type: "Split" bottom: "in0" top: "a" top: "b" }', ((2, 3),)),)

    def parse(self, layer: Any, ctx: LayerContext) -> SplitAttrs:
        if not layer.top:
            raise ctx.error("needs at least one top")
        return SplitAttrs(len(layer.top))

    def num_tops(self, attrs: SplitAttrs, layer: Any) -> int | None:
        return None

    def infer(self, a: SplitAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [shapes[0]] * a.tops

    def kernel(self, a: SplitAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [xs[0]] * a.tops

    def lower(self, a: SplitAttrs, g: Lowering) -> None:
        for o in g.outputs:
            g.op("Identity", [g.inputs[0]], [o])


# -- Softmax, Dropout --------------------------------------------------------------------------

@register
class Softmax(Layer):
    """exp(x - max) / Σ exp(x - max) along ``axis`` (default 1)."""

    type_name = "Softmax"
    examples = (
        Example('layer { name: "s" type: "Softmax" bottom: "in0" top: "out" }', ((2, 5),), "2d"),
        Example('layer { name: "s" type: "Softmax" bottom: "in0" top: "out" }', ((2, 3, 2, 2),), "channels"),
        Example('layer { name: "s" type: "Softmax" bottom: "in0" top: "out" softmax_param { axis: -1 } }',
                ((2, 3, 4),), "last"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> AxisAttrs:
        return AxisAttrs(int(layer.softmax_param.axis))

    def resolve(self, a: AxisAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> AxisAttrs:
        return AxisAttrs(canonical_axis(a.axis, len(shapes[0]), ctx))

    def infer(self, a: AxisAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [shapes[0]]

    def kernel(self, a: AxisAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        e = np.exp(x - x.max(axis=a.axis, keepdims=True))
        return [e / e.sum(axis=a.axis, keepdims=True)]

    def lower(self, a: AxisAttrs, g: Lowering) -> None:
        g.op("Softmax", g.inputs, g.outputs, axis=a.axis)


@dataclass(frozen=True)
class DropoutAttrs:
    ratio: float
    scale: float = 1.0  # the TEST-phase factor


@register
class Dropout(Layer):
    """At inference (TEST phase) Caffe's Dropout is the identity: training scales by 1/(1 - ratio).
    py-faster-rcnn's ``scale_train: false`` trains unscaled and scales at test time instead:
    y = x * alpha, alpha = float(1 / scale), scale = float(1 / (1 - ratio)) (double arithmetic, each
    result stored in float, as that fork's dropout_layer.cpp does)."""

    type_name = "Dropout"
    removed_at_inference = True
    examples = (
        Example('layer { name: "d" type: "Dropout" bottom: "in0" top: "out" dropout_param { dropout_ratio: 0.5 } }',
                ((2, 6),), "identity"),
        Example('layer { name: "d" type: "Dropout" bottom: "in0" top: "out" '
                'dropout_param { dropout_ratio: 0.3 scale_train: false } }', ((2, 6),), "scale_test"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> DropoutAttrs:
        p = layer.dropout_param
        if not 0.0 <= p.dropout_ratio < 1.0:
            raise ctx.error(f"dropout_ratio must be in [0, 1), got {p.dropout_ratio}")
        scale = 1.0
        if "scale_train" in p.DESCRIPTOR.fields_by_name and not p.scale_train:
            train_scale = np.float32(1.0 / (1.0 - float(np.float32(p.dropout_ratio))))
            scale = float(np.float32(1.0 / float(train_scale)))
        return DropoutAttrs(float(p.dropout_ratio), scale)

    def infer(self, a: Any, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [shapes[0]]

    def kernel(self, a: DropoutAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [xs[0] * a.scale if a.scale != 1.0 else xs[0]]

    def lower(self, a: DropoutAttrs, g: Lowering) -> None:
        if a.scale != 1.0:
            g.op("Mul", [g.inputs[0], g.const(np.float32(a.scale), "scale")], g.outputs)
        else:
            g.op("Identity", g.inputs, g.outputs)


# -- BatchNorm, Scale ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchNormAttrs:
    use_global_stats: bool
    eps: float


def channel_shape(c: int, ndim: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector along axis 1 of an ``ndim``-D array."""
    return (c,) + (1,) * (ndim - 2)


@register
class BatchNorm(Layer):
    """(x - mean) / sqrt(var + eps), with mean = blob0 / s, var = blob1 / s, s = blob2[0]
    (the moving-average scale factor; s = 0 gives 0). Without global stats (``use_global_stats:
    false``), mean and biased variance of the batch over all axes but 1. Caffe stores no filler:
    protonet fills mean 0, variance 1, factor 1 when no weights are given."""

    type_name = "BatchNorm"
    folds_into_producer = True
    examples = (
        Example('layer { name: "bn" type: "BatchNorm" bottom: "in0" top: "out" }', ((2, 3, 4, 4),), "global"),
        Example('layer { name: "bn" type: "BatchNorm" bottom: "in0" top: "out" batch_norm_param { eps: 0.001 } }',
                ((2, 5),), "2d_eps"),
        Example('layer { name: "bn" type: "BatchNorm" bottom: "in0" top: "out" '
                'batch_norm_param { use_global_stats: false } }', ((3, 2, 4, 4),), "batch_stats"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> BatchNormAttrs:
        p = layer.batch_norm_param
        use_global = p.use_global_stats if p.HasField("use_global_stats") else True  # TEST phase default
        if p.eps <= 0:
            raise ctx.error(f"eps must be positive, got {p.eps}")
        return BatchNormAttrs(bool(use_global), float(p.eps))

    def infer(self, a: Any, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        if len(shapes[0]) < 2:
            raise ctx.error(f"expects at least 2 axes, got shape {tuple(shapes[0])}")
        return [shapes[0]]

    def weights(self, a: BatchNormAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        c = shapes[0][1]
        return [WeightSpec("mean", (c,), CONSTANT_ZERO, role="state"),
                WeightSpec("variance", (c,), CONSTANT_ONE, role="state", positive=True),
                WeightSpec("scale_factor", (1,), CONSTANT_ONE, role="state", positive=True)]

    @staticmethod
    def stats(w: dict) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance after dividing by the stored moving-average scale factor."""
        s = float(w["scale_factor"].reshape(-1)[0])
        f = 0.0 if s == 0 else 1.0 / s
        return w["mean"] * f, w["variance"] * f

    def affine(self, a: BatchNormAttrs, ins: Sequence[Shape], w: dict) -> Affine | str:
        """With global stats: scale 1/sqrt(var + eps), shift -mean * scale, on axis 1."""
        if not a.use_global_stats:
            return "uses batch statistics (use_global_stats: false), which depend on the input"
        mean, var = self.stats(w)
        inv = 1.0 / np.sqrt(np.asarray(var, np.float64) + a.eps)
        return Affine(1, inv, -np.asarray(mean, np.float64) * inv)

    def kernel(self, a: BatchNormAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        if a.use_global_stats:
            mean, var = self.stats(w)
            cs = channel_shape(x.shape[1], x.ndim)
            mean, var = mean.reshape(cs), var.reshape(cs)
        else:
            axes = (0,) + tuple(range(2, x.ndim))
            mean = x.mean(axis=axes, keepdims=True)
            var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        return [(x - mean) / np.sqrt(var + a.eps)]

    def lower(self, a: BatchNormAttrs, g: Lowering) -> None:
        x = g.inputs[0]
        ndim = len(g.in_shapes[0])
        if a.use_global_stats:
            mean, var = self.stats(g.weights)
            c = g.in_shapes[0][1]
            inv = 1.0 / np.sqrt(var.astype(np.float64) + a.eps)
            cs = channel_shape(c, ndim)
            y = g.op("Mul", [x, g.const(inv.reshape(cs), "inv_std")])
            g.op("Add", [y, g.const((-mean * inv).reshape(cs), "shift")], g.outputs)
            return
        axes = [0] + list(range(2, ndim))
        mean = g.op("ReduceMean", [x], axes=axes, keepdims=1)
        d = g.op("Sub", [x, mean])
        var = g.op("ReduceMean", [g.op("Mul", [d, d])], axes=axes, keepdims=1)
        std = g.op("Sqrt", [g.op("Add", [var, g.const(a.eps, "eps")])])
        g.op("Div", [d, std], g.outputs)


@dataclass(frozen=True)
class ScaleAttrs:
    axis: int
    num_axes: int
    bias_term: bool
    filler: Filler
    bias_filler: Filler
    two_bottoms: bool


def scale_span(axis: int, num_axes: int, s: Shape, ctx: LayerContext, two: Shape | None = None) -> tuple[int, int]:
    """[start, end) of the axes that the scale/bias blob covers (Caffe's Scale/Bias rules):
    from the canonical ``axis``, ``num_axes`` axes (-1: to the end) or, with a second bottom
    ``two``, as many axes as it has, which must equal the input's there."""
    start = canonical_axis(axis, len(s), ctx)
    if two is not None:
        end = start + len(two)
        if tuple(s[start:end]) != tuple(two):
            raise ctx.error(f"bottom 1 shape {tuple(two)} does not match bottom 0 {tuple(s)} from axis {start}")
        return start, end
    if num_axes == -1:
        return start, len(s)
    if num_axes < -1 or start + num_axes > len(s):
        raise ctx.error(f"num_axes {num_axes} from axis {start} exceeds the {len(s)}-D input")
    return start, start + num_axes


def broadcast_param(p: np.ndarray, start: int, ndim: int) -> np.ndarray:
    """Reshape a blob covering axes [start, start + p.ndim) so it broadcasts against ``ndim`` axes."""
    return p.reshape(p.shape + (1,) * (ndim - start - p.ndim))


@register
class Scale(Layer):
    """y = x · scale (+ bias); scale is a learned blob of shape x.shape[axis:axis+num_axes]
    (filled with 1 unless a filler is given), or the second bottom."""

    type_name = "Scale"
    num_bottoms = (1, 2)
    examples = (
        Example('layer { name: "s" type: "Scale" bottom: "in0" top: "out" scale_param { bias_term: true } }',
                ((2, 3, 4, 4),), "channel_bias"),
        Example('layer { name: "s" type: "Scale" bottom: "in0" top: "out" scale_param { axis: 0 num_axes: -1 } }',
                ((2, 3),), "all_axes"),
        Example('layer { name: "s" type: "Scale" bottom: "in0" top: "out" scale_param { num_axes: 0 } }',
                ((2, 3, 2),), "scalar"),
        Example('layer { name: "s" type: "Scale" bottom: "in0" bottom: "in1" top: "out" '
                'scale_param { axis: 1 bias_term: true } }', ((2, 3, 4, 5), (3, 4)), "two_bottoms"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ScaleAttrs:
        p = layer.scale_param
        return ScaleAttrs(int(p.axis), int(p.num_axes), bool(p.bias_term),
                          Filler.from_proto(p.filler, default=CONSTANT_ONE),
                          Filler.from_proto(p.bias_filler, default=CONSTANT_ZERO), len(layer.bottom) == 2)

    def resolve(self, a: ScaleAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> ScaleAttrs:
        """The canonical axis and the explicit number of axes the scale covers."""
        start, end = scale_span(a.axis, a.num_axes, shapes[0], ctx, shapes[1] if a.two_bottoms else None)
        return replace(a, axis=start, num_axes=end - start)

    def infer(self, a: ScaleAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [shapes[0]]

    def weights(self, a: ScaleAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        start, end = a.axis, a.axis + a.num_axes
        pshape = tuple(shapes[0][start:end])
        specs = [] if a.two_bottoms else [WeightSpec("scale", pshape, a.filler)]
        if a.bias_term:
            specs.append(WeightSpec("bias", pshape, a.bias_filler, role="bias"))
        return specs

    def affine(self, a: ScaleAttrs, ins: Sequence[Shape], w: dict) -> Affine | str:
        """The learned scale (and bias) over the axes they cover."""
        if a.two_bottoms:
            return "Scale with a second bottom multiplies by a computed value, not a constant"
        start, end = a.axis, a.axis + a.num_axes
        pshape = tuple(ins[0][start:end])
        scale = np.asarray(w["scale"], np.float64).reshape(pshape)
        shift = np.asarray(w["bias"], np.float64).reshape(pshape) if a.bias_term else np.zeros(pshape)
        return Affine(start, scale, shift)

    def kernel(self, a: ScaleAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        start = a.axis
        scale = xs[1] if a.two_bottoms else w["scale"]
        y = x * broadcast_param(scale, start, x.ndim)
        if a.bias_term:
            y = y + broadcast_param(w["bias"], start, x.ndim)
        return [y]

    def lower(self, a: ScaleAttrs, g: Lowering) -> None:
        s = g.in_shapes[0]
        start, end = a.axis, a.axis + a.num_axes
        tail = (1,) * (len(s) - end)
        if a.two_bottoms:
            scale = g.inputs[1]
            if tail:
                scale = g.op("Reshape", [scale, g.int64s(list(s[start:end]) + list(tail), "shape")])
        else:
            scale = g.weight("scale", broadcast_param(g.weights["scale"], start, len(s)))
        if a.bias_term:
            y = g.op("Mul", [g.inputs[0], scale])
            g.op("Add", [y, g.weight("bias", broadcast_param(g.weights["bias"], start, len(s)))], g.outputs)
        else:
            g.op("Mul", [g.inputs[0], scale], g.outputs)


# -- Flatten, Reshape ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FlattenAttrs:
    axis: int
    end_axis: int


@register
class Flatten(Layer):
    """Merge axes [axis, end_axis] into one."""

    type_name = "Flatten"
    examples = (
        Example('layer { name: "f" type: "Flatten" bottom: "in0" top: "out" }', ((2, 3, 4, 5),), "default"),
        Example('layer { name: "f" type: "Flatten" bottom: "in0" top: "out" flatten_param { axis: 2 end_axis: 3 } }',
                ((2, 3, 4, 5, 2),), "middle"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> FlattenAttrs:
        p = layer.flatten_param
        return FlattenAttrs(int(p.axis), int(p.end_axis))

    def resolve(self, a: FlattenAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> FlattenAttrs:
        """Canonical axis and end_axis, end_axis not before axis."""
        n = len(shapes[0])
        start, end = canonical_axis(a.axis, n, ctx), canonical_axis(a.end_axis, n, ctx, "end_axis")
        if end < start:
            raise ctx.error(f"end_axis {a.end_axis} comes before axis {a.axis}")
        return FlattenAttrs(start, end)

    @staticmethod
    def out_shape(a: FlattenAttrs, s: Shape) -> Shape:
        return tuple(s[:a.axis]) + (prod(s[a.axis:a.end_axis + 1]),) + tuple(s[a.end_axis + 1:])

    def infer(self, a: FlattenAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [self.out_shape(a, shapes[0])]

    def identity(self, a: FlattenAttrs, ins: Sequence[Shape], outs: Sequence[Shape], w: dict) -> str | None:
        return same_shape(self.type_name, ins, outs)

    def kernel(self, a: FlattenAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [xs[0].reshape(self.out_shape(a, xs[0].shape))]

    def lower(self, a: FlattenAttrs, g: Lowering) -> None:
        # the leading dims copied (0), the merged one inferred (-1): no batch size in the model
        s = g.in_shapes[0]
        g.op("Reshape", [g.inputs[0], g.int64s([0] * a.axis + [-1] + list(s[a.end_axis + 1:]), "shape")], g.outputs)


def same_shape(type_name: str, ins: Sequence[Shape], outs: Sequence[Shape]) -> str | None:
    """A reshape is the identity when it keeps the shape."""
    return f"{type_name} to the same shape {tuple(ins[0])}" if tuple(outs[0]) == tuple(ins[0]) else None


@dataclass(frozen=True)
class ReshapeAttrs:
    dims: tuple[int, ...]  # as written: 0 copies the input dim, -1 is inferred
    axis: int  # resolved: the first replaced axis, in [0, ndim]
    num_axes: int  # resolved: how many axes are replaced
    out: Shape = ()  # resolved: the output shape


@register
class Reshape(Layer):
    """Replace axes [axis, axis + num_axes) by ``shape``: 0 copies the input dim, -1 is inferred."""

    type_name = "Reshape"
    examples = (
        Example('layer { name: "r" type: "Reshape" bottom: "in0" top: "out" '
                'reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }', ((2, 3, 4, 2),), "copy_infer"),
        Example('layer { name: "r" type: "Reshape" bottom: "in0" top: "out" '
                'reshape_param { shape { dim: 2 dim: 2 } axis: 1 num_axes: 1 } }', ((3, 4, 5),), "axis"),
        Example('layer { name: "r" type: "Reshape" bottom: "in0" top: "out" '
                'reshape_param { shape { dim: 1 } axis: -1 num_axes: 0 } }', ((3, 4),), "append_axis"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ReshapeAttrs:
        p = layer.reshape_param
        dims = tuple(int(d) for d in p.shape.dim)
        if sum(1 for d in dims if d == -1) > 1:
            raise ctx.error("at most one dimension may be -1")
        if any(d < -1 for d in dims):
            raise ctx.error(f"invalid dimension in shape {dims}")
        if p.num_axes < -1:
            raise ctx.error(f"num_axes must be >= -1, got {p.num_axes}")
        return ReshapeAttrs(dims, int(p.axis), int(p.num_axes))

    def resolve(self, a: ReshapeAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> ReshapeAttrs:
        """The replaced span [axis, axis + num_axes) and the output shape, checked against the
        input: Caffe's axis counts from the end as -1 = after the last axis."""
        s = shapes[0]
        n = len(s)
        if not -(n + 1) <= a.axis <= n:
            raise ctx.error(f"axis {a.axis} out of range for a {n}-D input")
        start = a.axis if a.axis >= 0 else n + 1 + a.axis
        end = n if a.num_axes == -1 else start + a.num_axes
        if end > n:
            raise ctx.error(f"axis {a.axis} with num_axes {a.num_axes} exceeds the {n}-D input")
        mid = []
        for i, d in enumerate(a.dims):
            if d == 0:
                if start + i >= n:
                    raise ctx.error(f"dim {i} is 0 (copy) but the input has no axis {start + i}")
                mid.append(s[start + i])
            else:
                mid.append(d)
        out = list(s[:start]) + mid + list(s[end:])
        if -1 in out:
            known = prod(d for d in out if d != -1)
            if known == 0 or prod(s) % known:
                raise ctx.error(f"cannot reshape {tuple(s)} to {tuple(out)}: {prod(s)} values")
            out[out.index(-1)] = prod(s) // known
        if prod(out) != prod(s):
            raise ctx.error(f"cannot reshape {tuple(s)} ({prod(s)} values) to {tuple(out)} ({prod(out)} values)")
        return ReshapeAttrs(a.dims, start, end - start, tuple(out))

    def infer(self, a: ReshapeAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [a.out]

    def identity(self, a: ReshapeAttrs, ins: Sequence[Shape], outs: Sequence[Shape], w: dict) -> str | None:
        return same_shape(self.type_name, ins, outs)

    def kernel(self, a: ReshapeAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [xs[0].reshape(a.out)]

    def lower(self, a: ReshapeAttrs, g: Lowering) -> None:
        """Caffe's dims as ONNX Reshape reads them: ONNX's 0 copies the input dim at the same
        index and -1 is inferred, as Caffe's do once the axes before the span are copied (0) and
        those after it written out; so a batch axis that the reshape copies or infers stays free.
        A span inserted before axis 0 (``axis: 0 num_axes: 0``) moves every input dim: the
        shape is then built from the input's own."""
        s = g.in_shapes[0]
        start, end = a.axis, a.axis + a.num_axes
        if end == 0 and a.dims:
            lead = g.int64s(g.out_shapes[0][:len(a.dims)], "lead")
            shape = g.op("Concat", [lead, g.op("Shape", [g.inputs[0]])], axis=0)
            g.op("Reshape", [g.inputs[0], shape], g.outputs)
            return
        dims = [0] * start + list(a.dims) + list(s[end:])
        g.op("Reshape", [g.inputs[0], g.int64s(dims, "shape")], g.outputs)