"""Pictures of a net: SVG, PNG or one self-contained HTML page (pan, zoom, per-layer details).

The look follows Caffe's ``python/caffe/draw.py``: layers are boxes filled by type (Convolution
and Deconvolution ``#FF5050``, Pooling ``#FF9900``, InnerProduct ``#CC33FF``, others ``#6495ED``),
in-place neuron layers are green (``#90EE90``) and the net's output blobs grey octagons
(``#E0E0E0``). Each box shows the layer's name, type, output shape, params and MACs
(:func:`protonet.analysis.summarize`).

In-place layers (one bottom, one top, the same blob: ReLU, BatchNorm, Scale, Dropout in place) are
folded onto the box of the layer that produced their bottom, as a green band under it, when that
version of the blob feeds nothing else; otherwise (the blob is also read before the in-place layer
runs) the in-place layer gets its own green box. Activations fused by the optimizer
(``--optimized``) are shown the same way, as bands.

The layout is protonet's own layered (Sugiyama-style) drawing, top to bottom: ranks by longest
path, long edges split by dummy points, crossings reduced by barycentre sweeps, and x positions by
least squares under minimum separation (pool-adjacent-violators), so that chains stand straight.
It needs no Graphviz: the SVG and HTML are written as text and the PNG is drawn with Pillow.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from xml.sax.saxutils import escape, quoteattr

from .analysis import Summary, human, human_bytes, summarize
from .errors import Location, ProtonetError, printable
from .fileio import write_atomic
from .ir import Graph, Node

FORMATS = (".svg", ".png", ".html", ".htm")

#: fill colours by layer type (Caffe's draw.py); other layers get DEFAULT_COLOR
TYPE_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
               "InnerProduct": "#CC33FF"}
DEFAULT_COLOR = "#6495ED"
NEURON_COLOR = "#90EE90"
BLOB_COLOR = "#E0E0E0"

FONT_SIZE = 12.0
LINE_HEIGHT = 16.0
PAD_X, PAD_Y = 10.0, 6.0
RANK_GAP = 36.0  # vertical space between ranks, where the edges run
NODE_GAP = 24.0  # horizontal space between neighbours in a rank
DUMMY_WIDTH = 8.0
MARGIN = 20.0
MONO_CHAR = 0.6 * FONT_SIZE  # advance of a monospace character (SVG/HTML text width estimate)


@dataclass
class Band:
    """One layer drawn in a box: its text lines (the first is the name)."""

    layer: str
    lines: list[str]
    color: str


@dataclass
class Box:
    """One drawn node: a layer with the in-place layers folded onto it, or an output blob."""

    id: str
    bands: list[Band]
    blob: bool = False
    width: float = 0.0
    height: float = 0.0
    x: float = 0.0  # centre
    y: float = 0.0  # top

    @property
    def layers(self) -> list[str]:
        return [b.layer for b in self.bands if not self.blob]


@dataclass
class Edge:
    src: int
    dst: int
    blob: str
    shape: str
    points: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Picture:
    """A laid-out drawing: boxes, edges, the canvas size, and per-layer details (for HTML)."""

    name: str
    boxes: list[Box]
    edges: list[Edge]
    width: float
    height: float
    details: dict[str, dict[str, Any]]


def _in_place(node: Node) -> bool:
    return (len(node.inputs) == 1 and len(node.outputs) == 1 and node.inputs[0].producer is not None
            and node.outputs[0].blob == node.inputs[0].blob)


def _shape(shape: Sequence[int], names: Sequence[str | None] = ()) -> str:
    """``1x3x224x224``; a dimension with a symbolic name (``--batch dynamic``) shows the name."""
    return "x".join(str(names[i]) if i < len(names) and names[i] else str(d) for i, d in enumerate(shape))


def _layer_lines(node: Node, stats: Any, shapes: Callable[[Any], str]) -> list[str]:
    kind = node.type + "".join(f"+{p.type}" for p in node.post_ops)
    lines = [printable(node.name), printable(kind)]
    if stats is not None:
        lines.append(", ".join(shapes(v) for v in node.outputs))
        cost = []
        if stats.params:
            cost.append(f"{human(stats.params)} params")
        if stats.macs:
            cost.append(f"{human(stats.macs)} MACs")
        if cost:
            lines.append(" | ".join(cost))
    return lines


def _details(node: Node, stats: Any, shapes: Callable[[Any], str]) -> dict[str, Any]:
    attrs = {}
    if dataclasses.is_dataclass(node.attrs):
        for f in dataclasses.fields(node.attrs):
            text = str(getattr(node.attrs, f.name))
            attrs[f.name] = text if len(text) <= 120 else text[:117] + "..."
    d: dict[str, Any] = {
        "name": node.name, "type": node.type, "line": node.loc.line,
        "inputs": [[v.blob or v.name, shapes(v)] for v in node.inputs],
        "outputs": [[v.blob or v.name, shapes(v)] for v in node.outputs],
        "fused": [f"{p.name} ({p.type})" for p in node.post_ops], "attrs": attrs,
    }
    if stats is not None:
        d.update(weights=stats.weights, biases=stats.biases, params=stats.params, macs=stats.macs,
                 memory=human_bytes(stats.output_bytes) if stats.output_bytes else "in place")
    return d


def picture(graph: Graph, summary: Summary | None = None,
            measure: Callable[[str], float] = lambda s: len(s) * MONO_CHAR,
            symbolic: Mapping[str, Sequence[str | None]] | None = None) -> Picture:
    """Lay out ``graph`` (``measure``: a text line's width in pixels at :data:`FONT_SIZE`;
    ``symbolic``: value name -> a name per dimension, or None where it is fixed, for a model
    with a dynamic batch)."""
    stats = {r.name: r for r in (summary or summarize(graph)).layers}
    sym = symbolic or {}

    def shapes(v: Any) -> str:
        return _shape(v.shape, sym.get(v.name, ()))
    boxes: list[Box] = []
    box_of: dict[str, int] = {}  # layer name -> box index
    details: dict[str, dict[str, Any]] = {}
    for node in graph.nodes:
        s = stats.get(node.name)
        details[node.name] = _details(node, s, shapes)
        v = node.inputs[0] if node.inputs else None
        if _in_place(node) and v is not None and v.producer is not None and len(v.users) == 1:
            band = Band(node.name, [f"{printable(node.name)} ({printable(node.type)})"], NEURON_COLOR)
            i = box_of[v.producer.name]
            boxes[i].bands.append(band)
            box_of[node.name] = i
            continue
        color = NEURON_COLOR if _in_place(node) else TYPE_COLORS.get(node.type, DEFAULT_COLOR)
        box_of[node.name] = len(boxes)
        boxes.append(Box(f"n{len(boxes)}", [Band(node.name, _layer_lines(node, s, shapes), color)]))
        for p in node.post_ops:
            boxes[-1].bands.append(Band(p.name, [f"{printable(p.name)} ({printable(p.type)}, fused)"], NEURON_COLOR))
    edges: list[Edge] = []
    seen: set[tuple[int, int, str]] = set()
    for node in graph.nodes:
        for v in node.inputs:
            if v.producer is None:
                continue
            a, b = box_of[v.producer.name], box_of[node.name]
            if a != b and (a, b, v.name) not in seen:
                seen.add((a, b, v.name))
                edges.append(Edge(a, b, v.blob or v.name, shapes(v)))
    for v in graph.outputs:
        i = len(boxes)
        boxes.append(Box(f"n{i}", [Band(v.blob or v.name, [printable(v.blob or v.name), shapes(v)], BLOB_COLOR)],
                         blob=True))
        if v.producer is not None:
            edges.append(Edge(box_of[v.producer.name], i, v.blob or v.name, shapes(v)))
    for box in boxes:
        lines = [ln for band in box.bands for ln in band.lines]
        box.width = max(measure(ln) for ln in lines) + 2 * PAD_X + (2 * LINE_HEIGHT if box.blob else 0)
        box.height = len(lines) * LINE_HEIGHT + 2 * PAD_Y * len(box.bands)
    width, height = _layout(boxes, edges)
    return Picture(graph.name or "net", boxes, edges, width, height, details)


# -- layout ------------------------------------------------------------------------------------------

def _ranks(n: int, edges: Sequence[tuple[int, int]]) -> list[int]:
    """Longest-path ranks (edges go from lower to higher index); a source is pulled down to just
    above its first successor, so that a second input sits next to where it is used."""
    preds: list[list[int]] = [[] for _ in range(n)]
    succs: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        preds[b].append(a)
        succs[a].append(b)
    rank = [0] * n
    for v in range(n):
        rank[v] = max((rank[u] + 1 for u in preds[v]), default=0)
    for v in range(n):
        if not preds[v] and succs[v]:
            rank[v] = max(rank[v], min(rank[w] for w in succs[v]) - 1)
    return rank


def _crossings(order: list[list[int]], down: dict[int, list[int]], pos: dict[int, int]) -> int:
    total = 0
    for layer in order[:-1]:
        segs = sorted((pos[a], pos[b]) for a in layer for b in down.get(a, ()))
        for i in range(len(segs)):
            for j in range(i + 1, len(segs)):
                if segs[i][0] < segs[j][0] and segs[i][1] > segs[j][1]:
                    total += 1
    return total


def _isotonic(want: list[float], gaps: list[float]) -> list[float]:
    """The positions closest (least squares) to ``want`` with ``x[i+1] - x[i] >= gaps[i]``
    (pool-adjacent-violators on the offsets-removed targets)."""
    offs = [0.0]
    for g in gaps:
        offs.append(offs[-1] + g)
    blocks: list[list[float]] = []  # [mean, count]
    for w, o in zip(want, offs):
        blocks.append([w - o, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    out: list[float] = []
    for m, c in blocks:
        out.extend([m] * int(c))
    return [x + o for x, o in zip(out, offs)]


def _layout(boxes: list[Box], edges: list[Edge]) -> tuple[float, float]:
    """Place the boxes (x centre, y top) and route the edges; returns the canvas size."""
    n = len(boxes)
    rank = _ranks(n, [(e.src, e.dst) for e in edges])
    widths = [b.width for b in boxes]
    rank_of = list(rank)
    # long edges get a dummy point on every rank they cross
    chains: list[list[int]] = []
    for e in edges:
        chain = [e.src]
        for r in range(rank_of[e.src] + 1, rank_of[e.dst]):
            rank_of.append(r)
            widths.append(DUMMY_WIDTH)
            chain.append(len(rank_of) - 1)
        chain.append(e.dst)
        chains.append(chain)
    total = len(rank_of)
    up: dict[int, list[int]] = {}
    down: dict[int, list[int]] = {}
    for chain in chains:
        for a, b in zip(chain, chain[1:]):
            down.setdefault(a, []).append(b)
            up.setdefault(b, []).append(a)
    nranks = max(rank_of) + 1 if rank_of else 0
    order: list[list[int]] = [[] for _ in range(nranks)]
    for v in range(total):
        order[rank_of[v]].append(v)

    def positions() -> dict[int, int]:
        return {v: i for layer in order for i, v in enumerate(layer)}

    pos = positions()
    best, best_cross = [list(layer) for layer in order], _crossings(order, down, pos)
    for sweep in range(8):
        ranks = range(1, nranks) if sweep % 2 == 0 else range(nranks - 2, -1, -1)
        nbrs = up if sweep % 2 == 0 else down
        for r in ranks:
            def key(v: int) -> float:
                ns = nbrs.get(v)
                return sum(pos[u] for u in ns) / len(ns) if ns else pos[v]
            order[r].sort(key=key)
            for i, v in enumerate(order[r]):
                pos[v] = i
        cross = _crossings(order, down, pos)
        if cross < best_cross:
            best, best_cross = [list(layer) for layer in order], cross
    order = best
    # x: packed, then pulled towards the neighbours' mean under minimum separation
    x = [0.0] * total
    for layer in order:
        cur = 0.0
        for v in layer:
            x[v] = cur + widths[v] / 2
            cur += widths[v] + NODE_GAP
    for sweep in range(12):
        ranks = range(1, nranks) if sweep % 2 == 0 else range(nranks - 2, -1, -1)
        nbrs = up if sweep % 2 == 0 else down
        for r in ranks:
            layer = order[r]
            want = [sum(x[u] for u in nbrs[v]) / len(nbrs[v]) if nbrs.get(v) else x[v] for v in layer]
            gaps = [(widths[a] + widths[b]) / 2 + NODE_GAP for a, b in zip(layer, layer[1:])]
            for v, xv in zip(layer, _isotonic(want, gaps)):
                x[v] = xv
    left = min((x[v] - widths[v] / 2 for v in range(total)), default=0.0)
    x = [xv - left + MARGIN for xv in x]
    # y: each rank as tall as its tallest box
    heights = [max((boxes[v].height for v in layer if v < n), default=0.0) for layer in order]
    tops, y = [], MARGIN
    for h in heights:
        tops.append(y)
        y += h + RANK_GAP
    for v, box in enumerate(boxes):
        box.x, box.y = x[v], tops[rank_of[v]]
    for e, chain in zip(edges, chains):
        src, dst = boxes[e.src], boxes[e.dst]
        pts = [(src.x, src.y + src.height)]
        for d in chain[1:-1]:
            top = tops[rank_of[d]]
            pts += [(x[d], top), (x[d], top + heights[rank_of[d]])]
        pts.append((dst.x, dst.y))
        e.points = pts
    _spread_ports(boxes, edges)
    width = max((x[v] + widths[v] / 2 for v in range(total)), default=0.0) + MARGIN
    return width, y - RANK_GAP + MARGIN


def _spread_ports(boxes: list[Box], edges: list[Edge]) -> None:
    """Several edges leaving (entering) one box leave (enter) it side by side, ordered by where
    they go (come from), over the middle half of the box."""
    for end in (0, -1):
        groups: dict[int, list[Edge]] = {}
        for e in edges:
            groups.setdefault(e.src if end == 0 else e.dst, []).append(e)
        for i, group in groups.items():
            if len(group) < 2:
                continue
            b = boxes[i]
            group.sort(key=lambda e: e.points[1 if end == 0 else -2][0])
            span = b.width / 2
            for k, e in enumerate(group):
                px = b.x - span / 2 + span * k / (len(group) - 1)
                e.points[end] = (px, e.points[end][1])


# -- SVG -----------------------------------------------------------------------------------------

def _path(points: list[tuple[float, float]]) -> str:
    """Straight vertical runs through the dummy points, smooth curves between ranks."""
    (x0, y0), rest = points[0], points[1:]
    d = [f"M{x0:.1f},{y0:.1f}"]
    for x1, y1 in rest:
        if abs(x1 - x0) < 0.5:
            d.append(f"L{x1:.1f},{y1:.1f}")
        else:
            my = (y0 + y1) / 2
            d.append(f"C{x0:.1f},{my:.1f} {x1:.1f},{my:.1f} {x1:.1f},{y1:.1f}")
        x0, y0 = x1, y1
    return " ".join(d)


def _octagon(b: Box) -> list[tuple[float, float]]:
    c = min(LINE_HEIGHT, b.height / 3)
    l, r, t, btm = b.x - b.width / 2, b.x + b.width / 2, b.y, b.y + b.height
    return [(l + c, t), (r - c, t), (r, t + c), (r, btm - c), (r - c, btm), (l + c, btm), (l, btm - c), (l, t + c)]


def render_svg(pic: Picture) -> str:
    """The picture as a standalone SVG document (a ``<title>`` tooltip per box)."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{pic.width:.0f}" height="{pic.height:.0f}" '
           f'viewBox="0 0 {pic.width:.0f} {pic.height:.0f}" font-family="DejaVu Sans Mono, Menlo, Consolas, '
           f'monospace" font-size="{FONT_SIZE:g}">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
           f'<rect width="100%" height="100%" fill="#ffffff"/>', '<g id="scene">', '<g id="edges">']
    for e in pic.edges:
        out.append(f'<path class="edge" data-from="{pic.boxes[e.src].id}" data-to="{pic.boxes[e.dst].id}" '
                   f'data-blob={quoteattr(printable(e.blob))} d="{_path(e.points)}" fill="none" stroke="#555" '
                   f'stroke-width="1.2" marker-end="url(#arrow)"><title>{escape(printable(e.blob))} '
                   f'{e.shape}</title></path>')
    out.append('</g><g id="nodes">')
    for b in pic.boxes:
        left = b.x - b.width / 2
        tip = "; ".join(" ".join(band.lines) for band in b.bands)
        out.append(f'<g class="{"blob" if b.blob else "node"}" id="{b.id}"><title>{escape(tip)}</title>')
        if b.blob:
            pts = " ".join(f"{px:.1f},{py:.1f}" for px, py in _octagon(b))
            out.append(f'<polygon points="{pts}" fill="{BLOB_COLOR}" stroke="#333"/>')
        y = b.y
        for k, band in enumerate(b.bands):
            h = len(band.lines) * LINE_HEIGHT + 2 * PAD_Y
            attr = f' class="layer" data-layer={quoteattr(printable(band.layer))}' if not b.blob else ""
            out.append(f"<g{attr}>")
            if not b.blob:
                out.append(f'<rect x="{left:.1f}" y="{y:.1f}" width="{b.width:.1f}" height="{h:.1f}" '
                           f'fill="{band.color}" stroke="#333"/>')
            for i, line in enumerate(band.lines):
                weight = ' font-weight="bold"' if i == 0 and k == 0 else ""
                out.append(f'<text x="{b.x:.1f}" y="{y + PAD_Y + (i + 0.75) * LINE_HEIGHT:.1f}" '
                           f'text-anchor="middle"{weight}>{escape(line)}</text>')
            out.append("</g>")
            y += h
        out.append("</g>")
    out.append("</g></g></svg>")
    return "\n".join(out)


# -- PNG -----------------------------------------------------------------------------------------

#: the largest PNG drawn (pixels); a larger net is drawn at a smaller scale
MAX_PNG_PIXELS = 60_000_000


def _font(size: float) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def render_png(graph: Graph, summary: Summary | None = None, scale: float = 2.0,
               symbolic: Mapping[str, Sequence[str | None]] | None = None) -> Any:
    """The picture drawn with Pillow (its own layout, measured with Pillow's font): a PIL Image."""
    from PIL import Image, ImageDraw

    font = _font(FONT_SIZE)
    pic = picture(graph, summary, measure=lambda s: font.getlength(s) * 1.05, symbolic=symbolic)
    scale = min(scale, math.sqrt(MAX_PNG_PIXELS / max(pic.width * pic.height, 1.0)))
    img = Image.new("RGB", (max(1, math.ceil(pic.width * scale)), max(1, math.ceil(pic.height * scale))), "white")
    draw = ImageDraw.Draw(img)
    big = _font(FONT_SIZE * scale)

    def s(p: tuple[float, float]) -> tuple[float, float]:
        return p[0] * scale, p[1] * scale

    for e in pic.edges:
        pts = _sample(e.points)
        draw.line([s(p) for p in pts], fill="#555555", width=max(1, round(1.2 * scale)))
        (x0, y0), (x1, y1) = pts[-2], pts[-1]
        a = math.atan2(y1 - y0, x1 - x0)
        tip, k = s((x1, y1)), 7 * scale
        draw.polygon([tip, (tip[0] - k * math.cos(a - 0.4), tip[1] - k * math.sin(a - 0.4)),
                      (tip[0] - k * math.cos(a + 0.4), tip[1] - k * math.sin(a + 0.4))], fill="#555555")
    for b in pic.boxes:
        left = b.x - b.width / 2
        if b.blob:
            draw.polygon([s(p) for p in _octagon(b)], fill=BLOB_COLOR, outline="#333333")
        y = b.y
        for band in b.bands:
            h = len(band.lines) * LINE_HEIGHT + 2 * PAD_Y
            if not b.blob:
                draw.rectangle([s((left, y)), s((left + b.width, y + h))], fill=band.color, outline="#333333")
            for i, line in enumerate(band.lines):
                draw.text(s((b.x, y + PAD_Y + (i + 0.5) * LINE_HEIGHT)), line, fill="black", font=big, anchor="mm")
            y += h
    return img


def _sample(points: list[tuple[float, float]], steps: int = 12) -> list[tuple[float, float]]:
    """The polyline of :func:`_path`'s curves (each cubic sampled at ``steps`` points)."""
    out = [points[0]]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if abs(x1 - x0) < 0.5:
            out.append((x1, y1))
            continue
        my = (y0 + y1) / 2
        for i in range(1, steps + 1):
            t = i / steps
            u = 1 - t
            out.append((u ** 3 * x0 + 3 * u * u * t * x0 + 3 * u * t * t * x1 + t ** 3 * x1,
                        u ** 3 * y0 + 3 * u * u * t * my + 3 * u * t * t * my + t ** 3 * y1))
    return out


# -- HTML ----------------------------------------------------------------------------------------

_HTML_STYLE = """
html, body { margin: 0; height: 100%; overflow: hidden; font: 13px/1.4 system-ui, sans-serif; }
#view { position: absolute; inset: 0 320px 0 0; cursor: grab; background: #fafafa; }
#view.drag { cursor: grabbing; }
#view svg { width: 100%; height: 100%; display: block; }
#info { position: absolute; top: 0; right: 0; bottom: 0; width: 300px; padding: 10px; overflow: auto;
        border-left: 1px solid #ccc; background: #fff; box-sizing: content-box; }
#info h2 { font-size: 15px; margin: 12px 0 4px; } #info table { border-collapse: collapse; }
#info td { padding: 1px 6px 1px 0; vertical-align: top; word-break: break-all; }
#info .hint { color: #666; } #bar { position: absolute; left: 8px; top: 8px; }
.node:hover rect { stroke: #000; stroke-width: 2.5; } .node { cursor: pointer; }
.node.sel rect { stroke: #d00; stroke-width: 3; } .edge.hot { stroke: #d00; stroke-width: 2.5; }
"""

# the page's script: pan (drag), zoom (wheel, about the cursor), fit (button or "f"), details on click
_HTML_SCRIPT = r"""
(function () {
  var svg = document.querySelector('#view svg'), scene = document.getElementById('scene');
  var data = JSON.parse(document.getElementById('layers').textContent);
  var W = +svg.getAttribute('width'), H = +svg.getAttribute('height');
  svg.removeAttribute('width'); svg.removeAttribute('height'); svg.removeAttribute('viewBox');
  var k = 1, tx = 0, ty = 0;
  function apply() { scene.setAttribute('transform', 'translate(' + tx + ',' + ty + ') scale(' + k + ')'); }
  function fit() {
    var r = svg.getBoundingClientRect();
    k = Math.min(r.width / W, r.height / H) * 0.98;
    tx = (r.width - W * k) / 2; ty = (r.height - H * k) / 2; apply();
  }
  svg.addEventListener('wheel', function (ev) {
    ev.preventDefault();
    var r = svg.getBoundingClientRect(), mx = ev.clientX - r.left, my = ev.clientY - r.top;
    var f = Math.exp(-ev.deltaY * 0.0015), nk = Math.max(0.02, Math.min(40, k * f));
    tx = mx - (mx - tx) * nk / k; ty = my - (my - ty) * nk / k; k = nk; apply();
  }, { passive: false });
  var drag = null, moved = false, view = document.getElementById('view');
  svg.addEventListener('mousedown', function (ev) { drag = [ev.clientX - tx, ev.clientY - ty]; moved = false;
    view.classList.add('drag'); });
  window.addEventListener('mousemove', function (ev) {
    if (!drag) return; moved = true; tx = ev.clientX - drag[0]; ty = ev.clientY - drag[1]; apply(); });
  window.addEventListener('mouseup', function () { drag = null; view.classList.remove('drag'); });
  window.addEventListener('keydown', function (ev) { if (ev.key === 'f') fit(); });
  document.getElementById('fit').addEventListener('click', fit);
  window.addEventListener('resize', fit);
  var info = document.getElementById('info');
  function el(tag, text, parent) { var e = document.createElement(tag); if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e); return e; }
  function show(g) {
    document.querySelectorAll('.sel').forEach(function (n) { n.classList.remove('sel'); });
    document.querySelectorAll('.edge.hot').forEach(function (n) { n.classList.remove('hot'); });
    g.classList.add('sel');
    document.querySelectorAll('.edge[data-from="' + g.id + '"], .edge[data-to="' + g.id + '"]')
      .forEach(function (n) { n.classList.add('hot'); });
    info.textContent = '';
    g.querySelectorAll('.layer').forEach(function (band) {
      var d = data[band.getAttribute('data-layer')]; if (!d) return;
      el('h2', d.name, info);
      var t = el('table', undefined, info);
      function row(a, b) { var tr = el('tr', undefined, t); el('td', a, tr); el('td', b, tr); }
      row('type', d.type); if (d.line) row('line', String(d.line));
      d.inputs.forEach(function (v) { row('bottom', v[0] + '  ' + v[1]); });
      d.outputs.forEach(function (v) { row('top', v[0] + '  ' + v[1]); });
      if (d.params !== undefined) { row('params', d.params.toLocaleString() + ' (' + d.weights.toLocaleString() +
        ' weights + ' + d.biases.toLocaleString() + ' biases)'); row('MACs', d.macs.toLocaleString());
        row('memory', d.memory); }
      d.fused.forEach(function (f) { row('fused', f); });
      Object.keys(d.attrs).forEach(function (a) { row(a, d.attrs[a]); });
    });
  }
  document.querySelectorAll('.node').forEach(function (g) {
    g.addEventListener('click', function () { if (!moved) show(g); });
  });
  function fromHash() {  // page.html#conv1 opens with conv1's details
    var want = decodeURIComponent(location.hash.slice(1));
    document.querySelectorAll('.layer').forEach(function (band) {
      if (want && band.getAttribute('data-layer') === want) show(band.closest('.node'));
    });
  }
  window.addEventListener('hashchange', fromHash);
  fit(); fromHash();
  var vw = svg.getBoundingClientRect(), seen = 0;
  document.querySelectorAll('.node, .blob').forEach(function (g) {
    var r = g.getBoundingClientRect();
    if (r.width > 0 && r.left >= vw.left - 1 && r.right <= vw.right + 1 && r.top >= vw.top - 1 &&
        r.bottom <= vw.bottom + 1) seen++;
  });
  document.body.setAttribute('data-visible', String(seen));
  document.body.setAttribute('data-ready', '1');
})();
"""


def _script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``<``, ``>`` or ``&`` left as such)."""
    text = json.dumps(obj, ensure_ascii=True, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(pic: Picture) -> str:
    """One self-contained page: the SVG inline, the layer details as JSON, and a small script
    for pan (drag), zoom (mouse wheel), fit ("f") and details (click, or ``page.html#LAYER``);
    nothing is fetched."""
    title = escape(printable(pic.name))
    n = sum(len(b.layers) for b in pic.boxes)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_HTML_STYLE}</style></head>\n<body>"
            f'<div id="view">{render_svg(pic)}</div>'
            f'<div id="bar"><button id="fit" type="button">fit</button></div>'
            f'<aside id="info"><h2>{title}</h2><p class="hint">{n} layers. Drag to pan, wheel to zoom, '
            f'"f" to fit; click a layer for its details.</p></aside>\n'
            f'<script type="application/json" id="layers">{_script_json(pic.details)}</script>\n'
            f"<script>{_HTML_SCRIPT}</script></body></html>\n")


# -- files ---------------------------------------------------------------------------------------

def draw(graph: Graph, path: str | Path, summary: Summary | None = None,
         inputs: Iterable[str | Path | None] = (), symbolic: Mapping[str, Sequence[str | None]] | None = None) -> Path:
    """Write the picture of ``graph`` to ``path``, as SVG, PNG or HTML by its extension
    (atomically; ``inputs``, the files the net came from, are never overwritten; ``symbolic``:
    see :func:`picture`)."""
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ProtonetError(f"cannot tell the picture's format from the extension '{out.suffix}': use "
                            ".svg, .png or .html", Location(str(path)))
    if suffix == ".png":
        img = render_png(graph, summary, symbolic=symbolic)
        write_atomic(out, lambda tmp: img.save(tmp, format="PNG"), inputs)
        return out
    pic = picture(graph, summary, symbolic=symbolic)
    text = render_svg(pic) + "\n" if suffix == ".svg" else render_html(pic)

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    write_atomic(out, write, inputs)
    return out
