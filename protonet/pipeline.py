"""The library entry points that the CLI and the tests share: load -> build -> optimize ->
export -> run, and verify (reference vs onnxruntime, blob by blob)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .build import BuildOptions, WeightReport, build_graph
from .errors import Location, ProtonetError
from .export import export
from .frontend import LoadedNet, deploy_step, dialect_step, load_net
from .ir import Graph
from .reference import ReferenceInterpreter
from .runtime import make_session
from .tolerances import VERIFY_RTOL, relative_error

log = logging.getLogger(__name__)


@dataclass
class Compiled:
    graph: Graph
    loaded: LoadedNet
    report: WeightReport
    passes: list[Any] = field(default_factory=list)  # pass results, when optimized
    unoptimized: Graph | None = None  # the graph before the passes, when optimized


def load_weights(path: str | Path | None) -> Any:
    if path is None:
        return None
    from .frontend import load_caffemodel

    return load_caffemodel(path)


def compile_net(net: str | Path, weights: str | Path | None = None, options: BuildOptions | None = None,
                optimize: bool = False, passes: list[str] | None = None,
                outputs: list[str] | None = None, schema: Any = None,
                ignore_fields: tuple[str, ...] = ()) -> Compiled:
    """Parse, upgrade, filter, build (and optionally optimize) a net definition.

    ``outputs`` keeps only the named network outputs (the dead-code pass then removes what
    no longer feeds them). ``schema`` is a user's own caffe.proto (path or compiled schema) that
    the definition is read through; ``ignore_fields`` names fork fields (``MSG.FIELD``) that
    protonet may run without."""
    opts = options or BuildOptions()
    from .frontend import looks_like_caffemodel, net_from_caffemodel

    if looks_like_caffemodel(net):  # a caffemodel alone carries the whole definition
        loaded = deploy_step(net_from_caffemodel(net, input_shapes=opts.input_shapes, schema=schema),
                             opts.input_shapes)
        dialect_step(loaded, ignore_fields)
        if weights is None:
            weights = net
    else:
        loaded = load_net(net, input_shapes=opts.input_shapes, schema=schema, ignore_fields=ignore_fields)
    wfile = load_weights(weights)
    graph, report = build_graph(loaded, wfile, opts)
    graph.metadata.update(loaded.preprocess)
    if outputs:
        select_outputs(graph, outputs, str(net))
    unoptimized = None
    results: list[Any] = []
    if optimize:
        from .passes import run_passes

        unoptimized = graph.copy()
        results = run_passes(graph, passes)
    return Compiled(graph, loaded, report, results, unoptimized)


def select_outputs(graph: Graph, names: list[str], src: str) -> None:
    values = graph.values
    missing = [n for n in names if n not in values]
    if missing:
        raise ProtonetError(f"no blob named {', '.join(repr(m) for m in missing)} to use as --output", Location(src))
    graph.outputs = [values[n] for n in names]


def save_caffemodel(graph: Graph, path: str | Path) -> None:
    """Write the weights of an unoptimized graph as a ``.caffemodel`` (atomically): one layer per
    node with weights, its blobs in Caffe's order, so that Caffe, OpenCV and protonet load the same
    values. Give it the graph as built (``compile_net(..., optimize=False)``): the passes fold
    weights into other layers', which are then no longer Caffe's blobs."""
    from .fileio import write_atomic
    from .frontend import caffemodel_bytes

    data = caffemodel_bytes({n.name: list(n.weights.values()) for n in graph.nodes if n.weights}, graph.name)
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def random_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal inputs for every graph input (deterministic under ``seed``), except the
    image-info input of a Proposal layer (its third bottom), which gets (height, width, 1) of the
    net's first 4-D input: noise there would be a negative image size."""
    rng = np.random.default_rng(seed)
    feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
    image = next((v for v in graph.inputs if len(v.shape) == 4), None)
    for node in graph.nodes:
        info = node.inputs[2] if node.type == "Proposal" else None
        if info is not None and info in graph.inputs and image is not None and int(np.prod(info.shape)) >= 3:
            values = np.zeros(info.shape, np.float32).reshape(-1)
            values[:3] = (image.shape[2], image.shape[3], 1.0)
            feeds[info.name] = values.reshape(info.shape)
    return feeds


@dataclass
class BlobCheck:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    rel: float

    @property
    def ok(self) -> bool:
        return self.rel <= VERIFY_RTOL


@dataclass
class VerifyResult:
    blobs: list[BlobCheck]
    provider: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # onnxruntime's network outputs

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.blobs)

    @property
    def worst(self) -> BlobCheck:
        return max(self.blobs, key=lambda b: b.rel)


def verify_compiled(c: Compiled, feeds: Mapping[str, np.ndarray], provider: str = "auto") -> VerifyResult:
    """Verify a compiled net: every blob of the (optimized) graph, reference vs onnxruntime, and,
    when passes ran, the network outputs against the reference run of the unoptimized graph."""
    res = verify_graph(c.graph, feeds, provider)
    if c.unoptimized is not None:
        before = ReferenceInterpreter(c.unoptimized).run(feeds)
        for name, ref in before.items():
            if name in res.outputs:
                mx, rel = relative_error(res.outputs[name], ref)
                res.blobs.append(BlobCheck(f"{name} (vs unoptimized)", tuple(ref.shape), mx, rel))
    return res


def verify_graph(graph: Graph, feeds: Mapping[str, np.ndarray], provider: str = "auto") -> VerifyResult:
    """Run the float64 reference and onnxruntime (fp32) on the same input; compare every blob."""
    ref = ReferenceInterpreter(graph).run(feeds, keep_all=True)
    model = export(graph, expose_all=True, check=False)  # compile checks; this copy only adds outputs
    sess = make_session(model, provider)
    got = sess.run(feeds)
    checks = []
    for v in graph.iter_values():
        if v in graph.inputs or v.name not in got:
            continue
        mx, rel = relative_error(got[v.name], ref[v.name])
        checks.append(BlobCheck(v.name, v.shape, mx, rel))
    return VerifyResult(checks, sess.provider, {v.name: got[v.name] for v in graph.outputs})
