"""The ``protonet`` command line: compile, verify, infer, summary, upgrade, layers, demo.

User errors print one located line on stderr and exit 2 (3 for a verification mismatch);
anything else is an internal error (exit 1; ``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .version import __version__
from .api import MAX_DIM
from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL, ProtonetError, printable, quote
from .fileio import Terminated, is_regular_file, note_input, protect_inputs, save_npz, unwind_on_signals, writes_stdout
from .runtime import PROVIDER_CHOICES

log = logging.getLogger("protonet")

DEMO_NET = "googlenet.prototxt"


def _say(msg: str = "") -> None:
    print(msg, flush=True)




def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if not 0 < n < MAX_DIM:
        raise argparse.ArgumentTypeError(f"{n} must be a positive integer below 2^31")
    return n


def _batch(text: str) -> int | str:
    """--batch: a positive integer, or ``dynamic`` (a symbolic batch dimension)."""
    return "dynamic" if text == "dynamic" else _positive(text)


def _int_in(lo: int, hi: int) -> Any:
    """An argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"{n} is not in [{lo}, {hi}]")
        return n
    return parse


def _parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``name=1,3,224,224`` or ``1,3,224,224`` (the first input)."""
    name, sep, dims = text.partition("=") if "=" in text else ("", "", text)
    if "=" in dims:
        raise argparse.ArgumentTypeError(f"bad shape '{text}': use name=N,C,H,W or N,C,H,W")
    parts = dims.replace("x", ",").split(",")
    if not parts or any(not p.strip() for p in parts):
        raise argparse.ArgumentTypeError(f"bad shape '{text}': use name=N,C,H,W or N,C,H,W")
    return name, tuple(_positive(p.strip()) for p in parts)


def _add_schema_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--caffe-proto", metavar="FORK.proto",
                   help="read the files through your Caffe fork's own caffe.proto (compiled at run time by "
                        "grpcio-tools' protoc: pip install 'protonet[proto]')")
    p.add_argument("--ignore-field", action="append", default=[], metavar="MSG.FIELD",
                   help="run without a fork field protonet does not implement (e.g. DropoutParameter."
                        "sample_weights_test); results may differ from the fork's")


def _add_net_options(p: argparse.ArgumentParser, weights: bool = True) -> None:
    _add_schema_options(p)
    if weights:
        p.add_argument("-w", "--weights", metavar="W.caffemodel", help="trained weights (default: fillers)")
    p.add_argument("--batch", type=_batch, metavar="N|dynamic",
                   help="override the batch dimension of every input; 'dynamic': a symbolic batch dimension N "
                        "(the model runs at any batch size; verified at batch 1, 3 and 8)")
    p.add_argument("--seed", type=_int_in(0, 2 ** 63 - 1), default=0,
                   help="seed for filler-generated weights (default 0)")
    p.add_argument("--input-shape", type=_parse_shape, action="append", default=[], metavar="[NAME=]N,C,H,W",
                   help="shape of an input (data layers of train_val files, or a missing input shape)")
    p.add_argument("--strict", action="store_true", help="a layer missing from the weights file is an error")
    p.add_argument("--fork", action="append", default=[], metavar="NAME",
                   help="run the layers that the fork NAME computes differently under the same type name as that "
                        "fork does: faceboxes (sfzhang15/FaceBoxes' PriorBox; chosen by itself when DetectionOutput's "
                        "prior count fits only that fork)")


def _floats(text: str, most: int = 4) -> tuple[float, ...]:
    """``104,117,123``: 1 to ``most`` finite numbers (a fraction ``1/255`` is one)."""
    out = []
    for part in text.split(","):
        num, _, den = part.strip().partition("/")
        try:
            v = float(num) / float(den) if den else float(num)
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"'{part.strip()}' is not a number") from None
        if not np.isfinite(v):
            raise argparse.ArgumentTypeError(f"'{part.strip()}' is not a finite number")
        out.append(v)
    if not 1 <= len(out) <= most:
        raise argparse.ArgumentTypeError(f"'{text}': give 1 to {most} numbers")
    return tuple(out)


def _scale(text: str) -> float:
    v = _floats(text, 1)[0]
    if v == 0:
        raise argparse.ArgumentTypeError("the scale is 0")
    return v


def _sides(text: str) -> tuple[int, ...]:
    """``H,W`` or ``S``: positive integers."""
    parts = text.replace("x", ",").split(",")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"'{text}': give H,W or S")
    return tuple(_positive(p.strip()) for p in parts)


def _add_preprocess_options(p: argparse.ArgumentParser, compiling: bool) -> None:
    """The photo preprocessing (OpenCV blobFromImage semantics; see protonet.images)."""
    g = p.add_argument_group("photo preprocessing (replaces what a data layer said" +
                             (", stored in the model)" if compiling else " and what the model carries)"))
    g.add_argument("--mean", type=_floats, metavar="B,G,R", help="subtract these per-channel values, in the net's "
                   "channel order")
    g.add_argument("--mean-file", metavar="mean.binaryproto", help="subtract this mean image (Caffe BlobProto)")
    g.add_argument("--scale", type=_scale, metavar="S", help="multiply by S after the mean: (pixel - mean) * S "
                   "(a fraction such as 1/255 is accepted)")
    g.add_argument("--resize", type=_sides, metavar="H,W|S", help="resize to H x W, or the shorter side to S "
                   "(bilinear, not antialiased: OpenCV INTER_LINEAR)")
    g.add_argument("--crop", type=_sides, metavar="H,W", help="centre crop after the resize (S: S x S)")
    g.add_argument("--channels", type=str.upper, choices=["BGR", "RGB"], help="the net's channel order "
                   "(default BGR, as Caffe's readers)")
    if compiling:
        g.add_argument("--embed-preprocess", action="store_true", help="put the preprocessing into the ONNX graph: "
                       "the model takes a uint8 N,H,W,3 RGB image")
        g.add_argument("--image-size", type=_sides, metavar="H,W", help="with --embed-preprocess, the image size "
                       "the model takes (default: any size with --resize H,W, else the net's input size)")


def _preprocess_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The command's photo preprocessing options as :func:`protonet.api.compile`'s keywords."""
    return dict(mean=args.mean, mean_file=args.mean_file, scale=args.scale, resize=args.resize, crop=args.crop,
                channels=args.channels)


def _preprocess_options(args: argparse.Namespace) -> Any:
    from .api import preprocess_options

    return preprocess_options(**_preprocess_kwargs(args))


def _add_compile_options(p: argparse.ArgumentParser) -> None:
    """The options of ``compile`` that shape the model (export-triton takes them too)."""
    _add_opt_options(p, default_on=True)
    p.add_argument("--explain", action="store_true", help="print what every pass matched, changed and declined")
    _add_preprocess_options(p, compiling=True)
    p.add_argument("--opset", type=_int_in(1, 999), help="target another ONNX opset (through onnx.version_converter, "
                                             "then run against the opset-17 model; default 17)")
    p.add_argument("--verify", action="store_true",
                   help="verify the model before writing it (as 'protonet verify'; a mismatch exits 3 and "
                        "writes nothing)")
    p.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES, help="for --verify")
    p.add_argument("--all", action="store_true", help="with --verify, print every blob")
    _add_precision_options(p)


def _add_opt_options(p: argparse.ArgumentParser, default_on: bool) -> None:
    if default_on:
        p.add_argument("--no-optimize", action="store_true", help="skip the optimizer passes")
    else:
        p.add_argument("--optimized", action="store_true", help="apply the optimizer passes first")
    p.add_argument("--passes", metavar="a,b,c", help="run only these passes, in this order")
    p.add_argument("--output", action="append", default=[], metavar="BLOB",
                   help="keep only these network outputs (layers feeding nothing else are removed)")


def _fraction(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 <= x <= 1:
        raise argparse.ArgumentTypeError(f"{x:g} is not in [0, 1]")
    return x


def _finite(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return x


def _add_precision_options(p: argparse.ArgumentParser) -> None:
    from .quantize import ACTIVATION_TYPES, CALIBRATION_METHODS, PRECISIONS, Gate

    g = p.add_argument_group("reduced precision (protonet.quantize)")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="int8: static QDQ quantization calibrated on --calibrate; fp16: for the GPU, float32 "
                        "inputs and outputs kept. Either measures its accuracy against fp32 on held-out inputs")
    g.add_argument("--calibrate", metavar="DIR|inputs.npz",
                   help="calibration inputs: a folder of images (through the net's preprocessing) or an .npz "
                        "with an array per input, samples stacked on the batch axis")
    g.add_argument("--holdout", type=_positive, metavar="N",
                   help="inputs held back from calibration to measure accuracy on (default: a fifth)")
    g.add_argument("--min-agreement", type=_fraction, default=Gate.min_agreement, metavar="F",
                   help="least top-1 (classifier) or box (detection) agreement with fp32 (default %(default)s)")
    g.add_argument("--min-sqnr", type=_finite, default=Gate.min_sqnr, metavar="DB",
                   help="least SQNR of other outputs against fp32, in dB (default %(default)s)")
    g.add_argument("--det-threshold", type=_fraction, default=Gate.det_threshold, metavar="S",
                   help="score from which detections are compared (default %(default)s)")
    g.add_argument("--force", action="store_true", help="write the model even when the accuracy gate fails")
    g.add_argument("--int8-activations", choices=list(ACTIVATION_TYPES), default="uint8",
                   help="int8 activation type (default %(default)s)")
    g.add_argument("--calibration-method", choices=list(CALIBRATION_METHODS), default="minmax",
                   help="how activation ranges are set (default %(default)s)")


def _add_answer_options(p: argparse.ArgumentParser) -> None:
    from .answers import DEFAULT_NMS, DEFAULT_THRESHOLD, DEFAULT_TOP_K

    g = p.add_argument_group("answers (protonet.answers) and folders of images (protonet.batchrun)")
    g.add_argument("--labels", metavar="synset_words.txt", help="class names, one a line (line k names class k), "
                                                                "or an SSD labelmap.prototxt")
    g.add_argument("--top-k", type=_positive, default=DEFAULT_TOP_K, metavar="K",
                   help=f"classes shown per image (default {DEFAULT_TOP_K})")
    g.add_argument("--threshold", type=_finite, default=DEFAULT_THRESHOLD, metavar="T",
                   help=f"boxes with a score above T are shown (default {DEFAULT_THRESHOLD:g})")
    g.add_argument("--nms", type=_fraction, default=DEFAULT_NMS, metavar="T",
                   help=f"two-stage detectors: per-class NMS IoU threshold (default {DEFAULT_NMS:g})")
    g.add_argument("--draw", metavar="out.jpg", help="write the photo with its boxes and labels")
    g.add_argument("--segmentation", metavar="out.png",
                   help="write the class per pixel of a score map as a PNG of the photo's size (VOC colours)")
    g.add_argument("--workers", type=_positive, metavar="N", help="folder/list mode: threads decoding images "
                                                                  "(default: the CPU count, at most 8)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="protonet", description="Caffe prototxt -> ONNX compiler and runtime")
    ap.add_argument("--version", action="version", version=f"protonet {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress")
    ap.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                    help="a module on PYTHONPATH or a path to a .py file of your own that registers "
                         "custom layer classes (see README)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="compile a net definition to ONNX")
    p.add_argument("net", help="prototxt (any Caffe format) or a .caffemodel")
    p.add_argument("-o", "--out", required=True, metavar="OUT.onnx")
    _add_net_options(p)
    _add_compile_options(p)

    p = sub.add_parser("export-triton", help="write a Triton Inference Server model repository (protonet.triton)")
    p.add_argument("models", nargs="+", metavar="MODEL.onnx|NET.prototxt",
                   help="compiled models (with a dynamic batch), or net definitions (compiled with --batch dynamic "
                        "and the compile options below)")
    p.add_argument("--repo", required=True, metavar="DIR", help="the model repository (created when missing)")
    p.add_argument("--name", help="the model's name in the repository (one model; default: the file's stem)")
    p.add_argument("--max-batch", type=_int_in(0, 1 << 16), default=8, metavar="N",
                   help="the largest batch Triton forms from queued requests (default 8; 0: no batching)")
    p.add_argument("--queue-delay-us", type=_int_in(0, 10 ** 7), default=100, metavar="US",
                   help="how long Triton may hold a request to gather a larger batch (default 100)")
    p.add_argument("--instances", type=_int_in(1, 1024), default=1, metavar="K", help="model instances (default 1)")
    p.add_argument("--kind", choices=["cpu", "gpu"], default="cpu", help="where the instances run (default cpu)")
    p.add_argument("--tensorrt", nargs="?", const="fp16", choices=["fp16", "fp32"],
                   help="GPU instances run through onnxruntime's TensorRT accelerator (precision_mode; default fp16)")
    p.add_argument("-w", "--weights", action="append", default=[], metavar="W.caffemodel",
                   help="weights of the net definitions, one per definition in order (default: fillers)")
    _add_net_options(p, weights=False)
    _add_compile_options(p)

    p = sub.add_parser("verify", help="run the numpy reference and onnxruntime and compare every blob")
    p.add_argument("net", nargs="+", metavar="[MODEL.onnx] NET",
                   help="the net (the model compile would write is verified), or a compiled MODEL.onnx "
                        "and the net it was compiled from (with the same options)")
    p.add_argument("--opset", type=int, help="verify the model compiled for this ONNX opset")
    _add_net_options(p)
    _add_opt_options(p, default_on=True)
    p.add_argument("--input", metavar="x.npy|x.npz", help="input (default: seeded standard-normal noise)")
    p.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES)
    p.add_argument("--all", action="store_true", help="print every blob (default: worst 10 and failures)")

    p = sub.add_parser("infer", help="run a compiled model (or a net definition) on an input")
    p.add_argument("model", help="MODEL.onnx or NET.prototxt")
    p.add_argument("images", nargs="?", metavar="IMAGE|DIR|LIST.txt",
                   help="an image, a folder of images or a list of image paths (one a line): one result "
                        "row per image into -o results.csv|.jsonl (see --input for arrays)")
    _add_net_options(p)
    p.add_argument("--input", metavar="x.npy|x.npz|image",
                   help="input array(s), an image file (JPEG/PNG/BMP), or 'random'")
    p.add_argument("-o", "--out", metavar="out.npz|results.csv|results.jsonl",
                   help="write every network output under its blob name (.npz), or one row per image (.csv, .jsonl)")
    p.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES)
    _add_preprocess_options(p, compiling=False)
    _add_answer_options(p)

    p = sub.add_parser("bench", help="latency percentiles and throughput per batch size (and per layer)")
    p.add_argument("model", help="MODEL.onnx or NET.prototxt (compiled, optimized, at each --batch size)")
    p.add_argument("-w", "--weights", metavar="W.caffemodel", help="trained weights (default: fillers)")
    p.add_argument("--batch", metavar="1,8,32|dynamic,1,8,32",
                   help="batch sizes (default: the model's own); a prototxt is compiled at each, or, with "
                        "'dynamic', once with a symbolic batch (sizes default 1,8,32)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),
                   help="fp16 or int8 builds (protonet.quantize; speed only: compile measures accuracy)")
    p.add_argument("--calibrate", metavar="DIR|inputs.npz", help="int8 calibration data (default: random inputs)")
    p.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES)
    p.add_argument("--threads", type=_positive, metavar="N", help="onnxruntime intra-op threads")
    p.add_argument("--warmup", type=_int_in(0, 1 << 20), default=3, metavar="N", help="untimed runs first (3)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iterations", type=_positive, metavar="N", help="timed runs per batch size")
    g.add_argument("--time", type=float, default=2.0, metavar="S",
                   help="time each batch size for S seconds, at least 10 runs (default 2)")
    p.add_argument("--per-layer", action="store_true", help="Caffe's per-layer table from onnxruntime's profiler")
    p.add_argument("--no-cuda-graph", action="store_true", help="on a GPU, do not capture a CUDA graph")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--seed", type=_int_in(0, 2 ** 63 - 1), default=0, help="seed for fillers and inputs")
    p.add_argument("--input-shape", type=_parse_shape, action="append", default=[], metavar="[NAME=]N,C,H,W",
                   help="shape of an input (data layers of train_val files, or a missing input shape)")
    _add_schema_options(p)

    p = sub.add_parser("summary", help="per-layer shapes, params, MACs and memory")
    p.add_argument("nets", nargs="+", metavar="net")
    _add_net_options(p, weights=False)
    _add_opt_options(p, default_on=False)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--compare", action="store_true", help="the networks side by side")

    p = sub.add_parser("draw", help="a picture of the net: SVG, PNG, or an HTML page with pan, zoom and details")
    p.add_argument("net", help="prototxt (any Caffe format) or a .caffemodel")
    p.add_argument("-o", "--out", required=True, metavar="net.svg|net.png|net.html")
    _add_net_options(p)
    _add_opt_options(p, default_on=False)

    p = sub.add_parser("upgrade", help="rewrite a legacy (V0/V1) definition or caffemodel in the current format")
    p.add_argument("old")
    p.add_argument("-o", "--out", required=True, metavar="NEW")
    _add_schema_options(p)

    p = sub.add_parser("layers", help="list the supported layer types and their facets")
    p.add_argument("--format", choices=["markdown", "names"], default="markdown")

    p = sub.add_parser("serve", help="serve models over HTTP/gRPC with Triton Inference Server (protonet[serve])")
    p.add_argument("models", nargs="+", metavar="MODEL.onnx|NET.prototxt")
    p.add_argument("-w", "--weights", action="append", default=[], metavar="W.caffemodel",
                   help="weights of the net definitions, one per definition in order (default: fillers)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: localhost only)")
    p.add_argument("--http-port", type=_int_in(1, 65535), default=8000)
    p.add_argument("--grpc-port", type=_int_in(1, 65535), default=8001)
    p.add_argument("--metrics-port", type=_int_in(1, 65535), default=8002)
    p.add_argument("--max-batch", type=_int_in(1, 1 << 16), default=8,
                   help="the largest batch Triton forms from queued requests (dynamic-batch models)")
    p.add_argument("--queue-delay-us", type=_int_in(0, 10 ** 7), default=0, metavar="US",
                   help="how long Triton may hold a request to gather a larger batch (default 0: batch what is queued)")
    p.add_argument("--instances", type=_int_in(1, 64), default=1, help="model instances (one session each)")
    p.add_argument("--provider", default="auto", choices=["auto", "cuda", "cpu"])

    p = sub.add_parser("demo", help="compile, verify and run the embedded default net (GoogLeNet)")
    p.add_argument("--net", help=f"net to use (default: the packaged {DEMO_NET})")
    p.add_argument("-o", "--out", default="demo.onnx", metavar="OUT.onnx")
    return ap


# -- helpers -----------------------------------------------------------------------------------

def _model(args: argparse.Namespace, net: str, optimize: bool, opset: int | None = None, **more: Any) -> Any:
    """The net compiled with the command's options (:func:`protonet.api.compile`)."""
    from .api import compile

    return compile(net, **_net_kwargs(args), optimize=optimize, opset=opset, **more)


def _net_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The command's net options as :func:`protonet.api.compile`'s keywords."""
    return dict(weights=getattr(args, "weights", None), batch=args.batch, seed=args.seed,
                strict=getattr(args, "strict", False), input_shapes=dict(getattr(args, "input_shape", [])),
                passes=args.passes.split(",") if getattr(args, "passes", None) else None,
                outputs=getattr(args, "output", None) or None, caffe_proto=args.caffe_proto,
                ignore_fields=tuple(args.ignore_field), forks=tuple(getattr(args, "fork", ())))


def _report_loaded(c: Any) -> None:
    if c.loaded.upgrades:
        _say(f"upgraded from a legacy format: {'; '.join(c.loaded.upgrades)}")
    for note in c.loaded.notes:
        _say(note)
    _say(c.report.summary())


# -- commands ----------------------------------------------------------------------------------

def cmd_compile(args: argparse.Namespace) -> int:
    from .export import write_model

    t0 = time.perf_counter()
    c, built = _compile_built(args, args.net)
    files = write_model(built, args.out, inputs=[args.net, args.weights])
    model = built.structure
    size = sum(f.stat().st_size for f in files if is_regular_file(f)) or model.ByteSize() + built.large_bytes
    _say(f"wrote {args.out}: {len(model.graph.node)} ONNX nodes, opset {model.opset_import[0].version}, "
         f"{size / 1e6:.1f} MB, inputs {', '.join(v.name for v in c.graph.inputs)}, outputs "
         f"{', '.join(v.name for v in c.graph.outputs)} ({time.perf_counter() - t0:.1f}s)")
    return 0


def _compile_built(args: argparse.Namespace, net: str) -> tuple[Any, Any]:
    """What compile writes for ``net`` with the command's options: the compiled net and its
    Built model, verified, reduced in precision and with the preprocessing embedded as asked."""
    m = _model(args, net, optimize=not args.no_optimize, opset=args.opset, **_preprocess_kwargs(args))
    c = m.compiled
    _report_loaded(c)
    meta = m.preprocess
    if meta is not None:
        _say(f"preprocessing: {meta.describe()}")
    if c.passes:
        from .passes import explain

        if args.explain:
            _say(explain(c.passes))
        else:
            changed = [r for r in c.passes if r.changed]
            _say("optimized: " + (", ".join(f"{r.name} ({len(r.changes)})" for r in changed) or "nothing to do"))
    built = m.built
    if args.verify:
        _print_verify(m.verify(provider=args.provider), args.all)
    if args.precision != "fp32":
        built = _reduce_precision(args, m)
    if args.embed_preprocess:
        from .embed import embed_preprocess

        size = args.image_size
        built = embed_preprocess(built, meta, size * 2 if size and len(size) == 1 else size)
        dims = built.structure.graph.input[0].type.tensor_type.shape.dim
        _say(f"embedded the preprocessing: input {quote(meta.input)} takes a uint8 RGB image "
             f"{'x'.join(d.dim_param or str(d.dim_value) for d in dims)} (N, H, W, C)")
    elif args.image_size:
        raise ProtonetError("--image-size is the size of the image an embedded preprocessing takes; give "
                            "--embed-preprocess")
    return c, built


def _reduce_precision(args: argparse.Namespace, m: Any) -> Any:
    """The --precision build of ``m`` (:meth:`protonet.api.Model.reduce_precision`), its accuracy
    printed (a failed gate raises, exit 3)."""
    if args.opset is not None and args.opset < 13:
        raise ProtonetError(f"--precision {args.precision} needs opset 13 or later (per-channel quantization); "
                            f"got --opset {args.opset}")
    reduced, report = m.reduce_precision(
        args.precision, args.calibrate, holdout=args.holdout, min_agreement=args.min_agreement,
        min_sqnr=args.min_sqnr, det_threshold=args.det_threshold, force=args.force,
        int8_activations=args.int8_activations, calibration_method=args.calibration_method)
    _say(report.describe())
    if not report.passed:
        _say("accuracy gate failed; written anyway (--force)")
    return reduced.built


def cmd_verify(args: argparse.Namespace) -> int:
    from .api import load

    if len(args.net) > 2 or (len(args.net) == 2 and not args.net[0].endswith(".onnx")):
        raise ProtonetError("verify takes NET, or MODEL.onnx and the NET it was compiled from")
    artifact, net = (args.net[0], args.net[1]) if len(args.net) == 2 else (None, args.net[0])
    if artifact is not None and args.opset is not None:
        raise ProtonetError("--opset: the model's own opset is verified; give --opset to compile")
    if artifact is None:
        m = _model(args, net, optimize=not args.no_optimize, opset=args.opset)
    else:
        m = load(artifact, net, **_net_kwargs(args), optimize=not args.no_optimize)
    _report_loaded(m.compiled)
    _print_verify(m.verify(args.input, args.provider), args.all)
    return 0


def _print_verify(res: Any, show_all: bool) -> None:
    """The comparison table (worst ten and every failure unless ``show_all``); raises
    VerificationError (exit 3) on a mismatch."""
    from .api import mismatch_error
    from .tolerances import VERIFY

    rows = res.blobs if show_all else sorted(res.blobs, key=lambda b: -b.ratio)[:10]
    rows = rows + [b for b in res.blobs if (not b.ok or b.followed) and b not in rows]
    names = [printable(b.name) + ("" if b.source == "debug" else f" ({b.source})") for b in rows]
    width = max([len(n) for n in names] + [4])
    _say(f"{'blob'.ljust(width)}  {'shape':<18} {'max abs err':>12} {'err/tol':>9}  worst element")
    for n, b in zip(names, rows):
        flag = ("" if b.ok else "  MISMATCH") + (f"  ({b.followed} near-tie choice(s) of onnxruntime followed)"
                                                   if b.followed else "")
        _say(f"{n.ljust(width)}  {'x'.join(map(str, b.shape)):<18} {b.max_abs:12.3e} {b.ratio:9.3g}  "
             f"{b.result.describe()}{flag}")
    worst = res.worst
    _say(f"{len(res.blobs)} blobs compared on {res.provider.upper()}; tolerance |onnx - ref| <= "
         f"{VERIFY.atol_factor:g}*rms(ref) + {VERIFY.rtol:g}*|ref| per element; worst {printable(worst.name)} "
         f"({worst.source}) at {worst.ratio:.3g} of it")
    if res.followed:
        _say(f"near-ties: at {res.followed} element(s) onnxruntime chose otherwise among values equal within the "
             "tolerance (an argmax, a sort), or an ill-conditioned layer's top came from its float32 bottoms (the "
             "kernel on them gives it); the reference continued with onnxruntime's values")
    err = mismatch_error(res)
    if err is not None:
        raise err
    _say("verify: OK")


def _infer_input(args: argparse.Namespace) -> str:
    """The input of ``infer``: the positional IMAGE|DIR|LIST.txt or --input, exactly one."""
    if args.images is not None and args.input is not None:
        raise ProtonetError(f"two inputs given ({args.images} and --input {args.input}): give one")
    if args.images is None and args.input is None:
        raise ProtonetError("no input: give an image, a folder or a list of images, or --input x.npy|x.npz|random")
    return args.images if args.images is not None else args.input


def cmd_infer(args: argparse.Namespace) -> int:
    from . import answers
    from .api import check_input_shapes, load
    from .batchrun import is_batch_input, run_batch_cli
    from .images import IMAGE_SUFFIXES

    spec = _infer_input(args)
    if args.model.endswith(".onnx"):
        m = load(args.model)
    else:
        m = _model(args, args.model, optimize=True)
        _report_loaded(m.compiled)
        answers.keep_rois(m.compiled.graph)
    sess = m.session(args.provider)
    types = answers.model_output_types(m)
    reader = answers.Reader(types, answers.read_labels(args.labels) if args.labels else None, args.threshold,
                            args.top_k, args.nms, answers.two_stage_outputs(types, m.outputs, m.inputs))
    reader.check_labels(m.outputs)
    if is_batch_input(spec, args.out):
        if answers.im_info_input(m.inputs):
            raise ProtonetError(f"{spec}: folders and lists feed single-input nets; give a two-stage detector "
                                "one photo at a time")
        name, shape, meta, said = _photo_preprocess(args, m, spec)
        return run_batch_cli(args, spec, sess, name, shape, meta, reader, lambda: _say_preprocess(said, meta))
    photo = Path(spec).suffix.lower() in IMAGE_SUFFIXES
    answers.check_pictures(reader, m.outputs, photo, args.draw, args.segmentation)
    shape: tuple[int, ...] = ()
    meta = None
    geometry: answers.Geometry | None = None
    if photo:
        name, shape, meta, said = _photo_preprocess(args, m, spec)
        feeds, geometry, more = answers.photo_feeds(spec, m.inputs, name, shape, meta, reader.two_stage, args.model)
        said += more
        check_input_shapes(feeds, m.inputs, spec)
        _say_preprocess(said, meta)
    else:
        feeds = m.feeds(spec, seed=args.seed)
    t0 = time.perf_counter()
    outs = sess.run(feeds)
    dt = time.perf_counter() - t0
    _say(f"ran on {sess.provider.upper()} in {dt * 1e3:.1f} ms")
    if not photo:
        geometry = answers.array_geometry(feeds)
    first = next(iter(feeds.values()))
    for line in answers.report(outs, reader, 1 if photo or not first.ndim else first.shape[0], geometry):
        _say(line)
    inputs = [args.model, spec, getattr(args, "weights", None)]
    for line in answers.write_pictures(reader.read(outs, 0, geometry), spec if photo else None, geometry, args.draw,
                                       args.segmentation, inputs):
        _say(line)
    if args.out:
        save_npz(args.out, outs, inputs=inputs)
        _say(f"wrote {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchOptions, bench, net_targets, onnx_targets, parse_batches

    batches, dynamic = parse_batches(args.batch) if args.batch else (None, False)
    if not 0 < args.time < 1e6:
        raise ProtonetError(f"--time {args.time:g}: give a positive number of seconds")
    opts = BenchOptions(args.provider, args.threads, args.warmup, args.iterations, args.time, args.per_layer,
                        not args.no_cuda_graph, args.precision)
    if args.model.endswith(".onnx"):
        if args.weights:
            raise ProtonetError("-w: an ONNX model carries its weights; give -w with a prototxt")
        if dynamic:
            raise ProtonetError("--batch dynamic compiles a prototxt; an ONNX model's batch is as it was compiled")
        if args.calibrate:
            raise ProtonetError("--calibrate: give the prototxt (its preprocessing reads the calibration data)")
        targets = lambda: onnx_targets(args.model, batches, args.seed, args.precision)  # noqa: E731
    else:
        def at(batch: int | str | None) -> Any:
            return _model(argparse.Namespace(**dict(vars(args), batch=batch)), args.model, optimize=True)

        targets = lambda: net_targets(at, batches, dynamic, args.seed, args.precision, args.calibrate)  # noqa: E731
    res = bench(targets, args.model, opts, dynamic)
    _say(res.render_json() if args.format == "json" else res.render_table())
    return 0

def _photo_preprocess(args: argparse.Namespace, m: Any, spec: str) -> tuple[str, tuple[int, ...], Any, str]:
    """The input photos feed (name, shape), their preprocessing (the model's, the command line's
    options over it; a model with embedded preprocessing gets the decoded uint8 image) and the
    line that says it (to print once a photo is read, :func:`_say_preprocess`): a model that carries
    none gets the raw pixels, with a warning."""
    from . import answers
    from .frontend.preprocess import image_input

    src = args.model
    if len(m.inputs) - bool(answers.im_info_input(m.inputs)) != 1:
        raise ProtonetError(f"{spec}: an image can feed a single-input net (or a two-stage detector's) only")
    opts = _preprocess_options(args)
    carried = m.metadata.get("protonet.preprocess")
    name, shape, meta = image_input(list(m.inputs.items()), carried, src)
    if meta is not None and meta.embedded:
        if opts.given:
            raise ProtonetError(f"{src}: the model's preprocessing is in its graph; it takes no preprocessing options")
        said = f"preprocessing: {meta.describe()}"
    elif opts.given:
        meta = opts.apply(meta, name, shape)
        said = f"preprocessing: {meta.describe()} (from the command line" + (" over the model's)" if carried else ")")
    elif meta is not None:
        said = f"preprocessing: {meta.describe()} (carried by the model)"
    else:
        h, w = (shape[2], shape[3]) if len(shape) == 4 else ("H", "W")
        said = (f"protonet: warning: {src} carries no preprocessing: feeding the raw pixels (0-255, BGR, resized "
                f"to the net's {h}x{w}); give --mean, --scale, --resize, --crop, --channels (to compile or infer)")
    return name, shape, meta, said


def _say_preprocess(said: str, meta: Any) -> None:
    """The preprocessing line: on standard error when it is the raw-pixels warning."""
    print(said, file=sys.stderr if meta is None else sys.stdout, flush=True)


def cmd_summary(args: argparse.Namespace) -> int:
    from .analysis import render_compare, render_table

    results = []
    for net in args.nets:
        m = _model(args, net, optimize=args.optimized)
        if m.compiled.loaded.upgrades and args.format == "table":
            _say(f"{net}: upgraded from a legacy format: {'; '.join(m.compiled.loaded.upgrades)}")
        results.append((Path(net).stem, m.summary()))
    if args.format == "json":
        data = [s.to_json() for _, s in results]
        _say(json.dumps(data[0] if len(data) == 1 and not args.compare else data, indent=1))
    elif args.compare or len(results) > 1:
        _say(render_compare(results))
    else:
        _say(render_table(results[0][1]))
    return 0


def cmd_draw(args: argparse.Namespace) -> int:
    m = _model(args, args.net, optimize=args.optimized)
    if m.compiled.loaded.upgrades:
        _say(f"upgraded from a legacy format: {'; '.join(m.compiled.loaded.upgrades)}")
    m.draw(args.out)
    _say(f"wrote {args.out}: {len(m.graph.nodes)} layers")
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    from .frontend import upgrade_file

    same = Path(args.out).exists() and os.path.samefile(args.old, args.out)
    ran = upgrade_file(args.old, args.out, args.caffe_proto)
    _say(f"upgraded: {'; '.join(ran)}" if ran else "already in the current format: nothing to upgrade")
    _say(f"{args.out} left unchanged" if same and not ran else f"wrote {args.out}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from .layers import registry

    if args.format == "names":
        for name in sorted(registry.all_types()):
            _say(name)
        return 0
    from .layertable import render_markdown

    _say(render_markdown(include_plugins=True))
    return 0


def demo_net_path() -> Path:
    """The packaged nets/ (protonet.nets in an installed wheel), or the checkout's nets/."""
    from importlib import resources

    try:
        return Path(str(resources.files("protonet.nets").joinpath(DEMO_NET)))
    except ModuleNotFoundError:  # running from a source checkout
        return Path(__file__).resolve().parent.parent / "nets" / DEMO_NET


def cmd_demo(args: argparse.Namespace) -> int:
    net = args.net or str(demo_net_path())
    _say(f"== compile {net} -> {args.out}")
    cmd_compile(build_parser().parse_args(["compile", net, "-o", args.out]))
    _say(f"\n== verify {net} (numpy reference vs onnxruntime, every blob)")
    cmd_verify(build_parser().parse_args(["verify", net]))
    _say(f"\n== infer {args.out} on a generated input")
    return cmd_infer(build_parser().parse_args(["infer", args.out, "--input", "random"]))


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeOptions, serve

    opts = ServeOptions(host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                        metrics_port=args.metrics_port, max_batch=args.max_batch, instances=args.instances,
                        provider=args.provider, queue_delay_us=args.queue_delay_us)

    def ready(server: Any) -> None:
        for m, prov in zip(server.models, server.providers):
            sig = ", ".join(f"{t.name} {np.dtype(t.dtype).name}[{','.join(map(str, t.shape))}]" for t in m.inputs)
            how = f"batched up to {opts.max_batch}" if m.batched else "unbatched (fixed batch)"
            _say(f"serve: {m.name} ({m.source}; {sig}; {how}; {opts.instances} instance(s) on {prov})")
        _say(f"serve: ready: HTTP {opts.host}:{opts.http_port}, gRPC {opts.host}:{opts.grpc_port}, "
             f"metrics http://{opts.host}:{opts.metrics_port}/metrics; workspace {server.workdir}")

    stopped = serve(args.models, args.weights, opts, on_ready=ready)
    _say("serve: stopped" if stopped else "serve: Triton exited on its own")
    return 0 if stopped else EXIT_INTERNAL


def cmd_export_triton(args: argparse.Namespace) -> int:
    from .serve import model_name
    from .triton import RepoModel, TritonOptions, check_name, check_options, export_triton

    opts = TritonOptions(args.max_batch, args.instances, args.kind, args.tensorrt, args.queue_delay_us)
    check_options(opts)
    nets = [m for m in args.models if not m.lower().endswith(".onnx")]
    if args.weights and len(args.weights) != len(nets):
        raise ProtonetError(f"-w: {len(args.weights)} weight file(s) for {len(nets)} net definition(s); give one -w "
                            "per definition, in order (ONNX models take none), or none for filler weights")
    if args.name and len(args.models) > 1:
        raise ProtonetError("--name names one model; with several, each is named after its file")
    if args.batch not in (None, "dynamic") and args.max_batch > 0:
        raise ProtonetError(f"--batch {args.batch} fixes the batch, and Triton's batching needs a dynamic one (the "
                            "default here); give --max-batch 0 to serve a fixed batch unbatched")
    weights = dict(zip(nets, args.weights))
    models = []
    for path in args.models:
        name = check_name(args.name or model_name(path))
        if path in nets:
            sub = argparse.Namespace(**dict(vars(args), weights=weights.get(path), batch=args.batch or "dynamic"))
            model: Any = _compile_built(sub, path)[1]
        elif not is_regular_file(path):
            raise ProtonetError(f"{path}: no such file" if not Path(path).exists() else f"{path}: not a regular file")
        else:
            note_input(path)
            model = path
        models.append(RepoModel(name, path, model))
    for folder in export_triton(args.repo, models, opts):
        _say(f"wrote {folder / 'config.pbtxt'} and {folder / '1' / 'model.onnx'}")
    return 0


COMMANDS = {"export-triton": cmd_export_triton, "compile": cmd_compile, "verify": cmd_verify, "infer": cmd_infer, "bench": cmd_bench,
            "summary": cmd_summary, "draw": cmd_draw,
            "upgrade": cmd_upgrade, "layers": cmd_layers, "demo": cmd_demo, "serve": cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="protonet: %(message)s")
    # an output written to standard output: the messages go to standard error
    to_stderr = contextlib.redirect_stdout(sys.stderr) if writes_stdout(getattr(args, "out", None)) \
        else contextlib.nullcontext()
    try:
        with unwind_on_signals(), protect_inputs(), to_stderr:
            if args.plugin:
                from .plugins import load_plugins

                load_plugins(args.plugin)
            return COMMANDS[args.command](args)
    except ProtonetError as e:
        if args.debug:
            raise
        print(f"protonet: {e}" if not e.loc.prefix() else str(e), file=sys.stderr)
        return e.exit_code
    except MemoryError:
        if args.debug:
            raise
        print("protonet: out of memory: the net (or its batch) is too large for this machine; "
              "try a smaller --batch or input shape", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("protonet: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"protonet: terminated ({e})", file=sys.stderr)
        return 128 + e.signum
    except BrokenPipeError:  # output piped into a command that stopped reading (e.g. head)
        _drop_stdout()
        return 0
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG) or args.debug:
            raise
        _drop_stdout()  # standard output is full: say so once, without a traceback at exit
        print(f"protonet: cannot write to standard output: {e.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # an internal error: say so, briefly
        if args.debug:
            raise
        print(f"protonet: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


def _drop_stdout() -> None:
    """Point standard output at /dev/null, so that the buffered rest is not flushed at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
