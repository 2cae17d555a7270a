"""Phase filtering: Caffe's FilterNet / StateMeetsRule on a NetParameter (a new message)."""
from __future__ import annotations

from typing import Any, Callable

from ..errors import Location, SchemaError
from .schema import pb


def _meets_rule(state: Any, rule: Any) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_phase(net: Any, phase: str = "TEST", stages: tuple[str, ...] = (), level: int = 0,
                 with_indices: bool = False, where: Callable[[int, Any], Location] | None = None) -> Any:
    """Keep the layers whose include/exclude rules admit the state (a new message; with
    ``with_indices`` also the indices of the kept layers)."""
    state = pb.NetState()
    state.CopyFrom(net.state)
    state.phase = pb.Phase.Value(phase)
    if level:
        state.level = level
    state.stage.extend(s for s in stages if s not in state.stage)
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    kept: list[int] = []
    for i, layer in enumerate(net.layer):
        if layer.include and layer.exclude:
            raise SchemaError("a layer may have include rules or exclude rules, not both",
                              where(i, layer) if where else Location(layer=layer.name, layer_type=layer.type))
        if layer.include:
            keep = any(_meets_rule(state, r) for r in layer.include)
        else:
            keep = not any(_meets_rule(state, r) for r in layer.exclude)
        if keep:
            out.layer.add().CopyFrom(layer)
            kept.append(i)
    return (out, kept) if with_indices else out
