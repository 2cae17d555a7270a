"""The library entry points that the CLI and the tests share: load -> build -> optimize ->
export -> run, and verify (reference vs onnxruntime, blob by blob)."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from .build import BuildOptions, WeightReport, build_graph, choose_forks
from .errors import Location, ProtonetError
from .export import Built, build, split_model
from .frontend import LoadedNet, deploy_step, dialect_step, load_net
from .ir import Graph
from .reference import ReferenceInterpreter
from .runtime import Session, make_session
from .tolerances import Comparison, compare

log = logging.getLogger(__name__)


@dataclass
class Compiled:
    graph: Graph
    loaded: LoadedNet
    report: WeightReport
    passes: list[Any] = field(default_factory=list)  # pass results, when optimized
    unoptimized: Graph | None = None  # the graph before the passes, when optimized
    #: how the graph was built (to build it again at another batch size: :func:`at_batch`)
    options: Any = None
    optimize: bool = False
    pass_names: list[str] | None = None
    output_names: list[str] | None = None
    src: str = ""
    #: --batch dynamic: the same net built at batch 2 (:mod:`protonet.dynamic`)
    probe: Graph | None = None


def load_weights(path: str | Path | None, only: Collection[str] | None = None, data: bytes | None = None) -> Any:
    """The weights file (None: fillers); ``only``: the layers whose values are read."""
    if path is None:
        return None
    from .frontend import load_caffemodel

    return load_caffemodel(path, only=only, data=data)


def compile_net(net: str | Path, weights: str | Path | None = None, options: BuildOptions | None = None,
                optimize: bool = False, passes: list[str] | None = None,
                outputs: list[str] | None = None, schema: Any = None,
                ignore_fields: tuple[str, ...] = (), forks: tuple[str, ...] = ()) -> Compiled:
    """Parse, upgrade, filter, build (and optionally optimize) a net definition.

    ``outputs`` keeps only the named network outputs (the dead-code pass then removes what
    no longer feeds them). ``schema`` is a user's own caffe.proto (path or compiled schema) that
    the definition is read through; ``ignore_fields`` names fork fields (``MSG.FIELD``) that
    protonet may run without; ``forks`` names forks whose layers of a shared type name the net
    runs (:data:`.build.LAYER_FORKS`)."""
    opts = options or BuildOptions()
    if passes is not None and not optimize:
        raise ProtonetError("--passes names passes to run, but optimization is off (--no-optimize, or no "
                            "--optimized): drop one of them")
    from .fileio import is_regular_file
    from .frontend import looks_like_caffemodel, net_from_caffemodel, read_net_bytes

    data = None if is_regular_file(net) else read_net_bytes(net)  # a pipe is read once, then sniffed
    wdata = None
    if looks_like_caffemodel(net, data):  # a caffemodel alone carries the whole definition
        loaded = deploy_step(net_from_caffemodel(net, input_shapes=opts.input_shapes, schema=schema, data=data),
                             opts.input_shapes)
        dialect_step(loaded, ignore_fields)
        if weights is None:
            weights, wdata = net, data
    else:
        loaded = load_net(net, input_shapes=opts.input_shapes, schema=schema, ignore_fields=ignore_fields,
                          data=data)
    choose_forks(loaded, tuple(forks))
    wfile = load_weights(weights, {lp.name for lp in loaded.net.layer}, wdata)
    if opts.dynamic_batch:
        from dataclasses import replace

        from .dynamic import PROBE_BATCHES

        opts = replace(opts, batch=opts.batch or PROBE_BATCHES[0])
    c = _build(loaded, wfile, opts, optimize, passes, outputs, str(net))
    if opts.dynamic_batch:
        c.probe = probe_graph(c)
    return c


def _build(loaded: LoadedNet, wfile: Any, opts: BuildOptions, optimize: bool, passes: list[str] | None,
           outputs: list[str] | None, src: str, reuse: Graph | None = None) -> Compiled:
    graph, report = build_graph(loaded, wfile, opts, reuse)
    graph.metadata.update(loaded.preprocess)
    if outputs:
        select_outputs(graph, outputs, src)
    unoptimized = None
    results: list[Any] = []
    if optimize:
        from .passes import run_passes

        unoptimized = graph.copy()
        results = run_passes(graph, passes)
    return Compiled(graph, loaded, report, results, unoptimized, opts, optimize, passes, outputs, src)


def at_batch(c: Compiled, batch: int) -> Compiled:
    """The net of ``c`` built again as it was (options, passes, outputs, the same weight arrays)
    with every input's batch dimension set to ``batch``."""
    from dataclasses import replace

    if c.options is None:
        raise ProtonetError("internal error: the compiled net does not record how it was built")
    if c.graph.inputs and all(v.shape and v.shape[0] == batch for v in c.graph.inputs):
        return c
    notes = list(c.loaded.notes)
    try:
        return _build(c.loaded, None, replace(c.options, batch=batch, dynamic_batch=False), c.optimize,
                      c.pass_names, c.output_names, c.src, reuse=c.unoptimized or c.graph)
    finally:
        c.loaded.notes[:] = notes


def probe_graph(c: Compiled) -> Graph:
    """--batch dynamic: the net of ``c`` built at the probe batch (:mod:`protonet.dynamic`); a layer
    that refuses that batch is reported as refusing --batch dynamic, at its location."""
    from .dynamic import PROBE_BATCHES, check_layers

    check_layers(c.graph)
    try:
        return at_batch(c, PROBE_BATCHES[1]).graph
    except ProtonetError as e:
        raise ProtonetError(f"--batch dynamic: the net must run at any batch size, but at batch "
                            f"{PROBE_BATCHES[1]}: {e.message}", e.loc) from None


def verify_batches(c: Compiled, model: Any, batches: Sequence[int] | None = None, provider: str = "auto",
                   src: str = "model", seed: int = 0, blobs: bool = True) -> "VerifyResult":
    """Verify a dynamic model at several batch sizes (default :data:`protonet.dynamic.VERIFY_BATCHES`):
    at each, the net built at that batch (:func:`at_batch`) gives the float64 reference and the
    inputs, and the one ``model`` runs on them (:func:`verify_model`). The checks of all batches
    are returned together, each blob's source naming its batch; ``blobs`` False compares the
    network outputs only (no debug export)."""
    from dataclasses import replace

    from .dynamic import VERIFY_BATCHES

    checks: list[BlobCheck] = []
    results = []
    sess = make_session(model, provider)  # one session serves every batch size
    for b in batches or VERIFY_BATCHES:
        cb = at_batch(c, b)
        results.append(verify_model(cb, sess, random_inputs(cb.graph, seed), provider, src, blobs=blobs))
        checks += [replace(x, source=f"{x.source}, batch {b}") for x in results[-1].blobs]
    return VerifyResult(checks, results[-1].provider, results[-1].outputs)


def select_outputs(graph: Graph, names: list[str], src: str) -> None:
    values = graph.values
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ProtonetError(f"--output {', '.join(repr(n) for n in twice)} given more than once", Location(src))
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
    from .frontend import write_caffemodel

    layers = {n.name: list(n.weights.values()) for n in graph.nodes if n.weights}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write_caffemodel(f, layers, graph.name)

    write_atomic(path, write)


def random_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input (deterministic under ``seed``): standard-normal noise,
    except where a layer reads the input as indices (ROIPooling's ROIs, Embed's and an unpooling
    mask's indices): there the layer's ``sample_input`` gives valid values; and the image-info
    input of a Proposal layer (its third bottom) gets (height, width, 1) of the net's first 4-D
    input: noise there would be a negative image size."""
    from .layers import registry

    rng = np.random.default_rng(seed)
    feeds = {}
    for v in graph.inputs:
        x = None
        for user in v.users:
            layer = registry.get(user.type)
            for i, b in enumerate(user.inputs):
                if x is None and b is v and layer is not None:
                    x = layer.sample_input(user.attrs, i, [u.shape for u in user.inputs], rng)
        feeds[v.name] = rng.standard_normal(v.shape).astype(np.float32) if x is None else x
    image = next((v for v in graph.inputs if len(v.shape) == 4), None)
    for node in graph.nodes:
        info = node.inputs[2] if node.type == "Proposal" else None
        if info is not None and info in graph.inputs and image is not None and int(np.prod(info.shape)) >= 3:
            values = np.zeros(info.shape, np.float32).reshape(-1)
            values[:3] = (image.shape[2], image.shape[3], 1.0)
            feeds[info.name] = values.reshape(info.shape)
    return feeds


@dataclass(frozen=True)
class BlobCheck:
    """One blob compared (``protonet.tolerances.compare``); ``source`` says which model ran it;
    ``followed``: how many of its elements are a choice at a near-tie (an argmax between inputs
    equal within tolerance) where the reference took onnxruntime's choice (see :func:`verify_graph`)."""

    name: str
    result: Comparison
    source: str = "model"  # "model" (the artifact), "debug" (intermediate blobs), "unoptimized"
    followed: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return self.result.shape

    @property
    def max_abs(self) -> float:
        return self.result.max_abs

    @property
    def ratio(self) -> float:
        return self.result.ratio

    @property
    def ok(self) -> bool:
        return self.result.ok


@dataclass
class VerifyResult:
    blobs: list[BlobCheck]
    provider: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # the artifact's network outputs
    reference: dict[str, np.ndarray] = field(default_factory=dict)  # the reference's network outputs

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.blobs)

    @property
    def worst(self) -> BlobCheck:
        return max(self.blobs, key=lambda b: b.ratio)

    @property
    def followed(self) -> int:
        """Elements where the reference followed onnxruntime's choice at a near-tie."""
        return sum(b.followed for b in self.blobs)


def build_model(c: Compiled, opset: int | None = None) -> Built:
    """The ONNX model that ``compile`` writes: the checked export at the default opset (its
    weights still the graph's arrays, see :class:`protonet.export.Built`), or, with ``opset``,
    that model converted and proven against it (``protonet.opset.convert_opset``). A net compiled
    with --batch dynamic gives the model with a symbolic batch (:func:`protonet.dynamic.build_dynamic`)."""
    if c.probe is not None:
        from .dynamic import build_dynamic

        built = build_dynamic(c.graph, c.probe)
    else:
        built = build(c.graph)
    built.check()
    if opset is not None:
        from .opset import convert_opset

        built = split_model(convert_opset(built.to_model(), opset))
    return built


def verify_model(c: Compiled, model: Any, feeds: Mapping[str, np.ndarray], provider: str = "auto",
                 src: str = "model", blobs: bool = True) -> VerifyResult:
    """Verify an artifact: ``model`` (a Built, a ModelProto, its bytes, a path: what compile writes; or its Session)
    runs in onnxruntime and its network outputs are compared with the float64 reference; the
    intermediate blobs come from a debug export of the same graph (:func:`verify_graph`; not with
    ``blobs`` False). When passes ran, the outputs are also compared with the reference run of
    the unoptimized graph, which follows the same near-tie choices where they are ties there too.
    A model with a symbolic (dynamic) dimension runs at the graph's."""
    sess = model if isinstance(model, Session) else make_session(model, provider)
    _check_interface(c.graph, sess, src)
    got = sess.run(feeds)
    provider_used = sess.provider
    if sess is not model:
        del sess  # its weights are not held while the blobs are compared (each debug export has its own)
    choices: dict[str, tuple[list[np.ndarray], list[np.ndarray] | None]] = {}
    outs = {v.name for v in c.graph.outputs}
    if blobs:
        res = verify_graph(c.graph, feeds, provider, choices=choices)
        ref = res.reference
    else:  # no debug export: no near-tie choices of onnxruntime to follow
        ref = ReferenceInterpreter(c.graph).run(feeds)
        res = VerifyResult([], provider_used, reference=ref)
    checks = [BlobCheck(v.name, compare(got[v.name], ref[v.name])) for v in c.graph.outputs]

    def model_choice(node: Any) -> list[np.ndarray] | None:
        """The model's own tops where the node gives network outputs (the compiled model's
        float32 may break a near-tie at an output otherwise than the debug export did), else
        the debug export's that were followed."""
        if node.outputs and all(v.name in got for v in node.outputs):
            return [got[v.name] for v in node.outputs]
        return choices.get(node.name, (None, None))[0]

    if blobs and not all(b.ok for b in checks):  # the outputs again, following the model's near-ties
        follow = _Follower(model_choice, lambda node: choices.get(node.name, (None, None))[1])
        ref = ReferenceInterpreter(c.graph).run(feeds, on_node=follow)
        checks = [BlobCheck(v.name, compare(got[v.name], ref[v.name]), "model", follow.followed.get(v.name, 0))
                  for v in c.graph.outputs]
    res.blobs = checks + [b for b in res.blobs if b.name not in outs]
    res.outputs = {v.name: got[v.name] for v in c.graph.outputs}
    if c.unoptimized is not None:
        follow = _Follower(model_choice, lambda node: choices.get(node.name, (None, None))[1])
        before = ReferenceInterpreter(c.unoptimized).run(feeds, on_node=follow)
        for name, r in before.items():
            if name in res.outputs:
                res.blobs.append(BlobCheck(name, compare(res.outputs[name], r), "unoptimized",
                                           follow.followed.get(name, 0)))
    return res


def verify_compiled(c: Compiled, feeds: Mapping[str, np.ndarray], provider: str = "auto",
                    opset: int | None = None) -> VerifyResult:
    """Build the model that compile writes (:func:`build_model`) and verify it (:func:`verify_model`)."""
    return verify_model(c, build_model(c, opset), feeds, provider)


def _check_interface(graph: Graph, sess: Any, src: str) -> None:
    """The model's inputs and outputs are the net's, by name and shape (else it was compiled from
    another net or with other options); a symbolic dimension of the model matches any size."""
    io = sess.session
    for kind, want, have in (("inputs", graph.inputs, io.get_inputs()), ("outputs", graph.outputs, io.get_outputs())):
        w = [(v.name, tuple(v.shape)) for v in want]
        h = [(x.name, tuple(d if isinstance(d, int) else -1 for d in x.shape)) for x in have]
        if len(w) != len(h) or any(wn != hn or len(ws) != len(hs) or any(b not in (a, -1) for a, b in zip(ws, hs))
                                   for (wn, ws), (hn, hs) in zip(w, h)):
            raise ProtonetError(f"the model's {kind} {_io(h)} are not the net's {_io(w)} (compiled from "
                                "another net, or with other --batch/--input-shape/--output options?)",
                                Location(src))


def _io(items: list[tuple[str, tuple[int, ...]]]) -> str:
    return ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in items)


#: the most bytes of onnxruntime's blobs that verify holds at once
CHUNK_BYTES = 256 << 20


class _Follower:
    """The reference's ``on_node`` hook that follows onnxruntime's choices where they are ties:
    ``other(node)`` gives onnxruntime's tops for the node (or None) and ``other_inputs(node)`` its
    bottoms (or None). Where onnxruntime's tops differ from the reference's:

    - the layer's ``follow_choice`` decides whether the difference is a near-tie at an argmax
      (MAX pooling's mask), judged on the reference's own bottoms;
    - for a layer that ``decides`` (sorts, NMS, thresholds: Proposal, DetectionOutput), the
      layer's kernel runs on onnxruntime's bottoms: when it gives onnxruntime's tops (within the
      tolerance), the lowering made the kernel's decisions on the same values, and the
      difference comes from the bottoms, which verify compares on their own;
    - for an ``ill_conditioned`` layer (SegNet's BN with batch statistics) whose tops differ
      beyond the tolerance, the same check: the layer computed its function of the same values,
      and the difference is its bottoms' rounding, which the layer amplifies;

    then the reference continues with onnxruntime's tops; otherwise it keeps its own and the
    comparison reports the difference. ``followed`` counts the elements taken, per blob;
    ``taken`` keeps, per node, onnxruntime's tops and bottoms that were followed."""

    def __init__(self, other: Any, other_inputs: Any = None):
        self.other, self.other_inputs = other, other_inputs
        self.followed: dict[str, int] = {}
        self.taken: dict[str, tuple[list[np.ndarray], list[np.ndarray] | None]] = {}

    def __call__(self, node: Any, xs: Any, ys: list[np.ndarray]) -> list[np.ndarray]:
        from .layers import registry
        from .tolerances import within

        layer = registry.get(node.type)
        alt = self.other(node)
        if layer is None or node.post_ops or alt is None or any(a is None for a in alt):
            return ys
        if all(np.array_equal(a, y) for a, y in zip(alt, ys)):
            return ys
        new, bottoms = layer.follow_choice(node.attrs, xs, ys, alt, within), None
        replays = layer.decides or (layer.ill_conditioned(node.attrs)
                                    and not all(within(a, y, y).all() for a, y in zip(alt, ys)))
        if new is None and replays and self.other_inputs is not None:
            bottoms = self.other_inputs(node)
            new = self._replay(layer, node, alt, bottoms)
        if new is None:
            return ys
        for v, y, n in zip(node.outputs, ys, new):
            count = int(np.count_nonzero(np.asarray(n) != y))
            if count:
                self.followed[v.name] = count
        self.taken[node.name] = ([np.asarray(a) for a in alt], bottoms)
        log.info("layer '%s' (%s): the reference follows onnxruntime's choice at %d element(s)", node.name,
                 node.type, sum(self.followed.get(v.name, 0) for v in node.outputs))
        return [np.asarray(n, dtype=y.dtype) for n, y in zip(new, ys)]

    @staticmethod
    def _replay(layer: Any, node: Any, alt: list[np.ndarray], bottoms: list[np.ndarray] | None) -> list | None:
        """onnxruntime's tops when the kernel, run on onnxruntime's bottoms, gives them."""
        from .tolerances import within

        if bottoms is None or any(b is None for b in bottoms):
            return None
        weights = {k: np.asarray(v, dtype=np.float64) for k, v in node.weights.items()}
        again = layer.kernel(node.attrs, [np.asarray(b, dtype=np.float64) for b in bottoms], weights)
        if all(within(a, r, r).all() for a, r in zip(alt, again)):
            return list(alt)
        return None


class _OnnxBlobs:
    """onnxruntime's value of every blob of the graph, fetched in graph order a chunk at a time
    and each given out once. A chunk holds at most ``budget`` bytes of blobs (unless one blob is
    bigger); each chunk runs its own debug export, the graph cut after the chunk's last layer
    with the chunk's blobs as outputs (:func:`protonet.passes.dead_code`), so that onnxruntime
    holds one chunk of blobs (an export with every blob an output keeps them all to the end of
    the run) and verify's memory stays near that of the net's live blobs."""

    def __init__(self, graph: Graph, feeds: Mapping[str, np.ndarray], provider: str, budget: int | None = None):
        self.graph, self.feeds, self.provider_asked = graph, feeds, provider
        budget = CHUNK_BYTES if budget is None else budget
        self.chunks: list[list[str]] = [[]]
        size = 0
        inputs = {v.name for v in graph.inputs}
        for node in graph.nodes:
            for v in node.outputs:
                if v.name in inputs:
                    continue
                nbytes = 4 * int(np.prod(v.shape, dtype=np.int64))
                if self.chunks[-1] and size + nbytes > budget:
                    self.chunks.append([])
                    size = 0
                self.chunks[-1].append(v.name)
                size += nbytes
        self.where = {name: k for k, names in enumerate(self.chunks) for name in names}
        self.loaded: dict[str, np.ndarray] = {}
        self.current = -1
        self.provider = provider

    def _run(self, names: list[str]) -> dict[str, np.ndarray]:
        from .passes.dead_code import dead_code

        sub = self.graph.copy()
        values = sub.values
        sub.outputs = [values[n] for n in names]
        dead_code(sub)
        # onnxruntime's graph rewrites (fusing a Conv with the BatchNormalization after it when
        # the Conv's top is not an output) would compute a blob differently in each cut, and a
        # later cut could break a near-tie otherwise than the one that was followed: off
        sess = make_session(build(sub), self.provider_asked, optimize=False)
        self.provider = sess.provider
        return sess.run({v.name: self.feeds[v.name] for v in sub.inputs})

    def take(self, name: str, keep: bool = False) -> np.ndarray | None:
        """The blob ``name`` (None when it is not one of the graph's); ``keep``: hold it for
        another call while its chunk is the one loaded."""
        k = self.where.get(name)
        if k is None:
            return None
        if k != self.current:
            self.loaded = {}  # the previous chunk's remaining blobs were not asked for
            self.loaded = self._run(self.chunks[k])
            self.current = k
        return self.loaded.get(name) if keep else self.loaded.pop(name, None)


def verify_graph(graph: Graph, feeds: Mapping[str, np.ndarray], provider: str = "auto",
                 choices: dict[str, tuple[list[np.ndarray], list[np.ndarray] | None]] | None = None
                 ) -> VerifyResult:
    """Every blob of the graph but its inputs, float64 reference vs onnxruntime (fp32) running
    debug exports (the graph with its blobs as outputs). This is not the model compile writes:
    :func:`verify_model` checks the network outputs on that one.

    The comparison streams: the reference runs node by node, each top is compared as it is
    computed with onnxruntime's (fetched a chunk at a time, :class:`_OnnxBlobs`), and blobs are
    freed after their last use, so a big net verifies in the memory of its live blobs.

    Near-ties: where a layer's top is a discrete choice (MAX pooling's argmax mask, a Proposal's
    sort and NMS) and onnxruntime's float32 arithmetic chose otherwise on values equal within
    the tolerance, the reference continues with onnxruntime's choice (:class:`_Follower` states
    the rules, and refuses anything else), so that the blobs after it are compared on the
    same decision; the blob's row counts the elements followed. An ill-conditioned layer (SegNet's
    BN in LEARN mode) whose top differs beyond the tolerance is checked the same way, on
    onnxruntime's bottoms. ``choices`` (when given)
    receives onnxruntime's tops and bottoms that were followed, by node name. The result's ``reference`` holds the
    reference's network outputs, ``outputs`` the debug export's."""
    from .layers import registry

    blobs = _OnnxBlobs(graph, feeds, provider)
    checks: list[BlobCheck] = []
    got_outputs: dict[str, np.ndarray] = {}
    outs = {v.name for v in graph.outputs}
    pending: dict[str, list[np.ndarray | None]] = {}
    # onnxruntime's bottoms of the layers that decide or are ill-conditioned, held until their
    # last such layer ran
    replaying = [n for n in graph.nodes if (layer := registry.get(n.type)) is not None
                 and (layer.decides or layer.ill_conditioned(n.attrs))]
    waiting = Counter(v.name for n in replaying for v in n.inputs)
    wanted, replaying_ids = set(waiting), {id(n) for n in replaying}
    held: dict[str, np.ndarray] = {k: np.asarray(feeds[k]) for k in wanted if k in feeds}

    def other(node: Any) -> list[np.ndarray | None]:
        alt = [blobs.take(v.name) for v in node.outputs]
        held.update({v.name: a for v, a in zip(node.outputs, alt) if v.name in wanted and a is not None})
        pending[node.name] = alt
        return alt

    def other_inputs(node: Any) -> list[np.ndarray | None]:
        return [held.get(v.name) for v in node.inputs]

    follow = _Follower(other, other_inputs)

    def on_node(node: Any, xs: Any, ys: list[np.ndarray]) -> list[np.ndarray]:
        ys = follow(node, xs, ys)
        if id(node) in replaying_ids:
            for v in node.inputs:
                waiting[v.name] -= 1
                if not waiting[v.name]:
                    held.pop(v.name, None)
        for v, y, a in zip(node.outputs, ys, pending.pop(node.name)):
            if a is None:
                continue
            checks.append(BlobCheck(v.name, compare(a, y), "debug", follow.followed.get(v.name, 0)))
            if v.name in outs:
                got_outputs[v.name] = a
        return ys

    reference = ReferenceInterpreter(graph).run(feeds, on_node=on_node)
    if choices is not None:
        choices.update(follow.taken)
    return VerifyResult(checks, blobs.provider, got_outputs, reference)
