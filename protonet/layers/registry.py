"""The explicit registry of layer types: type name (and aliases) -> layer instance."""
from __future__ import annotations

from .base import Layer

_REGISTRY: dict[str, Layer] = {}
_CANONICAL: dict[str, str] = {}


def register(cls: type[Layer]) -> type[Layer]:
    """Class decorator: register ``cls`` under its type name and aliases (duplicates are errors)."""
    if not cls.type_name:
        raise TypeError(f"{cls.__name__} has no type_name")
    instance = cls()
    for name in (cls.type_name, *cls.aliases):
        if name in _REGISTRY:
            raise ValueError(f"layer type {name!r} registered twice "
                             f"({type(_REGISTRY[name]).__name__} and {cls.__name__})")
        _REGISTRY[name] = instance
        _CANONICAL[name] = cls.type_name
    return cls


def unregister(name: str) -> None:
    """Remove a type (and its aliases); used by tests of the plugin hook."""
    inst = _REGISTRY.get(name)
    for key in [k for k, v in _REGISTRY.items() if v is inst]:
        del _REGISTRY[key]
        del _CANONICAL[key]


def get(name: str) -> Layer | None:
    return _REGISTRY.get(name)


def canonical_name(name: str) -> str:
    return _CANONICAL[name]


def all_types() -> dict[str, Layer]:
    """Canonical type name -> layer, aliases excluded."""
    return {n: l for n, l in _REGISTRY.items() if _CANONICAL[n] == n}


def names_and_aliases() -> dict[str, str]:
    return dict(_CANONICAL)
