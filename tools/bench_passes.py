"""Measure what protonet's optimizer passes buy in onnxruntime (CPU, 2 threads).

    python tools/bench_passes.py [--reps 7] [--warmup 2] [--batches 1 8] [--out benchmarks/passes.md] [net ...]
    python tools/bench_passes.py --all          # every nets/*.prototxt (slow on 2 cores)

For each net and batch size, the net is built once (random weights: the latency does not
depend on their values), copied, and the copy optimized with ``run_passes``; both graphs are
exported to ONNX and run in onnxruntime sessions with 2 intra-op threads and onnxruntime's
own graph optimizations on (so the figures show what the passes add on top of those).
Repetitions are interleaved (unoptimized, optimized, then the other order, ...) so that
drift of the machine hits both alike; the median latency is reported. Outputs of the two
models are checked to agree (tolerances.VERIFY) before timing. The result file gets the machine
description, the command and one row per (net, batch).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from protonet.build import BuildOptions  # noqa: E402
from protonet.export import export  # noqa: E402
from protonet.passes import run_passes  # noqa: E402
from protonet.pipeline import compile_net, random_inputs  # noqa: E402
from protonet.tolerances import compare  # noqa: E402

DEFAULT_NETS = ("lenet", "alexnet", "googlenet", "vgg16", "resnet50", "mobilenet_v1", "squeezenet1_1",
                "densenet121")
THREADS = 2
DEFAULT_OUT = str(ROOT / "benchmarks" / "passes.md")


#: --ort-opt -> onnxruntime's graph optimization level
ORT_LEVELS = {"all": "ORT_ENABLE_ALL", "basic": "ORT_ENABLE_BASIC", "none": "ORT_DISABLE_ALL"}
ORT_OPT = "all"


def machine() -> str:
    from machine import describe

    m = describe()
    return (f"{m['CPU']}, {m['cores available']} cores available, {m['RAM']}, {m['OS']}; "
            f"Python {m['python']}, onnxruntime {ort.__version__} (CPUExecutionProvider, "
            f"intra_op_num_threads={THREADS}, inter_op_num_threads=1, intra-op spinning off, "
            f"graph optimizations {ORT_LEVELS[ORT_OPT]}), "
            f"numpy {np.__version__}")


#: one repetition runs a model this long at least (several calls, averaged) so that sub-millisecond
#: nets are not measured at the timer's and the scheduler's resolution
MIN_REP_S = 0.05


class _Session:
    def __init__(self, model):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[ORT_OPT])
        # two sessions alternate: a pool that spins after its run would steal the other's cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sess = ort.InferenceSession(model.SerializeToString(), sess_options=so,
                                         providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.sess.get_outputs()]

    def run(self, feeds):
        return dict(zip(self.names, self.sess.run(self.names, feeds)))


def cpu_session(model) -> _Session:
    return _Session(model)


def time_once(sess, feeds, calls: int = 1) -> float:
    """Mean seconds per call over ``calls`` back-to-back calls."""
    t = time.perf_counter()
    for _ in range(calls):
        sess.run(feeds)
    return (time.perf_counter() - t) / calls


def bench(net: str, batch: int, reps: int, warmup: int) -> dict:
    g0 = compile_net(ROOT / "nets" / f"{net}.prototxt", options=BuildOptions(batch=batch, init="random")).graph
    g1 = g0.copy()
    results = run_passes(g1)
    m0, m1 = export(g0, check=False), export(g1, check=False)
    s0, s1 = cpu_session(m0), cpu_session(m1)
    feeds = random_inputs(g0, seed=0)
    o0, o1 = s0.run(feeds), s1.run(feeds)
    worst = max(compare(o1[k], o0[k]).ratio for k in o0)
    if worst > 1:
        raise SystemExit(f"{net} batch {batch}: optimized and unoptimized outputs differ ({worst:.2e}x the tolerance)")
    one = max(min(time_once(s0, feeds), time_once(s1, feeds)) for _ in range(max(warmup, 1)))
    calls = max(1, int(np.ceil(MIN_REP_S / max(one, 1e-6))))
    t0, t1 = [], []
    for r in range(reps):  # interleaved, alternating which goes first
        if r % 2 == 0:
            t0.append(time_once(s0, feeds, calls))
            t1.append(time_once(s1, feeds, calls))
        else:
            t1.append(time_once(s1, feeds, calls))
            t0.append(time_once(s0, feeds, calls))
    return {"net": net, "batch": batch, "ir0": len(g0.nodes), "ir1": len(g1.nodes),
            "onnx0": len(m0.graph.node), "onnx1": len(m1.graph.node),
            "ms0": 1e3 * statistics.median(t0), "ms1": 1e3 * statistics.median(t1), "rel": worst,
            "changes": sum(len(r.changes) for r in results)}


def render(rows: list[dict], args: argparse.Namespace, elapsed: float) -> str:
    lines = [
        "# protonet optimizer passes: onnxruntime CPU latency with and without",
        "",
        f"Machine: {machine()}.",
        "",
        f"Command: `python tools/bench_passes.py --ort-opt {ORT_OPT} --reps {args.reps} --warmup {args.warmup} "
        f"--batches {' '.join(map(str, args.batches))} {' '.join(args.nets)}"
        + ("" if args.out == DEFAULT_OUT else f" --out {args.out}")
        + f"` ({elapsed:.0f} s in all).",
        "",
        "Each row: the net built with random weights at that batch size; *unopt* is the graph as built, "
        "*opt* after `run_passes` (default passes). Latency is the median of "
        f"{args.reps} interleaved repetitions after {args.warmup} warm-up runs each (a repetition of a "
        f"fast net averages back-to-back calls filling at least {MIN_REP_S * 1e3:.0f} ms); ratio = opt / unopt "
        "(below 1 is faster). ONNX nodes are counted in the exported models (before onnxruntime's own "
        f"graph optimizations, {ORT_LEVELS[ORT_OPT]} in both sessions). err/tol = the largest difference "
        "between the two models' outputs as a fraction of verify's element-wise tolerance "
        "(protonet/tolerances.py).",
        "",
        "| net | batch | IR layers unopt → opt | ONNX nodes unopt → opt | unopt ms | opt ms | ratio | err/tol |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['net']} | {r['batch']} | {r['ir0']} → {r['ir1']} | {r['onnx0']} → {r['onnx1']} | "
                     f"{r['ms0']:.2f} | {r['ms1']:.2f} | {r['ms1'] / r['ms0']:.3f} | {r['rel']:.1e} |")
    note = ("both sessions run with onnxruntime's own graph optimizations on (ORT_ENABLE_ALL), which "
            "include fusions of Conv with a following Mul/Add and with activations, so the latency ratio can be "
            "much closer to 1 than the node-count reduction; the ONNX node counts show what the passes remove "
            "for any runtime." if ORT_OPT == "all" else
            f"onnxruntime's own graph optimizations are at {ORT_LEVELS[ORT_OPT]} in both sessions, standing "
            "in for a runtime that does not fuse by itself: the ratio shows what protonet's passes alone "
            "are worth.")
    lines += ["", f"Notes: {note} With 2 cores, differences within a few percent are noise.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nets", nargs="*", help=f"net names in nets/ (default: {' '.join(DEFAULT_NETS)})")
    ap.add_argument("--all", action="store_true", help="every nets/*.prototxt")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--ort-opt", choices=sorted(ORT_LEVELS), default="all",
                    help="onnxruntime's own graph optimization level in both sessions (default all)")
    args = ap.parse_args(argv)
    global ORT_OPT
    ORT_OPT = args.ort_opt
    if args.all:
        args.nets = sorted(p.stem for p in (ROOT / "nets").glob("*.prototxt"))
    elif not args.nets:
        args.nets = list(DEFAULT_NETS)
    start = time.perf_counter()
    rows = []
    for net in args.nets:
        for batch in args.batches:
            r = bench(net, batch, args.reps, args.warmup)
            rows.append(r)
            print(f"{net:>16} b{batch}: onnx {r['onnx0']:4d} -> {r['onnx1']:4d}  {r['ms0']:9.2f} ms -> "
                  f"{r['ms1']:9.2f} ms  ratio {r['ms1'] / r['ms0']:.3f}", flush=True)
    text = render(rows, args, time.perf_counter() - start)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
