"""The pass manager: runs named passes in order to a fixed point, lints the IR after every
pass, attributes failures to the pass (and layer), and explains what happened."""
from __future__ import annotations

import logging
from typing import Callable

from ..errors import EXIT_INTERNAL, ProtonetError
from ..ir import Graph, IRError
from .base import PassFailure, PassResult
from .dead_code import dead_code
from .eliminate_dropout import eliminate_dropout
from .eliminate_identity import eliminate_identity
from .eliminate_split import eliminate_split
from .fold_batchnorm import fold_batchnorm
from .fold_constants import fold_constants
from .fuse_activation import fuse_activation

log = logging.getLogger(__name__)

#: every pass by name, in the default order (cheap removals first, so that the folds see
#: direct dataflow and no dead reader keeps a fold from happening nor a dead chain is folded;
#: fusion after folding, since a fused producer takes no further folds)
PASSES: dict[str, Callable[[Graph], PassResult]] = {
    "dead_code": dead_code,
    "eliminate_dropout": eliminate_dropout,
    "eliminate_split": eliminate_split,
    "eliminate_identity": eliminate_identity,
    "fold_batchnorm": fold_batchnorm,
    "fold_constants": fold_constants,
    "fuse_activation": fuse_activation,
}
PASS_NAMES: tuple[str, ...] = tuple(PASSES)
#: the sequence is repeated until a round changes nothing, at most this many rounds
MAX_ROUNDS = 4


class PassError(ProtonetError):
    """A pass failed: an internal error of the optimizer, named by pass and layer."""

    exit_code = EXIT_INTERNAL


def check_names(names: list[str] | tuple[str, ...]) -> list[str]:
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise ProtonetError(f"unknown pass{'es' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                            f"valid passes: {', '.join(PASS_NAMES)}")
    return list(names)


def run_pass(graph: Graph, name: str) -> PassResult:
    """Run one pass, lint the graph, and name the pass in any failure."""
    try:
        result = PASSES[name](graph)
    except PassFailure as e:
        raise PassError(f"pass {name} failed on layer '{e.layer}': {type(e.cause).__name__}: {e.cause}") from e
    except ProtonetError:
        raise
    except Exception as e:  # noqa: BLE001 -- an internal error, named by its pass
        raise PassError(f"pass {name} failed: {type(e).__name__}: {e}") from e
    result.name = name
    try:
        graph.lint()
    except IRError as e:
        raise PassError(f"pass {name} left a broken graph: {e}") from e
    return result


def run_passes(graph: Graph, names: list[str] | None = None, max_rounds: int = MAX_ROUNDS) -> list[PassResult]:
    """Run ``names`` (default: all, in :data:`PASS_NAMES` order) in order, repeating the
    sequence until a round changes nothing (at most ``max_rounds`` rounds). Returns one
    merged :class:`PassResult` per pass, in order. Unknown names are a ProtonetError."""
    order = check_names(PASS_NAMES if names is None else names)
    merged = {n: PassResult(name=n) for n in order}
    for round_no in range(max_rounds):
        changed = False
        for name in order:
            r = run_pass(graph, name)
            if r.changed:
                log.debug("round %d: %s: %d change(s)", round_no + 1, name, len(r.changes))
            changed = changed or r.changed
            merged[name].merge(r)
        if not changed:
            break
    else:
        log.info("passes still changing the graph after %d rounds; stopped", max_rounds)
    return [merged[n] for n in order]


def explain(results: list[PassResult]) -> str:
    """Per pass: what matched, what changed, and every decline with its reason."""
    lines = []
    for r in results:
        lines.append(f"{r.name}: {len(r.matched)} matched, {len(r.changes)} change(s), "
                     f"{len(r.declines)} decline(s)")
        if r.matched:
            lines.append("  matched: " + ", ".join(r.matched))
        for c in r.changes:
            lines.append(f"  changed: {c}")
        for layer, why in r.declines:
            lines.append(f"  declined '{layer}': {why}")
    return "\n".join(lines)
