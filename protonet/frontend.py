"""Reading Caffe net definitions: text prototxt and binary NetParameter / .caffemodel.

Text goes through ``google.protobuf.text_format`` with the classes generated from
``proto/caffe.proto``. A small scanner records the line and name of every top-level
``layer {`` / ``layers {`` block so that later errors can point at the source. After the
upgrade chain, layers are filtered by phase (Caffe's NetStateRule semantics, TEST by default).
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from .errors import Location, SchemaError, ProtonetError
from .schema import pb

_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[{}<>]|[A-Za-z_][A-Za-z0-9_.]*|\n|[^\s{}<>"\'#A-Za-z_]+')


@dataclass(frozen=True)
class LayerSource:
    """Where a top-level layer block starts, and its name."""

    line: int
    name: str | None
    kind: str  # "layer" or "layers"


def scan_layer_blocks(text: str) -> list[LayerSource]:
    """Find top-level ``layer``/``layers`` blocks with their start line and ``name`` field.

    For V0 files (``layers { layer { name: ... } }``) the name of the inner block is used.
    """
    out: list[LayerSource] = []
    depth, line = 0, 1
    current: dict[str, Any] | None = None
    prev_ident: str | None = None
    expect_name = False
    for m in _TOKEN.finditer(text):
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
                out.append(LayerSource(current["line"], current["name"], current["kind"]))
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
    #: ONNX metadata entries describing the data layers' preprocessing (train_val files)
    preprocess: dict[str, str] = field(default_factory=dict)

    def line_of(self, layer: Any, index: int | None = None) -> int | None:
        if index is not None and self.layer_lines is not None and index < len(self.layer_lines):
            return self.layer_lines[index]
        return self.lines.get(layer.name)

    def loc(self, layer: Any | None = None, index: int | None = None) -> Location:
        if layer is None:
            return Location(self.path)
        return Location(self.path, self.line_of(layer, index), layer=layer.name or "(unnamed)",
                        layer_type=layer.type or None)


def _syntax_error(path: str, e: text_format.ParseError, blocks: list[LayerSource]) -> SchemaError:
    line, col = e.GetLine(), e.GetColumn()
    msg = str(e)
    # strip the "line:col : " prefix protobuf puts on the message
    msg = re.sub(r"^\d+:\d+ : ", "", msg)
    inside = [b for b in blocks if b.line <= (line or 0)]
    where = ""
    if inside and line is not None:
        b = inside[-1]
        if b.name:
            where = f"in layer '{b.name}': "
    return SchemaError(f"{where}{msg}", Location(path, line, col))


def parse_text(text: str, path: str) -> tuple[Any, list[LayerSource]]:
    net = pb.NetParameter()
    blocks = scan_layer_blocks(text)
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as e:
        raise _syntax_error(path, e, blocks) from None
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


def parse_binary(data: bytes | memoryview, path: str) -> Any:
    net = pb.NetParameter()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise SchemaError(f"not a valid binary NetParameter / caffemodel (truncated or corrupt): {e}",
                          Location(path)) from None
    return net


def read_net(path: str | Path) -> LoadedNet:
    """Parse a text or binary net definition, without upgrading or filtering."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ProtonetError(f"cannot read: {e.strerror}", Location(str(path))) from None
    if is_binary(data):
        return LoadedNet(parse_binary(data, str(path)), str(path), True)
    return read_text(decode_text(data), str(path))


def read_text(text: str, path: str) -> LoadedNet:
    """Parse prototxt text (``path`` names it in messages), without upgrading or filtering."""
    net, blocks = parse_text(text, path)
    lines: dict[str, int] = {}
    for b in blocks:
        if b.name is not None and b.name not in lines:
            lines[b.name] = b.line
    return LoadedNet(net, path, False, lines, blocks=blocks)


def load_net(path: str | Path, phase: str = "TEST", stages: tuple[str, ...] = (), level: int = 0,
             text: str | None = None, input_shapes: dict[str, tuple[int, ...]] | None = None,
             deploy: bool = True) -> LoadedNet:
    """Read, upgrade to the current format, filter by phase and convert a training definition to
    its deploy form: what Caffe's Net::Init sees in the TEST phase. With ``text``, that prototxt
    text is parsed instead of reading ``path``."""
    loaded = read_net(path) if text is None else read_text(text, str(path))
    return prepare(loaded, phase, stages, level, input_shapes, deploy)


def _shape_bare_inputs(loaded: LoadedNet, input_shapes: dict[str, tuple[int, ...]]) -> None:
    """``input:`` fields without input_dim/input_shape in a text definition: take the shapes
    from ``input_shapes`` (``--input-shape``) or say what is missing."""
    net = loaded.net
    if not net.input or net.input_dim or net.input_shape:
        return
    for i, name in enumerate(net.input):
        shape = input_shapes.get(name) or (input_shapes.get("") if i == 0 else None)
        if shape is None:
            raise SchemaError(f"input '{name}' has no shape: add input_shape {{ dim: ... }} or 4 input_dim "
                              f"values per input, or give --input-shape {name}=N,C,H,W", loaded.loc())
        net.input_shape.add().dim.extend(shape)


def prepare(loaded: LoadedNet, phase: str = "TEST", stages: tuple[str, ...] = (), level: int = 0,
            input_shapes: dict[str, tuple[int, ...]] | None = None, deploy: bool = True) -> LoadedNet:
    """Upgrade a parsed net to the current format, filter it by phase and convert training-only
    layers (data layers -> inputs, losses dropped) for deployment (in place)."""
    from .upgrade import upgrade_net

    if not loaded.binary:
        _shape_bare_inputs(loaded, input_shapes or {})
    current_text = not loaded.binary and len(loaded.net.layers) == 0
    lines: list[int | None] = [b.line for b in loaded.blocks if b.kind == "layer"]
    loaded.net, loaded.upgrades = upgrade_net(loaded.net, loaded.loc())
    if current_text and len(loaded.net.layer) == len(lines) + 1 and len(loaded.net.input) == 0 \
            and any(u.startswith("input fields") for u in loaded.upgrades):
        lines = [None] + lines  # the Input layer made from the input fields
    exact = current_text and len(lines) == len(loaded.net.layer)

    def where(i: int, layer: Any) -> Location:
        return Location(loaded.path, lines[i] if exact else loaded.lines.get(layer.name), layer=layer.name,
                        layer_type=layer.type or None)

    loaded.net, kept = filter_phase(loaded.net, phase, stages, level, with_indices=True, where=where)
    if exact:
        loaded.layer_lines = [lines[i] for i in kept]
    return deploy_step(loaded, input_shapes) if deploy else loaded


def deploy_step(loaded: LoadedNet, input_shapes: dict[str, tuple[int, ...]] | None = None) -> LoadedNet:
    """Training-only layers -> deploy form (data layers become inputs, losses go), in place."""
    from .deploy import needs_deploy, to_deploy

    if needs_deploy(loaded.net):
        where = loaded.layer_lines if loaded.layer_lines is not None else loaded.lines
        loaded.net, notes = to_deploy(loaded.net, loaded.loc(), input_shapes or {}, where,
                                      base_dir=Path(loaded.path).parent)
        if loaded.layer_lines is not None:
            loaded.layer_lines = [loaded.layer_lines[i] for i in notes.kept]
        loaded.notes.extend(notes)
        loaded.preprocess = notes.metadata()
    return loaded


# -- phase filtering (Caffe's FilterNet / StateMeetsRule) -------------------------------------------

def _meets_rule(state: Any, rule: Any) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_phase(net: Any, phase: str = "TEST", stages: tuple[str, ...] = (), level: int = 0,
                 with_indices: bool = False, where: Callable[[int, Any], Location] | None = None) -> Any:
    """Keep the layers whose include/exclude rules admit the state (a new message; with
    ``with_indices`` also the indices of the kept layers)."""
    state = pb.NetState()
    state.CopyFrom(net.state)
    state.phase = pb.Phase.Value(phase)
    if level:
        state.level = level
    state.stage.extend(s for s in stages if s not in state.stage)
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    kept: list[int] = []
    for i, layer in enumerate(net.layer):
        if layer.include and layer.exclude:
            raise SchemaError("a layer may have include rules or exclude rules, not both",
                              where(i, layer) if where else Location(layer=layer.name, layer_type=layer.type))
        if layer.include:
            keep = any(_meets_rule(state, r) for r in layer.include)
        else:
            keep = not any(_meets_rule(state, r) for r in layer.exclude)
        if keep:
            out.layer.add().CopyFrom(layer)
            kept.append(i)
    return (out, kept) if with_indices else out
