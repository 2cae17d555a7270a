"""One file per bad-input diagnostic (tests/data/bad/*.prototxt, first line ``# expect: REGEX``).

Each must give exactly one located line on stderr, exit code 2, no traceback and no output file.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from protonet.frontend.schema import pb

BAD = Path(__file__).parent / "data" / "bad"
CASES = sorted(BAD.glob("*.prototxt"))


def run_cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    # the checkout under test first, whatever else PYTHONPATH names (an installed protonet is not it)
    e["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent)] +
                                      [p for p in e.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, "-m", "protonet", *args], cwd=cwd, capture_output=True, text=True,
                          env=e, timeout=300)


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect:' line"
    return first[len("# expect: "):]


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_bad_input(case: Path, tmp_path: Path):
    work = tmp_path / "w"
    work.mkdir()
    (work / case.name).write_text(case.read_text())
    canary = tmp_path / "canary"
    canary.mkdir()
    marker = tmp_path / "imported"
    (canary / "protonet_canary.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    res = run_cli(["compile", case.name, "-o", "out.onnx"], work, {"PYTHONPATH": str(canary)})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert re.search(expected(case), lines[0]), f"{lines[0]!r} !~ {expected(case)!r}"
    assert sorted(p.name for p in work.iterdir()) == [case.name], "an output file was left behind"
    assert not marker.exists(), "a module named in the prototxt was imported"


def _write_caffemodel(path: Path, conv_shape: tuple[int, ...]) -> None:
    net = pb.NetParameter()
    layer = net.layer.add()
    layer.name, layer.type = "conv1", "Convolution"
    for shape in (conv_shape, (conv_shape[0],)):
        blob = layer.blobs.add()
        blob.shape.dim.extend(shape)
        n = 1
        for d in shape:
            n *= d
        blob.data.extend([0.5] * n)
    path.write_bytes(net.SerializeToString())


NET = """input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 }
}
"""


def test_weights_of_wrong_shape(tmp_path: Path):
    (tmp_path / "net.prototxt").write_text(NET)
    _write_caffemodel(tmp_path / "w.caffemodel", (6, 3, 3, 3))
    res = run_cli(["compile", "net.prototxt", "-w", "w.caffemodel", "-o", "out.onnx"], tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == ("w.caffemodel: layer 'conv1': blob 0 (weight) shape (6, 3, 3, 3) does not match "
                                  "net (4, 3, 3, 3)")
    assert not (tmp_path / "out.onnx").exists()


def test_matching_weights_are_used(tmp_path: Path):
    (tmp_path / "net.prototxt").write_text(NET)
    _write_caffemodel(tmp_path / "w.caffemodel", (4, 3, 3, 3))
    res = run_cli(["compile", "net.prototxt", "-w", "w.caffemodel", "-o", "out.onnx"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "1 layer(s) loaded from w.caffemodel" in res.stdout
    import onnx
    from onnx import numpy_helper

    model = onnx.load(tmp_path / "out.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert (inits["conv1.weight"] == 0.5).all() and inits["conv1.weight"].shape == (4, 3, 3, 3)


def test_missing_file(tmp_path: Path):
    res = run_cli(["compile", "nope.prototxt", "-o", "out.onnx"], tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("nope.prototxt: cannot read")
