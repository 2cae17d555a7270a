"""Layer types. Importing this package registers every built-in type."""
from . import registry
from .base import Example, Filler, Layer, NoAttrs, WeightSpec
from .registry import register

from . import core  # noqa: E402,F401  (registers the core types)

__all__ = ["Example", "Filler", "Layer", "NoAttrs", "WeightSpec", "register", "registry"]
