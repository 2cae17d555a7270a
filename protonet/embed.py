"""``--embed-preprocess``: the photo preprocessing as ONNX nodes in front of the net.

The model's image input (it keeps the net input's name) is a uint8 ``N x H x W x C`` image, RGB
for C = 3 (what decoders, cameras and serving systems hand over):

``Transpose`` (NCHW) -> ``Gather`` (RGB -> BGR, for a BGR net) -> resize and centre crop ->
``Sub`` (mean) -> ``Mul`` (scale) -> the net.

The resize and crop are OpenCV's 8-bit INTER_LINEAR (:func:`protonet.images.resize_bilinear_u8`)
in int32 ``Gather``/``Mul``/``Div`` nodes, evaluated only at the output pixels of the crop window,
so the model's numbers are bit for bit :func:`protonet.images.preprocess_image` on the decoded
photo, and ``cv2.dnn.blobFromImage``'s. (ONNX ``Resize``, mode ``linear`` with ``half_pixel``
coordinates, has INTER_LINEAR's pixel centres but computes in floating point: up to 1.125 grey
levels from OpenCV's 8-bit result, which moves res10's face scores by 1.3e-3; so it is not used.)

* ``image_size`` given (fixed H x W): the taps are constants planned at compile time
  (:func:`protonet.images.resize_plan`, :func:`protonet.images.opencv_taps`), and only the source
  rows they read are gathered, transposed and widened to int32. An image of the target size is
  only cropped.
* otherwise H and W are symbolic (``height``, ``width``): any image size is taken and the taps are
  computed in the graph from the image's shape (:func:`_axis_taps`: the same IEEE operations in
  the same precisions as OpenCV, so the same integers), for an exact target size (``--resize
  H,W``, a mean image's size, else the net's) or the shorter side (``--resize S``, the factor
  computed in float32 as ``blobFromImage(crop=True)`` does). Caffe's crop without a mean file
  (which keeps an image already of the input's size) and a mean image under a shorter-side resize
  need the image size.

The mean (per channel, or the mean file's pixels under the crop) and the scale are constants.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import Location, ProtonetError
from .export import LARGE_INITIALIZER_BYTES, Built
from .frontend.deploy import METADATA_KEY
from .frontend.preprocess import Preprocess
from .images import COEF_SCALE, mean_for, opencv_taps, resize_plan


class _Graph:
    """The nodes and constants put in front of the net (names under ``<input>:pre<k>:``)."""

    def __init__(self, prefix: str, large: dict[str, np.ndarray]) -> None:
        self.prefix, self.large = prefix, large
        self.nodes: list[onnx.NodeProto] = []
        self.consts: list[onnx.TensorProto] = []

    def name(self, what: str) -> str:
        return f"{self.prefix}:pre{len(self.nodes) + len(self.consts) + len(self.large)}:{what}"

    def const(self, what: str, value: np.ndarray | float | int, dtype: Any = None) -> str:
        value = np.asarray(value, dtype=dtype)
        key = self.name(what)
        if value.nbytes >= LARGE_INITIALIZER_BYTES:
            self.large[key] = value
        else:
            self.consts.append(numpy_helper.from_array(value, key))
        return key

    def op(self, kind: str, *ins: str, **attrs: object) -> str:
        out = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, list(ins), [out], name=out, **attrs))
        return out


def _axis_taps(g: _Graph, n_in: str, inv_scale: str, top: str, count: int, clamp: bool) -> tuple[str, ...]:
    """:func:`protonet.images.opencv_taps` as nodes, for output pixels ``top .. top + count - 1`` of
    an axis of ``n_in`` (int64 [1]) pixels resized by ``inv_scale`` (double [1]): the same IEEE
    operations in the same precisions (double coordinates rounded to float32, float32 fraction,
    weights rounded half to even), so the same integers. Returns (i0, i1, w0, w1)."""
    d = g.op("Add", g.const("d", np.arange(count) + 0.5, np.float64), g.op("Cast", top, to=TensorProto.DOUBLE))
    scale = g.op("Div", g.const("one", 1.0, np.float64), inv_scale)
    src = g.op("Cast", g.op("Sub", g.op("Mul", d, scale), g.const("half", 0.5, np.float64)), to=TensorProto.FLOAT)
    i0f = g.op("Floor", src)
    frac = g.op("Sub", src, i0f)
    i0 = g.op("Cast", i0f, to=TensorProto.INT64)
    last = g.op("Sub", n_in, g.const("one", [1], np.int64))
    zero = g.const("zero", [0], np.int64)
    if clamp:  # horizontally, outside the pixel centres: the edge pixel, whole
        outside = g.op("Or", g.op("Less", i0, zero), g.op("GreaterOrEqual", i0, last))
        frac = g.op("Where", outside, g.const("zero", 0.0, np.float32), frac)
    coef = g.const("coef", float(COEF_SCALE), np.float32)
    w0 = g.op("Cast", g.op("Round", g.op("Mul", g.op("Sub", g.const("one", 1.0, np.float32), frac), coef)),
              to=TensorProto.INT32)
    w1 = g.op("Cast", g.op("Round", g.op("Mul", frac, coef)), to=TensorProto.INT32)
    i1 = g.op("Min", g.op("Max", g.op("Add", i0, g.const("one", [1], np.int64)), zero), last)
    return g.op("Min", g.op("Max", i0, zero), last), i1, w0, w1


def _fixed_point_resize(g: _Graph, x: str, ys: tuple[str, ...], xs: tuple[str, ...]) -> str:
    """OpenCV's 8-bit INTER_LINEAR (:func:`protonet.images.resize_bilinear_u8`) on int32 NCHW ``x``
    with the taps (i0, i1, w0, w1) of the rows ``ys`` and columns ``xs``; returns float."""
    def products(src: str, i0: str, i1: str, w0: str, w1: str, axis: int) -> list[str]:
        if axis == 2:  # a row's weight multiplies the whole row
            w0, w1 = (g.op("Unsqueeze", wt, g.const("axis", [1], np.int64)) for wt in (w0, w1))
        return [g.op("Mul", g.op("Gather", src, i, axis=axis), wt) for i, wt in ((i0, w0), (i1, w1))]

    rows = g.op("Div", g.op("Add", *products(x, *xs, axis=3)), g.const("sixteen", 16, np.int32))  # >> 4
    high = g.const("high", 1 << 16, np.int32)
    t = g.op("Add", *(g.op("Div", p, high) for p in products(rows, *ys, axis=2)))  # each product >> 16
    x = g.op("Div", g.op("Add", t, g.const("two", 2, np.int32)), g.const("four", 4, np.int32))
    x = g.op("Clip", x, g.const("lo", 0, np.int32), g.const("hi", 255, np.int32))
    return g.op("Cast", x, to=TensorProto.FLOAT)


def _target(meta: Preprocess, net_hw: tuple[int, int]) -> tuple[tuple[int, int] | None, int]:
    """The resize whatever the image size: an exact (H, W) target, or the shorter side S (one is
    given); None, 0 when it depends on the image size (Caffe's crop without a mean file)."""
    if meta.resize:
        return meta.resize, 0
    if meta.resize_shorter:
        return None, meta.resize_shorter
    if meta.crop_hw and len(meta.mean_shape) == 3:
        return (meta.mean_shape[1], meta.mean_shape[2]), 0
    if meta.crop_hw:
        return None, 0
    return net_hw, 0


def embed_preprocess(built: Built, meta: Preprocess | None, image_size: tuple[int, int] | None = None) -> Built:
    """A copy of ``built`` whose graph applies ``meta`` to a uint8 NHWC image (module docstring);
    its metadata records the preprocessing with ``embedded`` set."""
    if meta is None:
        raise ProtonetError("--embed-preprocess: the model has no preprocessing to embed; give --mean, --scale, "
                            "--resize, --crop or --channels (or a train_val data layer)")
    model = onnx.ModelProto()
    model.CopyFrom(built.structure)
    if meta.input not in {v.name for v in model.graph.input}:
        raise ProtonetError(f"--embed-preprocess: the model has no input {meta.input!r}")
    n, c, h, w = (int(d) for d in meta.shape) if len(meta.shape) == 4 else (0, 0, 0, 0)  # N <= 0: dynamic
    first = next(v for v in model.graph.input if v.name == meta.input).type.tensor_type.shape.dim
    n = 0 if first and first[0].HasField("dim_param") else n  # a model compiled with --batch dynamic
    if c not in (1, 3) or h <= 0 or w <= 0:
        raise ProtonetError(f"--embed-preprocess: input {meta.input!r} of shape {meta.shape} is not a fixed "
                            f"N x 1|3 x H x W image input")
    if meta.crop_hw and meta.crop_hw != (h, w):
        raise ProtonetError(f"--embed-preprocess: the centre crop {meta.crop_hw[0]}x{meta.crop_hw[1]} differs from "
                            f"the input's {h}x{w}")
    exact, shorter = _target(meta, (h, w))
    if image_size is None and exact is None and not shorter:
        raise ProtonetError("--embed-preprocess: Caffe's crop without a mean file resizes by the image's own size; "
                            "give the image size with --image-size H,W, or --resize")
    if image_size is None and shorter and len(meta.mean_shape) == 3:
        raise ProtonetError("--embed-preprocess: a mean image under a crop of a shorter-side resize needs the image "
                            "size: give --image-size H,W")
    if exact is not None and (exact[0] < h or exact[1] < w):
        raise ProtonetError(f"--embed-preprocess: the image resized to {exact[0]}x{exact[1]} is smaller than the "
                            f"input's {h}x{w}")
    if shorter and shorter < max(h, w):
        raise ProtonetError(f"--embed-preprocess: the shorter side resized to {shorter} is smaller than the input's "
                            f"{h}x{w}")
    g = _Graph(meta.input, dict(built.large))

    def nchw(x: str) -> str:
        x = g.op("Transpose", x, perm=[0, 3, 1, 2])
        if c == 3 and meta.channel_order.upper() == "BGR":
            x = g.op("Gather", x, g.const("bgr", [2, 1, 0], np.int64), axis=1)
        return x

    if image_size is None:  # any image size: the taps computed from the image's shape
        shape = g.op("Shape", meta.input)
        sides = [g.op("Slice", shape, g.const("at", [k], np.int64), g.const("to", [k + 1], np.int64))
                 for k in (1, 2)]
        if exact is not None:
            invs = [g.op("Div", g.const("out", [float(t)], np.float64), g.op("Cast", s, to=TensorProto.DOUBLE))
                    for t, s in zip(exact, sides)]
            tops = [g.const("top", [(t - k) // 2], np.int64) for t, k in zip(exact, (h, w))]
            mean_hw, offset = exact, ((exact[0] - h) // 2, (exact[1] - w) // 2)
        else:  # blobFromImage(crop=True)'s factor: float32 S / side, sizes round(side * f)
            s32 = g.const("side", float(shorter), np.float32)
            f = g.op("Max", *(g.op("Div", s32, g.op("Cast", s, to=TensorProto.FLOAT)) for s in reversed(sides)))
            invs = [g.op("Cast", f, to=TensorProto.DOUBLE)] * 2
            tops = [g.op("Div", g.op("Sub", g.op("Cast", g.op("Round", g.op("Mul", g.op("Cast", s, to=TensorProto.DOUBLE),
                                                                           invs[0])), to=TensorProto.INT64),
                                     g.const("crop", [k], np.int64)), g.const("two", [2], np.int64))
                    for s, k in zip(sides, (h, w))]
            mean_hw, offset = (0, 0), (0, 0)  # a mean image needs the image size (refused above)
        ys = _axis_taps(g, sides[0], invs[0], tops[0], h, clamp=False)
        xs = _axis_taps(g, sides[1], invs[1], tops[1], w, clamp=True)
        x = _fixed_point_resize(g, g.op("Cast", nchw(meta.input), to=TensorProto.INT32), ys, xs)
        dims: list[int | str] = [n if n > 0 else "N", "height", "width", c]
    else:  # a fixed size: the taps are constants, and only the rows they read are converted
        (th, tw), scale = resize_plan(meta, image_size, (h, w))
        if th < h or tw < w:
            raise ProtonetError(f"--embed-preprocess: the image after resizing, {th}x{tw}, is smaller than the "
                                f"input's {h}x{w}")
        top, left = (th - h) // 2, (tw - w) // 2
        mean_hw, offset = (th, tw), (top, left)
        if (th, tw) != tuple(image_size):
            sy, sx = scale if scale is not None else (th / image_size[0], tw / image_size[1])
            y0, y1, b0, b1 = (a[top:top + h] for a in opencv_taps(image_size[0], th, sy, clamp=False))
            x0, x1, a0, a1 = (a[left:left + w] for a in opencv_taps(image_size[1], tw, sx, clamp=True))
            needed = np.unique(np.concatenate([y0, y1]))
            y0, y1 = np.searchsorted(needed, y0), np.searchsorted(needed, y1)
            x = g.op("Cast", nchw(g.op("Gather", meta.input, g.const("rows", needed, np.int64), axis=1)),
                     to=TensorProto.INT32)
            ys = tuple(g.const("taps", a, np.int64 if k < 2 else np.int32) for k, a in enumerate((y0, y1, b0, b1)))
            xs = tuple(g.const("taps", a, np.int64 if k < 2 else np.int32) for k, a in enumerate((x0, x1, a0, a1)))
            x = _fixed_point_resize(g, x, ys, xs)
        else:
            x = g.op("Slice", g.op("Cast", nchw(meta.input), to=TensorProto.FLOAT), g.const("starts", [top, left], np.int64),
                     g.const("ends", [top + h, left + w], np.int64), g.const("axes", [2, 3], np.int64))
        dims = [n if n > 0 else "N", *image_size, c]
    mean = mean_for(meta, mean_hw, offset, (c, h, w), Location(None))
    if np.any(mean != 0):
        x = g.op("Sub", x, g.const("mean", np.ascontiguousarray(mean[None]), np.float32))
    if meta.scale != 1.0:
        x = g.op("Mul", x, g.const("scale", meta.scale, np.float32))
    net_in = f"{meta.input}:preprocessed"
    g.nodes[-1].output[0] = g.nodes[-1].name = net_in
    graph = model.graph
    for node in graph.node:
        node.input[:] = [net_in if i == meta.input else i for i in node.input]
    for v in graph.input:
        if v.name == meta.input:
            v.CopyFrom(helper.make_tensor_value_info(meta.input, TensorProto.UINT8, dims))
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(g.nodes + old)
    graph.initializer.extend(g.consts)
    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = replace(meta, embedded=True).to_json()
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    out = Built(model, g.large)
    out.check()
    return out
