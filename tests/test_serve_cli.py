"""``protonet serve``'s refusals that come before any server starts (these run everywhere; the
server itself is tested in test_serve.py, in an environment with PyTriton)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from protonet.cli import main
from protonet.errors import ProtonetError
from protonet.serve import SOCKET_PATH_MAX, make_workdir, model_name, prepare

from test_serve import ROOT, uint8_model  # noqa: E402  (tests/ is on sys.path: conftest)


def test_without_pytriton_the_error_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pytriton", None)
    monkeypatch.setitem(sys.modules, "pytriton.triton", None)
    assert main(["serve", str(ROOT / "nets" / "lenet.prototxt")]) == 2
    err = capsys.readouterr().err
    assert "protonet serve needs PyTriton" in err and "pip install 'protonet[serve]'" in err


def test_names_are_file_stems_made_safe():
    assert model_name("/x/resnet50.onnx") == "resnet50"
    assert model_name("my net (v2).prototxt") == "my_net__v2_"
    assert model_name("a.b-c_d.onnx") == "a.b-c_d"


def test_weights_pair_with_definitions(tmp_path):
    import protonet

    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(uint8_model().SerializeToString())
    fixed = tmp_path / "fixed.onnx"
    protonet.compile(ROOT / "nets" / "lenet.prototxt", batch=2).save(fixed)
    net = str(ROOT / "nets" / "lenet.prototxt")
    with pytest.raises(ProtonetError, match=r"-w: 2 weight file\(s\) for 1 net definition\(s\)"):
        prepare([str(onnx_path), net], ["a.caffemodel", "b.caffemodel"])
    served = prepare([str(onnx_path), str(fixed), net])
    assert [(m.name, m.batched) for m in served] == [("m", True), ("fixed", False), ("lenet", True)]
    assert served[2].inputs[0].shape == (1, 28, 28)  # a definition is compiled with --batch dynamic
    assert [(t.name, t.dtype, t.shape) for t in served[0].inputs] == [("image", np.uint8, (3, 8, 8))]
    assert served[1].inputs[0].shape == (2, 1, 28, 28)  # a fixed batch: served unbatched, whole shape


def test_the_workspace_keeps_socket_paths_short(tmp_path, monkeypatch):
    """PyTriton's Unix sockets live in the workspace: a long temporary directory moves it to
    /tmp, and a name too long even there is refused."""
    import tempfile

    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    d = make_workdir(["lenet-embedded"], 2)
    try:
        assert d.parent == Path("/tmp")
        assert len(f"{d}/ws3/lenet-embedded_0_1-server.sock") <= SOCKET_PATH_MAX
        assert list(deep.iterdir()) == []
    finally:
        d.rmdir()
    before = set(Path("/tmp").glob("pn-serve-*"))
    with pytest.raises(ProtonetError, match="characters too long for the Unix socket paths"):
        make_workdir(["x" * 100], 1)
    assert list(deep.iterdir()) == [] and set(Path("/tmp").glob("pn-serve-*")) == before
