"""Caffe's chain of format upgrades, applied in Caffe's order.

Each step is a pair ``needs(net) -> bool`` / ``apply(net, loc) -> new net``; ``apply`` never
mutates its argument. :func:`upgrade_net` runs every step whose ``needs`` holds and reports
which ran. The same chain serves text and binary definitions and ``.caffemodel`` files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import Location, SchemaError
from .schema import pb


@dataclass(frozen=True)
class Upgrade:
    name: str
    needs: Callable[[Any], bool]
    apply: Callable[[Any, Location], Any]


def _copy(net: Any) -> Any:
    out = pb.NetParameter()
    out.CopyFrom(net)
    return out


# -- input fields -> Input layer ----------------------------------------------------------------

def needs_input_upgrade(net: Any) -> bool:
    return len(net.input) > 0


def upgrade_input(net: Any, loc: Location) -> Any:
    """``input`` + ``input_dim`` (4 per input) or ``input_shape`` -> one leading Input layer."""
    n = len(net.input)
    if net.input_dim and net.input_shape:
        raise SchemaError("give input_dim or input_shape, not both", loc)
    if net.input_dim and len(net.input_dim) != 4 * n:
        raise SchemaError(f"{len(net.input_dim)} input_dim values for {n} input(s); "
                          f"input_dim needs exactly 4 values per input", loc)
    if not net.input_dim and len(net.input_shape) not in (n,):
        if not net.input_shape:
            raise SchemaError(f"input '{net.input[0]}' has no shape: add input_shape {{ dim: ... }} "
                              f"or 4 input_dim values per input", loc)
        raise SchemaError(f"{len(net.input_shape)} input_shape blocks for {n} input(s)", loc)
    out = _copy(net)
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


# The chain, in Caffe's order (UpgradeNetAsNeeded). The legacy steps are added by
# protonet.legacy, which registers them into this list at import.
CHAIN: list[Upgrade] = [
    Upgrade("input fields -> Input layer", needs_input_upgrade, upgrade_input),
]


def check_not_mixed(net: Any, loc: Location) -> None:
    if len(net.layer) and len(net.layers):
        raise SchemaError("the file mixes current 'layer { ... }' blocks with legacy 'layers { ... }' "
                          "blocks; convert all to one format (protonet upgrade converts 'layers' files)", loc)


def upgrade_net(net: Any, loc: Location) -> tuple[Any, list[str]]:
    """Run every needed upgrade step in order; return the new net and the steps that ran."""
    check_not_mixed(net, loc)
    ran: list[str] = []
    for step in CHAIN:
        if step.needs(net):
            net = step.apply(net, loc)
            ran.append(step.name)
    return net, ran
