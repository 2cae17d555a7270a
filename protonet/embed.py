"""``--embed-preprocess``: the photo preprocessing as ONNX nodes in front of the net.

The model's image input (it keeps the net input's name) is a uint8 ``N x H x W x C`` image, RGB
for C = 3 (what decoders, cameras and serving systems hand over). The nodes replay
:func:`protonet.images.preprocess_image` exactly:

``Cast`` (float) -> ``Transpose`` (NCHW) -> ``Gather`` (RGB -> BGR, for a BGR net) ->
``Resize`` (mode ``linear``, ``coordinate_transformation_mode`` ``half_pixel``: OpenCV's
INTER_LINEAR, not antialiased, edge pixels repeated) -> ``Slice`` (the centre crop) -> ``Sub`` (mean)
-> ``Mul`` (scale) -> the net.

Image sizes:

* ``image_size`` given (fixed H x W): the resize is planned at compile time
  (:func:`protonet.images.resize_plan`); an image of the net's size needs no ``Resize``. A resize
  by a factor (``--resize S``, the shorter side) gives ``Resize`` that factor as its ``scales``,
  so that pixel centres map as OpenCV's ``fx``/``fy`` do; ONNX sizes that output by ``floor``
  where OpenCV rounds, so the image is first padded at its far edges by repeating the last row and
  column (which leaves every interpolated value unchanged: the edge is clamped anyway) until the
  floor covers the crop window.
* no ``image_size`` and an exact ``--resize H,W``: H and W are symbolic (``height``, ``width``),
  any image size is taken, and ``Resize`` gets its output ``sizes`` from the image's shape.
* otherwise the image has the net input's size.

The mean (per channel, or the mean file's pixels under the crop) and the scale are constants.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ProtonetError
from .export import LARGE_INITIALIZER_BYTES, Built
from .frontend.deploy import METADATA_KEY
from .frontend.preprocess import Preprocess
from .images import mean_for, resize_plan
from .errors import Location


def _floor_covers(n_in: int, scale: float, need: int) -> int:
    """Rows (or columns) to repeat at the far edge so that ``floor((n_in + k) * scale)``, computed in
    float32 (onnxruntime) and float64 (onnx's shape inference) alike, is at least ``need``."""
    k = 0
    while True:
        exact = (n_in + k) * scale
        single = float(np.float32(n_in + k) * np.float32(scale))
        if math.floor(exact) >= need and math.floor(exact) == math.floor(single) and \
                (exact == math.floor(exact) or exact - math.floor(exact) > 1e-3):
            return k
        k += 1


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
    n, c, h, w = (int(d) for d in meta.shape) if len(meta.shape) == 4 else (0, 0, 0, 0)
    if c not in (1, 3) or h <= 0 or w <= 0:
        raise ProtonetError(f"--embed-preprocess: input {meta.input!r} of shape {meta.shape} is not a fixed "
                            f"N x 1|3 x H x W image input")
    if meta.crop_hw and meta.crop_hw != (h, w):
        raise ProtonetError(f"--embed-preprocess: the centre crop {meta.crop_hw[0]}x{meta.crop_hw[1]} differs from "
                            f"the input's {h}x{w}")
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
    x = op("Cast", [meta.input], to=TensorProto.FLOAT)
    x = op("Transpose", [x], perm=[0, 3, 1, 2])
    if c == 3 and meta.channel_order.upper() == "BGR":
        x = op("Gather", [x, const("bgr", np.array([2, 1, 0], np.int64))], axis=1)
    if dynamic or ((th, tw) != tuple(image_size) and scale is None):  # to an exact size
        head = op("Slice", [op("Shape", [x]), const("zero", np.array([0], np.int64)),
                            const("two", np.array([2], np.int64))])
        sizes = op("Concat", [head, const("hw", np.array([th, tw], np.int64))], axis=0)
        x = op("Resize", [x, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel")
    if dynamic:
        dims: list[int | str] = [n, "height", "width", c]
    else:
        if (th, tw) != tuple(image_size) and scale is not None:  # by a factor
            top, left = (th - h) // 2, (tw - w) // 2
            pad_h = _floor_covers(image_size[0], scale[0], top + h)
            pad_w = _floor_covers(image_size[1], scale[1], left + w)
            if pad_h or pad_w:
                x = op("Pad", [x, const("pads", np.array([0, 0, 0, 0, 0, 0, pad_h, pad_w], np.int64))], mode="edge")
            x = op("Resize", [x, "", const("scales", np.array([1, 1, *scale], np.float32))], mode="linear",
                   coordinate_transformation_mode="half_pixel")
        dims = [n, *image_size, c]
    top, left = (th - h) // 2, (tw - w) // 2
    x = op("Slice", [x, const("starts", np.array([top, left], np.int64)),
                     const("ends", np.array([top + h, left + w], np.int64)), const("axes", np.array([2, 3], np.int64))])
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
