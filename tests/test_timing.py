"""bnutils.timing: interleaved timing and the benchmarks' report lines (no timed asserts)."""

import numpy as np
import pytest

from bnutils import timing


def test_interleaved_times_calls_each_function_in_turn():
    calls = []
    t = timing.interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                 repeats=3, inner=2, warmup=1)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert set(t) == {"a", "b"} and t["a"].shape == (3,) and (t["a"] >= 0).all()


def test_ratio_uses_min_and_median():
    r = timing.ratio(np.array([4.0, 6.0, 100.0]), np.array([2.0, 1.0, 3.0]))
    assert r == {"min": 4.0, "median": 3.0}


def test_compared_line_gives_both_times_in_ms_and_their_ratio():
    line = timing.compared({"slow": np.array([0.004, 0.006, 0.1]),
                            "fast": np.array([0.002, 0.001, 0.003])})
    slow, fast, ratio = line.split(" | ")
    assert slow.split() == ["slow", "4.000", "ms", "(med", "6.000)"]
    assert fast.split() == ["fast", "1.000", "ms", "(med", "2.000)"]
    assert ratio.split() == ["ratio", "min", "4.00x", "median", "3.00x"]
    with pytest.raises(ValueError, match="two candidates"):
        timing.compared({"a": np.ones(2)})
