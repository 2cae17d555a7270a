"""The contract every Caffe layer type implements: one class, its facets and traits.

=========  ==================================================================
facet      what it does
=========  ==================================================================
parse      the only code that reads the layer's ``*_param``; returns frozen attrs
resolve    validates the attrs against the input shapes, once, at build time, and
           returns them resolved (canonical axes, effective windows, plans)
infer      output shapes from input shapes (pure arithmetic)
weights    the layer's blobs in Caffe's order (name, shape, filler, role)
cost       multiply-accumulates of one forward pass (params come from ``weights``)
kernel     numpy forward with Caffe's exact semantics
lower      ONNX nodes for it, through a :class:`Lowering` (never reads the proto)
examples   prototxt snippets and input shapes that the test suite runs through
=========  ==================================================================

The optimizer asks a layer for its *traits* rather than matching type names, so that a
plugin type is rewritten only when it declares the property the rewrite relies on:
``post_op`` (an element-wise activation that may run after a producer), ``channel_producer``
(a linear layer with a weight per output channel: takes post-ops, absorbs a per-channel
affine), ``folds_into_producer`` (BatchNorm), ``removed_at_inference`` and ``copies_bottom``
(Dropout, Split), and the methods ``identity``, ``affine``, ``output_channel_axis`` and
``scale_output_channels``.

A layer raises user errors through ``ctx.error(...)`` so the message carries the
file, line and layer. Shapes are tuples of ints; arrays are numpy. Only ``parse``,
``resolve`` and ``infer`` see a context: ``weights``, ``cost``, ``kernel`` and ``lower``
receive resolved attrs and trust them (they never re-derive an axis or a window), and
kernels use numpy alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from ..errors import LayerContext

from .affine import Affine
from .lowering import Lowering, Shape


@dataclass(frozen=True)
class Filler:
    """Caffe's FillerParameter, read once (see :mod:`protonet.fillers`)."""

    type: str = "constant"
    value: float = 0.0
    min: float = 0.0
    max: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    sparse: int = -1
    variance_norm: str = "FAN_IN"

    @classmethod
    def from_proto(cls, msg: Any, default: "Filler | None" = None) -> "Filler":
        """Read a FillerParameter; ``default`` is used when the message is unset."""
        if default is not None and not msg.ListFields():
            return default
        norm = type(msg).VarianceNorm.Name(msg.variance_norm)
        return cls(msg.type, msg.value, msg.min, msg.max, msg.mean, msg.std, msg.sparse, norm)


CONSTANT_ONE = Filler("constant", value=1.0)
CONSTANT_ZERO = Filler("constant", value=0.0)


@dataclass(frozen=True)
class WeightSpec:
    """One learnable (or state) blob of a layer, in Caffe's blob order.

    ``role`` is ``weight`` or ``bias`` (both counted as params) or ``state``
    (BatchNorm's running statistics: stored, not learned, not counted).
    ``positive`` asks test/random initialisation for values > 0 (variances).
    """

    name: str
    shape: Shape
    filler: Filler = CONSTANT_ZERO
    role: str = "weight"
    positive: bool = False


@dataclass(frozen=True)
class Example:
    """A prototxt snippet whose bottoms are ``in0, in1, ...`` with the given shapes."""

    prototxt: str
    inputs: tuple[Shape, ...]
    name: str = ""
    # inputs that must hold integers in [0, high) (e.g. Embed indices): {index: high}
    int_inputs: dict[int, int] = field(default_factory=dict)
    # inputs given literally, in C order (e.g. a Proposal's im_info): {index: values}
    values: dict[int, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class NoAttrs:
    """Attrs of a layer that has no parameters."""


class Layer:
    """Base of every layer class. Subclasses set ``type_name`` and the facets."""

    type_name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    #: source layers (Input, data layers) produce graph inputs and have no kernel input
    is_source: ClassVar[bool] = False
    #: how many bottoms are accepted (min, max); max None = any
    num_bottoms: ClassVar[tuple[int, int | None]] = (1, 1)
    examples: ClassVar[tuple[Example, ...]] = ()
    #: why the layer needs its bottoms' axis 0 fixed (it is not a free batch axis there), which
    #: --batch dynamic then refuses at the layer; empty: a batch-agnostic lowering
    fixed_batch: ClassVar[str] = ""

    # -- traits the optimizer reads (see the module docstring) --
    #: an element-wise map of one bottom to one top of its shape, without weights, whose
    #: kernel and lowering may run as another node's post-op (fuse_activation)
    post_op: ClassVar[bool] = False
    #: a linear layer whose weight holds one slice per output channel (axis
    #: :meth:`output_channel_axis` of its top): it takes fused post-ops, absorbs a following
    #: per-channel affine through :meth:`scale_output_channels`, and counts toward a net's depth
    channel_producer: ClassVar[bool] = False
    #: a per-channel normalisation whose constant ``affine`` map folds into the weights of the
    #: channel producer before it, or else becomes one Scale (BatchNorm; fold_batchnorm)
    folds_into_producer: ClassVar[bool] = False
    #: the identity at inference, whatever its attrs (Dropout; eliminate_dropout)
    removed_at_inference: ClassVar[bool] = False
    #: copies its one bottom to every top (Split; eliminate_split)
    copies_bottom: ClassVar[bool] = False
    #: consumes its bottoms and has no tops (Silence; DeepLab's MatWrite): when a net's last blobs
    #: all go into such layers, those blobs are the net's outputs
    sink: ClassVar[bool] = False
    #: its tops are selections made on its bottoms' values (a sort, NMS, a threshold), which
    #: rounding within the tolerance can change: verify checks a top that differs from the
    #: reference's by running the kernel on onnxruntime's own bottoms (see protonet.pipeline)
    decides: ClassVar[bool] = False

    def identity(self, attrs: Any, in_shapes: Sequence[Shape], out_shapes: Sequence[Shape],
                 weights: dict[str, np.ndarray]) -> str | None:
        """Why this node's single top equals its first bottom (e.g. "Concat of a single
        bottom"), or None when it may not (eliminate_identity)."""
        return None

    def affine(self, attrs: Any, in_shapes: Sequence[Shape], weights: dict[str, np.ndarray]) -> Affine | str | None:
        """The node as ``y = x * scale + shift`` with constant factors; a string says why a
        layer of an affine kind is not one here (e.g. a second bottom); None: never affine."""
        return None

    def output_channel_axis(self, attrs: Any, out_shape: Shape) -> int | None:
        """The axis of the top that indexes output channels (``channel_producer`` only)."""
        return None

    def scale_output_channels(self, attrs: Any, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
        """``weight`` with the slice of output channel c multiplied by ``s[c]``
        (``channel_producer`` only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a channel producer")

    def fold_reason(self, attrs: Any) -> str | None:
        """Why a following per-channel affine may not fold into this channel producer's weights
        (e.g. weights it normalizes at run time), or None when it may (``channel_producer`` only)."""
        return None

    def parse(self, layer: Any, ctx: LayerContext) -> Any:
        return NoAttrs()

    def resolve(self, attrs: Any, shapes: Sequence[Shape], ctx: LayerContext) -> Any:
        """Validate ``attrs`` against the input shapes and return them resolved: what the
        later facets need, computed once (e.g. a negative axis made canonical). Called once
        per node at build time (and for nodes the optimizer creates); resolving resolved
        attrs returns them unchanged."""
        return attrs

    def infer(self, attrs: Any, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        """Output shapes from input shapes, given resolved attrs."""
        raise NotImplementedError

    def weights(self, attrs: Any, shapes: Sequence[Shape]) -> list[WeightSpec]:
        return []

    def cost(self, attrs: Any, in_shapes: Sequence[Shape], out_shapes: Sequence[Shape]) -> int:
        """Multiply-accumulates; 0 for layers that do no MAC-like work."""
        return 0

    def kernel(self, attrs: Any, xs: Sequence[np.ndarray], w: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def lower(self, attrs: Any, g: Lowering) -> None:
        raise NotImplementedError

    def num_tops(self, attrs: Any, layer: Any) -> int | None:
        """Required number of tops, or None when any count the layer's infer handles."""
        return 1

    def sample_input(self, attrs: Any, i: int, in_shapes: Sequence[Shape], rng: np.random.Generator) -> np.ndarray | None:
        """A random valid value for bottom ``i`` when the layer reads it as indices (verify's
        generated inputs); None when standard-normal noise is a valid input."""
        return None

    def ill_conditioned(self, attrs: Any) -> bool:
        """Whether the node's tops can carry its bottoms' float32 rounding past the tolerance by
        the layer's own arithmetic (a normalisation by batch statistics, where a channel's mean is
        many of its standard deviations: SegNet's BN in LEARN mode). verify checks such a top that
        differs from the reference's beyond the tolerance as it checks a layer that ``decides``:
        by running the kernel on onnxruntime's own bottoms (see protonet.pipeline)."""
        return False

    def follow_choice(self, attrs: Any, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
                      other: Sequence[np.ndarray], close: "Close") -> list[np.ndarray] | None:
        """For a layer whose top records a discrete choice (an argmax index): ``other`` are
        another implementation's tops (onnxruntime's, in float32) for the same bottoms ``xs``.
        When they differ from the reference's ``ys`` only where that implementation chose another
        candidate that is valid and whose reference value equals the chosen one within tolerance
        (``close``), return the tops that the reference continues with: its own values, the
        other's choices. None when a difference is not such a tie (verify then reports it), or
        when the layer makes no such choice (the default)."""
        return None


#: ``close(values, reference, like)``: element-wise, whether ``values`` equal ``reference`` within
#: verify's tolerance for a blob like ``like`` (its scale sets the absolute part)
Close = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def random_rois(image: Shape, rois: Shape, spatial_scale: float, rng: np.random.Generator) -> np.ndarray:
    """Valid ROIs of shape ``rois`` (R rows [batch_index, x1, y1, x2, y2]) for a feature map of
    shape ``image`` (N, C, H, W) at ``spatial_scale``: integer batch indices of the batch and
    integer corners inside the image, x1 <= x2 and y1 <= y2 (verify's generated inputs)."""
    n, _, h, w = image
    scale = spatial_scale if spatial_scale > 0 else 1.0
    rows = rois[0]
    xs = np.sort(rng.uniform(0, w / scale, size=(rows, 2)), axis=1)
    ys = np.sort(rng.uniform(0, h / scale, size=(rows, 2)), axis=1)
    out = np.stack([rng.integers(0, n, size=rows), xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
    return np.floor(out).astype(np.float32).reshape(rois)


def canonical_axis(axis: int, ndim: int, ctx: LayerContext, what: str = "axis") -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end; out of range is an error."""
    if not -ndim <= axis < ndim:
        raise ctx.error(f"{what} {axis} is out of range for a {ndim}-D input")
    return axis % ndim


#: Caffe's FLT_MAX (float32's largest value): the start of a max, and "no threshold"
FLT_MAX = float(np.finfo(np.float32).max)


def enum_name(msg: Any, field: str) -> str:
    """The symbolic name of enum ``field``'s value in ``msg`` (e.g. ``"MAX"``)."""
    return msg.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[getattr(msg, field)].name


def need_4d(shape: Shape, ctx: LayerContext, what: str = "input") -> None:
    """Layers that read Caffe's (N, C, H, W) geometry refuse other ranks."""
    if len(shape) != 4:
        raise ctx.error(f"expects a 4-D (N, C, H, W) {what}, got shape {tuple(shape)}")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), written through tanh so that it never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def prod(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
