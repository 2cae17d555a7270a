"""The classes generated from proto/caffe.proto (by grpcio-tools' protoc at build time)."""
from __future__ import annotations

try:
    from .. import caffe_pb2 as pb
except ImportError as e:  # pragma: no cover - a source checkout that was never built
    raise ImportError("protonet/caffe_pb2.py is missing: it is generated from proto/caffe.proto at build "
                      "time; install the package (pip install -e .) or run python tools/gen_proto.py") from e

__all__ = ["pb"]
