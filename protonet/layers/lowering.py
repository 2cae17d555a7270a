"""The lowering interface: what a layer's ``lower`` facet may use to emit ONNX for one node.

``layers/`` owns this contract (and the opset it targets); :mod:`protonet.export` implements
it. Layers never import onnx: dtypes are numpy dtypes, constants are numpy arrays, and the
exporter turns them into ONNX enums and tensors.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

#: the one ONNX opset protonet emits; other targets via onnx.version_converter
OPSET = 17

Shape = tuple[int, ...]


class Lowering(ABC):
    """One node's view of the ONNX graph being built.

    ``inputs``/``outputs`` are the ONNX value names of the node's bottoms and tops,
    ``in_shapes``/``out_shapes`` their shapes, ``weights`` the node's named arrays and ``name``
    the ONNX node-name prefix."""

    name: str
    inputs: list[str]
    outputs: list[str]
    in_shapes: list[Shape]
    out_shapes: list[Shape]
    weights: dict[str, np.ndarray]

    @abstractmethod
    def tmp(self, hint: str) -> str:
        """A fresh value name."""

    @abstractmethod
    def weight(self, key: str, array: np.ndarray | None = None) -> str:
        """An initializer for the node's weight ``key`` (or a transformed copy of it)."""

    @abstractmethod
    def const(self, array: Any, hint: str, dtype: Any = np.float32) -> str:
        """A new constant initializer (float32 unless ``dtype`` says otherwise)."""

    @abstractmethod
    def op(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | None = None,
           n_out: int = 1, domain: str = "", **attrs: Any) -> Any:
        """Emit one ONNX node; returns its output name (or the list when there are several).
        ``inputs`` may contain "" for an omitted optional input. A numpy array as an attribute
        value becomes an ONNX tensor attribute."""

    @abstractmethod
    def cast(self, x: str, dtype: Any, outputs: Sequence[str] | None = None) -> str:
        """``Cast`` of ``x`` to the numpy ``dtype``."""

    @abstractmethod
    def with_io(self, inputs: list[str], outputs: list[str], in_shapes: list[Shape],
                out_shapes: list[Shape]) -> "Lowering":
        """The same node seen with other inputs and outputs, so that a layer's ``lower`` can emit
        one step of a larger lowering (SPP reuses Pooling's)."""

    def int64s(self, values: Sequence[int], hint: str) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), hint, np.int64)

    def shape_from(self, x: str, keep: int, rest: Sequence[int], hint: str) -> str:
        """A 1-D int64 shape: the first ``keep`` dims of ``x`` as it runs, then the literal ``rest``.
        Lowerings build shapes this way where a dim is the batch (or another input-driven count),
        so that the model runs at any batch size (--batch dynamic)."""
        lead = self.op("Shape", [x], end=keep)
        return self.op("Concat", [lead, self.int64s(rest, hint)], axis=0) if rest else lead
