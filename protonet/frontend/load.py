"""The one orchestrator of the frontend: read -> upgrade -> phase filter -> deploy.

:func:`load_net` is what Caffe's ``Net::Init`` sees in the TEST phase; :func:`net_from_caffemodel`
uses a trained model as its own definition; :func:`upgrade_file` writes an upgraded definition.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from ..errors import Location, ProtonetError, SchemaError, WeightsError
from ..fileio import write_bytes_atomic
from . import wire
from .deploy import needs_deploy, to_deploy
from .dialects import check_fields, normalize
from .phase import filter_phase
from .python_layers import native_python_layers
from .reader import LoadedNet, in_schema, parse_binary, read_net, read_text
from .schema import Schema, load_schema, pb
from .upgrade import upgrade_net
from .weights import open_scan

#: a user's own caffe.proto: its path, or the compiled schema
SchemaSpec = Schema | str | Path | None


def user_schema(spec: SchemaSpec) -> Schema | None:
    """The schema named by ``--caffe-proto`` (compiled at run time), or None for protonet's own."""
    if spec is None or isinstance(spec, Schema):
        return spec
    return load_schema(spec)

log = logging.getLogger(__name__)


def load_net(path: str | Path, phase: str = "TEST", stages: tuple[str, ...] = (), level: int = 0,
             text: str | None = None, input_shapes: dict[str, tuple[int, ...]] | None = None,
             deploy: bool = True, schema: SchemaSpec = None, ignore_fields: tuple[str, ...] = (),
             data: bytes | None = None) -> LoadedNet:
    """Read, upgrade to the current format, filter by phase and convert a training definition to
    its deploy form: what Caffe's Net::Init sees in the TEST phase. With ``text``, that prototxt
    text is parsed instead of reading ``path``; with ``data``, those bytes (a pipe read once).
    ``schema`` is a user's own caffe.proto (the file is read through it); ``ignore_fields``
    (``MSG.FIELD``) are fork fields the user accepts protonet running without (see
    :func:`.dialects.check_fields`)."""
    s = user_schema(schema)
    loaded = read_net(path, s, data) if text is None else read_text(text, str(path), s)
    return prepare(loaded, phase, stages, level, input_shapes, deploy, ignore_fields)


def _shape_bare_inputs(loaded: LoadedNet, input_shapes: dict[str, tuple[int, ...]]) -> None:
    """``input:`` fields without input_dim/input_shape in a text definition. Caffe's
    UpgradeNetInput drops such fields (a caffemodel's leftovers), so a name that a layer produces
    (an ``Input`` layer beside ``input: "data"``) is dropped too; the others take their shapes from
    ``input_shapes`` (``--input-shape``), or the error says what is missing."""
    net = loaded.net
    if not net.input or net.input_dim or net.input_shape:
        return
    produced = {t for layer in net.layer for t in layer.top} | {t for layer in net.layers for t in layer.top}
    dropped = [n for n in net.input if n in produced]
    if dropped:
        kept = [n for n in net.input if n not in produced]
        del net.input[:]
        net.input.extend(kept)
        loaded.notes.append(f"input field(s) {', '.join(repr(n) for n in dropped)} without a shape dropped, as "
                            f"Caffe does: a layer of the net produces them")
    for i, name in enumerate(net.input):
        shape = input_shapes.get(name) or (input_shapes.get("") if i == 0 else None)
        if shape is None:
            raise SchemaError(f"input '{name}' has no shape: add input_shape {{ dim: ... }} or 4 input_dim "
                              f"values per input, or give --input-shape {name}=N,C,H,W", loaded.loc())
        net.input_shape.add().dim.extend(shape)


def prepare(loaded: LoadedNet, phase: str = "TEST", stages: tuple[str, ...] = (), level: int = 0,
            input_shapes: dict[str, tuple[int, ...]] | None = None, deploy: bool = True,
            ignore_fields: tuple[str, ...] = ()) -> LoadedNet:
    """Upgrade a parsed net to the current format, filter it by phase and convert training-only
    layers (data layers -> inputs, losses dropped) for deployment (in place); then read the fork
    spellings protonet implements and refuse the fork fields it does not (:mod:`.dialects`)."""
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

    before = loaded.net
    loaded.net, kept = filter_phase(loaded.net, phase, stages, level, with_indices=True, where=where)
    left = set(kept)
    for i, layer in enumerate(before.layer):
        if i not in left:
            for top in layer.top:
                loaded.excluded.setdefault(top, f"layer '{layer.name}' produces it, but not in the {phase} phase")
    if exact:
        loaded.layer_lines = [lines[i] for i in kept]
    if deploy:
        deploy_step(loaded, input_shapes)
    return dialect_step(loaded, ignore_fields)


def dialect_step(loaded: LoadedNet, ignore_fields: tuple[str, ...] = ()) -> LoadedNet:
    """Fork spellings -> BVLC's, then the check of fork fields protonet does not implement, on
    the layers that are left (in place)."""
    def where(index: int | None, name: str | None) -> Location:
        if index is None:
            return loaded.loc()
        return loaded.loc(loaded.net.layer[index], index)

    loaded.notes.extend(normalize(loaded.net, where))
    check_fields(loaded.net, loaded.foreign, ignore_fields, where)
    return loaded


def deploy_step(loaded: LoadedNet, input_shapes: dict[str, tuple[int, ...]] | None = None) -> LoadedNet:
    """Known Python layers -> native layers; training-only layers -> deploy form (data layers
    become inputs, losses go), in place."""
    loaded.net, native = native_python_layers(loaded.net, lambda i, layer: loaded.loc(layer, i))
    loaded.notes.extend(native)
    if needs_deploy(loaded.net):
        where = loaded.layer_lines if loaded.layer_lines is not None else loaded.lines
        loaded.net, notes = to_deploy(loaded.net, loaded.loc(), input_shapes or {}, where,
                                      base_dir=Path(loaded.path).parent)
        if loaded.layer_lines is not None:
            loaded.layer_lines = [loaded.layer_lines[i] for i in notes.kept]
        loaded.notes.extend(notes)
        loaded.preprocess = notes.metadata()
    return loaded


def _file_phase(net: Any) -> str | None:
    """The phase a caffemodel was saved in: Caffe writes each instantiated layer's ``phase``."""
    phases = {l.phase for l in net.layer if l.HasField("phase")}
    return pb.Phase.Name(phases.pop()) if len(phases) == 1 else None


def net_from_caffemodel(path: str | Path, phase: str | None = None, stages: tuple[str, ...] = (),
                        level: int = 0, input_shapes: dict[str, tuple[int, ...]] | None = None,
                        schema: SchemaSpec = None, data: bytes | None = None) -> Any:
    """A ``.caffemodel`` used as the net definition: its layers without blobs, upgraded and
    phase-filtered, as a :class:`frontend.LoadedNet` (no blob values are read).

    A caffemodel holds the net as Caffe instantiated it, already filtered for one phase (every
    layer records it); with ``phase=None`` the file's own phase is used, so that the data layers
    of a model saved during training survive (TEST when the file does not say). Legacy ``input``
    fields without dimensions (Caffe's ``Net::ToProto`` writes the names only) take their shapes
    from ``input_shapes`` (``--input-shape``). ``data``: the file's bytes, already read (a pipe).
    """
    p = str(path)
    src, rec, net = open_scan(p, data)
    foreign: list[Any] = []
    try:
        s = user_schema(schema)
        if s is not None:  # the blob-free net again, through the user's schema
            net, foreign = in_schema(parse_binary(wire.stripped_net_bytes(rec), p, s), p, s)
    finally:
        src.close()
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
    return LoadedNet(net, p, True, {}, ran, foreign=foreign)


# -- files -----------------------------------------------------------------------------------------

TEXT_SUFFIXES = (".prototxt", ".pbtxt", ".txt")
BINARY_SUFFIXES = (".caffemodel", ".binaryproto", ".pb")


def serialize_net(net: Any, binary: bool) -> bytes:
    """The bytes of ``net`` as a binary NetParameter or as protobuf text."""
    if binary:
        return net.SerializeToString()
    return text_format.MessageToString(net).encode("utf-8")


def upgrade_file(src: str | Path, dst: str | Path, schema: SchemaSpec = None) -> list[str]:
    """Read ``src`` (text or binary; through ``schema``, a user's own caffe.proto, when given),
    upgrade it to the current format and write ``dst`` in protonet's schema, as text
    (``.prototxt``/``.pbtxt``/``.txt``) or binary (``.caffemodel``/``.binaryproto``/``.pb``) by its
    extension, with the forks' spellings of what protonet implements in BVLC's (dilation, layer
    params at a fork's own field number). Fields protonet's schema lacks are left out, with a
    warning. Returns the names of the steps that ran (empty for a current file). A current file
    upgraded onto itself is left alone (not rewritten: its comments stay); a legacy one is
    replaced in place (atomically)."""
    out = Path(dst)
    suffix = out.suffix.lower()
    if suffix not in TEXT_SUFFIXES + BINARY_SUFFIXES:
        raise ProtonetError(f"cannot tell the output format from the extension '{out.suffix}': use "
                            f"{'/'.join(TEXT_SUFFIXES)} for text or {'/'.join(BINARY_SUFFIXES)} for binary",
                            Location(str(dst)))
    if not out.parent.is_dir():
        raise ProtonetError(f"output directory '{out.parent}' does not exist", Location(str(dst)))
    loaded = read_net(src, user_schema(schema))
    for f in loaded.foreign:
        log.warning("%s: %s (%s) left out: protonet's schema has no such field", src, f.key, f.value)
    net, ran = upgrade_net(loaded.net, loaded.loc())
    notes = normalize(net, lambda i, name: loaded.loc(net.layer[i], i) if i is not None else loaded.loc())
    ran = ran + notes
    in_place = out.exists() and os.path.samefile(src, out)
    if in_place and not ran and (suffix in BINARY_SUFFIXES) == loaded.binary:
        log.info("%s: already current; left unchanged", src)
        return ran
    write_bytes_atomic(out, serialize_net(net, suffix in BINARY_SUFFIXES), may_replace=src if in_place else None)
    log.info("%s -> %s: %s", src, dst, ", ".join(ran) if ran else "already current")
    return ran
