"""Two-stage detector layers: the RPN's Proposal (py-faster-rcnn, py-R-FCN, OpenCV) and R-FCN's
PSROIPooling.

=====================  ==========================================================================
type                   origin
=====================  ==========================================================================
Proposal               py-faster-rcnn's ``rpn.proposal_layer.ProposalLayer`` (a Python layer,
                       recognised by name in :mod:`protonet.frontend.python_layers`) and OpenCV's
                       native ``Proposal`` with ``proposal_param``
PSROIPooling           R-FCN (daijifeng001/caffe-rfcn), position-sensitive ROI average pooling
=====================  ==========================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from ..errors import LayerContext, ProtonetError
from .forks import round_half_away
from .base import FLT_MAX, Example, Layer, Shape, need_4d, prod, random_rois
from .lowering import Lowering
from .registry import register

F32 = np.float32
#: py-faster-rcnn's generate_anchors defaults
DEFAULT_RATIOS = (0.5, 1.0, 2.0)
DEFAULT_SCALES = (8.0, 16.0, 32.0)


# -- Proposal --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProposalAttrs:
    feat_stride: int
    base_size: int
    min_size: float
    ratios: tuple[float, ...]
    scales: tuple[float, ...]
    pre_nms_topn: int  # <= 0: no limit
    post_nms_topn: int  # <= 0: no limit
    nms_thresh: float
    with_scores: bool  # a second top receives the scores
    # resolved against the input shapes: candidates kept before NMS, rows of the output
    pre: int = 0
    rows: int = 0

    @property
    def num_anchors(self) -> int:
        return len(self.ratios) * len(self.scales)


def generate_anchors(base_size: int = 16, ratios: Sequence[float] = DEFAULT_RATIOS,
                     scales: Sequence[float] = DEFAULT_SCALES) -> np.ndarray:
    """py-faster-rcnn's generate_anchors: (len(ratios)·len(scales), 4) boxes [x1, y1, x2, y2]
    around the reference window (0, 0, base_size − 1, base_size − 1), ratio-major. For each
    ratio r the window of the same area gets width round(sqrt(area / r)) and height round(width·r)
    (numpy's round: halves to even); each is scaled by every scale about the window's centre,
    with the +1 pixel convention (x2 = x1 + w − 1)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    ctr = 0.5 * (base_size - 1)
    ws = np.round(np.sqrt(base_size * base_size / ratios))
    hs = np.round(ws * ratios)
    w = (ws[:, None] * scales[None, :]).reshape(-1)
    h = (hs[:, None] * scales[None, :]).reshape(-1)
    return np.stack([ctr - 0.5 * (w - 1), ctr - 0.5 * (h - 1), ctr + 0.5 * (w - 1), ctr + 0.5 * (h - 1)], axis=1)


def shifted_anchors(a: ProposalAttrs, height: int, width: int) -> np.ndarray:
    """All anchors of an H × W score map, (H·W·A, 4) float32, ordered by (h, w, anchor): anchor
    a at cell (h, w) is the base anchor shifted by (w·feat_stride, h·feat_stride)."""
    base = generate_anchors(a.base_size, a.ratios, a.scales)
    sy, sx = np.meshgrid(np.arange(height) * a.feat_stride, np.arange(width) * a.feat_stride, indexing="ij")
    shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
    return (base[None] + shifts).reshape(-1, 4).astype(F32)


def anchor_geometry(anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(widths, heights, ctr_x, ctr_y) of float32 anchors as bbox_transform_inv computes them:
    w = x2 − x1 + 1, ctr = x1 + 0.5·w, in float32."""
    w = anchors[:, 2] - anchors[:, 0] + F32(1)
    h = anchors[:, 3] - anchors[:, 1] + F32(1)
    return w, h, anchors[:, 0] + F32(0.5) * w, anchors[:, 1] + F32(0.5) * h


def decode_boxes(anchors: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """py-faster-rcnn's bbox_transform_inv in float32: centre moves by (dx·w, dy·h), size scales
    by (exp(dw), exp(dh)); corners are centre ∓ 0.5·size."""
    w, h, cx, cy = anchor_geometry(anchors)
    d = deltas.astype(F32)
    with np.errstate(over="ignore", invalid="ignore"):  # huge deltas give inf, clipped later, as in Python
        pcx = d[:, 0] * w + cx
        pcy = d[:, 1] * h + cy
        pw = np.exp(d[:, 2]) * w
        ph = np.exp(d[:, 3]) * h
        return np.stack([pcx - F32(0.5) * pw, pcy - F32(0.5) * ph, pcx + F32(0.5) * pw, pcy + F32(0.5) * ph], axis=1)


def clip_boxes(boxes: np.ndarray, im_h: float, im_w: float) -> np.ndarray:
    """py-faster-rcnn's clip_boxes: x into [0, im_w − 1], y into [0, im_h − 1] (float32)."""
    hi = np.array([im_w, im_h, im_w, im_h], dtype=F32) - F32(1)
    return np.maximum(np.minimum(boxes, hi), F32(0))


def min_size_keep(boxes: np.ndarray, min_size: float, im_scale: float) -> np.ndarray:
    """py-faster-rcnn's _filter_boxes: keep boxes whose width and height (x2 − x1 + 1) are both
    >= min_size · im_info[2], compared in float32."""
    thr = F32(min_size * float(im_scale))
    ws = boxes[:, 2] - boxes[:, 0] + F32(1)
    hs = boxes[:, 3] - boxes[:, 1] + F32(1)
    return (ws >= thr) & (hs >= thr)


def nms_order(boxes: np.ndarray, thresh: float, limit: int = 0) -> list[int]:
    """Greedy NMS over boxes already sorted best first (py-faster-rcnn's GPU nms, the default
    with USE_GPU_NMS): box i is kept unless an earlier kept box overlaps it with IoU > thresh,
    IoU with the +1 convention in float32. Returns kept indices in order; stops after ``limit``
    (> 0) kept boxes, which does not change the first ``limit``."""
    x1, y1, x2, y2 = (boxes[:, k].astype(F32) for k in range(4))
    areas = (x2 - x1 + F32(1)) * (y2 - y1 + F32(1))
    t = F32(thresh)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep: list[int] = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == limit:
            break
        rest = slice(i + 1, None)
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + F32(1), F32(0))
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + F32(1), F32(0))
        inter = w * h
        suppressed[rest] |= inter / (areas[i] + areas[rest] - inter) > t
    return keep


@register
class Proposal(Layer):
    """The RPN proposal layer at test time (py-faster-rcnn's ProposalLayer, cfg.TEST values).

    Bottoms: scores (1, 2A, H, W) whose second half of channels are the foreground
    probabilities, deltas (1, 4A, H, W), im_info (1, 3) = (image height, width, scale). Per cell
    (h, w) and anchor a (generate_anchors shifted by feat_stride): decode the deltas
    (bbox_transform_inv, +1 widths), clip to the image, drop boxes narrower or lower than
    min_size · im_info[2], sort by score (descending; equal scores keep the lower (h, w, a)
    index first, where py-faster-rcnn leaves them to numpy's unstable sort), keep the
    pre_nms_topn best, greedy NMS with IoU > nms_thresh, keep the post_nms_topn best. Arithmetic
    in float32, as the Python layer does on Caffe's float blobs. Defaults: TEST.RPN_MIN_SIZE 16,
    RPN_PRE_NMS_TOP_N 6000, RPN_NMS_THRESH 0.7, RPN_POST_NMS_TOP_N 300; ratios 0.5, 1, 2,
    scales 8, 16, 32, base_size 16.

    Top 0: rois (R, 5) rows [0, x1, y1, x2, y2]; top 1 (optional): scores (R, 1). Static shape
    (a divergence, documented): Caffe's row count is data dependent; protonet gives R =
    post_nms_topn rows (all pre-NMS candidates when it is 0), the proposals first in
    py-faster-rcnn's order, then all-zero rows, as OpenCV's Proposal layer does; downstream ROI
    layers read a zero row as a one-pixel box at the origin. A proposal has x2 − x1 + 1 >=
    min_size · im_info[2], so with a positive minimum a zero row is never a proposal. Batch
    size 1, as py-faster-rcnn asserts."""

    type_name = "Proposal"
    num_bottoms = (3, 3)
    fixed_batch = "it handles one image (batch size 1), as py-faster-rcnn's proposal layer asserts"
    decides = True  # sort, minimum size and NMS on the scores and the decoded boxes
    examples = (
        Example('layer { name: "p" type: "Proposal" bottom: "in0" bottom: "in1" bottom: "in2" top: "rois" '
                'proposal_param { feat_stride: 16 } }', ((1, 18, 5, 6), (1, 36, 5, 6), (1, 3)), "defaults",
                values={2: (80.0, 96.0, 1.0)}),
        Example('layer { name: "p" type: "Proposal" bottom: "in0" bottom: "in1" bottom: "in2" top: "rois" '
                'top: "scores" proposal_param { feat_stride: 8 min_size: 4 ratio: 1 ratio: 2 scale: 2 scale: 4 '
                'pre_nms_topn: 40 post_nms_topn: 12 nms_thresh: 0.5 } }', ((1, 8, 6, 5), (1, 16, 6, 5), (1, 3)),
                "two_tops_limits", values={2: (48.0, 40.0, 1.5)}),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> ProposalAttrs:
        p = layer.proposal_param
        if p.feat_stride <= 0 or p.base_size <= 0:
            raise ctx.error(f"feat_stride and base_size must be positive, got {p.feat_stride} and {p.base_size}")
        ratios = tuple(float(r) for r in p.ratio) or DEFAULT_RATIOS
        scales = tuple(float(s) for s in p.scale) or DEFAULT_SCALES
        if any(r <= 0 for r in ratios) or any(s <= 0 for s in scales):
            raise ctx.error(f"ratio and scale values must be positive, got {list(ratios)} and {list(scales)}")
        if not 0 <= p.nms_thresh <= 1:
            raise ctx.error(f"nms_thresh must lie in [0, 1], got {p.nms_thresh:g}")
        return ProposalAttrs(int(p.feat_stride), int(p.base_size), float(p.min_size), ratios, scales,
                             int(p.pre_nms_topn), int(p.post_nms_topn), float(p.nms_thresh), len(layer.top) == 2)

    def num_tops(self, a: ProposalAttrs, layer: Any) -> int | None:
        return 2 if a.with_scores else 1

    def resolve(self, a: ProposalAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> ProposalAttrs:
        """Checks the bottoms; ``pre`` = the pre_nms_topn best of the H·W·A candidates (all when
        0), ``rows`` = post_nms_topn (OpenCV's output size too; ``pre`` when 0)."""
        scores, deltas, info = shapes
        if len(scores) != 4 or len(deltas) != 4:
            raise ctx.error(f"scores and deltas must be 4-D (1, C, H, W), got {tuple(scores)} and {tuple(deltas)}")
        if scores[0] != 1 or deltas[0] != 1 or info[0] != 1:
            raise ctx.error("handles one image (batch size 1), as py-faster-rcnn's proposal layer asserts; "
                            f"got batch sizes {scores[0]}, {deltas[0]}, {info[0]}")
        na = a.num_anchors
        if scores[1] != 2 * na or deltas[1] != 4 * na:
            raise ctx.error(f"{na} anchors need {2 * na} score channels (background, then foreground) and "
                            f"{4 * na} delta channels; got {scores[1]} and {deltas[1]}")
        if tuple(scores[2:]) != tuple(deltas[2:]):
            raise ctx.error(f"scores {tuple(scores)} and deltas {tuple(deltas)} differ in height or width")
        if prod(info[1:]) < 3:
            raise ctx.error(f"im_info must hold (height, width, scale), got shape {tuple(info)}")
        total = scores[2] * scores[3] * na
        pre = min(a.pre_nms_topn, total) if a.pre_nms_topn > 0 else total
        return replace(a, pre=pre, rows=a.post_nms_topn if a.post_nms_topn > 0 else pre)

    def infer(self, a: ProposalAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [(a.rows, 5), (a.rows, 1)] if a.with_scores else [(a.rows, 5)]

    def kernel(self, a: ProposalAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        scores, deltas, im_info = xs
        na, (height, width), pre, rows = a.num_anchors, scores.shape[2:], a.pre, a.rows
        fg = scores[0, na:].astype(F32).transpose(1, 2, 0).reshape(-1)
        d = deltas[0].astype(F32).transpose(1, 2, 0).reshape(-1, 4)
        im_h, im_w, im_scale = im_info.reshape(-1)[:3].astype(F32)
        boxes = clip_boxes(decode_boxes(shifted_anchors(a, height, width), d), im_h, im_w)
        keep = np.flatnonzero(min_size_keep(boxes, a.min_size, im_scale))
        order = keep[np.argsort(-fg[keep], kind="stable")][:pre]
        kept = order[nms_order(boxes[order], a.nms_thresh, rows)]
        rois = np.zeros((rows, 5), dtype=F32)
        rois[:len(kept), 1:] = boxes[kept]
        out = [rois]
        if a.with_scores:
            sc = np.zeros((rows, 1), dtype=F32)
            sc[:len(kept), 0] = fg[kept]
            out.append(sc)
        return out

    def lower(self, a: ProposalAttrs, g: Lowering) -> None:
        (_, _, height, width), info_shape = g.in_shapes[0], g.in_shapes[2]
        scores, deltas, im_info = g.inputs
        na, total, pre, rows = a.num_anchors, height * width * a.num_anchors, a.pre, a.rows
        anchors = shifted_anchors(a, height, width)
        aw, ah, acx, acy = (g.const(v[:, None], n) for v, n in zip(anchor_geometry(anchors),
                                                                    ("anchor_w", "anchor_h", "anchor_cx", "anchor_cy")))
        fg = g.op("Slice", [scores, g.int64s([na], "fg_start"), g.int64s([2 * na], "fg_end"), g.int64s([1], "ch")])
        fg = g.op("Reshape", [g.op("Transpose", [fg], perm=[0, 2, 3, 1]), g.int64s([total, 1], "fg_shape")])
        d = g.op("Reshape", [g.op("Transpose", [deltas], perm=[0, 2, 3, 1]), g.int64s([total, 4], "d_shape")])
        dx, dy, dw, dh = g.op("Split", [d], n_out=4, axis=1)
        half = g.const(0.5, "half")
        pcx, pcy = g.op("Add", [g.op("Mul", [dx, aw]), acx]), g.op("Add", [g.op("Mul", [dy, ah]), acy])
        hw, hh = g.op("Mul", [half, g.op("Mul", [g.op("Exp", [dw]), aw])]), \
            g.op("Mul", [half, g.op("Mul", [g.op("Exp", [dh]), ah])])
        info = g.op("Reshape", [im_info, g.int64s([prod(info_shape)], "info_flat")])
        im_h, im_w, im_scale = (g.op("Slice", [info, g.int64s([k], f"i{k}"), g.int64s([k + 1], f"i{k + 1}")])
                                for k in range(3))
        one, zero = g.const(1.0, "one"), g.const(0.0, "zero")
        hi_x, hi_y = g.op("Sub", [im_w, one]), g.op("Sub", [im_h, one])

        def clip(v: str, hi: str) -> str:
            return g.op("Max", [g.op("Min", [v, hi]), zero])

        x1, y1 = clip(g.op("Sub", [pcx, hw]), hi_x), clip(g.op("Sub", [pcy, hh]), hi_y)
        x2, y2 = clip(g.op("Add", [pcx, hw]), hi_x), clip(g.op("Add", [pcy, hh]), hi_y)
        thr = g.op("Mul", [im_scale, g.const(a.min_size, "min_size")])
        big = g.op("And", [g.op("GreaterOrEqual", [g.op("Add", [g.op("Sub", [x2, x1]), one]), thr]),
                           g.op("GreaterOrEqual", [g.op("Add", [g.op("Sub", [y2, y1]), one]), thr])])
        masked = g.op("Where", [big, fg, g.const(-np.inf, "minus_inf")])
        best, order = g.op("TopK", [g.op("Reshape", [masked, g.int64s([total], "flat")]), g.int64s([pre], "pre")],
                           n_out=2, axis=0, largest=1, sorted=1)
        boxes = g.op("Gather", [g.op("Concat", [x1, y1, x2, y2], axis=1), order], axis=0)  # (pre, 4) best first
        # onnxruntime's IoU has no +1: (y1, x1, y2 + 1, x2 + 1) gives py-faster-rcnn's areas and overlaps
        nms_boxes = g.op("Add", [g.op("Gather", [boxes, g.int64s([1, 0, 3, 2], "yx")], axis=1),
                                 g.const(np.array([0, 0, 1, 1], dtype=F32), "plus_one")])
        sel = g.op("NonMaxSuppression", [g.op("Unsqueeze", [nms_boxes, g.int64s([0], "axis0")]),
                                         g.op("Reshape", [best, g.int64s([1, 1, pre], "nms_scores")]),
                                         g.int64s([rows], "max_out"), g.const([a.nms_thresh], "iou"),
                                         g.const([-FLT_MAX], "score_floor")])
        picked = g.op("Gather", [sel, g.int64s([2], "box_col")], axis=1)  # (S, 1), S <= rows
        picked = g.op("Reshape", [picked, g.int64s([-1], "flat_sel")])

        def padded(v: str, width_: int, hint: str) -> str:
            full = g.op("Concat", [v, g.const(np.zeros((rows, width_), dtype=F32), f"{hint}_pad")], axis=0)
            first = g.op("Slice", [full, g.int64s([0], f"{hint}_0"), g.int64s([rows], f"{hint}_rows")])
            return g.op("Reshape", [first, g.int64s([rows, width_], f"{hint}_shape")])  # static for shape inference

        kept = padded(g.op("Gather", [boxes, picked], axis=0), 4, "boxes")
        g.op("Concat", [g.const(np.zeros((rows, 1), dtype=F32), "batch_index"), kept], [g.outputs[0]], axis=1)
        if a.with_scores:
            sc = g.op("Unsqueeze", [g.op("Gather", [best, picked], axis=0), g.int64s([1], "axis1")])
            g.op("Identity", [padded(sc, 1, "scores")], [g.outputs[1]])


# -- PSROIPooling ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PSROIPoolAttrs:
    spatial_scale: float
    output_dim: int
    group_size: int


def psroi_bins(rois: np.ndarray, scale: float, group: int, height: int, width: int) -> tuple[np.ndarray, ...]:
    """Per ROI (R, 5), the [start, end) rows and columns of each of the group × group bins,
    (R, G) int64 each, as R-FCN's CUDA kernel computes them in float32: corners
    round(x1)·scale and (round(x2) + 1)·scale, extent max(end − start, 0.1), bin = extent / G,
    start floor(i·bin + roi_start) and end ceil((i + 1)·bin + roi_start) with the multiply-add
    fused (one rounding, as nvcc compiles it), clipped to the map."""
    s = F32(scale)
    r = rois.astype(F32)
    rounded = round_half_away(r[:, 1:5]).astype(F32)  # C's round(), exact integers in float32
    start_w, start_h = rounded[:, 0] * s, rounded[:, 1] * s
    end_w, end_h = (rounded[:, 2] + F32(1)) * s, (rounded[:, 3] + F32(1)) * s
    bin_w = np.maximum(end_w - start_w, F32(0.1)) / F32(group)
    bin_h = np.maximum(end_h - start_h, F32(0.1)) / F32(group)
    i = np.arange(group, dtype=np.float64)

    def fused(k: np.ndarray, size: np.ndarray, start: np.ndarray) -> np.ndarray:
        # k·size is exact in float64 and the sum is exact too, so one rounding to float32 = fmaf
        return (k[None, :] * size[:, None].astype(np.float64) + start[:, None].astype(np.float64)).astype(F32)

    hs = np.clip(np.floor(fused(i, bin_h, start_h)), 0, height).astype(np.int64)
    he = np.clip(np.ceil(fused(i + 1, bin_h, start_h)), 0, height).astype(np.int64)
    ws = np.clip(np.floor(fused(i, bin_w, start_w)), 0, width).astype(np.int64)
    we = np.clip(np.ceil(fused(i + 1, bin_w, start_w)), 0, width).astype(np.int64)
    return hs, he, ws, we


@register
class PSROIPooling(Layer):
    """R-FCN's position-sensitive ROI pooling: bottom 0 (N, output_dim·G·G, H, W) score maps,
    bottom 1 rois (R, 5) [batch_index, x1, y1, x2, y2] in image coordinates; output (R,
    output_dim, G, G), G = group_size. Output (r, c, i, j) is the mean of channel
    (c·G + i)·G + j over bin (i, j) of ROI r (bins as :func:`psroi_bins`), 0 for an empty bin.
    Lowered with two batched MatMuls against 0/1 row and column masks (sums in another order)."""

    type_name = "PSROIPooling"
    num_bottoms = (2, 2)
    examples = (
        Example('layer { name: "ps" type: "PSROIPooling" bottom: "in0" bottom: "in1" top: "out" '
                'psroi_pooling_param { spatial_scale: 0.5 output_dim: 2 group_size: 3 } }',
                ((2, 18, 7, 8), (5, 5)), "scale_half", int_inputs={1: 2}),
        Example('layer { name: "ps" type: "PSROIPooling" bottom: "in0" bottom: "in1" top: "out" '
                'psroi_pooling_param { spatial_scale: 0.0625 output_dim: 3 group_size: 2 } }',
                ((1, 12, 6, 6), (4, 5)), "stride16",
                values={1: (0, 3, 5, 60, 40, 0, -20, 10, 200, 95, 0, 47.5, 30.5, 52.5, 33, 0, 0, 0, 0, 0)}),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> PSROIPoolAttrs:
        p = layer.psroi_pooling_param
        missing = [f for f in ("spatial_scale", "output_dim", "group_size") if not p.HasField(f)]
        if missing:
            raise ctx.error(f"psroi_pooling_param needs {', '.join(missing)} (R-FCN declares them required)")
        if p.output_dim <= 0 or p.group_size <= 0:
            raise ctx.error(f"output_dim and group_size must be positive, got {p.output_dim} and {p.group_size}")
        return PSROIPoolAttrs(float(p.spatial_scale), int(p.output_dim), int(p.group_size))

    def resolve(self, a: PSROIPoolAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> PSROIPoolAttrs:
        """Checks the score maps' channel count and the rois' shape."""
        s, r = shapes
        need_4d(s, ctx)
        if s[1] != a.output_dim * a.group_size ** 2:
            raise ctx.error(f"input has {s[1]} channels; output_dim {a.output_dim} × group_size² "
                            f"{a.group_size ** 2} = {a.output_dim * a.group_size ** 2} expected")
        if len(r) < 2 or prod(r[1:]) != 5:
            raise ctx.error(f"rois bottom must be (R, 5) rows [batch_index, x1, y1, x2, y2], got shape {tuple(r)}")
        return a

    def infer(self, a: PSROIPoolAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [(shapes[1][0], a.output_dim, a.group_size, a.group_size)]

    def kernel(self, a: PSROIPoolAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x, rois = xs
        n, _, height, width = x.shape
        g = a.group_size
        rois = rois.reshape(rois.shape[0], 5)
        hs, he, ws, we = psroi_bins(rois, a.spatial_scale, g, height, width)
        maps = x.reshape(n, a.output_dim, g, g, height, width)
        out = np.zeros((rois.shape[0], a.output_dim, g, g), dtype=x.dtype)
        for r in range(rois.shape[0]):
            b = np.trunc(np.float32(rois[r, 0]))  # C's float -> int conversion truncates
            if not 0 <= b < n:  # NaN included
                raise ProtonetError(f"ROI {r} has batch index {b:g}, outside the batch of {n}")
            b = int(b)
            for i in range(g):
                for j in range(g):
                    area = (he[r, i] - hs[r, i]) * (we[r, j] - ws[r, j])
                    if he[r, i] > hs[r, i] and we[r, j] > ws[r, j]:
                        window = maps[b, :, i, j, hs[r, i]:he[r, i], ws[r, j]:we[r, j]]
                        out[r, :, i, j] = window.sum(axis=(1, 2)) / area
        return [out]

    def sample_input(self, a: PSROIPoolAttrs, i: int, in_shapes: Sequence[Shape],
                     rng: np.random.Generator) -> np.ndarray | None:
        return random_rois(in_shapes[0], in_shapes[1], a.spatial_scale, rng) if i == 1 else None

    def lower(self, a: PSROIPoolAttrs, g: Lowering) -> None:
        (_, _, height, width) = g.in_shapes[0]
        x, rois = g.inputs
        gs, co = a.group_size, a.output_dim
        rois = g.op("Reshape", [rois, g.int64s([-1, 5], "rois2d")])
        b, x1, y1, x2, y2 = g.op("Split", [rois], n_out=5, axis=1)  # (R, 1) each
        scale, one = g.const(a.spatial_scale, "scale"), g.const(1.0, "one")

        def c_round(v: str) -> str:  # halves away from zero
            mag = g.op("Abs", [v])
            fl = g.op("Floor", [mag])
            up = g.cast(g.op("GreaterOrEqual", [g.op("Sub", [mag, fl]), g.const(0.5, "half")]), np.float32)
            return g.op("Mul", [g.op("Sign", [v]), g.op("Add", [fl, up])])

        def edges(lo: str, hi: str, size: int, axis: str) -> tuple[str, str]:
            start = g.op("Mul", [c_round(lo), scale])
            end = g.op("Mul", [g.op("Add", [c_round(hi), one]), scale])
            extent = g.op("Max", [g.op("Sub", [end, start]), g.const(0.1, "min_extent")])
            bin64 = g.cast(g.op("Div", [extent, g.const(float(gs), "groups")]), np.float64)
            start64 = g.cast(start, np.float64)
            k = np.arange(gs, dtype=np.float64)[None]

            def fused(ks: np.ndarray, hint: str) -> str:  # one rounding of k·bin + start, as fmaf
                return g.cast(g.op("Add", [g.op("Mul", [bin64, g.const(ks, hint, np.float64)]), start64]), np.float32)

            lim, zero = g.const(float(size), f"{axis}_size"), g.const(0.0, "zero")
            lo_i = g.op("Min", [g.op("Max", [g.op("Floor", [fused(k, f"{axis}_k")]), zero]), lim])
            hi_i = g.op("Min", [g.op("Max", [g.op("Ceil", [fused(k + 1, f"{axis}_k1")]), zero]), lim])
            return lo_i, hi_i  # (R, G)

        hs, he = edges(y1, y2, height, "h")
        ws, we = edges(x1, x2, width, "w")

        def mask(lo: str, hi: str, size: int, axis: str) -> str:  # (R, G, size) 0/1
            pos = g.const(np.arange(size, dtype=np.float32)[None, None], f"{axis}_pos")
            last = g.int64s([-1], "last")
            inside = g.op("And", [g.op("GreaterOrEqual", [pos, g.op("Unsqueeze", [lo, last])]),
                                  g.op("Less", [pos, g.op("Unsqueeze", [hi, last])])])
            return g.cast(inside, np.float32)

        mh, mw = mask(hs, he, height, "h"), mask(ws, we, width, "w")
        # rows: (G_i, H, N·Co·G_j·W) against (G_i, R, H)
        x6 = g.op("Reshape", [x, g.int64s([-1, co, gs, gs, height, width], "x6")])
        xr = g.op("Reshape", [g.op("Transpose", [x6], perm=[2, 4, 0, 1, 3, 5]),
                              g.int64s([gs, height, -1], "x_rows")])
        rows = g.op("MatMul", [g.op("Transpose", [mh], perm=[1, 0, 2]), xr])  # (G_i, R, N·Co·G_j·W)
        rows = g.op("Reshape", [rows, g.int64s([gs, 0, -1, co, gs, width], "rows6")])
        rows = g.op("Reshape", [g.op("Transpose", [rows], perm=[1, 4, 0, 2, 3, 5]),
                                g.int64s([0, gs, -1, width], "rows4")])  # (R, G_j, G_i·N·Co, W)
        sums = g.op("MatMul", [rows, g.op("Unsqueeze", [mw, g.int64s([-1], "last")])])  # (R, G_j, G_i·N·Co, 1)
        sums = g.op("Reshape", [sums, g.int64s([0, gs, gs, -1, co], "sums5")])
        sums = g.op("Transpose", [sums], perm=[0, 3, 4, 2, 1])  # (R, N, Co, G_i, G_j)
        image = g.cast(b, np.int64)  # (R, 1); float -> int truncates, as C does
        sums = g.op("GatherND", [sums, image], batch_dims=1)  # (R, Co, G_i, G_j)
        dh = g.op("Unsqueeze", [g.op("Sub", [he, hs]), g.int64s([2], "ax2")])  # (R, G, 1)
        dw = g.op("Unsqueeze", [g.op("Sub", [we, ws]), g.int64s([1], "ax1")])  # (R, 1, G)
        zero = g.const(0.0, "zero")
        empty = g.op("Or", [g.op("LessOrEqual", [dh, zero]), g.op("LessOrEqual", [dw, zero])])
        area = g.op("Where", [empty, one, g.op("Mul", [dh, dw])])
        mean = g.op("Div", [sums, g.op("Unsqueeze", [area, g.int64s([1], "ax1")])])
        g.op("Where", [g.op("Unsqueeze", [empty, g.int64s([1], "ax1")]), zero, mean], g.outputs)
