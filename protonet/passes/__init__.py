"""The optimizer: small in-place rewrites of the IR, one module per pass, and a manager.

Each pass is a function ``pass_name(graph) -> PassResult`` whose docstring states its rule
and when it declines. ``run_passes(graph, names)`` runs them (default: every pass in
:data:`PASS_NAMES` order) to a fixed point and lints after each; ``explain(results)``
renders what they did for ``protonet compile --explain``.
"""
from .base import PassResult
from .dead_code import dead_code
from .eliminate_dropout import eliminate_dropout
from .eliminate_identity import eliminate_identity
from .eliminate_split import eliminate_split
from .fold_batchnorm import fold_batchnorm
from .fold_constants import fold_constants
from .fuse_activation import fuse_activation
from .manager import PASS_NAMES, PASSES, PassError, explain, run_pass, run_passes

__all__ = ["PASS_NAMES", "PASSES", "PassError", "PassResult", "dead_code", "eliminate_dropout",
           "eliminate_identity", "eliminate_split", "explain", "fold_batchnorm", "fold_constants",
           "fuse_activation", "run_pass", "run_passes"]
