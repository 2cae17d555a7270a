"""Photo decoding and test-time preprocessing (replaying :class:`frontend.preprocess.Preprocess`).

Caffe's test-time ``DataTransformer`` on an H0 x W0 image: crop the centre ``crop_size`` square at
offset ``((H0 - crop) // 2, (W0 - crop) // 2)``, subtract the mean (``mean_value`` per channel, or
the ``mean_file`` blob at the same offset), multiply by ``scale``; ``mirror`` applies in training
only. Caffe's images come pre-sized (by ``convert_imageset`` or ``new_height/new_width``); for an
arbitrary photo :func:`load_image` first resizes (bilinear, Pillow) by the first rule that applies:

1. the ``ImageData`` layer's ``new_height x new_width`` (Caffe resizes to exactly that);
2. with a crop and a mean file: the mean image's H x W (the size the database images had);
3. with a crop: the shorter side to ``8/7`` of the crop (256 for 224, 259 for 227), keeping
   the aspect ratio (the usual ImageNet evaluation recipe);
4. without a crop: exactly the input's H x W.

An image that already has the target size is not resampled. Pillow's bilinear filter
antialiases when shrinking, where OpenCV's ``INTER_LINEAR`` does not, so values of a downscaled
image differ slightly from a Caffe pipeline built on OpenCV.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from . import limits
from .errors import Location, ProtonetError
from .fileio import note_input
from .frontend.preprocess import Preprocess

#: the image formats protonet decodes (Pillow's names); every other format is refused
IMAGE_FORMATS = ("JPEG", "PNG", "BMP")


def _target_size(meta: Preprocess, img_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) to resize to before the centre crop (rules in the module docstring)."""
    h0, w0 = img_hw
    if meta.resize:
        return meta.resize
    cropping = meta.crop_size > 0
    if cropping and len(meta.mean_shape) == 3:
        return meta.mean_shape[1], meta.mean_shape[2]
    if cropping:
        if (h0, w0) == out_hw:
            return h0, w0
        side = max(out_hw) * 8 // 7
        if h0 <= w0:
            return side, max(out_hw[1], round(w0 * side / h0))
        return max(out_hw[0], round(h0 * side / w0)), side
    return out_hw


def _check_pixels(h: int, w: int, what: str, loc: Location) -> None:
    most = limits.current().max_image_pixels
    if h * w > most:
        raise ProtonetError(f"{what} of {h}x{w} pixels is over protonet's limit of {most:,} "
                            f"pixels (raise it with PROTONET_MAX_IMAGE_PIXELS)", loc)


def load_image(path: str | Path, meta: Preprocess | None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a JPEG, PNG or BMP file and apply the test-time transform: a float32 (N, C, H, W)
    array (the one image repeated over the batch N) ready to feed the input ``meta`` describes.

    The format is decided by the file's content, among :data:`IMAGE_FORMATS` only (Pillow never
    hands another file, such as EPS, to an external program); the image's pixels, as its header
    gives them, and the size it is resized to are limited by ``max_image_pixels`` (:mod:`protonet.limits`).

    ``shape`` is the input's (N, C, H, W) (default ``meta.shape``); ``meta=None`` means no
    mean, scale 1, BGR (or gray for C = 1), resized to H x W.
    """
    from PIL import Image, UnidentifiedImageError

    loc = Location(str(path))
    if shape is None:
        if meta is None or not meta.shape:
            raise ProtonetError("the input shape is unknown; give it", loc)
        shape = meta.shape
    if len(shape) != 4:
        raise ProtonetError(f"an image feeds a 4-D (N, C, H, W) input, not {tuple(shape)}", loc)
    n, c, h, w = (int(d) for d in shape)
    if (c <= 0 or h <= 0 or w <= 0) and meta is not None and len(meta.shape) == 4:  # dynamic dims
        c, h, w = (d if d > 0 else m for d, m in zip((c, h, w), meta.shape[1:]))
    if n <= 0:
        n = 1
    if h <= 0 or w <= 0:
        raise ProtonetError(f"the input's height and width are unknown ({tuple(shape)})", loc)
    if c not in (1, 3):
        raise ProtonetError(f"an image has 1 or 3 channels; the input wants {c}", loc)
    if meta is None:
        meta = Preprocess(input="", shape=tuple(shape), channels=c)
    try:
        with warnings.catch_warnings():  # protonet's own pixel limit applies, not Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as im:
                _check_pixels(im.height, im.width, "image", loc)
                note_input(path)
                th, tw = _target_size(meta, (im.height, im.width), (h, w))
                _check_pixels(th, tw, "image after resizing", loc)
                im = im.convert("RGB" if c == 3 else "L")
                if (im.height, im.width) != (th, tw):
                    im = im.resize((tw, th), Image.BILINEAR)
                pixels = np.asarray(im, dtype=np.float32)
    except UnidentifiedImageError:
        raise ProtonetError(f"cannot read image: not a {', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]} image "
                            f"(the formats protonet reads)", loc) from None
    except Image.DecompressionBombError as e:
        raise ProtonetError(f"cannot read image: {e}", loc) from None
    except (OSError, ValueError) as e:
        raise ProtonetError(f"cannot read image: {e}", loc) from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    ih, iw = pixels.shape[:2]
    if ih < h or iw < w:
        raise ProtonetError(f"image of {ih}x{iw} after resizing is smaller than the input's {h}x{w}", loc)
    top, left = (ih - h) // 2, (iw - w) // 2  # Caffe's test-time crop offsets
    x = pixels[top:top + h, left:left + w]
    if c == 3 and meta.channel_order.upper() == "BGR":
        x = x[:, :, ::-1]
    x = np.ascontiguousarray(x.transpose(2, 0, 1))  # HWC -> CHW
    if meta.mean_value:
        mv = np.asarray(meta.mean_value, dtype=np.float32)
        if mv.size not in (1, c):
            raise ProtonetError(f"{mv.size} mean values for a {c}-channel input", loc)
        x = x - np.broadcast_to(mv, (c,)).reshape(c, 1, 1)  # one value serves every channel
    else:
        mean = meta.mean_array()
        if mean is not None:
            x = x - _crop_mean(mean, (ih, iw), (top, left), (c, h, w), loc)
        elif meta.mean_file:
            raise ProtonetError(f"the model's preprocessing subtracts the mean file '{meta.mean_file}', "
                                f"which was not found when it was compiled", loc)
    if meta.scale != 1.0:
        x = x * np.float32(meta.scale)
    return np.ascontiguousarray(np.broadcast_to(x[None], (n, c, h, w)), dtype=np.float32)


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
