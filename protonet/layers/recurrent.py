"""Caffe's recurrent layers: RNN, LSTM (both unrolled over time) and LSTMUnit (one LSTM step).

Caffe runs RNN and LSTM by unrolling them into an internal net of InnerProduct, Scale, Eltwise and
TanH/LSTMUnit layers over the T time steps of the input. The rules that net computes, per step t:

* ``x`` is (T, N, ...) and flattened from axis 2 (D values per step); ``cont`` is (T, N): the
  sequence-continuation indicators. The previous hidden state is multiplied by ``cont_t`` before
  it is used (and, in the LSTM, so is the forget gate), so ``cont_t = 0`` starts a new sequence.
* an optional static input ``x_static`` (N, ...) is flattened from axis 1 and added, through its
  own weight (no bias), to the input of every step.
* ``expose_hidden``: the initial states are extra bottoms (h_0 for RNN; h_0, c_0 for LSTM), each
  (1, N, num_output), and the final states extra tops (h_T; h_T, c_T). Without it the initial
  state is zero (see the note on state below).

State note: without ``expose_hidden`` Caffe copies the previous forward pass's final state into
h_0/c_0 at the start of the next pass. A compiled, stateless net cannot carry state between runs,
so protonet starts from zero: identical to Caffe on the first pass and whenever ``cont`` is 0 at
t = 0 (a new sequence), which is how recurrent nets are fed at test time.

Lowering: ONNX's LSTM/RNN operators cannot reset state per step and per stream, so the loop is
unrolled into MatMul/Add/Mul/Sigmoid/Tanh over the T steps (T is static in the IR shapes).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from ..errors import LayerContext
from .base import Example, Filler, Layer, NoAttrs, Shape, WeightSpec, prod, sigmoid
from .lowering import Lowering
from .registry import register


@dataclass(frozen=True)
class RecurrentDims:
    """What a recurrent layer's bottom shapes say: sizes and which optional bottoms are present."""

    T: int
    N: int
    D: int
    static_dim: int | None  # flattened size of x_static, None without a static input


@dataclass(frozen=True)
class RecurrentAttrs:
    num_output: int
    weight_filler: Filler
    bias_filler: Filler
    expose_hidden: bool
    dims: RecurrentDims | None = None  # resolved from the bottoms


class _Recurrent(Layer):
    """Shared parse/shape logic of RNN and LSTM (Caffe's RecurrentLayer)."""

    #: names of the recurrent state blobs (h_0; h_0, c_0), exposed with expose_hidden
    state_names: tuple[str, ...] = ()
    fixed_batch = ("its bottoms are (T, N, ...) with time on axis 0, and the lowering unrolls the T steps; "
                   "--batch sets axis 0 (T here)")

    def parse(self, layer: Any, ctx: LayerContext) -> RecurrentAttrs:
        p = layer.recurrent_param
        if p.num_output <= 0:
            raise ctx.error("recurrent_param.num_output must be set to a positive number")
        return RecurrentAttrs(int(p.num_output), Filler.from_proto(p.weight_filler),
                              Filler.from_proto(p.bias_filler), bool(p.expose_hidden))

    def num_tops(self, a: RecurrentAttrs, layer: Any) -> int | None:
        return 1 + (len(self.state_names) if a.expose_hidden else 0)

    def _n_state(self, a: RecurrentAttrs) -> int:
        return len(self.state_names) if a.expose_hidden else 0

    def _has_static(self, a: RecurrentAttrs, n_bottoms: int) -> bool:
        return n_bottoms > 2 + self._n_state(a)

    def resolve(self, a: RecurrentAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> RecurrentAttrs:
        """T, N, D and the static size read from the bottoms, checked as Caffe does."""
        x, cont = shapes[0], shapes[1]
        n_state = self._n_state(a)
        lo = 2 + n_state
        names = "x, cont, [x_static]" + "".join(f", {s}" for s in self.state_names[:n_state])
        if not lo <= len(shapes) <= lo + 1:
            raise ctx.error(f"takes {lo} or {lo + 1} bottoms ({names}), got {len(shapes)}"
                            + ("" if a.expose_hidden else "; initial states need expose_hidden: true"))
        if len(x) < 3:
            raise ctx.error(f"bottom 0 (x) must be (T, N, ...) with at least 3 axes, got shape {tuple(x)}")
        if len(cont) != 2 or tuple(cont) != tuple(x[:2]):
            raise ctx.error(f"bottom 1 (cont) must have shape (T, N) = {tuple(x[:2])}, got {tuple(cont)}")
        static_dim = None
        if self._has_static(a, len(shapes)):
            s = shapes[2]
            if len(s) < 2 or s[0] != x[1]:
                raise ctx.error(f"bottom 2 (x_static) must be (N, ...) with N = {x[1]} and at least 2 axes, "
                                f"got shape {tuple(s)}")
            static_dim = prod(s[1:])
        want = (1, x[1], a.num_output)
        first = len(shapes) - n_state
        for k, name in enumerate(self.state_names[:n_state]):
            if tuple(shapes[first + k]) != want:
                raise ctx.error(f"bottom {first + k} ({name}) must have shape {want}, "
                                f"got {tuple(shapes[first + k])}")
        return replace(a, dims=RecurrentDims(x[0], x[1], prod(x[2:]), static_dim))

    def infer(self, a: RecurrentAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        b = a.dims
        state = (1, b.N, a.num_output)
        return [(b.T, b.N, a.num_output)] + [state] * self._n_state(a)

    def split_inputs(self, a: RecurrentAttrs, xs: Sequence[Any]) -> tuple[Any, Any, Any, list[Any]]:
        """(x, cont, x_static or None, initial states) from the bottoms (arrays or ONNX names)."""
        n_state = self._n_state(a)
        static = xs[2] if self._has_static(a, len(xs)) else None
        states = list(xs[len(xs) - n_state:]) if n_state else []
        return xs[0], xs[1], static, states

    # -- shared lowering helpers -------------------------------------------------------------

    @staticmethod
    def _lower_input_transform(g: Lowering, b: RecurrentDims, w_key: str, b_key: str, s_key: str,
                               x: str, static: str | None) -> list[str]:
        """W x_t + b (+ W_static x_static) for all steps at once, split into T (1, N, rows) pieces."""
        xs = g.in_shapes[0]
        if len(xs) != 3:
            x = g.op("Reshape", [x, g.int64s([b.T, b.N, b.D], "x_shape")])
        xw = g.op("MatMul", [x, g.weight(w_key, g.weights[w_key].T)])
        xw = g.op("Add", [xw, g.weight(b_key)])
        if static is not None:
            if len(g.in_shapes[2]) != 2:
                static = g.op("Reshape", [static, g.int64s([b.N, b.static_dim], "x_static_shape")])
            sw = g.op("MatMul", [static, g.weight(s_key, g.weights[s_key].T)])
            xw = g.op("Add", [xw, sw])  # (T, N, rows) + (N, rows)
        return _split_steps(g, xw, b.T)

    @staticmethod
    def _lower_cont(g: Lowering, b: RecurrentDims, cont: str) -> list[str]:
        """cont (T, N) as T pieces of shape (1, N, 1), ready to scale (1, N, H) states."""
        c3 = g.op("Reshape", [cont, g.int64s([b.T, b.N, 1], "cont_shape")])
        return _split_steps(g, c3, b.T)


def _split_steps(g: Lowering, name: str, steps: int) -> list[str]:
    if steps == 1:
        return [name]
    return list(g.op("Split", [name], n_out=steps, axis=0))


# -- LSTM ------------------------------------------------------------------------------------------

@register
class LSTM(_Recurrent):
    """Caffe LSTM over (T, N, ...) inputs with continuation indicators ``cont`` (T, N).

    Per step: gates = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static], split in
    Caffe's order i, f, o, g (rows of the 4*num_output weights); i, f, o = sigmoid, g = tanh;
    c_t = cont_t f c_{t-1} + i g; h_t = o tanh(c_t). Output: h over all steps (T, N, num_output).
    Blobs in Caffe's order: W_xc (4H, D), b_c (4H), [W_xc_static (4H, S)], W_hc (4H, H).
    """

    type_name = "LSTM"
    num_bottoms = (2, 5)
    state_names = ("h_0", "c_0")
    examples = (
        Example('layer { name: "lstm" type: "LSTM" bottom: "in0" bottom: "in1" top: "out" '
                'recurrent_param { num_output: 5 } }', ((4, 2, 3), (4, 2)), "basic", {1: 2}),
        Example('layer { name: "lstm" type: "LSTM" bottom: "in0" bottom: "in1" bottom: "in2" top: "out" '
                'recurrent_param { num_output: 3 debug_info: true } }', ((3, 2, 2, 2), (3, 2), (2, 3)),
                "static_4d", {1: 2}),
        Example('layer { name: "lstm" type: "LSTM" bottom: "in0" bottom: "in1" bottom: "in2" bottom: "in3" '
                'top: "out" top: "h_T" top: "c_T" recurrent_param { num_output: 4 expose_hidden: true } }',
                ((3, 2, 3), (3, 2), (1, 2, 4), (1, 2, 4)), "expose_hidden", {1: 2}),
        Example('layer { name: "lstm" type: "LSTM" bottom: "in0" bottom: "in1" bottom: "in2" bottom: "in3" '
                'bottom: "in4" top: "out" top: "h_T" top: "c_T" '
                'recurrent_param { num_output: 2 expose_hidden: true } }',
                ((2, 3, 2), (2, 3), (3, 2, 2), (1, 3, 2), (1, 3, 2)), "expose_static", {1: 2}),
        Example('layer { name: "lstm" type: "LSTM" bottom: "in0" bottom: "in1" top: "out" '
                'recurrent_param { num_output: 3 } }', ((1, 2, 3), (1, 2)), "one_step", {1: 2}),
    )

    def weights(self, a: RecurrentAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        b = a.dims
        rows = 4 * a.num_output
        specs = [WeightSpec("W_xc", (rows, b.D), a.weight_filler),
                 WeightSpec("b_c", (rows,), a.bias_filler, role="bias")]
        if b.static_dim is not None:
            specs.append(WeightSpec("W_xc_static", (rows, b.static_dim), a.weight_filler))
        specs.append(WeightSpec("W_hc", (rows, a.num_output), a.weight_filler))
        return specs

    def cost(self, a: RecurrentAttrs, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
        b = a.dims
        rows = 4 * a.num_output
        return b.T * b.N * rows * (b.D + a.num_output) + b.N * rows * (b.static_dim or 0)

    def kernel(self, a: RecurrentAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x, cont, static, states = self.split_inputs(a, xs)
        T, N = cont.shape
        H = a.num_output
        xw = x.reshape(T, N, -1) @ w["W_xc"].T + w["b_c"]
        if static is not None:
            xw = xw + static.reshape(N, -1) @ w["W_xc_static"].T
        if states:
            h, c = states[0][0], states[1][0]
        else:
            h = np.zeros((N, H), dtype=xw.dtype)
            c = np.zeros((N, H), dtype=xw.dtype)
        out = np.empty((T, N, H), dtype=xw.dtype)
        for t in range(T):
            ct = cont[t][:, None]
            gates = (ct * h) @ w["W_hc"].T + xw[t]
            i = sigmoid(gates[:, :H])
            f = sigmoid(gates[:, H:2 * H])
            o = sigmoid(gates[:, 2 * H:3 * H])
            g = np.tanh(gates[:, 3 * H:])
            # LSTMUnit: the forget gate is exactly 0 where cont is 0 (even against a non-finite c)
            f = np.where(ct == 0, 0.0, ct * f)
            c = f * c + i * g
            h = o * np.tanh(c)
            out[t] = h
        return [out] + ([h[None], c[None]] if a.expose_hidden else [])

    def lower(self, a: RecurrentAttrs, g: Lowering) -> None:
        b = a.dims
        x, cont, static, states = self.split_inputs(a, g.inputs)
        steps = self._lower_input_transform(g, b, "W_xc", "b_c", "W_xc_static", x, static)
        conts = self._lower_cont(g, b, cont)
        w_hc = g.weight("W_hc", g.weights["W_hc"].T)
        h, c = (states[0], states[1]) if states else (None, None)
        hs = []
        for t in range(b.T):
            if h is None:  # zero initial state: the recurrent terms vanish
                pre = steps[t]
            else:
                hc = g.op("Mul", [h, conts[t]])
                pre = g.op("Add", [g.op("MatMul", [hc, w_hc]), steps[t]])
            i, f, o, gg = g.op("Split", [pre], n_out=4, axis=2)
            i, f, o = (g.op("Sigmoid", [v]) for v in (i, f, o))
            gg = g.op("Tanh", [gg])
            ig = g.op("Mul", [i, gg])
            if c is None:
                c = ig
            else:
                fc = g.op("Mul", [g.op("Mul", [f, conts[t]]), c])
                c = g.op("Add", [fc, ig])
            h = g.op("Mul", [o, g.op("Tanh", [c])])
            hs.append(h)
        g.op("Concat", hs, [g.outputs[0]], axis=0)
        if a.expose_hidden:
            g.op("Identity", [h], [g.outputs[1]])
            g.op("Identity", [c], [g.outputs[2]])


# -- RNN -------------------------------------------------------------------------------------------

@register
class RNN(_Recurrent):
    """Caffe's simple RNN over (T, N, ...) inputs with continuation indicators ``cont`` (T, N).

    Per step: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]);
    o_t = tanh(W_ho h_t + b_o). Output: o over all steps (T, N, num_output); the exposed
    state (expose_hidden) is h. Blobs in Caffe's order: W_xh (H, D), b_h (H),
    [W_xh_static (H, S)], W_hh (H, H), W_ho (H, H), b_o (H).
    """

    type_name = "RNN"
    num_bottoms = (2, 4)
    state_names = ("h_0",)
    examples = (
        Example('layer { name: "rnn" type: "RNN" bottom: "in0" bottom: "in1" top: "out" '
                'recurrent_param { num_output: 5 } }', ((4, 2, 3), (4, 2)), "basic", {1: 2}),
        Example('layer { name: "rnn" type: "RNN" bottom: "in0" bottom: "in1" bottom: "in2" top: "out" '
                'recurrent_param { num_output: 3 } }', ((3, 2, 2, 2), (3, 2), (2, 2, 2)), "static_4d", {1: 2}),
        Example('layer { name: "rnn" type: "RNN" bottom: "in0" bottom: "in1" bottom: "in2" '
                'top: "out" top: "h_T" recurrent_param { num_output: 4 expose_hidden: true } }',
                ((3, 2, 3), (3, 2), (1, 2, 4)), "expose_hidden", {1: 2}),
        Example('layer { name: "rnn" type: "RNN" bottom: "in0" bottom: "in1" bottom: "in2" bottom: "in3" '
                'top: "out" top: "h_T" recurrent_param { num_output: 2 expose_hidden: true } }',
                ((2, 3, 2), (2, 3), (3, 4), (1, 3, 2)), "expose_static", {1: 2}),
    )

    def weights(self, a: RecurrentAttrs, shapes: Sequence[Shape]) -> list[WeightSpec]:
        b = a.dims
        H = a.num_output
        specs = [WeightSpec("W_xh", (H, b.D), a.weight_filler),
                 WeightSpec("b_h", (H,), a.bias_filler, role="bias")]
        if b.static_dim is not None:
            specs.append(WeightSpec("W_xh_static", (H, b.static_dim), a.weight_filler))
        specs += [WeightSpec("W_hh", (H, H), a.weight_filler),
                  WeightSpec("W_ho", (H, H), a.weight_filler),
                  WeightSpec("b_o", (H,), a.bias_filler, role="bias")]
        return specs

    def cost(self, a: RecurrentAttrs, ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
        b = a.dims
        H = a.num_output
        return b.T * b.N * H * (b.D + 2 * H) + b.N * H * (b.static_dim or 0)

    def kernel(self, a: RecurrentAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        x, cont, static, states = self.split_inputs(a, xs)
        T, N = cont.shape
        xw = x.reshape(T, N, -1) @ w["W_xh"].T + w["b_h"]
        if static is not None:
            xw = xw + static.reshape(N, -1) @ w["W_xh_static"].T
        h = states[0][0] if states else np.zeros((N, a.num_output), dtype=xw.dtype)
        hs = np.empty((T, N, a.num_output), dtype=xw.dtype)
        for t in range(T):
            h = np.tanh((cont[t][:, None] * h) @ w["W_hh"].T + xw[t])
            hs[t] = h
        o = np.tanh(hs @ w["W_ho"].T + w["b_o"])
        return [o] + ([h[None]] if a.expose_hidden else [])

    def lower(self, a: RecurrentAttrs, g: Lowering) -> None:
        b = a.dims
        x, cont, static, states = self.split_inputs(a, g.inputs)
        steps = self._lower_input_transform(g, b, "W_xh", "b_h", "W_xh_static", x, static)
        conts = self._lower_cont(g, b, cont)
        w_hh = g.weight("W_hh", g.weights["W_hh"].T)
        h = states[0] if states else None
        hs = []
        for t in range(b.T):
            if h is None:  # zero initial state: W_hh h_0 vanishes
                pre = steps[t]
            else:
                pre = g.op("Add", [g.op("MatMul", [g.op("Mul", [h, conts[t]]), w_hh]), steps[t]])
            h = g.op("Tanh", [pre])
            hs.append(h)
        all_h = g.op("Concat", hs, axis=0) if len(hs) > 1 else hs[0]
        o = g.op("Add", [g.op("MatMul", [all_h, g.weight("W_ho", g.weights["W_ho"].T)]), g.weight("b_o")])
        g.op("Tanh", [o], [g.outputs[0]])
        if a.expose_hidden:
            g.op("Identity", [h], [g.outputs[1]])


# -- LSTMUnit --------------------------------------------------------------------------------------

@register
class LSTMUnit(Layer):
    """One LSTM step (the unit Caffe's LSTM unrolls into): bottoms c_{t-1} (1, N, H),
    gate inputs (1, N, 4H) in the order i, f, o, g, and cont (1, N); tops c_t and h_t (1, N, H).

    i, f, o = sigmoid, g = tanh; f is replaced by cont * f (exactly 0 where cont is 0);
    c_t = f c_{t-1} + i g; h_t = o tanh(c_t). No weights.
    """

    type_name = "LSTMUnit"
    num_bottoms = (3, 3)
    fixed_batch = "its bottoms are one time step (1, N, ...): axis 0 is not a batch axis"
    examples = (
        Example('layer { name: "u" type: "LSTMUnit" bottom: "in0" bottom: "in1" bottom: "in2" '
                'top: "c" top: "h" }', ((1, 3, 4), (1, 3, 16), (1, 3)), "basic", {2: 2}),
    )

    def num_tops(self, a: Any, layer: Any) -> int | None:
        return 2

    def infer(self, a: NoAttrs, shapes: Sequence[Shape], ctx: LayerContext) -> list[Shape]:
        c, x, cont = (tuple(s) for s in shapes)
        if len(c) != 3 or c[0] != 1:
            raise ctx.error(f"bottom 0 (c_prev) must be (1, N, H), got shape {c}")
        n, h = c[1], c[2]
        if x != (1, n, 4 * h):
            raise ctx.error(f"bottom 1 (gate inputs) must be (1, N, 4H) = {(1, n, 4 * h)}, got shape {x}")
        if cont != (1, n):
            raise ctx.error(f"bottom 2 (cont) must be (1, N) = {(1, n)}, got shape {cont}")
        return [c, c]

    def kernel(self, a: NoAttrs, xs: Sequence[np.ndarray], w: dict) -> list[np.ndarray]:
        c_prev, x, cont = xs
        h = c_prev.shape[2]
        ct = cont[:, :, None]
        i = sigmoid(x[:, :, :h])
        f = np.where(ct == 0, 0.0, ct * sigmoid(x[:, :, h:2 * h]))
        o = sigmoid(x[:, :, 2 * h:3 * h])
        g = np.tanh(x[:, :, 3 * h:])
        c = f * c_prev + i * g
        return [c, o * np.tanh(c)]

    def lower(self, a: NoAttrs, g: Lowering) -> None:
        n = g.in_shapes[0][1]
        c_prev, x, cont = g.inputs
        ct = g.op("Reshape", [cont, g.int64s([1, n, 1], "cont_shape")])
        i, f, o, gg = g.op("Split", [x], n_out=4, axis=2)
        i, f, o = (g.op("Sigmoid", [v]) for v in (i, f, o))
        fc = g.op("Mul", [g.op("Mul", [f, ct]), c_prev])
        c = g.op("Add", [fc, g.op("Mul", [i, g.op("Tanh", [gg])])], [g.outputs[0]])
        g.op("Mul", [o, g.op("Tanh", [c])], [g.outputs[1]])
