"""The YOLO detection heads of eric612/MobileNet-YOLO: YoloDetectionOutput (YOLOv2's region
output, ``yolo_detection_output_layer.cpp``) and Yolov3DetectionOutput
(``yolov3_detection_output_layer.cpp``), with that fork's test-time semantics.

Both read, per bottom (N, C, H, W), anchor blocks of L channels: anchor n's channels
n·L .. n·L + L − 1 hold [tx, ty, tw, th, objectness, class 0, class 1, ...]. A cell (row j,
column i) and anchor give one box, in units of the image (centre and size):

    x = (i + σ(tx)) / W      y = (j + σ(ty)) / H      w = e^tw · anchor_w      h = e^th · anchor_h

(YOLOv2: anchor = bias / W for both sides, the grid being square; YOLOv3: anchor_w = bias_w /
(W · anchors_scale), anchor_h = bias_h / (H · anchors_scale), the bias pair picked through
``mask``). The fork's ``correct_yolo_boxes`` is the identity here: its network size is the grid
times an integer ``anchors_scale``, so the letterbox ratios it corrects by are 1 exactly.

The candidates of every bottom and image go into one list, in the order bottom, image, row,
column, anchor (then class); they are sorted by score, highest first, and a greedy NMS that
ignores the class drops a candidate whose IoU with a kept one is >= nms_threshold (IoU of the
centre/size boxes, unclipped). Rows [image_id, label, score, xmin, ymin, xmax, ymax] in that
order, label = class + 1, image_id 0 for every row: the fork pools the batch's images into one
list, so a box of one image can suppress a box of another (the batch is therefore fixed).
When nothing is kept, the fork writes one row [i, -1, -1, -1, -1, -1, -1] per image i.

The fork's row count depends on the data; protonet's top is (1, 1, R, 7), R the most rows NMS
can keep (every box of the batch, or every class of every box when nms_threshold > 1), the
fork's rows first and rows of -1 after. Scores are compared and sorted as the fork holds them,
in float32 (:func:`as_float`); equal scores keep the list's order, which the fork's sort leaves
open.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from ..errors import LayerContext, UnsupportedError
from .base import Close, Example, Layer, Shape, need_4d, sigmoid
from .lowering import Lowering
from .registry import register

#: copies of one box (YOLOv3's classes of a cell and anchor) overlap with IoU 1 (the fork computes
#: 1 up to rounding; protonet and onnxruntime 1 exactly): at a threshold at or below this one they
#: suppress each other, so at most one class of a box survives NMS
SAME_BOX_SUPPRESSED = 1.0


@dataclass(frozen=True)
class YoloGrid:
    """One bottom's decoding, resolved from its shape."""

    height: int
    width: int
    length: int  # channels per anchor block
    anchor_w: tuple[float, ...]  # box width at tw = 0, per anchor, in units of the image
    anchor_h: tuple[float, ...]


@dataclass(frozen=True)
class YoloAttrs:
    version: int  # 2: YoloDetectionOutput, 3: Yolov3DetectionOutput
    num_classes: int
    num_box: int
    confidence_threshold: float
    nms_threshold: float
    biases: tuple[float, ...]
    anchors_scale: tuple[int, ...] = ()  # YOLOv3
    mask: tuple[int, ...] = ()  # YOLOv3
    mask_group_num: int = 1  # YOLOv3
    grids: tuple[YoloGrid, ...] = ()  # resolved from the bottoms
    batch: int = 0  # resolved

    @property
    def one_class_per_box(self) -> bool:
        """Whether at most one candidate of each box survives NMS: YOLOv2 makes one per box, and
        YOLOv3's copies of a box (one per class) suppress each other at this threshold."""
        return self.version == 2 or self.nms_threshold <= SAME_BOX_SUPPRESSED

    @property
    def boxes_per_image(self) -> int:
        return sum(gr.height * gr.width * self.num_box for gr in self.grids)

    @property
    def rows(self) -> int:
        """The output's row count: every candidate that can survive NMS, over the batch."""
        per_box = 1 if self.one_class_per_box else self.num_classes
        return self.batch * self.boxes_per_image * per_box


def as_float(x: Any) -> np.ndarray:
    """Scores as the fork holds them (Caffe's Dtype float), kept in float64: the fork's sort,
    threshold and ties are those of these values (a product of two sigmoids near 1 is 1 exactly)."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def fork_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The fork's ``box_iou`` of one (x, y, w, h) box against many: the overlaps of the centre/
    size intervals, no intersection when either is negative, union w·h + w'·h' − intersection
    (0/0 gives NaN, which suppresses nothing)."""
    def overlap(c1: Any, s1: Any, c2: np.ndarray, s2: np.ndarray) -> np.ndarray:
        return np.minimum(c1 + s1 / 2, c2 + s2 / 2) - np.maximum(c1 - s1 / 2, c2 - s2 / 2)

    ow = overlap(box[0], box[2], boxes[:, 0], boxes[:, 2])
    oh = overlap(box[1], box[3], boxes[:, 1], boxes[:, 3])
    inter = np.where((ow < 0) | (oh < 0), 0.0, ow * oh)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter)


@dataclass(frozen=True)
class Candidates:
    """The fork's prediction list before its sort: centre/size boxes (K, 4), scores (K,), classes
    (K,), and each one's box (cell and anchor of a bottom and image: YOLOv3's classes of one box
    share it)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    source: np.ndarray

    @staticmethod
    def join(parts: Sequence["Candidates"]) -> "Candidates":
        return Candidates(*(np.concatenate([getattr(p, f) for p in parts])
                            for f in ("boxes", "scores", "classes", "source")))

    def rows(self, which: Any = slice(None)) -> np.ndarray:
        """The fork's rows [0, class + 1, score, xmin, ymin, xmax, ymax]."""
        b, s, c = self.boxes[which], self.scores[which], self.classes[which]
        return np.stack([np.zeros(len(s)), c + 1.0, s, b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2,
                         b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], axis=1)


def greedy_nms(cand: Candidates, order: np.ndarray, threshold: float) -> np.ndarray:
    """The fork's ``ApplyNms`` on candidates taken in ``order`` (its sort: by score, highest
    first): each is kept unless a kept one overlaps it with IoU >= ``threshold``. Returns the
    kept indices in that order.

    Copies of one box (its other classes) overlap it with IoU 1 (the fork computes 1 up to
    rounding): at a threshold <= 1 a copy after the first in ``order`` is dropped before the
    loop, as the loop would drop it (by the first copy when that is kept, else by the box that
    suppressed the first copy, whose IoU with every copy is the same)."""
    alive, kept = np.asarray(order), []
    if threshold <= SAME_BOX_SUPPRESSED:
        _, first = np.unique(cand.source[alive], return_index=True)
        alive = alive[np.sort(first)]
    boxes = cand.boxes
    while alive.size:  # greedy and sequential by nature; each step drops what the kept box covers
        i, alive = alive[0], alive[1:]
        kept.append(i)
        alive = alive[~(fork_iou(boxes[i], boxes[alive]) >= threshold)]
    return np.asarray(kept, dtype=np.int64)


def _common_params(p: Any, ctx: LayerContext) -> tuple[float, ...]:
    """The checks both heads' params share (num_classes, num_box, thresholds); the biases.
    A bias is an anchor's width or height: the fork's overlaps of boxes without a positive size
    are not areas, so such biases are refused."""
    if not p.HasField("num_classes") or p.num_classes < 1:
        raise ctx.error("num_classes must be set to a positive number (the fork requires it)")
    if p.num_box < 1:
        raise ctx.error(f"num_box must be positive, got {p.num_box}")
    for name in ("confidence_threshold", "nms_threshold"):
        if not math.isfinite(getattr(p, name)):
            raise ctx.error(f"{name} must be a finite number, got {getattr(p, name)}")
    biases = tuple(float(v) for v in p.biases)
    bad = [v for v in biases if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ctx.error(f"biases are anchor sizes and must be positive finite numbers, got {bad[0]:g}")
    return biases


class _YoloOutput(Layer):
    """What the two heads share: box decoding, the pooled NMS and the rows (module docstring)."""

    decides = True  # thresholds, a sort and NMS on the decoded boxes
    fixed_batch = ("the fork pools the detections of every image of the batch into one list (image_id 0 on "
                   "every row) and suppresses boxes across images")

    def num_tops(self, attrs: Any, layer: Any) -> int | None:
        return 1

    def _check_grid(self, a: YoloAttrs, t: int, s: Shape, ctx: LayerContext, length: int) -> None:
        need_4d(s, ctx, f"bottom {t}")
        if s[1] < a.num_box * length:
            raise ctx.error(f"bottom {t} has {s[1]} channels; {a.num_box} anchors × (5 + {a.num_classes} classes) "
                            f"= {a.num_box * length} needed")

    def infer(self, a: YoloAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        return [(1, 1, a.rows, 7)]

    # -- numpy ---------------------------------------------------------------------------------

    @staticmethod
    def _blocks(a: YoloAttrs, x: np.ndarray, gr: YoloGrid) -> np.ndarray:
        """(N, C, H, W) -> (N·H·W·A, L): one row per candidate box, in image, row, column,
        anchor order."""
        n = x.shape[0]
        t = x[:, :a.num_box * gr.length].reshape(n, a.num_box, gr.length, gr.height * gr.width)
        return t.transpose(0, 3, 1, 2).reshape(-1, gr.length)

    @staticmethod
    def _decode(a: YoloAttrs, t: np.ndarray, gr: YoloGrid) -> np.ndarray:
        """Centre/size boxes (M, 4) of the rows of :meth:`_blocks`."""
        cell = np.arange(t.shape[0]) // a.num_box % (gr.height * gr.width)
        anchor = np.arange(t.shape[0]) % a.num_box
        col, row = cell % gr.width, cell // gr.width
        return np.stack([(col + sigmoid(t[:, 0])) / gr.width, (row + sigmoid(t[:, 1])) / gr.height,
                         np.exp(t[:, 2]) * np.asarray(gr.anchor_w)[anchor],
                         np.exp(t[:, 3]) * np.asarray(gr.anchor_h)[anchor]], axis=1)

    def candidates(self, a: YoloAttrs, xs: Sequence[np.ndarray]) -> Candidates:
        """The fork's prediction list before its sort, in its order."""
        raise NotImplementedError

    def _top(self, a: YoloAttrs, rows: np.ndarray, dtype: Any) -> list[np.ndarray]:
        """The top: the detection rows, then -1 rows; with none, the fork's [i, -1, ...] per image."""
        if len(rows) > a.rows:  # the row bound is a property of NMS (YoloAttrs.rows)
            raise RuntimeError(f"{len(rows)} detections survive NMS, more than the {a.rows} rows bounded")
        out = np.full((a.rows, 7), -1.0, dtype=dtype)
        out[:len(rows)] = rows
        if len(rows) == 0:
            out[:a.batch, 0] = np.arange(a.batch)
        return [out.reshape(1, 1, a.rows, 7)]

    def kernel(self, a: YoloAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        cand = self.candidates(a, xs)
        kept = greedy_nms(cand, np.argsort(-cand.scores, kind="stable"), a.nms_threshold)
        return self._top(a, cand.rows(kept), xs[0].dtype)

    def follow_choice(self, a: YoloAttrs, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
                      other: Sequence[np.ndarray], close: Close) -> list[np.ndarray] | None:
        """Scores equal up to rounding may be sorted the other way round in float32 (the fork's
        sort leaves ties in no set order), and NMS then keeps other boxes. The other top is
        followed when its detections are what the fork's greedy NMS keeps in some order of the
        candidates by score, near-equal scores (within tolerance) taken either way:

        - each detection is one of the reference's candidates (label equal, score and box within
          tolerance), at most one per box, with a score equal within tolerance to its box's best;
        - their scores descend within tolerance, and none has IoU >= nms_threshold with an
          earlier one;
        - every other box over the threshold has IoU >= nms_threshold with a detection whose
          score is not below its own beyond tolerance.

        The reference then continues with its own rows of those detections, in that order."""
        alt, y = np.asarray(other[0]), ys[0]
        if alt.shape != y.shape:
            return None
        cand = self.candidates(a, xs)
        scores, table, src = cand.scores, cand.rows(), cand.source
        got = alt.reshape(-1, 7)
        got = got[got[:, 1] != -1]
        by_score = np.argsort(scores, kind="stable")
        ranked = scores[by_score]
        picked: list[int] = []
        boxes_taken: set[int] = set()
        for row in got:
            span = 1e-3 * max(abs(row[2]), 1.0)  # a window to search; close() decides
            lo, hi = np.searchsorted(ranked, [row[2] - span, row[2] + span])
            near = by_score[lo:hi]
            near = near[close(np.broadcast_to(row, (len(near), 7)), table[near], y).all(axis=1)]
            near = [int(c) for c in near if int(src[c]) not in boxes_taken]
            if not near:
                return None
            picked.append(min(near, key=lambda c: abs(scores[c] - row[2])))
            boxes_taken.add(int(src[picked[-1]]))
        kept = np.asarray(picked, dtype=np.int64)
        best = np.full(int(src.max()) + 1 if len(src) else 0, -np.inf)
        np.maximum.at(best, src, scores)
        if not close(scores[kept], best[src[kept]], y).all():
            return None
        if len(kept) and not close(np.minimum.accumulate(scores[kept]), scores[kept], y).all():
            return None
        # the other boxes, each by its best class (its other classes share its fate)
        first = np.unique(src[np.argsort(-scores, kind="stable")], return_index=True)[1]
        rest = np.argsort(-scores, kind="stable")[first]
        rest = rest[~np.isin(src[rest], src[kept])] if a.nms_threshold <= SAME_BOX_SUPPRESSED else \
            np.setdiff1d(np.arange(len(scores)), kept)
        boxes = cand.boxes
        for j, k in enumerate(kept):
            if j and np.any(fork_iou(boxes[k], boxes[kept[:j]]) >= a.nms_threshold):
                return None
            covered = fork_iou(boxes[k], boxes[rest]) >= a.nms_threshold
            covered &= (scores[rest] <= scores[k]) | close(scores[rest], np.full(len(rest), scores[k]), y)
            rest = rest[~covered]
        if len(rest):
            return None
        return self._top(a, table[kept], y.dtype)

    # -- ONNX ----------------------------------------------------------------------------------

    def lower_scores(self, a: YoloAttrs, g: Lowering, obj: str, cls: str) -> tuple[str, str]:
        """Per box (N, HW, A, 1) inputs -> (score, class) of shape (N, HW, A, P): P = 1, or every
        class when each class of a box is a candidate of its own."""
        raise NotImplementedError

    def lower(self, a: YoloAttrs, g: Lowering) -> None:
        per = 1 if a.one_class_per_box else a.num_classes
        boxes, scores, classes = [], [], []
        for t, gr in enumerate(a.grids):
            hw, na, ln = gr.height * gr.width, a.num_box, gr.length
            x = g.inputs[t]
            if g.in_shapes[t][1] > na * ln:  # the fork reads the first A·L channels
                x = g.op("Slice", [x, g.int64s([0], "from"), g.int64s([na * ln], "to"), g.int64s([1], "axis1")])
            x = g.op("Reshape", [x, g.int64s([-1, na, ln, hw], "blocks")])
            x = g.op("Transpose", [x], perm=[0, 3, 1, 2])  # (N, HW, A, L)
            tx, ty, tw, th, obj, cls, *_ = g.op("Split", [x, g.int64s(
                [1, 1, 1, 1, 1, a.num_classes] + ([ln - 5 - a.num_classes] if ln > 5 + a.num_classes else []),
                "split")], n_out=6 + (ln > 5 + a.num_classes), axis=-1)
            cell = np.arange(hw, dtype=np.float32).reshape(1, hw, 1, 1)
            bx = g.op("Div", [g.op("Add", [g.const(cell % gr.width, "col"), g.op("Sigmoid", [tx])]),
                              g.const(float(gr.width), "grid_w")])
            by = g.op("Div", [g.op("Add", [g.const(cell // gr.width, "row"), g.op("Sigmoid", [ty])]),
                              g.const(float(gr.height), "grid_h")])
            bw = g.op("Mul", [g.op("Exp", [tw]), g.const(np.reshape(gr.anchor_w, (1, 1, na, 1)), "anchor_w")])
            bh = g.op("Mul", [g.op("Exp", [th]), g.const(np.reshape(gr.anchor_h, (1, 1, na, 1)), "anchor_h")])
            box = g.op("Concat", [bx, by, bw, bh], axis=-1)  # (N, HW, A, 4)
            score, label = self.lower_scores(a, g, obj, cls)
            if per > 1:  # one copy of the box per class
                box = g.op("Expand", [g.op("Unsqueeze", [box, g.int64s([3], "axis3")]),
                                      g.int64s([1, 1, 1, per, 1], "per_class")])
            boxes.append(g.op("Reshape", [box, g.int64s([-1, 4], "boxes")]))
            scores.append(g.op("Reshape", [score, g.int64s([-1], "flat")]))
            classes.append(g.op("Reshape", [label, g.int64s([-1], "flat")]))
        cat = (lambda xs: xs[0] if len(xs) == 1 else g.op("Concat", xs, axis=0))
        boxes, scores, classes = cat(boxes), cat(scores), cat(classes)
        m = a.rows  # candidates over the batch, = the rows
        # the fork's sort: by score, highest first; TopK breaks ties by the lower index, as the
        # reference's stable sort does (NonMaxSuppression's own order of ties is unspecified)
        score, order = g.op("TopK", [scores, g.int64s([m], "all")], n_out=2, axis=0, largest=1, sorted=1)
        # onnxruntime keeps scores > s and suppresses at IoU > t: the float just below the fork's
        # threshold gives its >= (YOLOv3's score test is strict: > as given)
        below = (lambda v: float(np.nextafter(np.float32(v), np.float32(-np.inf))))
        passed = g.op("Greater", [score, g.const(below(a.confidence_threshold) if a.version == 2
                                                 else a.confidence_threshold, "confidence_threshold")])
        # NMS sees each candidate's rank (m, m - 1, ..., 1; 0 when under the threshold): its order
        # is then the sort's, ties included
        rank = g.op("Range", [g.const(float(m), "top"), g.const(0.0, "bottom"), g.const(-1.0, "down")])
        ranked = g.op("Where", [passed, rank, g.const(0.0, "zero")])
        iou = min(max(below(a.nms_threshold), 0.0), 1.0)
        keep = m if a.nms_threshold > 0 else 1  # IoU >= 0 holds for every pair: the best alone
        sel = g.op("NonMaxSuppression", [g.op("Unsqueeze", [g.op("Gather", [boxes, order], axis=0),
                                                            g.int64s([0], "axis0")]),
                                         g.op("Reshape", [ranked, g.int64s([1, 1, -1], "nms_scores")]),
                                         g.int64s([keep], "max_out"), g.const([iou], "iou"),
                                         g.const([0.5], "nms_score_threshold")], center_point_box=1)
        idx = g.op("Gather", [sel, g.int64s([2], "box_column")], axis=1)  # (K, 1) places in the sort
        # the kept places first, in the sort's order, then the others
        empty = g.op("ConstantOfShape", [g.int64s([m], "num")], value=np.zeros(1, np.float32))
        table = g.op("ScatterND", [empty, idx, g.op("GatherND", [rank, idx])])
        ranks, places = g.op("TopK", [table, g.int64s([m], "all")], n_out=2, axis=0, largest=1, sorted=1)
        valid = g.op("Greater", [ranks, g.const(0.0, "zero")])
        best = g.op("Gather", [score, places], axis=0)
        pos = g.op("Gather", [order, places], axis=0)
        b = g.op("Gather", [boxes, pos], axis=0)
        bx, by, bw, bh = g.op("Split", [b], n_out=4, axis=-1)
        half = g.const(0.5, "half")
        hw_, hh_ = g.op("Mul", [bw, half]), g.op("Mul", [bh, half])
        label = g.op("Add", [g.cast(g.op("Gather", [classes, pos], axis=0), np.float32), g.const(1.0, "one")])
        # the image column: 0 on a detection; with none at all, the fork's [i, -1, ...] per image
        row = g.op("Range", [g.const(0.0, "start"), g.const(float(m), "limit"), g.const(1.0, "delta")])
        none = g.op("Not", [g.cast(g.op("ReduceMax", [g.cast(valid, np.float32)], keepdims=0), np.bool_)])
        image = g.op("Where", [valid, g.const(0.0, "zero"),
                               g.op("Where", [g.op("And", [none, g.op("Less", [row, g.const(float(a.batch), "n")])]),
                                              row, g.const(-1.0, "minus_one")])])
        unsq = g.int64s([-1], "last")
        rows = g.op("Concat", [g.op("Sub", [bx, hw_]), g.op("Sub", [by, hh_]),
                               g.op("Add", [bx, hw_]), g.op("Add", [by, hh_])], axis=-1)
        rows = g.op("Concat", [g.op("Unsqueeze", [label, unsq]), g.op("Unsqueeze", [best, unsq]), rows], axis=-1)
        rows = g.op("Where", [g.op("Unsqueeze", [valid, unsq]), rows, g.const(-1.0, "minus_one")])
        rows = g.op("Concat", [g.op("Unsqueeze", [image, unsq]), rows], axis=-1)
        g.op("Reshape", [rows, g.int64s([1, 1, m, 7], "out_shape")], g.outputs)


@register
class YoloDetectionOutput(_YoloOutput):
    """YOLOv2's region output (MobileNet-YOLO's YoloDetectionOutput): bottom 0 and, when given,
    bottom 1 (the fork reads no more), each with a square grid (the fork decodes both axes with
    the grid's width) and ``num_box`` anchor blocks of C / num_box channels. A box's class is the
    argmax of the softmax of its class logits, its score σ(objectness) times that probability;
    boxes with score >= confidence_threshold are candidates. Anchors: the bias pair n divided by
    the grid size. ``side`` (overridden by the bottom's width), ``coords`` (the fork reads 4)
    and ``label_map_file`` (names only) do not change the output."""

    type_name = "YoloDetectionOutput"
    num_bottoms = (1, 2)
    examples = (
        Example('layer { name: "det" type: "YoloDetectionOutput" bottom: "in0" top: "out" '
                'yolo_detection_output_param { num_classes: 3 num_box: 2 confidence_threshold: 0.1 '
                'nms_threshold: 0.3 biases: 1.0 biases: 1.5 biases: 2.5 biases: 2.0 } }', ((1, 16, 3, 3),), "v2"),
        Example('layer { name: "det" type: "YoloDetectionOutput" bottom: "in0" bottom: "in1" top: "out" '
                'yolo_detection_output_param { num_classes: 2 num_box: 1 confidence_threshold: 0.2 '
                'biases: 1.2 biases: 0.8 } }', ((2, 9, 2, 2), (2, 9, 4, 4)), "two_bottoms"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> YoloAttrs:
        p = layer.yolo_detection_output_param
        biases = _common_params(p, ctx)
        if len(biases) < 2 * p.num_box:
            raise ctx.error(f"{len(biases)} biases for {p.num_box} anchors; give a (width, height) pair per anchor")
        return YoloAttrs(2, int(p.num_classes), int(p.num_box), float(p.confidence_threshold),
                         float(p.nms_threshold), biases)

    def resolve(self, a: YoloAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> YoloAttrs:
        grids = []
        for t, s in enumerate(shapes):
            need_4d(s, ctx, f"bottom {t}")
            if s[2] != s[3]:
                raise ctx.error(f"bottom {t} is {s[2]}x{s[3]}; the fork decodes a square grid (side = width), "
                                f"so its height must equal its width")
            if s[1] % a.num_box:
                raise ctx.error(f"bottom {t}'s {s[1]} channels do not split into {a.num_box} anchor blocks")
            length = s[1] // a.num_box
            self._check_grid(a, t, s, ctx, 5 + a.num_classes)
            if s[0] != shapes[0][0]:
                raise ctx.error(f"the bottoms disagree on the batch size: {s[0]} vs {shapes[0][0]}")
            side = s[3]
            grids.append(YoloGrid(side, side, length, tuple(a.biases[2 * n] / side for n in range(a.num_box)),
                                  tuple(a.biases[2 * n + 1] / side for n in range(a.num_box))))
        return replace(a, grids=tuple(grids), batch=int(shapes[0][0]))

    def candidates(self, a: YoloAttrs, xs: Sequence[np.ndarray]) -> Candidates:
        parts, seen = [], 0
        for x, gr in zip(xs, a.grids):
            t = self._blocks(a, x, gr)
            logits = t[:, 5:5 + a.num_classes]
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            prob = e / e.sum(axis=1, keepdims=True)
            cls = prob.argmax(axis=1)  # the first of equal maxima, as the fork's strict >
            score = as_float(sigmoid(t[:, 4]) * prob[np.arange(len(cls)), cls])
            keep = np.flatnonzero(score >= as_float(a.confidence_threshold))
            parts.append(Candidates(self._decode(a, t, gr)[keep], score[keep], cls[keep], seen + keep))
            seen += len(t)
        return Candidates.join(parts)

    def lower_scores(self, a: YoloAttrs, g: Lowering, obj: str, cls: str) -> tuple[str, str]:
        prob = g.op("Softmax", [cls], axis=-1)
        best = g.op("ReduceMax", [prob], axes=[-1], keepdims=1)
        return g.op("Mul", [g.op("Sigmoid", [obj]), best]), g.op("ArgMax", [prob], axis=-1, keepdims=1)


@register
class Yolov3DetectionOutput(_YoloOutput):
    """MobileNet-YOLO's Yolov3DetectionOutput: one bottom per mask group (``mask_group_num``
    bottoms), each with ``num_box`` anchor blocks of 5 + num_classes channels. Every class c of
    every box is a candidate of its own with score σ(class c) · σ(objectness), kept when the
    score is > confidence_threshold (strictly). Bottom t's anchor n uses the bias pair
    mask[t·G + n] (G = len(mask) / mask_group_num), divided by the grid size times
    anchors_scale[t]. gaussian_box (Gaussian YOLOv3) is refused: the fork's CPU and GPU paths
    compute it differently (the CPU one reads its objectness from memory it never wrote)."""

    type_name = "Yolov3DetectionOutput"
    num_bottoms = (1, None)
    examples = (
        Example('layer { name: "det" type: "Yolov3DetectionOutput" bottom: "in0" bottom: "in1" top: "out" '
                'yolov3_detection_output_param { num_classes: 2 num_box: 2 confidence_threshold: 0.3 '
                'nms_threshold: 0.45 biases: 10 biases: 14 biases: 23 biases: 27 biases: 37 biases: 58 '
                'biases: 81 biases: 82 mask: 2 mask: 3 mask: 0 mask: 1 mask_group_num: 2 '
                'anchors_scale: 32 anchors_scale: 16 } }', ((1, 14, 2, 2), (1, 14, 4, 3)), "v3"),
        Example('layer { name: "det" type: "Yolov3DetectionOutput" bottom: "in0" top: "out" '
                'yolov3_detection_output_param { num_classes: 3 num_box: 1 confidence_threshold: 0.2 '
                'nms_threshold: 1.5 biases: 30 biases: 40 mask: 0 mask_group_num: 1 anchors_scale: 16 } }',
                ((2, 9, 3, 3),), "every_class_a_candidate"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> YoloAttrs:
        p = layer.yolov3_detection_output_param
        biases = _common_params(p, ctx)
        if p.gaussian_box:
            raise ctx.error("gaussian_box (Gaussian YOLOv3) is not supported: the fork's CPU and GPU forward "
                            "passes compute it differently (the CPU one reads its objectness from memory it "
                            "never writes), so there is no one result to reproduce", UnsupportedError)
        if p.mask_group_num < 1:
            raise ctx.error(f"mask_group_num must be positive, got {p.mask_group_num}")
        mask, scales = tuple(int(v) for v in p.mask), tuple(int(v) for v in p.anchors_scale)
        groups = len(mask) // p.mask_group_num
        last = (p.mask_group_num - 1) * groups + p.num_box  # mask entries the fork reads
        if len(mask) < last:
            raise ctx.error(f"{len(mask)} mask values for {p.mask_group_num} groups of {p.num_box} anchors "
                            f"(the fork reads mask[t·{groups} + n]); give at least {last}")
        for m in mask[:last]:
            if 2 * m + 1 >= len(biases):
                raise ctx.error(f"mask value {m} picks bias pair {m}, but there are {len(biases) // 2} pairs")
        if len(scales) < p.mask_group_num or 0 in scales[:p.mask_group_num]:
            raise ctx.error(f"anchors_scale needs a positive value per bottom ({p.mask_group_num}), got {list(scales)}")
        return YoloAttrs(3, int(p.num_classes), int(p.num_box), float(p.confidence_threshold),
                         float(p.nms_threshold), biases, scales, mask, int(p.mask_group_num))

    def resolve(self, a: YoloAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> YoloAttrs:
        if len(shapes) != a.mask_group_num:
            raise ctx.error(f"{len(shapes)} bottoms, but mask_group_num is {a.mask_group_num}; the fork "
                            f"requires one bottom per mask group")
        groups = len(a.mask) // a.mask_group_num
        grids = []
        for t, s in enumerate(shapes):
            self._check_grid(a, t, s, ctx, 5 + a.num_classes)
            if s[0] != shapes[0][0]:
                raise ctx.error(f"the bottoms disagree on the batch size: {s[0]} vs {shapes[0][0]}")
            h, w = s[2], s[3]
            pairs = [a.mask[t * groups + n] for n in range(a.num_box)]
            net_w, net_h = w * a.anchors_scale[t], h * a.anchors_scale[t]
            grids.append(YoloGrid(h, w, 5 + a.num_classes, tuple(a.biases[2 * m] / net_w for m in pairs),
                                  tuple(a.biases[2 * m + 1] / net_h for m in pairs)))
        return replace(a, grids=tuple(grids), batch=int(shapes[0][0]))

    def candidates(self, a: YoloAttrs, xs: Sequence[np.ndarray]) -> Candidates:
        parts, seen = [], 0
        for x, gr in zip(xs, a.grids):
            t = self._blocks(a, x, gr)
            score = as_float(sigmoid(t[:, 5:5 + a.num_classes]) * sigmoid(t[:, 4:5]))  # (M, classes)
            box, cls = np.nonzero(score > as_float(a.confidence_threshold))  # box by box, classes ascending
            parts.append(Candidates(self._decode(a, t, gr)[box], score[box, cls], cls, seen + box))
            seen += len(t)
        return Candidates.join(parts)

    def lower_scores(self, a: YoloAttrs, g: Lowering, obj: str, cls: str) -> tuple[str, str]:
        score = g.op("Mul", [g.op("Sigmoid", [cls]), g.op("Sigmoid", [obj])])  # (N, HW, A, classes)
        if a.one_class_per_box:  # the best class of a box stands for its copies (one_class_per_box)
            return (g.op("ReduceMax", [score], axes=[-1], keepdims=1),
                    g.op("ArgMax", [score], axis=-1, keepdims=1))
        labels = np.arange(a.num_classes, dtype=np.int64).reshape(1, 1, 1, -1)
        return score, g.op("Expand", [g.const(labels, "labels", np.int64), g.op("Shape", [score])])
