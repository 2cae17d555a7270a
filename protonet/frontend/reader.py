"""Reading Caffe net definitions: text prototxt and binary NetParameter / .caffemodel.

Text goes through ``google.protobuf.text_format`` with the classes built from
``proto/caffe.proto`` (or from a user's own schema, ``--caffe-proto``, whose messages
:mod:`.dialects` then translates into protonet's by field name). A small scanner records the line and name of every top-level
``layer {`` / ``layers {`` block so that later errors can point at the source. After the
upgrade chain (:mod:`.upgrade`), :mod:`.phase` filters the layers and :mod:`.load` runs the whole
sequence.
"""
from __future__ import annotations

import codecs
import re
from itertools import chain
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from .. import limits
from ..errors import Location, SchemaError
from ..fileio import read_input
from .dialects import Foreign, translate
from .schema import Schema, is_repeated, pb

_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[{}<>]|[A-Za-z_][A-Za-z0-9_.]*|\n|[^\s{}<>"\'#A-Za-z_]+')


@dataclass(frozen=True)
class LayerSource:
    """Where a top-level layer block starts, and its name."""

    line: int
    name: str | None
    kind: str  # "layer" or "layers"
    end: int | None = None  # the line of its closing brace (None: never closed)


def scan_layer_blocks(text: str, path: str | None = None) -> list[LayerSource]:
    """Find top-level ``layer``/``layers`` blocks with their start line and ``name`` field.

    For V0 files (``layers { layer { name: ... } }``) the name of the inner block is used.
    A run of blanks longer than ``max_blank_run`` (:mod:`protonet.limits`) is refused here, before
    protobuf's tokenizer would spend ~150 bytes of memory per blank on it: a gap between two tokens
    of a line, or (a fast first check) that many spaces anywhere, comments and strings included.
    """
    out: list[LayerSource] = []
    depth, line = 0, 1
    current: dict[str, Any] | None = None
    prev_ident: str | None = None
    expect_name = False
    prev_end = 0
    max_run = limits.current().max_blank_run
    spaces = text.find(" " * (max_run + 1))  # the usual form, found fast (the scan below is slower)
    if spaces >= 0:
        raise _blank_run(text, path, spaces, _SPACES.match(text, spaces).end(), max_run)
    for m in chain(_TOKEN.finditer(text), (None,)):
        start = len(text) if m is None else m.start()
        if start - prev_end > max_run:
            raise _blank_run(text, path, prev_end, start, max_run)
        if m is None:
            break
        prev_end = m.end()
        tok = m.group(0)
        if tok == "\n":
            line += 1
            continue
        if tok.startswith("#"):
            continue
        if tok in ("{", "<"):  # text format allows <...> for messages too
            if depth == 0 and prev_ident in ("layer", "layers"):
                current = {"line": line, "name": None, "kind": prev_ident, "depth": 1}
            depth += 1
            prev_ident = None
            continue
        if tok in ("}", ">"):
            depth -= 1
            if depth == 0 and current is not None:
                out.append(LayerSource(current["line"], current["name"], current["kind"], line))
                current = None
            prev_ident = None
            continue
        if expect_name and tok[0] in "\"'":
            if current is not None and current["name"] is None:
                current["name"] = text_format_unescape(tok[1:-1])
            expect_name = False
            continue
        if tok == ":":
            continue
        expect_name = (tok == "name" and current is not None and depth in (1, 2))
        prev_ident = tok if tok[0].isalpha() or tok[0] == "_" else None
    if current is not None:  # never closed: still the block a syntax error there belongs to
        out.append(LayerSource(current["line"], current["name"], current["kind"]))
    return out


_SPACES = re.compile(" +")


def _blank_run(text: str, path: str | None, start: int, end: int, max_run: int) -> SchemaError:
    line_start = text.rfind("\n", 0, start) + 1
    where = Location(path, text.count("\n", 0, start) + 1, start - line_start + 1)
    return SchemaError(f"a run of {end - start:,} blanks, over protonet's limit of {max_run:,} "
                       f"(PROTONET_MAX_BLANK_RUN)", where)


def text_format_unescape(s: str) -> str:
    """A quoted string's value as text_format reads it (C escapes, octal-escaped UTF-8 bytes)."""
    if "\\" not in s:
        return s
    try:
        return codecs.escape_decode(s.encode("utf-8"))[0].decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return s


@dataclass
class LoadedNet:
    """A parsed (and, after :func:`load_net`, upgraded and phase-filtered) net definition."""

    net: Any  # caffe_pb2.NetParameter
    path: str
    binary: bool
    #: layer name -> source line of its first block (text files only)
    lines: dict[str, int] = field(default_factory=dict)
    upgrades: list[str] = field(default_factory=list)
    #: source line per entry of ``net.layer`` when known exactly (current-format text files)
    layer_lines: list[int | None] | None = None
    #: the ``layer`` blocks of the text, in order (current-format text files)
    blocks: list[LayerSource] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: fields set through a user's schema that protonet's schema has no field for
    foreign: list[Foreign] = field(default_factory=list)
    #: blob -> why a layer that phase filtering removed would have produced it
    excluded: dict[str, str] = field(default_factory=dict)
    #: ONNX metadata entries describing the data layers' preprocessing (train_val files)
    preprocess: dict[str, str] = field(default_factory=dict)
    #: fork dialects the net is read in, where a fork changes a layer type of the same name (the
    #: build decides: ``"faceboxes"`` when DetectionOutput's bottoms fit only that fork's PriorBox)
    dialects: set[str] = field(default_factory=set)

    def line_of(self, layer: Any, index: int | None = None) -> int | None:
        if index is not None and self.layer_lines is not None and index < len(self.layer_lines):
            return self.layer_lines[index]
        return self.lines.get(layer.name)

    def loc(self, layer: Any | None = None, index: int | None = None) -> Location:
        if layer is None:
            return Location(self.path)
        return Location(self.path, self.line_of(layer, index), layer=layer.name or "(unnamed)",
                        layer_type=layer.type or None)


def _syntax_error(path: str, e: text_format.ParseError, blocks: list[LayerSource],
                  schema: Schema | None = None) -> SchemaError:
    line, col = e.GetLine(), e.GetColumn()
    msg = str(e)
    # strip the "line:col : " prefix protobuf puts on the message
    msg = re.sub(r"^\d+:\d+ : ", "", msg)
    solver = re.search(r'"caffe\.NetParameter" has no field named "(\w+)"', msg)
    if schema is None and solver and solver.group(1) in pb.SolverParameter.DESCRIPTOR.fields_by_name:
        return SchemaError(f"this is a solver definition ('{solver.group(1)}' is a SolverParameter field), not a "
                           f"net: give the net file that it names", Location(path, line, col))
    if re.search(r'has no field named|has no value named', msg):
        msg = msg.rstrip(".") + (f" (not in {schema.origin} either)" if schema is not None else
                "; protonet's schema holds BVLC Caffe's and the common forks' fields: if your Caffe fork "
                "defines it, give that fork's caffe.proto with --caffe-proto FORK.proto")
    inside = [b for b in blocks if b.line <= (line or 0) and (b.end is None or (line or 0) <= b.end)]
    where = ""
    if inside and line is not None:  # only a block that holds the line (not the one before it)
        b = inside[-1]
        if b.name:
            where = f"in layer '{b.name}': "
    return SchemaError(f"{where}{msg}", Location(path, line, col))


def parse_text(text: str, path: str, schema: Schema | None = None) -> tuple[Any, list[LayerSource]]:
    """Prototxt text as a NetParameter of ``schema`` (protonet's own by default)."""
    net = (schema or pb).NetParameter()
    blocks = scan_layer_blocks(text, path)
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as e:
        raise _syntax_error(path, e, blocks, schema) from None
    return net, blocks


def is_binary(data: bytes) -> bool:
    """Binary NetParameter / caffemodel vs text prototxt: text has no control bytes but tab,
    newline, vertical tab, form feed and carriage return (its encoding does not matter here)."""
    return any(b < 9 or 13 < b < 32 for b in data[:4096])


def decode_text(data: bytes) -> str:
    """Prototxt bytes as text: UTF-8 (a leading byte-order mark dropped), else Latin-1, which C++
    protobuf would also accept in comments and strings."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_binary(data: bytes | memoryview, path: str, schema: Schema | None = None) -> Any:
    """Binary NetParameter / caffemodel bytes as a NetParameter of ``schema`` (protonet's own by default)."""
    net = (schema or pb).NetParameter()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise SchemaError(f"not a valid binary NetParameter / caffemodel (truncated or corrupt): {e}",
                          Location(path)) from None
    check_utf8(net, path)
    return net


def in_schema(net: Any, path: str, schema: Schema | None) -> tuple[Any, list[Foreign]]:
    """A net parsed through a user's schema as protonet's NetParameter, and its foreign fields."""
    if schema is None:
        return net, []
    return translate(net, path)


def _bad_string(msg: Any, prefix: str = "") -> tuple[str, bytes] | None:
    """The first string field (dotted path, raw bytes) of ``msg`` that is not valid UTF-8:
    protobuf hands such a proto2 string back as ``bytes``."""
    for fd, value in msg.ListFields():
        if fd.type not in (fd.TYPE_STRING, fd.TYPE_MESSAGE):
            continue
        for v in (value if is_repeated(fd) else [value]):
            if isinstance(v, bytes):
                return prefix + fd.name, v
            if fd.type == fd.TYPE_MESSAGE:
                found = _bad_string(v, f"{prefix}{fd.name}.")
                if found:
                    return found
    return None


def check_utf8(net: Any, path: str) -> None:
    """Every string of a binary NetParameter is UTF-8 text (Caffe's names are); else a located
    error naming the layer and the field."""
    for field_name in ("layer", "layers"):
        for i, layer in enumerate(getattr(net, field_name, ())):
            found = _bad_string(layer)
            if found:
                name = layer.name if isinstance(layer.name, str) and layer.name else f"#{i}"
                raise SchemaError(f"{found[0]} {found[1]!r} is not valid UTF-8 text",
                                  Location(path, layer=name))
    found = _bad_string(net)
    if found:
        raise SchemaError(f"{found[0]} {found[1]!r} is not valid UTF-8 text", Location(path))


def read_net_bytes(path: str | Path) -> bytes:
    """The bytes of a net definition (a file or a pipe, read once), within the size limit of
    text or binary definitions (by the first bytes)."""
    def limit(head: bytes) -> tuple[int, str]:
        if is_binary(head):
            return limits.current().max_weights_bytes, "MAX_WEIGHTS_BYTES"
        return limits.current().max_net_text_bytes, "MAX_NET_TEXT_BYTES"

    return read_input(path, "the net definition", limit)


def read_net(path: str | Path, schema: Schema | None = None, data: bytes | None = None) -> LoadedNet:
    """Parse a text or binary net definition (through ``schema``, a user's own caffe.proto,
    when given), without upgrading or filtering (``data``: its bytes, already read)."""
    if data is None:
        data = read_net_bytes(path)
    if is_binary(data):
        net, foreign = in_schema(parse_binary(data, str(path), schema), str(path), schema)
        return LoadedNet(net, str(path), True, foreign=foreign)
    return read_text(decode_text(data), str(path), schema)


def read_text(text: str, path: str, schema: Schema | None = None) -> LoadedNet:
    """Parse prototxt text (``path`` names it in messages), without upgrading or filtering."""
    net, blocks = parse_text(text, path, schema)
    net, foreign = in_schema(net, path, schema)
    lines: dict[str, int] = {}
    for b in blocks:
        if b.name is not None and b.name not in lines:
            lines[b.name] = b.line
    return LoadedNet(net, path, False, lines, blocks=blocks, foreign=foreign)
