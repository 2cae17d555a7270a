"""Answers people read: class names, boxes on the photo, and colour-mapped segmentation masks.

What an output *is* comes from the Caffe layer that produced it: the exporter records every graph
output's layer type under ``metadata_props["protonet.outputs"]`` (JSON, blob name -> type). For
an ONNX file without that entry the shape decides (:func:`output_kind`):

=================  ===================================================  ==============================
kind               produced by (or, without metadata, shaped like)      answer
=================  ===================================================  ==============================
``detections``     DetectionOutput or a YOLO head (1, 1, R, 7): rows     boxes with score > threshold
                   [image, label, score, xmin, ymin, xmax, ymax],
                   corners normalised to [0, 1] of the net input; a
                   row with label -1 is padding
``proposals``      Proposal's rois (R, 5): [image, x1, y1, x2, y2] in    boxes (with its scores top)
                   input pixels; an all-zero row is padding
``proposal_scores``Proposal's second top (R, 1)                         (read with the rois)
``segmentation``   any (N, C, H, W) with H·W > 1: a score map            argmax over C per pixel
``label_map``      ArgMax with axis 1 and one channel (N, 1, H, W)       the class per pixel
``classes``        (N, C) or (N, C, 1, 1)                                the top-k classes of a row
``other``          anything else                                         shape only
=================  ===================================================  ==============================

Boxes are given in pixels of the original photo: a corner at (x, y) in net-input pixels lies at
``((x + left) / sx, (y + top) / sy)`` on a photo that the preprocessing resized by (sy, sx)
(target size over photo size, or the shorter-side factor) and cut at (top, left)
(:class:`Geometry`, from :func:`protonet.images.resize_plan`); for an array input they stay in
the input's pixels, or as the net gives them when it has several inputs.

Two-stage detectors (py-faster-rcnn's Faster R-CNN, py-R-FCN; :func:`two_stage_outputs`): a net
with an ``im_info`` input (N, 3) whose outputs are a Proposal's rois (R, 5), class scores (R, C)
and box deltas (R, 4·C, or R-FCN's class-agnostic (R, 8)) is read as py-faster-rcnn's
``im_detect`` and its test code do (:func:`two_stage_detections`): a photo fills ``im_info`` with
(input height, width, im_scale) (:func:`im_info`); each roi is taken back to the photo, moved by
its class's deltas (``bbox_transform_inv``), clipped to the photo, and for each class j >= 1 the
boxes with score > threshold go through NMS (IoU > ``--nms``, default 0.3, cfg.TEST.NMS, is
suppressed) best first. The rois and deltas are then not answers of their own. A compiled model
carries the rois when it was compiled with ``--output rois --output cls_prob --output bbox_pred``;
a net compiled for one run keeps them by itself (:func:`keep_rois`).

Labels (:func:`read_labels`): a text file with one label a line (line k names class k; Caffe's
``synset_words.txt`` lines such as ``n01440764 tench, Tinca tinca`` are shown whole, as Caffe's
``classification`` example prints them), or SSD's ``labelmap.prototxt`` (a ``LabelMap`` text
message; ``display_name`` shown, indexed by ``label``).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import limits
from .errors import Location, ProtonetError, printable, quote
from .fileio import read_input, write_atomic

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
DEFAULT_TOP_K = 5
#: py-faster-rcnn's cfg.TEST.NMS: the IoU above which a class's lower-scored box is dropped
DEFAULT_NMS = 0.3

#: segmentation PNG: the VOC "void" index painted where the photo lies outside the net's input
VOID = 255

#: the picture formats --draw writes, by suffix
DRAW_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


# -- what an output is -------------------------------------------------------------------------

def output_types(model: Any) -> dict[str, str]:
    """Blob name -> Caffe layer type from a ModelProto's ``protonet.outputs`` entry ({} when it
    has none, or a malformed one: the metadata is untrusted and only a hint)."""
    from .export import OUTPUT_TYPES_KEY

    return _parse_output_types({p.key: p.value for p in model.metadata_props}.get(OUTPUT_TYPES_KEY))


def _parse_output_types(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    try:
        d = json.loads(text)
    except ValueError:
        d = None
    if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in d.items()):
        log.warning("ignoring a malformed protonet.outputs metadata entry")
        return {}
    return d


#: layer types whose top is DetectionOutput's rows (MobileNet-YOLO's heads write the same layout)
DETECTION_TYPES = frozenset({"DetectionOutput", "YoloDetectionOutput", "Yolov3DetectionOutput"})


def output_kind(layer_type: str | None, shape: Sequence[int]) -> str:
    """The kind of an output (table in the module docstring) from its layer type, or from its
    shape alone when the type is unknown (``None``: a foreign ONNX file)."""
    shape = tuple(shape)
    if layer_type in DETECTION_TYPES or (layer_type is None and len(shape) == 4 and shape[:2] == (1, 1)
                                           and shape[3] == 7):
        return "detections"
    if layer_type == "Proposal":
        return "proposals" if shape[-1:] == (5,) else "proposal_scores"
    if len(shape) == 4 and shape[1] == 1 and layer_type == "ArgMax":
        return "label_map"
    if len(shape) == 4 and shape[2] * shape[3] > 1:
        return "segmentation"
    if len(shape) == 2 or (len(shape) == 4 and shape[2] == shape[3] == 1):
        return "classes"
    return "other"


# -- labels ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Labels:
    """Class names by class index (``names[k]`` names class k; "" where a label map skips one)."""

    names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.names)

    def name(self, k: int) -> str:
        """The name of class ``k``, or its number when the file has no line for it."""
        return self.names[k] if 0 <= k < len(self.names) and self.names[k] else str(k)


def read_labels(path: str | Path) -> Labels:
    """Read a labels file (module docstring): one label a line (a last empty line ends the file,
    it is not a label), or an SSD ``LabelMap`` prototxt."""
    loc = Location(str(path))
    data = read_input(path, "labels", (limits.current().max_net_text_bytes, "MAX_NET_TEXT_BYTES"))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ProtonetError(f"labels are not UTF-8 text (byte {e.start})", loc) from None
    if Path(path).suffix.lower() == ".prototxt" or re.match(r"\s*item\s*\{", text):
        return Labels(_label_map(text, loc), str(path))
    lines = text.splitlines()
    if not lines:
        raise ProtonetError("no labels in the file", loc)
    return Labels(tuple(line.strip() for line in lines), str(path))


def _label_map(text: str, loc: Location) -> tuple[str, ...]:
    from google.protobuf import text_format

    from .frontend.schema import pb

    msg = pb.LabelMap()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        raise ProtonetError(f"not a LabelMap prototxt: {e}", loc) from None
    if not msg.item:
        raise ProtonetError("the LabelMap has no item", loc)
    most = max(it.label for it in msg.item)
    if min(it.label for it in msg.item) < 0 or most >= 1 << 16:
        raise ProtonetError("LabelMap labels must lie in [0, 65535]", loc)
    names = [""] * (most + 1)
    for it in msg.item:
        names[it.label] = it.display_name or it.name
    return tuple(names)


# -- where the input lies on the photo --------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """How the net input lies on the photo (H0, W0): the photo was resized by ``scale`` (sy, sx:
    resized pixels per photo pixel) and the input's ``input_hw`` cut out at ``offset`` (top, left)."""

    photo_hw: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[int, int]
    input_hw: tuple[int, int]

    @classmethod
    def identity(cls, input_hw: Sequence[int]) -> "Geometry":
        """No photo: the input's own pixels."""
        h, w = (int(d) for d in input_hw)
        return cls((h, w), (1.0, 1.0), (0, 0), (h, w))

    def to_photo(self, corners: np.ndarray) -> np.ndarray:
        """(..., 4) corners x1, y1, x2, y2 in input pixels -> photo pixels (float64)."""
        (sy, sx), (top, left) = self.scale, self.offset
        c = np.asarray(corners, dtype=np.float64)
        return np.stack([(c[..., 0] + left) / sx, (c[..., 1] + top) / sy,
                         (c[..., 2] + left) / sx, (c[..., 3] + top) / sy], axis=-1)

    def input_box(self) -> tuple[int, int, int, int]:
        """The net input's rectangle on the photo (x1, y1, x2, y2; x2, y2 exclusive), rounded."""
        h, w = self.input_hw
        x1, y1, x2, y2 = self.to_photo(np.array([0.0, 0.0, w, h]))
        return round(x1), round(y1), round(x2), round(y2)


def photo_geometry(path: str | Path, meta: Any, shape: Sequence[int]) -> Geometry:
    """Where the input that :func:`protonet.images.photo_feed` makes of the photo at ``path``
    lies on it: the resize and centre crop of :func:`protonet.images.resize_plan` for an input
    of ``shape`` (N, C, H, W) under the preprocessing ``meta`` (a Preprocess or None; with
    ``meta.embedded`` the net input inside the graph, ``meta.shape``)."""
    from PIL import Image

    from .frontend.preprocess import Preprocess
    from .images import IMAGE_FORMATS, resize_plan

    hw = tuple(meta.shape[2:]) if meta is not None and meta.embedded else tuple(shape[-2:])
    h, w = (int(d) for d in hw)
    if (h <= 0 or w <= 0) and meta is not None and len(meta.shape) == 4:
        h, w = (d if d > 0 else int(m) for d, m in zip((h, w), meta.shape[2:]))
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as im:
            h0, w0 = im.height, im.width
    except Exception as e:  # it was read a moment ago: the file changed under us
        raise ProtonetError(f"cannot read image: {e}", Location(str(path))) from None
    (th, tw), scale = resize_plan(meta or Preprocess(input="", shape=(1, 3, h, w)), (h0, w0), (h, w))
    return Geometry((h0, w0), scale or (th / h0, tw / w0), ((th - h) // 2, (tw - w) // 2), (h, w))


def array_geometry(feeds: Mapping[str, np.ndarray]) -> Geometry | None:
    """For an array input: the input's own pixels when the net has one 4-D input (beside it, at
    most a two-stage detector's im_info, :func:`im_info_input`), else None (boxes are then left
    as the net gives them)."""
    info = im_info_input({n: x.shape for n, x in feeds.items()})
    images = [x for n, x in feeds.items() if n != info]
    if len(images) != 1:
        return None
    return Geometry.identity(images[0].shape[-2:]) if images[0].ndim == 4 else None


def model_output_types(model: Any) -> dict[str, str]:
    """:func:`output_types` of a :class:`protonet.api.Model`: from its ONNX metadata when it was
    loaded from a file, else from the graph it was compiled to."""
    from .export import OUTPUT_TYPES_KEY, output_layer_types

    text = model.metadata.get(OUTPUT_TYPES_KEY)
    if text is None and model.path is None:
        return output_layer_types(model.graph)
    return _parse_output_types(text)


# -- answers -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ranked:
    """One of the top-k classes of a row."""

    index: int
    score: float
    label: str | None  # None without a labels file

    def record(self) -> dict[str, Any]:
        d: dict[str, Any] = {"class": self.index, "score": self.score}
        if self.label is not None:
            d["label"] = self.label
        return d


@dataclass(frozen=True)
class Box:
    """A detection in photo pixels (x2, y2 as the net gives them; not clipped)."""

    index: int  # class id; -1 for a region proposal
    label: str | None
    score: float | None  # None: rois without a scores top
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def name(self) -> str:
        if self.index < 0:
            return "proposal"
        return self.label if self.label is not None else str(self.index)

    def record(self) -> dict[str, Any]:
        d: dict[str, Any] = {"class": self.index, "score": self.score,
                             "box": [round(v, 2) for v in (self.x1, self.y1, self.x2, self.y2)]}
        if self.label is not None:
            d["label"] = self.label
        return d


@dataclass(frozen=True)
class Answer:
    """What one output says about one image: ``classes`` (top-k, and the whole row of ``scores``),
    ``boxes``, or a ``mask`` (class per pixel of the score map)."""

    output: str
    kind: str
    classes: tuple[Ranked, ...] = ()
    boxes: tuple[Box, ...] = ()
    mask: np.ndarray | None = field(default=None, compare=False)
    num_classes: int = 0
    scores: np.ndarray | None = field(default=None, compare=False)  # a classifier's whole row

    def record(self) -> Any:
        """A JSON-ready value: a list of classes or boxes, or the mask's class pixel counts."""
        if self.kind == "classes":
            return [r.record() for r in self.classes]
        if self.kind in ("detections", "proposals"):
            return [b.record() for b in self.boxes]
        if self.mask is not None:
            ids, counts = np.unique(self.mask, return_counts=True)
            return {str(int(k)): int(n) for k, n in zip(ids, counts)}
        return None


@dataclass(frozen=True)
class Reader:
    """Turns a model's outputs into answers: the outputs' layer types (:func:`output_types`), the
    labels, the box threshold (a box is kept when its score is above it) and k of the top-k."""

    types: Mapping[str, str]
    labels: Labels | None = None
    threshold: float = DEFAULT_THRESHOLD
    top_k: int = DEFAULT_TOP_K
    nms: float = DEFAULT_NMS  # a two-stage detector's per-class NMS threshold
    two_stage: "TwoStage | None" = None  # the model's two-stage detector outputs, if it is one

    def kind(self, name: str, shape: Sequence[int]) -> str:
        return output_kind(self.types.get(name), shape)

    def check_labels(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Refuse labels whose count differs from every classification output's class count (as
        Caffe's classification example does); ``shapes``: the outputs' declared shapes."""
        if self.labels is None:
            return
        counts = {n: _num_classes(s) for n, s in shapes.items() if self.kind(n, s) == "classes"}
        if counts and not any(c == len(self.labels) for c in counts.values()):
            name, c = next(iter(counts.items()))
            raise ProtonetError(f"{len(self.labels)} labels, but output {quote(name)} has {c} classes",
                                Location(self.labels.source))

    def read(self, outs: Mapping[str, np.ndarray], image: int = 0, geometry: Geometry | None = None) -> list[Answer]:
        """The answers for batch item ``image`` of ``outs``, boxes placed by ``geometry``."""
        kinds = {name: self.kind(name, y.shape) for name, y in outs.items()}
        ts = self.two_stage if self.two_stage is not None and set(self.two_stage.names) <= outs.keys() else None
        res = []
        for name, y in outs.items():
            kind = kinds[name]
            if ts is not None and name in ts.names:
                if name == ts.scores:
                    res.append(Answer(name, "detections", boxes=two_stage_detections(
                        outs[ts.rois], y, outs[ts.deltas], geometry, self.threshold, self.nms, self.labels, image)))
                continue
            if kind in ("classes", "segmentation", "label_map") and image >= y.shape[0]:
                continue
            if kind == "classes":
                row = y.reshape(y.shape[0], -1)[image]
                res.append(Answer(name, kind, classes=self.rank(row), scores=row))
            elif kind == "detections":
                res.append(Answer(name, kind, boxes=self.detections(y, image, geometry)))
            elif kind == "proposals":
                scores = next((outs[n] for n, k in kinds.items() if k == "proposal_scores"), None)
                res.append(Answer(name, kind, boxes=self.proposals(y, scores, image, geometry)))
            elif kind in ("segmentation", "label_map"):
                m = y[image, 0] if kind == "label_map" else np.argmax(y[image], axis=0)
                res.append(Answer(name, kind, mask=m.astype(np.int64),
                                  num_classes=y.shape[1] if kind == "segmentation" else 0))
        return res

    def rank(self, row: np.ndarray) -> tuple[Ranked, ...]:
        """The top-k entries of ``row``, highest first (equal scores: lower index first)."""
        top = np.argsort(-row, kind="stable")[:self.top_k]
        return tuple(Ranked(int(k), _f32(row[k]), self.labels.name(int(k)) if self.labels else None) for k in top)

    def _label(self, k: int) -> str | None:
        return self.labels.name(k) if self.labels is not None else None

    def detections(self, y: np.ndarray, image: int, geometry: Geometry | None) -> tuple[Box, ...]:
        """DetectionOutput rows of ``image`` with score > threshold, in the order the net gives them."""
        rows = y.reshape(-1, 7).astype(np.float64)
        rows = rows[(rows[:, 0] == image) & (rows[:, 1] >= 0) & (rows[:, 2] > self.threshold)]
        h, w = geometry.input_hw if geometry else (1, 1)
        corners = rows[:, 3:7] * np.array([w, h, w, h], dtype=np.float64)
        if geometry is not None:
            corners = geometry.to_photo(corners)
        return tuple(Box(int(r[1]), self._label(int(r[1])), _f32(r[2]), *map(float, c))
                     for r, c in zip(rows, corners))

    def proposals(self, rois: np.ndarray, scores: np.ndarray | None, image: int,
                  geometry: Geometry | None) -> tuple[Box, ...]:
        """Proposal rows of ``image`` (all-zero rows are padding) with score > threshold (every
        proposal when the net has no scores top)."""
        rows = rois.reshape(-1, 5).astype(np.float64)
        keep = (rows[:, 0] == image) & np.any(rows[:, 1:] != 0, axis=1)
        sc = scores.reshape(-1).astype(np.float64) if scores is not None and scores.size == rows.shape[0] else None
        if sc is not None:
            keep &= sc > self.threshold
        corners = geometry.to_photo(rows[keep, 1:]) if geometry is not None else rows[keep, 1:]
        kept = sc[keep] if sc is not None else [None] * int(keep.sum())
        return tuple(Box(-1, None, None if s is None else _f32(s), *map(float, c)) for s, c in zip(kept, corners))


def _f32(x: Any) -> float:
    """A float32 value as the shortest decimal that reads back as it (for text and JSON)."""
    return float(str(np.float32(x)))


def _num_classes(shape: Sequence[int]) -> int:
    return int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])


# -- two-stage detectors -----------------------------------------------------------------------

@dataclass(frozen=True)
class TwoStage:
    """A two-stage detector's outputs: the Proposal's ``rois`` (R, 5), the class ``scores`` (R, C)
    and the box ``deltas`` (R, 4·C; R-FCN's class-agnostic (R, 8))."""

    rois: str
    scores: str
    deltas: str

    @property
    def names(self) -> tuple[str, str, str]:
        return self.rois, self.scores, self.deltas


def im_info_input(inputs: Mapping[str, Sequence[int]]) -> str | None:
    """The input that takes py-faster-rcnn's im_info: an (N, 3) input beside a 4-D image input
    (the one named ``im_info`` when there are several), else None."""
    if not any(len(s) == 4 for s in inputs.values()):
        return None
    rows = [n for n, s in inputs.items() if len(s) == 2 and s[1] == 3]
    return "im_info" if "im_info" in rows else (rows[0] if len(rows) == 1 else None)


def two_stage_outputs(types: Mapping[str, str], outputs: Mapping[str, Sequence[int]],
                      inputs: Mapping[str, Sequence[int]]) -> TwoStage | None:
    """The model's :class:`TwoStage` outputs when it is a two-stage detector: an im_info input
    (:func:`im_info_input`), one Proposal rois output (R, 5) (by its recorded layer type), and two
    more (R, ·) outputs, scores (R, C) and deltas (R, 4·C) or (R, 8) (``cls_prob`` and
    ``bbox_pred`` preferred when several pairs fit); else None."""
    if im_info_input(inputs) is None:
        return None
    rois = [n for n, s in outputs.items() if output_kind(types.get(n), s) == "proposals"]
    if len(rois) != 1:
        return None
    r = tuple(outputs[rois[0]])[0]
    rows = {n: tuple(s) for n, s in outputs.items() if len(s) == 2 and s[0] == r and types.get(n) != "Proposal"}
    pairs = [(a, b) for a in rows for b in rows
             if a != b and rows[a][1] >= 2 and rows[b][1] in (4 * rows[a][1], 8)]
    if not pairs:
        return None
    a, b = ("cls_prob", "bbox_pred") if ("cls_prob", "bbox_pred") in pairs else pairs[0]
    return TwoStage(rois[0], a, b)


def keep_rois(graph: Any) -> str | None:
    """For a two-stage detector compiled for a run (``protonet infer NET.prototxt``): make its
    Proposal's rois a graph output as well, as ``im_detect`` reads ``net.blobs['rois']`` beside the
    net's outputs (ROI pooling consumes them, so they are not a Caffe net output). Only for a net
    with an im_info input (:func:`im_info_input`) and exactly one Proposal whose rois are not an
    output yet; returns their name, or None when nothing was added."""
    if im_info_input({v.name: tuple(v.shape) for v in graph.inputs}) is None:
        return None
    tops = [n.outputs[0] for n in graph.nodes if n.type == "Proposal"]
    if len(tops) != 1 or any(v is tops[0] for v in graph.outputs):
        return None
    graph.outputs.append(tops[0])
    return str(tops[0].name)


def im_info(geometry: Geometry, shape: Sequence[int] = (1, 3)) -> np.ndarray:
    """py-faster-rcnn's im_info for a photo (test.py ``_get_blobs``): [input height, input width,
    im_scale] float32, one row per batch item of ``shape``. im_scale is the factor the photo was
    resized by (net-input pixels per photo pixel); when the preprocessing resized the two sides by
    different factors (a fixed --resize H,W), their geometric mean (py-faster-rcnn resizes both
    sides alike)."""
    sy, sx = geometry.scale
    h, w = geometry.input_hw
    scale = sy if sy == sx else float(np.sqrt(sy * sx))
    row = np.array([h, w, scale], dtype=np.float32)
    return np.broadcast_to(row, (max(1, int(shape[0])) if len(shape) == 2 else 1, 3)).copy()


def feed_im_info(feeds: dict[str, np.ndarray], inputs: Mapping[str, Sequence[int]], geometry: Geometry,
                 two_stage: TwoStage | None, source: str) -> str:
    """Put :func:`im_info` for the photo into ``feeds`` when the net takes one
    (:func:`im_info_input`); returns what to add to the preprocessing line ("" for other nets).
    A net that takes im_info but whose outputs are not a two-stage detector's is warned about:
    its Proposal's rois must be an output (compile with ``--output``)."""
    name = im_info_input(inputs)
    if name is None:
        return ""
    if two_stage is None:
        log.warning("%s: the net takes %s but its outputs are not a two-stage detector's rois (R, 5), scores "
                    "(R, C) and deltas (R, 4*C): to get boxes, compile it with --output for the Proposal's rois "
                    "and the net's outputs (e.g. --output rois --output cls_prob --output bbox_pred)", source, name)
    feeds[name] = im_info(geometry, inputs[name])
    h, w, scale = (float(v) for v in feeds[name][0])
    return f"; {name} = ({h:g}, {w:g}, {scale:.6g}) (input height, width, photo scale)"


def photo_feeds(photo: str | Path, inputs: Mapping[str, Sequence[int]], name: str, shape: Sequence[int], meta: Any,
                two_stage: TwoStage | None, source: str) -> tuple[dict[str, np.ndarray], Geometry, str]:
    """The feeds of one photo, as `protonet infer PHOTO` and :meth:`protonet.Model.run` make them:
    input ``name`` of ``shape`` gets the photo through ``meta``
    (:func:`protonet.images.photo_feed`) and a two-stage detector's im_info input its
    :func:`im_info` (:func:`feed_im_info`). Returns the feeds, where the input lies on the photo
    (:func:`photo_geometry`) and what to add to the preprocessing line."""
    from .images import photo_feed

    feeds = {name: photo_feed(photo, meta, tuple(shape))}
    geometry = photo_geometry(photo, meta, shape)
    return feeds, geometry, feed_im_info(feeds, inputs, geometry, two_stage, source)


def two_stage_detections(rois: np.ndarray, scores: np.ndarray, deltas: np.ndarray, geometry: Geometry | None,
                         threshold: float = DEFAULT_THRESHOLD, nms: float = DEFAULT_NMS,
                         labels: Labels | None = None, image: int = 0) -> tuple[Box, ...]:
    """The final detections of a two-stage detector, as py-faster-rcnn's ``im_detect`` and test
    code compute them, in float32: the rois of batch item ``image`` (all-zero padding rows
    dropped) are taken to the photo (``rois[:, 1:5] / im_scale``; :meth:`Geometry.to_photo`, which
    also undoes a crop); each is moved by its class's deltas (dx, dy, dw, dh) with
    ``bbox_transform_inv`` (w = x2 − x1 + 1, ctr = x1 + 0.5·w, ctr' = dx·w + ctr, w' = exp(dw)·w,
    x1' = ctr' − 0.5·w', x2' = ctr' + 0.5·w'; deltas (R, 8): R-FCN's class-agnostic columns 4:8 for
    every class) and clipped to the photo (x in [0, W − 1], y in [0, H − 1]); then for each class
    j >= 1 the boxes with score > ``threshold``, ordered by descending score (equal scores: the
    later row first, as numpy's ``argsort()[::-1]``), go through greedy NMS that drops a box whose
    IoU (+1 convention) with a kept one is above ``nms``. Boxes come class by class, best first.
    Without a geometry the boxes stay in net-input pixels, unclipped."""
    from .layers.detection import clip_boxes, decode_boxes, nms_order

    rows = np.asarray(rois, dtype=np.float32).reshape(-1, 5)
    sc = np.asarray(scores, dtype=np.float32)
    d = np.asarray(deltas, dtype=np.float32)
    if sc.ndim != 2 or d.ndim != 2 or not rows.shape[0] == sc.shape[0] == d.shape[0]:
        raise ProtonetError(f"two-stage detector outputs disagree: rois {tuple(np.shape(rois))}, scores "
                            f"{sc.shape}, deltas {d.shape} (want (R, 5), (R, C), (R, 4*C) or (R, 8))")
    k = d.shape[1] // 4
    if d.shape[1] % 4 or k not in (sc.shape[1], 2):
        raise ProtonetError(f"two-stage detector deltas {d.shape} fit neither 4 per class of {sc.shape[1]} "
                            "nor the class-agnostic 8")
    keep = (rows[:, 0] == image) & np.any(rows[:, 1:] != 0, axis=1)
    boxes = rows[keep, 1:] if geometry is None else geometry.to_photo(rows[keep, 1:]).astype(np.float32)
    pred = decode_boxes(np.repeat(boxes, k, axis=0), d[keep].reshape(-1, 4))
    if geometry is not None:
        pred = clip_boxes(pred, *geometry.photo_hw)
    pred = pred.reshape(-1, k, 4)
    sc = sc[keep]
    found = []
    for j in range(1, sc.shape[1]):
        inds = np.flatnonzero(sc[:, j] > threshold)
        order = inds[np.argsort(sc[inds, j], kind="stable")[::-1]]
        cand = pred[order, j if k == sc.shape[1] else 1]
        for i in nms_order(cand, nms):
            found.append(Box(j, labels.name(j) if labels is not None else None, _f32(sc[order[i], j]),
                             *map(float, cand[i])))
    return tuple(found)


# -- text --------------------------------------------------------------------------------------

def describe(a: Answer, labels: Labels | None = None) -> list[str]:
    """The lines ``protonet infer`` prints for one answer (unindented)."""
    if a.kind == "classes":
        return [f"top-{len(a.classes)}:"] + [f"  {r.score:.4f}  {r.index}" + (
            f"  {printable(r.label)}" if r.label is not None else "") for r in a.classes]
    if a.kind in ("detections", "proposals"):
        lines = [f"{len(a.boxes)} box(es) (x1, y1, x2, y2):"]
        for b in a.boxes:
            score = "" if b.score is None else f"{b.score:.4f}  "
            lines.append(f"  {score}{printable(b.name)}  at {b.x1:.1f}, {b.y1:.1f}, {b.x2:.1f}, {b.y2:.1f}")
        return lines
    if a.mask is not None:
        ids, counts = np.unique(a.mask, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        shares = ", ".join(f"{int(ids[i])}" + (f" {printable(labels.name(int(ids[i])))}" if labels else "")
                           + f" ({100 * counts[i] / a.mask.size:.1f}%)" for i in order[:10])
        of = f"{a.num_classes} classes, " if a.num_classes else ""
        return [f"class per pixel ({of}{a.mask.shape[0]}x{a.mask.shape[1]}): {shares}"]
    return []


# -- pictures ----------------------------------------------------------------------------------

def voc_colormap(n: int = 256) -> np.ndarray:
    """PASCAL VOC's colour map (n, 3) uint8: the bits of class k, taken three at a time from the
    lowest, go to the high bits of red, green and blue (bit 0 -> red bit 7, bit 1 -> green bit 7,
    bit 2 -> blue bit 7, bit 3 -> red bit 6, ...). Class 1 is (128, 0, 0), 255 (void) (224, 224, 192)."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for k in range(n):
        rgb, c = [0, 0, 0], k
        for j in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - j)
            c >>= 3
        cmap[k] = rgb
    return cmap


def check_picture_target(path: str | Path, formats: Mapping[str, str], what: str) -> str:
    """The Pillow format for ``path`` by its suffix; refuses others before any work is done."""
    fmt = formats.get(Path(path).suffix.lower())
    if fmt is None:
        raise ProtonetError(f"{what} writes {', '.join(sorted(formats))} files; name one of those", Location(str(path)))
    return fmt


def _save(im: Any, path: str | Path, fmt: str, inputs: Iterable[Any]) -> None:
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    write_atomic(path, lambda tmp: im.save(tmp, format=fmt, **kwargs), inputs=inputs)


#: box colours (RGB) by class id, cycled
BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
               (240, 50, 230), (210, 245, 60), (255, 225, 25), (0, 128, 128))


def box_colour(index: int) -> tuple[int, int, int]:
    return BOX_COLOURS[index % len(BOX_COLOURS)]


def line_width(photo_hw: tuple[int, int]) -> int:
    """Box outline width: 1 pixel per 250 of the shorter side, at least 2."""
    return max(2, min(photo_hw) // 250)


def _font(size: int) -> Any:
    """Pillow's own font at ``size`` pixels (scalable since Pillow 10.1; the fixed bitmap font before)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError, ImportError):  # an older Pillow, or one without FreeType
        return ImageFont.load_default()


def draw_boxes(photo: str | Path, boxes: Sequence[Box], out: str | Path, inputs: Iterable[Any] = ()) -> None:
    """Write the photo with each box outlined (inside its rounded corners, :func:`line_width`)
    in its class colour and a "name score" tag on a filled strip above it (below its top edge
    when there is no room), to ``out`` (JPEG, PNG or BMP by suffix; atomically)."""
    from PIL import Image, ImageDraw

    fmt = check_picture_target(out, DRAW_FORMATS, "--draw")
    with Image.open(photo) as im:
        canvas = im.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, min(canvas.height, canvas.width) // 50))
    width = line_width((canvas.height, canvas.width))
    for b in boxes:
        colour = box_colour(max(b.index, 0))
        x1, y1, x2, y2 = (round(v) for v in (b.x1, b.y1, b.x2, b.y2))
        if x2 < x1 or y2 < y1:
            continue
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        tag = printable(b.name) + ("" if b.score is None else f" {b.score:.2f}")
        l, t, r, bt = draw.textbbox((0, 0), tag, font=font)
        th = bt - t + 2
        ty = y1 - th if y1 - th >= 0 else y1 + width
        draw.rectangle((x1, ty, x1 + r - l + 3, ty + th - 1), fill=colour)
        draw.text((x1 + 2 - l, ty + 1 - t), tag, fill=(0, 0, 0) if sum(colour) > 380 else (255, 255, 255), font=font)
    _save(canvas, out, fmt, inputs)


def resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``a`` (H, W) resized to ``size`` (h, w) by nearest neighbour on pixel centres: output pixel
    (y, x) takes input pixel (floor((y + 0.5) · H / h), floor((x + 0.5) · W / w)), in exact integer
    arithmetic (an upscale by k repeats every pixel k times)."""
    (h_in, w_in), (h, w) = a.shape[:2], size
    rows = ((2 * np.arange(h) + 1) * h_in) // (2 * h)
    cols = ((2 * np.arange(w) + 1) * w_in) // (2 * w)
    return a[rows][:, cols]


def mask_image(mask: np.ndarray, geometry: Geometry) -> Any:
    """The class-per-pixel map as a palette ('P') image of the photo's size: the map (at the
    score map's size) resized with nearest neighbour (:func:`resize_nearest`) onto the part of
    the photo the net input covers; the rest of the photo is VOC's void (255). Classes above 254
    are refused."""
    from PIL import Image

    if mask.size and (mask.min() < 0 or mask.max() >= VOID):
        raise ProtonetError(f"class index {int(mask.max())} does not fit a VOC palette PNG (0-254)")
    h0, w0 = geometry.photo_hw
    x1, y1, x2, y2 = geometry.input_box()
    region = resize_nearest(mask.astype(np.uint8), (max(1, y2 - y1), max(1, x2 - x1)))
    full = np.full((h0, w0), VOID, dtype=np.uint8)
    top, left = max(0, y1), max(0, x1)
    full[top:y2, left:x2] = region[top - y1:top - y1 + max(0, min(y2, h0) - top),
                                   left - x1:left - x1 + max(0, min(x2, w0) - left)]
    out = Image.frombytes("P", (w0, h0), full.tobytes())
    out.putpalette(voc_colormap().reshape(-1).tolist())
    return out


def write_mask(mask: np.ndarray, geometry: Geometry, out: str | Path, inputs: Iterable[Any] = ()) -> None:
    """Write :func:`mask_image` as a PNG (the class indices kept, VOC's palette attached)."""
    check_picture_target(out, {".png": "PNG"}, "--segmentation")
    _save(mask_image(mask, geometry), out, "PNG", inputs)


# -- one run, as `protonet infer` presents it --------------------------------------------------

#: the batch items `protonet infer` describes for an input array (a photo: the first only)
SHOWN_ROWS = 8


def report(outs: Mapping[str, np.ndarray], reader: Reader, images: int, geometry: Geometry | None = None) -> list[str]:
    """The lines `protonet infer` prints: each output's shape and its answers for the first
    ``images`` batch items (at most :data:`SHOWN_ROWS`)."""
    n = min(images, SHOWN_ROWS)
    read = [{a.output: a for a in reader.read(outs, i, geometry)} for i in range(n)]
    lines = []
    for name, y in outs.items():
        lines.append(f"output {quote(name)}: shape {tuple(y.shape)}")
        for i, answers in enumerate(read):
            if name in answers:
                said = describe(answers[name], reader.labels)
                lead = "  " if n == 1 else f"  [{i}] "
                lines += [(lead if k == 0 else " " * len(lead)) + line for k, line in enumerate(said)]
    return lines


def check_pictures(reader: Reader, shapes: Mapping[str, Sequence[int]], photo: bool, draw: str | None,
                   segmentation: str | None, folders: bool = False) -> None:
    """Refuse --draw / --segmentation before the run when they cannot be made: no photo, no
    output of the kind, or a file type that is not written (not checked with ``folders``, where
    they name the folders that a folder or list of photos writes its pictures into)."""
    kinds = {reader.kind(n, s) for n, s in shapes.items()}
    for target, want, flag in ((draw, ("detections", "proposals"), "--draw"),
                               (segmentation, ("segmentation", "label_map"), "--segmentation")):
        if target is None:
            continue
        if not folders:
            check_picture_target(target, DRAW_FORMATS if flag == "--draw" else {".png": "PNG"}, flag)
        if not photo and flag == "--draw":
            raise ProtonetError(f"{flag} draws on the input photo: give an image (JPEG, PNG or BMP) as the input")
        if not kinds & set(want):
            what = "boxes (DetectionOutput or Proposal)" if flag == "--draw" else "a score map (N, C, H, W)"
            raise ProtonetError(f"{flag}: the model has no output with {what}")


def write_pictures(answers: Sequence[Answer], photo: str | Path | None, geometry: Geometry | None, draw: str | None,
                   segmentation: str | None, inputs: Iterable[Any] = ()) -> list[str]:
    """Write the --draw picture (every box output's boxes on the photo) and the --segmentation
    PNG (the first score map's classes); returns the lines saying what was written."""
    said = []
    if draw is not None and photo is not None:
        boxes = [b for a in answers for b in a.boxes]
        draw_boxes(photo, boxes, draw, inputs)
        said.append(f"wrote {draw} ({len(boxes)} box(es))")
    if segmentation is not None:
        output, mask = next((a.output, a.mask) for a in answers if a.mask is not None)
        write_mask(mask, geometry or Geometry.identity(mask.shape), segmentation, inputs)
        said.append(f"wrote {segmentation} (class per pixel of output {quote(output)}, VOC colours)")
    return said
