"""Recurrent layers (LSTM, RNN, LSTMUnit): Caffe's cont-reset trap, gate order and blob order.

Checked three ways: a second LSTM/RNN written here apart from the layer (explicit loops over
streams, units and gates), literal cases whose numbers were worked out by hand, and the ONNX
lowering in onnxruntime.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness import build_text, example_net_text
from protonet.errors import ProtonetError
from protonet.export import export
from protonet.layers import registry
from protonet.layers.base import Example
from protonet.reference import ReferenceInterpreter
from protonet.runtime import make_session

LN2, LN3, LN6 = math.log(2.0), math.log(3.0), math.log(6.0)


def _net(layer: str, inputs: tuple) -> str:
    return example_net_text(Example(layer, inputs))


def _node(graph):
    return [n for n in graph.nodes if not registry.get(n.type).is_source][0]


def _run_both(text: str, weights: dict[str, np.ndarray] | None, feeds: dict[str, np.ndarray]):
    """Build ``text``, replace the recurrent node's weights, run the numpy kernel and onnxruntime."""
    graph = build_text(text)
    node = _node(graph)
    for k, v in (weights or {}).items():
        assert node.weights[k].shape == np.shape(v), k
        node.weights[k] = np.asarray(v, dtype=np.float64)
    ref = ReferenceInterpreter(graph).run(feeds)
    got = make_session(export(graph), "cpu").run(feeds)
    return graph, node, ref, got


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# -- an LSTM and an RNN written apart: scalar loops over streams, units and gates ------------------

def lstm_by_hand(x, cont, W_xc, b_c, W_hc, W_st=None, x_st=None, h0=None, c0=None):
    T, N = cont.shape
    H = W_hc.shape[1]
    xf = x.reshape(T, N, -1)
    h = np.zeros((N, H)) if h0 is None else h0.reshape(N, H).copy()
    c = np.zeros((N, H)) if c0 is None else c0.reshape(N, H).copy()
    out = np.zeros((T, N, H))
    for t in range(T):
        h_new, c_new = np.zeros((N, H)), np.zeros((N, H))
        for n in range(N):
            for j in range(H):
                pre = {}
                for k, gate in enumerate("ifog"):  # Caffe's row blocks: i, f, o, g
                    row = k * H + j
                    s = b_c[row]
                    for d in range(xf.shape[2]):
                        s += W_xc[row, d] * xf[t, n, d]
                    for m in range(H):
                        s += W_hc[row, m] * (cont[t, n] * h[n, m])
                    if W_st is not None:
                        xs = x_st.reshape(N, -1)
                        for d in range(xs.shape[1]):
                            s += W_st[row, d] * xs[n, d]
                    pre[gate] = s
                i, f, o = _sig(pre["i"]), _sig(pre["f"]), _sig(pre["o"])
                g = math.tanh(pre["g"])
                c_new[n, j] = cont[t, n] * f * c[n, j] + i * g
                h_new[n, j] = o * math.tanh(c_new[n, j])
        h, c = h_new, c_new
        out[t] = h
    return out, h, c


def rnn_by_hand(x, cont, W_xh, b_h, W_hh, W_ho, b_o):
    T, N = cont.shape
    H = W_hh.shape[0]
    xf = x.reshape(T, N, -1)
    h = np.zeros((N, H))
    out = np.zeros((T, N, H))
    for t in range(T):
        h_new = np.zeros((N, H))
        for n in range(N):
            for j in range(H):
                s = b_h[j] + sum(W_xh[j, d] * xf[t, n, d] for d in range(xf.shape[2]))
                s += sum(W_hh[j, m] * cont[t, n] * h[n, m] for m in range(H))
                h_new[n, j] = math.tanh(s)
        h = h_new
        for n in range(N):
            for j in range(H):
                out[t, n, j] = math.tanh(b_o[j] + sum(W_ho[j, m] * h[n, m] for m in range(H)))
    return out


CONT_4x2 = np.array([[0, 0], [1, 1], [1, 0], [0, 1]], dtype=np.float32)


def test_lstm_matches_loop_implementation_and_onnxruntime():
    T, N, D, H = 4, 2, 3, 5
    text = _net('layer { name: "lstm" type: "LSTM" bottom: "in0" bottom: "in1" top: "h" '
                'recurrent_param { num_output: 5 } }', ((T, N, D), (T, N)))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    graph, node, ref, got = _run_both(text, None, {"in0": x, "in1": CONT_4x2})
    w = node.weights
    assert list(w) == ["W_xc", "b_c", "W_hc"]  # Caffe's blob order
    want, _, _ = lstm_by_hand(x.astype(np.float64), CONT_4x2.astype(np.float64), w["W_xc"], w["b_c"], w["W_hc"])
    np.testing.assert_allclose(ref["h"], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["h"], want, rtol=1e-5, atol=1e-6)


def test_lstm_static_input_and_exposed_state_match_loop_implementation():
    T, N, H = 3, 2, 3
    text = _net('layer { name: "lstm" type: "LSTM" bottom: "in0" bottom: "in1" bottom: "in2" bottom: "in3" '
                'bottom: "in4" top: "h" top: "hT" top: "cT" recurrent_param { num_output: 3 expose_hidden: true } }',
                ((T, N, 2, 2), (T, N), (N, 3), (1, N, H), (1, N, H)))
    rng = np.random.default_rng(3)
    feeds = {"in0": rng.standard_normal((T, N, 2, 2)), "in1": np.array([[1, 0], [1, 1], [0, 1]]),
             "in2": rng.standard_normal((N, 3)), "in3": rng.standard_normal((1, N, H)),
             "in4": rng.standard_normal((1, N, H))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    graph, node, ref, got = _run_both(text, None, feeds)
    w = node.weights
    assert list(w) == ["W_xc", "b_c", "W_xc_static", "W_hc"]
    assert w["W_xc_static"].shape == (4 * H, 3)
    f64 = {k: v.astype(np.float64) for k, v in feeds.items()}
    want, hT, cT = lstm_by_hand(f64["in0"], f64["in1"], w["W_xc"], w["b_c"], w["W_hc"], w["W_xc_static"],
                                f64["in2"], f64["in3"], f64["in4"])
    for name, v in (("h", want), ("hT", hT[None]), ("cT", cT[None])):
        np.testing.assert_allclose(ref[name], v, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got[name], v, rtol=1e-5, atol=1e-6)


def test_rnn_matches_loop_implementation_and_onnxruntime():
    T, N, D, H = 4, 2, 3, 5
    text = _net('layer { name: "rnn" type: "RNN" bottom: "in0" bottom: "in1" top: "o" '
                'recurrent_param { num_output: 5 } }', ((T, N, D), (T, N)))
    x = np.random.default_rng(5).standard_normal((T, N, D)).astype(np.float32)
    graph, node, ref, got = _run_both(text, None, {"in0": x, "in1": CONT_4x2})
    w = node.weights
    assert list(w) == ["W_xh", "b_h", "W_hh", "W_ho", "b_o"]  # Caffe's blob order
    want = rnn_by_hand(x.astype(np.float64), CONT_4x2.astype(np.float64),
                       w["W_xh"], w["b_h"], w["W_hh"], w["W_ho"], w["b_o"])
    np.testing.assert_allclose(ref["o"], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["o"], want, rtol=1e-5, atol=1e-6)


# -- literal cases, worked out by hand --------------------------------------------------------------

LSTM_1x1 = _net('layer { name: "lstm" type: "LSTM" bottom: "in0" bottom: "in1" top: "h" '
                'recurrent_param { num_output: 1 } }', ((2, 1, 1), (2, 1)))
# rows i, f, o, g. x_t = 1 at both steps.
#   step 1 (zero state): pre = (ln3, ln3, ln3, ln2) -> i = f = o = 3/4, g = tanh(ln2) = 3/5
#     c1 = 3/4 * 3/5 = 0.45;  h1 = 3/4 * tanh(0.45) = 0.75 * 0.42189900525 = 0.31642425394
#   step 2, cont = 1: pre_g = ln2 + 1 * h1 = 1.00957143450 -> g = 0.76558470172
#     c2 = 3/4 * 0.45 + 3/4 * 0.76558470172 = 0.91168852629;  h2 = 3/4 * tanh(c2) = 0.54145628004
#   step 2, cont = 0: h1 is not seen (pre_g = ln2, g = 3/5) and c1 is forgotten (f = 0):
#     c2 = 0.45, h2 = h1 = 0.31642425394 -- a fresh sequence
LSTM_1x1_WEIGHTS = {"W_xc": [[LN3], [0.0], [LN3], [LN2]], "b_c": [0.0, LN3, 0.0, 0.0],
                    "W_hc": [[0.0], [0.0], [0.0], [1.0]]}


@pytest.mark.parametrize("cont,expected", [
    ([0, 1], [0.31642425394, 0.54145628004]),
    ([1, 1], [0.31642425394, 0.54145628004]),  # cont at t = 0 meets a zero state either way
    ([0, 0], [0.31642425394, 0.31642425394]),
])
def test_lstm_literal_cont_reset(cont, expected):
    feeds = {"in0": np.ones((2, 1, 1), np.float32), "in1": np.array(cont, np.float32).reshape(2, 1)}
    _, _, ref, got = _run_both(LSTM_1x1, LSTM_1x1_WEIGHTS, feeds)
    np.testing.assert_allclose(ref["h"].ravel(), expected, atol=1e-10)
    np.testing.assert_allclose(got["h"].ravel(), expected, atol=1e-6)


RNN_1x1 = _net('layer { name: "rnn" type: "RNN" bottom: "in0" bottom: "in1" bottom: "in2" top: "o" top: "hT" '
               'recurrent_param { num_output: 1 expose_hidden: true } }', ((2, 1, 1), (2, 1), (1, 1, 1)))
# W_xh = ln3, b_h = 0, W_hh = 1.25 ln6, W_ho = 1.25 ln2, b_o = 0; x = (1, -1); h_0 = 5 (exposed).
#   step 1, cont = 0: h1 = tanh(ln3) = 0.8 (h_0 ignored);  o1 = tanh(1.25 ln2 * 0.8) = tanh(ln2) = 0.6
#   step 2, cont = 1: h2 = tanh(1.25 ln6 * 0.8 - ln3) = tanh(ln2) = 0.6
#                     o2 = tanh(1.25 ln2 * 0.6) = tanh(0.75 ln2) = (9 - 4 sqrt2) / 7 = 0.47759225007
#   step 2, cont = 0: h2 = tanh(-ln3) = -0.8;  o2 = tanh(-ln2) = -0.6
RNN_1x1_WEIGHTS = {"W_xh": [[LN3]], "b_h": [0.0], "W_hh": [[1.25 * LN6]], "W_ho": [[1.25 * LN2]], "b_o": [0.0]}


@pytest.mark.parametrize("cont,expected_o,expected_h", [
    ([0, 1], [0.6, 0.47759225007], 0.6),
    ([0, 0], [0.6, -0.6], -0.8),
])
def test_rnn_literal_cont_reset(cont, expected_o, expected_h):
    feeds = {"in0": np.array([1, -1], np.float32).reshape(2, 1, 1),
             "in1": np.array(cont, np.float32).reshape(2, 1), "in2": np.full((1, 1, 1), 5.0, np.float32)}
    _, _, ref, got = _run_both(RNN_1x1, RNN_1x1_WEIGHTS, feeds)
    for out in (ref, got):
        np.testing.assert_allclose(out["o"].ravel(), expected_o, atol=1e-6)
        np.testing.assert_allclose(out["hT"].ravel(), [expected_h], atol=1e-6)


def test_rnn_exposed_initial_state_is_used_when_cont_is_1():
    # cont = (1, 1) with h_0 = 5: h1 = tanh(1.25 ln6 * 5 + ln3) = tanh(12.6931...) = 1 - 2.2e-11
    feeds = {"in0": np.array([1, -1], np.float32).reshape(2, 1, 1),
             "in1": np.ones((2, 1), np.float32), "in2": np.full((1, 1, 1), 5.0, np.float32)}
    _, _, ref, got = _run_both(RNN_1x1, RNN_1x1_WEIGHTS, feeds)
    # o1 = tanh(1.25 ln2 * 1) = (2^2.5 - 1)/(2^2.5 + 1) = 0.69955926...; h2 = tanh(1.25 ln6 - ln3)
    h2 = math.tanh(1.25 * LN6 * math.tanh(1.25 * LN6 * 5 + LN3) - LN3)
    o1 = (2 ** 2.5 - 1) / (2 ** 2.5 + 1)
    for out in (ref, got):
        np.testing.assert_allclose(out["o"].ravel()[0], o1, atol=1e-6)
        np.testing.assert_allclose(out["hT"].ravel(), [h2], atol=1e-6)


LSTM_UNIT = _net('layer { name: "u" type: "LSTMUnit" bottom: "in0" bottom: "in1" bottom: "in2" top: "c" top: "h" }',
                 ((1, 2, 1), (1, 2, 4), (1, 2)))


def test_lstm_unit_literal():
    # stream 0, cont = 1: c_prev = 2 ln2, gates (5, 0, ln3, 0): f = 1/2, g = 0, o = 3/4
    #   c = 1/2 * 2 ln2 + sigmoid(5) * 0 = ln2 = 0.69314718056;  h = 3/4 * tanh(ln2) = 3/4 * 3/5 = 0.45
    # stream 1, cont = 0: c_prev = 2 ln2 forgotten, gates (ln3, 0, ln3, ln2): i = o = 3/4, g = 3/5
    #   c = 3/4 * 3/5 = 0.45;  h = 3/4 * tanh(0.45) = 0.31642425394
    feeds = {"in0": np.full((1, 2, 1), 2 * LN2, np.float32),
             "in1": np.array([[[5, 0, LN3, 0], [LN3, 0, LN3, LN2]]], np.float32),
             "in2": np.array([[1, 0]], np.float32)}
    _, node, ref, got = _run_both(LSTM_UNIT, None, feeds)
    assert node.weights == {}
    for out, tol in ((ref, 1e-7), (got, 1e-6)):
        np.testing.assert_allclose(out["c"].ravel(), [LN2, 0.45], atol=tol)
        np.testing.assert_allclose(out["h"].ravel(), [0.45, 0.31642425394], atol=tol)


# -- weights, cost, errors ------------------------------------------------------------------------

def test_blob_shapes_and_fillers_follow_caffe():
    text = _net('layer { name: "rnn" type: "RNN" bottom: "in0" bottom: "in1" bottom: "in2" top: "o" '
                'recurrent_param { num_output: 2 weight_filler { type: "constant" value: 0.5 } '
                'bias_filler { type: "constant" value: -1 } } }', ((3, 1, 4, 2), (3, 1), (1, 5)))
    graph = build_text(text, init="filler")
    w = _node(graph).weights
    assert {k: v.shape for k, v in w.items()} == {"W_xh": (2, 8), "b_h": (2,), "W_xh_static": (2, 5),
                                                 "W_hh": (2, 2), "W_ho": (2, 2), "b_o": (2,)}
    assert list(w) == ["W_xh", "b_h", "W_xh_static", "W_hh", "W_ho", "b_o"]
    assert all((v == 0.5).all() for k, v in w.items() if k.startswith("W"))
    assert (w["b_h"] == -1).all() and (w["b_o"] == -1).all()


def test_cost_counts_the_matmuls():
    # LSTM T=4 N=2 D=3 H=5: per step and stream 4H*D + 4H*H = 60 + 100 -> 4*2*160 = 1280
    # plus a static input of 6 values: N * 4H * 6 = 240
    lstm, rnn = registry.get("LSTM"), registry.get("RNN")
    a = _node(build_text(_net('layer { name: "l" type: "LSTM" bottom: "in0" bottom: "in1" top: "h" '
                              'recurrent_param { num_output: 5 } }', ((4, 2, 3), (4, 2))))).attrs
    assert lstm.cost(a, [(4, 2, 3), (4, 2)], [(4, 2, 5)]) == 1280
    s = _node(build_text(_net('layer { name: "l" type: "LSTM" bottom: "in0" bottom: "in1" bottom: "in2" top: "h" '
                              'recurrent_param { num_output: 5 } }', ((4, 2, 3), (4, 2), (2, 6))))).attrs
    assert lstm.cost(s, [(4, 2, 3), (4, 2), (2, 6)], [(4, 2, 5)]) == 1280 + 240
    # RNN: per step and stream H*D + H*H (W_hh) + H*H (W_ho) = 15 + 25 + 25 -> 4*2*65 = 520
    assert rnn.cost(a, [(4, 2, 3), (4, 2)], [(4, 2, 5)]) == 520


@pytest.mark.parametrize("layer,shapes,message", [
    ('type: "LSTM" bottom: "in0" bottom: "in1" top: "h" recurrent_param { }', ((2, 1, 3), (2, 1)),
     "num_output must be set"),
    ('type: "LSTM" bottom: "in0" bottom: "in1" top: "h" recurrent_param { num_output: 2 }', ((2, 3), (2, 3)),
     r"bottom 0 \(x\) must be \(T, N, \.\.\.\) with at least 3 axes"),
    ('type: "RNN" bottom: "in0" bottom: "in1" top: "h" recurrent_param { num_output: 2 }', ((2, 1, 3), (2, 2)),
     r"bottom 1 \(cont\) must have shape \(T, N\) = \(2, 1\)"),
    ('type: "LSTM" bottom: "in0" bottom: "in1" bottom: "in2" bottom: "in3" top: "h" '
     'recurrent_param { num_output: 2 }', ((2, 1, 3), (2, 1), (1, 1, 2), (1, 1, 2)),
     "takes 2 or 3 bottoms.*initial states need expose_hidden: true"),
    ('type: "LSTM" bottom: "in0" bottom: "in1" bottom: "in2" top: "h" recurrent_param { num_output: 2 }',
     ((2, 1, 3), (2, 1), (3, 4)), r"bottom 2 \(x_static\) must be \(N, \.\.\.\) with N = 1"),
    ('type: "LSTM" bottom: "in0" bottom: "in1" bottom: "in2" bottom: "in3" top: "h" top: "hT" top: "cT" '
     'recurrent_param { num_output: 2 expose_hidden: true }', ((2, 1, 3), (2, 1), (1, 1, 2), (1, 1, 3)),
     r"bottom 3 \(c_0\) must have shape \(1, 1, 2\)"),
    ('type: "RNN" bottom: "in0" bottom: "in1" bottom: "in2" top: "h" recurrent_param { num_output: 2 '
     'expose_hidden: true }', ((2, 1, 3), (2, 1), (1, 1, 2)), "needs 2 top"),
    ('type: "LSTMUnit" bottom: "in0" bottom: "in1" bottom: "in2" top: "c" top: "h"', ((1, 2, 3), (1, 2, 8), (1, 2)),
     r"bottom 1 \(gate inputs\) must be \(1, N, 4H\) = \(1, 2, 12\)"),
])
def test_bad_recurrent_parameters_are_located(layer, shapes, message):
    text = _net(f'layer {{ name: "bad" {layer} }}', shapes)
    with pytest.raises(ProtonetError, match=message) as info:
        build_text(text)
    assert "layer 'bad'" in str(info.value) and "test.prototxt:" in str(info.value)
