"""The GPU check: verify nets on the GPU and record ResNet-50 throughput in benchmarks/gpu.md.

    python tools/gpu_check.py [--provider cuda] [--out benchmarks/gpu.md] [--budget 420]
    python tools/gpu_check.py --provider cpu --dry --out /tmp/gpu.md    (the same steps on the CPU, tiny)

Run by tools/gpu_check.sh on a machine with an NVIDIA GPU after installing protonet[cuda] from
local wheels; ``import protonet`` is the installed package (``--dry`` runs from the source tree).

1. **verify** each of five nets (LeNet, SqueezeNet 1.1, GoogLeNet, MobileNet v2, ResNet-50;
   Caffe's fillers) on the provider: onnxruntime's outputs against the float64 reference,
   every blob, as ``protonet verify --provider cuda``;
2. **throughput**: ResNet-50 compiled once with a symbolic batch (``--batch dynamic``), in fp32
   and in fp16 (protonet.quantize: fp32 inputs and outputs kept), timed at batch 1, 32, 128 and
   256 as ``protonet bench`` does (inputs and outputs bound on the device, a CUDA graph per
   batch size where onnxruntime accepts it, warm-up, then runs for ``--seconds``): p50 latency
   and images/s, and fp16's top-1 agreement with fp32 on the same (random) inputs;
3. with ``--tensorrt`` and TensorRT's libraries present: the same at batch 32 on the TensorRT
   provider (fp16 engines; building one takes minutes).

Steps left when ``--budget`` seconds have passed are listed as not run. Exit 3 when a net fails
verification, 2 when the provider cannot start.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
NETS = TOOLS.parent / "nets"
sys.path.insert(0, str(TOOLS))

VERIFY_NETS = "lenet,squeezenet1_1,googlenet,mobilenet_v2,resnet50"


def gpu_description() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return ["- GPU: none found (nvidia-smi is not installed)"]
    r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                        "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
    return [f"- GPU: {line.strip()} (name, driver, memory, compute capability)"
            for line in r.stdout.splitlines() if line.strip()] or [f"- GPU: nvidia-smi failed: {r.stderr.strip()}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--provider", default="cuda", choices=["cuda", "tensorrt", "cpu", "auto"])
    ap.add_argument("--out", default=str(TOOLS.parent / "benchmarks" / "gpu.md"))
    ap.add_argument("--verify-nets", default=VERIFY_NETS)
    ap.add_argument("--net", default="resnet50", help="the net whose throughput is measured")
    ap.add_argument("--batches", default="1,32,128,256")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per batch size and precision")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; later steps are skipped past it")
    ap.add_argument("--tensorrt", action="store_true", help="also time batch 32 on TensorRT (fp16)")
    ap.add_argument("--dry", action="store_true", help="a rehearsal on the CPU: say so in the report")
    args = ap.parse_args()
    t0 = time.perf_counter()

    import numpy as np

    import protonet
    from machine import markdown  # tools/machine.py
    from protonet.api import compile as compile_model
    from protonet.bench import BenchOptions, bench_target, net_targets
    from protonet.errors import ProtonetError
    from protonet.runtime import usable_providers

    if args.provider in ("cuda", "tensorrt") and args.provider not in usable_providers():
        print(f"gpu_check: the {args.provider} provider cannot start here (onnxruntime-gpu installed? an NVIDIA "
              f"driver?); usable: {', '.join(sorted(usable_providers()))}", file=sys.stderr)
        return 2

    def left() -> float:
        return args.budget - (time.perf_counter() - t0)

    title = "# protonet on the GPU" + (" (a CPU rehearsal: --dry)" if args.dry else "")
    lines = [title, "", f"`tools/gpu_check.py --provider {args.provider}` ({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} "
             f"UTC), protonet {protonet.__version__} from {Path(protonet.__file__).parent}.", "",
             "## Verification (float64 reference against onnxruntime, every blob; Caffe's fillers)", "",
             "| net | provider | blobs | worst error / tolerance | result | seconds |", "|---|---|---:|---:|---|---:|"]
    failed = False
    skipped: list[str] = []
    for name in args.verify_nets.split(","):
        if left() <= 0:
            skipped.append(f"verify {name}")
            continue
        t = time.perf_counter()
        try:
            res = compile_model(NETS / f"{name}.prototxt").verify(provider=args.provider)
        except ProtonetError as e:
            print(f"gpu_check: {name}: {e}", file=sys.stderr)
            lines.append(f"| {name} | {args.provider} | - | - | error: {e} | - |")
            failed = True
            continue
        failed |= not res.ok
        lines.append(f"| {name} | {res.provider} | {len(res.blobs)} | {res.worst.ratio:.3g} | "
                     f"{'OK' if res.ok else 'MISMATCH'} | {time.perf_counter() - t:.1f} |")
        print(f"gpu_check: verified {name} on {res.provider}: {'OK' if res.ok else 'MISMATCH'}", file=sys.stderr)

    batches = [int(b) for b in args.batches.split(",")]
    lines += ["", f"## {args.net}: throughput (one model with a symbolic batch; inputs and outputs bound on the "
                  f"device; p50 of runs over {args.seconds:g} s after 5 warm-up runs)", "",
              "| precision | provider | batch | CUDA graph | p50 ms | images/s | top-1 agreement with fp32 |",
              "|---|---|---:|---|---:|---:|---:|"]
    reference: dict[int, np.ndarray] = {}
    trt_cache = tempfile.mkdtemp(prefix="protonet-trt-")
    opts = {p: BenchOptions(provider=args.provider, warmup=5, seconds=args.seconds, precision=p, trt_cache=trt_cache,
                            keep_outputs=True) for p in ("fp32", "fp16")}
    runs = [("fp32", args.provider), ("fp16", args.provider)]
    if args.tensorrt and "tensorrt" in usable_providers():
        runs.append(("fp16", "tensorrt"))
    for precision, provider in runs:
        sizes = [32] if provider == "tensorrt" and args.provider != "tensorrt" else batches
        if left() <= 0:
            skipped += [f"{args.net} {precision} on {provider}, batch {b}" for b in sizes]
            continue
        o = opts[precision]
        if provider != o.provider:
            from dataclasses import replace

            o = replace(o, provider=provider)
        for t in net_targets(lambda b: compile_model(NETS / f"{args.net}.prototxt", batch=b), sizes, dynamic=True,
                             precision=precision):
            if left() <= 0:
                skipped.append(f"{args.net} {precision} on {provider}, batch {t.batch}")
                continue
            res, sess = bench_target(t, o)
            y = next(iter(res.outputs.values()))
            top1 = y.reshape(y.shape[0], -1).argmax(axis=1)
            if precision == "fp32" and provider == args.provider:
                reference[t.batch] = top1
            agree = (f"{(top1 == reference[t.batch]).mean():.3f}" if precision != "fp32" and t.batch in reference
                     else "-")
            lat = res.latency
            lines.append(f"| {precision} | {sess.provider} | {t.batch} | {'yes' if sess.cuda_graph else 'no'} | "
                         f"{lat.ms(50):.3f} | {lat.throughput:.1f} | {agree} |")
            print(f"gpu_check: {args.net} {precision} batch {t.batch} on {sess.provider}: p50 {lat.ms(50):.3f} ms, "
                  f"{lat.throughput:.1f} images/s", file=sys.stderr)
            del sess
    if skipped:
        lines += ["", f"Not run (past the {args.budget:g} s budget): " + "; ".join(skipped) + "."]
    lines += ["", f"Total {time.perf_counter() - t0:.0f} s.", "", "## Machine", ""] + gpu_description() + markdown()
    out = Path(args.out)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)
    print("\n".join(lines))
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
