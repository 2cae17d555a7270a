"""The Caffe message classes, built at import time from a serialized descriptor set.

``proto/caffe.proto`` is compiled at build time (``tools/gen_proto.py``, grpcio-tools' protoc) to
``caffe.desc``, a serialized ``FileDescriptorSet`` shipped in this package. The classes are made
from it here with ``google.protobuf``'s descriptor pool and message factory, which every protobuf
runtime from 4.25 through 7.x provides, so no version-bound generated module is needed. The same
function builds the classes of a user's own ``caffe.proto`` (``--caffe-proto``), compiled at run
time by :func:`compile_proto` into a pool of its own, so that its ``caffe.*`` names never clash
with protonet's.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.internal import enum_type_wrapper

from ..errors import Location, SchemaError
from ..fileio import note_input

log = logging.getLogger(__name__)

DESCRIPTOR_FILE = Path(__file__).with_name("caffe.desc")
#: proto/caffe.proto of a source checkout (absent in an installed package)
SOURCE_PROTO = Path(__file__).resolve().parent.parent.parent / "proto" / "caffe.proto"
#: the message every Caffe schema must define: the file that holds it is the schema's main file
ROOT_MESSAGE = "NetParameter"


def is_repeated(fd: FieldDescriptor) -> bool:
    """Whether a field is repeated, on every supported protobuf runtime (4.25's descriptors have
    ``label`` only; protobuf 7's have ``is_repeated`` only)."""
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


class Schema:
    """The message classes, top-level enums and their values of one Caffe schema, by short name,
    like a generated ``caffe_pb2`` module: ``pb.NetParameter``, ``pb.Phase.Name(1)``, ``pb.TEST``."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet, origin: str) -> None:
        pool = descriptor_pool.DescriptorPool()
        for f in files.file:  # protoc --include_imports writes dependencies first
            pool.Add(f)
        main = [f for f in files.file if any(m.name == ROOT_MESSAGE for m in f.message_type)]
        if not main:
            raise SchemaError(f"the schema defines no message {ROOT_MESSAGE}: not a Caffe caffe.proto",
                              Location(origin))
        fd = pool.FindFileByName(main[-1].name)
        classes = message_factory.GetMessageClassesForFiles([fd.name], pool)
        names: dict[str, Any] = {}
        for full, cls in classes.items():
            if cls.DESCRIPTOR.file.name == fd.name and cls.DESCRIPTOR.containing_type is None:
                names[full.rsplit(".", 1)[-1]] = cls
        for name, enum in fd.enum_types_by_name.items():
            names[name] = enum_type_wrapper.EnumTypeWrapper(enum)
            for value in enum.values:
                names.setdefault(value.name, value.number)
        self._names = names
        self.origin = origin
        self.package = fd.package
        self.pool = pool

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_names"][name]
        except KeyError:
            raise AttributeError(f"the Caffe schema {self.__dict__.get('origin', '')} has no {name!r}") from None

    def __dir__(self) -> list[str]:
        return sorted(self._names)

    def __repr__(self) -> str:
        return f"<Caffe schema {self.origin} ({len(self._names)} names)>"


def compile_proto(path: str | Path) -> descriptor_pb2.FileDescriptorSet:
    """A ``.proto`` file (and what it imports) as a FileDescriptorSet, by grpcio-tools' protoc
    (an optional dependency: ``pip install protonet[proto]``), run as a child process so that
    its messages can be reported."""
    src = Path(path)
    loc = Location(str(path))
    if not src.is_file():
        raise SchemaError("no such schema file", loc)
    note_input(src)  # a command never writes over the schema it reads
    if importlib.util.find_spec("grpc_tools") is None:
        raise SchemaError("compiling a caffe.proto needs protoc from grpcio-tools, which is not installed: "
                          "pip install 'protonet[proto]' (or pip install grpcio-tools)", loc)
    import grpc_tools

    wkt = Path(grpc_tools.__file__).resolve().parent / "_proto"
    fd, out = tempfile.mkstemp(suffix=".desc")
    os.close(fd)
    try:
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{src.resolve().parent}", f"-I{wkt}",
               "--include_imports", f"--descriptor_set_out={out}", str(src.resolve())]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            detail = "; ".join(l.strip() for l in (res.stderr or res.stdout).splitlines() if l.strip())[:2000]
            raise SchemaError(f"protoc cannot compile this schema: {detail or f'exit {res.returncode}'}", loc)
        return descriptor_pb2.FileDescriptorSet.FromString(Path(out).read_bytes())
    except subprocess.TimeoutExpired:
        raise SchemaError("protoc did not finish compiling this schema in 120 s", loc) from None
    finally:
        Path(out).unlink(missing_ok=True)


_USER_SCHEMAS: dict[tuple[str, int, int], Schema] = {}


def load_schema(path: str | Path) -> Schema:
    """The classes of a user's own ``caffe.proto``, compiled at run time (cached per file version)."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        raise SchemaError("no such schema file", Location(str(path))) from None
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key not in _USER_SCHEMAS:
        _USER_SCHEMAS[key] = Schema(compile_proto(path), str(path))
    return _USER_SCHEMAS[key]


def _builtin() -> Schema:
    if DESCRIPTOR_FILE.is_file():
        files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_FILE.read_bytes())
        return Schema(files, "proto/caffe.proto")
    if SOURCE_PROTO.is_file() and importlib.util.find_spec("grpc_tools") is not None:
        # a source checkout that was never built: compile the schema now (python tools/gen_proto.py saves it)
        log.info("%s is missing: compiling %s", DESCRIPTOR_FILE, SOURCE_PROTO)
        return Schema(compile_proto(SOURCE_PROTO), "proto/caffe.proto")
    raise ImportError(f"{DESCRIPTOR_FILE} is missing: it is compiled from proto/caffe.proto at build time; "
                      "install the package (pip install -e .) or run python tools/gen_proto.py")


#: protonet's own schema: BVLC Caffe and the fork dialects built in
pb = _builtin()

__all__ = ["Schema", "compile_proto", "is_repeated", "load_schema", "pb"]
