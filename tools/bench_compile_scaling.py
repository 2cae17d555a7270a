"""Compile time against network size: protonet's compile must stay linear in the size of the net.

    python tools/bench_compile_scaling.py [--out benchmarks/compile_scaling.md] [--quick]

Three families of tiny files that grow one dimension of the work:

* ``relu_chain N``: N in-place ReLU layers on one blob (N SSA versions of one blob name, N
  nodes for every pass and for ``Graph.lint``);
* ``lstm T``: one LSTM layer over T time steps (a 300-byte file that lowers to 7 T ONNX nodes,
  all named after the same layer);
* ``concat K``: one Concat of K bottoms (K uses of one value by one node).

Each case runs the ``compile`` code path in-process (load, build, every pass, export with
``onnx.checker``; the bytes are not written) and reports the best of ``--reps`` CPU times
(``time.process_time``, which other processes on the machine disturb less than the wall
clock). The ratio column divides each time by the previous size's: linear work gives about
the size ratio (2x or 4x), quadratic work its square.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protonet.export import export  # noqa: E402
from protonet.pipeline import compile_net  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "compile_scaling.md"
SIZES = {"relu_chain": (1000, 4000, 16000, 32000), "lstm": (250, 500, 1000, 2000, 4000),
         "concat": (4000, 16000, 32000, 64000)}
QUICK = {"relu_chain": (1000, 4000), "lstm": (250, 1000), "concat": (4000, 16000)}


def relu_chain(n: int) -> str:
    """``n`` in-place ReLU layers on one input blob."""
    head = 'name: "relu_chain"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 4 dim: 4 }\n'
    return head + "".join(f'layer {{ name: "r{i}" type: "ReLU" bottom: "data" top: "data" }}\n'
                          for i in range(n))


def lstm(t: int) -> str:
    """One LSTM over ``t`` time steps (N = 1, 2 inputs and 2 units per step)."""
    return (f'name: "lstm"\ninput: "x"\ninput_shape {{ dim: {t} dim: 1 dim: 2 }}\n'
            f'input: "cont"\ninput_shape {{ dim: {t} dim: 1 }}\n'
            'layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h" '
            'recurrent_param { num_output: 2 } }\n')


def concat(k: int) -> str:
    """One Concat of ``k`` bottoms, all the same input blob."""
    return ('name: "concat"\ninput: "data"\ninput_shape { dim: 1 dim: 1 dim: 1 dim: 1 }\n'
            'layer { name: "cat" type: "Concat" top: "out" ' + 'bottom: "data" ' * k + "}\n")


FAMILIES = {"relu_chain": relu_chain, "lstm": lstm, "concat": concat}


def compile_seconds(text: str, reps: int = 1) -> float:
    """Best CPU time of ``reps`` in-process compiles (optimized, exported and checked) of ``text``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.prototxt"
        path.write_text(text)
        best = float("inf")
        for _ in range(reps):
            t0 = time.process_time()
            c = compile_net(path, optimize=True)
            export(c.graph)
            best = min(best, time.process_time() - t0)
    return best


def measure(sizes: dict[str, tuple[int, ...]], reps: int) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for family, ns in sizes.items():
        out[family] = []
        for n in ns:
            t = compile_seconds(FAMILIES[family](n), reps)
            print(f"{family} {n}: {t:.2f} s", flush=True)
            out[family].append((n, t))
    return out


def render(results: dict[str, list[tuple[int, float]]], command: str) -> str:
    from machine import markdown

    lines = ["# Compile time against network size", "",
             f"Command: `{command}`. Each row: the `compile` code path in-process (load, build, every",
             "optimizer pass, ONNX export with `onnx.checker`; nothing written), best CPU time of the",
             "repetitions. `x size` and `x time` compare a row with the one above it: linear work",
             "has them about equal, quadratic work has `x time` near the square of `x size`.", "",
             "Machine:", "", *markdown(), ""]
    for family, rows in results.items():
        lines += [f"## {family}: {FAMILIES[family].__doc__}", "",
                  "| size | compile (s) | x size | x time | µs per unit |", "|---:|---:|---:|---:|---:|"]
        for i, (n, t) in enumerate(rows):
            ratio = ("", "") if i == 0 else (f"{n / rows[i - 1][0]:.1f}", f"{t / rows[i - 1][1]:.2f}")
            lines.append(f"| {n:,} | {t:.2f} | {ratio[0]} | {ratio[1]} | {t / n * 1e6:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="two sizes per family (a smoke run)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tools"))
    results = measure(QUICK if args.quick else SIZES, args.reps)
    cmd = "python tools/bench_compile_scaling.py" + (" --quick" if args.quick else "")
    Path(args.out).write_text(render(results, cmd) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
