"""Compile time grows linearly with the size of the net (issue: tiny files that took minutes).

Each family is compiled at n and 4n (in-process, best CPU time of two runs): linear work costs
about 4x, the quadratic name generation, lint scans and pass bookkeeping this guards against
cost 16x. The bound (8x) leaves room for a busy machine without letting a quadratic through.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("_bench_compile_scaling", ROOT / "tools" / "bench_compile_scaling.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("family,n", [("relu_chain", 500), ("lstm", 200), ("concat", 4000)])
def test_compile_time_is_linear(family, n):
    make = bench.FAMILIES[family]
    small = bench.compile_seconds(make(n), reps=2)
    large = bench.compile_seconds(make(4 * n), reps=2)
    assert large / small < 8, f"{family}: {n} -> {small:.3f}s, {4 * n} -> {large:.3f}s ({large / small:.1f}x)"


def test_fresh_names_are_unique_and_cheap():
    from protonet.ir import FreshNames

    taken = {"a", "a_2"}
    fresh = FreshNames(taken)
    got = []
    for _ in range(4):
        got.append(fresh("a"))
        taken.add(got[-1])
    assert got == ["a_1", "a_3", "a_4", "a_5"]  # a_2 was taken; numbering continues, never restarts
    assert fresh("b") == "b"
