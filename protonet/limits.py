"""Size limits: the one place that says how large a net protonet agrees to build.

A prototxt of a few hundred bytes can name a blob of 2^62 values or a PriorBox on a 30000 × 30000
map. Shape inference checks every size against these limits at build time, before anything of
that size is allocated, and refuses with a located error (exit 2):

=========================  ==========  ========================================================
limit                      default     what it bounds
=========================  ==========  ========================================================
``max_blob_elements``      2^31        one activation blob (8 GiB in float32)
``max_total_elements``     2^34        all activation blobs of the net together
``max_weight_elements``    2^29        one learned blob (weights filled or read from a file)
``max_constant_elements``  2^27        one constant a layer computes at compile time and embeds
                                       in the model (PriorBox boxes, unpooling and detection
                                       tables: 512 MiB in float32)
=========================  ==========  ========================================================

The files protonet reads are untrusted too: each reader checks the size a file declares (its
length, a header's shape) against these before it reads or allocates (:mod:`protonet.fileio`):

=========================  ==========  ========================================================
limit                      default     what it bounds
=========================  ==========  ========================================================
``max_net_text_bytes``     64 MiB      a net definition (protobuf's text parser needs ~20 bytes
                                       of memory per byte of text; real prototxts are < 5 MB)
``max_blank_run``          64 KiB      one run of blanks in a line of prototxt (protobuf's
                                       tokenizer costs ~150 bytes per blank of a run: 20 MB of
                                       spaces took 2.9 GB)
``max_weights_bytes``      8 GiB       a caffemodel read whole: from a pipe (which cannot be
                                       memory-mapped) or by ``upgrade``; a regular file is
                                       mapped and only the layers the net uses are read
``max_blob_pieces``        2^16        separate runs of values in one caffemodel blob (writers
                                       emit one)
``max_mean_file_bytes``    64 MiB      a ``mean_file`` (ImageNet's 3×256×256 mean is 786 KB)
``max_array_bytes``        4 GiB       one ``.npy``/``.npz`` input array, as its header declares
                                       it (checked before anything is decompressed)
``max_image_pixels``       2^26        a photo's pixels as its header gives them, and after the
                                       resize (8192²: below Pillow's own bomb warning)
``max_image_side``         65536       a side the preprocessing metadata asks to resize to
``fifo_wait_seconds``      10          how long a named pipe given as input may stay silent
=========================  ==========  ========================================================

Each can be changed for a run through the environment variable ``PROTONET_`` + its name in
capitals (e.g. ``PROTONET_MAX_BLOB_ELEMENTS=1e10``); :func:`current` reads them at each build.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Sequence

from .errors import LayerContext, ProtonetError


@dataclass(frozen=True)
class Limits:
    max_blob_elements: int = 1 << 31
    max_total_elements: int = 1 << 34
    max_weight_elements: int = 1 << 29
    max_constant_elements: int = 1 << 27
    max_net_text_bytes: int = 64 << 20
    max_blank_run: int = 64 << 10
    max_weights_bytes: int = 8 << 30
    max_blob_pieces: int = 1 << 16
    max_mean_file_bytes: int = 64 << 20
    max_array_bytes: int = 4 << 30
    max_image_pixels: int = 1 << 26
    max_image_side: int = 1 << 16
    fifo_wait_seconds: int = 10


def env_name(limit: str) -> str:
    return "PROTONET_" + limit.upper()


def current() -> Limits:
    """The defaults, with any ``PROTONET_MAX_*`` environment override applied (a positive number)."""
    values = {}
    for f in fields(Limits):
        text = os.environ.get(env_name(f.name))
        if text is None:
            continue
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 1 <= value < 2.0 ** 62:
            raise ProtonetError(f"{env_name(f.name)}={text!r}: give a positive number below 2^62")
        values[f.name] = int(value)
    return Limits(**values)


def elements(shape: Sequence[int]) -> int:
    """The number of values of ``shape`` (exact: Python integers do not overflow)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _check(ctx: LayerContext, what: str, shape: Sequence[int], limit: int, name: str) -> int:
    n = elements(shape)
    if n > limit:
        raise ctx.error(f"{what} of shape {tuple(int(d) for d in shape)} has {n:,} values, more than protonet's "
                        f"limit of {limit:,} ({env_name(name)})")
    return n


def check_blob(ctx: LayerContext, what: str, shape: Sequence[int], limits: Limits | None = None) -> int:
    """Refuse an activation blob above ``max_blob_elements``; return its number of values."""
    lim = limits or current()
    return _check(ctx, what, shape, lim.max_blob_elements, "max_blob_elements")


def check_weight(ctx: LayerContext, what: str, shape: Sequence[int], limits: Limits | None = None) -> int:
    """Refuse a learned blob above ``max_weight_elements``."""
    lim = limits or current()
    return _check(ctx, what, shape, lim.max_weight_elements, "max_weight_elements")


def check_constant(ctx: LayerContext, what: str, shape: Sequence[int], limits: Limits | None = None) -> int:
    """Refuse a compile-time constant (or a table a layer's lowering materialises) above
    ``max_constant_elements``. Layers call it from ``infer`` for what their lowering embeds."""
    lim = limits or current()
    return _check(ctx, what, shape, lim.max_constant_elements, "max_constant_elements")


def check_total(ctx: LayerContext, total: int, limits: Limits | None = None) -> None:
    """Refuse a net whose activation blobs hold more than ``max_total_elements`` values together."""
    lim = limits or current()
    if total > lim.max_total_elements:
        raise ctx.error(f"the net's blobs up to here hold {total:,} values together, more than protonet's limit "
                        f"of {lim.max_total_elements:,} ({env_name('max_total_elements')})")
