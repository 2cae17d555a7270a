"""--batch dynamic over the whole zoo: every net compiled once with a symbolic batch, the one
model run at batch 1, 3 and 8 against the float64 reference built at each batch.

    python tools/dynamic_zoo.py [--batches 1,3,8] [--out benchmarks/dynamic.md] [net.prototxt ...]

Default: every nets/*.prototxt and nets/detection/*.prototxt (random weights, seeded). A net
is OK when the batch-1 and batch-2 lowerings are one graph (protonet.dynamic) and the model's
outputs match the reference of the compiled graph at every batch (tolerances.VERIFY); a refused
net is listed with the located message. The result file gets the machine, the command and one row per net: the
worst error over tolerance per batch, and how much the outputs differ between the batch's images
(a check over identical outputs would prove little).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from dataclasses import replace
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from protonet.build import BuildOptions  # noqa: E402
from protonet.errors import ProtonetError  # noqa: E402
from protonet.pipeline import at_batch, build_model, compile_net, random_inputs, verify_model  # noqa: E402
from protonet.runtime import make_session  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "dynamic.md"
THREADS = 2


def check_net(net: Path, batches: tuple[int, ...]) -> dict:
    """One net: compile dynamic, verify at each batch; the row of the table."""
    t0 = time.perf_counter()
    try:
        c = compile_net(net, options=BuildOptions(dynamic_batch=True, init="random"), optimize=True)
        model = build_model(c)
    except ProtonetError as e:
        return {"net": net, "refused": str(e).replace(str(ROOT) + "/", "")}
    compile_s = time.perf_counter() - t0
    sess = make_session(model, "cpu", threads=THREADS)  # one session for every batch size
    row: dict = {"net": net, "compile_s": compile_s, "ratio": {}, "spread": {}, "ok": True}
    for b in batches:
        # the network outputs against the reference of the graph as compiled (the passes are
        # proven against the unoptimized graph elsewhere: benchmarks/zoo.md, tests/test_passes.py)
        cb = replace(at_batch(c, b), unoptimized=None)
        res = verify_model(cb, sess, random_inputs(cb.graph, 0), "cpu", blobs=False)
        row["ok"] &= res.ok
        row["ratio"][b] = res.worst.ratio
        # how much the outputs vary across the batch's images: a check that is not vacuous
        row["spread"][b] = min(float(np.std(y, axis=0).max()) for y in res.outputs.values()) if b > 1 else None
    return row


def render(rows: list[dict], batches: tuple[int, ...], command: str) -> str:
    from machine import describe

    m = describe()
    lines = ["# --batch dynamic over the zoo", "",
             f"Machine: {m['CPU']}, {m['cores available']} cores available, {m['RAM']}; Python {m['python']}, "
             f"numpy {m['numpy']}, onnxruntime {m['onnxruntime']}.", "",
             f"Command: `{command}`", "",
             "Each net is compiled once with `--batch dynamic` (well-scaled random weights, so that deep "
             "nets' outputs do not collapse to a constant); the one model runs at each batch size against "
             "the float64 reference built at that batch (network outputs; tolerance as `protonet verify`). "
             "*err/tol* is the worst element's error over its tolerance (OK below 1). *spread* is the "
             "largest standard deviation of an output element across the batch's images (noise inputs): "
             "the images do get different answers. *compile* is the dynamic compile (two builds, two "
             "lowerings compared).", "",
             "| net | result | " + " | ".join(f"err/tol @{b}" for b in batches) + " | "
             + " | ".join(f"spread @{b}" for b in batches if b > 1) + " | compile |",
             "|---|---|" + "---|" * (len(batches) + sum(b > 1 for b in batches) + 1)]
    for r in rows:
        name = str(Path(r["net"]).relative_to(ROOT)) if Path(r["net"]).is_absolute() else str(r["net"])
        if "refused" in r:
            lines.append(f"| {name} | refused: {r['refused']} |" + " |" * (len(batches) + sum(b > 1 for b in batches) + 1))
            continue
        lines.append(f"| {name} | {'OK' if r['ok'] else 'MISMATCH'} | "
                     + " | ".join(f"{r['ratio'][b]:.3g}" for b in batches) + " | "
                     + " | ".join(f"{r['spread'][b]:.3g}" for b in batches if b > 1) + f" | {r['compile_s']:.1f} s |")
    ok = sum(1 for r in rows if r.get("ok"))
    refused = sum(1 for r in rows if "refused" in r)
    lines += ["", f"{ok} of {len(rows)} nets OK at batch {', '.join(map(str, batches))}; {refused} refused "
              f"(a layer that cannot run at any batch size, named in the message); "
              f"{len(rows) - ok - refused} mismatched.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nets", nargs="*", type=Path)
    ap.add_argument("--batches", default="1,3,8")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    nets = [n.resolve() for n in args.nets] or sorted((ROOT / "nets").glob("*.prototxt")) + sorted(
        (ROOT / "nets" / "detection").glob("*.prototxt"))
    rows = []
    command = "python tools/dynamic_zoo.py" + (f" --batches {args.batches}" if args.batches != "1,3,8" else "") + (
        " " + " ".join(str(n.relative_to(ROOT)) if n.is_relative_to(ROOT) else str(n) for n in nets) if args.nets else "")
    for net in nets:
        row = check_net(net, batches)
        rows.append(row)
        print(f"{net.name}: {row.get('refused') or ('OK' if row['ok'] else 'MISMATCH')}", flush=True)
        args.out.write_text(render(rows, batches, command))  # after each net: a long run's rows are kept
    print(f"wrote {args.out}")
    return 0 if all(r.get("ok") or "refused" in r for r in rows) else 3


if __name__ == "__main__":
    sys.exit(main())
