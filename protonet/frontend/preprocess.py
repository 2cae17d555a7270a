"""Test-time input preprocessing, as Caffe's data layers apply it, recorded and replayed.

:class:`Preprocess` is what a training definition's data layer says about its inputs
(``transform_param``: scale, mean_value or mean_file, crop_size; the channel order is BGR, as
Caffe's OpenCV-based readers produce). :mod:`protonet.frontend.deploy` extracts it, the exporter stores it
as JSON under ``metadata_props["protonet.preprocess"]``, and :func:`protonet.images.load_image`
replays it on an image file.
"""
from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from pathlib import Path
import numpy as np

from ..errors import Location, ProtonetError
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
    def from_json(cls, text: str) -> "Preprocess":
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            if int(d.get("version", 1)) > FORMAT_VERSION:
                raise ValueError(f"format version {d['version']} is newer than this protonet "
                                 f"understands ({FORMAT_VERSION})")
            known = set(cls.__dataclass_fields__)
            d = {k: v for k, v in d.items() if k in known}
            d["shape"] = tuple(int(x) for x in d.get("shape", ()))
            d["mean_value"] = tuple(float(x) for x in d.get("mean_value", ()))
            d["mean_shape"] = tuple(int(x) for x in d.get("mean_shape", ()))
            if d.get("resize") is not None:
                d["resize"] = tuple(int(x) for x in d["resize"])
            return cls(**d)
        except (ValueError, TypeError, KeyError) as e:
            raise ProtonetError(f"invalid preprocessing metadata: {e}") from None

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


def read_mean_file(path: str | Path) -> np.ndarray:
    """A ``mean_file`` (a binary BlobProto, usually ``mean.binaryproto``) as a (C, H, W) array."""
    loc = Location(str(path))
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ProtonetError(f"cannot read mean file: {e.strerror}", loc) from None
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
