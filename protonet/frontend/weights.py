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
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Collection, Iterable, Mapping, Sequence

import numpy as np

from . import wire
from .. import limits
from .blobs import BlobData, blob_from_proto, check_count
from .reader import check_utf8, is_binary
from ..errors import Location, ProtonetError, WeightsError
from ..fileio import is_regular_file, open_input, read_fd, read_input
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
    #: layers with blobs that were not read (``only`` did not name them)
    skipped: list[str] = field(default_factory=list)


# -- the protobuf path ---------------------------------------------------------------------------

def _parse_net(data: bytes | memoryview, path: str) -> Any:
    net = pb.NetParameter()
    try:
        net.ParseFromString(data)
    except Exception as e:  # DecodeError, RuntimeError, ValueError depending on the backend
        raise WeightsError(f"not a valid caffemodel (truncated or corrupt): {e}", Location(path)) from None
    check_utf8(net, path)
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


def _read_values(src: "Mapped", rec: wire.BlobRecord, copy: bool, progress: _Progress) -> np.ndarray:
    """The blob's values as a flat float32 array: read from the file into a fresh array (copy)
    or a read-only view of the mapping (``copy=False``, float32 single-chunk blobs only)."""
    chunks = rec.chunks
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    if not copy and rec.contiguous and chunks[0][2] == "<f4" and sys.byteorder == "little":
        off, n, _, _ = chunks[0]
        progress.advance(n * 4)
        return np.frombuffer(src.buf, dtype=np.float32, count=n, offset=off)
    dt = np.dtype(chunks[0][2])
    raw = np.empty(sum(c[1] for c in chunks), dtype=dt)
    at = 0
    for off, n, _, stride in chunks:
        if stride != dt.itemsize or src.fd is None:  # unpacked values, or bytes read from a pipe
            raw[at:at + n] = np.ndarray((n,), dt, src.buf, off, (stride,))
            progress.advance(n * stride)
        else:
            _pread_into(src.fd, memoryview(raw[at:at + n]).cast("B"), off, progress)
        at += n
    if raw.dtype == np.float32 and raw.dtype.isnative:
        return raw
    return raw.astype(np.float32)


def _pread_into(fd: int, dest: memoryview, off: int, progress: _Progress) -> None:
    """Fill ``dest`` from the file at ``off`` (os.preadv copies straight from the page cache)."""
    done = 0
    while done < len(dest):
        want = min(READ_SLICE, len(dest) - done)
        got = os.preadv(fd, [dest[done:done + want]], off + done)
        if got <= 0:
            raise OSError("unexpected end of file while reading blob values")
        done += got
        progress.advance(got)
    dest.release()


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


@dataclass
class Mapped:
    """A caffemodel's bytes: a memory-mapped regular file (``fd`` open for ``preadv``), or the
    bytes of a pipe read whole (``fd`` None)."""

    path: str
    buf: Any  # mmap.mmap or bytes
    size: int
    fd: int | None = None

    def close(self, keep_map: bool = False) -> None:
        """Close the file; the mapping too unless ``keep_map`` (views of it are alive)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if isinstance(self.buf, mmap.mmap) and not keep_map:
            close_map(self.buf)


def _map(path: str, data: bytes | None) -> Mapped:
    """Map a regular file, or read a pipe once (within ``MAX_WEIGHTS_BYTES``); ``data``: the
    bytes, already read."""
    if data is not None:
        _check_header(path, len(data), data[:4096])
        return Mapped(path, data, len(data))
    fd, st = open_input(path, "the weights", WeightsError)
    try:
        if not stat.S_ISREG(st.st_mode):
            data = read_fd(fd, st, path, "the weights", (limits.current().max_weights_bytes, "MAX_WEIGHTS_BYTES"))
            os.close(fd)
            return _map(path, data)
        _check_header(path, st.st_size, os.pread(fd, 4096, 0))
        try:
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise WeightsError(f"cannot map the file into memory: {getattr(e, 'strerror', None) or e}",
                               Location(path)) from None
    except BaseException:
        os.close(fd)
        raise
    return Mapped(path, mm, st.st_size, fd)


def open_scan(path: str, data: bytes | None = None) -> tuple[Mapped, wire.NetRecord, Any]:
    """Open and map the file (or take its bytes), scan it and parse the blob-free net:
    (the mapping, the record, the net)."""
    src = _map(path, data)
    try:
        rec = _scan(path, src.buf)
        net = _parse_net(wire.stripped_net_bytes(rec), path)
    except BaseException:
        src.close()
        raise
    return src, rec, net


def _holders(net: Any, rec: wire.NetRecord) -> list[tuple[wire.LayerRecord, str, Any]]:
    """Pair each scanned layer with its parsed message (in file order per field)."""
    it = {wire.NET_LAYER: iter(net.layer), wire.NET_LAYERS_V1: iter(net.layers)}
    out = []
    for lr in rec.layers:
        msg = next(it[lr.field])
        name = msg.name if lr.field == wire.NET_LAYER else (msg.name or (msg.layer.name if msg.HasField("layer") else ""))
        out.append((lr, name, msg))
    return out


def _load_wire(path: str, copy: bool, progress: bool | None, only: Collection[str] | None,
               data: bytes | None) -> tuple[dict[str, list[BlobData]], list[str], Any, LoadReport]:
    src, rec, net = open_scan(path, data)
    layers: dict[str, list[BlobData]] = {}
    skipped: list[str] = []
    report = LoadReport(method="wire", format=_format_of(net), file_bytes=src.size)
    pairs = _holders(net, rec)
    wanted = [(lr, name, msg) for lr, name, msg in pairs if only is None or name in only]
    bar = _Progress(path, sum(b.nbytes for lr, _, _ in wanted for b in lr.blobs), progress)
    try:
        for lr, name, msg in pairs:
            loc = Location(path, layer=name)
            if lr.v0:  # blobs inside the V0 layer: protobuf already parsed them
                if msg.layer.blobs:
                    layers[name] = [blob_from_proto(b, loc) for b in msg.layer.blobs]
                    del msg.layer.blobs[:]
                continue
            if not lr.blobs:
                continue
            if only is not None and name not in only:  # a layer the net does not use: not read
                skipped.append(name)
                continue
            blobs = []
            for i, b in enumerate(lr.blobs):
                shape = tuple(b.legacy) if b.has_legacy else tuple(b.shape or ())
                check_count(shape, b.count, loc, i)
                blobs.append(BlobData(shape, b.has_legacy, _read_values(src, b, copy, bar)))
            layers[name] = blobs
    finally:
        bar.close()
        src.close(keep_map=not copy)
    return layers, skipped, net, report


# -- entry points --------------------------------------------------------------------------------

def load_caffemodel(path: str | Path, *, method: str = "wire", copy: bool = True,
                    progress: bool | None = None, only: Collection[str] | None = None,
                    data: bytes | None = None) -> WeightsFile:
    """Read a .caffemodel: blobs indexed by layer name, plus the upgraded blob-free net.

    ``method``: "wire" (fast, default) or "protobuf" (reference). ``copy=False`` returns
    read-only float32 views into the memory-mapped file where possible (the mapping stays open
    while they live). ``progress``: None = a bar on stderr for files over 64 MB on a terminal.
    ``only``: the names of the layers whose blobs are wanted; the values of other layers are
    never read (their names go to ``WeightsFile.skipped``). ``data``: the file's bytes, already
    read (a pipe). A regular file is memory-mapped; a pipe is read once, within
    ``max_weights_bytes`` (:mod:`protonet.limits`).
    """
    p = str(path)
    t0 = time.perf_counter()
    skipped: list[str] = []
    if method == "wire":
        layers, skipped, net, report = _load_wire(p, copy, progress, only, data)
    elif method == "protobuf":
        if data is None:
            data = read_input(p, "the weights", (limits.current().max_weights_bytes, "MAX_WEIGHTS_BYTES"))
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
    return WeightsFile(p, layers, ran, net, report, skipped)


def caffemodel_bytes(layers: Mapping[str, Sequence[np.ndarray]], name: str = "") -> bytes:
    """A binary NetParameter holding only weights, as Caffe's ``Net::ToProto`` saves them: one
    ``layer`` per name, its blobs in the layer's order (what :func:`load_caffemodel`, Caffe and
    OpenCV's importer match by layer name), encoded at the wire level (fast for big blobs)."""
    return wire.encode_weights_net(layers, name)


def write_caffemodel(f: BinaryIO, layers: Mapping[str, Sequence[np.ndarray]], name: str = "") -> None:
    """Write :func:`caffemodel_bytes` to the binary file ``f``, streamed from the arrays (a net's
    weights are never held twice)."""
    wire.write_weights_net(f, layers, name)


def looks_like_caffemodel(path: str | Path, data: bytes | None = None) -> bool:
    """A NET argument that is a trained model rather than a definition: a ``.caffemodel`` name,
    or a binary NetParameter whose layers carry blobs (``data``: the bytes, already read)."""
    p = Path(path)
    if p.suffix == ".caffemodel":
        return True
    if data is None and not is_regular_file(p):
        return False  # a pipe is read once, by the caller (read_net_bytes), then sniffed here
    try:
        if data is None:
            with open(p, "rb") as f:
                head = f.read(4096)
        else:
            head = data[:4096]
    except OSError:
        return False
    if not head or not is_binary(head):
        return False
    try:
        src, rec, _ = open_scan(str(p), data)
    except ProtonetError:
        return False
    src.close()
    return any(lr.blobs or lr.v0 for lr in rec.layers)
