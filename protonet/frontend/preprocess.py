"""Test-time input preprocessing, as Caffe's data layers apply it, recorded and replayed.

:class:`Preprocess` is what a training definition's data layer says about its inputs
(``transform_param``: scale, mean_value or mean_file, crop_size; the channel order is BGR, as
Caffe's OpenCV-based readers produce). :mod:`protonet.frontend.deploy` extracts it, the exporter stores it
as JSON under ``metadata_props["protonet.preprocess"]``, and :func:`protonet.images.load_image`
replays it on an image file.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import limits
from ..errors import Location, ProtonetError
from ..fileio import read_input
from .blobs import blob_from_proto
from .schema import pb

FORMAT_VERSION = 1


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
    source: str = ""  # the data layer type it came from
    version: int = FORMAT_VERSION

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_json(self) -> str:
        d = asdict(self)
        d["shape"], d["mean_value"], d["mean_shape"] = list(self.shape), list(self.mean_value), list(self.mean_shape)
        d["resize"] = list(self.resize) if self.resize else None
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
        mean = (f"mean {list(self.mean_value)}" if self.mean_value else
                f"mean image {self.mean_file} {self.mean_shape or '(not read)'}" if self.mean_file else "no mean")
        crop = f", centre crop {self.crop_size}" if self.crop_size else ""
        return f"{self.input}: {self.channel_order if self.channels == 3 else 'gray'}, {mean}, scale {self.scale:g}{crop}"


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
