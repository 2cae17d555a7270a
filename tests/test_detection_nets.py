"""The two-stage detectors of nets/detection/ (Faster R-CNN ZF and VGG-16, R-FCN ResNet-50, each
with py-faster-rcnn's Python proposal layer): up to date with tools/gen_detection.py, compiled
at a small input and verified blob by blob, the proposals included."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from protonet.build import BuildOptions
from protonet.pipeline import compile_net, verify_compiled

ROOT = Path(__file__).resolve().parent.parent
NETS = ROOT / "nets" / "detection"
SIZE = 128


def _generator():
    spec = importlib.util.spec_from_file_location("_gen_detection", ROOT / "tools" / "gen_detection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("key", sorted(_generator().BUILDERS))
def test_detection_nets_are_up_to_date(key: str):
    assert (NETS / f"{key}.prototxt").read_text() == _generator().generate(key), (
        f"nets/detection/{key}.prototxt is stale; run python tools/gen_detection.py {key}")


def _verify(key: str, rows: int, outputs: dict[str, tuple[int, ...]], optimize: bool = True) -> None:
    opts = BuildOptions(init="random", seed=1, input_shapes={"data": (1, 3, SIZE, SIZE)})
    c = compile_net(NETS / f"{key}.prototxt", options=opts, optimize=optimize)
    assert "Python" not in {n.type for n in c.graph.nodes} and "Proposal" in {n.type for n in c.graph.nodes}
    assert {v.name: v.shape for v in c.graph.outputs} == outputs
    c.graph.outputs.append(c.graph.values["rois"])  # onnxruntime's proposals come back too
    rng = np.random.default_rng(0)
    feeds = {"data": rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32),
             "im_info": np.array([[SIZE, SIZE, 1.0]], np.float32)}
    res = verify_compiled(c, feeds, provider="cpu")
    bad = [(b.name, b.result.describe()) for b in res.blobs if not b.ok]
    assert res.ok, f"blobs that differ: {bad}"
    assert {"rois", "cls_prob"} <= {b.name for b in res.blobs}
    # the proposals: inside the image, at least min_size (16) wide and high, then zero padding
    rois = res.outputs["rois"]
    valid = rois[:, 3] > 0
    n = int(valid.sum())
    assert 1 <= n <= rows and valid[:n].all() and not rois[n:].any()
    box = rois[:n, 1:]
    assert (rois[:n, 0] == 0).all() and (box >= 0).all() and (box <= SIZE - 1).all()
    assert (box[:, 2] - box[:, 0] + 1 >= 16 - 1e-3).all() and (box[:, 3] - box[:, 1] + 1 >= 16 - 1e-3).all()


def test_faster_rcnn_zf_verifies():
    # unoptimized: one reference run of its 300 x 9216 x 4096 fc6 is enough for the default suite
    _verify("faster_rcnn_zf", 300, {"bbox_pred": (300, 84), "cls_prob": (300, 21)}, optimize=False)


def test_rfcn_resnet50_verifies():
    _verify("rfcn_resnet50", 300, {"cls_prob": (300, 21), "bbox_pred": (300, 8)})


@pytest.mark.slow
def test_faster_rcnn_vgg16_verifies():
    _verify("faster_rcnn_vgg16", 300, {"bbox_pred": (300, 84), "cls_prob": (300, 21)})
