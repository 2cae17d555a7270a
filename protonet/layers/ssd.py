"""SSD's detection head layers (weiliu89/caffe, branch ssd): PriorBox and DetectionOutput.

(SSD's Permute and Normalize live in :mod:`protonet.layers.forks`.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from ..errors import LayerContext, ProtonetError, UnsupportedError
from ..limits import check_constant
from .base import FLT_MAX, Example, Layer, Shape, enum_name, prod
from .lowering import Lowering
from .registry import register


def _values(msg: Any, field: str) -> list[float]:
    """A numeric field's values as a list, repeated or not."""
    v = getattr(msg, field)
    return [float(v)] if isinstance(v, (int, float)) else [float(x) for x in v]


# -- PriorBox ------------------------------------------------------------------------------------

#: the dialect name under which a net's PriorBox layers follow sfzhang15/FaceBoxes' fork
FACEBOXES = "faceboxes"
#: FaceBoxes' densified anchors: min_size -> (anchors per side of a cell, their spacing in pixels)
FACEBOXES_DENSE: dict[int, tuple[int, float]] = {32: (4, 8.0), 64: (2, 16.0)}


class PriorCountError(ProtonetError):
    """DetectionOutput's loc or conf bottom holds predictions for another number of priors than
    its priors bottom: the net was made for another PriorBox rule (or is wrong)."""

    def __init__(self, message: str, loc: Any = None, priors: int = 0):
        super().__init__(message, loc)
        self.priors = priors  # the number of priors the priors bottom holds


@dataclass(frozen=True)
class PriorBoxAttrs:
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[float, ...]  # expanded as Caffe does: 1 first, then each new ar (and 1/ar with flip)
    clip: bool
    variances: tuple[float, ...]  # 1 or 4 values
    img_h: int  # 0: take the size of bottom 1
    img_w: int
    step_h: float  # 0: image size / feature map size
    step_w: float
    offset: float
    rule: str = "ssd"  # "ssd", or FACEBOXES (sfzhang15/FaceBoxes' fork)

    @property
    def num_priors(self) -> int:
        return len(cell_priors(self))


def cell_priors(a: PriorBoxAttrs) -> list[tuple[float, float, float, float]]:
    """The priors of one cell as (dx, dy, half width, half height) around the cell's centre, in
    Caffe's order: per min_size, its square box(es), the square sqrt(min·max) box, then one box
    per aspect ratio other than 1. Caffe stores min_size and max_size in ints before using them
    (30.5 acts as 30).

    SSD's square min box has half side min/2. FaceBoxes' fork (rule FACEBOXES) gives every square
    min box half side (min − 1)/2 and replaces the one box of min_size 32 by 4×4 boxes and of 64
    by 2×2 (:data:`FACEBOXES_DENSE`), shifted from the cell's centre by k·spacing for k in
    −n/2 .. n/2 − 1, row by row (y outer, x inner); its other boxes are SSD's."""
    out: list[tuple[float, float, float, float]] = []
    for k, mn in enumerate(a.min_sizes):
        m = int(mn)
        if a.rule == FACEBOXES:
            n, spacing = FACEBOXES_DENSE.get(m, (1, 0.0))
            half = (m - 1) / 2
            out += [(j * spacing, i * spacing, half, half) for i in range(-(n // 2), n - n // 2)
                    for j in range(-(n // 2), n - n // 2)]
        else:
            out.append((0.0, 0.0, m / 2, m / 2))
        if a.max_sizes:
            side = math.sqrt(m * int(a.max_sizes[k]))
            out.append((0.0, 0.0, side / 2, side / 2))
        for ar in a.aspect_ratios:
            if abs(ar - 1.0) < 1e-6:
                continue
            out.append((0.0, 0.0, m * math.sqrt(ar) / 2, m / math.sqrt(ar) / 2))
    return out


def faceboxes_declared(a: PriorBoxAttrs) -> int:
    """The priors per cell that FaceBoxes' fork sizes its output for: 21 when there are three
    min_sizes (whatever they are), else aspect ratios × min_sizes; plus one per max_size."""
    base = 21 if len(a.min_sizes) == 3 else len(a.aspect_ratios) * len(a.min_sizes)
    return base + len(a.max_sizes)


def faceboxes_candidate(layer: Any) -> bool:
    """Whether FaceBoxes' fork gives this layer (a LayerParameter) another number of priors than
    SSD's can: a PriorBox with three min_sizes (the fork's 21 per cell)."""
    return layer.type == "PriorBox" and len(layer.prior_box_param.min_size) == 3


def prior_boxes(a: PriorBoxAttrs, layer_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """PriorBox's output (1, 2, H·W·num_priors·4) from the two bottoms' spatial sizes."""
    lh, lw = layer_hw
    img_h, img_w = (a.img_h, a.img_w) if a.img_h and a.img_w else image_hw
    step_h, step_w = (a.step_h, a.step_w) if a.step_h and a.step_w else (img_h / lh, img_w / lw)
    dx, dy, hw, hh = (np.array(c) for c in zip(*cell_priors(a)))  # each (P,)
    cx = (np.arange(lw) + a.offset) * step_w  # (W,)
    cy = (np.arange(lh) + a.offset) * step_h  # (H,)
    cx, cy = np.meshgrid(cx, cy)  # (H, W)
    cx, cy = cx[:, :, None] + dx, cy[:, :, None] + dy  # (H, W, P)
    boxes = np.stack([(cx - hw) / img_w, (cy - hh) / img_h,
                      (cx + hw) / img_w, (cy + hh) / img_h], axis=-1)  # (H, W, P, 4)
    boxes = boxes.reshape(-1)
    if a.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    var = np.broadcast_to(np.array(a.variances if len(a.variances) == 4 else a.variances * 4),
                          (boxes.size // 4, 4)).reshape(-1)
    return np.stack([boxes, var])[None]


def _arange(g: Lowering, n: int, dtype: Any, hint: str) -> str:
    """0, 1, ..., n - 1 as a Range node (a table built at run time, not stored in the model)."""
    return g.op("Range", [g.const(np.array(0, dtype=dtype), f"{hint}_start", dtype),
                          g.const(np.array(n, dtype=dtype), f"{hint}_limit", dtype),
                          g.const(np.array(1, dtype=dtype), f"{hint}_delta", dtype)])


@register
class PriorBox(Layer):
    """SSD prior (anchor) boxes for one feature map (bottom 0) of an image (bottom 1); only their
    shapes matter. Output (1, 2, H·W·num_priors·4): channel 0 the boxes [xmin, ymin, xmax, ymax]
    normalised by the image size, ordered by row, column, then prior (per min_size: the min box,
    the sqrt(min·max) box, the aspect-ratio boxes); channel 1 the variances. Centres
    ((w + offset)·step_w, (h + offset)·step_h), step = image size / map size unless given;
    clip bounds the boxes to [0, 1]. Lowered as a constant.

    In a net read in the FACEBOXES dialect (sfzhang15/FaceBoxes' fork; :func:`cell_priors`), square
    min boxes are one pixel narrower and those of min_size 32 and 64 are densified; the fork sizes
    its output by its own rule (:func:`faceboxes_declared`), so a layer whose boxes do not fill
    exactly that (the fork would write past its output or leave part of it unset) is refused."""

    type_name = "PriorBox"
    num_bottoms = (2, 2)
    examples = (
        Example('layer { name: "pb" type: "PriorBox" bottom: "in0" bottom: "in1" top: "out" prior_box_param { '
                'min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false variance: 0.1 variance: 0.1 '
                'variance: 0.2 variance: 0.2 step: 8 offset: 0.5 } }', ((1, 4, 3, 4), (1, 3, 24, 32)), "ssd"),
        Example('layer { name: "pb" type: "PriorBox" bottom: "in0" bottom: "in1" top: "out" prior_box_param { '
                'min_size: 20 min_size: 50 aspect_ratio: 3 aspect_ratio: 0.5 flip: false clip: true } }',
                ((1, 2, 2, 3), (1, 3, 40, 60)), "two_sizes_clip"),
        Example('layer { name: "pb" type: "PriorBox" bottom: "in0" bottom: "in1" top: "out" prior_box_param { '
                'min_size: 16 img_h: 100 img_w: 80 step_h: 20 step_w: 16 offset: 0 variance: 0.2 } }',
                ((2, 2, 5, 5), (2, 3, 10, 10)), "img_step_hw"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> PriorBoxAttrs:
        p = layer.prior_box_param
        for name in ("min_size", "max_size", "aspect_ratio", "variance", "step", "step_h", "step_w", "offset"):
            bad = [v for v in _values(p, name) if not math.isfinite(v)]
            if bad:
                raise ctx.error(f"{name} must be a finite number, got {bad[0]}")
        mins = tuple(float(v) for v in p.min_size)
        if not mins:
            raise ctx.error("min_size missing; give at least one min_size")
        if any(v <= 0 for v in mins):
            raise ctx.error(f"min_size must be positive, got {list(mins)}")
        maxs = tuple(float(v) for v in p.max_size)
        if maxs and len(maxs) != len(mins):
            raise ctx.error(f"{len(maxs)} max_size values for {len(mins)} min_size values; give one per min_size")
        for mn, mx in zip(mins, maxs):
            if mx <= mn:
                raise ctx.error(f"max_size {mx:g} must be greater than min_size {mn:g}")
        ars = [1.0]
        for ar in p.aspect_ratio:
            if ar <= 0:
                raise ctx.error(f"aspect_ratio must be positive, got {ar:g}")
            if any(abs(ar - e) < 1e-6 for e in ars):
                continue
            ars.append(float(ar))
            if p.flip:
                ars.append(1.0 / ar)
        var = tuple(float(v) for v in p.variance)
        if len(var) not in (0, 1, 4):
            raise ctx.error(f"give 1 or 4 variance values, got {len(var)}")
        if any(v <= 0 for v in var):
            raise ctx.error(f"variance must be positive, got {list(var)}")
        if p.HasField("img_h") or p.HasField("img_w"):
            if p.HasField("img_size"):
                raise ctx.error("give either img_size or img_h/img_w, not both")
            img_h, img_w = int(p.img_h), int(p.img_w)
            if img_h <= 0 or img_w <= 0:
                raise ctx.error("img_h and img_w must both be positive")
        elif p.HasField("img_size"):
            if p.img_size <= 0:
                raise ctx.error("img_size must be positive")
            img_h = img_w = int(p.img_size)
        else:
            img_h = img_w = 0
        if p.HasField("step_h") or p.HasField("step_w"):
            if p.HasField("step"):
                raise ctx.error("give either step or step_h/step_w, not both")
            step_h, step_w = float(p.step_h), float(p.step_w)
            if step_h <= 0 or step_w <= 0:
                raise ctx.error("step_h and step_w must both be positive")
        elif p.HasField("step"):
            if p.step <= 0:
                raise ctx.error("step must be positive")
            step_h = step_w = float(p.step)
        else:
            step_h = step_w = 0.0
        a = PriorBoxAttrs(mins, maxs, tuple(ars), bool(p.clip), var or (0.1,), img_h, img_w,
                          step_h, step_w, float(p.offset))
        if FACEBOXES not in ctx.dialects:
            return a
        a = replace(a, rule=FACEBOXES)
        if a.num_priors != faceboxes_declared(a):
            raise ctx.error(f"sfzhang15/FaceBoxes' PriorBox would write {a.num_priors} boxes per cell into an output "
                            f"sized for {faceboxes_declared(a)} (its rule: 21 for three min_sizes, otherwise aspect "
                            f"ratios × min_sizes, plus one per max_size), so its results are undefined")
        return a

    def infer(self, a: PriorBoxAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        for i, s in enumerate(shapes):
            if len(s) != 4:
                raise ctx.error(f"bottom {i} must be 4-D (N, C, H, W), got shape {tuple(s)}")
        s = shapes[0]
        out = (1, 2, s[2] * s[3] * a.num_priors * 4)
        check_constant(ctx, "the prior boxes (a constant)", out)
        return [out]

    def kernel(self, a: PriorBoxAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        return [prior_boxes(a, xs[0].shape[2:], xs[1].shape[2:]).astype(xs[0].dtype)]

    def lower(self, a: PriorBoxAttrs, g: Lowering) -> None:
        priors = prior_boxes(a, g.in_shapes[0][2:], g.in_shapes[1][2:])
        g.op("Identity", [g.const(priors, "priors")], g.outputs)


# -- DetectionOutput -----------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectionGeometry:
    """What DetectionOutput's bottom shapes say, resolved at build time."""

    num_priors: int
    loc_classes: int
    rows: int  # rows per image in the padded output


@dataclass(frozen=True)
class DetectionOutputAttrs:
    num_classes: int
    share_location: bool
    background_label_id: int
    nms_threshold: float
    top_k: int  # -1: no limit
    confidence_threshold: float  # -FLT_MAX when unset
    keep_top_k: int  # -1: no limit
    code_type: str  # CORNER, CENTER_SIZE, CORNER_SIZE
    variance_encoded_in_target: bool
    geometry: DetectionGeometry | None = None  # resolved from the bottoms


@register
class DetectionOutput(Layer):
    """SSD's DetectionOutput with bottoms (loc, conf, priors): decode each prior's location
    prediction (code_type CORNER, CENTER_SIZE or CORNER_SIZE; variances from the priors unless
    variance_encoded_in_target), then per image and per class except background_label_id:
    keep the boxes with score > confidence_threshold, the top_k best of them, and greedy NMS
    (a box is dropped when its IoU with a kept box exceeds nms_threshold); then the keep_top_k
    best detections of the image over all classes. Rows [image_id, label, score, xmin, ymin,
    xmax, ymax], ordered as Caffe writes them: by label, and by score (descending) in a label.

    Static shape (a divergence, documented): Caffe emits a variable number of rows (and one
    [i, -1, ...] row per image when nothing is found). protonet gives every image a fixed block
    of R rows, R = keep_top_k, or (classes − background) · min(top_k, num_priors) when that is
    smaller or keep_top_k is -1; the output is (1, 1, N·R, 7) with unused rows all -1.
    Ties between equal scores may be ordered differently by onnxruntime's NonMaxSuppression.
    nms_param.eta (adaptive NMS) other than 1 and save_output_param's file output are not
    supported (the latter is ignored)."""

    type_name = "DetectionOutput"
    num_bottoms = (3, 3)
    decides = True  # confidence threshold, sort and NMS on the decoded boxes
    examples = (
        Example('layer { name: "det" type: "DetectionOutput" bottom: "in0" bottom: "in1" bottom: "in2" top: "out" '
                'detection_output_param { num_classes: 3 share_location: true background_label_id: 0 '
                'nms_param { nms_threshold: 0.45 top_k: 10 } code_type: CENTER_SIZE keep_top_k: 5 '
                'confidence_threshold: 0.5 } }', ((1, 24 * 4), (1, 24 * 3), (1, 2, 24 * 4)), "center_size"),
        Example('layer { name: "det" type: "DetectionOutput" bottom: "in0" bottom: "in1" bottom: "in2" top: "out" '
                'detection_output_param { num_classes: 3 share_location: false background_label_id: 2 '
                'nms_param { nms_threshold: 0.3 } code_type: CORNER variance_encoded_in_target: true '
                'confidence_threshold: 0.2 } }', ((2, 6 * 3 * 4), (2, 6 * 3), (1, 2, 6 * 4)), "unshared_corner"),
        Example('layer { name: "det" type: "DetectionOutput" bottom: "in0" bottom: "in1" bottom: "in2" top: "out" '
                'detection_output_param { num_classes: 2 background_label_id: -1 '
                'nms_param { nms_threshold: 0.5 top_k: 4 } code_type: CORNER_SIZE keep_top_k: 6 } }',
                ((2, 8 * 4, 1, 1), (2, 8 * 2, 1, 1), (1, 2, 8 * 4)), "corner_size_all_classes"),
    )

    def parse(self, layer: Any, ctx: LayerContext) -> DetectionOutputAttrs:
        p = layer.detection_output_param
        if not p.HasField("num_classes") or p.num_classes <= 0:
            raise ctx.error("num_classes must be set to a positive number")
        nms = p.nms_param
        if nms.nms_threshold < 0:
            raise ctx.error(f"nms_threshold must be non-negative, got {nms.nms_threshold:g}")
        if nms.eta != 1:
            raise ctx.error(f"nms_param.eta {nms.eta:g} (adaptive NMS) is not supported; only eta 1",
                            UnsupportedError)
        top_k = int(nms.top_k) if nms.HasField("top_k") else -1
        if top_k == 0 or top_k < -1:
            raise ctx.error(f"nms_param.top_k must be positive (or -1 for no limit), got {top_k}")
        if p.keep_top_k == 0 or p.keep_top_k < -1:
            raise ctx.error(f"keep_top_k must be positive (or -1 for no limit), got {p.keep_top_k}")
        thr = float(p.confidence_threshold) if p.HasField("confidence_threshold") else -FLT_MAX
        return DetectionOutputAttrs(int(p.num_classes), bool(p.share_location), int(p.background_label_id),
                                    float(nms.nms_threshold), top_k, thr, int(p.keep_top_k),
                                    enum_name(p, "code_type"), bool(p.variance_encoded_in_target))

    def _fg_classes(self, a: DetectionOutputAttrs) -> int:
        return a.num_classes - (1 if 0 <= a.background_label_id < a.num_classes else 0)

    def resolve(self, a: DetectionOutputAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> DetectionOutputAttrs:
        """Priors, location classes and output rows per image, from the bottoms (checked)."""
        loc, conf, prior = shapes
        if len(prior) != 3 or prior[0] != 1 or prior[1] != 2 or prior[2] % 4:
            raise ctx.error(f"bottom 2 (priors) must be (1, 2, num_priors·4), got shape {tuple(prior)}")
        if loc[0] != conf[0]:
            raise ctx.error(f"loc and conf bottoms disagree on the batch size: {loc[0]} vs {conf[0]}")
        p = prior[2] // 4
        lc = 1 if a.share_location else a.num_classes
        if prod(loc[1:]) != p * lc * 4:
            raise PriorCountError(f"bottom 0 (loc) holds {prod(loc[1:])} values per image; {p} priors × {lc} "
                                  f"location class(es) × 4 = {p * lc * 4} expected", ctx.loc, p)
        if prod(conf[1:]) != p * a.num_classes:
            raise PriorCountError(f"bottom 1 (conf) holds {prod(conf[1:])} values per image; {p} priors × "
                                  f"{a.num_classes} classes = {p * a.num_classes} expected", ctx.loc, p)
        if self._fg_classes(a) == 0:
            raise ctx.error("no class is left once the background class is removed")
        per_class = p if a.top_k < 0 else min(a.top_k, p)
        most = self._fg_classes(a) * per_class
        rows = most if a.keep_top_k < 0 else min(a.keep_top_k, most)
        return replace(a, geometry=DetectionGeometry(p, lc, rows))

    def infer(self, a: DetectionOutputAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        # the lowering embeds four tables of up to images × classes × priors values
        check_constant(ctx, "the detection tables (4 × images × classes × priors)",
                       (4, shapes[0][0], a.num_classes, a.geometry.num_priors))
        return [(1, 1, shapes[0][0] * a.geometry.rows, 7)]

    # -- numpy ---------------------------------------------------------------------------------

    def decode(self, a: DetectionOutputAttrs, loc: np.ndarray, priors: np.ndarray, var: np.ndarray) -> np.ndarray:
        """Boxes from predictions ``loc`` (..., P, Lc, 4) and priors/variances (P, 4)."""
        if a.variance_encoded_in_target:
            var = np.ones_like(var)
        # priors (P, 1) against predictions (..., P, Lc)
        px0, py0, px1, py1 = (priors[:, k, None] for k in range(4))
        l0, l1, l2, l3 = (loc[..., k] for k in range(4))
        v0, v1, v2, v3 = (var[:, k, None] for k in range(4))
        if a.code_type == "CORNER":
            return np.stack([px0 + v0 * l0, py0 + v1 * l1, px1 + v2 * l2, py1 + v3 * l3], axis=-1)
        pw, ph = px1 - px0, py1 - py0
        if a.code_type == "CORNER_SIZE":
            return np.stack([px0 + v0 * l0 * pw, py0 + v1 * l1 * ph, px1 + v2 * l2 * pw, py1 + v3 * l3 * ph],
                            axis=-1)
        cx = v0 * l0 * pw + (px0 + px1) / 2
        cy = v1 * l1 * ph + (py0 + py1) / 2
        w = np.exp(v2 * l2) * pw
        h = np.exp(v3 * l3) * ph
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)

    @staticmethod
    def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Caffe's JaccardOverlap of one normalised box against many (invalid boxes have size 0)."""
        def size(b: np.ndarray) -> np.ndarray:
            w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
            return np.where((w < 0) | (h < 0), 0.0, w * h)
        iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
        ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
        inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
        union = size(box) + size(boxes) - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(inter > 0, inter / union, 0.0)

    def nms(self, a: DetectionOutputAttrs, boxes: np.ndarray, scores: np.ndarray) -> list[int]:
        """Caffe's ApplyNMSFast (eta 1): indices kept, best score first."""
        cand = np.flatnonzero(scores > a.confidence_threshold)
        cand = cand[np.argsort(-scores[cand], kind="stable")]
        if a.top_k >= 0:
            cand = cand[:a.top_k]
        kept: list[int] = []
        for i in cand:  # greedy and sequential by nature
            if not kept or np.all(self.iou(boxes[i], boxes[kept]) <= a.nms_threshold):
                kept.append(int(i))
        return kept

    def kernel(self, a: DetectionOutputAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        loc, conf, prior = xs
        n = loc.shape[0]
        geo = a.geometry
        p, lc = geo.num_priors, geo.loc_classes
        priors = prior.reshape(2, p, 4)
        boxes = self.decode(a, loc.reshape(n, p, lc, 4), priors[0], priors[1])  # (N, P, Lc, 4)
        conf = conf.reshape(n, p, a.num_classes)
        out = np.full((n, geo.rows, 7), -1.0, dtype=loc.dtype)
        for i in range(n):
            dets = []  # (score, label, prior index); labels ascending, NMS order within
            for c in range(a.num_classes):
                if c == a.background_label_id:
                    continue
                b = boxes[i, :, 0 if a.share_location else c]
                dets += [(conf[i, k, c], c, k) for k in self.nms(a, b, conf[i, :, c])]
            if a.keep_top_k >= 0 and len(dets) > a.keep_top_k:
                dets = sorted(dets, key=lambda d: -d[0])[:a.keep_top_k]  # stable: ties keep label order
            dets = sorted(dets, key=lambda d: (d[1], -d[0]))
            for r, (s, c, k) in enumerate(dets[:geo.rows]):
                out[i, r] = [i, c, s, *boxes[i, k, 0 if a.share_location else c]]
        return [out.reshape(1, 1, n * geo.rows, 7)]

    # -- ONNX ----------------------------------------------------------------------------------

    def _decode_onnx(self, a: DetectionOutputAttrs, g: Lowering, loc4: str, prior: str, p: int) -> str:
        """Decode (N, P, Lc, 4) predictions against priors of shape (P, 1, 4) -> (N, P, Lc, 4)."""
        pr = g.op("Reshape", [prior, g.int64s([2, p, 1, 4], "prior_shape")])
        pb, pv = g.op("Split", [pr], n_out=2, axis=0)
        pb = g.op("Squeeze", [pb, g.int64s([0], "axis0")])
        pv = g.op("Squeeze", [pv, g.int64s([0], "axis0")])
        px0, py0, px1, py1 = g.op("Split", [pb], n_out=4, axis=-1)
        l0, l1, l2, l3 = g.op("Split", [loc4], n_out=4, axis=-1)
        if a.variance_encoded_in_target:
            v0 = v1 = v2 = v3 = None
        else:
            v0, v1, v2, v3 = g.op("Split", [pv], n_out=4, axis=-1)

        def mul(*xs: str | None) -> str:
            y = None
            for x in xs:
                if x is None:
                    continue
                y = x if y is None else g.op("Mul", [y, x])
            return y  # type: ignore[return-value]

        add, sub = (lambda x, y: g.op("Add", [x, y])), (lambda x, y: g.op("Sub", [x, y]))
        if a.code_type == "CORNER":
            parts = [add(px0, mul(v0, l0)), add(py0, mul(v1, l1)), add(px1, mul(v2, l2)), add(py1, mul(v3, l3))]
        else:
            pw, ph = sub(px1, px0), sub(py1, py0)
            if a.code_type == "CORNER_SIZE":
                parts = [add(px0, mul(v0, l0, pw)), add(py0, mul(v1, l1, ph)),
                         add(px1, mul(v2, l2, pw)), add(py1, mul(v3, l3, ph))]
            else:
                half = g.const(0.5, "half")
                cx = add(mul(v0, l0, pw), mul(add(px0, px1), half))
                cy = add(mul(v1, l1, ph), mul(add(py0, py1), half))
                hw = mul(g.op("Exp", [mul(v2, l2)]), pw, half)
                hh = mul(g.op("Exp", [mul(v3, l3)]), ph, half)
                parts = [sub(cx, hw), sub(cy, hh), add(cx, hw), add(cy, hh)]
        return g.op("Concat", parts, axis=-1)

    def lower(self, a: DetectionOutputAttrs, g: Lowering) -> None:
        geo = a.geometry
        p, lc, c, k = geo.num_priors, geo.loc_classes, a.num_classes, geo.rows
        loc, conf, prior = g.inputs
        i64 = np.int64
        boxes = self._decode_onnx(a, g, g.op("Reshape", [loc, g.int64s([-1, p, lc, 4], "loc_shape")]), prior, p)
        scores = g.op("Transpose", [g.op("Reshape", [conf, g.int64s([-1, p, c], "conf_shape")])], perm=[0, 2, 1])
        neg_inf = g.const(-np.inf, "neg_inf")
        # the background class never scores
        if 0 <= a.background_label_id < c:
            labels = g.op("Reshape", [_arange(g, c, np.int64, "labels"), g.int64s([1, c, 1], "labels_shape")])
            bg = g.op("Equal", [labels, g.int64s([a.background_label_id], "background")])
            scores = g.op("Where", [bg, neg_inf, scores])
        # Caffe's top_k picks each class's top_k candidates before NMS (ties: lower index first)
        if 0 <= a.top_k < p:
            _, top_idx = g.op("TopK", [scores, g.int64s([a.top_k], "top_k")], n_out=2, axis=-1, largest=1, sorted=1)
            zero = g.op("ConstantOfShape", [g.op("Shape", [scores])],
                        value=np.zeros(1, dtype=bool))
            ones = g.op("ConstantOfShape", [g.op("Shape", [top_idx])], value=np.ones(1, dtype=bool))
            picked = g.op("ScatterElements", [zero, top_idx, ones], axis=-1)
            scores = g.op("Where", [picked, scores, neg_inf])
        # NonMaxSuppression: boxes are given as [x1, y1, x2, y2]; the IoU is the same either way.
        # Caffe gives an inverted box (xmax < xmin or ymax < ymin) no overlap with anything, while
        # onnxruntime would reorder its corners: such boxes enter NMS as empty (zero-area) boxes.
        bx0, by0, bx1, by1 = g.op("Split", [boxes], n_out=4, axis=-1)
        inverted = g.op("Or", [g.op("Less", [bx1, bx0]), g.op("Less", [by1, by0])])
        nms_input = g.op("Where", [inverted, g.const(0.0, "zero"), boxes])
        if a.share_location:
            nms_boxes = g.op("Reshape", [nms_input, g.int64s([-1, p, 4], "nms_boxes")])
            nms_scores = scores
        else:
            per_class = g.op("Transpose", [nms_input], perm=[0, 2, 1, 3])  # (N, C, P, 4)
            nms_boxes = g.op("Reshape", [per_class, g.int64s([-1, p, 4], "nms_boxes")])
            nms_scores = g.op("Reshape", [scores, g.int64s([-1, 1, p], "nms_scores")])
        sel = g.op("NonMaxSuppression", [nms_boxes, nms_scores, g.int64s([p], "max_per_class"),
                                         g.const([a.nms_threshold], "iou"),
                                         g.const([a.confidence_threshold], "score_threshold")])
        if not a.share_location:  # (image·C + class, 0, box) -> (image, class, box)
            b, _, box = g.op("Split", [sel], n_out=3, axis=1)
            cc = g.int64s([c], "num_classes")
            sel = g.op("Concat", [g.op("Div", [b, cc]), g.op("Mod", [b, cc]), box], axis=1)
        # dense (N, C·P) score table of the survivors, -inf elsewhere; the best k per image
        sel_scores = g.op("GatherND", [scores, sel])
        empty = g.op("ConstantOfShape", [g.op("Shape", [scores])], value=np.full(1, -np.inf, np.float32))
        table = g.op("ScatterND", [empty, sel, sel_scores])
        table = g.op("Reshape", [table, g.int64s([-1, c * p], "table")])
        best, flat = g.op("TopK", [table, g.int64s([k], "keep")], n_out=2, axis=1, largest=1, sorted=1)
        valid = g.op("Greater", [best, neg_inf])
        pp = g.int64s([p], "num_priors")
        label, box_idx = g.op("Div", [flat, pp]), g.op("Mod", [flat, pp])
        # Caffe's row order: by label, then by score; unused rows last
        rank = g.op("Unsqueeze", [_arange(g, k, np.float32, "rank"), g.int64s([0], "axis0")])
        key_valid = g.op("Add", [g.op("Mul", [g.cast(label, np.float32), g.const(float(k), "k")]), rank])
        key = g.op("Where", [valid, key_valid, g.op("Add", [rank, g.const(float(c * k), "tail")])])
        _, order = g.op("TopK", [key, g.int64s([k], "keep")], n_out=2, axis=1, largest=0, sorted=1)
        label = g.op("GatherElements", [label, order], axis=1)
        box_idx = g.op("GatherElements", [box_idx, order], axis=1)
        best = g.op("GatherElements", [best, order], axis=1)
        valid = g.op("GatherElements", [valid, order], axis=1)
        # gather the decoded boxes
        n = g.op("Shape", [loc], end=1)  # the batch size as the model runs
        count = g.op("Range", [g.const(0, "start", i64),
                               g.op("Squeeze", [n, g.int64s([0], "axis0")]), g.const(1, "step", i64)])
        image = g.op("Expand", [g.op("Reshape", [count, g.int64s([-1, 1, 1], "image_shape")]),
                                g.shape_from(loc, 1, [k, 1], "rows_shape")])  # (N, k, 1): each row's image index
        if a.share_location:
            where = g.op("Concat", [image, g.op("Unsqueeze", [box_idx, g.int64s([-1], "last")])], axis=-1)
            det_boxes = g.op("GatherND", [g.op("Reshape", [boxes, g.int64s([-1, p, 4], "boxes")]), where])
        else:
            where = g.op("Concat", [image, g.op("Unsqueeze", [label, g.int64s([-1], "last")]),
                                    g.op("Unsqueeze", [box_idx, g.int64s([-1], "last")])], axis=-1)
            per_class = g.op("Transpose", [boxes], perm=[0, 2, 1, 3])
            det_boxes = g.op("GatherND", [per_class, where])  # (N, k, 4)
        unsq = g.int64s([-1], "last")
        rows = g.op("Concat", [g.cast(image, np.float32),
                               g.op("Unsqueeze", [g.cast(label, np.float32), unsq]),
                               g.op("Unsqueeze", [best, unsq]), det_boxes], axis=-1)
        rows = g.op("Where", [g.op("Unsqueeze", [valid, unsq]), rows, g.const(-1.0, "minus_one")])
        g.op("Reshape", [rows, g.int64s([1, 1, -1, 7], "out_shape")], g.outputs)

