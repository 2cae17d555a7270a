"""Compile proto/caffe.proto into caffe_pb2.py with grpcio-tools' bundled protoc.

Used by setup.py (build_py) and by tests/test_schema.py (staleness check).
Run directly to regenerate into protonet/:  python tools/gen_proto.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTO_FILE = PROTO_DIR / "caffe.proto"
DEFAULT_OUT = ROOT / "protonet"


def generate(out_dir: str | Path = DEFAULT_OUT) -> Path:
    """Run protoc on proto/caffe.proto, writing caffe_pb2.py into out_dir.

    Returns the path of the generated module. Raises RuntimeError on failure.
    """
    from grpc_tools import protoc  # build-time dependency only

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Include dir with the well-known types (google/protobuf/*.proto).
    wkt_include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",  # argv[0], ignored by protoc
        f"-I{PROTO_DIR}",
        f"-I{wkt_include}",
        f"--python_out={out_dir}",
        str(PROTO_FILE),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed (exit {rc}) compiling {PROTO_FILE}")
    out = out_dir / "caffe_pb2.py"
    if not out.is_file():
        raise RuntimeError(f"protoc did not produce {out}")
    return out


if __name__ == "__main__":
    target = generate(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT)
    print(target)
