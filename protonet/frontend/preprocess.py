"""Test-time input preprocessing, as Caffe's data layers apply it, recorded and replayed.

:class:`Preprocess` is what a training definition's data layer says about its inputs
(``transform_param``: scale, mean_value or mean_file, crop_size; the channel order is BGR, as
Caffe's OpenCV-based readers produce), or what the command line gives for a deploy net
(:class:`PreprocessOptions`: ``--mean``, ``--mean-file``, ``--scale``, ``--resize``, ``--crop``,
``--channels``; each given option replaces what the data layer said). :mod:`protonet.frontend.deploy`
extracts it, the exporter stores it as JSON under ``metadata_props["protonet.preprocess"]``, and
:func:`protonet.images.load_image` replays it on an image file.

Format versions: 1 (Caffe's transform: square ``crop_size``, exact ``resize``); 2 adds
``resize_shorter`` (the shorter side to S, OpenCV ``blobFromImage(crop=True)``'s factor),
``crop`` (centre H x W) and ``embedded`` (the model's graph applies the transform itself to a
uint8 NHWC image). Version 1 metadata reads unchanged (its fields mean the same in version 2).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .. import limits
from ..errors import Location, ProtonetError
from ..fileio import read_input
from .blobs import blob_from_proto
from .schema import pb

FORMAT_VERSION = 2


@dataclass(frozen=True)
class Preprocess:
    """One input's test-time transform (a frozen value; arrays are kept base64-encoded)."""

    input: str
    shape: tuple[int, ...]  # the net input (N, C, H, W)
    scale: float = 1.0
    crop_size: int = 0
    mean_value: tuple[float, ...] = ()
    mean_file: str | None = None
    mean_shape: tuple[int, ...] = ()  # (C, H, W) of the mean image, when the file was read
    mean_image: str = ""  # base64 of little-endian float32 values, C-order
    channels: int = 3
    resize: tuple[int, int] | None = None  # ImageData new_height, new_width
    channel_order: str = "BGR"
    source: str = ""  # the data layer type it came from ("options": the command line)
    resize_shorter: int = 0  # the shorter side to this, keeping the aspect ratio (version 2)
    crop: tuple[int, int] | None = None  # centre crop H x W; replaces crop_size (version 2)
    embedded: bool = False  # the graph applies it to a uint8 NHWC RGB image (version 2)
    version: int = FORMAT_VERSION

    @property
    def crop_hw(self) -> tuple[int, int] | None:
        """The centre crop (H, W): ``crop``, else Caffe's square ``crop_size``, else None."""
        if self.crop:
            return self.crop
        return (self.crop_size, self.crop_size) if self.crop_size else None

    @property
    def is_identity(self) -> bool:
        """Nothing but the raw pixels (no mean, scale 1, no resize or crop rule of its own)."""
        return (not self.mean_value and not self.mean_file and self.scale == 1.0 and not self.crop_hw
                and not self.resize and not self.resize_shorter)

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_json(self) -> str:
        d = asdict(self)
        d["shape"], d["mean_value"], d["mean_shape"] = list(self.shape), list(self.mean_value), list(self.mean_shape)
        d["resize"] = list(self.resize) if self.resize else None
        d["crop"] = list(self.crop) if self.crop else None
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, source: str | None = None) -> "Preprocess":
        """Parse and validate the metadata (``source``: the model file, for messages). The JSON is
        untrusted (any ONNX file can carry it): every field must have its type and a sane range."""
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            version = _int(d.get("version", 1), "version", 0, 1 << 31)
            if version > FORMAT_VERSION:
                raise ValueError(f"format version {version} is newer than this protonet "
                                 f"understands ({FORMAT_VERSION})")
            known = set(cls.__dataclass_fields__)
            d = {k: v for k, v in d.items() if k in known}
            lim = limits.current()
            side = lim.max_image_side
            for key in ("input", "channel_order", "source", "mean_image"):
                if not isinstance(d.get(key, ""), str):
                    raise ValueError(f"'{key}' is not a string")
            if not isinstance(d.get("mean_file"), (str, type(None))):
                raise ValueError("'mean_file' is not a string")
            d["shape"] = _ints(d.get("shape", ()), "shape", -1, 1 << 31, (0, 4))
            d["mean_value"] = tuple(_float(x, "mean_value") for x in _list(d.get("mean_value", ()), "mean_value", 4))
            d["mean_shape"] = _ints(d.get("mean_shape", ()), "mean_shape", 1, side, (0, 3))
            d["scale"] = _float(d.get("scale", 1.0), "scale")
            d["crop_size"] = _int(d.get("crop_size", 0), "crop_size", 0, side)
            d["channels"] = _int(d.get("channels", 3), "channels", 1, 3)
            if d["channels"] not in (1, 3):
                raise ValueError(f"'channels' is {d['channels']}, not 1 or 3")
            if d.get("channel_order", "BGR").upper() not in ("BGR", "RGB"):
                raise ValueError(f"'channel_order' is {d['channel_order']!r}, not BGR or RGB")
            if d.get("resize") is not None:
                d["resize"] = _ints(d["resize"], "resize", 1, side, (2,))
            if d.get("crop") is not None:
                d["crop"] = _ints(d["crop"], "crop", 1, side, (2,))
            d["resize_shorter"] = _int(d.get("resize_shorter", 0), "resize_shorter", 0, side)
            if not isinstance(d.get("embedded", False), bool):
                raise ValueError("'embedded' is not true or false")
            image = d.get("mean_image", "")
            want = 4 * int(np.prod(d["mean_shape"])) if d["mean_shape"] else 0
            if len(image) > 4 * (lim.max_mean_file_bytes // 3 + 1) or \
                    len(base64.b64decode(image, validate=True)) != want:
                raise ValueError(f"'mean_image' does not hold the {want // 4} values of mean_shape "
                                 f"{d['mean_shape']}")
            return cls(**d)
        except (ValueError, TypeError, KeyError, binascii.Error) as e:
            raise ProtonetError(f"invalid preprocessing metadata: {e}", Location(source)) from None

    @staticmethod
    def encode_array(a: np.ndarray) -> str:
        return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")

    def mean_array(self) -> np.ndarray | None:
        """The mean image (C, H, W) as float32, or None."""
        if not self.mean_image:
            return None
        a = np.frombuffer(base64.b64decode(self.mean_image), dtype="<f4").astype(np.float32)
        return a.reshape(self.mean_shape)

    def describe(self) -> str:
        """One line: what is applied to a photo, in order."""
        steps = []
        if self.resize:
            steps.append(f"resize to {self.resize[0]}x{self.resize[1]}")
        elif self.resize_shorter:
            steps.append(f"resize shorter side to {self.resize_shorter}")
        elif not self.crop_hw and len(self.shape) == 4 and min(self.shape[2:]) > 0:
            steps.append(f"resize to {self.shape[2]}x{self.shape[3]}")
        if self.crop_hw:
            steps.append(f"centre crop {self.crop_hw[0]}x{self.crop_hw[1]}")
        steps.append(self.channel_order.upper() if self.channels == 3 else "gray")
        mean = (f"mean {','.join(f'{v:g}' for v in self.mean_value)}" if self.mean_value else
                f"mean image {self.mean_file} {self.mean_shape or '(not read)'}" if self.mean_file else "no mean")
        steps += [mean, f"scale {self.scale:g}"]
        where = " (in the graph, from a uint8 NHWC RGB image)" if self.embedded else ""
        return f"{self.input}: {', '.join(steps)}{where}"


@dataclass(frozen=True)
class PreprocessOptions:
    """Preprocessing given on the command line (or to the API); None = not given. Each given
    option replaces the matching part of a data layer's transform: ``mean`` or ``mean_file``
    replaces both mean fields, ``resize`` (H, W) or ``resize_shorter`` replaces both resize
    rules, ``crop`` (H, W) replaces ``crop_size``. ``mean`` lists the values in the net's channel
    order (B, G, R for a BGR net), as Caffe's ``mean_value`` and OpenCV's ``blobFromImage`` take them;
    the result is ``(pixel - mean) * scale``."""

    mean: tuple[float, ...] | None = None
    mean_file: str | None = None
    scale: float | None = None
    resize: tuple[int, int] | None = None
    resize_shorter: int | None = None
    crop: tuple[int, int] | None = None
    channels: str | None = None  # "BGR" or "RGB"

    @property
    def given(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def apply(self, base: Preprocess | None, input: str, shape: tuple[int, ...]) -> Preprocess:
        """``base`` (the data layer's, or None) with these options in place; the mean file is read."""
        if self.mean is not None and self.mean_file is not None:
            raise ProtonetError("give --mean or --mean-file, not both")
        if self.resize is not None and self.resize_shorter is not None:
            raise ProtonetError("give --resize H,W or --resize S, not both")
        if self.channels is not None and self.channels.upper() not in ("BGR", "RGB"):
            raise ProtonetError(f"--channels {self.channels}: use BGR or RGB")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale != 0):
            raise ProtonetError(f"--scale {self.scale}: not a finite non-zero number")
        channels = shape[1] if len(shape) == 4 and shape[1] in (1, 3) else 3
        p = base if base is not None else Preprocess(input=input, shape=tuple(shape), channels=channels,
                                                     source="options")
        p = replace(p, input=input, shape=tuple(shape))
        if self.mean is not None:
            if len(self.mean) not in (1, p.channels):
                raise ProtonetError(f"--mean gives {len(self.mean)} values for a {p.channels}-channel input "
                                    f"'{input}'; give 1 or {p.channels}")
            p = replace(p, mean_value=tuple(float(v) for v in self.mean), mean_file=None, mean_shape=(),
                        mean_image="")
        if self.mean_file is not None:
            mean = read_mean_file(self.mean_file)
            p = replace(p, mean_value=(), mean_file=str(self.mean_file), mean_shape=tuple(mean.shape),
                        mean_image=Preprocess.encode_array(mean))
        if self.scale is not None:
            p = replace(p, scale=float(self.scale))
        if self.resize is not None:
            p = replace(p, resize=tuple(self.resize), resize_shorter=0)
        if self.resize_shorter is not None:
            p = replace(p, resize=None, resize_shorter=int(self.resize_shorter))
        if self.crop is not None:
            if len(shape) == 4 and min(shape[2:]) > 0 and tuple(self.crop) != tuple(shape[2:]):
                raise ProtonetError(f"--crop {self.crop[0]},{self.crop[1]}: input '{input}' is {shape[2]}x{shape[3]}; "
                                    f"the centre crop gives the input its size")
            p = replace(p, crop=tuple(self.crop), crop_size=0)
        if self.channels is not None:
            p = replace(p, channel_order=self.channels.upper())
        return p


def _list(v: object, name: str, most: int) -> list:
    if not isinstance(v, (list, tuple)) or len(v) > most:
        raise ValueError(f"'{name}' is not a list of at most {most} numbers")
    return list(v)


def _int(v: object, name: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"'{name}' is {v!r}, not an integer in [{lo}, {hi}]")
    return v


def _ints(v: object, name: str, lo: int, hi: int, lengths: tuple[int, ...]) -> tuple[int, ...]:
    items = _list(v, name, max(lengths))
    if len(items) not in lengths:
        raise ValueError(f"'{name}' has {len(items)} entries, not {' or '.join(map(str, lengths))}")
    return tuple(_int(x, name, lo, hi) for x in items)


def _float(v: object, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"'{name}' is {v!r}, not a finite number")
    return float(v)


def read_mean_file(path: str | Path) -> np.ndarray:
    """A ``mean_file`` (a binary BlobProto, usually ``mean.binaryproto``) as a (C, H, W) array;
    at most ``max_mean_file_bytes`` (:mod:`protonet.limits`), checked before reading."""
    loc = Location(str(path))
    data = read_input(path, "the mean file", (limits.current().max_mean_file_bytes, "MAX_MEAN_FILE_BYTES"))
    blob = pb.BlobProto()
    try:
        blob.ParseFromString(data)
    except Exception as e:
        raise ProtonetError(f"not a valid BlobProto mean file: {e}", loc) from None
    b = blob_from_proto(blob, loc)
    shape = tuple(b.shape)
    while len(shape) > 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3:
        raise ProtonetError(f"mean file blob has shape {tuple(b.shape)}, expected (1, C, H, W)", loc)
    return b.data.reshape(shape)


def image_input(inputs: list[tuple[str, tuple[int, ...]]], meta_json: str | None,
                source: str | None = None) -> tuple[str, tuple[int, ...], Preprocess | None]:
    """The input a photo feeds, with the preprocessing a model carries for it: the input the
    metadata names (its ``meta_json``, parsed), else the first 4-D input. ``inputs``: (name,
    shape) pairs of the model; ``source`` names the model in messages."""
    meta = Preprocess.from_json(meta_json, source) if meta_json else None
    by_name = dict(inputs)
    if meta is not None and meta.input in by_name:
        return meta.input, tuple(by_name[meta.input]), meta
    four = [(n, tuple(s)) for n, s in inputs if len(s) == 4]
    if not four:
        raise ProtonetError("the net has no 4-D (N, C, H, W) input for an image", Location(source))
    return four[0][0], four[0][1], meta
