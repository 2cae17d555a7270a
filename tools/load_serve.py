"""Load test of ``protonet serve``: concurrent clients, mixed batch sizes, every answer checked.

    python tools/load_serve.py [--out benchmarks/serve.md] [--clients 8]
        [--requests squeezenet1_1=500 resnet50=500] [--max-batch 8] [--instances 2] [--queue-delay-us 2000]

Needs protonet[serve] and tritonclient (the serve venv of .ci/run). Compiles each net from nets/
with filler weights and ``--batch dynamic``, starts one ``protonet serve`` with all of them on free
localhost ports, and then, one model after the other, runs ``--clients`` threads (half over HTTP,
half over gRPC), each sending its count of requests back to back. A request has 1 to 4 rows
(uniform), each row one of 32 fixed inputs; every row of every answer must equal what
``protonet infer`` (protonet.load(model).run, the same code path) gives for that input alone,
within 1e-5 (times the row's largest magnitude where that is above 1). Each model answers with
its last layer before the softmax as well as the softmax: with filler weights the softmax is
nearly flat (SqueezeNet) or saturated (ResNet-50), the same for every input, so the pre-softmax
output is what shows that each row got its own answer (the smallest difference between two
inputs' answers is reported beside the tolerance). Reported per model: errors, the largest
difference, p50/p99 request latency, throughput, and the mean executed batch size from Triton's
own counters (the rows it ran, nv_inference_count, over the executions, nv_inference_exec_count).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from machine import describe  # tools/machine.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from protonet.serve import free_ports  # noqa: E402

POOL = 32  # distinct input rows per model
#: the blob before the softmax of each net (served beside "prob")
LOGITS = {"squeezenet1_1": "pool10", "resnet50": "fc1000"}
MAX_ROWS = 4  # rows per request: 1..MAX_ROWS
ATOL = 1e-5
FULL_COUNT = 500  # requests per client the issue asks for


def metrics(port: int, model: str) -> tuple[float, float, float]:
    """(rows run, executions, successful requests) from Triton's Prometheus counters."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    def one(name: str) -> float:
        m = re.search(rf'^{name}{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.M)
        if not m:
            raise RuntimeError(f"{name} for {model} is not in Triton's metrics")
        return float(m.group(1))
    return one("nv_inference_count"), one("nv_inference_exec_count"), one("nv_inference_request_success")


class Client(threading.Thread):
    def __init__(self, k: int, model: str, inp: str, pool: np.ndarray, refs: dict[str, np.ndarray],
                 count: int, ports: tuple[int, int], seed: int):
        super().__init__(daemon=True)
        self.protocol = "http" if k % 2 == 0 else "grpc"
        self.model, self.inp, self.pool, self.refs, self.count = model, inp, pool, refs, count
        self.url = f"127.0.0.1:{ports[0] if self.protocol == 'http' else ports[1]}"
        self.rng = np.random.default_rng(seed)
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.rows = 0
        self.worst = 0.0

    def run(self) -> None:
        if self.protocol == "http":
            import tritonclient.http as tc
        else:
            import tritonclient.grpc as tc
        client = tc.InferenceServerClient(self.url)
        for _ in range(self.count):
            idx = self.rng.integers(0, len(self.pool), self.rng.integers(1, MAX_ROWS + 1))
            x = self.pool[idx]
            i = tc.InferInput(self.inp, list(x.shape), "FP32")
            i.set_data_from_numpy(x)
            want = [tc.InferRequestedOutput(n, binary_data=True) if self.protocol == "http"
                    else tc.InferRequestedOutput(n) for n in self.refs]
            t0 = time.perf_counter()
            try:
                r = client.infer(self.model, [i], outputs=want)
            except Exception as e:  # counted and reported, never hidden
                self.errors.append(f"{type(e).__name__}: {e}")
                continue
            self.latencies.append(time.perf_counter() - t0)
            for name, ref in self.refs.items():
                diff = relative_diff(r.as_numpy(name), ref[idx])
                self.worst = max(self.worst, diff)
                if not diff <= ATOL:
                    self.errors.append(f"{name}: the answer differs from protonet infer's by {diff:.3g}")
            self.rows += len(idx)


def relative_diff(got: np.ndarray | None, want: np.ndarray) -> float:
    """The largest |got - want| of each row over max(1, the row's largest |want|)."""
    if got is None or got.shape != want.shape:
        return float("inf")
    rows = len(want)
    scale = np.maximum(1.0, np.abs(want.reshape(rows, -1)).max(axis=1))
    return float((np.abs(got - want).reshape(rows, -1).max(axis=1) / scale).max())


def separation(refs: np.ndarray) -> float:
    """The smallest relative difference between the answers for two different inputs: a row
    answered with another row's result would be caught when this is above the tolerance."""
    return min(relative_diff(refs[i:i + 1], refs[j:j + 1]) for i in range(len(refs)) for j in range(len(refs))
               if i != j)


def compile_models(names: list[str], d: Path) -> dict[str, Path]:
    import protonet

    paths = {}
    for n in names:
        m = protonet.compile(ROOT / "nets" / f"{n}.prototxt", batch="dynamic", outputs=[LOGITS[n], "prob"])
        paths[n] = d / f"{n}.onnx"
        m.save(paths[n])
    return paths


def references(path: Path, seed: int) -> tuple[str, np.ndarray, dict[str, np.ndarray]]:
    """The input pool and protonet infer's answers for each row alone (protonet.load(...).run)."""
    import protonet

    m = protonet.load(path)
    (inp, shape), = m.inputs.items()
    pool = np.random.default_rng(seed).standard_normal((POOL, *shape[1:])).astype(np.float32)
    runs = [m.run({inp: pool[k:k + 1]}, provider="cpu") for k in range(POOL)]
    return inp, pool, {name: np.concatenate([r[name] for r in runs]) for name in m.outputs}


def start_server(paths: dict[str, Path], ports: list[int], args: argparse.Namespace, tmp: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "protonet", "serve", *map(str, paths.values()), "--http-port", str(ports[0]),
           "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--max-batch", str(args.max_batch),
           "--instances", str(args.instances), "--queue-delay-us", str(args.queue_delay_us), "--provider", "cpu"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "TMPDIR": str(tmp)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + 180
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("serve: ready"):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("protonet serve did not start:\n" + "".join(lines[-30:]))


def direct(path: Path, inp: str, pool: np.ndarray, batch: int, rows: int = 64) -> float:
    """Rows per second of one onnxruntime session in this process (protonet's, all cores), fed
    ``batch`` rows at a time: what the server's figures are set beside."""
    import protonet

    sess = protonet.load(path).session("cpu")
    x = np.concatenate([pool] * (batch // len(pool) + 1))[:batch]
    sess.run({inp: x})  # warm-up
    t0 = time.perf_counter()
    for _ in range(max(1, rows // batch)):
        sess.run({inp: x})
    return max(1, rows // batch) * batch / (time.perf_counter() - t0)


def load(model: str, path: Path, count: int, args: argparse.Namespace, ports: list[int]) -> dict:
    inp, pool, refs = references(path, seed=len(model))
    one, full = direct(path, inp, pool, 1), direct(path, inp, pool, args.max_batch)
    c0 = metrics(ports[2], model)
    clients = [Client(k, model, inp, pool, refs, count, (ports[0], ports[1]), seed=1000 + k)
               for k in range(args.clients)]
    t0 = time.perf_counter()
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    wall = time.perf_counter() - t0
    ok_sent = sum(len(c.latencies) for c in clients)
    deadline = time.monotonic() + 30  # Triton's counters trail the last answers a little
    while (c1 := metrics(ports[2], model))[2] - c0[2] < ok_sent and time.monotonic() < deadline:
        time.sleep(0.2)
    lat = np.array([x for c in clients for x in c.latencies]) * 1000
    rows, execs, ok = (b - a for a, b in zip(c0, c1))
    errors = [e for c in clients for e in c.errors]
    return {"model": model, "requests": args.clients * count, "per_client": count, "ok": len(lat),
            "errors": len(errors), "first_error": errors[0] if errors else "",
            "rows": sum(c.rows for c in clients), "worst": max(c.worst for c in clients),
            "separation": {name: separation(r) for name, r in refs.items()},
            "direct1": one, "direct_max": full,
            "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "wall": wall, "rps": len(lat) / wall, "ips": sum(c.rows for c in clients) / wall,
            "triton_rows": rows, "triton_execs": execs, "triton_ok": ok,
            "mean_batch": rows / execs if execs else float("nan")}


def render(results: list[dict], args: argparse.Namespace, argv: list[str], total: float) -> str:
    from importlib.metadata import version

    mach = describe()
    lines = [
        "# protonet serve under load",
        "",
        f"Machine: {mach['CPU']}, {mach['cores available']} cores available, {mach['RAM']}, {mach['OS']}; "
        f"Python {mach['python']}, numpy {mach['numpy']}, onnxruntime {mach['onnxruntime']}; "
        f"nvidia-pytriton {version('nvidia-pytriton')}, tritonclient {version('tritonclient')}. "
        "The machine was shared with other work while this ran (its figures are a floor, not a peak).",
        "",
        f"Command: `python tools/load_serve.py {' '.join(argv)}` ({total:.0f} s in all).",
        "",
        f"One `protonet serve` with both models (filler weights, `--batch dynamic`), CPU provider, "
        f"`--max-batch {args.max_batch} --instances {args.instances} --queue-delay-us {args.queue_delay_us}`. "
        f"Per model, {args.clients} concurrent clients (half HTTP, half gRPC) each send their requests back to "
        f"back; a request has 1 to {MAX_ROWS} rows (uniform) drawn from {POOL} fixed inputs, and every row of "
        f"every answer, both outputs (the last layer before the softmax, and the softmax), is compared with "
        f"`protonet infer`'s answer for that input alone: |served - infer| <= {ATOL:g} x max(1, the row's largest "
        "magnitude). With filler weights the softmax is the same for every input (nearly flat for SqueezeNet, "
        "saturated for ResNet-50), so the pre-softmax output is what tells the inputs apart: *separation* is the "
        "smallest difference (same measure) between the answers for two different inputs, so a row answered "
        "with another row's result would show as an error. "
        "Latency is per request, at the client; the mean executed batch is Triton's rows run over its "
        "executions (nv_inference_count / nv_inference_exec_count).",
        "",
        "| model | requests (clients x each) | rows | errors | max diff vs infer | separation | p50 ms | p99 ms | "
        "requests/s | rows/s | Triton executions | mean executed batch |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['model']} | {r['requests']} ({args.clients} x {r['per_client']}) | {r['rows']} | "
                     f"{r['errors']} | {r['worst']:.1e} | "
                     f"{', '.join(f'{k} {v:.1e}' for k, v in r['separation'].items())} | {r['p50']:.1f} | {r['p99']:.1f} | {r['rps']:.1f} | "
                     f"{r['ips']:.1f} | {r['triton_execs']:.0f} | {r['mean_batch']:.2f} |")
    lines += ["", "Beside it, in the same run and just before each model's load: one onnxruntime session in the "
              f"tool's own process (all cores), 64 rows fed 1 at a time and {args.max_batch} at a time.", "",
              f"| model | served rows/s | direct rows/s, batch 1 | direct rows/s, batch {args.max_batch} | "
              "served / direct batch 1 | served / direct batch max |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['ips']:.1f} | {r['direct1']:.1f} | {r['direct_max']:.1f} | "
                     f"{r['ips'] / r['direct1']:.2f} | {r['ips'] / r['direct_max']:.2f} |")
    lines.append("")
    for r in results:
        if r["per_client"] < FULL_COUNT:
            lines.append(f"- {r['model']} ran {args.clients} x {r['per_client']} requests, not {args.clients} x "
                         f"{FULL_COUNT}: at the rate measured here the full count would have taken about "
                         f"{r['wall'] * FULL_COUNT / r['per_client'] / 60:.0f} minutes on this shared machine.")
    for r in results:
        if r["errors"]:
            lines.append(f"- {r['model']}: first error: {r['first_error']}")
        lines.append(f"- {r['model']}: Triton counted {r['triton_ok']:.0f} successful requests and "
                     f"{r['triton_rows']:.0f} rows (the clients: {r['ok']} and {r['rows']}); wall {r['wall']:.1f} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "serve.md"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", nargs="+", default=["squeezenet1_1=500", "resnet50=500"], metavar="NET=N",
                    help="requests per client for each net of nets/ (in this order)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--queue-delay-us", type=int, default=2000)
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    counts = {k: int(v) for k, v in (r.split("=", 1) for r in args.requests)}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="load-serve-") as d:
        tmp = Path(d) / "tmp"
        tmp.mkdir()
        paths = compile_models(list(counts), Path(d))
        ports = free_ports(3)
        proc = start_server(paths, ports, args, tmp)
        try:
            results = []
            for model, n in counts.items():
                results.append(load(model, paths[model], n, args, ports))
                r = results[-1]
                print(f"{model}: {r['ok']}/{r['requests']} ok, {r['errors']} errors, worst {r['worst']:.2g}, "
                      f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, {r['rps']:.1f} req/s, "
                      f"mean executed batch {r['mean_batch']:.2f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    Path(args.out).write_text(render(results, args, argv, time.perf_counter() - t0))
    print(f"wrote {args.out}")
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
