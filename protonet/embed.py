"""``--embed-preprocess``: the photo preprocessing as ONNX nodes in front of the net.

The model's image input (it keeps the net input's name) is a uint8 ``N x H x W x C`` image, RGB
for C = 3 (what decoders, cameras and serving systems hand over):

``Transpose`` (NCHW) -> ``Gather`` (RGB -> BGR, for a BGR net) -> resize and centre crop ->
``Sub`` (mean) -> ``Mul`` (scale) -> the net.

The resize, by image size:

* fixed H x W (``image_size`` given, or the net's size): planned at compile time
  (:func:`protonet.images.resize_plan`), and computed as OpenCV computes an 8-bit image
  (:func:`protonet.images.resize_bilinear_u8`) in int32 ``Gather``/``Mul``/``Div`` nodes with the
  taps of the crop window only (first gathering the source rows those read, then ``Transpose``
  and the channel ``Gather`` on them): bit for bit :func:`protonet.images.preprocess_image` on the
  decoded photo, and ``cv2.dnn.blobFromImage``. An image of the target size is only cropped.
* no ``image_size`` and an exact ``--resize H,W``: H and W are symbolic (``height``, ``width``),
  any image size is taken; ``Cast`` to float, ``Resize`` (mode ``linear``,
  ``coordinate_transformation_mode`` ``half_pixel``: INTER_LINEAR's pixel centres, not
  antialiased, edges repeated) to output ``sizes`` built from the image's shape, ``Slice``.
  This is :func:`protonet.images.resize_bilinear` in floating point: within 1.125 grey levels of
  OpenCV's 8-bit result (tests/test_images.py).

The mean (per channel, or the mean file's pixels under the crop) and the scale are constants.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ProtonetError
from .export import LARGE_INITIALIZER_BYTES, Built
from .frontend.deploy import METADATA_KEY
from .frontend.preprocess import Preprocess
from .images import mean_for, opencv_taps, resize_plan
from .errors import Location


def _crop(op: Any, const: Any, x: str, top: int, left: int, h: int, w: int) -> str:
    return op("Slice", [x, const("starts", np.array([top, left], np.int64)),
                        const("ends", np.array([top + h, left + w], np.int64)), const("axes", np.array([2, 3], np.int64))])


def embed_preprocess(built: Built, meta: Preprocess | None, image_size: tuple[int, int] | None = None) -> Built:
    """A copy of ``built`` whose graph applies ``meta`` to a uint8 NHWC image (module docstring);
    its metadata records the preprocessing with ``embedded`` set."""
    if meta is None:
        raise ProtonetError("--embed-preprocess: the model has no preprocessing to embed; give --mean, --scale, "
                            "--resize, --crop or --channels (or a train_val data layer)")
    model = onnx.ModelProto()
    model.CopyFrom(built.structure)
    g = model.graph
    inputs = {v.name: v for v in g.input}
    if meta.input not in inputs:
        raise ProtonetError(f"--embed-preprocess: the model has no input {meta.input!r}")
    n, c, h, w = (int(d) for d in meta.shape) if len(meta.shape) == 4 else (0, 0, 0, 0)  # N <= 0: dynamic
    if c not in (1, 3) or h <= 0 or w <= 0:
        raise ProtonetError(f"--embed-preprocess: input {meta.input!r} of shape {meta.shape} is not a fixed "
                            f"N x 1|3 x H x W image input")
    if meta.crop_hw and meta.crop_hw != (h, w):
        raise ProtonetError(f"--embed-preprocess: the centre crop {meta.crop_hw[0]}x{meta.crop_hw[1]} differs from "
                            f"the input's {h}x{w}")
    batch: int | str = n if n > 0 else "N"
    dynamic = image_size is None and meta.resize is not None
    if image_size is None and not dynamic:
        if meta.resize_shorter or (meta.crop_hw and meta.crop_hw != (h, w)) or \
                (meta.crop_hw and len(meta.mean_shape) == 3):
            raise ProtonetError("--embed-preprocess: this resize depends on the image size; give it with "
                                "--image-size H,W (or resize to an exact --resize H,W)")
        image_size = (h, w)
    net_in = f"{meta.input}:preprocessed"
    for node in g.node:
        node.input[:] = [net_in if x == meta.input else x for x in node.input]
    nodes: list[onnx.NodeProto] = []
    consts: list[onnx.TensorProto] = []
    large: dict[str, np.ndarray] = dict(built.large)
    step = [0]

    def name(what: str) -> str:
        step[0] += 1
        return f"{meta.input}:pre{step[0]}:{what}"

    def const(what: str, value: np.ndarray) -> str:
        key = name(what)
        if value.nbytes >= LARGE_INITIALIZER_BYTES:
            large[key] = value
        else:
            consts.append(numpy_helper.from_array(value, key))
        return key

    def op(kind: str, ins: list[str], **attrs: object) -> str:
        out = name(kind.lower())
        nodes.append(helper.make_node(kind, ins, [out], name=out, **attrs))
        return out

    (th, tw), scale = (meta.resize, None) if dynamic else resize_plan(meta, image_size, (h, w))
    if th < h or tw < w:
        raise ProtonetError(f"--embed-preprocess: the image after resizing, {th}x{tw}, is smaller than the input's "
                            f"{h}x{w}")
    top, left = (th - h) // 2, (tw - w) // 2
    def nchw(x: str) -> str:
        x = op("Transpose", [x], perm=[0, 3, 1, 2])
        if c == 3 and meta.channel_order.upper() == "BGR":
            x = op("Gather", [x, const("bgr", np.array([2, 1, 0], np.int64))], axis=1)
        return x

    x = meta.input
    if dynamic:
        x = nchw(x)  # any image size: ONNX Resize in floating point
        x = op("Cast", [x], to=TensorProto.FLOAT)
        head = op("Slice", [op("Shape", [x]), const("zero", np.array([0], np.int64)),
                            const("two", np.array([2], np.int64))])
        sizes = op("Concat", [head, const("hw", np.array([th, tw], np.int64))], axis=0)
        x = op("Resize", [x, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel")
        x = _crop(op, const, x, top, left, h, w)
        dims: list[int | str] = [batch, "height", "width", c]
    elif (th, tw) != tuple(image_size):  # OpenCV's 8-bit resize, only the crop window's pixels
        sy, sx = scale if scale is not None else (th / image_size[0], tw / image_size[1])
        y0, y1, b0, b1 = (a[top:top + h] for a in opencv_taps(image_size[0], th, sy, clamp=False))
        x0, x1, a0, a1 = (a[left:left + w] for a in opencv_taps(image_size[1], tw, sx, clamp=True))
        needed = np.unique(np.concatenate([y0, y1]))  # only the rows the crop window reads
        y0, y1 = np.searchsorted(needed, y0), np.searchsorted(needed, y1)
        x = op("Gather", [x, const("rows", needed.astype(np.int64))], axis=1)
        x = op("Cast", [nchw(x)], to=TensorProto.INT32)

        def products(src: str, i0: np.ndarray, i1: np.ndarray, w0: np.ndarray, w1: np.ndarray, axis: int) -> list[str]:
            shape = (-1,) if axis == 3 else (-1, 1)
            return [op("Mul", [op("Gather", [src, const("i", i.astype(np.int64))], axis=axis),
                               const("w", wt.astype(np.int32).reshape(shape))]) for i, wt in ((i0, w0), (i1, w1))]

        sixteen, high = const("sixteen", np.array(16, np.int32)), const("high", np.array(1 << 16, np.int32))
        rows = op("Div", [op("Add", products(x, x0, x1, a0, a1, axis=3)), sixteen])  # (S0 a0 + S1 a1) >> 4
        t = op("Add", [op("Div", [p, high]) for p in products(rows, y0, y1, b0, b1, axis=2)])  # each >> 16
        x = op("Div", [op("Add", [t, const("two", np.array(2, np.int32))]), const("four", np.array(4, np.int32))])
        x = op("Clip", [x, const("lo", np.array(0, np.int32)), const("hi", np.array(255, np.int32))])
        x = op("Cast", [x], to=TensorProto.FLOAT)
        dims = [batch, *image_size, c]
    else:
        x = op("Cast", [nchw(x)], to=TensorProto.FLOAT)
        x = _crop(op, const, x, top, left, h, w)
        dims = [batch, *image_size, c]
    mean = mean_for(meta, (th, tw), (top, left), (c, h, w), Location(None))
    if np.any(mean != 0):
        x = op("Sub", [x, const("mean", np.ascontiguousarray(mean[None], dtype=np.float32))])
    if meta.scale != 1.0:
        x = op("Mul", [x, const("scale", np.array(meta.scale, np.float32))])
    nodes[-1].output[0] = net_in
    nodes[-1].name = net_in
    for i, v in enumerate(g.input):
        if v.name == meta.input:
            g.input[i].CopyFrom(helper.make_tensor_value_info(meta.input, TensorProto.UINT8, dims))
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    g.initializer.extend(consts)
    embedded = replace(meta, embedded=True)
    props = {p.key: p for p in model.metadata_props}
    if METADATA_KEY in props:
        props[METADATA_KEY].value = embedded.to_json()
    else:
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                       METADATA_KEY: embedded.to_json()})
    out = Built(model, large)
    out.check()
    return out
