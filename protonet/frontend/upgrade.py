"""Caffe's chain of format upgrades, applied in Caffe's order (UpgradeNetAsNeeded).

Each step is a pair ``needs(net) -> bool`` / ``apply(net, loc) -> new net``; ``apply`` never
mutates its argument. :func:`upgrade_net` runs every step whose ``needs`` holds and reports
which ran. The same chain serves text and binary definitions and ``.caffemodel`` files, and
:func:`protonet.frontend.load.upgrade_file` writes the result (``protonet upgrade OLD -o NEW``).

The chain:

1. V0 -> V1 (:mod:`protonet.frontend.legacy`): padding layers folded into the next conv/pool, V0 type
   strings to V1 enums, every V0 field into its V1 ``*_param``;
2. data-transform fields -> ``transform_param`` (V1 Data/ImageData/WindowData layers);
3. V1 -> V2: enum types to type strings, ``blobs_lr``/``weight_decay``/``param``/``blob_share_mode``
   to ``param { name share_mode lr_mult decay_mult }``, every ``*_param`` and the blobs carried over;
4. ``input``/``input_dim``/``input_shape`` -> a leading ``Input`` layer;
5. BatchNorm: the three ``param { lr_mult: 0 }`` blocks old BatchNorm layers had to declare.

After the chain none of the ``needs`` holds, so upgrading an upgraded net runs no step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import Location, ProtonetError, SchemaError
from .legacy import (MIXED_FORMATS, copy_net, needs_data_upgrade, needs_v0_upgrade, needs_v1_upgrade, upgrade_data_transform,
                     upgrade_v0, upgrade_v1)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upgrade:
    name: str
    needs: Callable[[Any], bool]
    apply: Callable[[Any, Location], Any]


# -- input fields -> Input layer ----------------------------------------------------------------

def needs_input_upgrade(net: Any) -> bool:
    return len(net.input) > 0


def upgrade_input(net: Any, loc: Location) -> Any:
    """``input`` + ``input_dim`` (4 per input) or ``input_shape`` -> one leading Input layer.

    Input names with neither are simply removed, as Caffe does: that is how its old
    ``Net::ToProto`` wrote caffemodels (names only). In a net definition the layers that read
    such an input then fail to build ("bottom ... is not produced"), as they do in Caffe."""
    n = len(net.input)
    if not net.input_dim and not net.input_shape:
        log.info("%s: input(s) %s have no shape (a legacy caffemodel writes names only): removed; a net "
                 "definition needs input_shape { dim: ... } or 4 input_dim values per input",
                 loc.prefix() or "net", ", ".join(repr(i) for i in net.input))
        out = copy_net(net)
        del out.input[:]
        return out
    if net.input_dim and net.input_shape:
        raise SchemaError("give input_dim or input_shape, not both", loc)
    if net.input_dim and len(net.input_dim) != 4 * n:
        raise SchemaError(f"{len(net.input_dim)} input_dim values for {n} input(s); "
                          f"input_dim needs exactly 4 values per input", loc)
    if not net.input_dim and len(net.input_shape) != n:
        raise SchemaError(f"{len(net.input_shape)} input_shape blocks for {n} input(s); give one "
                          f"input_shape per input, in the same order", loc)
    out = copy_net(net)
    del out.layer[:]
    layer = out.layer.add()
    layer.name = "input"
    layer.type = "Input"
    for i, name in enumerate(net.input):
        layer.top.append(name)
        shape = layer.input_param.shape.add()
        if net.input_dim:
            shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        else:
            shape.CopyFrom(net.input_shape[i])
    for old in net.layer:
        out.layer.add().CopyFrom(old)
    del out.input[:]
    del out.input_dim[:]
    del out.input_shape[:]
    return out


# -- BatchNorm param blocks ----------------------------------------------------------------------

def _bn_needs(layer: Any) -> bool:
    if layer.type != "BatchNorm" or len(layer.param) != 3:
        return False
    # the form this step leaves for named (shared) statistics: names kept, learning frozen
    frozen = all(p.HasField("lr_mult") and p.lr_mult == 0 and p.HasField("decay_mult") and p.decay_mult == 0
                 for p in layer.param)
    return not (frozen and any(p.name for p in layer.param))


def needs_batchnorm_upgrade(net: Any) -> bool:
    """Caffe's NetNeedsBatchNormUpgrade: a BatchNorm layer declares three ``param`` blocks."""
    return any(_bn_needs(layer) for layer in net.layer)


def upgrade_batchnorm(net: Any, loc: Location) -> Any:
    """Old BatchNorm layers had to declare ``param { lr_mult: 0 }`` three times (mean, variance,
    scale factor are statistics, not learned); current Caffe freezes them itself.

    The blocks are dropped (Caffe's original UpgradeNetBatchNorm). When one of them names its
    blob (statistics shared between layers), the names are kept and lr_mult/decay_mult are set
    to 0 instead (what current Caffe does to all three), so that the sharing survives."""
    out = copy_net(net)
    for layer in out.layer:
        if not _bn_needs(layer):
            continue
        if any(p.name for p in layer.param):
            for p in layer.param:
                p.lr_mult = 0.0
                p.decay_mult = 0.0
        else:
            del layer.param[:]
    return out


# The chain, in Caffe's order (UpgradeNetAsNeeded).
CHAIN: list[Upgrade] = [
    Upgrade("V0 -> V1 layers", needs_v0_upgrade, upgrade_v0),
    Upgrade("data transform fields -> transform_param", needs_data_upgrade, upgrade_data_transform),
    Upgrade("V1 -> V2 layers", needs_v1_upgrade, upgrade_v1),
    Upgrade("input fields -> Input layer", needs_input_upgrade, upgrade_input),
    Upgrade("BatchNorm param blocks", needs_batchnorm_upgrade, upgrade_batchnorm),
]


def check_not_mixed(net: Any, loc: Location) -> None:
    if len(net.layer) and len(net.layers):
        raise SchemaError(MIXED_FORMATS, loc)


def upgrade_net(net: Any, loc: Location) -> tuple[Any, list[str]]:
    """Run every needed upgrade step in order; return the new net and the steps that ran."""
    check_not_mixed(net, loc)
    ran: list[str] = []
    for step in CHAIN:
        if step.needs(net):
            net = step.apply(net, loc)
            ran.append(step.name)
            log.info("%s: upgraded: %s", loc.prefix() or "net", step.name)
    return net, ran
