"""A small protobuf wire-format scanner for large ``.caffemodel`` files.

Parsing a caffemodel with ``ParseFromString`` materialises every float of every blob as a
protobuf repeated field, and turning those into numpy arrays costs tens of seconds and several
times the file size in memory for a VGG-sized model. This module walks the wire format of a
memory-mapped file instead and keeps only *byte ranges*:

* ``NetParameter``: ``layer`` (100, LayerParameter) and ``layers`` (2, V1LayerParameter) are
  scanned; every other field is copied verbatim (it is small);
* a layer: its ``blobs`` (7 in LayerParameter, 6 in V1LayerParameter) are scanned as
  ``BlobProto``; all other fields are kept as bytes, so that protobuf parses the layer's
  definition (name, type, params) from a small blob-free message;
* ``BlobProto``: ``num/channels/height/width`` (1..4), ``data`` (5, packed float), ``diff`` (6,
  skipped), ``shape`` (7, ``BlobShape.dim`` = 1 packed int64), ``double_data`` (8),
  ``double_diff`` (9, skipped), OpenCV's ``raw_data_type`` (10) and ``raw_data`` (12).

Values are not decoded here: a :class:`BlobRecord` holds (offset, count, dtype, stride) chunks
that the caller copies out (``np.frombuffer(mm, dtype, count, offset)`` or ``readinto``). Unpacked
repeated values (a tag before every value, as some old writers produce) are counted with numpy and
kept as one strided chunk per run, so that scanning costs no memory per value. A V1 layer that
wraps a V0 layer (``layers { layer { ... } }``) is flagged so the caller can take protobuf's path.

Every length is checked against the end of its enclosing message, each step consumes at least one
byte, and bad input raises :class:`WireError` with the byte offset: no crash, no hang.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import limits
from .blobs import RAW_TYPE_NAMES, RAW_TYPES

# wire types
VARINT, FIXED64, LEN, SGROUP, EGROUP, FIXED32 = 0, 1, 2, 3, 4, 5

# field numbers (proto/caffe.proto)
NET_LAYERS_V1 = 2
NET_LAYER = 100
LAYER_NAME = 1          # LayerParameter.name
LAYER_BLOBS = 7         # LayerParameter.blobs
V1_V0LAYER = 1          # V1LayerParameter.layer (a V0LayerParameter)
V1_NAME = 4             # V1LayerParameter.name
V1_BLOBS = 6            # V1LayerParameter.blobs
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_DIFF, BLOB_SHAPE, BLOB_DOUBLE_DATA, BLOB_DOUBLE_DIFF = 5, 6, 7, 8, 9
BLOB_RAW_TYPE, BLOB_RAW_DATA = 10, 12
SHAPE_DIM = 1

#: BlobProto.Type (OpenCV) -> numpy dtype of raw_data


class WireError(Exception):
    """Malformed wire data; ``offset`` is the absolute byte offset of the problem."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; return (value, next position)."""
    result = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise WireError(f"truncated at byte {pos}", pos)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"malformed varint at byte {start}", start)


def to_int64(v: int) -> int:
    """Two's complement reinterpretation of a varint as int64 (protobuf's int32/int64)."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= (1 << 63) else v


def iter_fields(buf, start: int, end: int):
    """Yield (field number, wire type, tag start, value start, value end) over a message.

    For VARINT fields value start..end covers the varint bytes; for LEN fields the payload.
    ``send(pos)`` (instead of ``next``) continues at ``pos``, past fields the caller consumed.
    """
    pos = start
    while pos < end:
        tag_at = pos
        key, pos = read_varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise WireError(f"invalid field number 0 at byte {tag_at}", tag_at)
        if wt == VARINT:
            _, nxt = read_varint(buf, pos, end)
        elif wt == FIXED64:
            nxt = pos + 8
        elif wt == FIXED32:
            nxt = pos + 4
        elif wt == LEN:
            n, pos = read_varint(buf, pos, end)
            nxt = pos + n
        else:
            raise WireError(f"unsupported wire type {wt} (field {num}) at byte {tag_at}", tag_at)
        if nxt > end:
            raise WireError(f"truncated at byte {end} (field {num} at byte {tag_at} needs "
                            f"{nxt - pos} bytes, {end - pos} left)", end)
        jump = yield num, wt, tag_at, pos, nxt
        pos = nxt if jump is None else jump


Chunk = tuple[int, int, str, int]  # (offset of the first value, count, dtype, stride in bytes)


@dataclass
class BlobRecord:
    """Where one BlobProto's values live in the file."""

    offset: int  # of the BlobProto payload
    shape: tuple[int, ...] | None = None  # from BlobShape
    legacy: tuple[int, int, int, int] = (0, 0, 0, 0)  # num/channels/height/width
    has_legacy: bool = False  # any of num/channels/height/width present (Caffe then uses them)
    #: (offset, count, dtype, stride) chunks of values, in order; all of one field
    chunks: list[Chunk] = field(default_factory=list)
    source: str = ""  # "data", "double_data", "raw_data" or "" (no values)
    raw_type: int | None = None

    @property
    def count(self) -> int:
        return sum(c[1] for c in self.chunks)

    @property
    def nbytes(self) -> int:
        return sum(c[1] * int(c[2][-1]) for c in self.chunks)

    @property
    def contiguous(self) -> bool:
        """All values lie in one run of adjacent bytes (packed, or raw_data)."""
        return len(self.chunks) == 1 and self.chunks[0][3] == int(self.chunks[0][2][-1])


@dataclass
class LayerRecord:
    """One layer of the file: its blob-free definition bytes and its blobs."""

    field: int  # NET_LAYER or NET_LAYERS_V1
    offset: int
    definition: bytes  # the layer message without its blobs
    name: str | None = None
    blobs: list[BlobRecord] = field(default_factory=list)
    v0: bool = False  # wraps a V0 layer (blobs inside it; take the protobuf path)
    span: tuple[int, int] = (0, 0)  # payload range of the whole layer


@dataclass
class NetRecord:
    """The scanned file: net-level fields (verbatim bytes) and the layers."""

    header: bytes
    layers: list[LayerRecord]


def _unpacked_run(buf, tag: int, vs: int, end: int, itemsize: int) -> int:
    """How many unpacked elements, each the same tag bytes followed by a value, lie back to back
    from ``tag`` (at least 1): counted with numpy, a window at a time."""
    step = vs - tag + itemsize
    key = np.frombuffer(buf, np.uint8, count=vs - tag, offset=tag)
    n, at = 0, tag
    while True:
        avail = min((end - at) // step, 1 << 20)
        if avail == 0:
            return max(n, 1)
        rows = np.frombuffer(buf, np.uint8, count=avail * step, offset=at).reshape(avail, step)
        same = (rows[:, :vs - tag] == key).all(axis=1)
        if not same.all():
            return max(n + int(np.argmin(same)), 1)
        n += avail
        at += avail * step


def _values(buf, num: int, wt: int, tag: int, vs: int, ve: int, end: int, itemsize: int, dtype: str,
            chunks: list[Chunk]) -> int:
    """Record a repeated float/double field (packed, or a run of unpacked elements, one strided
    chunk per run, so that memory does not grow with the element count); returns where the
    scan continues."""
    if wt == LEN:
        if (ve - vs) % itemsize:
            raise WireError(f"packed field {num} of {ve - vs} bytes is not a multiple of {itemsize}", vs)
        if ve > vs:
            chunks.append((vs, (ve - vs) // itemsize, dtype, itemsize))
        return ve
    if (wt == FIXED32 and itemsize == 4) or (wt == FIXED64 and itemsize == 8):
        n = _unpacked_run(buf, tag, vs, end, itemsize)
        step = vs - tag + itemsize
        chunks.append((vs, n, dtype, step))
        return tag + n * step
    raise WireError(f"field {num} has wire type {wt}, expected packed or fixed{itemsize * 8}", vs)


def scan_blob(buf, start: int, end: int) -> BlobRecord:
    """Scan one BlobProto payload."""
    rec = BlobRecord(start)
    legacy = [0, 0, 0, 0]
    values: dict[str, list[tuple[int, int, str]]] = {"data": [], "double_data": [], "raw_data": []}
    max_pieces = limits.current().max_blob_pieces
    fields = iter_fields(buf, start, end)
    item = next(fields, None)
    while item is not None:
        num, wt, tag, vs, ve = item
        jump = None
        if BLOB_NUM <= num <= BLOB_WIDTH:
            if wt != VARINT:
                raise WireError(f"BlobProto field {num} has wire type {wt}, expected a varint", tag)
            legacy[num - 1] = to_int64(read_varint(buf, vs, ve)[0])
            rec.has_legacy = True
        elif num == BLOB_DATA:
            jump = _values(buf, num, wt, tag, vs, ve, end, 4, "<f4", values["data"])
        elif num == BLOB_DOUBLE_DATA:
            jump = _values(buf, num, wt, tag, vs, ve, end, 8, "<f8", values["double_data"])
        elif num == BLOB_SHAPE:
            if wt != LEN:
                raise WireError(f"BlobProto.shape has wire type {wt}", tag)
            dims = list(rec.shape or ())
            for dnum, dwt, dtag, dvs, dve in iter_fields(buf, vs, ve):
                if dnum != SHAPE_DIM:
                    continue
                if dwt == LEN:
                    p = dvs
                    while p < dve:
                        d, p = read_varint(buf, p, dve)
                        dims.append(to_int64(d))
                elif dwt == VARINT:
                    dims.append(to_int64(read_varint(buf, dvs, dve)[0]))
                else:
                    raise WireError(f"BlobShape.dim has wire type {dwt}", dtag)
            rec.shape = tuple(dims)
        elif num == BLOB_RAW_TYPE:
            if wt != VARINT:
                raise WireError(f"BlobProto.raw_data_type has wire type {wt}", tag)
            rec.raw_type = read_varint(buf, vs, ve)[0]
        elif num == BLOB_RAW_DATA:
            if wt != LEN:
                raise WireError(f"BlobProto.raw_data has wire type {wt}", tag)
            values["raw_data"] = [(vs, ve - vs, "|u1", 1)]  # bytes field: the last one wins
        # diff (6), double_diff (9) and unknown fields: skipped
        if sum(len(v) for v in values.values()) > max_pieces:
            raise WireError(f"blob values split into more than {max_pieces:,} pieces", tag)
        try:
            item = fields.send(jump)
        except StopIteration:
            item = None
    rec.legacy = tuple(legacy)  # type: ignore[assignment]
    # Caffe's FromProto reads double_data first, then data; OpenCV prefers raw_data
    if values["raw_data"]:
        off, n, _, _ = values["raw_data"][0]
        code = 2 if rec.raw_type is None else rec.raw_type  # FLOAT16 is the only writer's choice
        dtype = RAW_TYPES.get(code)
        if dtype is None:
            raise WireError(f"unknown raw_data_type {code}", start)
        size = int(dtype[-1])
        if n % size:
            raise WireError(f"raw_data of {n} bytes is not a multiple of {size} ({RAW_TYPE_NAMES[code]})", off)
        rec.chunks, rec.source, rec.raw_type = [(off, n // size, dtype, size)], "raw_data", code
    elif values["double_data"]:
        rec.chunks, rec.source = _merge(values["double_data"]), "double_data"
    elif values["data"]:
        rec.chunks, rec.source = _merge(values["data"]), "data"
    return rec


def _merge(chunks: list[Chunk]) -> list[Chunk]:
    """Join chunks that continue each other in the file with the same stride (packed runs split
    over several fields, or runs of unpacked elements)."""
    out: list[Chunk] = []
    for off, n, dt, st in chunks:
        if out and out[-1][3] == st and out[-1][0] + out[-1][1] * st == off:
            o, m, _, _ = out[-1]
            out[-1] = (o, m + n, dt, st)
        else:
            out.append((off, n, dt, st))
    return out


def _layer_name(buf, start: int, end: int, name_field: int) -> str | None:
    """Best-effort name of a layer (for error messages), tolerant of later corruption."""
    try:
        for num, wt, _, vs, ve in iter_fields(buf, start, end):
            if num == name_field and wt == LEN:
                return bytes(buf[vs:ve]).decode("utf-8", "replace")
    except WireError:
        pass
    return None


class LayerWireError(WireError):
    """A WireError inside a known layer."""

    def __init__(self, message: str, offset: int, layer: str | None):
        super().__init__(message, offset)
        self.layer = layer


def scan_layer(buf, kind: int, start: int, end: int) -> LayerRecord:
    name_field, blobs_field = (LAYER_NAME, LAYER_BLOBS) if kind == NET_LAYER else (V1_NAME, V1_BLOBS)
    parts: list[bytes] = []
    rec = LayerRecord(kind, start, b"", span=(start, end))
    try:
        for num, wt, tag, vs, ve in iter_fields(buf, start, end):
            if num == blobs_field and wt == LEN:
                rec.blobs.append(scan_blob(buf, vs, ve))
                continue
            if num == name_field and wt == LEN:
                rec.name = bytes(buf[vs:ve]).decode("utf-8", "replace")
            if kind == NET_LAYERS_V1 and num == V1_V0LAYER:
                rec.v0 = True
            parts.append(bytes(buf[tag:ve]))
    except WireError as e:
        raise LayerWireError(str(e), e.offset, rec.name or _layer_name(buf, start, end, name_field)) from None
    rec.definition = b"".join(parts)
    return rec


def encode_varint(v: int) -> bytes:
    out = bytearray()
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_len_field(num: int, payload: bytes) -> bytes:
    return encode_varint((num << 3) | LEN) + encode_varint(len(payload)) + payload


def _blob_head(array) -> tuple[bytes, "np.ndarray"]:
    """A BlobProto as Caffe writes it, in two pieces: the bytes up to its packed float ``data``
    (the ``blobs`` field's key and length, ``shape`` as packed dims, ``data``'s key and length)
    and the little-endian float32 array whose bytes follow."""
    import numpy as np

    arr = np.asarray(array, dtype="<f4")  # 0-d stays 0-d: no shape.dim
    dims = b"".join(encode_varint(int(d)) for d in arr.shape)
    shape = encode_len_field(SHAPE_DIM, dims) if dims else b""
    body = encode_len_field(BLOB_SHAPE, shape) + encode_varint((BLOB_DATA << 3) | LEN) + encode_varint(arr.nbytes)
    return encode_varint((LAYER_BLOBS << 3) | LEN) + encode_varint(len(body) + arr.nbytes) + body, arr


def write_weights_net(f, layers, name: str = "") -> None:
    """Write a NetParameter of ``layer`` messages holding only a name and blobs ({name: [arrays]})
    to the binary file ``f``, each array's bytes straight from its memory (no copy of the whole)."""
    import numpy as np

    if name:
        f.write(encode_len_field(1, name.encode()))  # NetParameter.name
    for layer_name, arrays in layers.items():
        name_field = encode_len_field(LAYER_NAME, layer_name.encode())
        blobs = [_blob_head(a) for a in arrays]
        size = len(name_field) + sum(len(head) + arr.nbytes for head, arr in blobs)
        f.write(encode_varint((NET_LAYER << 3) | LEN) + encode_varint(size) + name_field)
        for head, arr in blobs:
            f.write(head)
            f.write(memoryview(np.ascontiguousarray(arr).reshape(-1)).cast("B"))  # C order


def encode_weights_net(layers, name: str = "") -> bytes:
    """The bytes :func:`write_weights_net` writes."""
    import io

    buf = io.BytesIO()
    write_weights_net(buf, layers, name)
    return buf.getvalue()


def scan_net(buf, start: int = 0, end: int | None = None) -> NetRecord:
    """Scan a NetParameter: layers with their blobs, everything else kept verbatim."""
    end = len(buf) if end is None else end
    header: list[bytes] = []
    layers: list[LayerRecord] = []
    pos = start
    while pos < end:
        tag = pos
        key, pos = read_varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if num in (NET_LAYER, NET_LAYERS_V1) and wt == LEN:
            n, vs = read_varint(buf, pos, end)
            ve = vs + n
            if ve > end:  # name the layer the file stops in
                name = _layer_name(buf, vs, end, LAYER_NAME if num == NET_LAYER else V1_NAME)
                raise LayerWireError(f"truncated at byte {end} (the layer at byte {tag} needs {n} bytes, "
                                     f"{end - vs} left)", end, name)
            layers.append(scan_layer(buf, num, vs, ve))
            pos = ve
        else:
            for _, _, t, _, ve in iter_fields(buf, tag, end):
                header.append(bytes(buf[t:ve]))
                pos = ve
                break
    return NetRecord(b"".join(header), layers)


def stripped_net_bytes(rec: NetRecord) -> bytes:
    """The NetParameter without blobs: header fields, then every layer's definition."""
    parts = [rec.header]
    for layer in rec.layers:
        parts.append(encode_len_field(layer.field, layer.definition))
    return b"".join(parts)
