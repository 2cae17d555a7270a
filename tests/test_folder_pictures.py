"""Pictures from a folder or list of images (protonet.batchrun.Pictures): `protonet infer MODEL DIR
-o r.csv --draw D --segmentation S` writes per image the picture that `protonet infer PHOTO --draw
/--segmentation` writes for that photo alone (pixel-equal), stems shared by images disambiguated,
none for an unreadable image; and Model.run on a photo fills a two-stage detector's im_info as the
command does (the same raw outputs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import protonet
from protonet import cli
from protonet.batchrun import EXIT_SOME_FAILED, picture_stems
from test_answers import DETECTIONS, constant_net, infer
from test_two_stage import KEEP, NET


def photos(d: Path) -> list[Path]:
    """A folder of 3 readable photos of different sizes and colours (two named cat, one in a
    sub-folder) and a truncated JPEG; in the folder's order: bad, cat, dog, sub/cat."""
    rng = np.random.default_rng(1)
    (d / "sub").mkdir(parents=True)
    made = []
    for name, (h, w) in (("cat.png", (100, 200)), ("dog.png", (90, 60)), ("sub/cat.jpg", (64, 80))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / name)
        made.append(d / name)
    (d / "bad.jpg").write_bytes((d / "sub" / "cat.jpg").read_bytes()[:150])
    return made


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_picture_stems_by_hand():
    """a and A share a stem (case aside): positions 1 and 2 give a-1 and A-2, but a-1 is an
    image's own stem, so the first takes the next free number, 2, and A then 3."""
    assert picture_stems(["p/a.jpg", "q/A.png", "a-1.jpg", "b.jpg"]) == ["a-2", "A-3", "a-1", "b"]
    assert picture_stems(["x/one.jpg", "y/one.jpg", "two.png"]) == ["one-1", "one-2", "two"]


def test_folder_draw_equals_single_photo_draw(tmp_path: Path, capsys):
    model = constant_net(tmp_path / "m.onnx", "detection_out", DETECTIONS, (50, 50), "DetectionOutput")
    made = photos(tmp_path / "photos")
    drawn = tmp_path / "drawn" / "deeper"  # made, with its parent
    code, out, err = infer(capsys, str(model), str(tmp_path / "photos"), "-o", str(tmp_path / "r.csv"),
                           "--draw", str(drawn))
    assert code == EXIT_SOME_FAILED, err
    assert "bad.jpg" in err and f"3 picture(s) in {drawn}; wrote" in out
    assert sorted(p.name for p in drawn.iterdir()) == ["cat-2.jpg", "cat-4.jpg", "dog.jpg"]
    for photo, name in zip(made, ("cat-2.jpg", "dog.jpg", "cat-4.jpg")):
        code, out, _ = infer(capsys, str(model), str(photo), "--draw", str(tmp_path / "one.jpg"))
        assert code == 0 and "(2 box(es))" in out
        with Image.open(drawn / name) as im:
            assert im.format == "JPEG" and im.size == Image.open(photo).size
        np.testing.assert_array_equal(pixels(drawn / name), pixels(tmp_path / "one.jpg"), err_msg=name)
    # the same photos as a list; the folder exists now and the pictures are rewritten
    (tmp_path / "list.txt").write_text("photos/sub/cat.jpg\nphotos/dog.png\n")
    code, out, _ = infer(capsys, str(model), str(tmp_path / "list.txt"), "-o", str(tmp_path / "r.csv"),
                         "--draw", str(drawn))
    assert code == 0 and "2 picture(s)" in out
    np.testing.assert_array_equal(pixels(drawn / "cat.jpg"), pixels(drawn / "cat-4.jpg"))


def test_folder_segmentation_equals_single_photo_mask(tmp_path: Path, capsys):
    score = np.zeros((1, 3, 2, 2), np.float32)
    score[0, 0, 0, 0] = score[0, 1, 0, 1] = score[0, 2, 1, 0] = score[0, 1, 1, 1] = 1.0  # classes [[0, 1], [2, 1]]
    model = constant_net(tmp_path / "m.onnx", "score", score, (2, 2), "Deconvolution")
    made = photos(tmp_path / "photos")
    masks = tmp_path / "masks"
    code, out, _ = infer(capsys, str(model), str(tmp_path / "photos"), "-o", str(tmp_path / "r.jsonl"),
                         "--segmentation", str(masks))
    assert code == EXIT_SOME_FAILED and f"3 picture(s) in {masks}" in out
    assert sorted(p.name for p in masks.iterdir()) == ["cat-2.png", "cat-4.png", "dog.png"]
    for photo, name in zip(made, ("cat-2.png", "dog.png", "cat-4.png")):
        assert infer(capsys, str(model), str(photo), "--segmentation", str(tmp_path / "one.png"))[0] == 0
        got = pixels(masks / name)
        np.testing.assert_array_equal(got, pixels(tmp_path / "one.png"), err_msg=name)
        h, w = got.shape
        assert got[0, 0] == 0 and got[0, w - 1] == 1 and got[h - 1, 0] == 2  # the classes, by hand
    # --draw needs boxes; a file where the folder should be is refused; neither writes results
    code, _, err = infer(capsys, str(model), str(tmp_path / "photos"), "-o", str(tmp_path / "x.csv"),
                         "--draw", str(tmp_path / "d"))
    assert code == 2 and "--draw: the model has no output with boxes" in err
    (tmp_path / "file").write_text("")
    code, _, err = infer(capsys, str(model), str(tmp_path / "photos"), "-o", str(tmp_path / "x.csv"),
                         "--segmentation", str(tmp_path / "file"))
    assert code == 2 and "a file of that name exists" in err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "d").exists()


def test_api_two_stage_photo_fills_im_info_as_the_command(tmp_path: Path, capsys):
    net, model, photo = tmp_path / "net.prototxt", tmp_path / "m.onnx", tmp_path / "photo.png"
    net.write_text(NET)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 120, 3), dtype=np.uint8)).save(photo)
    assert cli.main(["compile", str(net), "-o", str(model), *KEEP, "--mean", "100,110,120",
                              "--scale", "0.02"]) == 0
    code, out, _ = infer(capsys, str(model), str(photo), "-o", str(tmp_path / "cli.npz"))
    assert code == 0 and "im_info = (64, 80, 0.666667)" in out
    m = protonet.load(model)
    np.testing.assert_array_equal(m.feeds(photo)["im_info"], np.float32([[64, 80, 2 / 3]]))
    got = m.run(str(photo))
    with np.load(tmp_path / "cli.npz") as z:
        assert sorted(z.files) == sorted(got) == ["bbox_pred", "cls_prob", "rois"]
        for k in z.files:
            np.testing.assert_array_equal(got[k], z[k], err_msg=k)
    assert (got["rois"][:, 3:] > 0).any()  # proposals found (im_info's sizes let them through)
