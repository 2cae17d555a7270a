"""Test-time image preprocessing (Caffe's DataTransformer at TEST) on tiny generated images."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from protonet.errors import ProtonetError
from protonet.frontend.preprocess import Preprocess
from protonet.images import load_image


def _rgb_png(path, h=4, w=4):
    """Pixel (y, x) = (R, G, B) = (10y + x, 100 + y, 200 + x)."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([10 * y + x, 100 + y, 200 + x], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(path)
    return path


def test_crop_bgr_mean_value_scale(tmp_path):
    img = _rgb_png(tmp_path / "a.png")
    meta = Preprocess(input="data", shape=(1, 3, 2, 2), scale=0.5, crop_size=2, mean_value=(1, 2, 3),
                      resize=(4, 4), source="ImageData")
    x = load_image(img, meta, (1, 3, 2, 2))
    # crop offset ((4 - 2) // 2, (4 - 2) // 2) = (1, 1); channel 0 is blue
    expected = np.array([[[[100, 100.5], [100, 100.5]],     # (B - 1) * 0.5: B = 201, 202
                          [[49.5, 49.5], [50, 50]],         # (G - 2) * 0.5: G = 101 / 102 by row
                          [[4, 4.5], [9, 9.5]]]],           # (R - 3) * 0.5: R = 11 12 / 21 22
                        dtype=np.float32)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, expected)


def test_mean_image_at_the_crop_offset_and_batch(tmp_path):
    img = _rgb_png(tmp_path / "a.png")
    mean = (np.arange(3)[:, None, None] * 16 + np.arange(4)[None, :, None] * 4
            + np.arange(4)[None, None, :]).astype(np.float32)  # mean[c, y, x] = 16c + 4y + x
    meta = Preprocess(input="data", shape=(2, 3, 2, 2), crop_size=2, mean_file="mean.binaryproto",
                      mean_shape=(3, 4, 4), mean_image=Preprocess.encode_array(mean))
    meta = Preprocess.from_json(meta.to_json())  # survives the ONNX metadata round trip
    x = load_image(img, meta)
    one = np.array([[[196, 196], [192, 192]],      # B 201 202 / 201 202 minus 5 6 / 9 10
                    [[80, 79], [77, 76]],          # G 101 101 / 102 102 minus 21 22 / 25 26
                    [[-26, -26], [-20, -20]]],     # R 11 12 / 21 22 minus 37 38 / 41 42
                   dtype=np.float32)
    assert x.shape == (2, 3, 2, 2)
    np.testing.assert_array_equal(x[0], one)
    np.testing.assert_array_equal(x[1], one)


def test_gray_no_crop_single_mean_value(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(np.array([[0, 10, 20], [30, 40, 50]], dtype=np.uint8), "L").save(path)
    meta = Preprocess(input="data", shape=(1, 1, 2, 3), mean_value=(10,), scale=0.1, channels=1)
    x = load_image(path, meta)
    np.testing.assert_allclose(x, [[[[-1, 0, 1], [2, 3, 4]]]], rtol=1e-6)


def test_crop_without_mean_file_keeps_size_when_shorter_side_fits(tmp_path):
    """Rule 3: shorter side to 8/7 of the crop (7 -> 8); an 8x16 image is not resampled,
    then Caffe's centre crop takes rows 0..6 and columns 4..10."""
    img = _rgb_png(tmp_path / "b.png", h=8, w=16)
    meta = Preprocess(input="data", shape=(1, 3, 7, 7), crop_size=7)
    x = load_image(img, meta)
    y, xx = np.mgrid[0:7, 4:11]
    np.testing.assert_array_equal(x[0, 2], 10 * y + xx)  # red
    np.testing.assert_array_equal(x[0, 0], 200 + xx)  # blue


def test_resize_then_crop_shape(tmp_path):
    img = _rgb_png(tmp_path / "c.png", h=30, w=60)
    meta = Preprocess(input="data", shape=(1, 3, 14, 14), crop_size=14, mean_value=(104, 117, 123))
    assert load_image(img, meta).shape == (1, 3, 14, 14)  # resized to 16 x 32, cropped
    assert load_image(img, None, (1, 3, 5, 7)).shape == (1, 3, 5, 7)  # no metadata: warp to H x W
    assert load_image(img, meta, (-1, 3, 14, 14)).shape == (1, 3, 14, 14)  # dynamic batch


def test_json_round_trip_and_bad_metadata():
    meta = Preprocess(input="data", shape=(1, 3, 227, 227), scale=1.0, crop_size=227, mean_value=(104, 117, 123))
    assert Preprocess.from_json(meta.to_json()) == meta
    with pytest.raises(ProtonetError, match="invalid preprocessing metadata"):
        Preprocess.from_json("[1, 2]")
    with pytest.raises(ProtonetError, match="newer"):
        Preprocess.from_json('{"input": "x", "shape": [1], "version": 99}')


def test_bad_images(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    meta = Preprocess(input="data", shape=(1, 3, 2, 2))
    with pytest.raises(ProtonetError, match=r"bad\.png: cannot read image"):
        load_image(bad, meta)
    img = _rgb_png(tmp_path / "a.png")
    with pytest.raises(ProtonetError, match="mean file 'm.binaryproto', which was not found"):
        load_image(img, Preprocess(input="data", shape=(1, 3, 2, 2), crop_size=2, mean_file="m.binaryproto"))
    with pytest.raises(ProtonetError, match="1 or 3 channels"):
        load_image(img, meta, (1, 4, 2, 2))
