"""Reading inputs and writing outputs, safely.

Reading (:func:`read_input`, :func:`open_input`): a regular file or a pipe; a directory or a
device (``/dev/zero``, a terminal) is refused, and so is anything over the size limit of its kind
(:mod:`protonet.limits`), checked before the bytes are read. A named pipe (FIFO) is opened without
blocking and must deliver its first bytes within ``FIFO_WAIT_SECONDS``, so that a pipe nobody
writes to is an error, not a hang. A pipe is read once; callers sniff the bytes they got.

Writing (:func:`write_atomic`): a regular file (or a new one) is written to a temporary file in
the same folder, then renamed over the target, so that a failure or a signal never leaves a
partial file or a stray temporary. Anything else the user names is written *through*, never
replaced: ``-`` and a path that is the process's standard output go to file descriptor 1; a
symbolic link, a device or a named pipe is opened and written in place (the output is produced in
a temporary file first, so that an error leaves the target untouched).

Inside :func:`protect_inputs` (the CLI runs every command in one) each file read through this
module is remembered, and writing over any of them is refused: a command never overwrites a file
it reads (the net, the weights, a mean file, a plugin, an input array).
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import select
import shutil
import signal
import stat
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from . import limits
from .errors import Location, ProtonetError

#: (st_dev, st_ino) of every file read in the current :func:`protect_inputs` scope
_READ: contextvars.ContextVar[set[tuple[int, int]] | None] = contextvars.ContextVar("protonet_read", default=None)

READ_CHUNK = 1 << 20
#: bytes of the output's name kept in the temporary file's name (names may have 255 bytes)
TEMP_NAME_BYTES = 64

PathLike = str | os.PathLike[str]


# -- reading ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def protect_inputs() -> Iterator[None]:
    """Within this scope, every file read through this module cannot be written over."""
    token = _READ.set(set())
    try:
        yield
    finally:
        _READ.reset(token)


def note_input(path: PathLike | None, st: os.stat_result | None = None) -> None:
    """Remember ``path`` as read (inside :func:`protect_inputs`; elsewhere a no-op)."""
    seen = _READ.get()
    if seen is None or path is None:
        return
    try:
        st = st or os.stat(path)
    except (OSError, ValueError):
        return
    seen.add((st.st_dev, st.st_ino))


def _limit_error(what: str, size: int, limit: int, name: str, loc: Location) -> ProtonetError:
    return ProtonetError(f"{what} of {size:,} bytes is over protonet's limit of {limit:,} "
                         f"(raise it with PROTONET_{name})", loc)


def open_input(path: PathLike, what: str, cls: type[ProtonetError] = ProtonetError) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading: a regular file, or a pipe that delivers data within
    ``FIFO_WAIT_SECONDS``. Returns (blocking file descriptor, its stat). Anything else (a
    directory, a device) is a located error (of class ``cls``)."""
    loc = Location(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise cls(f"cannot read {what}: {e.strerror or e}", loc) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise cls(f"cannot read {what}: is a directory", loc)
        if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLHUP)
            wait = limits.current().fifo_wait_seconds
            if not poller.poll(wait * 1000):
                raise cls(f"cannot read {what}: nothing arrived from the pipe in {wait} s (is anything "
                          f"writing to it?)", loc)
        elif not stat.S_ISREG(st.st_mode):
            raise cls(f"cannot read {what}: a device, not a file or a pipe", loc)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    note_input(path, st)
    return fd, st


Limit = tuple[int, str]  # (bytes, the name of the limit in protonet.limits)


def read_input(path: PathLike, what: str, limit: Limit | Callable[[bytes], Limit]) -> bytes:
    """The whole content of a regular file or pipe, refused when over ``limit`` (checked on the
    file's size before reading, or while reading a pipe). ``limit`` may depend on the first
    bytes (text vs binary)."""
    fd, st = open_input(path, what)
    try:
        return read_fd(fd, st, path, what, limit)
    finally:
        os.close(fd)


def read_fd(fd: int, st: os.stat_result, path: PathLike, what: str,
            limit: Limit | Callable[[bytes], Limit]) -> bytes:
    """:func:`read_input` on a descriptor from :func:`open_input` (left open)."""
    loc = Location(str(path))
    try:
        first = os.read(fd, READ_CHUNK)
        cap, limit_name = limit(first) if callable(limit) else limit
        if stat.S_ISREG(st.st_mode) and st.st_size > cap or len(first) > cap:
            raise _limit_error(what, max(st.st_size, len(first)), cap, limit_name, loc)
        parts, total = [first], len(first)
        while first:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                raise _limit_error(what, total, cap, limit_name, loc)
            parts.append(chunk)
    except OSError as e:
        raise ProtonetError(f"cannot read {what}: {e.strerror or e}", loc) from None
    return b"".join(parts) if len(parts) > 1 else parts[0]


def is_regular_file(path: PathLike) -> bool:
    """``path`` names a regular file (through symbolic links); False for pipes, devices and
    missing files."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


# -- writing ---------------------------------------------------------------------------------------

def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_prefix(name: str) -> str:
    """``.NAME.`` for a temporary file beside NAME, NAME shortened (by bytes, on a character
    boundary) so that the temporary's name stays under the 255-byte file-name limit."""
    short = os.fsencode(name)[:TEMP_NAME_BYTES].decode("utf-8", "ignore")
    return f".{short}."


def writes_stdout(path: PathLike | None) -> bool:
    """``path`` is ``-`` or names the file or pipe that standard output already is."""
    if path is None:
        return False
    if str(path) == "-":
        return True
    try:
        a, b = os.stat(path), os.fstat(1)
    except (OSError, ValueError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def is_stream_target(path: PathLike) -> bool:
    """The output is written through (see the module docstring), not renamed into place."""
    if writes_stdout(path):
        return True
    try:
        return not stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True


def _refuse_inputs(path: Path, inputs: Iterable[PathLike | None], loc: Location,
                   may_replace: PathLike | None) -> None:
    try:
        st = os.stat(path)
        if may_replace is not None and os.path.samefile(path, may_replace):
            return
    except (OSError, ValueError):
        return
    read = _READ.get() or set()
    if (st.st_dev, st.st_ino) in read:
        raise ProtonetError("refusing to overwrite an input file", loc)
    for src in inputs:
        try:
            if src is not None and os.path.samefile(path, src):
                raise ProtonetError("refusing to overwrite an input file", loc)
        except (OSError, ValueError):
            continue


def _open_through(path: Path, loc: Location) -> int:
    """A descriptor to write the stream target ``path`` (see :func:`is_stream_target`)."""
    if writes_stdout(path):
        return os.dup(1)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ENXIO:  # a named pipe that no process reads
            raise ProtonetError("cannot write: no process is reading this pipe", loc) from None
        raise
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):  # a symbolic link to a regular file: rewrite the file
        os.ftruncate(fd, 0)
    os.set_blocking(fd, True)
    return fd


def _write_through(path: Path, write: Callable[[Path], None], loc: Location) -> None:
    with tempfile.TemporaryDirectory(prefix="protonet-") as d:
        staged = Path(d) / (path.name[:100] or "out")
        write(staged)
        fd = _open_through(path, loc)
        with open(staged, "rb") as src, os.fdopen(fd, "wb", closefd=True) as dst:
            shutil.copyfileobj(src, dst, READ_CHUNK)


def write_atomic(path: PathLike, write: Callable[[Path], None], inputs: Iterable[PathLike | None] = (),
                 may_replace: PathLike | None = None) -> None:
    """Call ``write(tmp)`` to produce the file, then move it over ``path`` (a regular file or a
    new one) or copy it through (``-``, standard output, a link, a device, a pipe; see the module
    docstring). Refuses to overwrite one of ``inputs``, a file read in the current
    :func:`protect_inputs` scope (but ``may_replace``, an in-place rewrite), or a directory.
    File-system failures become located errors; a broken pipe is raised as such."""
    loc = Location("<stdout>" if str(path) == "-" else str(path))
    path = Path(path)
    _refuse_inputs(path, inputs, loc, may_replace)
    try:
        if path.is_dir():
            raise ProtonetError("is a directory", loc)
        if is_stream_target(path):
            _write_through(path, write, loc)
            return
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else _umask_mode()
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except BrokenPipeError:
        raise
    except OSError as e:
        raise ProtonetError(f"cannot write: {e.strerror or e}", loc) from None


def write_bytes_atomic(path: PathLike, data: bytes, inputs: Iterable[PathLike | None] = (),
                       may_replace: PathLike | None = None) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data), inputs, may_replace)


def save_npz(path: PathLike, arrays: Mapping[str, np.ndarray], inputs: Iterable[PathLike | None] = ()) -> None:
    """An .npz of named arrays (any names, 'file' included), written atomically."""
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for name, arr in arrays.items():
                with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    write_atomic(path, write, inputs)


# -- signals ---------------------------------------------------------------------------------------

class Terminated(BaseException):
    """SIGTERM (or SIGHUP) arrived: unwinds like KeyboardInterrupt, so that temporary files go."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def unwind_on_signals() -> Iterator[None]:
    """Within this scope SIGTERM and SIGHUP raise :class:`Terminated` (SIGINT already raises
    KeyboardInterrupt), so that an interrupted write removes its temporary file. Handlers that
    are not the default are left alone; the previous ones come back at the end. Main thread only."""
    saved = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            saved[sig] = signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
