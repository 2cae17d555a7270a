"""Whole networks from nets/: compile, pass the ONNX checker, verify blob by blob, and
reproduce the published parameter and MAC counts (tests/published_figures.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from protonet.analysis import summarize
from protonet.build import BuildOptions
from protonet.export import export
from protonet.pipeline import compile_net, random_inputs, verify_compiled

from published_figures import PUBLISHED

NETS = Path(__file__).resolve().parent.parent / "nets"
CORE = ["lenet", "alexnet", "googlenet", "vgg16", "resnet50"]
ALL = sorted(p.stem for p in NETS.glob("*.prototxt"))


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("net", CORE)
def test_core_net_verifies(net: str, batch: int):
    c = compile_net(NETS / f"{net}.prototxt", options=BuildOptions(batch=batch), optimize=True)
    assert c.graph.inputs[0].shape[0] == batch
    export(c.graph)  # runs onnx.checker with full shape inference
    res = verify_compiled(c, random_inputs(c.graph, seed=batch))
    assert res.ok, f"worst blob {res.worst.name}: {res.worst.ratio:.3g} of the tolerance"
    assert len(res.blobs) >= len(c.graph.nodes) - len(c.graph.inputs)


@pytest.mark.parametrize("net", [n for n in ALL if n not in CORE])
def test_zoo_net_verifies(net: str):
    """Every other net of the zoo at batch 1: optimized ONNX vs the reference, every blob."""
    c = compile_net(NETS / f"{net}.prototxt", options=BuildOptions(batch=1), optimize=True)
    res = verify_compiled(c, random_inputs(c.graph))
    assert res.ok, f"worst blob {res.worst.name}: {res.worst.ratio:.3g} of the tolerance"


def _counts(net: str) -> tuple[int, int]:
    fig = PUBLISHED[net]
    params = summarize(compile_net(NETS / f"{net}.prototxt").graph).total.params
    if "macs_input" in fig:
        opts = BuildOptions(input_shapes={"": tuple(fig["macs_input"])})
        macs = summarize(compile_net(NETS / f"{net}.prototxt", options=opts).graph).total.macs
    else:
        macs = summarize(compile_net(NETS / f"{net}.prototxt").graph).total.macs
    return params, macs


@pytest.mark.parametrize("net", ALL)
def test_summary_matches_published(net: str):
    fig = PUBLISHED[net]
    params, macs = _counts(net)
    # approximate published figures are rounded (e.g. "7M"): they get the rounding's tolerance
    tol = 0.05 if fig.get("approx") else 0.02
    assert abs(params / fig["params"] - 1) <= tol, f"params {params:,} vs published {fig['params']:,}"
    assert abs(macs / fig["macs"] - 1) <= tol, f"MACs {macs:,} vs published {fig['macs']:,.0f}"


def test_vgg16_exact_published_counts():
    """Simonyan & Zisserman's VGG-16: 138,357,544 params (138,344,128 weights without biases),
    15,470,264,320 MACs, and the 15,087,080 activations of the conv/pool/fc layers (the common
    table's count: the input and the softmax excluded, in-place ReLUs sharing their blob)."""
    s = summarize(compile_net(NETS / "vgg16.prototxt").graph)
    assert s.total.params == 138_357_544
    assert s.total.weights == 138_344_128
    assert s.total.macs == 15_470_264_320
    values = s.total.activation_bytes // 4
    assert values - 3 * 224 * 224 - 1000 == 15_087_080
