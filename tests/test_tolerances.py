"""The element-wise comparison rule (protonet/tolerances.py), by hand-made cases: each one a way
in which a whole-blob relative error (max|a - r| / max|r|) let a wrong blob pass."""
from __future__ import annotations

import numpy as np
import pytest

from protonet.tolerances import FLT_MAX, LAYER, PASS, VERIFY, compare

F = FLT_MAX


def test_sentinel_does_not_set_the_scale():
    # the old rule: max diff 10 over max|r| = FLT_MAX -> 3e-38, a pass; in either order
    res = compare([-F, 1, 5], [-F, 2, -5])
    assert not res.ok
    assert res.index == (2,) and res.actual == 5 and res.reference == -5
    assert res.max_abs == 10
    assert not compare([-F, 2, -5], [-F, 1, 5]).ok


def test_sentinels_and_an_exact_match_pass():
    res = compare(np.float32([-F, 1, 5]), [-F, 1, 5])
    assert res.ok and res.ratio == 0 and res.max_abs == 0


def test_sentinel_must_be_in_the_same_place():
    res = compare([-F, 1, 5], [1, -F, 5])
    assert not res.ok and res.ratio == float("inf") and res.index == (0,)
    assert compare([0.0, 1, 5], [-F, 1, 5]).index == (0,)  # a sentinel lost
    assert not compare([-np.inf, 1, 5], [-F, 1, 5]).ok  # -inf is not Caffe's -FLT_MAX


def test_non_finite_values_match_in_place():
    nan, inf = float("nan"), float("inf")
    assert compare([nan, 1, inf, -inf], [nan, 1, inf, -inf]).ok
    for got in ([1, 1, inf, -inf], [nan, nan, inf, -inf], [nan, 1, -inf, -inf], [nan, 1, inf, 0]):
        res = compare(got, [nan, 1, inf, -inf])
        assert not res.ok, got
    res = compare([1, nan], [1, 2])
    assert not res.ok and res.index == (1,)


def test_non_finite_values_stay_out_of_the_scale():
    # an inf in the reference must not make every finite error look small (nor large)
    assert not compare([np.inf, 1.0, 2.5], [np.inf, 1.0, 2.0]).ok
    assert compare([np.inf, 1.0, 2.0 + 1e-6], [np.inf, 1.0, 2.0]).ok


def test_a_large_softmax_entry_does_not_hide_a_small_ones_error():
    ref = np.full(1000, 1e-6)
    ref[0] = 1 - ref[1:].sum()
    got = ref.copy()
    got[7] = 5e-6  # five times the right probability
    assert (got - ref).max() / ref.max() < 1e-4  # what the whole-blob rule measured
    res = compare(got, ref)
    assert not res.ok and res.index == (7,) and res.reference == pytest.approx(1e-6)


def test_worst_element_is_reported_with_its_index():
    ref = np.arange(24, dtype=np.float64).reshape(2, 3, 4) + 1
    got = ref.copy()
    got[1, 2, 3] += 1
    got[0, 0, 0] += 0.5  # larger relative to its own size, smaller in absolute terms
    res = compare(got, ref)
    rms = np.sqrt(np.mean(ref ** 2))
    assert res.atol == pytest.approx(VERIFY.atol_factor * rms)
    assert res.index == (0, 0, 0) and res.actual == 1.5 and res.reference == 1
    assert res.ratio == pytest.approx(0.5 / (VERIFY.atol_factor * rms + VERIFY.rtol * 1))
    assert res.describe() == "[0, 0, 0] got 1.5 vs reference 1"


def test_rule_is_element_wise_with_absolute_and_relative_parts():
    ref = np.array([1000.0, 0.0, -3.0])
    rms = np.sqrt((1000.0 ** 2 + 3.0 ** 2) / 2)  # over the nonzero entries
    atol = VERIFY.atol_factor * rms
    # exactly at the bound passes; just beyond fails, at each element
    for i in range(3):
        bound = atol + VERIFY.rtol * abs(ref[i])
        ok, bad = ref.copy(), ref.copy()
        ok[i] += bound * 0.999
        bad[i] += bound * 1.001
        assert compare(ok, ref).ok, i
        assert not compare(bad, ref).ok, i
    # units do not matter: the same blob times 1000 gets the same verdict
    got = ref + [0.05, 0.05, 0.0]
    assert compare(got, ref).ratio == pytest.approx(compare(got * 1e3, ref * 1e3).ratio)


def test_zeros_written_beside_the_values_do_not_change_a_verdict():
    # an unpooling (3 of 4 cells zero) or a ReLU's zeroed half copies each value and its error
    # unchanged: the worst element keeps its ratio, so an exact layer passes what it was given
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 3, 4, 5))
    got = ref + 3e-5 * rng.standard_normal(ref.shape)
    before = compare(got, ref)
    up_ref, up_got = np.zeros((2, 3, 8, 10)), np.zeros((2, 3, 8, 10))
    up_ref[:, :, ::2, ::2], up_got[:, :, ::2, ::2] = ref, got
    after = compare(up_got, up_ref)
    assert after.ratio == pytest.approx(before.ratio) and after.atol == pytest.approx(before.atol)
    assert after.index == tuple(2 * i if k >= 2 else i for k, i in enumerate(before.index))
    relu = compare(np.where(ref > 0, got, 0), np.where(ref > 0, ref, 0))
    assert relu.atol == pytest.approx(VERIFY.atol_factor * np.sqrt(np.mean(ref[ref > 0] ** 2)))
    # a nonzero value where the reference holds an exact zero is still judged against that scale
    up_got[0, 0, 1, 1] = 10 * after.atol
    assert not compare(up_got, up_ref).ok


def test_all_zero_blob_and_empty_blob():
    assert compare(np.zeros(4), np.zeros(4)).ok
    assert not compare([0.0, 1e-20, 0, 0], np.zeros(4)).ok
    assert compare(np.zeros((0, 3)), np.zeros((0, 3))).ok


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        compare(np.zeros(3), np.zeros(4))


def test_tolerances_live_in_one_place():
    assert PASS.rtol < VERIFY.rtol and LAYER.rtol == VERIFY.rtol
