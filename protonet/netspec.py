"""A small net-building API that emits Caffe (current, V2 ``layer {}``) prototxt.

Layers are added to a :class:`NetSpec` one call at a time; each call fills one
``LayerParameter`` of a ``NetParameter`` message (the classes of
``proto/caffe.proto``, :mod:`protonet.frontend.schema`) and returns a :class:`Blob`
handle naming the layer's top blob, which is passed as the bottom of later layers.
:meth:`NetSpec.to_prototxt` prints the message with protobuf's ``text_format``
(deterministic, 2-space-indented, fields in the schema's order) after the header
comments, so the text is valid for Caffe's parser by construction.

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
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from google.protobuf import json_format, text_format

from .frontend.schema import pb

__all__ = ["Blob", "NetSpec", "IntOrPair"]

IntOrPair = Union[int, Tuple[int, int]]


@dataclass(frozen=True)
class Blob:
    """Handle to a named blob (the top of some layer)."""

    name: str

    def __str__(self) -> str:
        return self.name


# Base of auto-generated layer names ("<base>1", "<base>2", ...).
_AUTO_NAME = {
    "Convolution": "conv", "Pooling": "pool", "LRN": "norm", "InnerProduct": "fc",
    "BatchNorm": "bn", "Dropout": "drop", "ShuffleChannel": "shuffle",
}


def _pair(value: IntOrPair) -> Tuple[int, int]:
    if isinstance(value, int):
        return value, value
    h, w = value
    return int(h), int(w)


def _spatial(msg: Any, key: str, value: IntOrPair, default: int) -> None:
    """Set ``key`` (square; a repeated field in Convolution, singular in Pooling) unless it is
    ``default``, or ``key_h``/``key_w`` (rectangular)."""
    h, w = _pair(value)
    if h != w:
        setattr(msg, f"{key}_h", h)
        setattr(msg, f"{key}_w", w)
    elif h != default:
        _set_square(msg, key, h)


def _set_square(msg: Any, key: str, value: int) -> None:
    current = getattr(msg, key)
    if hasattr(current, "append"):  # a repeated field (Convolution's kernel_size, pad, stride)
        current.append(value)
    else:
        setattr(msg, key, value)


def _kernel(msg: Any, kernel: IntOrPair) -> None:
    """``kernel_size`` when square, else ``kernel_h``/``kernel_w`` (always written)."""
    kh, kw = _pair(kernel)
    if kh == kw:
        _set_square(msg, "kernel_size", kh)
    else:
        msg.kernel_h, msg.kernel_w = kh, kw


class NetSpec:
    """Accumulates layers in a Caffe ``NetParameter`` and prints it as prototxt.

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
        self.net = pb.NetParameter(name=name)
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

    def _add(self, type_: str, bottoms: Sequence[Blob], name: Optional[str], top: Optional[str],
             inplace: bool) -> Tuple[Blob, Any]:
        """Append a layer; returns its top and its ``LayerParameter`` to fill in."""
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
        lp = self.net.layer.add(name=name, type=type_)
        lp.bottom.extend(b.name for b in bottoms)
        lp.top.append(top_name)
        return Blob(top_name), lp

    def layer(
        self,
        type_: str,
        bottoms: Sequence[Blob],
        name: Optional[str] = None,
        top: Optional[str] = None,
        inplace: bool = False,
        params: Optional[Mapping[str, Any]] = None,
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
            params: further fields of the ``LayerParameter`` by their proto names
                (enums by value name), e.g. ``{"relu_param": {"negative_slope": 0.1}}``.
        """
        fields = json_format.ParseDict(dict(params or {}), pb.LayerParameter())  # bad fields: nothing added
        blob, lp = self._add(type_, bottoms, name, top, inplace)
        lp.MergeFrom(fields)
        return blob

    def _weights(self, p: Any, bias: bool, weight_filler: Optional[str], bias_filler: Optional[float]) -> None:
        wf = self.weight_filler if weight_filler is None else weight_filler
        bf = self.bias_filler if bias_filler is None else bias_filler
        if wf:
            p.weight_filler.type = wf
        if bias and bf is not None:
            p.bias_filler.type = "constant"
            p.bias_filler.value = float(bf)

    # ---------------------------------------------------------------- layers
    def input(self, name: str, shape: Sequence[int]) -> Blob:
        """``Input`` layer producing blob ``name`` with ``input_param { shape }``."""
        blob, lp = self._add("Input", [], name, None, False)
        lp.input_param.shape.add().dim.extend(int(d) for d in shape)
        return blob

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
        blob, lp = self._add("Convolution", [bottom], name, top, False)
        p = lp.convolution_param
        p.num_output = int(num_output)
        if not bias:
            p.bias_term = False
        _spatial(p, "pad", pad, 0)
        _kernel(p, kernel)
        _spatial(p, "stride", stride, 1)
        if dilation != 1:
            p.dilation.append(int(dilation))
        if group != 1:
            p.group = int(group)
        self._weights(p, bias, weight_filler, bias_filler)
        return blob

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
        """``Pooling`` (``method`` is ``"MAX"``, ``"AVE"`` or ``"STOCHASTIC"``).

        Caffe rounds the output size up: ``ceil((H + 2p - k) / s) + 1``.
        """
        method = method.upper()
        if method not in pb.PoolingParameter.PoolMethod.keys():
            raise ValueError(f"unknown pooling method {method!r}")
        if not global_pooling and kernel is None:
            raise ValueError("pooling needs a kernel unless global_pooling")
        blob, lp = self._add("Pooling", [bottom], name, top, False)
        p = lp.pooling_param
        p.pool = pb.PoolingParameter.PoolMethod.Value(method)
        if global_pooling:
            p.global_pooling = True
        else:
            _kernel(p, kernel)
            sh, sw = _pair(stride)
            if sh == sw:
                p.stride = sh  # explicit even when 1, as in BVLC deploys
            else:
                p.stride_h, p.stride_w = sh, sw
            _spatial(p, "pad", pad, 0)
        return blob

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
        blob, lp = self._add("LRN", [bottom], name, top, False)
        p = lp.lrn_param
        p.local_size, p.alpha, p.beta = int(local_size), float(alpha), float(beta)
        if norm_region != "ACROSS_CHANNELS":
            p.norm_region = pb.LRNParameter.NormRegion.Value(norm_region)
        if k != 1.0:
            p.k = float(k)
        return blob

    def relu(
        self,
        bottom: Blob,
        inplace: bool = True,
        name: Optional[str] = None,
        top: Optional[str] = None,
        negative_slope: float = 0.0,
    ) -> Blob:
        """``ReLU`` (in place by default)."""
        blob, lp = self._add("ReLU", [bottom], name, top, inplace)
        if negative_slope:
            lp.relu_param.negative_slope = float(negative_slope)
        return blob

    def sigmoid(self, bottom: Blob, inplace: bool = False, name: Optional[str] = None,
                top: Optional[str] = None) -> Blob:
        """``Sigmoid``."""
        return self._add("Sigmoid", [bottom], name, top, inplace)[0]

    def batchnorm(self, bottom: Blob, inplace: bool = True, name: Optional[str] = None,
                  top: Optional[str] = None, eps: Optional[float] = None) -> Blob:
        """``BatchNorm`` with ``use_global_stats: true`` (inference)."""
        blob, lp = self._add("BatchNorm", [bottom], name, top, inplace)
        lp.batch_norm_param.use_global_stats = True
        if eps is not None:
            lp.batch_norm_param.eps = float(eps)
        return blob

    def scale(self, bottom: Blob, bias_term: bool = True, inplace: bool = True,
              name: Optional[str] = None, top: Optional[str] = None) -> Blob:
        """``Scale`` (learned per-channel scale, plus bias when ``bias_term``)."""
        blob, lp = self._add("Scale", [bottom], name, top, inplace)
        lp.scale_param.bias_term = bool(bias_term)
        return blob

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
        if operation not in pb.EltwiseParameter.EltwiseOp.keys():
            raise ValueError(f"unknown eltwise operation {operation!r}")
        if coeff is not None and (operation != "SUM" or len(coeff) != len(bottoms)):
            raise ValueError("coeff needs SUM and one value per bottom")
        blob, lp = self._add("Eltwise", list(bottoms), name, top, False)
        lp.eltwise_param.operation = pb.EltwiseParameter.EltwiseOp.Value(operation)
        if coeff is not None:
            lp.eltwise_param.coeff.extend(float(c) for c in coeff)
        return blob

    def concat(self, bottoms: Sequence[Blob], axis: int = 1, name: Optional[str] = None,
               top: Optional[str] = None) -> Blob:
        """``Concat`` along ``axis`` (channels by default)."""
        blob, lp = self._add("Concat", list(bottoms), name, top, False)
        if axis != 1:
            lp.concat_param.axis = int(axis)
        return blob

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
        blob, lp = self._add("InnerProduct", [bottom], name, top, False)
        p = lp.inner_product_param
        p.num_output = int(num_output)
        if not bias:
            p.bias_term = False
        self._weights(p, bias, weight_filler, bias_filler)
        return blob

    def dropout(self, bottom: Blob, ratio: float = 0.5, inplace: bool = True,
                name: Optional[str] = None, top: Optional[str] = None) -> Blob:
        """``Dropout`` (identity at inference; in place by default)."""
        blob, lp = self._add("Dropout", [bottom], name, top, inplace)
        lp.dropout_param.dropout_ratio = float(ratio)
        return blob

    def softmax(self, bottom: Blob, axis: int = 1, name: Optional[str] = None,
                top: Optional[str] = None) -> Blob:
        """``Softmax`` over ``axis`` (channels by default)."""
        blob, lp = self._add("Softmax", [bottom], name, top, False)
        if axis != 1:
            lp.softmax_param.axis = int(axis)
        return blob

    def flatten(self, bottom: Blob, axis: int = 1, name: Optional[str] = None,
                top: Optional[str] = None) -> Blob:
        """``Flatten`` from ``axis`` on."""
        blob, lp = self._add("Flatten", [bottom], name, top, False)
        if axis != 1:
            lp.flatten_param.axis = int(axis)
        return blob

    def reshape(self, bottom: Blob, shape: Sequence[int], name: Optional[str] = None,
                top: Optional[str] = None) -> Blob:
        """``Reshape`` (``0`` copies a dim, ``-1`` infers it)."""
        blob, lp = self._add("Reshape", [bottom], name, top, False)
        lp.reshape_param.shape.dim.extend(int(d) for d in shape)
        return blob

    def shuffle_channel(self, bottom: Blob, group: int, name: Optional[str] = None,
                        top: Optional[str] = None) -> Blob:
        """``ShuffleChannel`` (ShuffleNet channel shuffle over ``group`` groups)."""
        blob, lp = self._add("ShuffleChannel", [bottom], name, top, False)
        lp.shuffle_channel_param.group = int(group)
        return blob

    # ---------------------------------------------------------------- output
    @property
    def layer_names(self) -> List[str]:
        """Names of the layers added so far, in order."""
        return [lp.name for lp in self.net.layer]

    def to_prototxt(self) -> str:
        """Render the net: header comments, then the ``NetParameter`` through ``text_format``."""
        out: List[str] = [f"# {line}".rstrip() for line in self.header]
        if self.header:
            out.append("")
        return "\n".join(out + [text_format.MessageToString(self.net).rstrip("\n")]) + "\n"
