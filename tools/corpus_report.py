"""Run protonet, and OpenCV's Caffe importer, over a corpus of real-world Caffe files.

    python tools/corpus_fetch.py --dest DIR      # the files listed in tools/corpus.tsv
    python tools/corpus_report.py --corpus DIR [--out benchmarks/corpus.md] [--only SUBSTR]
                                  [--timeout 600] [--mem-gb 8]

For each file (deploy and train_val definitions; solvers are listed and skipped):

1. protonet compiles it at batch 1 with random weights (seed 0) into the IR; big inputs
   (over 256x256) are cut to a quarter or half of each side when the net still compiles that way
   (fully convolutional nets), else the file's own size is used. A refusal is recorded with its one message, the exit code
   and stderr of ``protonet compile`` on the same file (a refusal must be one located line, exit
   2, no traceback), and a classification: right to refuse, or a protonet gap.
2. The random weights are written as a .caffemodel with protonet's own writer
   (``pipeline.save_caffemodel``); protonet compiles the file again with those weights and the
   optimizer, writes ONNX (onnx.checker with full shape inference) and verifies every blob of the
   unoptimized graph, onnxruntime (fp32) against the float64 reference, on seeded standard-normal
   input (following onnxruntime at near-ties, as ``protonet verify`` does), and the optimized
   model's outputs against the reference's; where they differ after near-ties were followed (the
   folded weights' float32 values break them their own way: SegNet's masks, a Proposal's order),
   the optimized graph is verified blob by blob on its own instead (verify's element-wise
   tolerance, protonet/tolerances.py; figures are fractions of it, at most 1 agreeing).
3. OpenCV 4.10 (``cv2.dnn.readNetFromCaffe``) loads the same file and caffemodel, runs the same
   input, and every network output of protonet that OpenCV also gives (matched by the producing
   layer's name) is compared: max |opencv - protonet| / max |protonet|. Where protonet refused,
   OpenCV is asked only to import the file (there are no weights to run it with).

Each file runs in its own process, forked from a parent that has imported everything once (niced
to 19, one at a time, a timeout and an address-space cap), so a file that hangs or exhausts
memory is one row of the report, not the end of the run.
Results are kept in ``DIR/.corpus_results.json``; ``--only`` reruns the matching files and keeps
the others' last results.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from corpus_fetch import LIST, Entry, read_list  # noqa: E402  (tools/corpus_fetch.py)

#: agreement (with OpenCV, optimized vs unoptimized): the worst element's error as a fraction of
#: verify's element-wise tolerance (protonet.tolerances.VERIFY) at most this
AGREE = 1.0
@dataclass(frozen=True)
class Departure:
    """Where OpenCV 4.10 computes something other than the Caffe (fork) source that defines a layer:
    a disagreement that starts at such a layer is OpenCV's, not protonet's."""

    applies: Callable[[Any], bool]  # on the layer's attrs
    why: str


OPENCV_DIVERGES = {
    "Axpy": Departure(lambda a: True, "OpenCV's importer rewrites Axpy as Scale(bottom[2] by bottom[0]) + "
                      "bottom[1], i.e. a*bottom[2] + bottom[1]; SENet's axpy_layer.cpp (the fork that defines it) "
                      "computes a*bottom[1] + bottom[2]"),
    "PriorBox": Departure(lambda a: any(v != int(v) for v in (*a.min_sizes, *a.max_sizes)),
                          "SSD's prior_box_layer.cpp stores min_size and max_size in ints before using them "
                          "(21.28 acts as 21); OpenCV uses the float sizes"),
    "LRN": Departure(lambda a: getattr(a, "k", 1.0) != 1.0, "OpenCV ignores lrn_param.k and adds 1; Caffe's "
                     "lrn_layer.cpp adds k (e.g. k: 2 in VGG_CNN_M)"),
}
#: inputs with more pixels than this are tried at half size first
BIG_INPUT = 256 * 256


# -- refusals: why ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reason:
    key: str
    gap: bool  # True: a protonet gap (Caffe, its fork or OpenCV runs such files)
    why: str


def classify(message: str, opencv_imports: bool) -> Reason:
    """Sort one refusal message into a reason; a refusal is a protonet gap when the file is
    valid for Caffe or its fork (a fork field, a lenient corner) or OpenCV imports it."""
    m = message
    if "Python layers" in m:
        return Reason("python-layer", False, "a Python layer runs code named in the file; protonet never imports it "
                      "(py-faster-rcnn's and R-FCN's ProposalLayer is known by name and runs natively)")
    if "has no value named" in m:
        return Reason("bad-enum-value", opencv_imports, "a value its enum does not have (e.g. a V2 type string in a "
                      "V1 `layers` block): Caffe's text parser refuses it too")
    if re.search(r"no field named|unknown field|--caffe-proto", m):
        return Reason("unknown-field", True, "a field of the caffe.proto of the fork the file comes from, which that "
                      "fork runs (OpenCV's reader skips unknown fields, so its import says nothing here)")
    if "unsupported layer types" in m:
        if opencv_imports:
            return Reason("layer-type", True, "a layer type OpenCV implements and protonet does not")
        return Reason("fork-layer-type", False, "a fork's layer type that neither protonet nor OpenCV implements: "
                      "it needs the fork's code (a --plugin class)")
    if re.search(r"priors × .* expected", m):
        return Reason("prior-count", False, "the loc/conf convolutions fit neither SSD's PriorBox nor sfzhang15/"
                      "FaceBoxes' (same type name, 21 densified anchors per cell for three min_sizes; protonet "
                      "reads a net that way when its counts fit it), so the fork's DetectionOutput would stop on "
                      "its count check too, as OpenCV's does (numPriors * numLocClasses * 4 == loc count)")
    if "but not in the TEST phase" in m:
        return Reason("test-phase", False, "a train file whose data layer is TRAIN-only: Caffe's TEST-phase net "
                      "stops at the same bottom (Unknown bottom blob)")
    if "sample_weights_test" in m:
        return Reason("test-time-sampling", False, "Monte Carlo dropout: the fork samples a new mask on every "
                      "forward pass, which a deterministic compiled net cannot reproduce or verify "
                      "(--ignore-field DropoutParameter.sample_weights_test runs it as plain dropout)")
    if "has no shape" in m or "--input-shape" in m:
        return Reason("input-shape", False, "the input's size lives in the data source (Caffe reads it from the "
                      "database); --input-shape gives it")
    if re.search(r"Expected|Couldn't parse|syntax|parse error", m):
        return Reason("syntax", opencv_imports, "the text is not valid protobuf text for Caffe's schema")
    if opencv_imports:
        return Reason("other", True, "OpenCV imports the file; protonet refuses it")
    return Reason("other", False, "OpenCV refuses the file as well")


# -- one file (in the child process) -------------------------------------------------------------

def _feeds(graph: Any, seed: int) -> dict[str, Any]:
    """Seeded standard-normal inputs; py-faster-rcnn's ``im_info`` gets (height, width, scale 1)."""
    import numpy as np

    from protonet.pipeline import random_inputs

    feeds = random_inputs(graph, seed)
    data = next((v for v in graph.inputs if len(v.shape) == 4), None)
    for v in graph.inputs:
        if v.name == "im_info" and v.shape[-1] == 3 and data is not None:
            feeds[v.name] = np.tile(np.array([data.shape[2], data.shape[3], 1.0], np.float32), (v.shape[0], 1))
    return feeds


def _reduced(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Smaller inputs to try, smallest first: a quarter and a half of each side (multiples of 8)."""
    if len(shape) != 4 or shape[2] * shape[3] <= BIG_INPUT:
        return []
    return [(1, shape[1], *[max(32, (d // f + 7) // 8 * 8) for d in shape[2:]]) for f in (4, 2)]


def _compile(path: str, **kw: Any) -> Any:
    from protonet.build import BuildOptions
    from protonet.pipeline import compile_net

    opts = BuildOptions(batch=1, seed=0, init="random", input_shapes=kw.pop("input_shapes", {}))
    return compile_net(path, options=opts, **kw)


def _opencv_run(path: str, weights: str, graph: Any, feeds: dict[str, Any], blobs: dict[str, Any]) -> dict[str, Any]:
    """OpenCV's forward pass on the same file, weights and input, with its layer fusion off so that
    every layer's own output can be read: the network outputs (matched by blob or producing layer
    name) and every single-output layer whose name OpenCV also has are compared with protonet's
    blobs (onnxruntime, unoptimized graph). Comparing every layer matters: with random weights a
    deep classifier's softmax saturates to one-hot, which hides differences in the layers before it."""
    import cv2
    import numpy as np

    from protonet.tolerances import compare

    cv2.setNumThreads(1)
    try:
        net = cv2.dnn.readNetFromCaffe(path, weights)
    except cv2.error as e:
        return {"opencv": "refuses", "opencv_error": _cv_message(e)}
    known = set(net.getLayerNames())
    nodes = [n for n in graph.nodes if len(n.outputs) == 1 and n.name in known and n.outputs[0].name in blobs]
    pairs = {n.name: n.outputs[0].name for n in nodes}
    try:
        net.enableFusion(False)
        for name, x in feeds.items():
            net.setInput(x, name)
        names = list(net.getUnconnectedOutLayersNames())
        wanted = names + [k for k in pairs if k not in names]
        outs = dict(zip(wanted, net.forward(wanted)))
    except cv2.error as e:
        return {"opencv": "fails to run", "opencv_error": _cv_message(e)}

    detection_blobs = {n.outputs[0].name for n in graph.nodes if n.type == "DetectionOutput"}

    def rel(a: Any, b: Any, blob: str = "") -> float | None:
        a, b = np.asarray(a), np.asarray(b)
        if a.size == b.size and a.shape != b.shape:
            a = a.reshape(b.shape)
        if blob in detection_blobs and a.shape == b.shape:
            a, b = detections(a, opencv=True), detections(b)
            if a.shape != b.shape:
                return float("inf")  # another number of detections
        return compare(a, b).ratio if a.shape == b.shape else None

    compared: dict[str, float] = {}
    notes = []
    for v in graph.outputs:
        layer = v.producer.name if v.producer is not None else v.name
        key = v.name if v.name in outs else layer if layer in outs else None
        if key is None:
            notes.append(f"{v.name}: not an OpenCV output ({', '.join(names)})")
            continue
        r = rel(outs[key], blobs[v.name], v.name)
        if r is None:
            notes.append(f"{v.name}: shape {tuple(np.shape(outs[key]))} in OpenCV, {tuple(blobs[v.name].shape)} in "
                         "protonet")
        else:
            compared[v.name] = r
    layers = {k: r for k, r in ((k, rel(outs[k], blobs[b], b)) for k, b in pairs.items()) if r is not None}
    out: dict[str, Any] = {"opencv": "runs", "opencv_rel": compared, "opencv_notes": notes,
                           "opencv_layers": len(layers)}
    if compared:
        out["opencv_max_rel"] = max(compared.values())
    if layers:
        worst = max(layers, key=layers.__getitem__)
        out["opencv_layer_max_rel"], out["opencv_layer_worst"] = layers[worst], worst
        first = next((n for n in nodes if layers.get(n.name, 0.0) > AGREE), None)
        if first is not None:  # where the difference starts, in graph order
            out["opencv_first_diff"], out["opencv_first_diff_type"] = first.name, first.type
            known = OPENCV_DIVERGES.get(first.type)
            if known is not None and known.applies(first.attrs):
                out["opencv_diverges"] = known.why
    return out


def detections(out: Any, opencv: bool = False) -> Any:
    """An SSD DetectionOutput's rows [image, label, score, x1, y1, x2, y2] as a set: Caffe's
    rows only (SSD's detection_output_layer.cpp emits exactly the kept detections; protonet and
    OpenCV pad their fixed-size output, protonet with rows of -1, OpenCV with rows of 0), sorted
    by image, label, descending score and corners (Caffe emits them class by class, OpenCV by
    score across classes)."""
    import numpy as np

    rows = np.asarray(out, dtype=np.float64).reshape(-1, 7)
    rows = rows[np.any(rows != 0, axis=1)] if opencv else rows[rows[:, 0] >= 0]
    order = np.lexsort((rows[:, 6], rows[:, 5], rows[:, 4], rows[:, 3], -rows[:, 2], rows[:, 1], rows[:, 0]))
    return rows[order]


def _cv_message(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = next((ln for ln in lines if "error:" in ln), lines[-1] if lines else repr(e))
    return msg.split("error:", 1)[-1].strip()[:300]


_PROBE = """layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: 8 dim: 8 }} }} }}
layer {{ name: "probe" type: "{}" bottom: "data" top: "out" }}
"""


def opencv_knows(layer_type: str, work: Path) -> bool:
    """Whether OpenCV's dnn module has a layer of this Caffe type: a one-layer net either fails to
    create the layer ("Can't create layer") or gets past that (failing later for want of weights
    or parameters, which is fine)."""
    import cv2
    import numpy as np

    probe = work / "probe.prototxt"
    probe.write_text(_PROBE.format(layer_type))
    try:
        net = cv2.dnn.readNetFromCaffe(str(probe))
        net.setInput(np.zeros((1, 3, 8, 8), np.float32), "data")
        net.forward()
    except cv2.error as e:
        return "Can't create layer" not in str(e)
    return True


def _opencv_import(path: str, work: Path) -> dict[str, Any]:
    """Where protonet refused (so there are no weights to run OpenCV with): does OpenCV import the
    file, and does it have every layer type in it? (OpenCV's reader skips unknown fields.)"""
    import cv2

    try:
        net = cv2.dnn.readNetFromCaffe(path)
    except cv2.error as e:
        return {"opencv": "refuses", "opencv_error": _cv_message(e)}
    unknown = sorted({t for t in net.getLayerTypes() if not t.startswith("__") and not opencv_knows(t, work)})
    if unknown:
        return {"opencv": "refuses", "opencv_error": f"no layer type {', '.join(unknown)}"}
    return {"opencv": "imports"}


def _cli_refusal(path: str, work: Path, given: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """What a user sees from ``protonet compile`` on the file (its ``main``, in this process): a
    refusal should be one line on stderr and exit 2."""
    import contextlib
    import io

    from protonet.cli import main as cli_main

    argv = ["compile", path, "-o", str(work / "cli.onnx"), "--batch", "1"]
    for name, shape in given.items():
        argv += ["--input-shape", f"{name}={','.join(map(str, shape))}"]
    err = io.StringIO()
    traceback = False
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli_main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except Exception:  # noqa: BLE001 - escaping main() is what a traceback would show
            rc, traceback = 1, True
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    return {"cli_rc": rc, "cli_lines": len(lines), "cli_traceback": traceback or "Traceback" in err.getvalue()}


def parse_shapes(spec: str) -> dict[str, tuple[int, ...]]:
    """``data=1,1,28,28;pair=...`` (the list's input_shape column) as --input-shape would take it."""
    out = {}
    for part in filter(None, spec.split(";")):
        name, _, dims = part.rpartition("=")
        out[name] = tuple(int(d) for d in dims.split(","))
    return out


def check_file(path: str, work: Path, given: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Everything the report says about one file (see the module doc); ``given``: input shapes a
    user would pass with --input-shape (the list's input_shape column)."""
    from protonet.errors import ProtonetError
    from protonet.pipeline import build_model, save_caffemodel, verify_graph
    from protonet.runtime import make_session
    from protonet.tolerances import compare

    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    given = dict(given or {})
    try:
        c = _compile(path, input_shapes=given)
        native = tuple(c.graph.inputs[0].shape) if len(c.graph.inputs) == 1 else None
        shapes = given
        for small in _reduced(native) if native else []:
            try:
                c = _compile(path, input_shapes={**given, c.graph.inputs[0].name: small})
            except ProtonetError:
                continue
            shapes = {**given, c.graph.inputs[0].name: small}
            res["reduced_from"] = list(native)
            break
        else:
            c = _compile(path, input_shapes=given)
        res["inputs"] = {v.name: list(v.shape) for v in c.graph.inputs}
        weights = str(work / "random.caffemodel")
        save_caffemodel(c.graph, weights)
        del c  # its weights are not held twice
        c = _compile(path, weights=weights, optimize=True, input_shapes=shapes)
        # with onnx.checker and full shape inference, as `protonet compile`; the weights stay the graph's
        model = build_model(c)
        res["status"] = "compiled"
    except ProtonetError as e:
        res.update(status="refused", message=str(e).splitlines()[0], **_cli_refusal(path, work, given))
        res.update(_opencv_import(path, work))
        reason = classify(str(e), res["opencv"] == "imports")
        if reason.key == "input-shape" and "resize_param" in Path(path).read_text(errors="replace"):
            reason = Reason("input-shape", True, "the file sizes its images (transform_param.resize_param, the SSD "
                            "fork's AnnotatedData): the shape is in the file, not only in the database")
        res.update(reason=reason.key, gap=reason.gap, why=reason.why)
        return res
    except Exception as e:  # noqa: BLE001 - an internal error is a finding, recorded as such
        res.update(status="crash", message=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        res.update(_opencv_import(path, work))
        return res
    res["compile_s"] = round(time.perf_counter() - t0, 1)
    feeds = _feeds(c.graph, seed=1)
    try:
        v = verify_graph(c.unoptimized, feeds, "cpu")  # every blob: onnxruntime vs the reference
        optimized = make_session(model, "cpu").run(feeds)
    except Exception as e:  # noqa: BLE001
        res.update(status="verify-crash", message=f"{type(e).__name__}: {e}"[:300])
        return res
    res["metric"] = "ratio"  # figures are fractions of verify's element-wise tolerance
    res["verify_rel"] = v.worst.ratio
    res["verify_blob"] = v.worst.name
    res["followed"] = {b.name: b.followed for b in v.blobs if b.followed}  # near-tie choices taken
    # the optimized model's outputs against the unoptimized one's (which matched the reference)
    res["optimized_rel"] = max((compare(optimized[k], x).ratio for k, x in v.reference.items() if k in optimized),
                               default=0.0)
    if res["optimized_rel"] > AGREE and v.followed:
        # the optimized graph's float32 values (folded weights) break the near-ties their own way,
        # so its outputs after a decision differ from the unoptimized run's: verify the optimized
        # graph blob by blob instead, following its own near-ties under the same strict rules
        try:
            w = verify_graph(c.graph, feeds, "cpu")
        except Exception as e:  # noqa: BLE001
            res.update(status="verify-crash", message=f"{type(e).__name__}: {e}"[:300])
            return res
        res["optimized_rel"], res["optimized_followed"] = w.worst.ratio, w.followed
    ok = v.ok and res["optimized_rel"] <= AGREE
    res["status"] = "verified" if ok else "mismatch"
    try:
        res.update(_opencv_run(path, weights, c.unoptimized, feeds, _Blobs(c.unoptimized, feeds)))
    except Exception as e:  # noqa: BLE001
        res.update(status="verify-crash", message=f"{type(e).__name__}: {e}"[:300])
    return res


class _Blobs:
    """protonet's blobs (onnxruntime, the unoptimized graph) by name, each fetched when first asked
    for, a chunk of the graph at a time as verify fetches them (``pipeline._OnnxBlobs``), so that
    a big net's blobs are not all held at once."""

    def __init__(self, graph: Any, feeds: dict[str, Any]):
        from protonet.pipeline import _OnnxBlobs

        self.src = _OnnxBlobs(graph, feeds, "cpu")

    def __contains__(self, name: str) -> bool:
        return name in self.src.where

    def __getitem__(self, name: str) -> Any:
        return self.src.take(name, keep=True)


# -- the parent: one forked process per file, then the report -----------------------------------

def _child(path: str, work: str, given: str, out: str, mem_gb: float) -> None:
    """The forked child: cap the address space, keep stderr in a file, check one file."""
    import logging

    cap = int(mem_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    os.chdir(work)
    fd = os.open(os.path.join(work, "stderr.txt"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.dup2(fd, 2)
    logging.disable(logging.WARNING)
    res = check_file(path, Path(work), parse_shapes(given))
    res["protonet"] = _rev()  # computed in the parent before the fork
    Path(out).write_text(json.dumps(res))


def _preload() -> None:
    """Import what every check needs once, in the parent, so that each forked child starts warm
    (no onnxruntime session or thread pool exists before the fork)."""
    import cv2  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    import protonet.cli  # noqa: F401
    import protonet.export  # noqa: F401
    import protonet.pipeline  # noqa: F401


def run_one(entry: Entry, corpus: Path, timeout: int, mem_gb: float) -> dict[str, Any]:
    """Check one file in a forked child with a timeout and an address-space cap."""
    import multiprocessing

    path = corpus / entry.local
    if not path.exists():
        return {"status": "absent", "message": f"not in {corpus} (run tools/corpus_fetch.py)"}
    with tempfile.TemporaryDirectory(prefix="corpus_") as tmp:
        out = Path(tmp) / "result.json"
        t0 = time.perf_counter()
        proc = multiprocessing.get_context("fork").Process(
            target=_child, args=(str(path), tmp, entry.input_shape, str(out), mem_gb))
        proc.start()
        proc.join(timeout)
        seconds = round(time.perf_counter() - t0, 1)
        if proc.is_alive():
            proc.kill()
            proc.join()
            return {"status": "timeout", "message": f"no result within {timeout} s", "seconds": seconds}
        if not out.exists():
            err = Path(tmp, "stderr.txt").read_text(errors="replace") if Path(tmp, "stderr.txt").exists() else ""
            tail = (err.strip().splitlines() or ["(no output)"])[-1]
            why = "memory cap" if "MemoryError" in err or proc.exitcode == -9 else f"exit {proc.exitcode}"
            return {"status": "crash", "message": f"{why}: {tail[:300]}", "seconds": seconds}
        res = json.loads(out.read_text())
        res["seconds"] = seconds
        return res


#: results kept from before verify's element-wise comparison carry relative errors
#: (max |a - b| / max |b|, tolerance 1e-4) instead of fractions of the tolerance
LEGACY_RTOL = 1e-4


def agrees(r: dict[str, Any]) -> bool:
    """OpenCV agrees on the outputs and every compared layer, in the metric the result was kept in."""
    worst = cv_worst(r)
    return worst is not None and worst <= (AGREE if r.get("metric") == "ratio" else LEGACY_RTOL)


def cv_worst(r: dict[str, Any]) -> float | None:
    """The largest difference from OpenCV (fraction of the tolerance) over the outputs and every compared layer."""
    vals = [r[k] for k in ("opencv_max_rel", "opencv_layer_max_rel") if r.get(k) is not None]
    return max(vals) if vals else None


def _fmt(x: float | None, r: dict[str, Any] | None = None) -> str:
    """A figure; marked † when it is a kept legacy relative error rather than a fraction of the tolerance."""
    if x is None:
        return ""
    return f"{x:.1e}" + ("†" if r is not None and r.get("metric") != "ratio" else "")


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render(entries: list[Entry], results: dict[str, dict[str, Any]], machine: list[str], rev: str) -> str:
    rows = [(e, results.get(e.local, {"status": "not run"})) for e in entries if e.kind != "solver-excluded"]
    skipped = [e for e in entries if e.kind == "solver-excluded"]
    n = len(rows)
    status = [r["status"] for _, r in rows]
    compiled = sum(s in ("compiled", "verified", "mismatch", "verify-crash") for s in status)
    verified = status.count("verified")
    refused = [(e, r) for e, r in rows if r["status"] == "refused"]
    cv_ran = [(e, r) for e, r in rows if r.get("opencv") == "runs"]
    cv_cmp = [(e, r) for e, r in cv_ran if r.get("opencv_max_rel") is not None]
    agree = [(e, r) for e, r in cv_cmp if agrees(r)]
    opencv_wrong = [(e, r) for e, r in cv_cmp if not agrees(r) and r.get("opencv_diverges")]
    cv_runs = len(cv_ran)
    cv_imports = sum(r.get("opencv") == "imports" for _, r in rows)  # where protonet refused
    repos = len({e.repo for e, _ in rows})
    kept = sorted({r["protonet"] for _, r in rows if r.get("protonet")})
    legacy = sum(1 for _, r in rows if r.get("verify_rel") is not None and r.get("metric") != "ratio")
    revs = ", ".join(kept) if kept else rev
    if len(kept) > 1:
        revs += " (the run was resumed as main moved; refusals were rerun at the last)"
    lines = [
        "# Real-world corpus: protonet and OpenCV's Caffe importer",
        "",
        f"Generated by `python tools/corpus_report.py --corpus DIR` (files: `python tools/corpus_fetch.py --dest DIR`, "
        f"listed in tools/corpus.tsv), results from protonet {revs}. {n} definitions from {repos} public repositories "
        f"({len(skipped)} solver files listed and skipped). Each file: protonet compiles it at batch 1 with random "
        "weights (seed 0), writes them as a .caffemodel, compiles again with them and the optimizer, and verifies "
        "every blob (onnxruntime fp32 vs the float64 reference, seeded normal input, verify's element-wise tolerance); OpenCV "
        f"{_cv_version()} `cv2.dnn.readNetFromCaffe` runs the same file, weights and input, and each output is "
        "compared element by element (|opencv - protonet| <= 1e-4 * rms + 1e-4 * |protonet|, rms over protonet's "
        "nonzero values; figures are the "
        "worst element's error as a fraction of that, agree means <= 1). Inputs over 256x256 are cut to a quarter "
        "or a half of each side where the net compiles that way. Each file runs in its own process (nice 19, timeout, memory cap).",
        *(["", f"Figures marked † ({legacy} files) were kept from a run made before verify's element-wise "
           "comparison landed: they are relative errors max |a - b| / max |b|, and agree means <= 1e-4."]
          if legacy else []),
        "",
        "Machine:",
        "",
        *machine,
        "",
        "## Totals",
        "",
        "| | files |",
        "|---|---:|",
        f"| definitions | {n} |",
        f"| protonet compiles | {compiled} |",
        f"| protonet verifies (every blob within tolerance) | {verified} |",
        f"| compiles, but a blob differs beyond the tolerance (verify exit 3) | {status.count('mismatch')} |",
        f"| compiles, verify did not finish (memory cap, runtime error) | {status.count('verify-crash')} |",
        f"| OpenCV runs (with protonet's weights) | {cv_runs} |",
        f"| outputs compared with OpenCV | {len(cv_cmp)} |",
        f"| agree with OpenCV within the tolerance (outputs and every layer) | {len(agree)} |",
        f"| differ where OpenCV departs from the Caffe source (see below) | {len(opencv_wrong)} |",
        f"| differ, unexplained | {len(cv_cmp) - len(agree) - len(opencv_wrong)} |",
        f"| protonet refuses | {len(refused)} |",
        f"| protonet crashes / times out | {n - compiled - len(refused) - status.count('not run')} |",
        *([f"| not run yet | {status.count('not run')} |"] if "not run" in status else []),
        "",
        f"protonet against OpenCV on the same {n} files: protonet compiles {compiled} and verifies {verified}. "
        f"OpenCV can only be run where protonet wrote the weights: it runs {cv_runs} of those {compiled}; of the "
        f"{n - compiled} that protonet does not compile, OpenCV imports {cv_imports} with every layer type known "
        f"(an upper bound on what it would run). OpenCV's count is therefore at most {cv_runs + cv_imports}, "
        f"protonet's {compiled}.",
        "",
    ]
    if opencv_wrong:
        lines += ["Where OpenCV departs from the Caffe source (the difference starts at that layer type; protonet "
                  "follows the source, and a hand-checked test pins it):", ""]
        for kind in sorted({r["opencv_first_diff_type"] for _, r in opencv_wrong}):
            files = [e.local for e, r in opencv_wrong if r["opencv_first_diff_type"] == kind]
            lines.append(f"- {kind} ({len(files)} files): {OPENCV_DIVERGES[kind].why}.")
        lines.append("")
    ssd = [e for e, r in cv_cmp if any(n.endswith("detection_out") for n in r.get("opencv_rel", {}))]
    if ssd:
        lines += [f"SSD's DetectionOutput ({len(ssd)} files) is compared as a set of detections: SSD's "
                  "detection_output_layer.cpp emits exactly the kept rows, class by class (a std::map over labels), "
                  "each class by descending score; OpenCV orders all rows by score and pads its fixed-size output "
                  "with rows of 0, protonet keeps Caffe's order and pads with rows of -1 (Caffe's own filler for an "
                  "image without detections). Both tools' rows that are detections are sorted the same way and "
                  "compared; a different count is a difference.", ""]
    by_reason: dict[str, list[tuple[Entry, dict[str, Any]]]] = {}
    for e, r in refused:
        by_reason.setdefault(f"{r['reason']}|{r['gap']}", []).append((e, r))
    tied = [(e, r) for e, r in rows if r.get("followed")]
    if tied:
        lines += [f"Near-ties ({len(tied)} files): where MAX pooling's mask or a Proposal's or DetectionOutput's sort and "
                  "NMS chose otherwise in float32 on values equal within the tolerance, verify continued the reference with onnxruntime's "
                  "choice (protonet.pipeline: a mask index only inside its window at a value within the tolerance of "
                  "the maximum; a Proposal's or DetectionOutput's tops only when its kernel on onnxruntime's bottoms gives "
                  "them; likewise the top of an ill-conditioned layer, SegNet's BN with batch statistics, that differs "
                  "beyond the tolerance):", ""]
        for e, r in tied:
            blobs = ", ".join(f"{k} {v}" for k, v in sorted(r["followed"].items()))
            lines.append(f"- {e.local}: {blobs} element(s)" + (
                f"; the optimized graph verified on its own ({r['optimized_followed']} followed)"
                if r.get("optimized_followed") is not None else ""))
        lines.append("")
    lines += ["## Refusals by reason", "", "| reason | files | verdict | why |", "|---|---:|---|---|"]
    for key, items in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        r0 = items[0][1]
        lines.append(f"| {key.split('|')[0]} | {len(items)} | {'protonet gap' if r0['gap'] else 'right to refuse'} | "
                     f"{_cell(r0['why'])} |")
    bad_cli = [e.local for e, r in refused if r.get("cli_rc") != 2 or r.get("cli_lines") != 1 or r.get("cli_traceback")]
    lines += ["", f"Refusals through `protonet compile`: {len(refused) - len(bad_cli)} of {len(refused)} are one line "
              f"with exit 2 and no traceback" + (f"; not so: {', '.join(bad_cli)}" if bad_cli else "") + ".", ""]
    lines += ["## Files", "",
              "| # | repository | file | kind | family | input | protonet | verify | OpenCV | vs OpenCV: outputs | "
              "every layer (count) | s |",
              "|---:|---|---|---|---|---|---|---:|---|---:|---:|---:|"]
    notes: list[str] = []
    for i, (e, r) in enumerate(rows, 1):
        inp = "; ".join(f"{k} {'x'.join(map(str, s))}" for k, s in r.get("inputs", {}).items())
        if r.get("reduced_from"):
            inp += f" (from {'x'.join(map(str, r['reduced_from'][2:]))})"
        st = r["status"]
        if st == "refused":
            st = f"refused: {r['reason']}"
            notes.append(f"{i}. `{e.local}`: {r['message']}")
        elif st not in ("verified", "compiled", "not run"):
            notes.append(f"{i}. `{e.local}`: {st}: {r.get('message', '')}")
        cv = r.get("opencv", "")
        if cv in ("refuses", "fails to run"):
            cv = f"{cv}: {r.get('opencv_error', '')[:80]}"
        elif r.get("opencv_first_diff"):
            cv += f"; differs from {r['opencv_first_diff']} ({r['opencv_first_diff_type']})"
            cv += " on: OpenCV departs from the Caffe source" if r.get("opencv_diverges") else ""
        layers_cell = _fmt(r.get("opencv_layer_max_rel"), r)
        if r.get("opencv_layers"):
            layers_cell += f" ({r['opencv_layers']})"
        if r.get("opencv_notes"):
            notes.append(f"{i}. `{e.local}` (OpenCV): {'; '.join(r['opencv_notes'])}")
        lines.append(f"| {i} | {e.repo} | {_cell(e.path)} | {e.kind} | {e.family} | {_cell(inp)} | {_cell(st)} | "
                     f"{_fmt(r.get('verify_rel'), r)} | {_cell(cv)} | {_fmt(r.get('opencv_max_rel'), r)} | "
                     f"{layers_cell} | {r.get('seconds', '')} |")
    if notes:
        lines += ["", "## Messages", "", *[_cell(x) for x in notes]]
    return "\n".join(lines) + "\n"


def _cause(r: dict[str, Any]) -> str:
    """A finer cause than the reason, for grouping: the field or layer types a message names."""
    m = r.get("message", "")
    field = re.search(r'field named "(\w+)"|field \'?"?(\w+)', m)
    if r.get("reason") == "unknown-field" and field:
        msg_type = re.search(r'"caffe\.(\w+)"', m)
        return f"unknown field {(msg_type.group(1) + '.') if msg_type else ''}{field.group(1) or field.group(2)}"
    if r.get("reason") in ("layer-type", "fork-layer-type"):
        return "layer types " + ", ".join(sorted(set(re.findall(r"(\w+) \(layer '", m))))
    return r.get("reason") or r["status"]


def render_findings(entries: list[Entry], results: dict[str, dict[str, Any]], corpus: Path) -> str:
    """What protonet gets wrong on the corpus, grouped by cause, one repro line each: refusals that
    are gaps, crashes, timeouts, verify mismatches and disagreements with OpenCV."""
    groups: dict[str, list[str]] = {}
    for e in entries:
        r = results.get(e.local)
        if r is None or e.kind == "solver-excluded":
            continue
        shapes = "".join(f" --input-shape {part}" for part in filter(None, e.input_shape.split(";")))
        repro = f"protonet compile {corpus / e.local}{shapes} -o /tmp/x.onnx"
        if r["status"] == "refused" and r.get("gap"):
            key = _cause(r)
        elif r["status"] in ("crash", "timeout", "verify-crash", "mismatch"):
            key = f"protonet {r['status']}"
        elif cv_worst(r) is not None and not agrees(r) and not r.get("opencv_diverges"):
            key = "disagrees with OpenCV"
            repro = (f"{repro}   # vs OpenCV: outputs {_fmt(r.get('opencv_max_rel'))}, from layer "
                     f"{r.get('opencv_first_diff')} ({r.get('opencv_first_diff_type')}) on")
        else:
            continue
        detail = r.get("message", "")
        groups.setdefault(key, []).append(f"- `{repro}`" + (f"\n  {detail}" if detail else ""))
    lines = ["# Corpus findings", "", f"From `tools/corpus_report.py` at protonet {_rev()}, "
             f"{sum(e.local in results for e in entries)} files run. Files that Caffe, its fork or OpenCV run "
             "and protonet refuses or gets wrong, grouped by cause (biggest first); each line reproduces it "
             "(`PYTHONPATH=/work/main python3 -m protonet ...`).", ""]
    for key, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines += [f"## {key} ({len(items)})", "", *items, ""]
    if not groups:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def _cv_version() -> str:
    try:
        import cv2
        return cv2.__version__
    except ImportError:
        return "(not installed)"


@functools.lru_cache(maxsize=None)
def _rev() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(unknown revision)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", help="the folder tools/corpus_fetch.py filled")
    ap.add_argument("--list", default=str(LIST))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "corpus.md"))
    ap.add_argument("--only", default="", help="rerun only files whose repository/path contains this (comma-separated: any of these, in that order)")
    ap.add_argument("--findings", help="also write the gaps, grouped by cause with a repro line each, here")
    ap.add_argument("--render", action="store_true", help="write the report from the kept results; run nothing")
    ap.add_argument("--resume", action="store_true", help="skip files that already have a kept result")
    ap.add_argument("--rerun-unverified", action="store_true",
                    help="rerun only files whose kept result is not 'verified' (refused, crashed, ...)")
    ap.add_argument("--results", help="where results are kept (default: DIR/.corpus_results.json)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per file")
    ap.add_argument("--mem-gb", type=float, default=8.0, help="address-space cap per file")
    args = ap.parse_args(argv)
    if not args.corpus:
        ap.error("--corpus DIR is required")
    from machine import markdown  # tools/machine.py

    os.nice(19)  # polite on a shared machine; the forked children inherit it
    _preload()
    _rev()

    corpus = Path(args.corpus)
    entries = read_list(Path(args.list))
    out = Path(args.out)
    store = Path(args.results) if args.results else corpus / ".corpus_results.json"
    results: dict[str, dict[str, Any]] = json.loads(store.read_text()) if store.exists() else {}
    wanted = [w for w in args.only.split(",") if w]

    def order(e: Entry) -> int:  # --only a,b,c runs a's files first, then b's, ...
        return next((i for i, w in enumerate(wanted) if w in f"{e.repo}/{e.path}"), len(wanted))

    for e in sorted(entries, key=order):
        if args.render or e.kind == "solver-excluded" or (wanted and not any(w in f"{e.repo}/{e.path}" for w in wanted)):
            continue
        if args.resume and e.local in results:
            continue
        if args.rerun_unverified and results.get(e.local, {}).get("status") == "verified":
            continue
        results[e.local] = run_one(e, corpus, args.timeout, args.mem_gb)
        r = results[e.local]
        print(f"{r['status']:12} {_fmt(r.get('verify_rel')):8} {r.get('opencv', ''):12} "
              f"{_fmt(r.get('opencv_max_rel')):8} {e.local}  {r.get('message', '')[:150]}", flush=True)
        store.write_text(json.dumps(results, indent=1, sort_keys=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(render(entries, results, markdown(), _rev()))
    tmp.replace(out)
    print(f"wrote {out}")
    if args.findings:
        Path(args.findings).write_text(render_findings(entries, results, corpus))
        print(f"wrote {args.findings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
