"""Writing output files: atomically (temporary file in the same folder, then rename), so that a
failure never leaves a partial file, and with user-level errors for what the user got wrong."""
from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from .errors import Location, ProtonetError


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], None],
                 inputs: Iterable[str | os.PathLike[str] | None] = ()) -> None:
    """Call ``write(tmp)`` to produce the file, then move it over ``path``.

    Refuses to overwrite one of ``inputs`` or a directory; a device or pipe (``/dev/null``) is
    written directly, never replaced. File-system failures become located errors."""
    path = Path(path)
    loc = Location(str(path))
    for src in inputs:
        if src is not None and path.exists() and Path(src).exists() and os.path.samefile(path, src):
            raise ProtonetError("refusing to overwrite an input file", loc)
    try:
        if path.is_dir():
            raise ProtonetError("is a directory", loc)
        if path.exists() and not path.is_file():  # /dev/null and friends
            write(path)
            return
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else _umask_mode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise ProtonetError(f"cannot write: {e.strerror or e}", loc) from None


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes,
                       inputs: Iterable[str | os.PathLike[str] | None] = ()) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data), inputs)


def save_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray],
             inputs: Iterable[str | os.PathLike[str] | None] = ()) -> None:
    """An .npz of named arrays (any names, 'file' included), written atomically."""
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for name, arr in arrays.items():
                with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    write_atomic(path, write, inputs)
