"""Caffe's BlobProto <-> numpy, shared by weights and preprocessing (mean files).

A blob's shape follows Caffe's ``Blob::FromProto``: legacy ``num/channels/height/width`` when any
of them is present, else ``shape.dim``. Values come from OpenCV's ``raw_data`` (fp16 by its model
shrinker) when present, else ``double_data``, else ``data``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import Location, WeightsError

Shape = tuple[int, ...]

#: BlobProto.raw_data_type (OpenCV's schema) -> numpy dtype, and its name
RAW_TYPES = {0: "<f8", 1: "<f4", 2: "<f2", 3: "<i4", 4: "<u4"}
RAW_TYPE_NAMES = {0: "DOUBLE", 1: "FLOAT", 2: "FLOAT16", 3: "INT", 4: "UINT"}


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


def blob_from_proto(blob: Any, loc: Location) -> BlobData:
    """Decode one BlobProto message into a flat float32 array and its shape."""
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape, legacy = (int(blob.num), int(blob.channels), int(blob.height), int(blob.width)), True
    else:
        shape, legacy = tuple(int(d) for d in blob.shape.dim), False
    if blob.raw_data:
        data = decode_raw(blob, loc)
    elif len(blob.double_data):
        data = np.asarray(blob.double_data, dtype=np.float64).astype(np.float32)
    elif len(blob.data):
        data = np.asarray(blob.data, dtype=np.float32)
    else:
        data = np.zeros(0, dtype=np.float32)
    check_count(shape, data.size, loc)
    return BlobData(shape, legacy, data)


def decode_raw(blob: Any, loc: Location) -> np.ndarray:
    """``raw_data`` per ``raw_data_type`` (FLOAT16 when unset, as OpenCV's shrinker writes it)."""
    code = blob.raw_data_type if blob.HasField("raw_data_type") else 2
    dtype = RAW_TYPES.get(code)
    if dtype is None:
        raise WeightsError(f"unknown raw_data_type {code}", loc)
    size = int(dtype[-1])
    if len(blob.raw_data) % size:
        raise WeightsError(f"raw_data of {len(blob.raw_data)} bytes is not a multiple of {size} "
                           f"({RAW_TYPE_NAMES[code]})", loc)
    return np.frombuffer(blob.raw_data, dtype=dtype).astype(np.float32)


def check_count(shape: tuple[int, ...], n: int, loc: Location, index: int | None = None) -> None:
    if any(d < 0 for d in shape):
        raise WeightsError(f"blob{'' if index is None else f' {index}'} has a negative dimension in shape "
                           f"{shape}", loc)
    count = 1
    for d in shape:
        count *= d
    if n != count:
        raise WeightsError(f"blob{'' if index is None else f' {index}'} of shape {shape} holds {n} values, "
                           f"expected {count}", loc)
