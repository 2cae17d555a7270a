"""Layer types. Importing this package registers every built-in type."""
from . import registry
from .base import Example, Filler, Layer, NoAttrs, WeightSpec
from .registry import register

# importing a module registers its classes
from . import core, bvlc, forks, ssd, recurrent, detection, yolo  # noqa: E402,F401

__all__ = ["Example", "Filler", "Layer", "NoAttrs", "WeightSpec", "register", "registry"]
