"""A small net-building API that emits Caffe (current, V2 ``layer {}``) prototxt.

This module is pure text generation: it has no dependency on the rest of
protonet nor on protobuf.  Layers are added to a :class:`NetSpec` one call at a
time; each call returns a :class:`Blob` handle naming the layer's top blob,
which is passed as the bottom of later layers.  :meth:`NetSpec.to_prototxt`
returns the whole net as deterministic, 2-space-indented text.

Example::

    n = NetSpec("LeNet", header=["LeNet-5 (Caffe MNIST example)"])
    x = n.input("data", (1, 1, 28, 28))
    x = n.conv(x, 20, kernel=5, name="conv1")
    x = n.pool(x, "MAX", kernel=2, stride=2, name="pool1")
    x = n.inner_product(x, 10, name="ip")
    n.softmax(x, name="prob")
    text = n.to_prototxt()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple, Union

__all__ = ["Blob", "NetSpec", "IntOrPair"]

IntOrPair = Union[int, Tuple[int, int]]


@dataclass(frozen=True)
class Blob:
    """Handle to a named blob (the top of some layer)."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class _Enum:
    """A bare protobuf enum value (emitted without quotes)."""

    value: str


# A parameter block is a list of (key, value) entries; a value is a scalar, an
# _Enum, or a nested block.
_Entry = Tuple[str, object]


# Base of auto-generated layer names ("<base>1", "<base>2", ...).
_AUTO_NAME = {
    "Convolution": "conv", "Pooling": "pool", "LRN": "norm", "InnerProduct": "fc",
    "BatchNorm": "bn", "Dropout": "drop", "ShuffleChannel": "shuffle",
}


def _fmt_scalar(value: object) -> str:
    if isinstance(value, _Enum):
        return value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    raise TypeError(f"unsupported prototxt value {value!r}")


def _emit(entries: Sequence[_Entry], indent: int, out: List[str]) -> None:
    pad = "  " * indent
    for key, value in entries:
        if isinstance(value, list):
            out.append(f"{pad}{key} {{")
            _emit(value, indent + 1, out)
            out.append(f"{pad}}}")
        else:
            out.append(f"{pad}{key}: {_fmt_scalar(value)}")


def _pair(value: IntOrPair) -> Tuple[int, int]:
    if isinstance(value, int):
        return value, value
    h, w = value
    return int(h), int(w)


def _spatial(entries: List[_Entry], key: str, value: IntOrPair, default: int) -> None:
    """Append ``key`` (square) or ``key_h``/``key_w`` (rectangular) entries."""
    h, w = _pair(value)
    if h == w:
        if h != default:
            entries.append((key, h))
    else:
        entries.append((f"{key}_h", h))
        entries.append((f"{key}_w", w))


def _filler(kind: str, value: Optional[float] = None) -> List[_Entry]:
    entries: List[_Entry] = [("type", kind)]
    if value is not None:
        entries.append(("value", value))
    return entries


class NetSpec:
    """Accumulates layers and renders them as a Caffe ``NetParameter`` prototxt.

    Args:
        name: the net's ``name:`` field.
        header: comment lines written (each prefixed with ``# ``) at the top of
            the file.
        weight_filler: default ``weight_filler`` type for Convolution and
            InnerProduct layers (e.g. ``"msra"``, ``"xavier"``), or ``None`` to
            omit fillers.
        bias_filler: default constant value for ``bias_filler`` of layers that
            have a bias, or ``None`` to omit it.
    """

    def __init__(
        self,
        name: str,
        header: Optional[Iterable[str]] = None,
        weight_filler: Optional[str] = None,
        bias_filler: Optional[float] = None,
    ) -> None:
        self.name = name
        self.header: List[str] = list(header or [])
        self.weight_filler = weight_filler
        self.bias_filler = bias_filler
        self._layers: List[Tuple[str, str, List[str], List[str], List[_Entry]]] = []
        self._names: set = set()
        self._counters: dict = {}

    # ------------------------------------------------------------------ core
    def _auto_name(self, base: str) -> str:
        k = self._counters.get(base, 0)
        while True:
            k += 1
            candidate = f"{base}{k}"
            if candidate not in self._names:
                self._counters[base] = k
                return candidate

    def layer(
        self,
        type_: str,
        bottoms: Sequence[Blob],
        name: Optional[str] = None,
        top: Optional[str] = None,
        inplace: bool = False,
        params: Optional[List[_Entry]] = None,
    ) -> Blob:
        """Add a generic layer and return its (single) top blob.

        Args:
            type_: Caffe layer type string, e.g. ``"Convolution"``.
            bottoms: input blobs.
            name: layer name; auto-generated when omitted (``conv1``, ``pool2``,
                ``relu3``, ...: a short per-type base plus a counter).
            top: top blob name; defaults to the layer name (or to the bottom's
                name when ``inplace``).
            inplace: write the result into the (single) bottom blob.
            params: extra entries of the layer message, e.g.
                ``[("relu_param", [("negative_slope", 0.1)])]``.
        """
        if name is None:
            name = self._auto_name(_AUTO_NAME.get(type_, type_.lower()))
        if name in self._names:
            raise ValueError(f"duplicate layer name {name!r}")
        if inplace:
            if len(bottoms) != 1:
                raise ValueError("in-place layers take exactly one bottom")
            top_name = bottoms[0].name if top is None else top
        else:
            top_name = name if top is None else top
        self._names.add(name)
        self._layers.append(
            (name, type_, [b.name for b in bottoms], [top_name], list(params or []))
        )
        return Blob(top_name)

    def _weights(
        self,
        entries: List[_Entry],
        bias: bool,
        weight_filler: Optional[str],
        bias_filler: Optional[float],
    ) -> None:
        wf = self.weight_filler if weight_filler is None else weight_filler
        bf = self.bias_filler if bias_filler is None else bias_filler
        if wf:
            entries.append(("weight_filler", _filler(wf)))
        if bias and bf is not None:
            entries.append(("bias_filler", _filler("constant", float(bf))))

    # ---------------------------------------------------------------- layers
    def input(self, name: str, shape: Sequence[int]) -> Blob:
        """``Input`` layer producing blob ``name`` with ``input_param { shape }``."""
        dims: List[_Entry] = [("dim", int(d)) for d in shape]
        return self.layer("Input", [], name=name, params=[("input_param", [("shape", dims)])])

    def conv(
        self,
        bottom: Blob,
        num_output: int,
        kernel: IntOrPair,
        stride: IntOrPair = 1,
        pad: IntOrPair = 0,
        dilation: int = 1,
        group: int = 1,
        bias: bool = True,
        name: Optional[str] = None,
        top: Optional[str] = None,
        weight_filler: Optional[str] = None,
        bias_filler: Optional[float] = None,
    ) -> Blob:
        """``Convolution``; ``kernel``/``stride``/``pad`` accept ``k`` or ``(kh, kw)``."""
        p: List[_Entry] = [("num_output", int(num_output))]
        if not bias:
            p.append(("bias_term", False))
        _spatial(p, "pad", pad, 0)
        kh, kw = _pair(kernel)
        if kh == kw:
            p.append(("kernel_size", kh))
        else:
            p.extend([("kernel_h", kh), ("kernel_w", kw)])
        _spatial(p, "stride", stride, 1)
        if dilation != 1:
            p.append(("dilation", int(dilation)))
        if group != 1:
            p.append(("group", int(group)))
        self._weights(p, bias, weight_filler, bias_filler)
        return self.layer("Convolution", [bottom], name=name, top=top,
                          params=[("convolution_param", p)])

    def pool(
        self,
        bottom: Blob,
        method: str = "MAX",
        kernel: Optional[IntOrPair] = None,
        stride: IntOrPair = 1,
        pad: IntOrPair = 0,
        global_pooling: bool = False,
        name: Optional[str] = None,
        top: Optional[str] = None,
    ) -> Blob:
        """``Pooling`` (``method`` is ``"MAX"`` or ``"AVE"``).

        Caffe rounds the output size up: ``ceil((H + 2p - k) / s) + 1``.
        """
        method = method.upper()
        if method not in ("MAX", "AVE", "STOCHASTIC"):
            raise ValueError(f"unknown pooling method {method!r}")
        p: List[_Entry] = [("pool", _Enum(method))]
        if global_pooling:
            p.append(("global_pooling", True))
        else:
            if kernel is None:
                raise ValueError("pooling needs a kernel unless global_pooling")
            kh, kw = _pair(kernel)
            if kh == kw:
                p.append(("kernel_size", kh))
            else:
                p.extend([("kernel_h", kh), ("kernel_w", kw)])
            sh, sw = _pair(stride)
            if sh == sw:
                p.append(("stride", sh))  # explicit even when 1, as in BVLC deploys
            else:
                p.extend([("stride_h", sh), ("stride_w", sw)])
            _spatial(p, "pad", pad, 0)
        return self.layer("Pooling", [bottom], name=name, top=top,
                          params=[("pooling_param", p)])

    def lrn(
        self,
        bottom: Blob,
        local_size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 1.0,
        norm_region: str = "ACROSS_CHANNELS",
        name: Optional[str] = None,
        top: Optional[str] = None,
    ) -> Blob:
        """``LRN`` (local response normalization)."""
        p: List[_Entry] = [("local_size", int(local_size)), ("alpha", float(alpha)),
                           ("beta", float(beta))]
        if norm_region != "ACROSS_CHANNELS":
            p.append(("norm_region", _Enum(norm_region)))
        if k != 1.0:
            p.append(("k", float(k)))
        return self.layer("LRN", [bottom], name=name, top=top, params=[("lrn_param", p)])

    def relu(
        self,
        bottom: Blob,
        inplace: bool = True,
        name: Optional[str] = None,
        top: Optional[str] = None,
        negative_slope: float = 0.0,
    ) -> Blob:
        """``ReLU`` (in place by default)."""
        params: List[_Entry] = []
        if negative_slope:
            params.append(("relu_param", [("negative_slope", float(negative_slope))]))
        return self.layer("ReLU", [bottom], name=name, top=top, inplace=inplace, params=params)

    def sigmoid(self, bottom: Blob, inplace: bool = False, name: Optional[str] = None,
                top: Optional[str] = None) -> Blob:
        """``Sigmoid``."""
        return self.layer("Sigmoid", [bottom], name=name, top=top, inplace=inplace)

    def batchnorm(self, bottom: Blob, inplace: bool = True, name: Optional[str] = None,
                  top: Optional[str] = None, eps: Optional[float] = None) -> Blob:
        """``BatchNorm`` with ``use_global_stats: true`` (inference)."""
        p: List[_Entry] = [("use_global_stats", True)]
        if eps is not None:
            p.append(("eps", float(eps)))
        return self.layer("BatchNorm", [bottom], name=name, top=top, inplace=inplace,
                          params=[("batch_norm_param", p)])

    def scale(self, bottom: Blob, bias_term: bool = True, inplace: bool = True,
              name: Optional[str] = None, top: Optional[str] = None) -> Blob:
        """``Scale`` (learned per-channel scale, plus bias when ``bias_term``)."""
        return self.layer("Scale", [bottom], name=name, top=top, inplace=inplace,
                          params=[("scale_param", [("bias_term", bool(bias_term))])])

    def batchnorm_scale(
        self,
        bottom: Blob,
        name: Optional[str] = None,
        bn_name: Optional[str] = None,
        scale_name: Optional[str] = None,
        inplace: bool = True,
        eps: Optional[float] = None,
    ) -> Blob:
        """``BatchNorm`` (global stats) followed by ``Scale`` (with bias).

        Layer names are ``bn_name``/``scale_name`` when given, otherwise
        ``<name>/bn`` and ``<name>/scale`` (``name`` defaults to the bottom's
        name).  With ``inplace=False`` the BatchNorm writes a new blob named
        after the BatchNorm layer and the Scale works in place on it.
        """
        base = bottom.name if name is None else name
        bn_name = f"{base}/bn" if bn_name is None else bn_name
        scale_name = f"{base}/scale" if scale_name is None else scale_name
        x = self.batchnorm(bottom, inplace=inplace, name=bn_name, eps=eps)
        return self.scale(x, bias_term=True, inplace=True, name=scale_name)

    def eltwise(
        self,
        bottoms: Sequence[Blob],
        operation: str = "SUM",
        coeff: Optional[Sequence[float]] = None,
        name: Optional[str] = None,
        top: Optional[str] = None,
    ) -> Blob:
        """``Eltwise`` (``SUM``, ``PROD`` or ``MAX``; ``coeff`` only for SUM)."""
        operation = operation.upper()
        if operation not in ("SUM", "PROD", "MAX"):
            raise ValueError(f"unknown eltwise operation {operation!r}")
        p: List[_Entry] = [("operation", _Enum(operation))]
        if coeff is not None:
            if operation != "SUM" or len(coeff) != len(bottoms):
                raise ValueError("coeff needs SUM and one value per bottom")
            p.extend(("coeff", float(c)) for c in coeff)
        return self.layer("Eltwise", list(bottoms), name=name, top=top,
                          params=[("eltwise_param", p)])

    def concat(self, bottoms: Sequence[Blob], axis: int = 1, name: Optional[str] = None,
               top: Optional[str] = None) -> Blob:
        """``Concat`` along ``axis`` (channels by default)."""
        params: List[_Entry] = []
        if axis != 1:
            params.append(("concat_param", [("axis", int(axis))]))
        return self.layer("Concat", list(bottoms), name=name, top=top, params=params)

    def inner_product(
        self,
        bottom: Blob,
        num_output: int,
        bias: bool = True,
        name: Optional[str] = None,
        top: Optional[str] = None,
        weight_filler: Optional[str] = None,
        bias_filler: Optional[float] = None,
    ) -> Blob:
        """``InnerProduct`` (fully connected)."""
        p: List[_Entry] = [("num_output", int(num_output))]
        if not bias:
            p.append(("bias_term", False))
        self._weights(p, bias, weight_filler, bias_filler)
        return self.layer("InnerProduct", [bottom], name=name, top=top,
                          params=[("inner_product_param", p)])

    def dropout(self, bottom: Blob, ratio: float = 0.5, inplace: bool = True,
                name: Optional[str] = None, top: Optional[str] = None) -> Blob:
        """``Dropout`` (identity at inference; in place by default)."""
        return self.layer("Dropout", [bottom], name=name, top=top, inplace=inplace,
                          params=[("dropout_param", [("dropout_ratio", float(ratio))])])

    def softmax(self, bottom: Blob, axis: int = 1, name: Optional[str] = None,
                top: Optional[str] = None) -> Blob:
        """``Softmax`` over ``axis`` (channels by default)."""
        params: List[_Entry] = []
        if axis != 1:
            params.append(("softmax_param", [("axis", int(axis))]))
        return self.layer("Softmax", [bottom], name=name, top=top, params=params)

    def flatten(self, bottom: Blob, axis: int = 1, name: Optional[str] = None,
                top: Optional[str] = None) -> Blob:
        """``Flatten`` from ``axis`` on."""
        params: List[_Entry] = []
        if axis != 1:
            params.append(("flatten_param", [("axis", int(axis))]))
        return self.layer("Flatten", [bottom], name=name, top=top, params=params)

    def reshape(self, bottom: Blob, shape: Sequence[int], name: Optional[str] = None,
                top: Optional[str] = None) -> Blob:
        """``Reshape`` (``0`` copies a dim, ``-1`` infers it)."""
        dims: List[_Entry] = [("dim", int(d)) for d in shape]
        return self.layer("Reshape", [bottom], name=name, top=top,
                          params=[("reshape_param", [("shape", dims)])])

    def shuffle_channel(self, bottom: Blob, group: int, name: Optional[str] = None,
                        top: Optional[str] = None) -> Blob:
        """``ShuffleChannel`` (ShuffleNet channel shuffle over ``group`` groups)."""
        return self.layer("ShuffleChannel", [bottom], name=name, top=top,
                          params=[("shuffle_channel_param", [("group", int(group))])])

    # ---------------------------------------------------------------- output
    @property
    def layer_names(self) -> List[str]:
        """Names of the layers added so far, in order."""
        return [layer[0] for layer in self._layers]

    def to_prototxt(self) -> str:
        """Render the net: header comments, ``name:``, then one ``layer {}`` each."""
        out: List[str] = []
        for line in self.header:
            out.append(f"# {line}".rstrip())
        if self.header:
            out.append("")
        out.append(f"name: {_fmt_scalar(self.name)}")
        for name, type_, bottoms, tops, params in self._layers:
            entries: List[_Entry] = [("name", name), ("type", type_)]
            entries.extend(("bottom", b) for b in bottoms)
            entries.extend(("top", t) for t in tops)
            entries.extend(params)
            out.append("layer {")
            _emit(entries, 1, out)
            out.append("}")
        return "\n".join(out) + "\n"
