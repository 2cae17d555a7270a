"""Caffe's across-channel LRN on onnxruntime's CPU: its LRN kernel against protonet's lowering.

    python tools/bench_lrn.py [--out benchmarks/lrn.md] [--rounds 31]

protonet lowers ACROSS_CHANNELS LRN as x² -> 1x1 Conv with a banded C×C weight (alpha/n on the
band, bias k) -> x / (√s · √√s) for beta 0.75 (x · s^-beta otherwise); the old lowering was the
ONNX ``LRN`` op. Three measurements, each in one run with the variants interleaved round by round
(so that the machine's drift and other people's load hit all alike), onnxruntime CPU with 2
intra-op threads, median and minimum of ``--rounds`` after warm-up:

1. the LRN alone on the input shapes of AlexNet's and GoogLeNet's LRN layers (batch 1);
2. AlexNet and GoogLeNet (nets/, random well-scaled weights) fp32, old lowering against new, batch 1 and 8;
3. AlexNet at batch 1: int8 (QDQ, calibrated on 8 random inputs: this measures speed, not
   accuracy) against fp32, with each lowering.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from protonet.build import BuildOptions  # noqa: E402
from protonet.export import export  # noqa: E402
from protonet.layers import core  # noqa: E402
from protonet.pipeline import compile_net  # noqa: E402
from protonet.quantize import Sample, to_int8  # noqa: E402

THREADS = 2
DEFAULT_OUT = str(ROOT / "benchmarks" / "lrn.md")
#: (where, channels, height, width) of the LRN inputs; both nets use local_size 5, alpha 1e-4, beta 0.75
LRN_SHAPES = (("AlexNet norm1", 96, 55, 55), ("AlexNet norm2", 256, 27, 27),
              ("GoogLeNet pool1/norm1", 64, 56, 56), ("GoogLeNet conv2/norm2", 192, 56, 56))


def _onnx_lrn(a: core.LRNAttrs, g: core.Lowering) -> None:
    g.op("LRN", g.inputs, g.outputs, size=a.size, alpha=a.alpha, beta=a.beta, bias=a.k)


@contextlib.contextmanager
def old_lowering() -> Iterator[None]:
    """Export with the ONNX LRN op, as protonet did before."""
    new = core._lower_lrn_across
    core._lower_lrn_across = _onnx_lrn
    try:
        yield
    finally:
        core._lower_lrn_across = new


def session(model) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = THREADS, 1
    return ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])


def compiled(net: str, batch: int):
    return compile_net(net, options=BuildOptions(batch=batch, init="random"), optimize=True)


def models(net: str, batch: int) -> tuple[object, object, dict[str, np.ndarray]]:
    """(old, new) fp32 ModelProtos of ``net`` at ``batch`` and a random input feed."""
    c = compiled(net, batch)
    with old_lowering():
        old = export(c.graph)
    new = export(c.graph)
    (v,) = c.graph.inputs
    return old, new, {v.name: np.random.default_rng(0).standard_normal(v.shape).astype(np.float32) * 50}


def race(runs: dict[str, Callable[[], object]], rounds: int, warmup: int = 3) -> dict[str, tuple[float, float]]:
    """Median and minimum milliseconds of each run, interleaved round by round."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def feeder(s: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> Callable[[], list]:
    return lambda: s.run(None, feeds)


def cell(t: tuple[float, float]) -> str:
    return f"{t[0]:.2f} ({t[1]:.2f})"


def ratio(a: tuple[float, float], b: tuple[float, float]) -> str:
    """a / b of the medians (of the minima)."""
    return f"{a[0] / b[0]:.2f}x ({a[1] / b[1]:.2f}x)"


def op_table(rounds: int) -> list[str]:
    rows = ["| LRN input (batch 1) | ORT LRN op, ms | protonet lowering, ms | old / new | max rel. diff |",
            "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as d:
        for where, c, h, w in LRN_SHAPES:
            p = Path(d) / "lrn.prototxt"
            p.write_text(f'input: "x" input_shape {{ dim: 1 dim: {c} dim: {h} dim: {w} }}\n'
                         'layer { name: "n" type: "LRN" bottom: "x" top: "y" '
                         'lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }\n')
            old, new, x = models(str(p), 1)
            so, sn = session(old), session(new)
            t = race({"old": feeder(so, x), "new": feeder(sn, x)}, rounds)
            yo, yn = feeder(so, x)()[0], feeder(sn, x)()[0]
            rel = float(np.max(np.abs(yn - yo) / np.maximum(np.abs(yo), 1e-6)))
            rows.append(f"| {where}: {c}×{h}×{w} | {cell(t['old'])} | {cell(t['new'])} | "
                        f"{ratio(t['old'], t['new'])} | {rel:.1e} |")
    return rows


def net_table(rounds: int) -> list[str]:
    rows = ["| net (fp32) | batch | ORT LRN op, ms | protonet lowering, ms | old / new |",
            "|---|---|---|---|---|"]
    for name in ("alexnet", "googlenet"):
        for batch in (1, 8):
            old, new, x = models(str(ROOT / "nets" / f"{name}.prototxt"), batch)
            t = race({"old": feeder(session(old), x), "new": feeder(session(new), x)}, rounds)
            rows.append(f"| {name} | {batch} | {cell(t['old'])} | {cell(t['new'])} | {ratio(t['old'], t['new'])} |")
            del old, new
            gc.collect()
    return rows


def int8_table(rounds: int) -> list[str]:
    old, new, x = models(str(ROOT / "nets" / "alexnet.prototxt"), 1)
    protos = {"old": old, "new": new}
    del old, new
    rng = np.random.default_rng(1)
    samples = [Sample(f"random[{i}]", {k: rng.standard_normal(v.shape).astype(np.float32) * 50 for k, v in x.items()})
               for i in range(8)]
    runs = {}
    for label in ("old", "new"):
        m = protos.pop(label)  # each fp32 proto is dropped once its sessions exist (memory)
        runs[f"int8 {label}"] = feeder(session(to_int8(m, samples)), x)
        runs[f"fp32 {label}"] = feeder(session(m), x)
        del m
        gc.collect()
    t = race(runs, rounds)
    rows = ["| AlexNet, batch 1 | fp32, ms | int8, ms | fp32 / int8 |", "|---|---|---|---|"]
    for label, what in (("old", "ORT LRN op"), ("new", "protonet lowering")):
        f, i = t[f"fp32 {label}"], t[f"int8 {label}"]
        rows.append(f"| {what} | {cell(f)} | {cell(i)} | {ratio(f, i)} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--rounds", type=int, default=31)
    args = ap.parse_args()
    from machine import write_report

    load0 = os.getloadavg()
    results = ["ms as median (minimum) of the rounds; ratios of the medians (of the minima). The LRN alone:", "",
               *op_table(args.rounds), "",
               "Whole nets, fp32:", "", *net_table(args.rounds), "",
               "int8 against fp32:", "", *int8_table(args.rounds)]
    load1 = os.getloadavg()
    loads = f"- load average (1, 5, 15 min): {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f} at the start, " \
            f"{load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f} at the end (other people's runs share the 2 cores)"
    notes = ["The variants of each table run interleaved round by round in one process; ratios of medians, "
             "and of minima in parentheses. "
             "Minima are given because the machine is shared: they show each variant's undisturbed speed.",
             "Weights are random (well-scaled), inputs random: speed only. Exactness is checked by "
             "`protonet verify` and tests/test_caffe_semantics.py (max rel. diff above: lowering against ORT's op)."]
    write_report(args.out, "LRN: onnxruntime's LRN op against protonet's lowering",
                 f"`python tools/bench_lrn.py --rounds {args.rounds}`; onnxruntime {ort.__version__}, "
                 f"CPUExecutionProvider, {THREADS} intra-op threads.", results, notes, [loads])
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
