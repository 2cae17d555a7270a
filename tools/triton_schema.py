"""Write Triton's ModelConfig schema (model_config.proto, as tritonclient ships it compiled) to
tests/data/triton/model_config.desc: a serialized FileDescriptorSet that the tests parse every
written config.pbtxt against where tritonclient cannot be installed (it needs protobuf<7).

    python tools/triton_schema.py                      # from an installed tritonclient[grpc]
    python tools/triton_schema.py tritonclient-X.whl   # from a downloaded wheel (pip download --no-deps)
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
import zipfile
from pathlib import Path

from google.protobuf import descriptor_pb2

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "triton" / "model_config.desc"
MODULE = "tritonclient/grpc/model_config_pb2.py"


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        if argv:
            with zipfile.ZipFile(argv[0]) as z:
                z.extract(MODULE, tmp)
            path = Path(tmp) / MODULE
        else:
            spec = importlib.util.find_spec("tritonclient.grpc")
            if spec is None or not spec.submodule_search_locations:
                print("tritonclient[grpc] is not installed: give a tritonclient wheel", file=sys.stderr)
                return 2
            path = Path(list(spec.submodule_search_locations)[0]) / "model_config_pb2.py"
        # loaded as a file: the package's __init__ needs grpc, the schema module only protobuf
        spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    fds = descriptor_pb2.FileDescriptorSet()
    module.DESCRIPTOR.CopyToProto(fds.file.add())
    OUT.write_bytes(fds.SerializeToString())
    print(f"wrote {OUT} ({fds.file[0].name}, {len(fds.file[0].message_type)} messages)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
