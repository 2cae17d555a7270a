"""The legacy steps of Caffe's upgrade chain: V0 -> V1, data-transform fields, V1 -> V2.

Caffe's net format went through three layer encodings:

* **V0** (2013): ``layers { layer { name type num_output kernelsize ... } bottom top }`` -- one flat
  ``V0LayerParameter`` with lower-case type strings (``conv``, ``innerproduct``) and a separate
  ``padding`` layer in front of a padded convolution or pooling;
* **V1** (2014): ``layers { name type: CONVOLUTION convolution_param { ... } blobs_lr weight_decay }``
  -- an enum type and one ``*_param`` message per layer kind; data layers carried ``scale``,
  ``mean_file``, ``crop_size`` and ``mirror`` in their own parameter message at first;
* **V2** (2015, current): ``layer { type: "Convolution" param { lr_mult decay_mult } }``.

The rules follow BVLC Caffe's ``upgrade_proto.cpp`` (UpgradeV0Net, UpgradeV0PaddingLayers,
UpgradeV0LayerParameter, UpgradeV0LayerType, UpgradeNetDataTransformation, UpgradeV1Net,
UpgradeV1LayerType). Each step reads its argument and returns a new ``NetParameter``.

Where Caffe stops (``LOG(FATAL)``: an unknown V0 type, a padding layer feeding something other than
one convolution/pooling, an unknown bottom) protonet raises a located :class:`SchemaError`. Where
Caffe logs an error and carries on (a V0 field that means nothing for the layer's type, e.g.
``kernelsize`` on a ``relu``), protonet logs a warning and drops the field, as Caffe does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..errors import Location, SchemaError
from .schema import pb

log = logging.getLogger(__name__)


def copy_net(net: Any) -> Any:
    """A new NetParameter equal to ``net`` (upgrade steps never mutate their argument)."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    return out


# ================================================================================================
# V0 -> V1
# ================================================================================================

#: V0 type string -> V1 enum name (Caffe's UpgradeV0LayerType). ``padding`` is not here: padding
#: layers are folded away before types are converted.
V0_LAYER_TYPES: dict[str, str] = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

V0_PADDING = "padding"


@dataclass(frozen=True)
class V0Target:
    """Where one V0 field goes in the V1 layer: ``<param>.<field>``; ``repeated`` targets get the
    value appended (V2 convolution geometry is repeated), ``message`` targets are copied."""

    param: str
    field: str
    repeated: bool = False
    message: bool = False


_CONV, _IP, _POOL = "convolution_param", "inner_product_param", "pooling_param"
_DATA, _HDF5, _IMAGES, _WINDOW = "data_param", "hdf5_data_param", "image_data_param", "window_data_param"

#: V0 field -> {V0 type -> target} (Caffe's UpgradeV0LayerParameter). A field set on a type that is
#: not listed is dropped with a warning. ``ANY`` targets apply whatever the type.
ANY = "*"
V0_FIELDS: dict[str, dict[str, V0Target]] = {
    "num_output": {"conv": V0Target(_CONV, "num_output"), "innerproduct": V0Target(_IP, "num_output")},
    "biasterm": {"conv": V0Target(_CONV, "bias_term"), "innerproduct": V0Target(_IP, "bias_term")},
    "weight_filler": {"conv": V0Target(_CONV, "weight_filler", message=True),
                      "innerproduct": V0Target(_IP, "weight_filler", message=True)},
    "bias_filler": {"conv": V0Target(_CONV, "bias_filler", message=True),
                    "innerproduct": V0Target(_IP, "bias_filler", message=True)},
    "pad": {"conv": V0Target(_CONV, "pad", repeated=True), "pool": V0Target(_POOL, "pad")},
    "kernelsize": {"conv": V0Target(_CONV, "kernel_size", repeated=True), "pool": V0Target(_POOL, "kernel_size")},
    "group": {"conv": V0Target(_CONV, "group")},
    "stride": {"conv": V0Target(_CONV, "stride", repeated=True), "pool": V0Target(_POOL, "stride")},
    "pool": {"pool": V0Target(_POOL, "pool")},  # V0 and V2 PoolMethod share numbers (MAX/AVE/STOCHASTIC)
    "dropout_ratio": {"dropout": V0Target("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": V0Target("lrn_param", "local_size")},
    "alpha": {"lrn": V0Target("lrn_param", "alpha")},
    "beta": {"lrn": V0Target("lrn_param", "beta")},
    "k": {"lrn": V0Target("lrn_param", "k")},
    "source": {"data": V0Target(_DATA, "source"), "hdf5_data": V0Target(_HDF5, "source"),
               "images": V0Target(_IMAGES, "source"), "window_data": V0Target(_WINDOW, "source"),
               "infogain_loss": V0Target("infogain_loss_param", "source")},
    "scale": {ANY: V0Target("transform_param", "scale")},
    "meanfile": {ANY: V0Target("transform_param", "mean_file")},
    "batchsize": {"data": V0Target(_DATA, "batch_size"), "hdf5_data": V0Target(_HDF5, "batch_size"),
                  "images": V0Target(_IMAGES, "batch_size"), "window_data": V0Target(_WINDOW, "batch_size")},
    "cropsize": {ANY: V0Target("transform_param", "crop_size")},
    "mirror": {ANY: V0Target("transform_param", "mirror")},
    "rand_skip": {"data": V0Target(_DATA, "rand_skip"), "images": V0Target(_IMAGES, "rand_skip")},
    "shuffle_images": {"images": V0Target(_IMAGES, "shuffle")},
    "new_height": {"images": V0Target(_IMAGES, "new_height")},
    "new_width": {"images": V0Target(_IMAGES, "new_width")},
    "concat_dim": {"concat": V0Target("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": V0Target(_WINDOW, "fg_threshold")},
    "det_bg_threshold": {"window_data": V0Target(_WINDOW, "bg_threshold")},
    "det_fg_fraction": {"window_data": V0Target(_WINDOW, "fg_fraction")},
    "det_context_pad": {"window_data": V0Target(_WINDOW, "context_pad")},
    "det_crop_mode": {"window_data": V0Target(_WINDOW, "crop_mode")},
    "hdf5_output_param": {"hdf5_output": V0Target("hdf5_output_param", "", message=True)},
}

#: V0 fields handled outside the table (identity and learning settings) or that Caffe never
#: carried over (``new_num``/``new_channels``: dropped with a warning when set).
V0_STRUCTURAL = ("name", "type", "blobs", "blobs_lr", "weight_decay")
V0_IGNORED = ("new_num", "new_channels")


def needs_v0_upgrade(net: Any) -> bool:
    """Caffe's NetNeedsV0ToV1Upgrade: some ``layers`` entry has a nested V0 ``layer { }``."""
    return any(entry.HasField("layer") for entry in net.layers)


def _v0_loc(loc: Location, entry: Any) -> Location:
    return loc.with_layer(entry.layer.name or "(unnamed)", entry.layer.type or None)


def fold_v0_padding(net: Any, loc: Location) -> Any:
    """Caffe's UpgradeV0PaddingLayers: drop every V0 ``padding`` layer and give its ``pad`` to the
    ``conv``/``pool`` layer that reads its output, rewired to read the padding layer's input.

    A padding layer must have one bottom and one top, and feed only single-input convolution or
    pooling layers (anything else is undefined in Caffe and an error here)."""
    out = copy_net(net)
    del out.layers[:]
    last_producer: dict[str, int] = {name: -1 for name in net.input}
    for i, entry in enumerate(net.layers):
        v0 = entry.layer
        if v0.type != V0_PADDING:
            kept = out.layers.add()
            kept.CopyFrom(entry)
        for j, blob in enumerate(entry.bottom):
            if blob not in last_producer:
                raise SchemaError(f"bottom '{blob}' is not produced by any earlier layer or net input; "
                                  f"fix the bottom name or add the producing layer before it", _v0_loc(loc, entry))
            src_idx = last_producer[blob]
            if src_idx < 0:
                continue
            src = net.layers[src_idx]
            if src.layer.type != V0_PADDING:
                continue
            here = _v0_loc(loc, entry)
            if v0.type not in ("conv", "pool"):
                raise SchemaError(f"reads the output of V0 padding layer '{src.layer.name}', but only 'conv' "
                                  f"and 'pool' layers can absorb a padding layer; remove the padding layer or "
                                  f"put a conv/pool after it", here)
            if len(entry.bottom) != 1:
                raise SchemaError(f"a {v0.type} layer fed by padding layer '{src.layer.name}' must have exactly "
                                  f"one bottom, it has {len(entry.bottom)}", here)
            if len(src.bottom) != 1 or len(src.top) != 1:
                raise SchemaError(f"a V0 padding layer must have one bottom and one top (it has "
                                  f"{len(src.bottom)} and {len(src.top)})", _v0_loc(loc, src))
            kept.layer.pad = src.layer.pad
            kept.bottom[j] = src.bottom[0]
        for blob in entry.top:
            last_producer[blob] = i
    return out


def _set_v0_field(dst: Any, target: V0Target, value: Any, where: Location, field: str) -> None:
    param = getattr(dst, target.param)
    try:
        if target.message:
            (getattr(param, target.field) if target.field else param).CopyFrom(value)
        elif target.repeated:
            getattr(param, target.field).append(value)
        else:
            setattr(param, target.field, value)
    except (ValueError, TypeError) as e:
        raise SchemaError(f"V0 field '{field}' = {value!r} does not fit {target.param}.{target.field}: {e}",
                          where) from None


def upgrade_v0_layer(entry: Any, loc: Location) -> Any:
    """One V0 ``layers { layer { ... } bottom top }`` entry -> a V1 layer (UpgradeV0LayerParameter)."""
    out = pb.V1LayerParameter()
    out.bottom.extend(entry.bottom)
    out.top.extend(entry.top)
    v0 = entry.layer
    where = _v0_loc(loc, entry)
    outer = [f.name for f, _ in entry.ListFields() if f.name not in ("layer", "bottom", "top")]
    if outer:
        log.warning("%s: V1 field(s) %s next to a V0 'layer { }' block are ignored (as Caffe does); "
                    "move them into the V0 block or convert the whole file to V1", where.prefix(), ", ".join(outer))
    if v0.HasField("name"):
        out.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        out.type = pb.V1LayerParameter.LayerType.Value(V0_LAYER_TYPES[kind])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, targets in V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        target = targets.get(kind) or targets.get(ANY)
        if target is None:
            log.warning("%s: V0 field '%s' has no meaning for a '%s' layer; dropped (as Caffe does)",
                        where.prefix(), field, kind)
            continue
        _set_v0_field(out, target, getattr(v0, field), where, field)
    for field in V0_IGNORED:
        if v0.HasField(field):
            log.warning("%s: V0 field '%s' is not carried over by Caffe's upgrade; dropped", where.prefix(), field)
    return out


def upgrade_v0(net: Any, loc: Location) -> Any:
    """Caffe's UpgradeV0Net: fold padding layers, then convert every entry to a V1 layer.

    Net-level fields (name, inputs, input_dim, force_backward, ...) are kept."""
    plain = [e for e in net.layers if not e.HasField("layer")]
    if plain:
        names = ", ".join(f"'{e.name}'" if e.name else "(unnamed)" for e in plain[:5])
        raise SchemaError(f"the file mixes V0 entries 'layers {{ layer {{ ... }} }}' with V1 entries "
                          f"'layers {{ name type ... }}' ({names}); write every layer in one format", loc)
    unknown: dict[str, str] = {}  # type -> first layer name, in file order
    for e in net.layers:
        if e.layer.type != V0_PADDING and e.layer.type not in V0_LAYER_TYPES:
            unknown.setdefault(e.layer.type, e.layer.name or "(unnamed)")
    if unknown:
        listed = ", ".join(f"'{t}' (layer '{name}')" for t, name in unknown.items())
        raise SchemaError(f"unknown V0 layer type(s): {listed}; known V0 types: "
                          f"{', '.join(sorted(V0_LAYER_TYPES))}, padding", loc)
    folded = fold_v0_padding(net, loc)
    out = copy_net(folded)
    del out.layers[:]
    for entry in folded.layers:
        out.layers.add().CopyFrom(upgrade_v0_layer(entry, loc))
    return out


# ================================================================================================
# data-transform fields -> transform_param
# ================================================================================================

#: V1 data layer types whose own parameter message once held the transform fields.
DATA_TRANSFORM_PARAMS: dict[str, str] = {"DATA": "data_param", "IMAGE_DATA": "image_data_param",
                                          "WINDOW_DATA": "window_data_param"}
TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _data_param_name(layer: Any) -> str | None:
    if not layer.HasField("type"):
        return None
    return DATA_TRANSFORM_PARAMS.get(pb.V1LayerParameter.LayerType.Name(layer.type))


def needs_data_upgrade(net: Any) -> bool:
    """Caffe's NetNeedsDataUpgrade: a V1 Data/ImageData/WindowData layer sets scale, mean_file,
    crop_size or mirror in its own parameter message."""
    for layer in net.layers:
        pname = _data_param_name(layer)
        if pname and any(getattr(layer, pname).HasField(f) for f in TRANSFORM_FIELDS):
            return True
    return False


def upgrade_data_transform(net: Any, loc: Location) -> Any:
    """Caffe's UpgradeNetDataTransformation: move those fields into ``transform_param`` (a value
    there is overwritten) and clear them from the data parameter."""
    out = copy_net(net)
    for layer in out.layers:
        pname = _data_param_name(layer)
        if not pname or not layer.HasField(pname):
            continue
        param = getattr(layer, pname)
        for f in TRANSFORM_FIELDS:
            if param.HasField(f):
                setattr(layer.transform_param, f, getattr(param, f))
                param.ClearField(f)
    return out


# ================================================================================================
# V1 -> V2
# ================================================================================================

#: V1 enum name -> V2 type string (Caffe's UpgradeV1LayerType), every enum value.
V1_LAYER_TYPES: dict[str, str] = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
    # DeepLab's V1-only Caffe
    "IMAGE_SEG_DATA": "ImageSegData",
    "SEG_ACCURACY": "SegAccuracy",
    "INTERP": "Interp",
    "PADDING": "Padding",
    "MAT_WRITE": "MatWrite",
    "MAT_READ": "MatRead",
    "DENSE_CRF": "DenseCRF",
    "DOMINANT_CHANNEL": "DominantChannel",
    "BIAS_CHANNEL": "BiasChannel",
    "UNIQUE_LABEL": "UniqueLabel",
    "CENSOR_LABEL": "CensorLabel",
    "ADAPTIVE_BIAS_CHANNEL": "AdaptiveBiasChannel",
    "CHANNEL_AGGREGATOR": "ChannelAggregator",
    "IGNORE_OVERLAY": "IgnoreOverlay",
    "HISTOGRAM": "Histogram",
    "RELATIVE_ERROR": "RelativeError",
    "GAIN_CHANNEL": "GainChannel",
    "ONEHOT": "OneHot",
}

#: Every ``*_param`` message of a V1 layer; each is copied as-is into the same-named V2 field.
V1_PARAM_FIELDS: tuple[str, ...] = tuple(
    f.name for f in pb.V1LayerParameter.DESCRIPTOR.fields if f.name.endswith("_param"))


MIXED_FORMATS = ("the file mixes current 'layer { ... }' blocks with legacy 'layers { ... }' blocks; "
                 "convert all to one format: rewrite the 'layers' blocks as 'layer { type: \"...\" }', or "
                 "move them to a file of their own and run 'protonet upgrade' on it")


def needs_v1_upgrade(net: Any) -> bool:
    """Caffe's NetNeedsV1ToV2Upgrade: the net has ``layers`` entries."""
    return len(net.layers) > 0


def upgrade_v1_layer(v1: Any, loc: Location) -> Any:
    """One V1 layer -> a V2 ``LayerParameter`` (Caffe's UpgradeV1LayerParameter).

    ``param`` (names), ``blob_share_mode``, ``blobs_lr`` and ``weight_decay`` are per-blob lists;
    entry i of each lands in ``param[i]`` (name, share_mode, lr_mult, decay_mult)."""
    out = pb.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        enum_name = pb.V1LayerParameter.LayerType.Name(v1.type)
        if enum_name not in V1_LAYER_TYPES:  # pragma: no cover - the table covers the enum (tested)
            raise SchemaError(f"V1 layer type {enum_name} has no V2 equivalent",
                              loc.with_layer(v1.name or "(unnamed)", None))
        out.type = V1_LAYER_TYPES[enum_name]
    out.blobs.extend(v1.blobs)

    def spec(i: int) -> Any:
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = pb.ParamSpec.DimCheckMode.Value(pb.V1LayerParameter.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    for pname in V1_PARAM_FIELDS:
        if v1.HasField(pname):
            getattr(out, pname).CopyFrom(getattr(v1, pname))
    return out


def upgrade_v1(net: Any, loc: Location) -> Any:
    """Caffe's UpgradeV1Net: every ``layers`` entry becomes a ``layer``; net fields are kept."""
    if len(net.layer):
        raise SchemaError(MIXED_FORMATS, loc)
    out = copy_net(net)
    del out.layers[:]
    for v1 in net.layers:
        out.layer.add().CopyFrom(upgrade_v1_layer(v1, loc))
    return out
