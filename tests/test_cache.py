"""bnutils.cache: results are computed once, reloaded exactly, and re-run when keys change."""

import numpy as np
import pytest

from bnutils import cache


def _experiment(calls):
    def fn(steps, lr):
        calls.append((steps, lr))
        rng = np.random.default_rng(steps)
        return {"step": np.arange(steps), "acc": rng.random(steps), "best": 0.5,
                "runs": {"a": {"curve": rng.random(3), "diverged": False}}, "note": "ok"}
    return fn


def test_second_call_loads_identical_result(tmp_path):
    calls = []
    first = cache.train_or_load("exp", {"steps": 5, "lr": 0.1}, _experiment(calls), root=tmp_path)
    second = cache.train_or_load("exp", {"steps": 5, "lr": 0.1}, _experiment(calls), root=tmp_path)
    assert calls == [(5, 0.1)]
    np.testing.assert_array_equal(first["acc"], second["acc"])
    np.testing.assert_array_equal(second["runs"]["a"]["curve"], first["runs"]["a"]["curve"])
    assert second["runs"]["a"]["diverged"] is False and second["best"] == 0.5
    assert second["note"] == "ok"
    assert not list(tmp_path.glob("*.tmp*"))  # no half-written files left


def test_changed_config_or_code_reruns(tmp_path, monkeypatch):
    calls = []
    fn = _experiment(calls)
    cache.train_or_load("exp", {"steps": 5, "lr": 0.1}, fn, root=tmp_path)
    cache.train_or_load("exp", {"steps": 5, "lr": 0.2}, fn, root=tmp_path)
    monkeypatch.setattr("bnutils.__version__", "999.0")
    cache.train_or_load("exp", {"steps": 5, "lr": 0.1}, fn, root=tmp_path)
    assert calls == [(5, 0.1), (5, 0.2), (5, 0.1)]


def test_changed_experiment_code_reruns(tmp_path):
    calls = []

    def first(steps):
        calls.append("first")
        return {"x": np.zeros(steps)}

    def second(steps):  # same name and config, different code
        calls.append("second")
        return {"x": np.ones(steps)}

    cache.train_or_load("exp", {"steps": 2}, first, root=tmp_path)
    again = cache.train_or_load("exp", {"steps": 2}, second, root=tmp_path)
    assert calls == ["first", "second"] and again["x"].tolist() == [1.0, 1.0]


def test_results_are_stored_without_pickle(tmp_path):
    cache.train_or_load("exp", {"steps": 3, "lr": 0.1}, _experiment([]), root=tmp_path)
    (npz,) = tmp_path.glob("*.npz")
    with np.load(npz, allow_pickle=False) as z:  # would raise on object arrays
        assert set(z.files) == {"step", "acc", "runs/a/curve"}
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_unstorable_values_are_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot store"):
        cache.train_or_load("bad", {}, lambda: {"model": object()}, root=tmp_path)
    with pytest.raises(ValueError, match="may not contain '/'"):
        cache.train_or_load("bad", {}, lambda: {"a/b": np.zeros(2)}, root=tmp_path)


def test_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path / "r"))
    assert cache.results_root() == tmp_path / "r"
    cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment([]))
    assert len(list((tmp_path / "r").glob("exp-*.npz"))) == 1


def _other_helper(steps):
    return {"x": np.zeros(steps)}


def _helper(steps):
    return {"x": np.full(steps, 1.0)}


def _calls_helper(steps):
    return {k: v for k, v in _helper(steps).items()}  # called from a comprehension


def test_code_version_follows_partials_and_called_functions(monkeypatch):
    import functools
    import sys

    assert cache.code_version(functools.partial(_helper)) == cache.code_version(_helper)
    assert cache.code_version(_helper) != cache.code_version(_other_helper)
    before = cache.code_version(_calls_helper)
    monkeypatch.setattr(sys.modules[__name__], "_helper", _other_helper)
    assert cache.code_version(_calls_helper) != before  # the called function's code counts
