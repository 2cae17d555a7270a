"""Photo decoding and test-time preprocessing (replaying :class:`frontend.preprocess.Preprocess`).

The transform of an H0 x W0 photo, in order (OpenCV ``cv2.dnn.blobFromImage``'s order, which is
also Caffe's ``DataTransformer`` on a pre-sized image):

1. **resize** (bilinear, :func:`resize_bilinear`), by the first rule that applies:

   a. ``resize`` = (H, W): exactly H x W (``cv2.resize(img, (W, H))``; Caffe's ``ImageData``
      ``new_height x new_width``);
   b. ``resize_shorter`` = S: by the factor ``f = S / min(H0, W0)`` (computed in float32, as
      ``blobFromImage(crop=True)`` computes it) to ``round(H0 f) x round(W0 f)``, pixel centres
      mapped with ``f`` itself (``cv2.resize(img, None, fx=f, fy=f)``);
   c. a Caffe crop with a mean file: the mean image's H x W (the size the database images had);
   d. a Caffe crop without: rule b with S = 8/7 of the crop (256 for 224, 259 for 227), the
      usual ImageNet evaluation recipe;
   e. otherwise: exactly the input's H x W.

   An image that already has the target size is not resampled.
2. **centre crop** to the input's H x W at offset ``((Hr - H) // 2, (Wr - W) // 2)`` (Caffe's
   test-time offsets, and OpenCV's); a ``crop`` of another size than the input's is an error.
3. **channel order**: Pillow decodes RGB; a BGR net gets the channels reversed.
4. **mean** subtracted (``mean_value`` per channel in the net's order, or the ``mean_file``
   blob at the crop's offset), then multiplied by **scale**: ``(pixel - mean) * scale``.

A uint8 image (a decoded photo) is resized as OpenCV resizes 8-bit images, in fixed point
(:func:`resize_bilinear_u8`, bit-identical to ``cv2.resize``), so the result equals
``blobFromImage`` on the same pixels; a float image is resized in floating point
(:func:`resize_bilinear`, float64 coordinates and weights), which equals OpenCV on float input to
float32 rounding. The two differ by at most 1.125 grey levels (0.8 measured; tests/test_images.py).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from . import limits
from .errors import Location, ProtonetError
from .fileio import note_input
from .frontend.preprocess import Preprocess

log = logging.getLogger(__name__)

#: the image formats protonet decodes (Pillow's names); every other format is refused
IMAGE_FORMATS = ("JPEG", "PNG", "BMP")

#: the file suffixes that name an image input
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


# -- resizing ----------------------------------------------------------------------------------

def _axis_weights(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV INTER_LINEAR's taps along one axis: output index d samples the input at
    ``(d + 0.5) / scale - 0.5`` (half-pixel centres), clamped to [0, n_in - 1]: a coordinate left
    of the first pixel centre takes pixel 0, right of the last takes pixel n_in - 1 (no antialiasing
    when shrinking). Returns (i0, i1, w1): value = in[i0] * (1 - w1) + in[i1] * w1."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) / scale - 0.5
    i0 = np.floor(src)
    w1 = src - i0
    i0 = i0.astype(np.int64)
    low, high = i0 < 0, i0 >= n_in - 1
    i0 = np.where(low, 0, np.where(high, n_in - 1, i0))
    w1 = np.where(low | high, 0.0, w1)
    return i0, np.minimum(i0 + 1, n_in - 1), w1


def resize_bilinear(image: np.ndarray, size: tuple[int, int],
                    scale: tuple[float, float] | None = None) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) array to ``size`` = (h, w) as OpenCV's ``cv2.resize`` with
    ``INTER_LINEAR`` does: half-pixel centres, edge pixels repeated, not antialiased, for enlarging
    and shrinking alike. ``scale`` = (sy, sx) maps the pixel centres (default h / H, w / W; OpenCV
    uses ``fx``, ``fy`` when the size was derived from them). Returns float32."""
    h, w = size
    if scale is None:
        scale = (h / image.shape[0], w / image.shape[1])
    y0, y1, wy = _axis_weights(image.shape[0], h, scale[0])
    x0, x1, wx = _axis_weights(image.shape[1], w, scale[1])
    (r0, r1), src = _needed_rows(np.asarray(image), y0, y1)
    extra = (None,) * (src.ndim - 2)
    cols = np.take(src, x0, axis=1).astype(np.float64) * (1.0 - wx)[(slice(None), *extra)] + \
        np.take(src, x1, axis=1).astype(np.float64) * wx[(slice(None), *extra)]
    out = cols[r0] * (1.0 - wy)[(slice(None), None, *extra)] + cols[r1] * wy[(slice(None), None, *extra)]
    return out.astype(np.float32)


def _needed_rows(image: np.ndarray, y0: np.ndarray, y1: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Only the source rows the output reads (a large photo shrunk reads few): their pixels, and
    ``y0``, ``y1`` as positions among them."""
    rows = np.unique(np.concatenate([y0, y1]))
    return (np.searchsorted(rows, y0), np.searchsorted(rows, y1)), image[rows]


#: OpenCV's fixed-point resize: weights in 1/2048 (INTER_RESIZE_COEF_BITS = 11)
COEF_SCALE = 2048


def opencv_taps(n_in: int, n_out: int, scale: float, clamp: bool) -> tuple[np.ndarray, ...]:
    """OpenCV's 8-bit INTER_LINEAR taps along one axis (``resizeGeneric_``): the source coordinate
    ``(d + 0.5) * (1 / scale) - 0.5`` rounded to float32, its floor i and fraction f, the weights
    ``round((1 - f) * 2048)`` and ``round(f * 2048)`` each rounded on its own. Horizontally
    (``clamp``) a coordinate outside the pixel centres takes the edge pixel with weight 2048;
    vertically it keeps its fraction and both rows clamp to the edge row (so the two truncated
    products of :func:`resize_bilinear_u8` can differ from one). Returns (i0, i1, w0, w1), int64."""
    src = ((np.arange(n_out, dtype=np.float64) + 0.5) * (1.0 / scale) - 0.5).astype(np.float32)
    i0 = np.floor(src)
    f = (src - i0).astype(np.float32)
    i0 = i0.astype(np.int64)
    if clamp:
        low, high = i0 < 0, i0 >= n_in - 1
        f = np.where(low | high, np.float32(0), f)
        i0 = np.where(low, 0, np.where(high, n_in - 1, i0))
    w0 = np.rint((np.float32(1) - f) * np.float32(COEF_SCALE)).astype(np.int64)
    w1 = np.rint(f * np.float32(COEF_SCALE)).astype(np.int64)
    return np.clip(i0, 0, n_in - 1), np.clip(i0 + 1, 0, n_in - 1), w0, w1


def resize_bilinear_u8(image: np.ndarray, size: tuple[int, int],
                       scale: tuple[float, float] | None = None) -> np.ndarray:
    """``cv2.resize(image, (w, h), interpolation=INTER_LINEAR)`` on a uint8 (H, W[, C]) image, bit
    for bit: OpenCV's fixed-point path. Horizontal pass ``S[i0] * w0 + S[i1] * w1`` (integers in
    1/2048); vertical pass as its SIMD kernel: each row sum shifted right by 4, multiplied by its
    weight and shifted right by 16 (the high half of a 16-bit product), the two added, then
    ``(t + 2) >> 2``, saturated to 0-255. Taps by :func:`opencv_taps`; ``scale`` as
    :func:`resize_bilinear`. Returns uint8. (An exact 2x reduction, which OpenCV computes as
    INTER_AREA, gives the same values: the 2x2 mean, rounded.)"""
    h, w = size
    if scale is None:
        scale = (h / image.shape[0], w / image.shape[1])
    y0, y1, b0, b1 = opencv_taps(image.shape[0], h, scale[0], clamp=False)
    x0, x1, a0, a1 = opencv_taps(image.shape[1], w, scale[1], clamp=True)
    (r0, r1), src = _needed_rows(np.asarray(image, dtype=np.uint8), y0, y1)
    extra = (None,) * (src.ndim - 2)
    a0, a1, b0, b1 = (a.astype(np.int32) for a in (a0, a1, b0, b1))  # every sum fits: 255 * 2049 * 2048 < 2^31
    rows = (np.take(src, x0, axis=1).astype(np.int32) * a0[(None, slice(None), *extra)]
            + np.take(src, x1, axis=1).astype(np.int32) * a1[(None, slice(None), *extra)]) >> 4
    t = ((rows[r0] * b0[(slice(None), None, *extra)]) >> 16) + ((rows[r1] * b1[(slice(None), None, *extra)]) >> 16)
    return np.clip((t + 2) >> 2, 0, 255).astype(np.uint8)


def shorter_side_plan(img_hw: tuple[int, int], side: int) -> tuple[tuple[int, int], tuple[float, float]]:
    """The size and scale of rule 1b (``blobFromImage(crop=True)``'s resize): f = side / min(H0, W0)
    in float32, size ``round(H0 f) x round(W0 f)`` (round half to even, as cvRound)."""
    h0, w0 = img_hw
    f = float(max(np.float32(side) / np.float32(w0), np.float32(side) / np.float32(h0)))
    return (int(np.rint(h0 * f)), int(np.rint(w0 * f))), (f, f)


def resize_plan(meta: Preprocess, img_hw: tuple[int, int], out_hw: tuple[int, int]
                ) -> tuple[tuple[int, int], tuple[float, float] | None]:
    """Rule 1 of the module docstring: the (H, W) to resize to before the centre crop, and the
    pixel-centre scale (None: target / source)."""
    h0, w0 = img_hw
    if meta.resize:
        return meta.resize, None
    if meta.resize_shorter:
        return shorter_side_plan(img_hw, meta.resize_shorter)
    crop = meta.crop_hw
    if crop and len(meta.mean_shape) == 3:
        return (meta.mean_shape[1], meta.mean_shape[2]), None
    if crop:
        if (h0, w0) == out_hw:
            return out_hw, None
        return shorter_side_plan(img_hw, max(out_hw) * 8 // 7)
    return out_hw, None


# -- decoding ----------------------------------------------------------------------------------

def _check_pixels(h: int, w: int, what: str, loc: Location) -> None:
    most = limits.current().max_image_pixels
    if h * w > most:
        raise ProtonetError(f"{what} of {h}x{w} pixels is over protonet's limit of {most:,} "
                            f"pixels (raise it with PROTONET_MAX_IMAGE_PIXELS)", loc)


def decode_image(path: str | Path, channels: int = 3) -> np.ndarray:
    """A JPEG, PNG or BMP file as a uint8 (H, W, 3) RGB array (``channels`` = 1: (H, W, 1) grey).

    The format is decided by the file's content, among :data:`IMAGE_FORMATS` only (Pillow never
    hands another file, such as EPS, to an external program); the pixels, as the header gives
    them, are limited by ``max_image_pixels`` (:mod:`protonet.limits`), checked before decoding."""
    from PIL import Image, UnidentifiedImageError

    loc = Location(str(path))
    try:
        with warnings.catch_warnings():  # protonet's own pixel limit applies, not Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as im:
                _check_pixels(im.height, im.width, "image", loc)
                note_input(path)
                pixels = np.asarray(im.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise ProtonetError(f"cannot read image: not a {', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]} image "
                            f"(the formats protonet reads)", loc) from None
    except Image.DecompressionBombError as e:
        raise ProtonetError(f"cannot read image: {e}", loc) from None
    except (OSError, ValueError) as e:
        raise ProtonetError(f"cannot read image: {e}", loc) from None
    return pixels if pixels.ndim == 3 else pixels[:, :, None]


# -- the transform -----------------------------------------------------------------------------

def _input_dims(meta: Preprocess | None, shape: tuple[int, ...] | None, img_hw: tuple[int, int] | None,
                loc: Location) -> tuple[int, int, int, int]:
    """(N, C, H, W) to produce: ``shape``'s, its dynamic dims (<= 0) from ``meta.shape``, then
    from the crop or exact resize, then (for H, W) the image after rule 1b, else the image."""
    if shape is None:
        if meta is None or not meta.shape:
            raise ProtonetError("the input shape is unknown; give it", loc)
        shape = meta.shape
    if len(shape) != 4:
        raise ProtonetError(f"an image feeds a 4-D (N, C, H, W) input, not {tuple(shape)}", loc)
    n, c, h, w = (int(d) for d in shape)
    if (c <= 0 or h <= 0 or w <= 0) and meta is not None and len(meta.shape) == 4:  # dynamic dims
        c, h, w = (d if d > 0 else m for d, m in zip((c, h, w), meta.shape[1:]))
    if (h <= 0 or w <= 0) and meta is not None:
        known = meta.crop_hw or meta.resize
        if known is None and img_hw is not None:
            known = shorter_side_plan(img_hw, meta.resize_shorter)[0] if meta.resize_shorter else img_hw
        if known is not None:
            h, w = h if h > 0 else known[0], w if w > 0 else known[1]
    if h <= 0 or w <= 0:
        raise ProtonetError(f"the input's height and width are unknown ({tuple(shape)})", loc)
    if c not in (1, 3):
        raise ProtonetError(f"an image has 1 or 3 channels; the input wants {c}", loc)
    return max(n, 1), c, h, w


def preprocess_image(pixels: np.ndarray, meta: Preprocess | None, shape: tuple[int, ...] | None = None,
                     source: str | None = None) -> np.ndarray:
    """Apply the test-time transform (module docstring) to a decoded image: ``pixels`` is
    (H, W, 3) in RGB order or (H, W) / (H, W, 1) grey, uint8 or float (0-255). Returns a float32
    (N, C, H, W) array (the image repeated over the batch N) for the input ``meta`` describes;
    ``shape`` is that input's (N, C, H, W) (default ``meta.shape``; dims <= 0 are dynamic);
    ``meta=None`` means no mean, scale 1, BGR (or grey for C = 1), resized to H x W. ``source``
    names the image in messages."""
    loc = Location(source)
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3) or min(pixels.shape[:2]) < 1:
        raise ProtonetError(f"an image is an (H, W, 3) RGB or (H, W) grey array, not {pixels.shape}", loc)
    n, c, h, w = _input_dims(meta, shape, pixels.shape[:2], loc)
    if pixels.shape[2] != c:
        raise ProtonetError(f"the image has {pixels.shape[2]} channel(s), the input wants {c}", loc)
    if meta is None:
        meta = Preprocess(input="", shape=(n, c, h, w), channels=c)
    if meta.crop_hw and meta.crop_hw != (h, w):
        raise ProtonetError(f"the centre crop {meta.crop_hw[0]}x{meta.crop_hw[1]} differs from the input's "
                            f"{h}x{w}", loc)
    target, scale = resize_plan(meta, pixels.shape[:2], (h, w))
    _check_pixels(*target, "image after resizing", loc)
    if tuple(pixels.shape[:2]) != tuple(target):
        resize = resize_bilinear_u8 if pixels.dtype == np.uint8 else resize_bilinear
        x = resize(pixels, target, scale).astype(np.float32)
    else:
        x = pixels.astype(np.float32)
    ih, iw = x.shape[:2]
    if ih < h or iw < w:
        raise ProtonetError(f"image of {ih}x{iw} after resizing is smaller than the input's {h}x{w}", loc)
    top, left = (ih - h) // 2, (iw - w) // 2  # Caffe's test-time crop offsets (OpenCV's too)
    x = x[top:top + h, left:left + w]
    if c == 3 and meta.channel_order.upper() == "BGR":
        x = x[:, :, ::-1]
    x = np.ascontiguousarray(x.transpose(2, 0, 1))  # HWC -> CHW
    x = x - mean_for(meta, (ih, iw), (top, left), (c, h, w), loc)
    if meta.scale != 1.0:
        x = x * np.float32(meta.scale)
    return np.ascontiguousarray(np.broadcast_to(x[None], (n, c, h, w)), dtype=np.float32)


def load_image(path: str | Path, meta: Preprocess | None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a JPEG, PNG or BMP file (:func:`decode_image`) and apply the test-time transform
    (:func:`preprocess_image`): a float32 (N, C, H, W) array ready to feed the input ``meta``
    describes (``shape``: the input's (N, C, H, W), default ``meta.shape``)."""
    loc = Location(str(path))
    channels = _input_dims(meta, shape, (1, 1), loc)[1]
    return preprocess_image(decode_image(path, channels), meta, shape, str(path))


def photo_feed(path: str | Path, meta: Preprocess | None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """What a photo file feeds to the input ``meta`` describes (``shape``: that input's, default
    ``meta.shape``): the decoded uint8 (N, H, W, C) image when the model's graph preprocesses
    (``meta.embedded``, :func:`embedded_feed`), else the transformed float32 (N, C, H, W) array
    (:func:`load_image`)."""
    if meta is not None and meta.embedded:
        shape = tuple(meta.shape) if shape is None else tuple(shape)
        return embedded_feed(decode_image(path, shape[3] if len(shape) == 4 and shape[3] in (1, 3) else 3),
                             shape, str(path))
    return load_image(path, meta, shape)


def mean_for(meta: Preprocess, img_hw: tuple[int, int], offset: tuple[int, int], chw: tuple[int, int, int],
             loc: Location) -> np.ndarray:
    """What is subtracted from the cropped (C, H, W) image: the per-channel ``mean_value`` (one
    value serves every channel), the mean image under the crop, or 0."""
    c = chw[0]
    if meta.mean_value:
        mv = np.asarray(meta.mean_value, dtype=np.float32)
        if mv.size not in (1, c):
            raise ProtonetError(f"{mv.size} mean values for a {c}-channel input", loc)
        return np.broadcast_to(mv, (c,)).reshape(c, 1, 1)
    mean = meta.mean_array()
    if mean is not None:
        return _crop_mean(mean, img_hw, offset, chw, loc)
    if meta.mean_file:
        raise ProtonetError(f"the model's preprocessing subtracts the mean file '{meta.mean_file}', "
                            f"which was not found when it was compiled", loc)
    return np.zeros((c, 1, 1), np.float32)


def _crop_mean(mean: np.ndarray, img_hw: tuple[int, int], offset: tuple[int, int], chw: tuple[int, int, int],
               loc: Location) -> np.ndarray:
    """The mean pixels under the crop: at the crop's offset when the mean has the image's size
    (Caffe's rule), else its own centre."""
    c, h, w = chw
    if mean.shape[0] != c:
        raise ProtonetError(f"mean image has {mean.shape[0]} channel(s), the input {c}", loc)
    mh, mw = mean.shape[1:]
    if (mh, mw) == img_hw:
        top, left = offset
    elif mh >= h and mw >= w:
        top, left = (mh - h) // 2, (mw - w) // 2
    else:
        raise ProtonetError(f"mean image {mh}x{mw} is smaller than the input's {h}x{w}", loc)
    return mean[:, top:top + h, left:left + w]


def embedded_feed(pixels: np.ndarray, shape: tuple[int, ...], source: str | None = None) -> np.ndarray:
    """The feed of a model whose graph preprocesses (``--embed-preprocess``): the decoded uint8
    (H, W, C) image as (N, H, W, C), repeated over a fixed batch N; ``shape`` is the model's
    input (N, H, W, C), a dim <= 0 taking any size. A fixed H x W must be the photo's."""
    loc = Location(source)
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if len(shape) != 4:
        raise ProtonetError(f"the model's image input has shape {tuple(shape)}, not (N, H, W, C)", loc)
    n, h, w, c = shape
    if pixels.shape[2] != c:
        raise ProtonetError(f"the image has {pixels.shape[2]} channel(s), the model takes {c}", loc)
    if (h > 0 and h != pixels.shape[0]) or (w > 0 and w != pixels.shape[1]):
        raise ProtonetError(f"the model takes {h}x{w} images (its preprocessing is in its graph); this one is "
                            f"{pixels.shape[0]}x{pixels.shape[1]}: resize it first, or compile with "
                            f"--embed-preprocess --image-size {pixels.shape[0]},{pixels.shape[1]}", loc)
    return np.ascontiguousarray(np.broadcast_to(pixels[None], (max(n, 1), *pixels.shape)))
