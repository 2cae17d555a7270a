"""Accounting per layer and in total: output shapes, params (weights and biases apart),
multiply-accumulates and activation memory, including the peak live activation memory of one
forward pass (each value is freed after its last use; graph outputs live to the end).

Conventions: params count the blobs with role weight or bias (BatchNorm's running statistics
are state, not params); MACs are what each layer's ``cost`` facet says (convolutions and inner
products count their multiply-adds, grouped convolutions per group; element-wise layers, pooling
and LRN count 0); activation bytes are fp32 outputs of every layer, as protonet's SSA values (an
in-place Caffe layer gets its own value, so in-place memory sharing is not modelled).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .ir import Graph
from .layers import registry
from .layers.base import prod

BYTES_PER_VALUE = 4


@dataclass
class LayerStats:
    name: str
    type: str
    output_shapes: list[tuple[int, ...]]
    weights: int
    biases: int
    macs: int
    output_bytes: int
    fused: list[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        return self.weights + self.biases


@dataclass
class Totals:
    params: int
    weights: int
    biases: int
    macs: int
    activation_bytes: int
    peak_activation_bytes: int
    layers: int
    depth: int  # convolution, deconvolution and inner-product layers


@dataclass
class Summary:
    name: str
    layers: list[LayerStats]
    total: Totals

    def to_json(self) -> dict[str, Any]:
        rows = []
        for s in self.layers:
            d = asdict(s)
            d["params"] = s.params
            rows.append(d)
        return {"name": self.name, "layers": rows, "total": asdict(self.total)}


def summarize(graph: Graph) -> Summary:
    rows: list[LayerStats] = []
    shared: set[str] = set()  # Caffe param names already counted (a shared blob counts once)
    for node in graph.nodes:
        layer = registry.get(node.type)
        ins = [v.shape for v in node.inputs]
        outs = [v.shape for v in node.outputs]
        weights = biases = 0
        if layer is not None and not layer.is_source:
            for i, spec in enumerate(layer.weights(node.attrs, ins)):
                pname = node.param_names[i] if i < len(node.param_names) else ""
                if pname in shared:
                    continue
                if pname:
                    shared.add(pname)
                if spec.role == "weight":
                    weights += prod(spec.shape)
                elif spec.role == "bias":
                    biases += prod(spec.shape)
        macs = layer.cost(node.attrs, ins, outs) if layer is not None and not layer.is_source else 0
        in_blobs = {v.blob for v in node.inputs}
        # in-place outputs reuse their bottom's memory, as Caffe allocates blobs
        out_bytes = sum(prod(v.shape) for v in node.outputs if v.blob not in in_blobs) * BYTES_PER_VALUE
        rows.append(LayerStats(node.name, node.type, outs, weights, biases, int(macs), out_bytes,
                               [p.name for p in node.post_ops]))
    total = Totals(
        params=sum(r.params for r in rows),
        weights=sum(r.weights for r in rows),
        biases=sum(r.biases for r in rows),
        macs=sum(r.macs for r in rows),
        activation_bytes=sum(r.output_bytes for r in rows),
        peak_activation_bytes=peak_live_bytes(graph),
        layers=len([n for n in graph.nodes if not _is_source(n.type)]),
        depth=len([n for n in graph.nodes if _is_channel_producer(n.type)]),
    )
    return Summary(graph.name, rows, total)


def _is_source(t: str) -> bool:
    layer = registry.get(t)
    return layer is not None and layer.is_source


def _is_channel_producer(t: str) -> bool:
    """The layers a net's depth counts (convolutions and fully connected layers)."""
    layer = registry.get(t)
    return layer is not None and layer.channel_producer


def peak_live_bytes(graph: Graph) -> int:
    """Largest total size of the blobs alive at once when running the nodes in order.

    Versions of one Caffe blob (in-place layers) share one allocation; a blob is freed after
    the last node that reads or writes it; graph outputs stay alive to the end."""
    last: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        for v in list(n.inputs) + list(n.outputs):
            last[v.blob] = i
    keep = {v.blob for v in graph.outputs}
    live: dict[str, int] = {}
    peak = 0
    for i, n in enumerate(graph.nodes):
        for v in n.outputs:
            live[v.blob] = max(live.get(v.blob, 0), prod(v.shape) * BYTES_PER_VALUE)
        peak = max(peak, sum(live.values()))
        for v in list(n.inputs) + list(n.outputs):
            if last.get(v.blob) == i and v.blob not in keep:
                live.pop(v.blob, None)
    return peak


def human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def human_bytes(n: float) -> str:
    for div, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= div:
            return f"{n / div:.1f} {suffix}"
    return f"{n:.0f} B"


def render_table(s: Summary) -> str:
    head = ("layer", "type", "output", "weights", "biases", "MACs", "memory")
    rows = [head]
    for r in s.layers:
        shape = ", ".join("x".join(str(d) for d in sh) for sh in r.output_shapes)
        t = r.type + ("+" + "+".join(r.fused) if r.fused else "")
        rows.append((r.name, t, shape, f"{r.weights:,}" if r.weights else "-", f"{r.biases:,}" if r.biases else "-",
                     human(r.macs) if r.macs else "-", human_bytes(r.output_bytes) if r.output_bytes else "in place"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    t = s.total
    lines += ["", f"total: {t.params:,} params ({t.weights:,} weights + {t.biases:,} biases), "
                  f"{human(t.macs)} MACs ({t.macs:,}), activations {human_bytes(t.activation_bytes)}, "
                  f"peak live {human_bytes(t.peak_activation_bytes)}, {t.layers} layers, depth {t.depth}"]
    return "\n".join(lines)


def render_compare(summaries: list[tuple[str, Summary]]) -> str:
    head = ("network", "params", "MACs", "activations", "peak live", "layers", "depth")
    rows = [head]
    for label, s in summaries:
        t = s.total
        rows.append((label, human(t.params), human(t.macs), human_bytes(t.activation_bytes),
                     human_bytes(t.peak_activation_bytes), str(t.layers), str(t.depth)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
