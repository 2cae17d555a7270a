"""One exception family for everything a user can get wrong, with a source location.

Messages follow one compiler-style format so that editors can jump to them::

    net.prototxt:42: layer 'conv3' (Convolution): kernel_size missing; set kernel_size or kernel_h/kernel_w

Exit codes (used by the CLI): 2 bad input, 3 verification mismatch, 1 internal error.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

EXIT_BAD_INPUT = 2
EXIT_MISMATCH = 3
EXIT_INTERNAL = 1


#: the longest message printed whole; longer ones keep their start and end
MAX_MESSAGE_CHARS = 2000


def printable(text: str) -> str:
    """``text`` with every character that is not printable (newlines, terminal escape codes,
    other control characters) written as its Python escape, so that a name taken from a file
    can neither forge a line of output nor drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quote(name: object) -> str:
    """A name (layer, blob) as messages show it: quoted, escaped like a Python literal."""
    return repr(name if isinstance(name, (str, bytes)) else str(name))


def shorten(text: str, most: int = MAX_MESSAGE_CHARS) -> str:
    """One message line of at most about ``most`` characters (a 20 MB token quoted in a parser
    message stays readable)."""
    if len(text) <= most:
        return text
    half = most // 2
    return f"{text[:half]} [... {len(text) - 2 * half:,} characters ...] {text[-half:]}"


@dataclass(frozen=True)
class Location:
    """Where something came from: a file, optionally a line/column and a layer."""

    file: str | None = None
    line: int | None = None
    col: int | None = None
    layer: str | None = None
    layer_type: str | None = None

    def with_layer(self, name: str | None, layer_type: str | None) -> "Location":
        return replace(self, layer=name, layer_type=layer_type)

    def prefix(self) -> str:
        parts = []
        if self.file is not None:
            where = printable(self.file)
            if self.line is not None:
                where += f":{self.line}"
                if self.col is not None:
                    where += f":{self.col}"
            parts.append(where)
        if self.layer is not None:
            kind = f" ({printable(self.layer_type)})" if self.layer_type else ""
            parts.append(f"layer {quote(self.layer)}{kind}")
        return ": ".join(parts)


class ProtonetError(Exception):
    """A problem with the user's input. ``str()`` gives the located one-line message."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, loc: Location | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc or Location()

    def __str__(self) -> str:
        prefix = self.loc.prefix()
        return shorten(f"{prefix}: {printable(self.message)}" if prefix else printable(self.message))


class SchemaError(ProtonetError):
    """The file is not valid text/binary for the Caffe schema."""


class UnsupportedError(ProtonetError):
    """Layer types or options that protonet does not implement."""


class WeightsError(ProtonetError):
    """A weights file that does not fit the net."""


class InternalError(ProtonetError):
    """protonet broke its own contract (e.g. onnxruntime refuses a model protonet wrote): exit 1."""

    exit_code = EXIT_INTERNAL


class VerificationError(ProtonetError):
    """The ONNX run and the reference interpreter disagree beyond tolerance."""

    exit_code = EXIT_MISMATCH


class LayerContext:
    """Handed to a layer's facets so that they can raise located errors.

    Layers never format locations themselves: they call ``ctx.error(msg)``.
    """

    def __init__(self, loc: Location, dialects: frozenset[str] = frozenset()):
        self.loc = loc
        #: the fork dialects the net is read in, where a fork changes a layer type of the same name
        #: (``"faceboxes"``: :mod:`protonet.layers.ssd`)
        self.dialects = dialects

    def error(self, message: str, cls: type[ProtonetError] = ProtonetError) -> ProtonetError:
        """Return (for ``raise``) a located error."""
        return cls(message, self.loc)
