"""Layer types from popular Caffe forks, under the type names their prototxt files use.

=====================  ==========================================================================
type (aliases)         fork the semantics follow
=====================  ==========================================================================
Upsample               YOLO ports (nearest, one bottom) / SegNet (max-unpooling with a mask bottom)
Interp                 PSPNet (hszhao/PSPNet) / DeepLab v2: bilinear, align-corners
ReLU6                  the MobileNet-v2 ReLU6 add-on
DepthwiseConvolution   yonghenglh6/DepthwiseConvolution; ConvolutionDepthwise: caffe-mobilenet
ShuffleChannel         ShuffleNet (farmingyard)
Reorg                  YOLOv2 ports (eric612/MobileNet-YOLO): darknet's reorg_cpu, quirks included
Padding                DeepLab v1 (TheLegendAli/DeepLab-Context, deeplab-public): pad or crop H and W
MatWrite               DeepLab v1: a sink (the fork writes its bottom to .mat files; protonet writes nothing)
Permute, Normalize     SSD (weiliu89/caffe, branch ssd)
Axpy                   SENet (hujie-frank/SENet)
BN                     PSPNet (hszhao/PSPNet, yjxiong layout); SegNet's 2-blob form on request
ROIPooling             Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn)
=====================  ==========================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from ..errors import LayerContext, ProtonetError, UnsupportedError
from ..limits import check_constant
from .affine import scale_along
from .base import (CONSTANT_ONE, CONSTANT_ZERO, Example, Filler, Layer, Shape, WeightSpec, need_4d, prod,
                   random_rois)
from .bvlc import Silence
from .core import Convolution, ConvAttrs, channel_shape, conv2d
from .geometry import Window2D, conv_window
from .lowering import Lowering
from .registry import register


def _need_2_to_4d(shape: Shape, ctx: LayerContext) -> None:
    # Caffe's legacy channels()/height()/width() accessors: at most 4 axes, at least 2 here
    if not 2 <= len(shape) <= 4:
        raise ctx.error(f"expects a 2-D to 4-D input (N, C, ...), got shape {tuple(shape)}")


# -- Upsample ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UpsampleAttrs:
    scale_h: int
    scale_w: int
    pad_out_h: bool
    pad_out_w: bool
    out_h: int  # upsample_h (SegNet, mask form only); 0 when unset; resolved: the output height
    out_w: int
    with_mask: bool


@register
class Upsample(Layer):
    """Nearest-neighbour upsampling by integer factors (YOLO ports: one bottom; output
    (H·scale_h − pad_out_h, W·scale_w − pad_out_w), pixel (h, w) copies (h // scale_h, w // scale_w)).
    With a second bottom (SegNet max-unpooling): the output (upsample_h × upsample_w, or the
    scaled size) starts at 0 and each input value is written at the flat plane index given by
    the mask bottom (a Pooling argmax); when two values hit one index the later one wins, as in
    Caffe's loop. Factors: ``scale`` (default 2) or ``scale_h`` + ``scale_w``. The mask form lowers to
    ONNX ScatterElements, whose result for repeated indices the ONNX spec leaves open; onnxruntime
    writes in order (the last wins, as Caffe), which tests/test_layers_forks.py checks."""

    type_name = "Upsample"
    num_bottoms = (1, 2)
    examples = (
        Example('layer { name: "u" type: "Upsample" bottom: "in0" top: "out" upsample_param { scale: 2 } }',
                ((2, 3, 3, 4),), "scale2"),
        Example('layer { name: "u" type: "Upsample" bottom: "in0" top: "out" '
                'upsample_param { scale_h: 3 scale_w: 2 } }', ((1, 2, 2, 3),), "scale_hw"),
        Example('layer { name: "u" type: "Upsample" bottom: "in0" top: "out" '
                'upsample_param { scale: 2 pad_out_h: true } }', ((1, 2, 3, 3),), "pad_out"),
        Example('layer { name: "u" type: "Upsample" bottom: "in0" bottom: "in1" top: "out" '
                'upsample_param { upsample_h: 5 upsample_w: 4 } }', ((1, 2, 2, 2), (1, 2, 2, 2)), "mask",
                int_inputs={1: 20}),
        Example('layer { name: "u" type: "Upsample" bottom: "in0" bottom: "in1" top: "out" '
                'upsample_param { scale: 2 } }', ((2, 1, 2, 3), (2, 1, 2, 3)), "mask_scale",
                int_inputs={1: 24}),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> UpsampleAttrs:
        p = layer.upsample_param
        has_h, has_w = p.HasField("upsample_h"), p.HasField("upsample_w")
        if has_h != has_w:
            raise ctx.error("upsample_h and upsample_w must be given together")
        if p.HasField("scale_h") != p.HasField("scale_w"):
            raise ctx.error("scale_h and scale_w must be given together")
        if p.HasField("scale_h") and p.HasField("scale"):
            raise ctx.error("give either scale or scale_h/scale_w, not both")
        sh, sw = (int(p.scale_h), int(p.scale_w)) if p.HasField("scale_h") else (int(p.scale), int(p.scale))
        if sh < 1 or sw < 1:
            raise ctx.error(f"scale factors must be positive, got ({sh}, {sw})")
        if (p.pad_out_h and sh != 2) or (p.pad_out_w and sw != 2):
            raise ctx.error("pad_out_h/pad_out_w need a scale of 2 in that direction")
        with_mask = len(layer.bottom) == 2
        if has_h:
            if not with_mask:
                raise ctx.error("upsample_h/upsample_w belong to SegNet's max-unpooling form, which needs the "
                                "pooling mask as a second bottom; for nearest upsampling use scale")
            if p.upsample_h < 1 or p.upsample_w < 1:
                raise ctx.error("upsample_h and upsample_w must be positive")
        return UpsampleAttrs(sh, sw, bool(p.pad_out_h), bool(p.pad_out_w),
                             int(p.upsample_h) if has_h else 0, int(p.upsample_w) if has_h else 0, with_mask)

    def resolve(self, a: UpsampleAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> UpsampleAttrs:
        """The output size: upsample_h/_w when given, else the input's times the scales (less
        one where pad_out trims)."""
        s = shapes[0]
        need_4d(s, ctx)
        if a.with_mask and tuple(shapes[1]) != tuple(s):
            raise ctx.error(f"mask bottom shape {tuple(shapes[1])} must equal the data shape {tuple(s)}")
        if not a.out_h:
            a = replace(a, out_h=s[2] * a.scale_h - int(a.pad_out_h), out_w=s[3] * a.scale_w - int(a.pad_out_w))
        if a.with_mask:  # the lowering scatters into an output-sized zeros tensor
            check_constant(ctx, "the unpooled output (scattered into zeros)", (s[0], s[1], a.out_h, a.out_w))
        return a

    def infer(self, a: UpsampleAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        s = shapes[0]
        return [(s[0], s[1], a.out_h, a.out_w)]

    def kernel(self, a: UpsampleAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        ho, wo = a.out_h, a.out_w
        if not a.with_mask:
            y = np.repeat(np.repeat(x, a.scale_h, axis=2), a.scale_w, axis=3)
            return [y[:, :, :ho, :wo]]
        n, c = x.shape[:2]
        planes = n * c
        idx = xs[1].reshape(planes, -1).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= ho * wo):
            raise ProtonetError(f"mask index out of range [0, {ho * wo}): got values from {int(idx.min())} to "
                                f"{int(idx.max())}; the mask does not fit the output size")
        flat = (np.arange(planes)[:, None] * (ho * wo) + idx).reshape(-1)
        vals = x.reshape(-1)
        # Caffe writes in order, so the last write to an index wins: keep each index's last occurrence
        _, first_in_reversed = np.unique(flat[::-1], return_index=True)
        keep = flat.size - 1 - first_in_reversed
        y = np.zeros(planes * ho * wo, dtype=x.dtype)
        y[flat[keep]] = vals[keep]
        return [y.reshape(n, c, ho, wo)]

    def sample_input(self, a: UpsampleAttrs, i: int, in_shapes: Sequence[Shape],
                     rng: np.random.Generator) -> np.ndarray | None:
        if i != 1:
            return None
        return rng.integers(0, a.out_h * a.out_w, size=in_shapes[1]).astype(np.float32)

    def lower(self, a: UpsampleAttrs, g: Lowering) -> None:
        s = g.in_shapes[0]
        out = g.out_shapes[0]
        if not a.with_mask:
            trim = a.pad_out_h or a.pad_out_w
            scales = g.const([1.0, 1.0, float(a.scale_h), float(a.scale_w)], "scales")
            y = g.op("Resize", [g.inputs[0], "", scales], None if trim else g.outputs, mode="nearest",
                     coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            if trim:
                g.op("Slice", [y, g.int64s([0, 0], "starts"), g.int64s(list(out[2:]), "ends"),
                               g.int64s([2, 3], "axes")], g.outputs)
            return
        data = g.op("Reshape", [g.inputs[0], g.int64s([0, 0, -1], "flat")])
        idx = g.cast(g.op("Reshape", [g.inputs[1], g.int64s([0, 0, -1], "flat")]), np.int64)
        base = g.op("ConstantOfShape", [g.shape_from(g.inputs[0], 2, [out[2] * out[3]], "zeros_shape")],
                    value=np.zeros(1, dtype=np.float32))
        y = g.op("ScatterElements", [base, idx, data], axis=2)
        g.op("Reshape", [y, g.int64s([0, 0, out[2], out[3]], "shape")], g.outputs)


# -- Interp ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InterpAttrs:
    zoom: int | None
    shrink: int | None
    height: int | None
    width: int | None
    pad_beg: int
    pad_end: int
    size_in: tuple[int, int] = (0, 0)  # resolved: H and W after pad_beg/pad_end
    out: tuple[int, int] = (0, 0)  # resolved: the output H and W


@register
class Interp(Layer):
    """Bilinear resize with the align-corners convention (PSPNet / DeepLab v2): output pixel i
    samples input position i·(in−1)/(out−1) (0 when out = 1). Output size, in Caffe's order of
    precedence: shrink_factor only: (in−1)/s + 1; zoom_factor only: in + (in−1)(z−1); height and
    width; both factors: shrink, then zoom. ``in`` is the input after pad_beg/pad_end, which may
    only be ≤ 0 (a crop of −pad_beg at the start of both H and W, −pad_end at the end)."""

    type_name = "Interp"
    examples = (
        Example('layer { name: "i" type: "Interp" bottom: "in0" top: "out" interp_param { zoom_factor: 2 } }',
                ((1, 2, 3, 4),), "zoom"),
        Example('layer { name: "i" type: "Interp" bottom: "in0" top: "out" interp_param { shrink_factor: 2 } }',
                ((2, 2, 7, 6),), "shrink"),
        Example('layer { name: "i" type: "Interp" bottom: "in0" top: "out" interp_param { height: 5 width: 1 } }',
                ((1, 3, 3, 4),), "size"),
        Example('layer { name: "i" type: "Interp" bottom: "in0" top: "out" '
                'interp_param { shrink_factor: 2 zoom_factor: 3 } }', ((1, 2, 5, 5),), "shrink_zoom"),
        Example('layer { name: "i" type: "Interp" bottom: "in0" top: "out" '
                'interp_param { zoom_factor: 2 pad_beg: -1 pad_end: -1 } }', ((1, 2, 5, 6),), "crop"),
        Example('layer { name: "i" type: "Interp" bottom: "in0" top: "out" interp_param { height: 4 width: 5 } }',
                ((1, 1, 4, 5),), "copy"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> InterpAttrs:
        p = layer.interp_param
        if "interp_type" in p.DESCRIPTOR.fields_by_name and p.interp_type != "bilinear":
            raise ctx.error(f"interp_type {p.interp_type!r} is not supported; only bilinear", UnsupportedError)
        if p.pad_beg > 0 or p.pad_end > 0:
            raise ctx.error(f"pad_beg/pad_end must be <= 0 (cropping), got {p.pad_beg}/{p.pad_end}; "
                            "Caffe's Interp has no positive padding")
        zoom = int(p.zoom_factor) if p.HasField("zoom_factor") else None
        shrink = int(p.shrink_factor) if p.HasField("shrink_factor") else None
        if zoom is not None and zoom < 1:
            raise ctx.error(f"zoom_factor must be >= 1, got {zoom}")
        if shrink is not None and shrink < 1:
            raise ctx.error(f"shrink_factor must be >= 1, got {shrink}")
        has_size = p.HasField("height") and p.HasField("width")
        if zoom is None and shrink is None and not has_size:
            raise ctx.error("set zoom_factor, shrink_factor, or both height and width")
        h = int(p.height) if has_size else None
        w = int(p.width) if has_size else None
        return InterpAttrs(zoom, shrink, h, w, int(p.pad_beg), int(p.pad_end))

    def resolve(self, a: InterpAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> InterpAttrs:
        """The input size after pad_beg/pad_end and the output size, in Caffe's precedence."""
        s = shapes[0]
        need_4d(s, ctx)
        hin, win = s[2] + a.pad_beg + a.pad_end, s[3] + a.pad_beg + a.pad_end

        def one(n: int) -> int:
            if a.shrink is not None and a.zoom is None:
                return (n - 1) // a.shrink + 1
            if a.zoom is not None and a.shrink is None:
                return n + (n - 1) * (a.zoom - 1)
            if a.height is not None:
                return -1
            m = (n - 1) // a.shrink + 1  # type: ignore[operator]
            return m + (m - 1) * (a.zoom - 1)  # type: ignore[operator]
        ho, wo = one(hin), one(win)
        if ho == -1:
            ho, wo = a.height, a.width  # type: ignore[assignment]
        if hin <= 0 or win <= 0:
            raise ctx.error(f"pad_beg/pad_end crop the {s[2]}x{s[3]} input to nothing")
        if ho <= 0 or wo <= 0:
            raise ctx.error(f"output size {ho}x{wo} must be positive")
        return replace(a, size_in=(hin, win), out=(ho, wo))

    def infer(self, a: InterpAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        s = shapes[0]
        return [(s[0], s[1]) + a.out]

    @staticmethod
    def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lower index, upper index and upper weight of each output position (align corners)."""
        ratio = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        pos = np.arange(n_out) * ratio
        lo = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
        hi = np.where(lo < n_in - 1, lo + 1, lo)
        return lo, hi, pos - lo

    def kernel(self, a: InterpAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        (hin, win), (ho, wo) = a.size_in, a.out
        c0 = -a.pad_beg
        x = x[:, :, c0:c0 + hin, c0:c0 + win]
        if (hin, win) == (ho, wo):
            return [x.copy()]
        hl, hh, hlam = self._taps(hin, ho)
        wl, wh, wlam = self._taps(win, wo)
        hlam = hlam.astype(x.dtype)[:, None]
        wlam = wlam.astype(x.dtype)
        top = x[:, :, hl, :] * (1 - hlam) + x[:, :, hh, :] * hlam
        return [top[:, :, :, wl] * (1 - wlam) + top[:, :, :, wh] * wlam]

    def lower(self, a: InterpAttrs, g: Lowering) -> None:
        hin, win = a.size_in
        x = g.inputs[0]
        if a.pad_beg or a.pad_end:
            c0 = -a.pad_beg
            x = g.op("Slice", [x, g.int64s([c0, c0], "starts"), g.int64s([c0 + hin, c0 + win], "ends"),
                               g.int64s([2, 3], "axes")])
        sizes = g.shape_from(x, 2, list(g.out_shapes[0][2:]), "sizes")
        g.op("Resize", [x, "", "", sizes], g.outputs, mode="linear", coordinate_transformation_mode="align_corners")


# -- ReLU6 ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReLU6Attrs:
    negative_slope: float


@register
class ReLU6(Layer):
    """min(max(x, 0), 6), plus negative_slope · min(x, 0) when a slope is given."""

    type_name = "ReLU6"
    post_op = True
    examples = (
        Example('layer { name: "r" type: "ReLU6" bottom: "in0" top: "out" }', ((2, 3, 4, 4),), "plain"),
        Example('layer { name: "r" type: "ReLU6" bottom: "in0" top: "out" relu6_param { negative_slope: 0.1 } }',
                ((2, 5),), "leaky"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ReLU6Attrs:
        return ReLU6Attrs(float(layer.relu6_param.negative_slope))

    def infer(self, a: Any, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [shapes[0]]

    def kernel(self, a: ReLU6Attrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        return [np.minimum(np.maximum(x, 0), 6) + a.negative_slope * np.minimum(x, 0)]

    def lower(self, a: ReLU6Attrs, g: Lowering) -> None:
        six = g.const(6.0, "six")
        if a.negative_slope == 0:
            g.op("Clip", [g.inputs[0], g.const(0.0, "zero"), six], g.outputs)
        else:
            leaky = g.op("LeakyRelu", g.inputs, alpha=a.negative_slope)
            g.op("Clip", [leaky, "", six], g.outputs)


# -- DepthwiseConvolution -----------------------------------------------------------------------

@dataclass(frozen=True)
class DepthwiseAttrs:
    num_output: int | None  # None: as many outputs as input channels; resolved: the count
    window: Window2D
    bias_term: bool
    weight_filler: Filler
    bias_filler: Filler
    group: int | None  # as written in the prototxt, checked against the channels; resolved: the channels


@register
class DepthwiseConvolution(Layer):
    """Depthwise convolution = Caffe Convolution with group = input channels C; each channel
    gets num_output / C filters (num_output defaults to C; caffe-mobilenet's ConvolutionDepthwise
    always produces C outputs). Weights (num_output, 1, kh, kw), bias (num_output,)."""

    type_name = "DepthwiseConvolution"
    channel_producer = True
    aliases = ("ConvolutionDepthwise",)
    examples = (
        Example('layer { name: "dw" type: "DepthwiseConvolution" bottom: "in0" top: "out" '
                'convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 4 } }',
                ((2, 4, 7, 6),), "basic"),
        Example('layer { name: "dw" type: "ConvolutionDepthwise" bottom: "in0" top: "out" '
                'convolution_param { num_output: 3 kernel_h: 3 kernel_w: 1 bias_term: false dilation: 2 } }',
                ((1, 3, 7, 5),), "alias_hw"),
        Example('layer { name: "dw" type: "DepthwiseConvolution" bottom: "in0" top: "out" '
                'convolution_param { num_output: 6 kernel_size: 3 } }', ((1, 3, 5, 5),), "multiplier"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> DepthwiseAttrs:
        p = layer.convolution_param
        if p.HasField("num_output") and p.num_output <= 0:
            raise ctx.error("num_output must be positive")
        if p.axis != 1:
            raise ctx.error(f"axis {p.axis} is not supported (channels must be axis 1)")
        return DepthwiseAttrs(int(p.num_output) if p.HasField("num_output") else None, conv_window(p, ctx),
                              bool(p.bias_term), Filler.from_proto(p.weight_filler),
                              Filler.from_proto(p.bias_filler), int(p.group) if p.HasField("group") else None)

    def resolve(self, a: DepthwiseAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> DepthwiseAttrs:
        """num_output (default: the channels, a multiple of them) and group = the channels."""
        s = shapes[0]
        need_4d(s, ctx)
        c = s[1]
        out = a.num_output or c
        if out % c:
            raise ctx.error(f"num_output {out} must be a multiple of the {c} input channels")
        if a.group is not None and a.group not in (1, c):
            raise ctx.error(f"group {a.group} contradicts a depthwise convolution over {c} channels "
                            f"(group is the channel count)")
        return replace(a, num_output=out, group=c)

    @staticmethod
    def conv_attrs(a: DepthwiseAttrs) -> ConvAttrs:
        """The same layer as a Convolution with group = channels (resolved attrs)."""
        assert a.num_output is not None and a.group is not None  # resolve sets both
        return ConvAttrs(a.num_output, a.window, a.group, a.bias_term, a.weight_filler, a.bias_filler)

    def infer(self, a: DepthwiseAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return Convolution().infer(self.conv_attrs(a), shapes, ctx)

    def weights(self, a: DepthwiseAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        return Convolution().weights(self.conv_attrs(a), shapes)

    def cost(self, a: DepthwiseAttrs, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
        return prod(outs[0]) * prod(a.window.kernel)

    def kernel(self, a: DepthwiseAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [conv2d(xs[0], w["weight"], w.get("bias"), a.window, a.group)]

    def output_channel_axis(self, a: DepthwiseAttrs, out_shape: Shape) -> int:
        return 1

    def scale_output_channels(self, a: DepthwiseAttrs, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
        """The weight is (O, 1, kh, kw): output channels on axis 0."""
        return scale_along(weight, s, 0)

    def lower(self, a: DepthwiseAttrs, g: Lowering) -> None:
        Convolution().lower(self.conv_attrs(a), g)


# -- ShuffleChannel ------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupAttrs:
    group: int


@register
class ShuffleChannel(Layer):
    """Channel shuffle: view the C channels as a (group, C/group) matrix and transpose it, so
    output channel j·group + i is input channel i·(C/group) + j."""

    type_name = "ShuffleChannel"
    examples = (
        Example('layer { name: "s" type: "ShuffleChannel" bottom: "in0" top: "out" '
                'shuffle_channel_param { group: 3 } }', ((2, 6, 3, 2),), "g3"),
        Example('layer { name: "s" type: "ShuffleChannel" bottom: "in0" top: "out" '
                'shuffle_channel_param { group: 2 } }', ((2, 8),), "2d"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> GroupAttrs:
        g = int(layer.shuffle_channel_param.group)
        if g <= 0:
            raise ctx.error(f"group must be positive, got {g}")
        return GroupAttrs(g)

    def infer(self, a: GroupAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        s = shapes[0]
        if len(s) < 2:
            raise ctx.error(f"expects at least 2 axes, got shape {tuple(s)}")
        if s[1] % a.group:
            raise ctx.error(f"channels {s[1]} are not divisible by group {a.group}")
        return [s]

    def kernel(self, a: GroupAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        n, c = x.shape[:2]
        y = x.reshape(n, a.group, c // a.group, -1).swapaxes(1, 2)
        return [y.reshape(x.shape)]

    def lower(self, a: GroupAttrs, g: Lowering) -> None:
        s = g.in_shapes[0]
        rest = prod(s[2:])
        y = g.op("Reshape", [g.inputs[0], g.int64s([0, a.group, s[1] // a.group, rest], "grouped")])
        y = g.op("Transpose", [y], perm=[0, 2, 1, 3])
        g.op("Reshape", [y, g.int64s([0] + list(s[1:]), "shape")], g.outputs)


# -- Reorg ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReorgAttrs:
    stride: int
    reverse: bool


@register
class Reorg(Layer):
    """YOLOv2's space-to-depth as the YOLO Caffe ports compute it (eric612/MobileNet-YOLO's
    reorg_layer: darknet's ``reorg_cpu`` called with the bottom's C, H, W and forward =
    ``reverse``), quirks included: it is not a plain space-to-depth. With stride s and
    C' = C/s², the bottom's memory is read as a (C', H·s, W·s) array X and the top's memory,
    written in (C, H, W) order, holds T[(oy·s + ox)·C' + c, j, i] = X[c, j·s + oy, i·s + ox];
    the top is then declared (C·s², H/s, W/s). ``reverse: true`` runs the same index map the
    other way (darknet's forward flag): the bottom read as (C, H, W) is scattered into a
    (C', H·s, W·s) top. Caffe's buffers need C divisible by s² and H, W by s (else the fork
    writes past its top; with ``reverse`` only C)."""

    type_name = "Reorg"
    examples = (
        Example('layer { name: "r" type: "Reorg" bottom: "in0" top: "out" reorg_param { stride: 2 } }',
                ((2, 8, 4, 6),), "s2"),
        Example('layer { name: "r" type: "Reorg" bottom: "in0" top: "out" reorg_param { stride: 2 reverse: true } }',
                ((1, 8, 2, 3),), "reverse"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ReorgAttrs:
        p = layer.reorg_param
        if not p.HasField("stride") or p.stride < 1:
            raise ctx.error("reorg_param.stride must be set to a positive number")
        return ReorgAttrs(int(p.stride), bool(p.reverse))

    def infer(self, a: ReorgAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        s = shapes[0]
        need_4d(s, ctx)
        _, c, h, w = s
        st = a.stride
        if c % (st * st) or (not a.reverse and (h % st or w % st)):
            raise ctx.error(f"stride {st} needs channels divisible by {st * st}" + ("" if a.reverse else
                            f" and height and width by {st}") + f", got {tuple(s)} (the fork would write past its top)")
        return [self.infer_shape(a, s)]

    @staticmethod
    def _views(a: ReorgAttrs, s: Shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """reorg_cpu's index map as a reshape, a transpose and a reshape, with the bottom's C, H,
        W: the (C', H, s, W, s) view of the (C', H·s, W·s) side and the (s, s, C', H, W) view of
        the (C, H, W) side."""
        n, c, h, w = s
        st, c2 = a.stride, c // (a.stride * a.stride)
        return (n, c2, h, st, w, st), (n, st, st, c2, h, w)

    def kernel(self, a: ReorgAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        out = self.infer_shape(a, x.shape)
        big, small = self._views(a, x.shape)
        if a.reverse:  # top (C', H·s, W·s)[c, j·s+oy, i·s+ox] = bottom (C, H, W)[(oy·s+ox)·C'+c, j, i]
            y = x.reshape(small).transpose(0, 3, 4, 1, 5, 2)
        else:  # top (C, H, W)[(oy·s+ox)·C'+c, j, i] = bottom (C', H·s, W·s)[c, j·s+oy, i·s+ox]
            y = x.reshape(big).transpose(0, 3, 5, 1, 2, 4)
        return [np.ascontiguousarray(y).reshape(out)]

    def infer_shape(self, a: ReorgAttrs, s: Shape) -> Shape:
        n, c, h, w = s
        st = a.stride
        return (n, c // (st * st), h * st, w * st) if a.reverse else (n, c * st * st, h // st, w // st)

    def lower(self, a: ReorgAttrs, g: Lowering) -> None:
        s = g.in_shapes[0]
        big, small = self._views(a, s)
        if a.reverse:
            y = g.op("Reshape", [g.inputs[0], g.int64s(small, "spread")])
            y = g.op("Transpose", [y], perm=[0, 3, 4, 1, 5, 2])
        else:
            y = g.op("Reshape", [g.inputs[0], g.int64s(big, "spread")])
            y = g.op("Transpose", [y], perm=[0, 3, 5, 1, 2, 4])
        g.op("Reshape", [y, g.int64s(self.infer_shape(a, s), "shape")], g.outputs)


# -- Padding (DeepLab) ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PaddingAttrs:
    beg: int
    end: int


@register
class Padding(Layer):
    """DeepLab v1's Padding (padding_layer.cpp): the same pad_beg rows/columns before and pad_end
    after, on both H and W. Both >= 0: zeros around the input; both <= 0: a crop of -pad_beg at
    the start and -pad_end at the end. Signs may not mix (the fork stops), and the output must
    keep a positive size."""

    type_name = "Padding"
    examples = (
        Example('layer { name: "p" type: "Padding" bottom: "in0" top: "out" padding_param { pad_beg: 1 pad_end: 2 } }',
                ((2, 3, 3, 4),), "pad"),
        Example('layer { name: "p" type: "Padding" bottom: "in0" top: "out" '
                'padding_param { pad_beg: -1 pad_end: -2 } }', ((1, 2, 5, 6),), "crop"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> PaddingAttrs:
        p = layer.padding_param
        beg, end = int(p.pad_beg), int(p.pad_end)
        if not ((beg >= 0 and end >= 0) or (beg <= 0 and end <= 0)):
            raise ctx.error(f"pad_beg {beg} and pad_end {end} must both be >= 0 (padding) or both <= 0 (a crop)")
        return PaddingAttrs(beg, end)

    def infer(self, a: PaddingAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        s = shapes[0]
        need_4d(s, ctx)
        h, w = s[2] + a.beg + a.end, s[3] + a.beg + a.end
        if h <= 0 or w <= 0:
            raise ctx.error(f"pad_beg {a.beg} and pad_end {a.end} leave a {h}x{w} output from {tuple(s)}")
        return [(s[0], s[1], h, w)]

    def kernel(self, a: PaddingAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        if a.beg >= 0 and a.end >= 0:
            return [np.pad(x, ((0, 0), (0, 0), (a.beg, a.end), (a.beg, a.end)))]
        h, wd = x.shape[2:]
        return [x[:, :, -a.beg:h + a.end, -a.beg:wd + a.end]]

    def lower(self, a: PaddingAttrs, g: Lowering) -> None:
        # ONNX Pad takes negative pads as a crop
        g.op("Pad", [g.inputs[0], g.int64s([0, 0, a.beg, a.beg, 0, 0, a.end, a.end], "pads")], g.outputs,
             mode="constant")


@register
class MatWrite(Silence):
    """DeepLab v1's MatWrite writes its bottom to one .mat file per image, at paths the prototxt
    names. A compiled net writes no files that a definition names: here it consumes its bottoms
    and has no tops, as Silence does, so a blob that only goes into it is a net output."""

    type_name = "MatWrite"
    examples = (
        Example('layer { name: "m" type: "MatWrite" bottom: "in0" mat_write_param { prefix: "out/" } }\n'
                'layer { name: "r" type: "ReLU" bottom: "in1" top: "out" }', ((1, 2, 3, 3), (2, 2)), "sink"),
    )


# -- Permute -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PermuteAttrs:
    order: tuple[int, ...]


@register
class Permute(Layer):
    """SSD's Permute: output axis i is input axis order[i]; axes missing from ``order`` follow in
    their original order (so order 0 2 3 1 on 4-D equals order 0 2 3)."""

    type_name = "Permute"
    examples = (
        Example('layer { name: "p" type: "Permute" bottom: "in0" top: "out" '
                'permute_param { order: 0 order: 2 order: 3 order: 1 } }', ((2, 3, 4, 5),), "nhwc"),
        Example('layer { name: "p" type: "Permute" bottom: "in0" top: "out" permute_param { order: 1 } }',
                ((2, 3, 4),), "trailing"),
        Example('layer { name: "p" type: "Permute" bottom: "in0" top: "out" }', ((2, 3),), "identity"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> PermuteAttrs:
        order = tuple(int(o) for o in layer.permute_param.order)
        if len(set(order)) != len(order):
            raise ctx.error(f"order {list(order)} repeats an axis")
        return PermuteAttrs(order)

    def resolve(self, a: PermuteAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> PermuteAttrs:
        """The full permutation: the given axes, then the others in their order."""
        n = len(shapes[0])
        bad = [o for o in a.order if o >= n]
        if bad:
            raise ctx.error(f"order {list(a.order)} names axis {bad[0]}, but the input has {n} axes")
        return PermuteAttrs(a.order + tuple(i for i in range(n) if i not in a.order))

    def infer(self, a: PermuteAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [tuple(shapes[0][i] for i in a.order)]

    def kernel(self, a: PermuteAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [np.transpose(xs[0], a.order)]

    def lower(self, a: PermuteAttrs, g: Lowering) -> None:
        g.op("Transpose", g.inputs, g.outputs, perm=list(a.order))


# -- Flip ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FlipAttrs:
    flip_width: bool
    flip_height: bool


@register
class Flip(Layer):
    """happynear/caffe-windows' Flip (AM-Softmax's mirrored test pass): the image mirrored,
    top[n, c, h, w] = bottom[n, c, h', w'] with w' = W - 1 - w under ``flip_width`` (default on)
    and h' = H - 1 - h under ``flip_height`` (default off). The fork reads Caffe's legacy
    height()/width(): axis 2 and axis 3 where the bottom has them (a missing one is 1, unflipped)."""

    type_name = "Flip"
    examples = (
        Example('layer { name: "f" type: "Flip" bottom: "in0" top: "out" }', ((2, 3, 4, 5),), "width"),
        Example('layer { name: "f" type: "Flip" bottom: "in0" top: "out" '
                'flip_param { flip_width: false flip_height: true } }', ((2, 3, 4, 5),), "height"),
        Example('layer { name: "f" type: "Flip" bottom: "in0" top: "out" flip_param { flip_height: true } }',
                ((2, 3, 4),), "3d"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> FlipAttrs:
        p = layer.flip_param
        return FlipAttrs(bool(p.flip_width), bool(p.flip_height))

    def infer(self, a: FlipAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        _need_2_to_4d(shapes[0], ctx)
        return [shapes[0]]

    def _axes(self, a: FlipAttrs, ndim: int) -> list[int]:
        return [ax for ax, on in ((2, a.flip_height), (3, a.flip_width)) if on and ax < ndim]

    def kernel(self, a: FlipAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        axes = self._axes(a, xs[0].ndim)
        return [np.flip(xs[0], axis=axes).copy() if axes else xs[0]]

    def lower(self, a: FlipAttrs, g: Lowering) -> None:
        axes = self._axes(a, len(g.in_shapes[0]))
        if not axes:
            g.op("Identity", g.inputs, g.outputs)
            return
        n = len(axes)
        g.op("Slice", [g.inputs[0], g.int64s([-1] * n, "starts"), g.int64s([-2 ** 63] * n, "ends"),
                       g.int64s(axes, "axes"), g.int64s([-1] * n, "steps")], g.outputs)


# -- Normalize -----------------------------------------------------------------------------------

#: what happynear/caffe-windows' Normalize adds to the per-position sum (of squares for L2, of
#: absolute values for L1) before dividing: 1e-6 in its Forward_cpu (its CUDA kernel adds 1e-12 for
#: L2; protonet follows the CPU code, the fork's reference)
FEATURE_NORM_EPS = 1e-6


@dataclass(frozen=True)
class NormalizeAttrs:
    across_spatial: bool
    channel_shared: bool
    eps: float
    filler: Filler
    #: "" for SSD's Normalize (norm_param); "L2" or "L1" for happynear/caffe-windows' (normalize_param)
    normalize_type: str = ""


@register
class Normalize(Layer):
    """SSD's L2 normalisation, per image: y = x / sqrt(Σ x² + eps) · scale. eps is added to the
    sum of squares, inside the square root (not to the norm). across_spatial: one sum over all of
    C·H·W; otherwise one per pixel over the channels. The scale blob is one value
    (channel_shared, shape ()) or one per channel (C,); filled with 1 unless scale_filler is set.

    With ``normalize_param`` (happynear/caffe-windows, AM-Softmax's face nets) it is that fork's
    Normalize instead: no blobs, one norm per sample and position over the channels, L2:
    y = x / sqrt(Σ_c x² + 1e-6), L1: y = x / (Σ_c |x| + 1e-6). The fork writes its top with
    the legacy 4-D shape (N, C, H, W), so a 2-D (N, C) bottom gives an (N, C, 1, 1) top.
    ``fix_gradient`` and ``bp_norm`` change only the backward pass."""

    type_name = "Normalize"
    examples = (
        Example('layer { name: "n" type: "Normalize" bottom: "in0" top: "out" }', ((2, 3, 4, 4),), "across_shared"),
        Example('layer { name: "n" type: "Normalize" bottom: "in0" top: "out" '
                'norm_param { across_spatial: false channel_shared: false eps: 0.001 } }', ((2, 4, 3, 5),),
                "per_pixel"),
        Example('layer { name: "n" type: "Normalize" bottom: "in0" top: "out" '
                'norm_param { across_spatial: true channel_shared: false } }', ((2, 5),), "2d"),
        Example('layer { name: "n" type: "Normalize" bottom: "in0" top: "out" '
                'normalize_param { normalize_type: "L2" } }', ((2, 6),), "happynear_l2"),
        Example('layer { name: "n" type: "Normalize" bottom: "in0" top: "out" '
                'normalize_param { normalize_type: "L1" fix_gradient: true } }', ((2, 3, 2, 4),), "happynear_l1"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> NormalizeAttrs:
        if layer.HasField("normalize_param"):
            if layer.HasField("norm_param"):
                raise ctx.error("both norm_param (SSD's Normalize) and normalize_param "
                                "(happynear/caffe-windows') are set; a Normalize is one or the other")
            kind = layer.normalize_param.normalize_type
            if kind not in ("L2", "L1"):
                raise ctx.error(f'normalize_type must be "L2" or "L1" (happynear/caffe-windows), got {kind!r}')
            return NormalizeAttrs(False, True, FEATURE_NORM_EPS, CONSTANT_ONE, kind)
        p = layer.norm_param
        if p.eps < 0:
            raise ctx.error(f"eps must be non-negative, got {p.eps}")
        return NormalizeAttrs(bool(p.across_spatial), bool(p.channel_shared), float(p.eps),
                              Filler.from_proto(p.scale_filler, default=CONSTANT_ONE))

    def infer(self, a: NormalizeAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        _need_2_to_4d(shapes[0], ctx)
        if a.normalize_type:
            return [tuple(shapes[0]) + (1,) * (4 - len(shapes[0]))]
        return [shapes[0]]

    def weights(self, a: NormalizeAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        if a.normalize_type:
            return []
        return [WeightSpec("scale", () if a.channel_shared else (shapes[0][1],), a.filler)]

    def _axes(self, a: NormalizeAttrs, ndim: int) -> list[int]:
        return list(range(1, ndim)) if a.across_spatial else [1]

    def kernel(self, a: NormalizeAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        axes = tuple(self._axes(a, x.ndim))
        if a.normalize_type == "L1":
            return [_as_4d(x / (np.abs(x).sum(axis=axes, keepdims=True) + a.eps))]
        norm = np.sqrt((x * x).sum(axis=axes, keepdims=True) + a.eps)
        if a.normalize_type:
            return [_as_4d(x / norm)]
        scale = w["scale"]
        if not a.channel_shared:
            scale = scale.reshape(channel_shape(x.shape[1], x.ndim))
        return [x / norm * scale]

    def lower(self, a: NormalizeAttrs, g: Lowering) -> None:
        ndim = len(g.in_shapes[0])
        x = g.inputs[0]
        axes = self._axes(a, ndim)
        eps = g.const(a.eps, "eps")
        if a.normalize_type == "L1":
            norm = g.op("Add", [g.op("ReduceL1", [x], axes=axes, keepdims=1), eps])
        else:
            norm = g.op("Sqrt", [g.op("Add", [g.op("ReduceSumSquare", [x], axes=axes, keepdims=1), eps])])
        if a.normalize_type:
            if ndim == 4:
                g.op("Div", [x, norm], g.outputs)
            else:
                g.op("Reshape", [g.op("Div", [x, norm]), g.int64s([0] * ndim + [1] * (4 - ndim), "shape")],
                     g.outputs)
            return
        y = g.op("Div", [x, norm])
        scale = g.weights["scale"]
        if not a.channel_shared:
            scale = scale.reshape(channel_shape(g.in_shapes[0][1], ndim))
        g.op("Mul", [y, g.weight("scale", scale)], g.outputs)


def _as_4d(x: np.ndarray) -> np.ndarray:
    """``x`` with trailing axes of 1 up to Caffe's legacy 4-D shape (N, C, H, W)."""
    return x.reshape(x.shape + (1,) * (4 - x.ndim))


# -- Axpy ----------------------------------------------------------------------------------------

@register
class Axpy(Layer):
    """SENet's Axpy with bottoms (a, x, y): top = a · x + y, where a is (N, C) or (N, C, 1, 1),
    one factor per image and channel, and x and y have the same shape."""

    type_name = "Axpy"
    num_bottoms = (3, 3)
    examples = (
        Example('layer { name: "a" type: "Axpy" bottom: "in0" bottom: "in1" bottom: "in2" top: "out" }',
                ((2, 3, 1, 1), (2, 3, 4, 5), (2, 3, 4, 5)), "4d"),
        Example('layer { name: "a" type: "Axpy" bottom: "in0" bottom: "in1" bottom: "in2" top: "out" }',
                ((2, 3), (2, 3, 4), (2, 3, 4)), "2d_scale"),
    )

    def infer(self, a: Any, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        sa, sx, sy = (tuple(s) for s in shapes)
        if len(sx) < 2 or len(sa) < 2 or sa[:2] != sx[:2] or any(d != 1 for d in sa[2:]):
            raise ctx.error(f"bottom 0 (the factors) must be (N, C) or (N, C, 1, 1) matching bottom 1 "
                            f"{sx}, got {sa}")
        if sx != sy:
            raise ctx.error(f"bottoms 1 and 2 must have the same shape, got {sx} and {sy}")
        return [sx]

    def kernel(self, a: Any, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        f, x, y = xs
        return [f.reshape(f.shape[:2] + (1,) * (x.ndim - 2)) * x + y]

    def lower(self, a: Any, g: Lowering) -> None:
        ndim = len(g.in_shapes[1])
        f = g.op("Reshape", [g.inputs[0], g.int64s([0, 0] + [1] * (ndim - 2), "shape")])
        g.op("Add", [g.op("Mul", [f, g.inputs[1]]), g.inputs[2]], g.outputs)


# -- BN (fork batch norm) -------------------------------------------------------------------------

SEGNET_VAR_EPS = 1e-9  # hard-coded in SegNet's bn_layer.cpp


@dataclass(frozen=True)
class BNAttrs:
    layout: str  # "pspnet" (4 blobs) or "segnet" (2 blobs)
    eps: float
    segnet_inference: bool
    filler_scale: Filler
    filler_shift: Filler
    frozen: bool


@register
class BN(Layer):
    """The forks' "BN" layer (batch norm with its own scale and shift), two layouts:

    * PSPNet (hszhao/PSPNet, from yjxiong/caffe; used when no SegNet field is set): blobs
      slope, bias, mean, variance, each (1, C, 1, 1); in TEST phase
      y = slope · (x − mean) / sqrt(variance + eps) + bias (eps from bn_param, default 1e-5).
    * SegNet (alexgkendall/caffe-segnet; chosen by bn_mode / scale_filler / shift_filler):
      blobs scale, shift, each (1, C, 1, 1). bn_mode INFERENCE: y = scale · x + shift (the
      statistics are folded into the blobs); LEARN: the batch's own statistics,
      y = scale · (x − E[x]) / sqrt(E[x²] − E[x]² + 1e-9) + shift, over N, H, W (caffe-segnet's
      bn_layer.cpp computes it in that order in every phase: its bn_mode LEARN, the default,
      normalizes with the batch's statistics at test time too).

    In LEARN mode the kernel (float64) computes the fork's formula as written. The ONNX lowering
    (float32) computes the same values in the numerically stable way: with k each channel's first
    element, d = x − k, then x − E[x] = d − E[d] and the variance E[(d − E[d])²]. E[x²] − E[x]²
    cancels where a channel's mean is large against its spread (|mean|/std of 30-50 after a ReLU
    and a convolution with a bias is common), and float32 sums of a few 10⁵ squares then lose
    about (mean/std)² · 1e-7 of the variance, 2e-3 of it in SegNet's conv1_2_bn; a float32 sum of
    x itself loses about (mean/std) · 1e-6 of a standard deviation in the mean, which the shift by
    k removes.
    """

    type_name = "BN"
    examples = (
        Example('layer { name: "bn" type: "BN" bottom: "in0" top: "out" }', ((2, 3, 4, 4),), "pspnet"),
        Example('layer { name: "bn" type: "BN" bottom: "in0" top: "out" bn_param { eps: 0.001 } }',
                ((2, 5),), "pspnet_2d"),
        Example('layer { name: "bn" type: "BN" bottom: "in0" top: "out" bn_param { bn_mode: INFERENCE } }',
                ((2, 3, 3, 2),), "segnet_inference"),
        Example('layer { name: "bn" type: "BN" bottom: "in0" top: "out" '
                'bn_param { scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" } } }',
                ((3, 2, 4, 4),), "segnet_learn"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> BNAttrs:
        p = layer.bn_param
        segnet = p.HasField("bn_mode") or p.HasField("scale_filler") or p.HasField("shift_filler")
        if segnet:
            if p.HasField("slope_filler") or p.HasField("bias_filler"):
                raise ctx.error("mixes SegNet's fields (bn_mode, scale_filler, shift_filler) with PSPNet's "
                                "(slope_filler, bias_filler); use one fork's layout")
            inference = type(p).BNMode.Name(p.bn_mode) == "INFERENCE"
            return BNAttrs("segnet", SEGNET_VAR_EPS, inference, Filler.from_proto(p.scale_filler),
                           Filler.from_proto(p.shift_filler), False)
        if p.eps < 0:
            raise ctx.error(f"eps must be non-negative, got {p.eps}")
        return BNAttrs("pspnet", float(p.eps), False, Filler.from_proto(p.slope_filler),
                       Filler.from_proto(p.bias_filler), bool(p.frozen))

    def infer(self, a: Any, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        _need_2_to_4d(shapes[0], ctx)
        return [shapes[0]]

    def ill_conditioned(self, a: BNAttrs) -> bool:
        """LEARN mode divides each channel's deviations by its own spread: a bottom's rounding,
        relative to its magnitude |mean| + std, comes out |mean|/std times larger relative to
        the top's (SegNet's train net with random weights: up to 30-50 times)."""
        return a.layout == "segnet" and not a.segnet_inference

    def weights(self, a: BNAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        shape = (1, shapes[0][1], 1, 1)
        if a.layout == "segnet":
            return [WeightSpec("scale", shape, a.filler_scale), WeightSpec("shift", shape, a.filler_shift, "bias")]
        return [WeightSpec("slope", shape, a.filler_scale), WeightSpec("bias", shape, a.filler_shift, "bias"),
                WeightSpec("mean", shape, CONSTANT_ZERO, "state"),
                WeightSpec("variance", shape, CONSTANT_ONE if a.frozen else CONSTANT_ZERO, "state", positive=True)]

    def _affine(self, a: BNAttrs, w: dict, c: int, ndim: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-channel (multiplier, offset) when the layer is affine (not batch statistics)."""
        cs = channel_shape(c, ndim)
        if a.layout == "segnet":
            if not a.segnet_inference:
                return None
            return w["scale"].reshape(cs), w["shift"].reshape(cs)
        inv = w["slope"].reshape(cs) / np.sqrt(w["variance"].reshape(cs) + a.eps)
        return inv, w["bias"].reshape(cs) - w["mean"].reshape(cs) * inv

    def kernel(self, a: BNAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x = xs[0]
        cs = channel_shape(x.shape[1], x.ndim)
        if a.layout == "pspnet":
            mean, var = w["mean"].reshape(cs), w["variance"].reshape(cs)
            return [w["slope"].reshape(cs) * (x - mean) / np.sqrt(var + a.eps) + w["bias"].reshape(cs)]
        if a.segnet_inference:
            return [w["scale"].reshape(cs) * x + w["shift"].reshape(cs)]
        axes = (0,) + tuple(range(2, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = (x * x).mean(axis=axes, keepdims=True) - mean * mean
        return [(x - mean) / np.sqrt(var + a.eps) * w["scale"].reshape(cs) + w["shift"].reshape(cs)]

    def lower(self, a: BNAttrs, g: Lowering) -> None:
        s = g.in_shapes[0]
        x = g.inputs[0]
        aff = self._affine(a, {k: np.asarray(v, np.float64) for k, v in g.weights.items()}, s[1], len(s))
        if aff is not None:
            y = g.op("Mul", [x, g.const(aff[0], "mul")])
            g.op("Add", [y, g.const(aff[1], "add")], g.outputs)
            return
        cs = channel_shape(s[1], len(s))
        axes = [0] + list(range(2, len(s)))
        # the statistics of x − k, k each channel's first element: the same deviations, but the
        # float32 sums add values of the channel's spread, not of its mean; and the variance as
        # the mean of squared deviations (see the class docstring)
        first = g.op("Slice", [x, g.int64s([0] * len(axes), "starts"), g.int64s([1] * len(axes), "ends"),
                               g.int64s(axes, "axes")])
        shifted = g.op("Sub", [x, first])
        mean = g.op("ReduceMean", [shifted], axes=axes, keepdims=1)
        dev = g.op("Sub", [shifted, mean])
        var = g.op("ReduceMean", [g.op("Mul", [dev, dev])], axes=axes, keepdims=1)
        std = g.op("Sqrt", [g.op("Add", [var, g.const(a.eps, "eps")])])
        y = g.op("Div", [dev, std])
        y = g.op("Mul", [y, g.weight("scale", g.weights["scale"].reshape(cs))])
        g.op("Add", [y, g.weight("shift", g.weights["shift"].reshape(cs))], g.outputs)


# -- ROIPooling ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ROIPoolAttrs:
    pooled_h: int
    pooled_w: int
    spatial_scale: float


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's round(): halves go away from zero (numpy's round goes to even). The addition is done
    in float64, where it is exact for float32 inputs (0.49999997 + 0.5 must not round up)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


@register
class ROIPooling(Layer):
    """Fast R-CNN max pooling of each ROI (bottom 1, rows [batch_idx, x1, y1, x2, y2] in image
    coordinates) of bottom 0 into a pooled_h × pooled_w grid. Caffe's arithmetic, in float32:
    the corners are round(coord · spatial_scale) with halves away from zero; the ROI spans
    max(end − start + 1, 1) cells; bin i covers [floor(i·bin), ceil((i+1)·bin)) from the ROI
    start, bin = span / pooled, clipped to the map; an empty bin gives 0.

    onnxruntime's MaxRoiPool (CPU) uses the same rounding and bin arithmetic, but starts each bin's
    maximum at FLT_MIN (the smallest positive float, 1.2e-38) instead of −FLT_MAX, so a bin whose
    values are all ≤ 0 comes out as 1.2e-38 instead of its (negative) maximum. The lowering
    compensates: it pools x − m with m = min(x) − 1 (all values ≥ 1), adds m back, and multiplies
    by the pooled all-ones map (0 exactly on empty bins), which costs one float32 rounding of
    (x − m) + m."""

    type_name = "ROIPooling"
    num_bottoms = (2, 2)
    examples = (
        Example('layer { name: "r" type: "ROIPooling" bottom: "in0" bottom: "in1" top: "out" '
                'roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 1 } }', ((2, 3, 6, 7), (4, 5)),
                "scale1", int_inputs={1: 2}),
        Example('layer { name: "r" type: "ROIPooling" bottom: "in0" bottom: "in1" top: "out" '
                'roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.5 } }',
                ((1, 2, 8, 8), (3, 5, 1, 1)), "scale_half", int_inputs={1: 1}),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ROIPoolAttrs:
        p = layer.roi_pooling_param
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise ctx.error(f"pooled_h and pooled_w must be positive, got {p.pooled_h} and {p.pooled_w}")
        return ROIPoolAttrs(int(p.pooled_h), int(p.pooled_w), float(p.spatial_scale))

    def infer(self, a: ROIPoolAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        s, r = shapes
        need_4d(s, ctx)
        if len(r) < 2 or prod(r[1:]) != 5:
            raise ctx.error(f"rois bottom must be (R, 5) rows [batch_index, x1, y1, x2, y2], got shape {tuple(r)}")
        check_constant(ctx, "the all-ones map the lowering pools", (s[0], 1, s[2], s[3]))
        return [(r[0], s[1], a.pooled_h, a.pooled_w)]

    def _bins(self, start: int, span: int, pooled: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) of each bin, float32 as in Caffe, clipped to [0, size]."""
        bin_size = np.float32(span) / np.float32(pooled)
        i = np.arange(pooled, dtype=np.float32)
        lo = np.floor(i * bin_size).astype(np.int64) + start
        hi = np.ceil((i + np.float32(1)) * bin_size).astype(np.int64) + start
        return np.clip(lo, 0, size), np.clip(hi, 0, size)

    def kernel(self, a: ROIPoolAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x, rois = xs
        n, c, h, wd = x.shape
        rois = rois.reshape(rois.shape[0], 5).astype(np.float32)
        out = np.zeros((rois.shape[0], a.pooled_h, a.pooled_w, c), dtype=x.dtype)  # channels last
        batch = np.trunc(rois[:, 0])  # Caffe's int conversion
        bad = np.flatnonzero(~((batch >= 0) & (batch < n)))  # NaN included
        if bad.size:
            raise ProtonetError(f"ROI {int(bad[0])} has batch index {rois[bad[0], 0]:g}, outside the batch of {n}")
        scaled = rois[:, 1:] * np.float32(a.spatial_scale)
        if not (np.abs(scaled) < 2.0 ** 31).all():  # NaN and inf included
            raise ProtonetError("ROI corners must be finite numbers within the int32 range once scaled")
        corners = round_half_away(scaled).astype(np.int64)
        xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # (N, H, W, C): every max runs over whole C vectors
        for r in range(rois.shape[0]):  # per ROI, per bin row, per bin: each a slice's max
            b = int(rois[r, 0])
            x1, y1, x2, y2 = (int(v) for v in corners[r])
            hs, he = self._bins(y1, max(y2 - y1 + 1, 1), a.pooled_h, h)
            ws, we = self._bins(x1, max(x2 - x1 + 1, 1), a.pooled_w, wd)
            rows, cols = np.flatnonzero(he > hs), np.flatnonzero(we > ws)  # an empty bin stays 0
            if not (rows.size and cols.size):
                continue
            w0, w1 = int(ws.min()), int(we.max())
            for i in rows:
                row = xl[b, hs[i]:he[i], w0:w1].max(axis=0)  # (W', C): the bin row's max over its rows
                for j in cols:
                    out[r, i, j] = row[ws[j] - w0:we[j] - w0].max(axis=0)
        return [np.ascontiguousarray(out.transpose(0, 3, 1, 2))]

    def sample_input(self, a: ROIPoolAttrs, i: int, in_shapes: Sequence[Shape],
                     rng: np.random.Generator) -> np.ndarray | None:
        return random_rois(in_shapes[0], in_shapes[1], a.spatial_scale, rng) if i == 1 else None

    def lower(self, a: ROIPoolAttrs, g: Lowering) -> None:
        s, r = g.in_shapes
        x, rois = g.inputs
        if len(r) != 2:
            rois = g.op("Reshape", [rois, g.int64s([-1, 5], "rois2d")])
        attrs = dict(pooled_shape=[a.pooled_h, a.pooled_w], spatial_scale=a.spatial_scale)
        low = g.op("Sub", [g.op("ReduceMin", [x], keepdims=1), g.const(1.0, "one")])
        pooled = g.op("MaxRoiPool", [g.op("Sub", [x, low]), rois], **attrs)
        ones = g.op("ConstantOfShape", [g.shape_from(x, 1, [1, s[2], s[3]], "ones_shape")],
                    value=np.ones(1, dtype=np.float32))
        nonempty = g.op("MaxRoiPool", [ones, rois], **attrs)
        g.op("Mul", [g.op("Add", [pooled, low]), nonempty], g.outputs)
