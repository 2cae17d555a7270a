"""Folders and lists of images: one result row per image, batched through onnxruntime.

``protonet infer MODEL DIR|LIST.txt -o results.csv|results.jsonl``:

- the images: a folder's JPEG, PNG and BMP files (by suffix, any case; its sub-folders too),
  in sorted path order; or a list file (``.txt``) of image paths, one a line, relative to the
  list's folder (blank lines and lines starting with ``#`` are skipped), optionally with Caffe's
  class label after the path (:func:`list_entries`; then the summary gives the accuracy,
  :class:`Accuracy`);
- each image goes through the model's preprocessing (:func:`protonet.images.photo_feed`) on a
  pool of threads that decodes ahead of the inference (a bounded window of images), so that
  decoding overlaps the run (Pillow and onnxruntime release the GIL);
- batches: a model with a fixed batch N is fed chunks of N (the last one padded with zeros,
  whose results are dropped); a model with a dynamic batch takes chunks of ``--batch`` (default
  :data:`DEFAULT_DYNAMIC_BATCH`);
- an image that cannot be read (missing, truncated, not an image) is reported on standard error
  and skipped; the run goes on, the summary counts them and the exit code is
  :data:`EXIT_SOME_FAILED` (4);
- rows (:func:`row_record`): the path as listed, then per output its answer
  (:mod:`protonet.answers`): the top-k classes, the boxes above the threshold, or a score map's
  pixel count per class. CSV: one column per top-k class, label and score, boxes as JSON in one
  cell; JSON Lines: one object per image. Written atomically (:func:`protonet.fileio.write_atomic`);
- pictures (:class:`Pictures`): ``--draw DIR`` and ``--segmentation DIR`` name folders (made when
  missing) that get one picture per image read, as `protonet infer PHOTO --draw/--segmentation`
  writes it (:func:`protonet.answers.write_pictures`): ``DIR/<stem>.jpg`` (the photo with its boxes,
  JPEG) and ``DIR/<stem>.png`` (the class per pixel, VOC colours), ``<stem>`` the image's file name
  without its suffix; images that share a stem get ``-N`` after it, N their position in the list
  (:func:`picture_stems`). Each written atomically as its image is done; an image that cannot be
  read gets none;
- a progress bar with images/s on standard error when it is a terminal (tqdm), nothing otherwise.
"""
from __future__ import annotations

import collections
import csv
import io
import json
import logging
import os
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import limits
from .answers import Answer, Geometry, Reader, check_pictures, photo_geometry, write_pictures
from .errors import Location, ProtonetError, printable, quote
from .fileio import read_input, write_atomic

log = logging.getLogger(__name__)

#: the exit code of a run in which some images could not be read (the others' rows are written)
EXIT_SOME_FAILED = 4

#: the image files a folder is searched for (by suffix, any case)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

#: the result files, by suffix
RESULT_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}

#: the chunk size for a model with a dynamic batch dimension when --batch is not given
DEFAULT_DYNAMIC_BATCH = 8

#: decoding threads by default: the CPU count, at most this
MAX_DEFAULT_WORKERS = 8


def is_batch_input(spec: str, out: str | None) -> bool:
    """Folder mode: a folder, a ``.txt`` list, or any input with a ``.csv``/``.jsonl`` output."""
    return Path(spec).is_dir() or Path(spec).suffix.lower() == ".txt" or \
        (out is not None and Path(out).suffix.lower() in RESULT_FORMATS)


@dataclass(frozen=True)
class Entry:
    """One image of a folder or list: its path, and the class label a Caffe list gives it."""

    path: str
    label: int | None = None
    line: int | None = None  # in the list file


_LABELLED = re.compile(r"(.*?\S)\s+(-?\d+)")


def list_entries(spec: str | Path) -> list[Entry]:
    """The images named by ``spec`` (module docstring): a folder, a list file or one image. A list
    line "PATH LABEL" whose last word is an integer and whose whole text names no file is Caffe's
    ``ImageData`` / ``convert_imageset`` list format: the path, then the image's class."""
    path = Path(spec)
    if path.is_dir():
        found = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            found += [os.path.join(root, f) for f in sorted(files) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
        if not found:
            raise ProtonetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder", Location(str(spec)))
        return [Entry(f) for f in found]
    if path.suffix.lower() != ".txt":
        return [Entry(str(spec))]
    data = read_input(path, "image list", (limits.current().max_net_text_bytes, "MAX_NET_TEXT_BYTES"))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ProtonetError(f"the image list is not UTF-8 text (byte {e.start})", Location(str(spec))) from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where, label = os.path.join(path.parent, line), None
        m = _LABELLED.fullmatch(line)
        if m and not os.path.exists(where):
            where, label = os.path.join(path.parent, m.group(1)), int(m.group(2))
        entries.append(Entry(where, label, number))
    if not entries:
        raise ProtonetError("the list names no images", Location(str(spec)))
    return entries


def list_images(spec: str | Path) -> list[str]:
    """The paths of :func:`list_entries`."""
    return [e.path for e in list_entries(spec)]


@dataclass(frozen=True)
class Failure:
    """An image that could not be read, and why (the located message)."""

    path: str
    message: str


@dataclass(frozen=True)
class Summary:
    images: int
    done: int
    failed: tuple[Failure, ...]
    seconds: float
    batch: int

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Decoded:
    index: int  # in the list
    path: str
    array: np.ndarray  # what the input takes for one image: (C, H, W), or (H, W, C) uint8 when embedded
    geometry: Geometry


def row_record(path: str, answers: Sequence[Answer]) -> dict[str, Any]:
    """One image's JSON row: ``{"path": ..., OUTPUT: answer record, ...}``."""
    row: dict[str, Any] = {"path": path}
    for a in answers:
        rec = a.record()
        if rec is not None:
            row[a.output] = rec
    return row


class Runner:
    """Runs photos through a session's image input in batches, decoding ahead on threads.

    ``name``, ``shape``: the input photos feed and its shape (a dimension <= 0 is dynamic);
    ``meta``: their preprocessing (:func:`protonet.images.photo_feed`)."""

    def __init__(self, session: Any, name: str, shape: Sequence[int], meta: Any, reader: Reader,
                 batch: int | None = None, workers: int | None = None):
        names = session.input_names
        if names != [name]:
            raise ProtonetError(f"a folder of images feeds a single-input net; this one has {len(names)} inputs "
                                f"({', '.join(names)})")
        if len(shape) != 4:
            raise ProtonetError(f"an image feeds a 4-D input, not {tuple(shape)}")
        fixed = int(shape[0])
        if fixed > 0 and batch is not None and batch != fixed:
            raise ProtonetError(f"--batch {batch}: the model has a fixed batch of {fixed} (recompile it with "
                                f"--batch {batch}, or with a dynamic batch)")
        self.session, self.input = session, name
        self.chunk = fixed if fixed > 0 else batch or DEFAULT_DYNAMIC_BATCH
        self.fixed = fixed > 0
        self.shape = (1,) + tuple(int(d) for d in shape[1:])
        self.meta, self.reader = meta, reader
        self.workers = workers or min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)

    def _decode(self, index: int, path: str) -> _Decoded | Failure:
        from .images import photo_feed

        try:
            x = photo_feed(path, self.meta, self.shape)[0]
            return _Decoded(index, path, x, photo_geometry(path, self.meta, self.shape))
        except ProtonetError as e:
            return Failure(path, str(e))
        except MemoryError:
            raise
        except Exception as e:  # a decoder's own failure on a damaged file: that file is skipped
            return Failure(path, f"{printable(path)}: cannot read image: {type(e).__name__}: {e}")

    def _decoded(self, paths: Iterable[str]) -> Iterator[_Decoded | Failure]:
        """The paths decoded in order, at most ``2 * max(chunk, workers)`` images ahead."""
        ahead = 2 * max(self.chunk, self.workers)
        pending: collections.deque[Future[_Decoded | Failure]] = collections.deque()
        todo = iter(enumerate(paths))
        with ThreadPoolExecutor(self.workers, thread_name_prefix="protonet-decode") as pool:
            try:
                while True:
                    while len(pending) < ahead:
                        p = next(todo, None)
                        if p is None:
                            break
                        pending.append(pool.submit(self._decode, *p))
                    if not pending:
                        return
                    yield pending.popleft().result()
            finally:
                for f in pending:
                    f.cancel()

    def _run_chunk(self, items: list[_Decoded]) -> list[list[Answer]]:
        """One run: the items stacked (the same shape), zero-padded to a fixed batch."""
        first = items[0].array
        n = self.chunk if self.fixed else len(items)
        x = np.zeros((n,) + first.shape, dtype=first.dtype)
        for i, d in enumerate(items):
            x[i] = d.array
        outs = self.session.run({self.input: x})
        return [self.reader.read(outs, i, d.geometry) for i, d in enumerate(items)]

    def run(self, paths: Sequence[str], on_row: Callable[[int, list[Answer], Geometry], None],
            on_error: Callable[[Failure], None] = lambda f: None,
            progress: Callable[[int], None] = lambda n: None) -> Summary:
        """Run every image; ``on_row(index, answers, geometry)`` in input order for each image read,
        ``on_error`` for each one that could not be, ``progress(n)`` as images are done."""
        t0 = time.perf_counter()
        failed: list[Failure] = []
        items: list[_Decoded] = []
        done = 0

        def flush() -> None:
            nonlocal done
            for d, answers in zip(items, self._run_chunk(items)):
                on_row(d.index, answers, d.geometry)
            done += len(items)
            progress(len(items))
            items.clear()

        for d in self._decoded(paths):
            if isinstance(d, Failure):
                failed.append(d)
                on_error(d)
                progress(1)
                continue
            if items and d.array.shape != items[0].array.shape:  # a dynamic image size: one run per size
                flush()
            items.append(d)
            if len(items) == self.chunk:
                flush()
        if items:
            flush()
        return Summary(len(paths), done, tuple(failed), time.perf_counter() - t0, self.chunk)


# -- pictures ------------------------------------------------------------------------------------

def picture_stems(paths: Sequence[str]) -> list[str]:
    """The name (without suffix) of each image's pictures: its file's stem; when several images
    share a stem (compared without case, as some file systems compare names), each of them gets
    ``-N``, N its 1-based position in the list (the next free number when an image's own stem
    already takes that name), so that none overwrites another."""
    stems = [Path(p).stem for p in paths]
    count = collections.Counter(s.casefold() for s in stems)
    taken = {s.casefold() for s in stems if count[s.casefold()] == 1}
    names = []
    for i, stem in enumerate(stems):
        if count[stem.casefold()] > 1:
            n = i + 1
            while f"{stem}-{n}".casefold() in taken:
                n += 1
            stem = f"{stem}-{n}"
            taken.add(stem.casefold())
        names.append(stem)
    return names


def _folder(path: str, flag: str) -> Path:
    """The pictures folder ``path`` of ``flag``, made when missing."""
    where = Path(path)
    try:
        where.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ProtonetError(f"{flag}: with a folder or list of images this names a folder for one picture per "
                            f"image, and a file of that name exists", Location(path)) from None
    except OSError as e:
        raise ProtonetError(f"{flag}: cannot make the folder: {e.strerror or e}", Location(path)) from None
    return where


@dataclass(frozen=True)
class Pictures:
    """The ``--draw`` and ``--segmentation`` folders of a folder run (module docstring), each
    image's picture stem (:func:`picture_stems`), and the files no picture may overwrite."""

    draw: Path | None
    segmentation: Path | None
    stems: tuple[str, ...]
    inputs: tuple[str | None, ...] = ()

    @classmethod
    def make(cls, draw: str | None, segmentation: str | None, paths: Sequence[str],
             inputs: Sequence[str | None] = ()) -> "Pictures | None":
        """The folders made (None when neither is given)."""
        if draw is None and segmentation is None:
            return None
        return cls(None if draw is None else _folder(draw, "--draw"),
                   None if segmentation is None else _folder(segmentation, "--segmentation"),
                   tuple(picture_stems(paths)), tuple(inputs))

    def write(self, index: int, path: str, answers: Sequence[Answer], geometry: Geometry) -> int:
        """Write image ``index``'s pictures (at ``path``); returns how many."""
        stem = self.stems[index]
        draw = None if self.draw is None else str(self.draw / f"{stem}.jpg")
        segmentation = None if self.segmentation is None else str(self.segmentation / f"{stem}.png")
        return len(write_pictures(answers, path, geometry, draw, segmentation, self.inputs + (path,)))


# -- result files ------------------------------------------------------------------------------

def csv_columns(reader: Reader, out_shapes: Mapping[str, Sequence[int]]) -> list[tuple[str, str, int]]:
    """(column name, output, top-k rank or -1) for every CSV column after ``path``: per
    classification output k (class, [label,] score) triples, one JSON cell for any other
    answer. Output names prefix the columns when there is more than one output."""
    shown = {n: reader.kind(n, s) for n, s in out_shapes.items()}
    shown = {n: k for n, k in shown.items() if k in ("classes", "detections", "proposals", "segmentation",
                                                       "label_map")}
    cols: list[tuple[str, str, int]] = []
    for name, kind in shown.items():
        pre = f"{name}:" if len(shown) > 1 else ""
        if kind == "classes":
            classes = int(np.prod(out_shapes[name][1:]))
            k = reader.top_k if classes <= 0 else min(reader.top_k, classes)
            for r in range(k):
                cols.append((f"{pre}top{r + 1}_class", name, r))
                if reader.labels is not None:
                    cols.append((f"{pre}top{r + 1}_label", name, r))
                cols.append((f"{pre}top{r + 1}_score", name, r))
        else:
            cols.append((f"{pre}{'boxes' if kind in ('detections', 'proposals') else 'pixels_per_class'}", name, -1))
    return cols


def csv_cells(cols: Sequence[tuple[str, str, int]], path: str, answers: Sequence[Answer]) -> list[str]:
    by_name = {a.output: a for a in answers}
    cells = [path]
    for col, name, rank in cols:
        a = by_name.get(name)
        if a is None:
            cells.append("")
        elif rank < 0:
            cells.append(json.dumps(a.record(), separators=(",", ":")))
        elif rank >= len(a.classes):
            cells.append("")
        else:
            r = a.classes[rank]
            field = col.rsplit("_", 1)[1]
            cells.append(str(r.index) if field == "class" else r.label or "" if field == "label" else repr(r.score))
    return cells


class ResultWriter:
    """Rows of a CSV or JSON Lines file, written as they come into the open stream."""

    def __init__(self, stream: Any, fmt: str, cols: Sequence[tuple[str, str, int]], truth: bool = False):
        self.fmt, self.cols, self.stream, self.truth = fmt, list(cols), stream, truth
        self.csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(["path"] + (["truth"] if truth else []) + [c for c, _, _ in self.cols])

    def row(self, entry: Entry, answers: Sequence[Answer]) -> None:
        """One image's row (with its list label under ``truth`` when the list gives labels)."""
        if self.csv is not None:
            cells = csv_cells(self.cols, entry.path, answers)
            if self.truth:
                cells.insert(1, "" if entry.label is None else str(entry.label))
            self.csv.writerow(cells)
        else:
            rec = row_record(entry.path, answers)
            if self.truth:
                rec = {"path": rec.pop("path"), "truth": entry.label, **rec}
            self.stream.write(json.dumps(rec, ensure_ascii=False) + "\n")


@dataclass
class Accuracy:
    """Caffe's Accuracy layer over the labelled images, on one classification output: an image
    counts for top-k when fewer than k classes score strictly above its label's class (so ties
    count as hits, as in Caffe)."""

    output: str
    k: int
    seen: int = 0
    top1: int = 0
    topk: int = 0

    def add(self, label: int | None, answers: Sequence[Answer]) -> None:
        row = next((a.scores for a in answers if a.output == self.output), None)
        if label is None or row is None:
            return
        above = int(np.sum(row > row[label]))
        self.seen += 1
        self.top1 += above < 1
        self.topk += above < self.k

    def describe(self) -> str:
        if not self.seen:
            return ""
        return (f"; output {quote(self.output)}: top-1 accuracy {self.top1 / self.seen:.4f}, top-{self.k} "
                f"{self.topk / self.seen:.4f} over {self.seen} labelled image(s)")


def _accuracy(entries: Sequence[Entry], reader: Reader, out_shapes: Mapping[str, Sequence[int]],
              spec: str) -> Accuracy | None:
    """The accuracy of the first classification output, when the list gives labels (each checked
    to be one of its classes, as Caffe's Accuracy layer checks)."""
    labelled = [e for e in entries if e.label is not None]
    output = next((n for n, s in out_shapes.items() if reader.kind(n, s) == "classes"), None)
    if not labelled or output is None:
        return None
    classes = int(np.prod(out_shapes[output][1:]))
    for e in labelled:
        if e.label is not None and (e.label < 0 or 0 < classes <= e.label):
            raise ProtonetError(f"label {e.label} is not a class of output {quote(output)} ({classes} classes)",
                                Location(spec, e.line))
    return Accuracy(output, reader.top_k)


def result_format(out: str | None) -> str:
    """The result format from ``-o`` (``-``, standard output, is CSV); refuses other suffixes."""
    if out is None:
        raise ProtonetError("a folder or list of images writes one row per image: give -o results.csv or "
                            "results.jsonl (or -o - for CSV on standard output)")
    if out == "-":
        return "csv"
    fmt = RESULT_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise ProtonetError(f"results go to a .csv or .jsonl file, not {Path(out).suffix or 'a file without suffix'}",
                            Location(out))
    return fmt


# -- the command -------------------------------------------------------------------------------

def _progress_bar(total: int) -> Any:
    """A tqdm bar with images/s on standard error when it is a terminal; None otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    # a terminal that reports no width (a bare pseudo-terminal) gets 80 columns, not an empty bar
    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=columns > 0, ncols=None if columns else 80)


def run_batch_cli(args: Any, spec: str, session: Any, name: str, shape: Sequence[int], meta: Any,
                  reader: Reader, announce: Callable[[], None] = lambda: None) -> int:
    """``protonet infer MODEL DIR|LIST.txt -o results.csv|.jsonl`` (module docstring): photos feed
    input ``name`` of ``shape`` through ``meta``; ``announce()`` says the preprocessing once the
    options and the list are checked. Returns the exit code (0, or :data:`EXIT_SOME_FAILED` when
    some images could not be read)."""
    fmt = result_format(args.out)
    entries = list_entries(spec)
    paths = [e.path for e in entries]
    batch = getattr(args, "batch", None)  # an integer, or 'dynamic' (how a prototxt was compiled)
    runner = Runner(session, name, shape, meta, reader, batch if isinstance(batch, int) else None,
                    getattr(args, "workers", None))
    out_shapes = {o.name: tuple(d if isinstance(d, int) else -1 for d in o.shape)
                  for o in session.session.get_outputs()}
    cols = csv_columns(reader, out_shapes)
    accuracy = _accuracy(entries, reader, out_shapes, spec)
    check_pictures(reader, out_shapes, True, args.draw, args.segmentation, folders=True)
    inputs = [args.model, spec, getattr(args, "weights", None)]
    pictures = Pictures.make(args.draw, args.segmentation, paths, inputs)
    drawn = 0
    announce()
    bar = _progress_bar(len(paths))

    def report(f: Failure) -> None:
        if bar is not None:
            bar.write(f"protonet: {f.message}", file=sys.stderr)
        else:
            print(f"protonet: {f.message}", file=sys.stderr, flush=True)

    summary: list[Summary] = []

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = ResultWriter(f, fmt, cols, truth=any(e.label is not None for e in entries))

            def row(index: int, answers: list[Answer], geometry: Geometry) -> None:
                nonlocal drawn
                entry = entries[index]
                w.row(entry, answers)
                if accuracy is not None:
                    accuracy.add(entry.label, answers)
                if pictures is not None:
                    drawn += pictures.write(index, entry.path, answers, geometry)

            summary.append(runner.run(paths, row, report, bar.update if bar is not None else lambda n: None))

    try:
        write_atomic(args.out, write, inputs=inputs + paths)
    finally:
        if bar is not None:
            bar.close()
    s = summary[0]
    failed = f"; {len(s.failed)} could not be read (skipped, listed above)" if s.failed else ""
    pics = "" if pictures is None else f"; {drawn} picture(s) in " + " and ".join(
        str(d) for d in (pictures.draw, pictures.segmentation) if d is not None)
    print(f"{s.done} of {s.images} image(s) in {s.seconds:.2f} s ({s.rate:.1f} images/s) on "
          f"{session.provider.upper()}, batch {s.batch}{failed}"
          f"{accuracy.describe() if accuracy is not None else ''}{pics}; wrote {args.out}", flush=True)
    return EXIT_SOME_FAILED if s.failed else 0
