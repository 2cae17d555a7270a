"""Caffe's fork dialects: a user's own schema translated into protonet's, and the fork fields
that change results but that protonet does not implement.

protonet's schema (``proto/caffe.proto``) holds BVLC's messages and the fields that the forks
people ship models from add (README "Fork dialects"). A net read through a user's own
``caffe.proto`` (``--caffe-proto``) is translated into protonet's messages field by field, *by
name*: layer classes read their fields by name, so a fork field whose name protonet knows means
what protonet implements. A field that is set to a value other than its default and that has no
counterpart is recorded as :class:`Foreign`; :func:`check_fields` refuses the net when such a field
belongs to a layer that is still there after phase filtering and deploy conversion, unless the
user names it with ``--ignore-field MSG.FIELD``. The same check refuses the fork fields of
protonet's own schema that are in :data:`UNIMPLEMENTED`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor

from ..errors import Location, SchemaError
from .schema import is_repeated, pb

#: fields of protonet's schema that a fork reads at test time and protonet does not implement:
#: ``MSG.FIELD`` -> what the fork does with it
UNIMPLEMENTED: dict[str, str] = {
    "DropoutParameter.sample_weights_test":
        "Bayesian SegNet samples a dropout mask at test time (Monte Carlo dropout), which a "
        "deterministic compiled net cannot reproduce",
    "ReductionParameter.k": "yjxiong/caffe's Reduction keeps the top k values, which protonet's Reduction does not",
    "PriorBoxParameter.width": "OpenCV's PriorBox takes explicit prior widths, which protonet's PriorBox does not",
    "PriorBoxParameter.height": "OpenCV's PriorBox takes explicit prior heights, which protonet's PriorBox does not",
    "PriorBoxParameter.offset_h": "OpenCV's PriorBox takes per-axis cell offsets, which protonet's PriorBox does not",
    "PriorBoxParameter.offset_w": "OpenCV's PriorBox takes per-axis cell offsets, which protonet's PriorBox does not",
    "DetectionOutputParameter.normalized_bbox": "OpenCV decodes boxes in pixels when it is false; protonet's "
                                                "DetectionOutput decodes normalized boxes (SSD's)",
    "BatchNormParameter.scale_bias": "NVIDIA Caffe's BatchNorm then applies its own scale and bias blobs, which "
                                     "protonet's BatchNorm does not",
}

#: how to name a field on the command line
IGNORE_HINT = "--ignore-field {key}"


@dataclass(frozen=True)
class Foreign:
    """A field set in a user's schema that protonet's schema has no field for."""

    key: str  # MSG.FIELD, MSG the message's short name
    value: str  # the value as text, shortened
    layer: str | None  # the layer it belongs to (None: a net-level field)
    layer_type: str | None


def is_default(msg: Any, fd: FieldDescriptor, value: Any) -> bool:
    """Whether a set field holds what an unset one would mean (an empty repeated field, a
    message whose own fields are all defaults, a scalar equal to its declared default)."""
    if is_repeated(fd):
        return len(value) == 0
    if fd.message_type is not None:
        return all(is_default(value, f, v) for f, v in value.ListFields())
    return value == fd.default_value


def _short(value: Any) -> str:
    text = str(value).replace("\n", " ").strip()
    return text if len(text) <= 60 else text[:57] + "..."


def _scalar(src_fd: FieldDescriptor, dst_fd: FieldDescriptor, value: Any, key: str, path: str) -> Any:
    """One scalar converted from the user's field type to protonet's (enums by value name)."""
    if src_fd.enum_type is not None:
        name = src_fd.enum_type.values_by_number[value].name if value in src_fd.enum_type.values_by_number else None
        if dst_fd.enum_type is not None and name in dst_fd.enum_type.values_by_name:
            return dst_fd.enum_type.values_by_name[name].number
        raise SchemaError(f"{key}: your schema's value {name or value} has no counterpart in protonet's "
                          f"{dst_fd.message_type.name if dst_fd.message_type else dst_fd.cpp_type}", Location(path))
    if dst_fd.enum_type is not None:
        if isinstance(value, int) and value in dst_fd.enum_type.values_by_number:
            return value
        raise SchemaError(f"{key}: protonet reads an enum here; your schema's {value!r} is not one of its "
                          f"values", Location(path))
    numeric = (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT32,
               FieldDescriptor.CPPTYPE_UINT64, FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT,
               FieldDescriptor.CPPTYPE_BOOL)
    if src_fd.cpp_type == dst_fd.cpp_type:
        return value
    if src_fd.cpp_type in numeric and dst_fd.cpp_type in numeric:
        if dst_fd.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
            return bool(value)
        if dst_fd.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
            return float(value)
        if float(value) != int(value):
            raise SchemaError(f"{key}: protonet reads an integer here; your schema gives {value!r}", Location(path))
        return int(value)
    raise SchemaError(f"{key}: your schema's field type does not match protonet's (a {src_fd.type} vs "
                      f"{dst_fd.type} field of the same name)", Location(path))


def _copy(src: Any, dst: Any, path: str, foreign: list[Foreign], layer: tuple[str | None, str | None]) -> None:
    for fd, value in src.ListFields():
        owner = src.DESCRIPTOR.name
        key = f"{owner}.{fd.name}"
        dfd = dst.DESCRIPTOR.fields_by_name.get(fd.name)
        if dfd is None:
            if not is_default(src, fd, value):
                foreign.append(Foreign(key, _short(value), *layer))
            continue
        if (fd.message_type is None) != (dfd.message_type is None):
            raise SchemaError(f"{key}: your schema declares it differently from protonet's (a "
                              f"{fd.message_type.name if fd.message_type else fd.type} vs a "
                              f"{dfd.message_type.name if dfd.message_type else dfd.type} field)", Location(path))
        items = list(value) if is_repeated(fd) else [value]
        if len(items) > 1 and not is_repeated(dfd):
            raise SchemaError(f"{key}: {len(items)} values, where protonet's schema holds one", Location(path))
        if fd.message_type is not None:
            # optional <-> repeated (older schemas had optional pad/kernel_size/stride): item by item
            for item in items:
                sub = getattr(dst, fd.name).add() if is_repeated(dfd) else getattr(dst, fd.name)
                sub.SetInParent()
                here = layer
                if owner == "NetParameter" and fd.name in ("layer", "layers"):
                    name = getattr(item, "name", "") or (item.layer.name if fd.name == "layers" and
                                                           item.HasField("layer") else "")
                    ltype = item.type if isinstance(item.type, str) else None
                    here = (name or "(unnamed)", ltype or None)
                _copy(item, sub, path, foreign, here)
            continue
        converted = [_scalar(fd, dfd, v, key, path) for v in items]
        if is_repeated(dfd):
            getattr(dst, fd.name).extend(converted)
        else:
            setattr(dst, fd.name, converted[0])


def translate(net: Any, path: str) -> tuple[Any, list[Foreign]]:
    """A NetParameter of a user's schema as protonet's NetParameter (a new message), by field
    name, and the set fields that protonet's schema has no field for."""
    out = pb.NetParameter()
    foreign: list[Foreign] = []
    _copy(net, out, path, foreign, (None, None))
    return out, foreign


#: LayerParameter fields at a fork's own number (binaries of that fork) -> the field they are
WIRE_ALIASES: dict[str, str] = {
    "bn_param_pspnet": "bn_param", "scale_param_tsn": "scale_param", "bias_param_tsn": "bias_param",
    "proposal_param_happynear": "proposal_param", "psroi_pooling_param_happynear": "psroi_pooling_param",
    "permute_param_happynear": "permute_param",
}


def normalize(net: Any, where: Callable[[int | None, str | None], Location]) -> list[str]:
    """Fork spellings of what protonet implements, rewritten in place (on the frontend's own copy)
    into BVLC's: a layer param read at a fork's own field number (:data:`WIRE_ALIASES`) moves to
    the field of that name; yjxiong/caffe's ``dilation_h``/``dilation_w`` and DeepLab's atrous
    ``hole`` (``hole_h``/``hole_w`` override it per axis) become ``dilation: [h, w]``. Returns notes."""
    notes: list[str] = []
    for i, layer in enumerate(net.layer):
        for alias, name in WIRE_ALIASES.items():
            if layer.HasField(alias):
                if layer.HasField(name):
                    raise SchemaError(f"both {name} and {alias} (another fork's number for it) are set",
                                      where(i, layer.name))
                getattr(layer, name).CopyFrom(getattr(layer, alias))
                layer.ClearField(alias)
    for i, layer in enumerate(net.layer):
        if not layer.HasField("convolution_param"):
            continue
        c = layer.convolution_param
        for h_name, w_name, both, fork in (("dilation_h", "dilation_w", None, "yjxiong/caffe"),
                                           ("hole_h", "hole_w", "hole", "DeepLab")):
            names = [n for n in (both, h_name, w_name) if n]
            if not any(c.HasField(n) for n in names):
                continue
            if len(c.dilation):
                raise SchemaError(f"dilation and {'/'.join(names)} cannot both be set", where(i, layer.name))
            base = getattr(c, both) if both else 1
            h = getattr(c, h_name) if c.HasField(h_name) else base
            w = getattr(c, w_name) if c.HasField(w_name) else base
            c.dilation.extend([h or 1, w or 1])
            for n in names:
                c.ClearField(n)
            notes.append(f"layer '{layer.name}': {'/'.join(names)} ({fork}) read as dilation [{h or 1}, {w or 1}]")
    return notes


def _set_fields(msg: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any, FieldDescriptor]]:
    """Every set field below ``msg``: (MSG.FIELD, message, value, descriptor)."""
    for fd, value in msg.ListFields():
        yield f"{msg.DESCRIPTOR.name}.{fd.name}", msg, value, fd
        if fd.message_type is not None:
            for item in value if is_repeated(fd) else [value]:
                yield from _set_fields(item)


def _unknown(msg: Any) -> Iterator[str]:
    """``MSG.N`` for every field number below ``msg`` that the schema does not define (a binary
    file written through a fork's schema)."""
    for f in unknown_fields.UnknownFieldSet(msg):
        yield f"{msg.DESCRIPTOR.name}.{f.field_number}"
    for fd, value in msg.ListFields():
        if fd.message_type is not None:
            for item in value if is_repeated(fd) else [value]:
                yield from _unknown(item)


def check_fields(net: Any, foreign: Iterable[Foreign], ignore: Iterable[str],
                 where: Callable[[int | None, str | None], Location]) -> None:
    """Refuse the net when a layer it still has sets a field that would change its results and
    that protonet does not implement: a field of the user's schema without a counterpart
    (``foreign``), one of :data:`UNIMPLEMENTED` (a scalar set to another value than its default, a
    message present at all), or a field number of a binary file that no schema protonet knows
    defines (``MSG.N``). ``ignore`` holds the ``MSG.FIELD`` names the
    user accepts; ``where(index, layer name)`` locates a layer. One error names the first such
    field and lists the others."""
    skip = set(ignore)
    names = {layer.name: i for i, layer in enumerate(net.layer)}
    found: list[tuple[Location, str, str]] = []
    for f in foreign:
        if f.key in skip or (f.layer is not None and f.layer not in names):
            continue  # ignored, or its layer went with phase filtering / deploy conversion
        why = "results would differ from your fork"
        found.append((where(names.get(f.layer) if f.layer else None, f.layer),
                      f"{f.key} is set ({f.value}) in your schema, and protonet's schema has no such field",
                      f"{why}; if it does not change inference, pass {IGNORE_HINT.format(key=f.key)}"))
    for i, layer in enumerate(net.layer):
        for key in dict.fromkeys(_unknown(layer)):
            if key not in skip:
                found.append((where(i, layer.name), f"field number {key.rsplit('.', 1)[1]} of {key.rsplit('.', 1)[0]} "
                              f"is set in this binary file and is in no schema protonet knows",
                              f"a Caffe fork wrote it and results may differ from that fork's: give the fork's "
                              f"caffe.proto with --caffe-proto FORK.proto, or pass {IGNORE_HINT.format(key=key)} "
                              f"if it does not change inference"))
        for key, msg, value, fd in _set_fields(layer):
            if key in UNIMPLEMENTED and key not in skip and (fd.message_type is not None
                                                              or not is_default(msg, fd, value)):
                found.append((where(i, layer.name), f"{key}: {_short(value)} is set, and protonet does not implement it",
                              f"{UNIMPLEMENTED[key]}: results would differ from your fork; to run it without that, "
                              f"pass {IGNORE_HINT.format(key=key)}"))
    if found:
        loc, what, why = found[0]
        more = f" (also: {', '.join(w.split(' ', 1)[0] for _, w, _ in found[1:])})" if len(found) > 1 else ""
        raise SchemaError(f"{what}: {why}{more}", loc)


__all__ = ["Foreign", "UNIMPLEMENTED", "WIRE_ALIASES", "check_fields", "is_default", "normalize", "translate"]
