"""Weights from ``.caffemodel`` files: a binary NetParameter whose layers carry ``blobs``.

The file goes through the same upgrade chain as a net definition; blobs are then indexed by
layer name. A blob's shape is its ``shape`` field or, in legacy files, ``num/channels/
height/width``; values come from ``data``, ``double_data`` or fp16 ``raw_data``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Location, WeightsError
from .layers.base import Shape


@dataclass
class BlobData:
    shape: Shape
    legacy: bool  # shape came from num/channels/height/width
    data: np.ndarray  # float32, flat

    def matches(self, target: Shape) -> bool:
        """Caffe's Blob::ShapeEquals: legacy 4-D shapes compare against the target padded
        on the left with 1s to 4 axes."""
        if not self.legacy:
            return tuple(self.shape) == tuple(target)
        if len(target) > 4:
            return False
        return tuple(self.shape) == (1,) * (4 - len(target)) + tuple(target)


@dataclass
class WeightsFile:
    path: str
    layers: dict[str, list[BlobData]] = field(default_factory=dict)
    upgrades: list[str] = field(default_factory=list)
    #: the upgraded NetParameter, with blobs cleared (a caffemodel is a whole net definition)
    net: Any = None


def blob_from_proto(blob: Any, loc: Location) -> BlobData:
    """Decode one BlobProto into a flat float32 array and its shape."""
    if blob.HasField("shape"):
        shape, legacy = tuple(int(d) for d in blob.shape.dim), False
    else:
        shape, legacy = (int(blob.num), int(blob.channels), int(blob.height), int(blob.width)), True
    count = 1
    for d in shape:
        count *= d
    if len(blob.data):
        data = np.asarray(blob.data, dtype=np.float32)
    elif len(blob.double_data):
        data = np.asarray(blob.double_data, dtype=np.float64).astype(np.float32)
    elif getattr(blob, "raw_data", b""):
        data = decode_raw(blob, loc)
    else:
        data = np.zeros(0, dtype=np.float32)
    if data.size != count:
        raise WeightsError(f"blob of shape {shape} holds {data.size} values, expected {count}", loc)
    return BlobData(shape, legacy, data)


def decode_raw(blob: Any, loc: Location) -> np.ndarray:
    """``raw_data`` with ``raw_data_type`` (FLOAT16 as written by OpenCV's shrinker, FLOAT, DOUBLE)."""
    kind = type(blob).DESCRIPTOR.fields_by_name["raw_data_type"].enum_type.values_by_number[blob.raw_data_type].name \
        if hasattr(blob, "raw_data_type") else "FLOAT16"
    dtype = {"FLOAT16": np.float16, "FLOAT": np.float32, "DOUBLE": np.float64}.get(kind)
    if dtype is None:
        raise WeightsError(f"unsupported raw_data_type {kind}", loc)
    return np.frombuffer(blob.raw_data, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.float32)


def load_caffemodel(path: str | Path) -> WeightsFile:
    """Read a .caffemodel: parse, upgrade, and index blobs by layer name."""
    from .frontend import read_net
    from .upgrade import upgrade_net

    loaded = read_net(path)
    net, ran = upgrade_net(loaded.net, Location(str(path)))
    out = WeightsFile(str(path), upgrades=ran)
    for layer in net.layer:
        if layer.blobs:
            loc = Location(str(path), layer=layer.name)
            out.layers[layer.name] = [blob_from_proto(b, loc) for b in layer.blobs]
            del layer.blobs[:]
    out.net = net
    return out
