"""Weights from ``.caffemodel`` files: a binary NetParameter whose layers carry ``blobs``.

Two readers produce the same :class:`WeightsFile`:

* ``method="wire"`` (the default): :mod:`protonet.wire` scans the memory-mapped file and records
  where each blob's values lie; protobuf parses only the blob-free layer definitions; the values
  are then read straight into float32 arrays (one copy, no per-element Python work), or, with
  ``copy=False``, returned as read-only zero-copy views of the mapping. A VGG-16 model (~530 MB)
  loads in about the time it takes to read the file, with peak memory near the size of the values.
* ``method="protobuf"``: ``ParseFromString`` of the whole file; slow and memory-hungry on large
  files, kept as the reference the tests compare against, and used by the wire reader for V0
  layers (``layers { layer { ... blobs } }``), which are rare.

A blob's shape follows Caffe's ``Blob::FromProto``: legacy ``num/channels/height/width`` when any
of them is present, else ``shape.dim``. Values come from OpenCV's ``raw_data`` (fp16 by its model
shrinker) when present, else ``double_data``, else ``data``. The net definition in the file goes
through the usual upgrade chain; blobs are indexed by layer name (a later duplicate wins, as in
Caffe's ``CopyTrainedLayersFrom``).
"""
from __future__ import annotations

import logging
import mmap
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import wire
from .errors import Location, ProtonetError, WeightsError
from .layers.base import Shape
from .schema import pb

log = logging.getLogger(__name__)

#: files larger than this get a progress bar on stderr (when stderr is a terminal)
PROGRESS_MIN_BYTES = 64 << 20
#: values are read in slices of this many bytes (progress granularity)
READ_SLICE = 32 << 20


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
class LoadReport:
    """What was read, how, and how long it took."""

    method: str = "wire"  # "wire" or "protobuf"
    format: str = ""  # "current", "V1", "V0" or a mix like "current+V1"
    layers: int = 0  # layers with blobs
    blobs: int = 0
    values: int = 0
    file_bytes: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.layers} layer(s), {self.blobs} blob(s), {self.values:,} values from "
                f"{self.file_bytes / 1e6:.1f} MB ({self.format or 'empty'} format) in {self.seconds:.2f} s "
                f"[{self.method}]")


@dataclass
class WeightsFile:
    path: str
    layers: dict[str, list[BlobData]] = field(default_factory=dict)
    upgrades: list[str] = field(default_factory=list)
    #: the upgraded NetParameter, with blobs cleared (a caffemodel is a whole net definition)
    net: Any = None
    report: LoadReport = field(default_factory=LoadReport)


# -- the protobuf path ---------------------------------------------------------------------------

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
    _check_count(shape, data.size, loc)
    return BlobData(shape, legacy, data)


def decode_raw(blob: Any, loc: Location) -> np.ndarray:
    """``raw_data`` per ``raw_data_type`` (FLOAT16 when unset, as OpenCV's shrinker writes it)."""
    code = blob.raw_data_type if blob.HasField("raw_data_type") else 2
    dtype = wire.RAW_TYPES.get(code)
    if dtype is None:
        raise WeightsError(f"unknown raw_data_type {code}", loc)
    size = int(dtype[-1])
    if len(blob.raw_data) % size:
        raise WeightsError(f"raw_data of {len(blob.raw_data)} bytes is not a multiple of {size} "
                           f"({wire.RAW_TYPE_NAMES[code]})", loc)
    return np.frombuffer(blob.raw_data, dtype=dtype).astype(np.float32)


def _check_count(shape: tuple[int, ...], n: int, loc: Location, index: int | None = None) -> None:
    if any(d < 0 for d in shape):
        raise WeightsError(f"blob{'' if index is None else f' {index}'} has a negative dimension in shape "
                           f"{shape}", loc)
    count = 1
    for d in shape:
        count *= d
    if n != count:
        raise WeightsError(f"blob{'' if index is None else f' {index}'} of shape {shape} holds {n} values, "
                           f"expected {count}", loc)


def _parse_net(data: bytes | memoryview, path: str) -> Any:
    net = pb.NetParameter()
    try:
        net.ParseFromString(data)
    except Exception as e:  # DecodeError, RuntimeError, ValueError depending on the backend
        raise WeightsError(f"not a valid caffemodel (truncated or corrupt): {e}", Location(path)) from None
    return net


def _all_layers(net: Any) -> Iterable[tuple[str, Any, Any]]:
    """(name, layer message, message holding its blobs) in file order, for every format."""
    for layer in net.layer:
        yield layer.name, layer, layer
    for layer in net.layers:
        if layer.HasField("layer"):  # V0 inside V1
            yield (layer.name or layer.layer.name), layer, layer.layer
        else:
            yield layer.name, layer, layer


def _format_of(net: Any) -> str:
    kinds = []
    if len(net.layer):
        kinds.append("current")
    if any(not l.HasField("layer") for l in net.layers):
        kinds.append("V1")
    if any(l.HasField("layer") for l in net.layers):
        kinds.append("V0")
    return "+".join(kinds)


def _load_protobuf(path: str, data: bytes | memoryview) -> tuple[dict[str, list[BlobData]], Any, LoadReport]:
    net = _parse_net(data, path)
    layers: dict[str, list[BlobData]] = {}
    report = LoadReport(method="protobuf", format=_format_of(net), file_bytes=len(data))
    for name, _, holder in _all_layers(net):
        if holder.blobs:
            loc = Location(path, layer=name)
            layers[name] = [blob_from_proto(b, loc) for b in holder.blobs]
            del holder.blobs[:]
    return layers, net, report


# -- the wire path -------------------------------------------------------------------------------

class _Progress:
    """A one-line progress bar on stderr, only for large files on a terminal."""

    def __init__(self, path: str, total: int, enabled: bool | None):
        if enabled is None:
            enabled = total > PROGRESS_MIN_BYTES and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.enabled, self.total, self.done = enabled, max(total, 1), 0
        self.label = os.path.basename(path)
        self.last = -1

    def advance(self, n: int) -> None:
        if not self.enabled:
            return
        self.done += n
        pct = int(100 * self.done / self.total)
        if pct != self.last:
            self.last = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\rloading {self.label} [{bar:<25}] {pct:3d}% "
                             f"({self.done / 1e6:.0f}/{self.total / 1e6:.0f} MB)")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _wire_error(path: str, e: wire.WireError) -> WeightsError:
    where = f" in layer '{e.layer}'" if getattr(e, "layer", None) else ""
    return WeightsError(f"not a valid caffemodel: {e}{where}", Location(path))


def _scan(path: str, mm: Any) -> wire.NetRecord:
    try:
        return wire.scan_net(memoryview(mm))
    except wire.WireError as e:
        raise _wire_error(path, e) from None


def _read_values(fd: int, mm: Any, rec: wire.BlobRecord, copy: bool, progress: _Progress) -> np.ndarray:
    """The blob's values as a flat float32 array: read from the file into a fresh array (copy)
    or a read-only view of the mapping (``copy=False``, float32 single-chunk blobs only)."""
    chunks = rec.chunks
    if not copy and len(chunks) == 1 and chunks[0][2] == "<f4" and sys.byteorder == "little":
        off, n, dt = chunks[0]
        progress.advance(n * 4)
        return np.frombuffer(mm, dtype=np.float32, count=n, offset=off)
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    dt = chunks[0][2]
    raw = np.empty(sum(c[1] for c in chunks), dtype=dt)
    dest = memoryview(raw).cast("B")
    at = 0
    for off, n, _ in chunks:
        nbytes = n * raw.itemsize
        done = 0
        while done < nbytes:  # os.preadv fills the array directly from the page cache
            want = min(READ_SLICE, nbytes - done)
            got = os.preadv(fd, [dest[at + done:at + done + want]], off + done)
            if got <= 0:
                raise OSError("unexpected end of file while reading blob values")
            done += got
            progress.advance(got)
        at += nbytes
    dest.release()
    if raw.dtype == np.float32 and raw.dtype.isnative:
        return raw
    return raw.astype(np.float32)


def _close(mm: Any) -> None:
    try:
        mm.close()
    except BufferError:  # a view is still alive somewhere; the mapping goes with it
        pass


def _check_header(path: str, size: int, head: bytes) -> None:
    from .frontend import is_binary

    if size == 0:
        raise WeightsError("the file is empty, not a caffemodel", Location(path))
    if not is_binary(head):
        raise WeightsError("this looks like a text prototxt, not a binary caffemodel", Location(path))


def _open_scan(path: str) -> tuple[Any, int, Any, wire.NetRecord, Any]:
    """Open and map the file, scan it and parse the blob-free net: (file, size, mmap, record, net)."""
    try:
        f = open(path, "rb", buffering=0)
    except OSError as e:
        raise WeightsError(f"cannot read: {e.strerror}", Location(path)) from None
    try:
        size = os.fstat(f.fileno()).st_size
        _check_header(path, size, os.pread(f.fileno(), 4096, 0))
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        rec = _scan(path, mm)
        net = _parse_net(wire.stripped_net_bytes(rec), path)
    except BaseException:
        f.close()
        raise
    return f, size, mm, rec, net


def _holders(net: Any, rec: wire.NetRecord) -> list[tuple[wire.LayerRecord, str, Any]]:
    """Pair each scanned layer with its parsed message (in file order per field)."""
    it = {wire.NET_LAYER: iter(net.layer), wire.NET_LAYERS_V1: iter(net.layers)}
    out = []
    for lr in rec.layers:
        msg = next(it[lr.field])
        name = msg.name if lr.field == wire.NET_LAYER else (msg.name or (msg.layer.name if msg.HasField("layer") else ""))
        out.append((lr, name, msg))
    return out


def _load_wire(path: str, copy: bool, progress: bool | None) -> tuple[dict[str, list[BlobData]], Any, LoadReport]:
    f, size, mm, rec, net = _open_scan(path)
    layers: dict[str, list[BlobData]] = {}
    report = LoadReport(method="wire", format=_format_of(net), file_bytes=size)
    bar = _Progress(path, sum(b.nbytes for lr in rec.layers for b in lr.blobs), progress)
    try:
        for lr, name, msg in _holders(net, rec):
            loc = Location(path, layer=name)
            if lr.v0:  # blobs inside the V0 layer: protobuf already parsed them
                if msg.layer.blobs:
                    layers[name] = [blob_from_proto(b, loc) for b in msg.layer.blobs]
                    del msg.layer.blobs[:]
                continue
            if not lr.blobs:
                continue
            blobs = []
            for i, b in enumerate(lr.blobs):
                shape = tuple(b.legacy) if b.has_legacy else tuple(b.shape or ())
                _check_count(shape, b.count, loc, i)
                blobs.append(BlobData(shape, b.has_legacy, _read_values(f.fileno(), mm, b, copy, bar)))
            layers[name] = blobs
    finally:
        bar.close()
        f.close()
        if copy:
            _close(mm)
    return layers, net, report


# -- entry points --------------------------------------------------------------------------------

def load_caffemodel(path: str | Path, *, method: str = "wire", copy: bool = True,
                    progress: bool | None = None) -> WeightsFile:
    """Read a .caffemodel: blobs indexed by layer name, plus the upgraded blob-free net.

    ``method``: "wire" (fast, default) or "protobuf" (reference). ``copy=False`` returns
    read-only float32 views into the memory-mapped file where possible (the mapping stays open
    while they live). ``progress``: None = a bar on stderr for files over 64 MB on a terminal.
    """
    from .upgrade import upgrade_net

    p = str(path)
    t0 = time.perf_counter()
    if method == "wire":
        layers, net, report = _load_wire(p, copy, progress)
    elif method == "protobuf":
        try:
            data = Path(p).read_bytes()
        except OSError as e:
            raise WeightsError(f"cannot read: {e.strerror}", Location(p)) from None
        _check_header(p, len(data), data[:4096])
        layers, net, report = _load_protobuf(p, data)
        del data
    else:
        raise ValueError(f"method must be 'wire' or 'protobuf', not {method!r}")
    ran: list[str] = []
    try:
        net, ran = upgrade_net(net, Location(p))
    except ProtonetError as e:  # the blobs are still usable by name
        report.warnings.append(f"the net definition in the file could not be upgraded: {e.message}")
        log.warning("%s: %s", p, report.warnings[-1])
    report.layers = len(layers)
    report.blobs = sum(len(v) for v in layers.values())
    report.values = sum(b.data.size for v in layers.values() for b in v)
    report.seconds = time.perf_counter() - t0
    log.info("%s: %s", p, report.summary())
    return WeightsFile(p, layers, ran, net, report)


def looks_like_caffemodel(path: str | Path) -> bool:
    """A NET argument that is a trained model rather than a definition: a ``.caffemodel`` name,
    or a binary NetParameter whose layers carry blobs."""
    p = Path(path)
    if p.suffix == ".caffemodel":
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    from .frontend import is_binary

    if not head or not is_binary(head):
        return False
    try:
        f, _, mm, rec, _ = _open_scan(str(p))
    except ProtonetError:
        return False
    f.close()
    _close(mm)
    return any(lr.blobs or lr.v0 for lr in rec.layers)


def _file_phase(net: Any) -> str | None:
    """The phase a caffemodel was saved in: Caffe writes each instantiated layer's ``phase``."""
    phases = {l.phase for l in net.layer if l.HasField("phase")}
    return pb.Phase.Name(phases.pop()) if len(phases) == 1 else None


def net_from_caffemodel(path: str | Path, phase: str | None = None, stages: tuple[str, ...] = (),
                        level: int = 0, input_shapes: dict[str, tuple[int, ...]] | None = None) -> Any:
    """A ``.caffemodel`` used as the net definition: its layers without blobs, upgraded and
    phase-filtered, as a :class:`frontend.LoadedNet` (no blob values are read).

    A caffemodel holds the net as Caffe instantiated it, already filtered for one phase (every
    layer records it); with ``phase=None`` the file's own phase is used, so that the data layers
    of a model saved during training survive (TEST when the file does not say). Legacy ``input``
    fields without dimensions (Caffe's ``Net::ToProto`` writes the names only) take their shapes
    from ``input_shapes`` (``--input-shape``).
    """
    from .frontend import LoadedNet, filter_phase
    from .upgrade import upgrade_net

    p = str(path)
    f, _, mm, _, net = _open_scan(p)
    f.close()
    _close(mm)
    loc = Location(p)
    if len(net.input) and not len(net.input_dim) and not len(net.input_shape):
        shapes = input_shapes or {}
        missing = [n for n in net.input if n not in shapes]
        if missing:
            raise WeightsError(f"the caffemodel names input(s) {', '.join(repr(m) for m in missing)} without "
                               f"a shape; give it with --input-shape (e.g. {missing[0]}=1,3,224,224)", loc)
        for n in net.input:
            net.input_shape.add().dim.extend(int(d) for d in shapes[n])
    net, ran = upgrade_net(net, loc)
    net = filter_phase(net, phase or _file_phase(net) or "TEST", stages, level)
    return LoadedNet(net, p, True, {}, ran)
