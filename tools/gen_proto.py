"""Compile proto/caffe.proto into protonet/frontend/caffe.desc (a serialized FileDescriptorSet)
with grpcio-tools' bundled protoc.

The package builds its message classes from that file at import time (protonet/frontend/schema.py),
so it works with every protobuf runtime from 4.25 through 7.x. Used by setup.py (build_py) and by
tests/test_schema.py (staleness check). Run directly to regenerate:  python tools/gen_proto.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTO_FILE = PROTO_DIR / "caffe.proto"
DEFAULT_OUT = ROOT / "protonet" / "frontend"
OUT_NAME = "caffe.desc"


def generate(out_dir: str | Path = DEFAULT_OUT) -> Path:
    """Run protoc on proto/caffe.proto, writing caffe.desc into out_dir (no source info, so the
    bytes depend on the schema only). Returns its path. Raises RuntimeError on failure."""
    from grpc_tools import protoc  # build-time dependency only

    out = Path(out_dir) / OUT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",  # argv[0], ignored by protoc
        f"-I{PROTO_DIR}",
        f"--descriptor_set_out={out}",
        str(PROTO_FILE),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed (exit {rc}) compiling {PROTO_FILE}")
    if not out.is_file():
        raise RuntimeError(f"protoc did not produce {out}")
    return out


if __name__ == "__main__":
    target = generate(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT)
    print(target)
