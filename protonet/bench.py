"""``protonet bench``: latency percentiles and throughput per batch size, like ``caffe time`` and
trtexec, and Caffe's per-layer table from onnxruntime's profiler.

Method: warm-up runs first (not timed), then timed runs, each one a complete forward pass with
inputs and outputs bound on the session's device (:class:`protonet.runtime.BoundRun`: on a GPU no
host transfers are timed, as trtexec's GPU compute time). Latency percentiles are over the timed
runs (:func:`percentile`, numpy's default ``linear`` rule); throughput is images per second over
the timed runs together: ``batch * runs / sum(latencies)``.

Per layer: a separate session with onnxruntime's profiler on runs the same warm-up and timed
runs; each node event of the timed runs is mapped back to the Caffe layer whose lowering made the
node (:attr:`protonet.export.Built.layers`), through the names onnxruntime gives the nodes it
rewrites (``conv1_nchwc``: its own node name plus a suffix; an activation fused into its producer
is timed with it). Nodes onnxruntime adds itself (layout reorders) are listed as its own.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .errors import ProtonetError

log = logging.getLogger(__name__)

#: the percentile rules :func:`percentile` implements, by numpy's names (Hyndman and Fan's types 7 and 1)
PERCENTILE_METHODS = ("linear", "inverted_cdf")

#: at least this many timed runs when timing by duration
MIN_RUNS = 10


def percentile(values: Sequence[float], q: float, method: str = "linear") -> float:
    """The ``q``-th percentile (0..100) of ``values``.

    ``linear`` (numpy's default): sort, take position h = (n - 1) * q / 100 and interpolate between
    the values at floor(h) and floor(h) + 1. ``inverted_cdf`` (the nearest rank): the smallest
    value whose rank k (1-based) satisfies k / n >= q / 100."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not in [0, 100]")
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if method == "linear":
        h = (n - 1) * q / 100.0
        lo = math.floor(h)
        hi = min(lo + 1, n - 1)
        return xs[lo] + (h - lo) * (xs[hi] - xs[lo])
    if method == "inverted_cdf":
        k = math.ceil(n * q / 100.0 - 1e-12)  # the rank; the tolerance keeps n*q/100 exact at integers
        return xs[max(k, 1) - 1]
    raise ValueError(f"unknown percentile method '{method}' ({', '.join(PERCENTILE_METHODS)})")


@dataclass(frozen=True)
class Latency:
    """The timed runs at one batch size (seconds each)."""

    batch: int
    warmup: int
    runs: tuple[float, ...]

    def ms(self, q: float) -> float:
        return percentile(self.runs, q) * 1e3

    @property
    def throughput(self) -> float:
        """Images per second over all timed runs."""
        return self.batch * len(self.runs) / sum(self.runs)

    def to_json(self) -> dict[str, Any]:
        return {"batch": self.batch, "warmup": self.warmup, "iterations": len(self.runs),
                "latency_ms": {"p50": self.ms(50), "p90": self.ms(90), "p99": self.ms(99),
                               "mean": float(np.mean(self.runs)) * 1e3, "min": min(self.runs) * 1e3,
                               "max": max(self.runs) * 1e3},
                "throughput_ips": self.throughput}


@dataclass(frozen=True)
class LayerTime:
    """One row of the per-layer table: a Caffe layer (with the activations fused into it), or a
    node onnxruntime added (``type`` then says ``onnxruntime:<op>``)."""

    layer: str
    type: str
    time_ms: float  # mean per run
    share: float  # of the sum of all rows
    macs: int | None  # None: not known (an onnxruntime node, or a model without its net)

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s, counting a multiply-accumulate as two operations."""
        if not self.macs or self.time_ms <= 0:
            return None
        return 2 * self.macs / (self.time_ms * 1e-3) / 1e9

    def to_json(self) -> dict[str, Any]:
        return dict(asdict(self), gflops=self.gflops)


@dataclass
class BatchResult:
    latency: Latency
    layers: list[LayerTime] = field(default_factory=list)
    run_ms: float | None = None  # with --per-layer: mean whole-run time under the profiler
    outputs: dict[str, np.ndarray] | None = None  # with BenchOptions.keep_outputs


@dataclass
class BenchResult:
    model: str
    provider: str
    precision: str
    threads: int | None
    io_binding: bool
    cuda_graph: bool
    batches: list[BatchResult]
    dynamic: bool = False  # one model with a symbolic batch ran every size

    def to_json(self) -> dict[str, Any]:
        results = []
        for b in self.batches:
            row = b.latency.to_json()
            if b.layers:
                row["per_layer"] = {"run_ms": b.run_ms, "layers": [r.to_json() for r in b.layers]}
            results.append(row)
        return {"model": self.model, "provider": self.provider, "precision": self.precision,
                "threads": self.threads, "io_binding": self.io_binding, "cuda_graph": self.cuda_graph,
                "dynamic_batch": self.dynamic, "results": results}

    def render_json(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    def render_table(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        graph = ", CUDA graph" if self.cuda_graph else ""
        how = "one model with a dynamic batch" if self.dynamic else "compiled at each batch size"
        lines = [f"{self.model}: {self.provider.upper()}{threads}, {self.precision}{graph}, {how}, inputs and "
                 f"outputs bound on the device"]
        head = ("batch", "warm-up", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms", "images/s")
        rows = [head] + [(str(b.latency.batch), str(b.latency.warmup), str(len(b.latency.runs)),
                          *(f"{b.latency.ms(q):.3f}" for q in (50, 90, 99)),
                          f"{np.mean(b.latency.runs) * 1e3:.3f}", f"{b.latency.throughput:.1f}")
                         for b in self.batches]
        lines += _columns(rows, left=0)
        for b in self.batches:
            if b.layers:
                lines += ["", f"per layer at batch {b.latency.batch} (onnxruntime profiler, mean of "
                              f"{len(b.latency.runs)} runs; one run {b.run_ms:.3f} ms under the profiler):"]
                if self.provider != "cpu":
                    lines.append("(on a GPU these are onnxruntime's per-node times on the host: kernels run "
                                 "asynchronously, so a node's time is mostly its launch, not its kernel)")
                lines += render_layers(b.layers)
        return "\n".join(lines)


def render_layers(layers: list[LayerTime]) -> list[str]:
    """Caffe's per-layer table: layer, type, time, share, MACs, achieved GFLOP/s."""
    from .analysis import human

    rows = [("layer", "type", "time ms", "share", "MACs", "GFLOP/s")]
    for r in layers:
        g = r.gflops
        rows.append((r.layer, r.type, f"{r.time_ms:.3f}", f"{100 * r.share:.1f}%",
                     human(r.macs) if r.macs else "-", f"{g:.1f}" if g is not None else "-"))
    total = sum(r.time_ms for r in layers)
    macs = sum(r.macs or 0 for r in layers)
    rows.append(("total", "", f"{total:.3f}", "100.0%", human(macs) if macs else "-",
                 f"{2 * macs / (total * 1e-3) / 1e9:.1f}" if macs and total > 0 else "-"))
    return _columns(rows, left=2)


def _columns(rows: Sequence[tuple[str, ...]], left: int) -> list[str]:
    """Aligned columns: the first ``left`` left-aligned, the others right-aligned; a rule under the head."""
    from .errors import printable

    rows = [tuple(printable(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def time_runs(run: Callable[[], Any], warmup: int, iterations: int | None = None,
              seconds: float | None = None, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Call ``run`` ``warmup`` times untimed, then time each call: ``iterations`` calls, or calls
    until ``seconds`` have passed (at least :data:`MIN_RUNS`)."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    start = clock()
    while True:
        t0 = clock()
        run()
        t1 = clock()
        times.append(t1 - t0)
        if iterations is not None:
            if len(times) >= iterations:
                return times
        elif len(times) >= MIN_RUNS and t1 - start >= (seconds or 0.0):
            return times


# -- what runs at one batch size -------------------------------------------------------------------

@dataclass
class Target:
    """A model ready to run at one batch size: its ONNX (a Built, or a path), inputs, and, when it
    was compiled here, the graph (for MACs) and the ONNX node -> Caffe layer map."""

    model: Any
    batch: int
    feeds: dict[str, np.ndarray]
    graph: Any = None
    layer_of: dict[str, str] = field(default_factory=dict)
    mac_scale: int = 1  # a dynamic-batch model's graph is its batch-1 build: MACs times the batch


#: the sizes a dynamic-batch model runs at when ``--batch dynamic`` names none
DYNAMIC_SIZES = (1, 8, 32)

#: how many seeded random inputs calibrate an int8 build that bench makes without --calibrate
RANDOM_CALIBRATION = 8


def parse_batches(text: str) -> tuple[list[int], bool]:
    """``1,8,32`` -> ([1, 8, 32], False); ``dynamic`` or ``dynamic,1,8`` -> the sizes (default
    :data:`DYNAMIC_SIZES`) and True: one model with a symbolic batch, run at each size."""
    out = []
    parts = [p.strip() for p in text.split(",")]
    dynamic = "dynamic" in parts
    for part in parts:
        if part == "dynamic":
            continue
        if not part.isdigit() or int(part) <= 0 or int(part) >= 1 << 31:
            raise ProtonetError(f"--batch: '{part}' is not a positive integer (give sizes like 1,8,32, or "
                                "dynamic,1,8,32)")
        if int(part) in out:
            raise ProtonetError(f"--batch: {part} given twice")
        out.append(int(part))
    return (out or list(DYNAMIC_SIZES) if dynamic else out), dynamic


def reduce_model(model: Any, precision: str, samples: Callable[[], list[Any]],
                 regions: Sequence[tuple[Sequence[str], Sequence[str]]] = ()) -> Any:
    """``model`` (a Built or ModelProto) in ``precision`` through :mod:`protonet.quantize`: fp16
    (fp32 inputs and outputs kept), or int8 (static QDQ) calibrated on ``samples()``. bench times
    the build; it does not gate its accuracy (``compile --precision ... --calibrate`` does)."""
    from .quantize import PRECISIONS, to_fp16, to_int8

    if precision not in PRECISIONS:
        raise ProtonetError(f"--precision {precision}: bench runs {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return model
    proto = model.to_model() if hasattr(model, "to_model") else model
    return to_fp16(proto) if precision == "fp16" else to_int8(proto, samples(), fp32_regions=regions)


def _random_samples(feeds_at: Callable[[int], Mapping[str, np.ndarray]]) -> list[Any]:
    from .quantize import Sample

    log.warning("int8 calibrated on %d random inputs: bench measures its speed; compile --precision int8 "
                "--calibrate measures its accuracy", RANDOM_CALIBRATION)
    return [Sample(f"random[{i}]", dict(feeds_at(i))) for i in range(RANDOM_CALIBRATION)]


def onnx_targets(path: str, batches: list[int] | None, seed: int = 0, precision: str = "fp32") -> Iterator[Target]:
    """An ONNX file: one target per batch size. A model whose inputs have a fixed batch can run
    only that batch; a symbolic batch dimension takes every size asked (default 1)."""
    import onnx

    from .fileio import is_regular_file

    if not is_regular_file(path):
        raise ProtonetError(f"{path}: no such file" if not Path(path).exists() else f"{path}: not a regular file")
    try:
        model = onnx.load(path)
    except Exception as e:
        raise ProtonetError(f"{path}: not an ONNX model: {e}") from None
    inits = {t.name for t in model.graph.initializer}
    inputs = []
    for v in model.graph.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        inputs.append((v.name, t.elem_type, dims))
    fixed = {dims[0] for _, _, dims in inputs if dims and dims[0] is not None}
    symbolic = any(dims and dims[0] is None for _, _, dims in inputs)
    if fixed and not symbolic:
        own = fixed.pop() if len(fixed) == 1 else None
        if batches and any(b != own for b in batches):
            shapes = ", ".join(f"{n} {'x'.join(str(d) for d in dims)}" for n, _, dims in inputs)
            raise ProtonetError(f"{path} was compiled with a fixed batch of {own} (inputs {shapes}): it can run "
                                f"only batch {own}; bench the prototxt with --batch {','.join(map(str, batches))} "
                                "(compiled at each size) or --batch dynamic,... (one model with a symbolic batch), "
                                "or compile it with --batch dynamic")
        batches = [own or 1]

    def feeds_at(b: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        feeds = {}
        for name, elem, dims in inputs:
            if any(d is None for d in dims[1:]):
                raise ProtonetError(f"{path}: input '{name}' has a symbolic dimension other than the batch "
                                    f"({dims}); bench needs every other dimension fixed")
            shape = [b, *(int(d) for d in dims[1:] if d is not None)] if dims else []
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
            x = rng.standard_normal(shape) if dtype.kind == "f" else np.zeros(shape)
            feeds[name] = x.astype(dtype)
        return feeds

    sizes = batches or [1]
    feeds_at(sizes[0], seed)  # a bad input shape is refused before any conversion
    reduced = reduce_model(model, precision, lambda: _random_samples(lambda i: feeds_at(sizes[0], seed + 1 + i)))
    del model
    for b in sizes:
        yield Target(path if precision == "fp32" else reduced, b, feeds_at(b, seed))


def net_targets(compile_at: Callable[[int | str | None], Any], batches: list[int] | None, dynamic: bool = False,
                seed: int = 0, precision: str = "fp32", calibrate: str | None = None) -> Iterator[Target]:
    """A net definition: compiled (by ``compile_at``, giving a :class:`protonet.api.Model`) at each
    batch size (None: its own), or once with a symbolic batch (``dynamic``) run at each size;
    in ``precision`` (:func:`reduce_model`; int8 calibrated on ``calibrate``, else on random
    inputs). One compiled model is held at a time."""
    from .pipeline import random_inputs
    from .quantize import head_regions

    sizes: list[int | None] = [None] if dynamic or not batches else list(batches)
    for b in sizes:
        m = compile_at("dynamic" if dynamic else b)
        graph = m.compiled.graph

        def samples() -> list[Any]:
            if calibrate is None:
                return _random_samples(lambda i: random_inputs(graph, seed + 1 + i))
            from .frontend.preprocess import Preprocess
            from .quantize import load_samples

            meta = graph.metadata.get("protonet.preprocess")
            return load_samples(calibrate, {v.name: tuple(v.shape) for v in graph.inputs},
                                Preprocess.from_json(meta) if meta else None)

        layers = m.built.layers
        model = reduce_model(m.built, precision, samples, head_regions(graph))
        feeds = random_inputs(graph, seed)
        own = graph.inputs[0].shape[0] if graph.inputs and graph.inputs[0].shape else 1
        for size in (batches or list(DYNAMIC_SIZES)) if dynamic else [b or own]:
            if dynamic:  # the graph is the batch-1 build: the same images repeated, MACs scaled
                yield Target(model, size, {k: np.repeat(x, size, axis=0) for k, x in feeds.items()}, graph,
                             layers, size)
            else:
                yield Target(model, size, feeds, graph, layers)
        del m, model


# -- running ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchOptions:
    provider: str = "auto"
    threads: int | None = None
    warmup: int = 3
    iterations: int | None = None
    seconds: float = 2.0
    per_layer: bool = False
    cuda_graph: bool = True  # on a GPU provider, for fixed shapes
    precision: str = "fp32"
    trt_cache: str | None = None  # TensorRT's engine cache folder
    keep_outputs: bool = False  # keep the last timed run's outputs (BatchResult.outputs)


def bench_target(t: Target, opts: BenchOptions) -> tuple[BatchResult, Any]:
    """Time one target; returns its result and the session used."""
    from .runtime import BoundRun, GpuOptions, make_session

    gpu = GpuOptions(cuda_graph=opts.cuda_graph, fp16=opts.precision == "fp16", trt_cache=opts.trt_cache)
    sess = make_session(t.model, opts.provider, opts.threads, gpu=gpu)
    bound = BoundRun(sess, t.feeds)
    runs = time_runs(bound, opts.warmup, opts.iterations, opts.seconds)
    res = BatchResult(Latency(t.batch, opts.warmup, tuple(runs)), outputs=bound.outputs() if opts.keep_outputs else None)
    if opts.per_layer:
        res.layers, res.run_ms = profile_layers(t, opts, len(runs), sess.provider)
    return res, sess


def profile_layers(t: Target, opts: BenchOptions, runs: int, provider: str) -> tuple[list[LayerTime], float]:
    """Run ``t`` under onnxruntime's profiler (warm-up, then ``runs`` runs) and sum each Caffe
    layer's node time over the timed runs (:func:`layer_times`)."""
    from .runtime import BoundRun, GpuOptions, make_session

    with tempfile.TemporaryDirectory(prefix="protonet-profile-") as d:
        # the profiler times each node: a CUDA graph (one replay, no nodes) would hide them
        sess = make_session(t.model, provider, opts.threads, profile=str(Path(d) / "profile"),
                            gpu=GpuOptions(fp16=opts.precision == "fp16", trt_cache=opts.trt_cache))
        bound = BoundRun(sess, t.feeds)
        for _ in range(opts.warmup + runs):
            bound()
        path = sess.session.end_profiling()
        events = json.loads(Path(path).read_text())
    return layer_times(events, runs, t.layer_of, t.graph, t.mac_scale)


def layer_times(events: list[dict[str, Any]], runs: int, layer_of: Mapping[str, str],
                graph: Any = None, mac_scale: int = 1) -> tuple[list[LayerTime], float]:
    """Caffe's per-layer rows from onnxruntime's profile events (Chrome trace format).

    Only the last ``runs`` runs count (the ``model_run`` events; earlier ones are warm-up). A node
    event ``<node>_kernel_time`` belongs to the Caffe layer that ``layer_of`` names for ``<node>``
    (see :func:`layer_for`). With the graph, every layer that became ONNX nodes has a row, in the
    net's order: a layer whose nodes onnxruntime fused into a neighbour's (an Eltwise sum and its
    ReLU folded into the convolution before them) has time 0 and names the layer it is timed in.
    Nodes that onnxruntime added itself (layout reorders) come last, one row per operator. Returns
    the rows and the mean whole-run time in ms."""
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])
    if len(model_runs) < runs or runs <= 0:
        raise ProtonetError(f"the profile holds {len(model_runs)} runs, {runs} expected")
    timed = model_runs[-runs:]
    start = timed[0]["ts"]
    run_ms = sum(e["dur"] for e in timed) / runs / 1e3
    total: dict[str, float] = {}
    kinds: dict[str, str] = {}
    own: dict[str, float] = {}
    own_nodes: dict[str, set[str]] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or e["ts"] < start:
            continue
        node, op = name[: -len("_kernel_time")], e.get("args", {}).get("op_name", "?")
        layer = layer_for(node, layer_of)
        if layer is None:
            own[op] = own.get(op, 0.0) + e["dur"] / 1e3
            own_nodes.setdefault(op, set()).add(node)
            continue
        kinds.setdefault(layer, op)
        total[layer] = total.get(layer, 0.0) + e["dur"] / 1e3
    whole = (sum(total.values()) + sum(own.values())) or 1.0
    rows = []
    if graph is None:  # an ONNX file: its nodes by name, with their operators
        rows = [LayerTime(n, kinds[n], t / runs, t / whole, None) for n, t in total.items()]
    else:
        from .analysis import summarize

        stats = {s.name: s for s in summarize(graph).layers}
        for node in graph.nodes:
            s = stats[node.name]
            if node.name not in layer_of.values():  # an input: no ONNX node
                continue
            kind = s.type + "".join(f"+{p.type}" for p in node.post_ops)
            if node.name not in total:
                kind += f" (timed in {_timed_neighbour(graph, node, total)})"
            t = total.get(node.name, 0.0)
            rows.append(LayerTime(node.name, kind, t / runs, t / whole, s.macs * mac_scale))
    rows += [LayerTime("onnxruntime", f"{op} x{len(own_nodes[op])}", t / runs, t / whole, None)
             for op, t in sorted(own.items())]
    return rows, run_ms


def _timed_neighbour(graph: Any, node: Any, total: Mapping[str, float]) -> str:
    """The layer that onnxruntime fused ``node`` into: up the producers (the latest in the net's
    order first: the convolution computed last before a sum is the one that absorbs it), else
    down the consumers, the first one with profiled time."""
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    for up in (True, False):
        seen, todo = {node.name}, [node]
        while todo:
            n = todo.pop(0)
            near = ([v.producer for v in n.inputs if v.producer is not None] if up
                    else [u for v in n.outputs for u in v.users])
            for m in sorted(near, key=lambda m: order[m.name], reverse=up):
                if m.name in total:
                    return m.name
                if m.name not in seen:
                    seen.add(m.name)
                    todo.append(m)
    return "none: not run"


def layer_for(node: str, layer_of: Mapping[str, str]) -> str | None:
    """The Caffe layer of the ONNX node onnxruntime profiled as ``node``, or None for a node of
    onnxruntime's own. onnxruntime names a node it rewrites after the original: a suffix
    (``conv1_nchwc``, ``..._token_5``) or a ``fused `` prefix (``fused fc6_1``); so the longest
    prefix that ``layer_of`` knows (cut before a ``_``) decides. Without a map (an ONNX file not
    compiled here), the node's name less onnxruntime's suffix."""
    node = node.removeprefix("fused ")
    if not layer_of:
        return None if node.startswith(("Reorder", "Memcpy")) else node.removesuffix("_nchwc")
    if node in layer_of:
        return layer_of[node]
    cut = node.rfind("_")
    while cut > 0:
        if node[:cut] in layer_of:
            return layer_of[node[:cut]]
        cut = node.rfind("_", 0, cut)
    return None


def bench(targets: Callable[[], Any], model: str, opts: BenchOptions, dynamic: bool = False) -> BenchResult:
    """Bench each target in turn (``targets`` yields them one at a time, so that only one
    compiled model is held at once)."""
    results = []
    provider = "cpu"
    graph_on = False
    for t in targets():
        res, sess = bench_target(t, opts)
        results.append(res)
        provider, graph_on = sess.provider, sess.cuda_graph
        log.info("batch %d: p50 %.3f ms", t.batch, res.latency.ms(50))
    return BenchResult(model, provider, opts.precision, opts.threads, True, graph_on, results, dynamic)
