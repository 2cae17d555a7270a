"""Training definitions (train_val) -> the TEST-phase deploy net.

Run after the upgrade chain and phase filtering. The rules, in file order:

* data layers (``Data``, ``ImageData``, ``HDF5Data``, ``WindowData``, ``AnnotatedData``,
  SegNet's ``DenseImageData``, and ``Python`` layers without bottoms such as py-faster-rcnn's
  ``roi_data_layer``) become ``Input`` layers for their first top. The shape is
  ``input_shapes[top]`` when given (an unnamed ``--input-shape``, key ``""``, shapes the first data
  layer), else ``(batch_size, C, crop, crop)`` from the layer's ``*_data_param.batch_size`` and
  ``transform_param.crop_size``, with C = 3 unless ``is_color`` is false or
  ``transform_param.force_gray`` is set (1); ``DenseImageData`` without crop_size crops
  ``crop_height x crop_width`` (at a random place, also in SegNet's TEST phase); an ``ImageData``
  or ``DenseImageData`` layer without crop uses ``new_height x new_width``; a Python data layer's
  shapes come only from ``input_shapes``. Anything else (an MNIST ``Data``
  layer without crop: the image size lives in the database) is an error asking for
  ``--input-shape``. The other tops (labels) are dropped unless ``input_shapes`` names them.
* ``SoftmaxWithLoss`` becomes ``Softmax`` on its first bottom (same ``softmax_param``), its output
  named as the loss layer's probability top (second top) or else its first top.
* other loss layers (the known types, any type ending in ``Loss``, any layer with a non-zero
  ``loss_weight``) and ``Accuracy`` layers are dropped.
* a layer that reads a dropped blob (a label, a dropped layer's output) is dropped too,
  transitively; each drop is reported in the notes.

The data layer's ``transform_param`` (scale, mean_value or mean_file, crop_size; mirror is a
training-time option and ignored) is returned as :class:`protonet.frontend.preprocess.Preprocess`, which
the exporter stores under ``metadata_props["protonet.preprocess"]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import Location, ProtonetError
from .preprocess import Preprocess, read_mean_file
from .python_layers import describe, is_python_data_layer
from .schema import pb

# MemoryData is not here: it is an input layer fed by the caller (protonet.layers.bvlc.MemoryData)
DATA_TYPES = ("Data", "ImageData", "HDF5Data", "WindowData", "AnnotatedData", "DenseImageData",
              "ImageLabelmapData", "ImageSegData", "VideoData")
LOSS_TYPES = frozenset({"EuclideanLoss", "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss",
                        "SigmoidCrossEntropyLoss", "ContrastiveLoss", "SoftmaxWithLoss"})
DROPPED_TYPES = frozenset({"Accuracy"})
METADATA_KEY = "protonet.preprocess"

#: data layer type -> (name of its *_param field, whether that param has batch_size)
_PARAM = {"Data": "data_param", "ImageData": "image_data_param", "HDF5Data": "hdf5_data_param",
          "WindowData": "window_data_param", "MemoryData": "memory_data_param", "AnnotatedData": "data_param",
          "DenseImageData": "dense_image_data_param", "ImageLabelmapData": "image_data_param",
          "ImageSegData": "image_data_param", "VideoData": "video_data_param"}
#: data layers whose param reads photos (is_color, new_height x new_width)
_IMAGE_TYPES = ("ImageData", "DenseImageData", "ImageLabelmapData", "ImageSegData")


@dataclass
class DeployNotes:
    """What :func:`to_deploy` changed. Iterating gives the human-readable notes."""

    messages: list[str] = field(default_factory=list)
    #: input blob -> preprocessing of the data layer it replaced
    preprocess: dict[str, Preprocess] = field(default_factory=dict)
    #: for each layer of the deploy net, the index of the layer it came from in the input net
    #: (to carry ``LoadedNet.layer_lines`` over)
    kept: list[int] = field(default_factory=list)

    def __iter__(self):
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def changed(self) -> bool:
        return bool(self.messages)

    def metadata(self) -> dict[str, str]:
        """Entries for ``ir.Graph.metadata`` (the first data input's preprocessing)."""
        if not self.preprocess:
            return {}
        return {METADATA_KEY: next(iter(self.preprocess.values())).to_json()}


def is_loss(layer: Any) -> bool:
    return (layer.type in LOSS_TYPES or layer.type.endswith("Loss")
            or any(w != 0 for w in layer.loss_weight))


def needs_deploy(net: Any) -> bool:
    """Whether the (filtered) net has anything :func:`to_deploy` converts."""
    return any(_is_data(l) or l.type in DROPPED_TYPES or is_loss(l) for l in net.layer)


def _is_data(layer: Any) -> bool:
    return layer.type in DATA_TYPES or is_python_data_layer(layer)


def to_deploy(net: Any, loc: Location, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
              lines: Mapping[str, int] | Sequence[int | None] | None = None,
              base_dir: str | Path | None = None) -> tuple[Any, DeployNotes]:
    """Convert a phase-filtered training net into its deploy form (a new message).

    ``loc`` locates errors (the definition file); ``lines`` gives source lines, per entry of
    ``net.layer`` (``LoadedNet.layer_lines``) or by layer name (``LoadedNet.lines``);
    ``base_dir`` is where a relative ``mean_file`` is looked for first (then the working
    directory, as Caffe does).
    """
    shapes = dict(input_shapes or {})
    notes = DeployNotes()
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    dropped: set[str] = set()
    if base_dir is None and loc.file:
        base_dir = Path(loc.file).parent

    def where(index: int, layer: Any) -> Location:
        if isinstance(lines, Mapping):
            line = lines.get(layer.name)
        else:
            line = lines[index] if lines is not None and index < len(lines) else None
        return Location(loc.file, line, layer=layer.name, layer_type=layer.type)

    sources = [l for l in net.layer if _is_data(l) or l.type == "Input"]
    if "" in shapes and sources and _is_data(sources[0]) and sources[0].top:
        shapes.setdefault(sources[0].top[0], shapes.pop(""))  # an unnamed --input-shape: the first input
    for index, layer in enumerate(net.layer):
        if _is_data(layer):
            _convert_data(layer, out, shapes, notes, dropped, where(index, layer), base_dir)
            notes.kept.append(index)
            continue
        if layer.type == "SoftmaxWithLoss" and layer.bottom and layer.bottom[0] not in dropped:
            _softmax_from_loss(layer, out, notes)
            notes.kept.append(index)
            continue
        if is_loss(layer) or layer.type in DROPPED_TYPES:
            notes.messages.append(f"dropped {layer.type} layer '{layer.name}' (training only)")
            dropped.update(layer.top)
            continue
        gone = [b for b in layer.bottom if b in dropped]
        if gone:
            notes.messages.append(f"dropped layer '{layer.name}' ({layer.type}): it reads "
                                  f"{', '.join(repr(b) for b in gone)}, which the deploy net does not have")
            dropped.update(layer.top)
            continue
        out.layer.add().CopyFrom(layer)
        notes.kept.append(index)
        dropped.difference_update(layer.top)  # a blob produced again is live again
    if not out.layer:
        raise ProtonetError("no layers left after converting the training net to a deploy net", loc)
    return out, notes


def _softmax_from_loss(layer: Any, out: Any, notes: DeployNotes) -> None:
    sm = out.layer.add()
    sm.name = layer.name
    sm.type = "Softmax"
    sm.bottom.append(layer.bottom[0])
    top = layer.top[1] if len(layer.top) > 1 else (layer.top[0] if layer.top else layer.name)
    sm.top.append(top)
    if layer.HasField("softmax_param"):
        sm.softmax_param.CopyFrom(layer.softmax_param)
    notes.messages.append(f"SoftmaxWithLoss '{layer.name}' became Softmax('{layer.bottom[0]}') -> '{top}'")


def _convert_data(layer: Any, out: Any, shapes: dict[str, tuple[int, ...]], notes: DeployNotes,
                  dropped: set[str], loc: Location, base_dir: str | Path | None) -> None:
    if not layer.top:
        raise ProtonetError("data layer without tops", loc)
    top = layer.top[0]
    meta = None if layer.type == "Python" else _preprocess(layer, top, loc, base_dir, notes)
    if top in shapes:
        shape = tuple(int(d) for d in shapes[top])
    else:
        shape = _data_shape(layer, meta, loc)
    inp = out.layer.add()
    inp.name = layer.name
    inp.type = "Input"
    inp.top.append(top)
    inp.input_param.shape.add().dim.extend(shape)
    for extra in layer.top[1:]:
        if extra in shapes:
            inp.top.append(extra)
            inp.input_param.shape.add().dim.extend(int(d) for d in shapes[extra])
        else:
            dropped.add(extra)
            why = f"no --input-shape {extra}=... given" if layer.type == "Python" else "labels"
            notes.messages.append(f"dropped top '{extra}' of {layer.type} layer '{layer.name}' ({why})")
    if len(inp.input_param.shape) > 1 and len(set(tuple(s.dim) for s in inp.input_param.shape)) == 1:
        del inp.input_param.shape[1:]
    notes.messages.append(f"{layer.type} layer '{layer.name}' became Input '{top}' of shape {shape}")
    if meta is not None:
        channels = shape[1] if len(shape) == 4 and shape[1] in (1, 3) else meta.channels
        notes.preprocess[top] = replace(meta, shape=shape, channels=channels)


def _param(layer: Any) -> Any | None:
    name = _PARAM.get(layer.type)
    return getattr(layer, name) if name and layer.HasField(name) else None


def _data_shape(layer: Any, meta: Preprocess | None, loc: Location) -> tuple[int, ...]:
    top = layer.top[0]
    p = _param(layer)
    ask = f"give the input shape with --input-shape {top}=N,C,H,W"
    if layer.type == "Python":
        tops = " ".join(f"--input-shape {t}=..." for t in layer.top)
        raise ProtonetError(f"cannot tell the shape of input '{top}': a Python data layer ({describe(layer)}) "
                            f"is never run, so its tops are inputs shaped by the caller; give {tops}", loc)
    if layer.type == "MemoryData" and p is not None and p.channels and p.height and p.width:
        return (int(p.batch_size or 1), int(p.channels), int(p.height), int(p.width))
    batch = int(p.batch_size) if p is not None and p.HasField("batch_size") and p.batch_size > 0 else 1
    if layer.type == "VideoData":
        return _video_shape(layer, batch, ask, loc)
    channels = meta.channels if meta is not None else 3
    crop = meta.crop_size if meta is not None else 0
    if crop:
        return (batch, channels, crop, crop)
    if layer.type == "DenseImageData" and p is not None and p.crop_height and p.crop_width:
        return (batch, channels, int(p.crop_height), int(p.crop_width))
    if meta is not None and meta.resize:
        return (batch, channels, *meta.resize)
    why = {"HDF5Data": "an HDF5Data layer's shapes live in its HDF5 files",
           "AnnotatedData": "an AnnotatedData layer's image size lives in its database"}.get(
        layer.type, f"without crop_size, a {layer.type} layer's image size lives in its data source")
    raise ProtonetError(f"cannot tell the shape of input '{top}': {why}; {ask}", loc)


def _video_shape(layer: Any, batch: int, ask: str, loc: Location) -> tuple[int, ...]:
    """yjxiong/caffe's (TSN) VideoData: the frames of every segment stacked on the channel axis,
    (3 colour or 1 grey channels, or 2 for FLOW's x and y) x new_length x num_segments, cropped
    to crop_size or resized to new_height x new_width."""
    p = layer.video_data_param
    per_frame = 2 if p.modality == pb.VideoDataParameter.FLOW else (1 if p.grayscale else 3)
    channels = per_frame * max(1, p.new_length) * max(1, p.num_segments)
    crop = layer.transform_param.crop_size
    if crop:
        return (batch, channels, int(crop), int(crop))
    if p.new_height and p.new_width:
        return (batch, channels, int(p.new_height), int(p.new_width))
    raise ProtonetError(f"cannot tell the shape of input '{layer.top[0]}': a VideoData layer's frame size lives "
                        f"in its frames; {ask}", loc)


def _preprocess(layer: Any, top: str, loc: Location, base_dir: str | Path | None,
                notes: DeployNotes) -> Preprocess | None:
    """The layer's test-time transform (transform_param, falling back to the deprecated copies
    in the data param that Caffe's upgrade moves into it). A VideoData layer's stacked frames
    are not one photo: no preprocessing metadata."""
    if layer.type in ("HDF5Data", "MemoryData") and not layer.HasField("transform_param"):
        return None
    if layer.type == "VideoData":
        return None
    t = layer.transform_param
    p = _param(layer)

    def pick(name: str, default: Any) -> Any:
        if t.HasField(name):
            return getattr(t, name)
        if p is not None and name in p.DESCRIPTOR.fields_by_name and p.HasField(name):
            return getattr(p, name)
        return default

    scale = float(pick("scale", 1.0))
    crop = int(pick("crop_size", 0))
    mean_file = pick("mean_file", "") or None
    mean_value = tuple(float(v) for v in t.mean_value)
    if mean_file and mean_value:
        raise ProtonetError("transform_param gives both mean_file and mean_value; Caffe accepts only one", loc)
    channels = 3
    if layer.type in _IMAGE_TYPES and p is not None and not p.is_color:
        channels = 1
    if t.force_gray:
        channels = 1
    if t.force_color:
        channels = 3
    if mean_value and len(mean_value) not in (1, channels):
        raise ProtonetError(f"{len(mean_value)} mean_value entries for {channels} channel(s); give 1 or "
                            f"{channels}", loc)
    resize: tuple[int, int] | None = None
    if layer.type in _IMAGE_TYPES and p is not None and p.new_height and p.new_width:
        resize = (int(p.new_height), int(p.new_width))
    rp = t.resize_param if t.HasField("resize_param") else None  # SSD: every image resized first
    if resize is None and rp is not None and rp.height and rp.width:
        if rp.resize_mode == pb.ResizeParameter.FIT_SMALL_SIZE:
            notes.messages.append(f"resize_param of layer '{layer.name}' keeps the aspect ratio (FIT_SMALL_SIZE): "
                                  f"the input size varies; give it with --input-shape")
        else:
            resize = (int(rp.height), int(rp.width))
            if rp.resize_mode != pb.ResizeParameter.WARP:
                notes.messages.append(f"resize_param of layer '{layer.name}' pads to keep the aspect ratio "
                                      f"({pb.ResizeParameter.Resize_mode.Name(rp.resize_mode)}); the preprocessing "
                                      f"metadata records a plain resize to {rp.height}x{rp.width}")
    if layer.type == "DenseImageData" and p is not None and p.crop_height and p.crop_width and not crop:
        notes.messages.append(f"crop_height x crop_width of layer '{layer.name}' ({p.crop_height}x{p.crop_width}) "
                              f"is a random crop in SegNet, also at test time; the input takes that size")
    mean_image = ""
    mean_shape: tuple[int, ...] = ()
    if mean_file:
        found = _find(mean_file, base_dir)
        if found is None:
            notes.messages.append(f"mean_file '{mean_file}' of layer '{layer.name}' not found; the "
                                  f"preprocessing metadata records its path only")
        else:
            mean = read_mean_file(found)
            mean_shape, mean_image = tuple(mean.shape), Preprocess.encode_array(mean)
    if layer.transform_param.mirror:
        notes.messages.append(f"mirror of layer '{layer.name}' ignored (a training-time augmentation)")
    return Preprocess(input=top, shape=(), scale=scale, crop_size=crop, mean_value=mean_value,
                      mean_file=mean_file, mean_shape=mean_shape, mean_image=mean_image,
                      channels=channels, resize=resize, source=layer.type)


def _find(name: str, base_dir: str | Path | None) -> Path | None:
    p = Path(name)
    candidates = [p] if p.is_absolute() else ([Path(base_dir) / p] if base_dir else []) + [p]
    return next((c for c in candidates if c.is_file()), None)
