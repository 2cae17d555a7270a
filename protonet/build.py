"""NetParameter (current format, phase-filtered) -> IR graph.

In-place tops get fresh SSA names (the last version of a blob keeps the Caffe name, earlier
ones become ``blob#k``; a rewritten graph input keeps it unless its last version is an output). Each layer is parsed, shape-inferred and given its weights, either
from a ``.caffemodel`` (matched by layer name, shape-checked as Caffe does) or from its
fillers under a seed. Net outputs are the blobs no later layer consumes (Caffe's rule).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import LayerContext, Location, ProtonetError, UnsupportedError, WeightsError
from . import limits
from .fillers import fill, layer_rng, random_init
from .frontend import LoadedNet
from .frontend.python_layers import refusal as python_refusal
from .ir import Graph, Node, Value
from .layers import registry
from .layers.base import prod
from .layers.ssd import FACEBOXES, PriorCountError, faceboxes_candidate

log = logging.getLogger(__name__)


@dataclass
class WeightReport:
    """How the weights were obtained, layer by layer."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the net, not in the file (filled)
    ignored: list[str] = field(default_factory=list)  # in the file, not in the net
    filled: list[str] = field(default_factory=list)  # filled from fillers (no weights file)
    source: str = "fillers"

    def summary(self) -> str:
        if self.source == "fillers":
            return (f"weights: none given; {len(self.filled)} layer(s) filled from their weight_filler/"
                    f"bias_filler (deterministic, seeded)")
        parts = [f"weights: {len(self.matched)} layer(s) loaded from {self.source}"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing (filled): {', '.join(self.missing[:8])}"
                         + (" ..." if len(self.missing) > 8 else ""))
        if self.ignored:
            parts.append(f"{len(self.ignored)} in the file but not in the net (ignored): "
                         + ", ".join(self.ignored[:8]) + (" ..." if len(self.ignored) > 8 else ""))
        return "; ".join(parts)


@dataclass
class BuildOptions:
    batch: int | None = None
    #: --batch dynamic: the model's batch dimension is symbolic (see :mod:`protonet.dynamic`); the
    #: IR is built at ``batch`` (1 unless given)
    dynamic_batch: bool = False
    seed: int = 0
    #: "filler": Caffe's fillers; "random": well-scaled random values for every blob (tests)
    init: str = "filler"
    strict: bool = False
    #: input blob name -> shape, overriding the definition (data layers, missing shapes)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def check_types(loaded: LoadedNet) -> None:
    """Refuse Python layers (the known ones became native layers in the frontend); report every
    unsupported type at once."""
    unknown: list[str] = []
    for i, layer in enumerate(loaded.net.layer):
        if layer.type == "Python":
            raise UnsupportedError(python_refusal(layer), loaded.loc(layer, i))
        if registry.get(layer.type) is None:
            line = loaded.line_of(layer, i)
            where = f"layer '{layer.name}'" + (f", line {line}" if line else "")
            unknown.append(f"{layer.type or '(no type)'} ({where})")
    if unknown:
        raise UnsupportedError("unsupported layer types: " + ", ".join(unknown), Location(loaded.path))


def node_names(loaded: LoadedNet) -> list[str]:
    """One IR node name per layer. Caffe allows a layer name to repeat (HED repeats ``crop``): the
    first keeps it, later ones become ``name#k`` in the graph (and in ONNX), while errors and the
    weights file still use the Caffe name. A note says where it happened."""
    seen: dict[str, int] = {}
    taken = {layer.name for layer in loaded.net.layer}
    out: list[str] = []
    for i, layer in enumerate(loaded.net.layer):
        if layer.name not in seen:
            seen[layer.name] = i
            out.append(layer.name)
            continue
        k = 1
        while f"{layer.name}#{k}" in taken:
            k += 1
        name = f"{layer.name}#{k}"
        taken.add(name)
        out.append(name)
        first, line = loaded.line_of(loaded.net.layer[seen[layer.name]], seen[layer.name]), loaded.line_of(layer, i)
        loaded.notes.append(f"layer name '{layer.name}' repeats" + (f" (lines {first} and {line})" if first and line
                            else "") + f": the later layer is '{name}' in the graph; as in Caffe, weights "
                            f"named '{layer.name}' go to the last layer of that name")
    return out


#: forks whose layer of a shared type name computes something else, by the name ``--fork`` takes
LAYER_FORKS: dict[str, str] = {
    FACEBOXES: "sfzhang15/FaceBoxes' PriorBox (anchors of min_size 32 and 64 densified, 21 priors per cell for "
               "three min_sizes, min boxes one pixel narrower)",
}


def choose_forks(loaded: LoadedNet, forks: tuple[str, ...]) -> None:
    """The forks a user names (``--fork``) for the layers whose type name they share with
    BVLC/SSD: their rules apply to the whole net (``loaded.dialects``), with one note each."""
    for name in dict.fromkeys(forks):
        if name not in LAYER_FORKS:
            raise ProtonetError(f"--fork {name!r} is not a fork protonet knows; known: {', '.join(LAYER_FORKS)}",
                                Location(loaded.path))
        if name not in loaded.dialects:
            loaded.dialects.add(name)
            loaded.notes.append(f"--fork {name}: {LAYER_FORKS[name]}")


def build_graph(loaded: LoadedNet, weights: Any = None, options: BuildOptions | None = None,
                reuse: Graph | None = None) -> tuple[Graph, WeightReport]:
    """Build the IR for a loaded (upgraded, filtered) net. ``reuse``: the same net built before
    (at another batch size, unoptimized): a layer whose blobs have the same names and shapes there
    takes those arrays instead of reading or filling its own.

    The PriorBox rule: SSD's, unless a DetectionOutput's loc/conf bottoms hold predictions for
    another number of priors than SSD's PriorBox layers give, the net has a PriorBox with three
    min_sizes, and sfzhang15/FaceBoxes' PriorBox (same type name; :mod:`.layers.ssd`) gives
    exactly that number: then every PriorBox of the net follows that fork (``loaded.dialects``),
    and a note located at the first such PriorBox says so. Otherwise SSD's count error stands.
    ``--fork faceboxes`` (:func:`choose_forks`) chooses the fork's rule outright."""
    notes = list(loaded.notes)
    try:
        return _build_graph(loaded, weights, options, reuse)
    except PriorCountError as ssd_error:
        first = next((i for i, lp in enumerate(loaded.net.layer) if faceboxes_candidate(lp)), None)
        if FACEBOXES in loaded.dialects or first is None:
            raise
        loaded.notes[:] = notes
        loaded.dialects.add(FACEBOXES)
        try:
            g, report = _build_graph(loaded, weights, options, reuse)
        except ProtonetError:
            loaded.dialects.discard(FACEBOXES)
            loaded.notes[:] = notes
            raise ssd_error from None
        det = next(n for n in g.nodes if n.loc.layer == ssd_error.loc.layer and n.type == "DetectionOutput")
        lp = loaded.net.layer[first]
        loaded.notes.append(f"{loaded.loc(lp, first).prefix()}: read as sfzhang15/FaceBoxes' PriorBox (21 priors per "
                            f"cell for three min_sizes, the anchors of min_size 32 and 64 densified): DetectionOutput "
                            f"'{det.loc.layer}' gets predictions for {det.attrs.geometry.num_priors} priors, which "
                            f"that fork's rule gives and SSD's ({ssd_error.priors}) does not; every PriorBox of the "
                            f"net follows the fork")
        return g, report


def _build_graph(loaded: LoadedNet, weights: Any = None, options: BuildOptions | None = None,
                 reuse: Graph | None = None) -> tuple[Graph, WeightReport]:
    opts = options or BuildOptions()
    if not loaded.net.layer:
        raise ProtonetError("the file defines no layers", Location(loaded.path))
    check_types(loaded)
    names = node_names(loaded)
    last_of = {lp.name: i for i, lp in enumerate(loaded.net.layer)}  # Caffe copies weights by name: the last wins
    g = Graph(loaded.net.name or "net")
    report = WeightReport(source=weights.path if weights is not None else "fillers")
    current: dict[str, Value] = {}  # blob name -> its latest version
    versions: dict[str, list[Value]] = {}
    shared: dict[str, np.ndarray] = {}  # Caffe param { name } -> the one blob all its users share
    counter = 0
    lim = limits.current()
    total = 0  # values in all blobs so far (limits.max_total_elements)
    reused = {n.name: n for n in reuse.nodes} if reuse is not None else {}

    for index, lp in enumerate(loaded.net.layer):
        loc = loaded.loc(lp, index)
        ctx = LayerContext(loc, frozenset(loaded.dialects))
        layer = registry.get(lp.type)
        assert layer is not None  # check_types
        canonical = registry.canonical_name(lp.type)
        attrs = layer.parse(lp, ctx)
        lo, hi = layer.num_bottoms
        nb = len(lp.bottom)
        if nb < lo or (hi is not None and nb > hi):
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise ctx.error(f"takes {want} bottom(s), got {nb}")
        inputs = []
        for b in lp.bottom:
            if b not in current:
                why = loaded.excluded.get(b)
                raise ctx.error(f"bottom '{b}' is not produced by any earlier layer" + (f" ({why})" if why else ""))
            inputs.append(current[b])
        want_tops = layer.num_tops(attrs, lp)
        if want_tops is not None and len(lp.top) != want_tops:
            raise ctx.error(f"needs {want_tops} top(s), got {len(lp.top)}")
        in_shapes = [v.shape for v in inputs]
        attrs = layer.resolve(attrs, in_shapes, ctx)
        if layer.is_source:
            shapes = layer.infer(attrs, in_shapes, ctx)
            shapes = [_input_shape(top, s, opts, ctx, not g.inputs and i == 0)
                      for i, (top, s) in enumerate(zip(lp.top, shapes))]
        else:
            shapes = layer.infer(attrs, in_shapes, ctx)
        if len(shapes) != len(lp.top):
            raise ctx.error(f"produces {len(shapes)} output(s) but names {len(lp.top)} top(s)")
        for j, (top, s) in enumerate(zip(lp.top, shapes)):
            if any(d <= 0 for d in s):
                if layer.is_source:
                    raise ctx.error(f"shape {tuple(s)} has a non-positive dimension")
                raise ctx.error(f"output shape {tuple(s)} has a non-positive dimension "
                                f"(input shapes {', '.join(str(tuple(x)) for x in in_shapes)})")
            n = limits.check_blob(ctx, f"top '{top}'", s, lim)
            if not (j < len(lp.bottom) and lp.bottom[j] == top):  # in place: Caffe reuses the memory
                total += n
        limits.check_total(ctx, total, lim)
        _check_tops(lp, inputs, shapes, current, ctx)
        specs = layer.weights(attrs, in_shapes)
        node_weights = _reused(reused.get(names[index]), specs) if reuse is not None else None
        node_weights = node_weights if node_weights is not None else _weights_for(lp, specs, weights if last_of[lp.name] == index else None, opts, report, ctx,
                                    shared, lim)
        outputs = []
        for top, shape in zip(lp.top, shapes):
            counter += 1
            v = g.new_value(f"\x00{counter}", tuple(shape), blob=top)
            versions.setdefault(top, []).append(v)
            outputs.append(v)
        node = Node(names[index], canonical, attrs, inputs, outputs, node_weights, loc,
                    param_names=tuple(p.name for p in lp.param))
        g.add_node(node)
        for top, v in zip(lp.top, outputs):
            current[top] = v
        if layer.is_source:
            g.inputs.extend(outputs)

    if weights is not None:
        names = {lp.name for lp in loaded.net.layer}
        report.ignored = [n for n in weights.layers if n not in names] + weights.skipped
    unused = [n for n in opts.input_shapes if n and n not in versions]
    if unused:
        raise ProtonetError(f"--input-shape names {', '.join(repr(n) for n in unused)}, which is not an input "
                            f"of the net (inputs: {', '.join(v.blob for v in g.inputs)})", Location(loaded.path))
    _name_versions(g, versions)
    g.outputs = [v for v in current.values() if not v.users]
    if not g.outputs:
        # Caffe runs a net whose last blobs all go into Silence layers (the colorization net) or
        # other sinks (DeepLab's MatWrite): those blobs are its outputs (--output picks others)
        g.outputs = [v for v in current.values() if v.users and v not in g.inputs
                     and all(getattr(registry.get(n.type), "sink", False) for n in v.users)]
    if not g.outputs:
        raise ProtonetError("the net has no outputs", Location(loaded.path))
    g.lint()
    return g, report


def _reused(node: Node | None, specs: list) -> dict[str, np.ndarray] | None:
    """``node``'s arrays (a node of an earlier build) when they are the blobs ``specs`` describes."""
    if not specs:
        return {}
    if node is None:
        return None
    have = node.weights
    if [s.name for s in specs] != list(have) or any(tuple(have[s.name].shape) != tuple(s.shape) for s in specs):
        return None
    return dict(have)


def _name_versions(g: Graph, versions: dict[str, list[Value]]) -> None:
    """SSA names: the version of a blob that the caller sees under its Caffe name keeps it and
    the others become blob#k (k chosen so that no name a Caffe blob already has is taken).
    That is the last version (Caffe's ``blobs[name]`` after a forward pass), except for a graph
    input rewritten in place whose last version is read by later layers: the input keeps the
    name there, since it is what the caller feeds. An input rewritten in place and left as a
    net output gives the name to the output (what the caller reads) and becomes blob#0."""
    taken = set(versions)
    for blob, vs in versions.items():
        keep = vs[0] if vs[0] in g.inputs and vs[-1].users else vs[-1]
        k = 0
        for v in vs:
            if v is keep:
                continue
            while f"{blob}#{k}" in taken or f"{blob}#{k}" in g.values:
                k += 1
            g.rename(v, f"{blob}#{k}")
            k += 1
        g.rename(keep, blob)


def _check_tops(lp: Any, inputs: list[Value], shapes: list, current: dict[str, Value], ctx: LayerContext) -> None:
    """Caffe reuses a blob name only in place (top i == bottom i), and then keeps its shape."""
    if "" in lp.top:
        raise ctx.error(f"top {list(lp.top).index('')} has an empty name")
    if len(set(lp.top)) != len(lp.top):
        raise ctx.error(f"lists a top twice: {', '.join(lp.top)}")
    for j, top in enumerate(lp.top):
        in_place = j < len(lp.bottom) and lp.bottom[j] == top
        if top in current and not in_place:
            prev = current[top].producer
            where = f" (line {prev.loc.line})" if prev is not None and prev.loc.line else ""
            raise ctx.error(f"top '{top}' is already produced by layer '{prev.name if prev else '?'}'{where}; "
                            f"Caffe reuses a blob name only in place (top {j} == bottom {j})")
        if in_place and tuple(shapes[j]) != inputs[j].shape:
            raise ctx.error(f"in-place top '{top}' would change shape {inputs[j].shape} -> {tuple(shapes[j])}; "
                            f"give the top its own name")


def _input_shape(top: str, shape: tuple[int, ...], opts: BuildOptions, ctx: LayerContext,
                 first: bool) -> tuple[int, ...]:
    if top in opts.input_shapes:
        shape = tuple(opts.input_shapes[top])
    elif "" in opts.input_shapes and first:  # an unnamed --input-shape applies to the first input
        shape = tuple(opts.input_shapes[""])
    if opts.batch is not None and shape:
        shape = (int(opts.batch),) + tuple(shape[1:])
    if not shape:
        raise ctx.error(f"input '{top}' has no shape; give it in the definition or with --input-shape")
    return tuple(shape)


def _shared_from_file(lp: Any, i: int, data: np.ndarray, shared: dict[str, np.ndarray]) -> np.ndarray:
    """Blob ``i`` of layer ``lp`` as read from a caffemodel, joined to the blob it shares through
    ``param { name }``: every user holds one array. Caffe's loader writes each layer's copy into
    the one shared memory, so where the copies differ the later layer's values hold for all users
    (the shared array is overwritten in place)."""
    pname = lp.param[i].name if i < len(lp.param) else ""
    if not pname:
        return data
    first = shared.get(pname)
    if first is None or first.size != data.size:  # a size mismatch is reported by the caller's shape check
        if data.flags.writeable:
            shared[pname] = data
        return data
    if not np.array_equal(first.reshape(-1), data.reshape(-1)):
        if not first.flags.writeable:
            shared[pname] = data
            return data
        np.copyto(first, data.reshape(first.shape))
    return first.reshape(data.shape)


def _weights_for(lp: Any, specs: list, wfile: Any, opts: BuildOptions, report: WeightReport,
                 ctx: LayerContext, shared: dict[str, np.ndarray], lim: limits.Limits) -> dict[str, np.ndarray]:
    if not specs:
        return {}
    for spec in specs:
        limits.check_weight(ctx, f"blob '{spec.name}'", spec.shape, lim)
    out: dict[str, np.ndarray] = {}
    blobs = wfile.layers.get(lp.name) if wfile is not None else None
    if blobs is not None:
        if len(blobs) != len(specs):
            raise WeightsError(f"layer '{lp.name}' has {len(blobs)} blob(s), the net expects "
                               f"{len(specs)} ({', '.join(s.name for s in specs)})", Location(wfile.path))
        for i, (spec, blob) in enumerate(zip(specs, blobs)):
            if not blob.matches(spec.shape):
                raise WeightsError(f"layer '{lp.name}': blob {i} ({spec.name}) shape {tuple(blob.shape)} does not "
                                   f"match net {tuple(spec.shape)}", Location(wfile.path))
            out[spec.name] = _shared_from_file(lp, i, blob.data.reshape(spec.shape), shared)
        report.matched.append(lp.name)
        return out
    if wfile is not None:
        if opts.strict:
            raise WeightsError(f"layer '{lp.name}' has no weights in {wfile.path} (--strict)", ctx.loc)
        report.missing.append(lp.name)
    else:
        report.filled.append(lp.name)
    for i, spec in enumerate(specs):
        pname = lp.param[i].name if i < len(lp.param) else ""
        if pname and pname in shared:  # a blob shared with an earlier layer (Caffe param { name })
            blob = shared[pname]
            if blob.size != prod(spec.shape):
                raise ctx.error(f"param '{pname}' is shared with a blob of shape {blob.shape}, which does not "
                                f"fit {spec.name} {tuple(spec.shape)}")
            out[spec.name] = blob.reshape(spec.shape)
            continue
        rng = layer_rng(opts.seed, lp.name, i)
        if opts.init == "random":
            out[spec.name] = random_init(spec.shape, spec.positive, rng)
        else:
            out[spec.name] = fill(spec.filler, spec.shape, rng, ctx)
        if pname:
            shared[pname] = out[spec.name]
    return out
