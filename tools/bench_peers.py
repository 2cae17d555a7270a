"""protonet against OpenCV's dnn module on the same caffemodels, side by side in one run.

    python tools/bench_peers.py [--out benchmarks/peers.md] [--nets resnet50,alexnet] [--batches 1,8]
                                [--rounds 7] [--threads 2]

For each net of nets/ (ResNet-50, GoogLeNet, VGG-16, AlexNet, SqueezeNet 1.1, MobileNet v1,
Inception-v3, MobileNet v2, DenseNet-121):

* a caffemodel is written from Caffe's fillers (seed 0; the speed of a forward pass does not
  depend on the values), so that both tools load the same weights file;
* at each batch size, two worker processes start (so that each holds one copy of the weights:
  VGG-16 stays under 2.5 GB per process): protonet compiles the prototxt with that caffemodel
  (optimized, fp32) to an ONNX file and runs it in onnxruntime with ``intra_op_num_threads`` =
  threads; OpenCV 4.10 reads the same prototxt and caffemodel (``cv2.dnn.readNetFromCaffe``)
  with ``cv2.setNumThreads(threads)``;
* both get the same input array; each timed call (timed inside its worker) is a whole forward
  pass with host input and output (protonet: ``session.run``; OpenCV: ``setInput`` +
  ``forward``); after two warm-up calls each, the calls alternate protonet, OpenCV, protonet,
  ... for ``rounds`` rounds, so that both see the same load on a shared machine, with a pause of
  PAUSE seconds before each call (onnxruntime's threads spin-wait after a run: without the
  pause they slowed whichever tool ran next, int8 after fp32, OpenCV after int8); the median of
  each is reported, and the ratio OpenCV / protonet (above 1: protonet is faster);
* the outputs are compared (largest absolute difference, relative to the largest output) as a
  check that both ran the same net.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: (file in nets/, name in the table)
NETS = [("resnet50", "ResNet-50"), ("googlenet", "GoogLeNet"), ("vgg16", "VGG-16"), ("alexnet", "AlexNet"),
        ("squeezenet1_1", "SqueezeNet 1.1"), ("mobilenet_v1", "MobileNet v1"), ("inception_v3", "Inception-v3"),
        ("mobilenet_v2", "MobileNet v2"), ("densenet121", "DenseNet-121")]

WARMUP = 2


def peak_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(tool: str, net: Path, weights: Path, batch: int, threads: int, out_dir: Path) -> None:
    """Load the net in ``tool`` (protonet, which also writes the input, or opencv, started after
    it), then answer commands on stdin, one a line:
    ``run`` (one forward pass; prints its seconds), ``save`` (writes the last output to
    out_dir/tool.npy), ``quit`` (prints the peak RSS in MB)."""
    import numpy as np

    if tool == "protonet":
        from protonet.build import BuildOptions
        from protonet.export import write_model
        from protonet.pipeline import build_model, compile_net
        from protonet.runtime import make_session

        c = compile_net(net, weights, BuildOptions(batch=batch), optimize=True)
        onnx_path = out_dir / f"b{batch}.onnx"
        write_model(build_model(c), onnx_path)
        inp, outp, shape = c.graph.inputs[0].name, c.graph.outputs[0].name, c.graph.inputs[0].shape
        del c
        sess = make_session(str(onnx_path), "cpu", threads=threads)
        x = np.random.default_rng(batch).standard_normal(shape).astype(np.float32)
        np.save(out_dir / "input.npy", x)  # the OpenCV worker, started next, reads it

        def forward():
            return sess.run({inp: x})[outp]
    elif tool == "int8":
        from protonet.runtime import make_session

        sess = make_session(str(out_dir / "int8.onnx"), "cpu", threads=threads)
        x = np.load(out_dir / "input.npy")
        inp, outp = sess.input_names[0], sess.output_names[0]

        def forward():
            return sess.run({inp: x})[outp]
    else:
        import cv2

        cv2.setNumThreads(threads)
        cvnet = cv2.dnn.readNetFromCaffe(str(net), str(weights))
        x = np.load(out_dir / "input.npy")

        def forward():
            cvnet.setInput(x)
            return cvnet.forward()
    print("ready", flush=True)
    y = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            t = time.perf_counter()
            y = forward()
            print(time.perf_counter() - t, flush=True)
        elif cmd == "save":
            np.save(out_dir / f"{tool}.npy", y)
            print("saved", flush=True)
        else:
            print(peak_mb(), flush=True)
            return


class Worker:
    def __init__(self, tool: str, net: Path, weights: Path, batch: int, threads: int, out_dir: Path):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
        self.p = subprocess.Popen([sys.executable, __file__, "--worker", tool, "--net", str(net), "--weights",
                                   str(weights), "--batches", str(batch), "--threads", str(threads),
                                   "--dir", str(out_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=env)
        self.tool = tool
        self.expect("ready")

    def ask(self, cmd: str) -> str:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.tool} worker stopped (exit {self.p.wait()})")
        return line.strip()

    def expect(self, word: str) -> None:
        line = self.p.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"the {self.tool} worker failed to start (exit {self.p.wait()})")

    def close(self) -> float:
        peak = float(self.ask("quit"))
        self.p.wait()
        return peak


#: the int8 build of one net (argv: net, caffemodel, folder): compiled once with a dynamic batch,
#: quantized by protonet.quantize on seeded standard-normal inputs (the timing inputs' kind),
#: CALIBRATION of them calibrating and HELD_OUT measuring the accuracy gate against fp32;
#: writes folder/int8.onnx, prints the gate's verdict as JSON
CALIBRATION, HELD_OUT = 10, 5
#: seconds between two timed calls: onnxruntime's worker threads spin-wait for a while after a run,
#: and on 2 cores the spinning threads of the tool that ran last would slow the next tool's call
PAUSE = 0.05
#: nets whose int8 build is not run here, and why
INT8_SKIPPED: dict[str, str] = {}  # (VGG-16's int8 build peaks at about 2.8 GB of RSS: it runs)
QUANTIZE = f"""
import json, sys
from pathlib import Path
import numpy as np, onnx
from protonet.api import compile
from protonet.quantize import compile_precision
net, weights, d = sys.argv[1], sys.argv[2], Path(sys.argv[3])
m = compile(net, weights, batch="dynamic")
rng = np.random.default_rng(7)
n = {CALIBRATION} + {HELD_OUT}
np.savez(d / "calib.npz", **{{v.name: rng.standard_normal((n,) + tuple(v.shape[1:])).astype(np.float32)
                              for v in m.compiled.graph.inputs}})
red = compile_precision(m.compiled, m.built.to_model(), "int8", d / "calib.npz", holdout={HELD_OUT}, force=True)
onnx.save(red.model, d / "int8.onnx")
from protonet.runtime import make_session
fp32 = make_session(m.built, "cpu")
margins = []  # how decided fp32 is: (top-1 - top-2) / top-1 per held-out input and output
for sample in red.held_out:
    for y in fp32.run(dict(sample.feeds)).values():
        y = np.sort(np.asarray(y, np.float64).reshape(len(y), -1), axis=1)
        margins += list((y[:, -1] - y[:, -2]) / np.abs(y[:, -1]))
print(json.dumps({{"passed": red.report.passed, "report": red.report.describe(),
                  "margin": float(np.median(margins)) if margins else None}}))
"""


def measure(name: str, batches: list[int], rounds: int, threads: int, int8: bool = True) -> dict:
    """One net, every batch size: protonet fp32, protonet int8 (``int8``) and OpenCV workers, interleaved."""
    import numpy as np

    net = Path(name) if name.endswith(".prototxt") else ROOT / "nets" / f"{name}.prototxt"
    out: dict = {"batches": []}
    with tempfile.TemporaryDirectory(prefix="protonet-peers-") as d:
        weights = Path(d) / "w.caffemodel"
        code = ("import sys; from protonet.pipeline import compile_net, save_caffemodel; "
                "save_caffemodel(compile_net(sys.argv[1]).graph, sys.argv[2])")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-c", code, str(net), str(weights)], check=True, env=env)  # fillers, seed 0
        gate = None
        if int8 and net.stem in INT8_SKIPPED:
            out["int8_skipped"] = INT8_SKIPPED[net.stem]
        elif int8:
            r = subprocess.run([sys.executable, "-c", QUANTIZE, str(net), str(weights), d], capture_output=True,
                               text=True, env=env)
            if r.returncode != 0:
                raise RuntimeError(f"int8 build failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
            gate = json.loads(r.stdout.strip().splitlines()[-1])
            out["int8_gate"] = gate
        for batch in batches:
            workers = [Worker("protonet", net, weights, batch, threads, Path(d))]
            if gate is not None:
                workers.append(Worker("int8", net, weights, batch, threads, Path(d)))
            workers.append(Worker("opencv", net, weights, batch, threads, Path(d)))
            times: dict[str, list[float]] = {w.tool: [] for w in workers}
            try:
                for _ in range(WARMUP):
                    for w in workers:
                        w.ask("run")
                for _ in range(rounds):
                    for w in workers:
                        time.sleep(PAUSE)  # the last tool's threads go idle first (onnxruntime's spin-wait)
                        times[w.tool].append(float(w.ask("run")))
                for w in workers:
                    w.ask("save")
            finally:
                peaks = {w.tool: w.close() for w in workers}
            a, b = np.load(Path(d) / "protonet.npy"), np.load(Path(d) / "opencv.npy")
            t_ours, t_theirs = times["protonet"], times["opencv"]
            if gate is not None:
                q = np.load(Path(d) / "int8.npy")
                out.setdefault("int8", []).append({"batch": batch, "ms": statistics.median(times["int8"]) * 1e3,
                                                   "peak_mb": peaks["int8"],
                                                   "top1": float((q.reshape(b.shape).reshape(len(b), -1).argmax(1)
                                                                  == a.reshape(len(b), -1).argmax(1)).mean())})
            out["batches"].append({"batch": batch, "protonet_ms": statistics.median(t_ours) * 1e3,
                                   "opencv_ms": statistics.median(t_theirs) * 1e3,
                                   "rel_diff": float(np.abs(a.reshape(b.shape) - b).max() / np.abs(b).max()),
                                   "one_hot": bool(np.isin(b, (0.0, 1.0)).all()),
                                   "protonet_peak_mb": peaks["protonet"], "opencv_peak_mb": peaks["opencv"]})
    return out


def _ms(v: float) -> str:
    return f"{v:.0f}" if v >= 1000 else f"{v:.4g}"


def _margin(gate: dict) -> str:
    """The fp32 model's median top-1 margin on the held-out inputs, said where it is too thin for
    top-1 agreement to mean anything (below int8's resolution of about 1/255 of the range)."""
    m = gate.get("margin")
    if m is None:
        return ""
    said = f"; fp32's median top-1 margin on these inputs: {m:.2g} of the top score"
    return said + (" (the filler-weight scores are near-tied: top-1 agreement is a coin toss here, the SQNR "
                   "is the figure that says how close int8 stays)" if m < 1e-3 else "")


def render(rows: list[tuple[str, dict]], args: argparse.Namespace, started: str, loads: tuple[str, str],
           wall: float) -> str:
    from machine import markdown

    int8 = not args.no_int8
    lines = ["# protonet and OpenCV dnn, side by side", "",
             f"`python tools/bench_peers.py --rounds {args.rounds} --threads {args.threads}"
             f"{' --no-int8' if not int8 else ''}` ({started} UTC, {wall / 60:.1f} min). Same prototxt, same "
             f"caffemodel (Caffe's fillers, seed 0), same input; {args.threads} threads each (onnxruntime "
             f"`intra_op_num_threads`, `cv2.setNumThreads`); {WARMUP} warm-up calls each, then {args.rounds} "
             f"rounds of protonet fp32{', protonet int8' if int8 else ''} and OpenCV in turn, {PAUSE * 1e3:.0f} ms "
             "apart (so that the threads of the tool that ran last are idle); medians of whole "
             "forward passes with host input and output. **ratio** = OpenCV / protonet (above 1: protonet is "
             "faster). protonet fp32 is the optimized graph (BatchNorm and Scale folded, activations fused) on "
             "onnxruntime's CPU provider."
             + (f" protonet int8 is `compile --batch dynamic --precision int8` (protonet.quantize: static QDQ, "
                f"per-channel int8 weights) calibrated on {CALIBRATION} standard-normal inputs, its accuracy gate "
                f"(top-1 agreement with fp32 >= 99%, SQNR) measured on {HELD_OUT} more; an int8 ratio is quoted "
                "only where that gate passes (in parentheses where it fails)." if int8 else ""), "",
             f"The machine is shared (load average {loads[0]} at the start, {loads[1]} at the end): few "
             "rounds and medians keep the run short; the ratios, measured under the same load, are the "
             "figures to quote, the milliseconds less so.", ""]
    head = ["net", "batch", "OpenCV 4.10 ms", "protonet fp32 ms", "ratio fp32"]
    if int8:
        head += ["protonet int8 ms", "ratio int8", "int8 gate"]
    head += ["outputs: max diff / max", "peak RSS fp32, OpenCV"]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    fp32_ratios, int8_ratios = [], []
    for label, res in rows:
        if "error" in res:
            lines.append(f"| {label} | - | failed: {res['error']} |" + " |" * (len(head) - 3))
            continue
        q8 = {q["batch"]: q for q in res.get("int8", [])}
        gate = res.get("int8_gate")
        for b in res["batches"]:
            r = b["opencv_ms"] / b["protonet_ms"]
            fp32_ratios.append(r)
            cells = [label, str(b["batch"]), _ms(b["opencv_ms"]), _ms(b["protonet_ms"]), f"{r:.3g}x"]
            if int8:
                q = q8.get(b["batch"])
                if q is None or gate is None:
                    cells += ["-", "-", "-"]
                else:
                    r8 = b["opencv_ms"] / q["ms"]
                    if gate["passed"]:
                        int8_ratios.append(r8)
                    cells += [_ms(q["ms"]), f"{r8:.3g}x" if gate["passed"] else f"({r8:.3g}x)",
                              "passes" if gate["passed"] else "fails"]
            cells += [f"{b['rel_diff']:.1e}{' (one-hot)' if b.get('one_hot') else ''}",
                      f"{b['protonet_peak_mb']:.0f} MB, {b['opencv_peak_mb']:.0f} MB"]
            lines.append("| " + " | ".join(cells) + " |")
    for what, ratios in (("fp32", fp32_ratios), ("int8 (gate passing)", int8_ratios)):
        if ratios:
            lines += ["", f"Geometric mean of the {what} ratios: {statistics.geometric_mean(ratios):.2f}x over "
                          f"{len(ratios)} rows; protonet is faster in {sum(r > 1 for r in ratios)} of them."]
    speedups = [(label, b["batch"], b["protonet_ms"] / q["ms"]) for label, res in rows
                for b, q in zip(res["batches"], res.get("int8", [])) if res.get("int8_gate", {}).get("passed")]
    if speedups:
        lines += ["", "protonet int8 against protonet fp32 (fp32 ms / int8 ms, same rows): " + "; ".join(
            f"{label} b{batch} {r:.2f}x" for label, batch, r in speedups) + "."]
    if int8:
        reports = [f"- {label}: " + (res["int8_gate"]["report"].replace("\n", " ") + _margin(res["int8_gate"])
                                     if res.get("int8_gate") else f"not run: {res['int8_skipped']}")
                   for label, res in rows if res.get("int8_gate") or res.get("int8_skipped")]
        lines += ["", "int8 accuracy gate per net (filler weights and noise inputs: it says that the int8 model "
                      "computes what the fp32 one does on such inputs, not how a trained model fares on photos; "
                      "benchmarks/precision.md has trained-model "
                      "figures):", ""] + reports
    else:
        lines += ["", "int8: not run (--no-int8); fp32 only."]
    lines += ["", "Each build runs in its own worker process (peak RSS per process in the last column); the "
                  "difference column (largest absolute difference of the fp32 network outputs over the largest "
                  "output) shows that protonet and OpenCV ran the same net on the same weights; where it says "
                  "one-hot, the softmax of the filler-weight net saturates (every probability exactly 0 or 1), "
                  "so there it only says that both chose the same class for every image.", "", "## Machine", ""]
    return "\n".join(lines + markdown()) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "peers.md"))
    ap.add_argument("--nets", help="comma-separated names from nets/ (default: the nine of the table)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-int8", action="store_true", help="fp32 only (no int8 build)")
    ap.add_argument("--worker", choices=["protonet", "int8", "opencv"], help=argparse.SUPPRESS)
    ap.add_argument("--net", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        worker(args.worker, Path(args.net), Path(args.weights), batches[0], args.threads, Path(args.dir))
        return 0
    labels = dict(NETS)
    names = args.nets.split(",") if args.nets else [n for n, _ in NETS]
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load0 = f"{os.getloadavg()[0]:.1f}"
    t0 = time.perf_counter()
    rows = []
    for name in names:
        try:
            res = measure(name, batches, args.rounds, args.threads, not args.no_int8)
        except (RuntimeError, subprocess.CalledProcessError) as e:
            res = {"error": str(e)}
        rows.append((labels.get(name, Path(name).stem), res))
        print(f"{name}: {json.dumps(res)}", file=sys.stderr, flush=True)
    text = render(rows, args, started, (load0, f"{os.getloadavg()[0]:.1f}"), time.perf_counter() - t0)
    tmp = Path(args.out).with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(text)
    return 0 if all("error" not in r for _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
