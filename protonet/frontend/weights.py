"""Weights from ``.caffemodel`` files: a binary NetParameter whose layers carry ``blobs``.

Two readers produce the same :class:`WeightsFile`:

* ``method="wire"`` (the default): :mod:`protonet.frontend.wire` scans the memory-mapped file and records
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
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import wire
from .blobs import BlobData, blob_from_proto, check_count
from .reader import is_binary
from ..errors import Location, ProtonetError, WeightsError
from .schema import pb
from .upgrade import upgrade_net

log = logging.getLogger(__name__)

#: files larger than this get a progress bar on stderr (when stderr is a terminal)
PROGRESS_MIN_BYTES = 64 << 20
#: values are read in slices of this many bytes (progress granularity)
READ_SLICE = 32 << 20


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


def close_map(mm: Any) -> None:
    try:
        mm.close()
    except BufferError:  # a view is still alive somewhere; the mapping goes with it
        pass


def _check_header(path: str, size: int, head: bytes) -> None:
    if size == 0:
        raise WeightsError("the file is empty, not a caffemodel", Location(path))
    if not is_binary(head):
        raise WeightsError("this looks like a text prototxt, not a binary caffemodel", Location(path))


def open_scan(path: str) -> tuple[Any, int, Any, wire.NetRecord, Any]:
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
    f, size, mm, rec, net = open_scan(path)
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
                check_count(shape, b.count, loc, i)
                blobs.append(BlobData(shape, b.has_legacy, _read_values(f.fileno(), mm, b, copy, bar)))
            layers[name] = blobs
    finally:
        bar.close()
        f.close()
        if copy:
            close_map(mm)
    return layers, net, report


# -- entry points --------------------------------------------------------------------------------

def load_caffemodel(path: str | Path, *, method: str = "wire", copy: bool = True,
                    progress: bool | None = None) -> WeightsFile:
    """Read a .caffemodel: blobs indexed by layer name, plus the upgraded blob-free net.

    ``method``: "wire" (fast, default) or "protobuf" (reference). ``copy=False`` returns
    read-only float32 views into the memory-mapped file where possible (the mapping stays open
    while they live). ``progress``: None = a bar on stderr for files over 64 MB on a terminal.
    """
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


def caffemodel_bytes(layers: Mapping[str, Sequence[np.ndarray]], name: str = "") -> bytes:
    """A binary NetParameter holding only weights, as Caffe's ``Net::ToProto`` saves them: one
    ``layer`` per name, its blobs in the layer's order (what :func:`load_caffemodel`, Caffe and
    OpenCV's importer match by layer name), encoded at the wire level (fast for big blobs)."""
    return wire.encode_weights_net(layers, name)


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
    if not head or not is_binary(head):
        return False
    try:
        f, _, mm, rec, _ = open_scan(str(p))
    except ProtonetError:
        return False
    f.close()
    close_map(mm)
    return any(lr.blobs or lr.v0 for lr in rec.layers)
