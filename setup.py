"""Build hooks for protonet.

All metadata lives in pyproject.toml. This file only makes sure that
protonet/frontend/caffe.desc (proto/caffe.proto compiled to a serialized
FileDescriptorSet, from which the message classes are built at import time) is
generated before the package is built. It is generated in the *source tree* so
that both regular (`pip install .`) and editable (`pip install -e .`) installs
see it; editable installs also run build_py.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

HERE = Path(__file__).resolve().parent
PKG_DIR = HERE / "protonet"
PROTO = HERE / "proto" / "caffe.proto"
GENERATED = PKG_DIR / "frontend" / "caffe.desc"


def _load_gen_proto():
    spec = importlib.util.spec_from_file_location(
        "_protonet_gen_proto", HERE / "tools" / "gen_proto.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def generate_descriptor() -> None:
    if not PROTO.is_file():
        # Building from an sdist: it ships the compiled descriptor set instead.
        if GENERATED.is_file():
            return
        raise RuntimeError(f"{PROTO} is missing and no {GENERATED} to fall back on")
    _load_gen_proto().generate(GENERATED.parent)


class build_py(_build_py):
    def run(self):
        generate_descriptor()
        super().run()


class sdist(_sdist):
    # Make the sdist self-contained: include the compiled descriptor set.
    def run(self):
        generate_descriptor()
        super().run()


setup(cmdclass={"build_py": build_py, "sdist": sdist})
