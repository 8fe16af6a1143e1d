"""bnutils.store: the committed results store, the training modes, replays and re-keying.

The experiments here are small and synthetic, written as modules in a temporary folder
so that a test can change their code the way a contributor would (a docstring, an
early numerical change, a late one) and import them again.
"""

import dataclasses
import functools
import http.server
import importlib.util
import json
import re
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import bnutils
from bnutils import cache, config, data, store

EXPERIMENT = '''
"""{doc}"""
import time

import numpy as np

import bnutils

CALLS = []


def train(steps, lr, seed=0, log_every=10):
    """A one-weight model trained by SGD on noisy targets; the rate halves at mid-run."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    w, losses, logged, weights = 0.0, [], [], []
    for step in bnutils.progress(range(1, steps + 1), disable=True):
        rate = lr * ({late} if step > steps // 2 else 1.0)
        target = 1.0 + 0.1 * rng.standard_normal()
        losses.append((w - target) ** 2)
        w -= rate * {early} * (w - target)
        if step % log_every == 0 or step == steps:
            logged.append(step)
            weights.append(w)
    CALLS.append(len(losses))  # the steps it trained
    edges = [0, *logged]
    return {{
        "step": np.array(logged),
        "loss": np.array([np.mean(losses[a:b]) for a, b in zip(edges[:-1], edges[1:])]),
        "w": np.array(weights),
        "final": {{"w": w, "diverged": False}},
        "seconds": time.perf_counter() - start,
    }}
'''
BASE = {"doc": "Version 1.", "early": "2.0", "late": "0.5"}
CONFIG = {"steps": 400, "lr": 0.05}


@pytest.fixture
def book(tmp_path, monkeypatch):
    """A store and a local cache in ``tmp_path``, no mode set, no data loaded, no logs;
    ``book.experiment(**changes)`` (re)writes and imports the experiment module."""
    monkeypatch.setattr(data, "_LOADED", {})
    for env in (config.TRAIN_ENV, "BNBOOK_NOTEBOOK", "JPY_SESSION_NAME", store.READS_ENV,
                store.REPLAY_ENV, store.WHOLE_ENV, store.REPLAY_LOG_ENV, store.JOB_LOG_ENV,
                store.NO_REKEY_ENV):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv(store.URL_ENV, "")  # nothing is fetched unless a test publishes
    monkeypatch.setattr(store, "FETCHED", tmp_path / "fetched")
    results = tmp_path / "results"
    results.mkdir()
    store.write_manifest(results, {"notebooks": {}})
    monkeypatch.setenv(store.STORE_ENV, str(results))
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path / "cache"))
    path = tmp_path / "experiment_store_test.py"

    def experiment(**changes):
        path.write_text(EXPERIMENT.format(**{**BASE, **changes}))
        spec = importlib.util.spec_from_file_location("experiment_store_test", path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "experiment_store_test", module)
        spec.loader.exec_module(module)
        return module

    def logs(name):
        return store.read_log(tmp_path / f"{name}.jsonl")

    for env, name in ((store.READS_ENV, "reads"), (store.REPLAY_LOG_ENV, "replays"),
                      (store.JOB_LOG_ENV, "job")):
        monkeypatch.setenv(env, str(tmp_path / f"{name}.jsonl"))
    return type("Book", (), {"store": results, "cache": tmp_path / "cache",
                             "experiment": staticmethod(experiment),
                             "logs": staticmethod(logs)})


def _entries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != store.MANIFEST)


def _run(module, cfg=CONFIG, name="toy"):
    return cache.train_or_load(name, dict(cfg), module.train, verbose=False)


def _compute_into_store(book, monkeypatch, module, cfg=CONFIG, notebook="05_mnist"):
    monkeypatch.setenv(config.TRAIN_ENV, "store")
    monkeypatch.setenv("BNBOOK_NOTEBOOK", notebook)
    result = _run(module, cfg)
    monkeypatch.delenv(config.TRAIN_ENV)
    return result


# --- modes and lookup -----------------------------------------------------------------


def test_where_a_result_came_from_is_said_only_when_asked(book, monkeypatch, capsys):
    module = book.experiment()
    monkeypatch.setenv(config.TRAIN_ENV, "store")
    cache.train_or_load("toy", dict(CONFIG), module.train, verbose=True)
    assert "toy: computed into the store (results/toy-" in capsys.readouterr().out
    monkeypatch.delenv(config.TRAIN_ENV)  # a learner: told why nothing trained
    cache.train_or_load("toy", dict(CONFIG), module.train, verbose=True)
    out = capsys.readouterr().out
    assert "toy: the book's stored result (results/toy-" in out and "change a setting" in out
    cache.train_or_load("toy", dict(CONFIG), module.train, verbose=False)
    assert "toy:" not in capsys.readouterr().out


def test_store_mode_writes_an_entry_with_its_provenance(book, monkeypatch):
    module = book.experiment()
    first = _compute_into_store(book, monkeypatch, module)
    key = cache.cache_key("toy", CONFIG, module.train)
    assert _entries(book.store) == [f"{key}.json", f"{key}.npz"]
    doc = json.loads((book.store / f"{key}.json").read_text())
    prov = doc["provenance"]
    assert set(store.PROVENANCE) <= set(prov)
    assert prov["notebook"] == "05_mnist" and prov["python"] and prov["torch"]
    assert prov["seconds"] > 0 and prov["threads"] >= 1 and prov["date"].startswith("20")
    assert prov["device"] == "cpu" and prov["machine"]
    assert doc["name"] == "toy" and doc["config"] == CONFIG
    assert doc["code"] == cache.code_version(module.train)
    assert [r["event"] for r in book.logs("job")] == ["start", "done"]
    assert book.logs("reads")[0]["key"] == key
    assert not book.cache.exists()  # the store, not the local cache
    # served from now on, in every mode, without training
    for mode in ("allow", "forbid", "store"):
        monkeypatch.setenv(config.TRAIN_ENV, mode)
        again = _run(module)
        np.testing.assert_array_equal(again["loss"], first["loss"])
    assert module.CALLS == [400]


def test_the_store_comes_before_the_local_cache(book, monkeypatch):
    module = book.experiment()
    _run(module)  # allow: into the local cache
    assert module.CALLS == [400] and book.cache.exists() and not _entries(book.store)
    monkeypatch.setenv(config.TRAIN_ENV, "store")
    _run(module)  # the local cache does not count for the store: computed again
    assert module.CALLS == [400, 400]
    key = cache.cache_key("toy", CONFIG, module.train)
    doc = json.loads((book.store / f"{key}.json").read_text())
    doc["values"]["final"]["w"] = 123.0  # mark the stored one
    (book.store / f"{key}.json").write_text(json.dumps(doc))
    monkeypatch.delenv(config.TRAIN_ENV)
    assert _run(module)["final"]["w"] == 123.0


def test_a_learner_who_changes_a_setting_or_the_code_gets_a_fresh_run(book, monkeypatch):
    module = book.experiment()
    _compute_into_store(book, monkeypatch, module)
    stored = _run(module)
    changed = _run(module, {**CONFIG, "lr": 0.06})  # a setting
    assert module.CALLS == [400, 400]
    assert not np.array_equal(changed["w"], stored["w"])
    edited = book.experiment(doc="Version 1, with a comment.")  # the code, numbers alike
    _run(edited)
    assert edited.CALLS == [400]
    assert len(_entries(book.store)) == 2  # the learner's runs stay in the local cache
    assert len(list(book.cache.glob("*.json"))) == 2


def test_the_mode_is_read_at_each_call(book, monkeypatch):
    module = book.experiment()
    bound = [lambda: _run(module)]  # a closure made before the mode is set
    monkeypatch.setenv(config.TRAIN_ENV, "forbid")
    with pytest.raises(store.MissingResult):
        bound[0]()
    monkeypatch.setenv(config.TRAIN_ENV, "allow")
    bound[0]()
    monkeypatch.setenv(config.TRAIN_ENV, "sometimes")
    with pytest.raises(ValueError, match="BNBOOK_TRAIN='sometimes'"):
        bound[0]()


def test_forbid_names_the_run_and_the_command(book, monkeypatch):
    module = book.experiment()
    _run(module)  # in the local cache: a forbid-mode build does not read it
    monkeypatch.setenv(config.TRAIN_ENV, "forbid")
    monkeypatch.setenv("BNBOOK_NOTEBOOK", "06_cnn")
    key = cache.cache_key("toy", CONFIG, module.train)
    with pytest.raises(store.MissingResult) as err:
        _run(module)
    assert f"no run toy ({key})" in str(err.value)
    assert "    make results CHAPTER=06\n" in str(err.value)
    assert module.CALLS == [400]


def test_forbid_without_a_notebook_asks_the_manifest(book, monkeypatch):
    module = book.experiment()
    _compute_into_store(book, monkeypatch, module, notebook="07_what_bn_buys")
    key = cache.cache_key("toy", CONFIG, module.train)
    store.write_manifest(book.store, {"notebooks": {"07_what_bn_buys": [key]}})
    monkeypatch.delenv("BNBOOK_NOTEBOOK")
    monkeypatch.setenv(config.TRAIN_ENV, "forbid")
    with pytest.raises(store.MissingResult, match="make results CHAPTER=07"):
        _run(module, {**CONFIG, "lr": 0.07})  # the same experiment, a new setting
    with pytest.raises(store.MissingResult, match=r"make results\n"):
        _run(module, name="never-stored")


def test_the_notebook_comes_from_the_build_or_jupyterlab(monkeypatch):
    monkeypatch.delenv("BNBOOK_NOTEBOOK", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert config.notebook() is None
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/me/book/notebooks/05_mnist.ipynb")
    assert config.notebook() == "05_mnist"
    monkeypatch.setenv("BNBOOK_NOTEBOOK", "06_cnn")
    assert config.notebook() == "06_cnn"


def test_a_damaged_entry_stops_rather_than_retrains(book, monkeypatch):
    module = book.experiment()
    _compute_into_store(book, monkeypatch, module)
    (npz,) = book.store.glob("*.npz")
    npz.write_bytes(npz.read_bytes()[:-10])
    with pytest.raises(store.StoreError, match="cannot be read.*make results"):
        _run(module)


def test_without_a_store_everything_is_local(book, monkeypatch):
    monkeypatch.setenv(store.STORE_ENV, "")
    monkeypatch.setattr(store, "__file__", str(book.cache / "pkg" / "bnutils" / "store.py"))
    assert store.root() is None  # a pip install: no results/ beside the package
    module = book.experiment()
    _run(module)
    _run(module)
    assert module.CALLS == [400]
    monkeypatch.setenv(config.TRAIN_ENV, "store")
    with pytest.raises(store.StoreError, match="no results store"):
        _run(module, {**CONFIG, "lr": 0.07})


def test_the_checkout_store_is_found_by_its_manifest():
    assert store.root() is None or (store.root() / store.MANIFEST).exists()


# --- data -----------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """MNIST with no files and no mirror: loading falls back to the bundled subset."""
    spec = dataclasses.replace(data.DATASETS["mnist"], mirrors=("http://127.0.0.1:9/",))
    monkeypatch.setitem(data.DATASETS, "mnist", spec)
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    monkeypatch.setenv("BNUTILS_DATA", str(empty))


def _labels(split):
    _, y = data.load_mnist(split)
    return {"n": len(y), "step": np.arange(3)}


needs_mnist = pytest.mark.skipif(
    not any(data.default_root("mnist").glob("t10k-labels-idx1-ubyte*")),
    reason="no local MNIST files; set BNUTILS_DATA")


@needs_mnist
@pytest.mark.filterwarnings("ignore:could not download")
def test_a_full_data_entry_serves_a_build_without_the_data(book, monkeypatch, request):
    monkeypatch.setenv(config.TRAIN_ENV, "store")
    assert cache.train_or_load("labels", {"split": "test"}, _labels)["n"] == 10_000
    monkeypatch.setattr(data, "_LOADED", {})  # a new process, offline, training forbidden
    request.getfixturevalue("offline")
    monkeypatch.setenv(config.TRAIN_ENV, "forbid")
    assert cache.train_or_load("labels", {"split": "test"}, _labels)["n"] == 10_000
    assert data.fingerprint("test")["source"] == "subset"


@pytest.mark.filterwarnings("ignore:could not download")
def test_the_store_refuses_a_run_on_the_subset(book, monkeypatch, offline):
    monkeypatch.setenv(config.TRAIN_ENV, "store")
    with pytest.raises(store.StoreError, match="bundled subset of mnist.*BNUTILS_DATA"):
        cache.train_or_load("labels", {"split": "test"}, _labels)
    assert not _entries(book.store)


@needs_mnist
@pytest.mark.filterwarnings("ignore:could not download")
def test_a_learners_run_on_the_subset_never_passes_for_full_data(book, monkeypatch, request):
    monkeypatch.setenv(config.TRAIN_ENV, "store")
    cache.train_or_load("labels", {"split": "test"}, _labels)  # the book's, on full data
    monkeypatch.delenv(config.TRAIN_ENV)
    monkeypatch.setattr(data, "_LOADED", {})
    request.getfixturevalue("offline")
    data.load_mnist("test")  # the learner's notebook loads the subset
    cache.train_or_load("labels", {"split": "test"}, _labels)  # a stored run is served...
    ran = []

    def mine():
        ran.append(1)
        return {"n": 0}

    cache.train_or_load("mine", {}, mine)  # ...and a fresh one trains on the subset
    (meta,) = book.cache.glob("mine-*.json")
    used = json.loads(meta.read_text())["data"]
    assert {d["data"]["source"] for d in used} == {"subset"}


def test_an_inherited_claim_does_not_replace_a_subset_load(monkeypatch):
    monkeypatch.setattr(data, "_LOADED", {})
    args = {"split": "test", "root": None, "download": True, "subset": False,
            "dataset": "mnist"}
    subset = {"args": args, "data": {"source": "subset", "dataset": "mnist"}}
    full = {"args": args, "data": {"source": "full", "dataset": "mnist"}}
    data.remember([subset])
    data.remember([full])
    assert data.loaded() == [subset]
    monkeypatch.setattr(data, "_LOADED", {})
    data.remember([full])
    data.remember([subset])
    assert data.loaded() == [subset]


# --- replaying ------------------------------------------------------------------------


def test_step_limit_stops_every_progress_loop(monkeypatch):
    monkeypatch.setenv("BNBOOK_PROGRESS", "summary")
    with config.step_limit(3):
        assert list(bnutils.progress(range(10), disable=True)) == [0, 1, 2]
        assert list(bnutils.progress(range(10), desc="x")) == [0, 1, 2]
    assert len(list(bnutils.progress(range(10), disable=True))) == 10


def test_a_prefix_replay_trains_the_first_steps_with_the_same_schedule(book):
    module = book.experiment()
    stored = module.train(**CONFIG)
    report = store.replay(module.train, CONFIG, stored)
    assert report["ok"] and not report["whole"] and report["steps"] == store.REPLAY_STEPS
    assert module.CALLS == [400, store.REPLAY_STEPS]  # the same call, cut short
    assert report["series"] == 3  # step, loss, w; final and seconds are not compared
    assert report["max_diff"] == 0.0


@pytest.mark.parametrize("change, prefix_ok", [
    ({"doc": "Version 2: reworded."}, True),
    ({"early": "2.01"}, False),  # acts from the first step: the prefix sees it
    ({"late": "0.49"}, True),  # acts after mid-run: only a whole replay sees it
])
def test_what_prefix_and_whole_replays_see(book, change, prefix_ok):
    stored = book.experiment().train(**CONFIG)
    module = book.experiment(**change)
    prefix = store.replay(module.train, CONFIG, stored)
    whole = store.replay(module.train, CONFIG, stored, whole=True)
    assert prefix["ok"] is prefix_ok
    assert whole["ok"] is (change == {"doc": "Version 2: reworded."})
    if not whole["ok"]:
        assert any(p.startswith(("loss", "w")) for p in whole["problems"])


def test_the_tolerance_admits_another_cpu_and_nothing_more(book):
    module = book.experiment()
    stored = module.train(**CONFIG)
    other_cpu = {**stored, "loss": stored["loss"] * (1 + 2e-7), "w": stored["w"] + 2e-7}
    assert store.compare(module.train(**CONFIG), other_cpu, whole=True)["problems"] == []
    changed = {**stored, "w": stored["w"] + 1e-3}
    problems = store.compare(module.train(**CONFIG), changed, whole=True)["problems"]
    assert problems and problems[0].startswith("w: differs by up to 1.00e-03")


def test_compare_lines_up_series_and_refuses_what_it_cannot():
    stored = {"step": np.arange(1, 11), "acc": np.ones((3, 10)), "n": 3,
              "runs": [{"x": np.zeros(10)}, {"x": np.zeros(8)}], "probe_set": "test"}
    prefix = {"step": np.arange(1, 5), "acc": np.ones((3, 4)), "n": 4,
              "runs": [{"x": np.zeros(4)}, {"x": np.zeros(4)}], "probe_set": "val"}
    found = store.compare(prefix, stored, whole=False)
    assert found["problems"] == [] and found["series"] == 2  # step, acc
    assert store.compare(prefix, stored, whole=True)["problems"]
    cases = [
        ({**prefix, "acc": np.ones((2, 4))}, "acc: shape (2, 4), stored (3, 10)"),
        ({**prefix, "acc": np.ones((3, 12))}, "acc: shape (3, 12), stored (3, 10)"),
        ({k: v for k, v in prefix.items() if k != "n"}, "the result: keys differ (['n'])"),
        ({**prefix, "acc": np.full((3, 4), np.nan)}, "acc: NaN or infinite"),
        ({**prefix, "step": np.arange(2, 6)}, "step: differs"),
    ]
    for replayed, problem in cases:
        assert store.compare(replayed, stored, whole=False)["problems"][0].startswith(problem)
    timing = store.compare({"seconds": 1.0, "x": {"cpu_seconds": 2}},
                           {"seconds": 9.0, "x": {"cpu_seconds": 5}}, whole=True)
    assert timing == {"compared": 0, "series": 0, "trained": 0, "max_diff": 0.0,
                      "problems": []}


def test_a_run_that_logs_only_at_its_end_is_replayed_whole():
    calls = []

    def end_only(steps):
        calls.append(steps)
        n = sum(1 for _ in bnutils.progress(range(steps), disable=True))
        return {"acc": float(n), "step": np.array([steps])}

    stored = end_only(500)
    report = store.replay(end_only, {"steps": 500}, stored)
    assert report["ok"] and report["whole"] and report["compared"] == 2
    assert store.replay(end_only, {"steps": 500}, {**stored, "acc": 499.0})["problems"]


def test_a_build_skips_rather_than_recomputes_a_run_no_prefix_can_check():
    trained = []

    def end_only(steps):
        trained.append(sum(1 for _ in bnutils.progress(range(steps), disable=True)))
        return {"acc": float(trained[-1]), "step": np.array([steps])}

    stored = end_only(500)
    report = store.replay(end_only, {"steps": 500}, stored, fall_back=False)
    assert report["ok"] and not report["whole"] and report["skipped"]
    assert report["compared"] == 0 and trained == [500, store.REPLAY_STEPS]  # the prefix
    assert store.replay(end_only, {"steps": 500}, stored)["whole"]  # the default: whole
    wrong = store.replay(end_only, {"steps": 500}, {**stored, "acc": 1.0}, whole=True)
    assert not wrong["ok"]  # what the draw of whole replays checks


def test_a_build_logs_a_skipped_replay_and_never_trains_it_whole(book, monkeypatch):
    module = book.experiment()
    end_only = {**CONFIG, "log_every": CONFIG["steps"]}  # one log, at the end
    _compute_into_store(book, monkeypatch, module, end_only)
    monkeypatch.setenv(config.TRAIN_ENV, "forbid")
    monkeypatch.setenv(store.REPLAY_ENV, "a-commit")
    monkeypatch.setenv("BNBOOK_NOTEBOOK", "06_cnn")  # nothing of 06_cnn is listed
    _run(module, end_only)
    (record,) = book.logs("replays")
    assert record["ok"] and record["skipped"] and not record["whole"]
    assert module.CALLS == [400, store.REPLAY_STEPS]  # the prefix only


def _sparse(steps, per_step):
    """Logs every 250 steps; with ``per_step``, each step's loss as well."""
    trained, logged = [], [0]
    for step in bnutils.progress(range(1, steps + 1), disable=True):
        trained.append(step * 0.5)
        if step % 250 == 0:
            logged.append(step)
    out = {"step": np.array(logged), "w": np.array(logged) * 0.5}
    if per_step:
        out["loss"] = np.array(trained)
    return out


@pytest.mark.parametrize("per_step, steps", [(True, store.REPLAY_STEPS), (False, 250)])
def test_a_prefix_is_as_short_as_what_the_run_logs_allows(per_step, steps):
    config = {"steps": 1000, "per_step": per_step}
    report = store.replay(_sparse, config, _sparse(**config))
    assert report["ok"] and report["steps"] == steps and report["trained"] >= 1


def _sparse_only(steps):
    """Logs every 250 steps, and like train_stacked cannot assemble its logs when cut
    before the first one."""
    trained = [step for step in bnutils.progress(range(1, steps + 1), disable=True)]
    logged = [s for s in trained if s % 250 == 0]
    w = np.stack([np.float64(s) * 0.5 for s in logged])  # fails with nothing logged
    return {"step": np.array([0, *logged]), "w": np.concatenate([[0.0], w])}


def test_a_run_cut_before_its_first_log_is_replayed_up_to_it():
    config = {"steps": 1000}
    report = store.replay(_sparse_only, config, _sparse_only(**config))
    assert report["ok"] and report["steps"] == 250 and report["trained"] >= 1
    with pytest.raises(ValueError, match="at least one array"):  # a whole run still fails
        store._run(_sparse_only, {"steps": 0}, None, {})

    def broken(steps):
        raise RuntimeError("a bug, not a short prefix")

    with pytest.raises(RuntimeError, match="a bug"):  # a prefix at a log: not swallowed
        store.replay(broken, config, {"step": np.array([0, 100, 200]), "w": np.zeros(3)})
    with pytest.raises(RuntimeError, match="a bug"):  # nothing logged: the whole run says
        store.replay(broken, config, {"w": np.zeros(3)})

    def unlogged(steps):  # logs its series without a step axis, and only every 250 steps
        return {"w": _sparse_only(steps)["w"]}

    report = store.replay(unlogged, config, unlogged(**config))
    assert report["ok"] and report["whole"]


def _late_logs(steps):
    """Logs every 60 steps from step 60 on, never at step 0, one row per batch size as
    chapter 9 does (``curve_step``); cut by a replay, it trains on to its next log, as
    train_stacked does."""
    done = sum(1 for _ in bnutils.progress(range(steps), disable=True))
    logged = np.arange(60, min(steps, -(-done // 60) * 60) + 1, 60)
    return {"curve_step": np.stack([logged, logged]),
            "acc_curve": np.stack([logged * 0.5, logged * 0.25])[..., None],
            "acc": np.array([steps * 0.5, steps * 0.25])}


def test_a_run_whose_first_log_follows_training_is_checked_by_its_first_log():
    config = {"steps": 600}
    stored = _late_logs(**config)
    report = store.replay(_late_logs, config, stored, fall_back=False)
    assert report["ok"] and "skipped" not in report and not report["whole"]
    assert report["steps"] == store.REPLAY_STEPS and report["series"] == 2
    assert report["trained"] == 2  # curve_step and acc_curve, one log each: step 60
    wrong = {**stored, "acc_curve": stored["acc_curve"] + np.eye(10)[0][None, :, None]}
    assert store.replay(_late_logs, config, wrong, fall_back=False)["problems"]
    # the same single log at step 0 holds the state before training: nothing trained
    at_start = {"step": np.array([0]), "w": np.zeros(1)}
    both = {"step": np.array([0, 60]), "w": np.zeros(2)}
    assert store.compare(at_start, both, whole=False)["trained"] == 0
    assert store.compare({"step": np.array([60]), "w": np.zeros(1)},
                         {"step": np.array([60, 120]), "w": np.zeros(2)},
                         whole=False)["trained"] == 2


def test_prefix_steps_follow_the_logged_steps():
    n = store.REPLAY_STEPS
    logged = np.array([0, 0.6, 1.2, 1.8, 2.4, 3.0]) * n
    assert store.prefix_steps({"step": logged.astype(int)}) == int(1.2 * n)
    assert store.prefix_steps({"runs": {"step": np.array([10, 20]) * n}}) == 10 * n
    assert store.prefix_steps({"step": np.array([0, 2 * n])}) is None  # all of it
    assert store.prefix_steps({"acc": np.ones(3)}) == store.REPLAY_STEPS


def test_a_results_own_steps_choose_the_prefix_before_those_nested_in_it():
    n = store.REPLAY_STEPS
    nested = {"a": {"step": np.array([0, 20, 40]) * n}, "b": {"step": np.array([0, 30, 60]) * n}}
    assert store.prefix_steps(nested) == 20 * n  # the first nested, in order
    assert store.prefix_steps({**nested, "step": np.array([0, 5, 10]) * n}) == 5 * n
    # float or empty steps, and *_step arrays, do not choose it
    odd = {"step": np.array([0.0, 5.0 * n]), "b": {"step": np.array([], int)},
           "loss_step": np.array([0, 3, 6]) * n, "c": {"step": np.array([0, 7, 14]) * n}}
    assert store.prefix_steps(odd) == 7 * n


def test_a_step_0_anywhere_in_a_result_means_its_series_start_before_training():
    """A replay that logged once counts as trained only if no step array has a step 0,
    at its own level or nested before or after it."""
    replayed = {"step": np.array([60]), "acc": np.zeros(1)}
    stored = {"step": np.array([60, 120]), "acc": np.zeros(2)}
    assert store.compare(replayed, stored, whole=False)["trained"] == 2  # step, acc
    from_zero = {"step": np.array([0, 60]), "w": np.zeros(2)}
    for key in ("a", "z", "eval_step"):  # a nested result before/after, a *_step array
        extra = from_zero["step"] if key == "eval_step" else from_zero
        assert store.compare({key: extra, **replayed}, {key: extra, **stored},
                             whole=False)["trained"] == 0
        assert store.compare({**replayed, key: extra}, {**stored, key: extra},
                             whole=False)["trained"] == 0
    # two nested results, each with its own "step": the first one's 0 counts
    assert store.compare({"a": from_zero, "b": replayed}, {"a": from_zero, "b": stored},
                         whole=False)["trained"] == 0


def test_a_build_replays_what_it_serves(book, monkeypatch):
    module = book.experiment()
    _compute_into_store(book, monkeypatch, module)
    key = cache.cache_key("toy", CONFIG, module.train)
    store.write_manifest(book.store, {"notebooks": {"05_mnist": [key]}})
    monkeypatch.setenv(config.TRAIN_ENV, "forbid")
    monkeypatch.setenv(store.REPLAY_ENV, "a-commit")
    monkeypatch.setenv("BNBOOK_NOTEBOOK", "05_mnist")
    _run(module)
    _run(module)  # once per job
    (record,) = book.logs("replays")
    assert record["key"] == key and record["ok"] and record["whole"]  # the chapter's only one
    assert module.CALLS == [400, 400]
    monkeypatch.setenv("BNBOOK_NOTEBOOK", "06_cnn")  # nothing chosen there: the prefix
    monkeypatch.setenv(store.REPLAY_LOG_ENV, str(book.store.parent / "replays2.jsonl"))
    _run(module)
    (record,) = store.read_log(book.store.parent / "replays2.jsonl")
    assert not record["whole"] and record["steps"] == store.REPLAY_STEPS


def test_a_build_stops_on_a_stored_run_the_code_does_not_reproduce(book, monkeypatch):
    module = book.experiment()
    _compute_into_store(book, monkeypatch, module)
    key = cache.cache_key("toy", CONFIG, module.train)
    doc = json.loads((book.store / f"{key}.json").read_text())
    with np.load(book.store / f"{key}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["loss"][0] += 0.01
    np.savez_compressed(book.store / f"{key}.npz", **arrays)
    doc["npz_sha256"] = cache._file_sha256(book.store / f"{key}.npz")
    (book.store / f"{key}.json").write_text(json.dumps(doc))
    monkeypatch.setenv(config.TRAIN_ENV, "forbid")
    monkeypatch.setenv(store.REPLAY_ENV, "a-commit")
    with pytest.raises(store.ReplayMismatch, match=rf"toy .* first {store.REPLAY_STEPS} steps: loss: differs"):
        _run(module)


def test_whole_replays_rotate_over_the_entries_with_the_commit(tmp_path):
    keys = [f"run-{i}" for i in range(5)]
    store.write_manifest(tmp_path, {"notebooks": {"05_mnist": keys, "06_cnn": keys[:1]}})
    chosen = [store.chosen_whole("05_mnist", f"commit{i}", tmp_path) for i in range(60)]
    assert set(chosen) == set(keys)  # over commits, every one
    assert chosen == [store.chosen_whole("05_mnist", f"commit{i}", tmp_path)
                      for i in range(60)]  # and the same for the same commit
    assert store.chosen_whole("06_cnn", "x", tmp_path) == "run-0"
    assert store.chosen_whole("08_why", "x", tmp_path) is None
    for i, key in enumerate(keys):  # run-3 and run-4 take too long for CI
        seconds = store.WHOLE_MAX_SECONDS * (1 + (i >= 3))
        (tmp_path / f"{key}.json").write_text(json.dumps({"provenance": {"seconds": seconds}}))
    chosen = {store.chosen_whole("05_mnist", f"commit{i}", tmp_path) for i in range(60)}
    assert chosen == set(keys[:3])
    store.write_manifest(tmp_path, {"notebooks": {"05_mnist": keys[3:]}})
    assert {store.chosen_whole("05_mnist", f"c{i}", tmp_path) for i in range(20)} == {"run-3"}


# --- re-keying ------------------------------------------------------------------------


def test_a_change_that_leaves_the_numbers_alone_is_rekeyed(book, monkeypatch):
    old = book.experiment()
    _compute_into_store(book, monkeypatch, old)
    old_key = cache.cache_key("toy", CONFIG, old.train)
    new = book.experiment(doc="Version 2: the docstring says more.")
    new_key = cache.cache_key("toy", CONFIG, new.train)
    assert new_key != old_key
    monkeypatch.setenv(config.TRAIN_ENV, "forbid")
    with pytest.raises(store.MissingResult):
        _run(new)
    result = _compute_into_store(book, monkeypatch, new)
    assert new.CALLS == [store.REPLAY_STEPS]  # a replay of the first steps, no training
    assert sorted(_entries(book.store)) == sorted(
        f"{k}.{x}" for k in (old_key, new_key) for x in ("json", "npz"))
    prov = json.loads((book.store / f"{new_key}.json").read_text())["provenance"]
    (event,) = prov["rekeyed"]
    assert event["from"] == old_key and event["replay"]["steps"] == store.REPLAY_STEPS
    assert event["tolerance"] == store.TOLERANCE and event["replay"]["max_diff"] == 0.0
    assert prov["seconds"] > 0  # the original computation's
    monkeypatch.setenv(config.TRAIN_ENV, "forbid")
    np.testing.assert_array_equal(_run(new)["w"], result["w"])
    assert [r["event"] for r in book.logs("job")] == ["start", "done", "rekey", "read"]


def test_a_numerical_change_is_computed_not_rekeyed(book, monkeypatch, capsys):
    _compute_into_store(book, monkeypatch, book.experiment())
    new = book.experiment(early="2.01")
    _compute_into_store(book, monkeypatch, new)
    assert new.CALLS == [store.REPLAY_STEPS, 400]
    assert "does not replay equal" in capsys.readouterr().out
    key = cache.cache_key("toy", CONFIG, new.train)
    assert "rekeyed" not in json.loads((book.store / f"{key}.json").read_text())["provenance"]


def test_rekeying_can_be_refused_for_a_name(book, monkeypatch):
    _compute_into_store(book, monkeypatch, book.experiment())
    new = book.experiment(doc="Version 2.")
    monkeypatch.setenv(store.NO_REKEY_ENV, "other,toy")
    _compute_into_store(book, monkeypatch, new)
    assert new.CALLS == [400]


def test_only_the_same_name_and_configuration_is_a_candidate(book, monkeypatch):
    _compute_into_store(book, monkeypatch, book.experiment())
    new = book.experiment(doc="Version 2.")
    _compute_into_store(book, monkeypatch, new, cfg={**CONFIG, "lr": 0.06})
    assert new.CALLS == [400]


def test_nothing_is_stored_or_read_while_replaying(book, monkeypatch):
    inner_calls = []

    def inner(steps):
        inner_calls.append(steps)
        return {"x": np.arange(steps)}

    def outer(steps):
        return {"step": np.arange(1, 301), "x": cache.train_or_load(
            "inner", {"steps": steps}, inner, verbose=False)["x"]}

    monkeypatch.setenv(config.TRAIN_ENV, "store")
    stored = cache.train_or_load("outer", {"steps": 3}, outer, verbose=False)
    assert len(_entries(book.store)) == 4
    report = store.replay(outer, {"steps": 3}, stored, whole=True)
    assert report["ok"] and inner_calls == [3, 3] and len(_entries(book.store)) == 4



def test_a_replay_runs_with_the_entrys_numerics_or_not_at_all(book, monkeypatch):
    module = book.experiment()
    stored = module.train(**CONFIG)
    here = store.provenance(1.0)
    assert here["numerics"]["device"] == "cpu" and here["numerics"]["capability"]
    threads = []
    monkeypatch.setattr(module.np.random, "default_rng", _spy(
        module.np.random.default_rng, lambda: threads.append(torch.get_num_threads())))
    before = torch.get_num_threads()
    assert store.replay(module.train, CONFIG, stored, like={**here, "threads": 3})["ok"]
    assert threads == [3] and torch.get_num_threads() == before
    other = {**here, "numerics": {**here["numerics"], "capability": "AVX512"}}
    report = store.replay(module.train, CONFIG, stored, like=other)
    assert not report["ok"] and "replay it where they are the same" in report["problems"][0]
    assert threads == [3]  # refused before it ran


def _spy(fn, before):
    def spy(*args, **kwargs):
        before()
        return fn(*args, **kwargs)
    return spy


def test_the_books_training_loops_stop_where_a_replay_says():
    """Replays cut runs short through bnutils.progress: every trainer must loop over it."""
    from torch import nn

    from bnutils import train
    from bnutils.batched import StackedMLP, train_stacked

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 784, generator=g), torch.randint(0, 10, (120,), generator=g)
    with config.step_limit(7):
        logs = train_stacked(StackedMLP(2), x, y, 50, 0.1, batch_size=10, log_every=5,
                             progress=False)
        net = nn.Sequential(nn.Linear(784, 10))
        _, losses = train.train(net, torch.optim.SGD(net.parameters(), lr=0.1), x, y, 50,
                                batch_size=10, progress=False)
    # train_stacked trains on to its next log (tests/test_batched.py)
    assert np.isfinite(logs["losses"]).all() and list(logs["step"]) == [5, 10]
    assert len(losses) == 7


def _sizes_sweep(sizes, steps, lr):
    """Like chapter 9's sweeps: one stacked run per batch size, each with its own
    length and log grid, its per-step losses and no ``step`` axis."""
    from bnutils.batched import StackedMLP, accuracy, train_stacked

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 784, generator=g), torch.randint(0, 10, (300,), generator=g)
    acc, curves = [], {}
    for b, n in zip(sizes, steps, strict=True):
        log = train_stacked(StackedMLP(2, hidden=(16,), seeds=[0, 1]), x, y, n, lr,
                            batch_size=b, log_every=n // 4, progress=False,
                            callback=lambda step, m: {"acc": accuracy(m, x, y)})
        acc.append(log["acc"])
        curves[f"b{b}"] = log["losses"]
    return {"acc_curve": np.array(acc), "curves": curves}


def test_a_sweep_of_stacked_runs_is_checked_by_its_prefix_in_a_build():
    config = {"sizes": [4, 32], "steps": [400, 240], "lr": 0.1}
    stored = _sizes_sweep(**config)
    report = store.replay(_sizes_sweep, config, stored, fall_back=False)
    assert report["ok"] and not report.get("skipped") and not report["whole"]
    assert report["steps"] == store.REPLAY_STEPS and report["trained"] == 2  # the losses
    other = store.replay(_sizes_sweep, {**config, "lr": 0.11}, stored, fall_back=False)
    assert not other["ok"] and "curves/b4" in " ".join(other["problems"])


# --- what a page says about its runs --------------------------------------------------


def _entry(folder, key, notebook, **prov):
    base = {"commit": "a" * 40, "date": "2026-12-06T10:00:00+00:00", "seconds": 60.0,
            "threads": 1, "machine": "Some CPU", "device": "cpu"}
    doc = {"name": key.rsplit("-", 1)[0], "config": {},
           "provenance": {**base, "notebook": notebook, **prov}}
    (folder / f"{key}.json").write_text(json.dumps(doc))


def test_a_chapter_reports_the_cost_and_origin_of_its_stored_runs(tmp_path):
    _entry(tmp_path, "run-1", "06_cnn", seconds=120.0)
    _entry(tmp_path, "run-2", "06_cnn", seconds=60.0, threads=2,
           date="2026-12-07T01:00:00+00:00", commit="b" * 40,
           rekeyed=[{"from": "run-0"}])
    _entry(tmp_path, "run-3", "07_what_bn_buys", seconds=3600.0)
    _entry(tmp_path, "unread-1", "06_cnn", seconds=9999.0)  # no notebook reads it
    store.write_manifest(tmp_path, {"notebooks": {"06_cnn": ["run-1", "run-2"],
                                                  "07_what_bn_buys": ["run-3"]}})
    c = store.cost("06_cnn", tmp_path)
    assert c["runs"] == 2 and c["seconds"] == 180.0 and c["core_seconds"] == 240.0
    assert c["commits"] == ["aaaaaaa", "bbbbbbb"] and c["rekeyed"] == 1
    assert (c["first"], c["last"]) == ("2026-12-06", "2026-12-07")
    assert store.cost(None, tmp_path)["runs"] == 3
    text = store.cost_text("06_cnn", tmp_path)
    assert text.startswith("2 stored runs, computed by make results between "
                           "2026-12-06 and 2026-12-07 at commits aaaaaaa, bbbbbbb")
    assert "Some CPU" in text and "4 core-minutes in all" in text
    assert "1 of them carried over" in text
    assert "on 2026-12-06 at commit aaaaaaa," in store.cost_text("07_what_bn_buys", tmp_path)
    assert "60 core-minutes" in store.cost_text("07_what_bn_buys", tmp_path)
    assert store.cost("08_why_bn_works", tmp_path) is None
    assert "trained during this build" in store.cost_text("08_why_bn_works", tmp_path)


# --- a pip install (Colab) fetches the published store ---------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def published(book, monkeypatch):
    """The store of ``book`` published over HTTP, and a pip install: no store here."""
    handler = functools.partial(_Quiet, directory=str(book.store))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(store.URL_ENV, f"http://127.0.0.1:{server.server_port}/")

    def pip_install():
        monkeypatch.setattr(store, "root", lambda: None)

    yield pip_install
    server.shutdown()
    server.server_close()


def test_a_pip_install_fetches_a_stored_run_instead_of_training(book, monkeypatch, published):
    module = book.experiment()
    first = _compute_into_store(book, monkeypatch, module)
    published()
    again = _run(module)
    np.testing.assert_array_equal(again["loss"], first["loss"])
    assert module.CALLS == [400]  # fetched, not trained
    key = cache.cache_key("toy", CONFIG, module.train)
    assert sorted(p.name for p in store.FETCHED.iterdir()) == [f"{key}.json", f"{key}.npz"]
    monkeypatch.setenv(store.URL_ENV, "http://127.0.0.1:9/")  # offline now: kept locally
    np.testing.assert_array_equal(_run(module)["loss"], first["loss"])
    assert module.CALLS == [400]


def test_a_run_the_published_store_lacks_trains_here(book, monkeypatch, published):
    module = book.experiment()
    _compute_into_store(book, monkeypatch, module)
    published()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 404 is no problem: the run is not stored
        _run(module, {**CONFIG, "lr": 0.07})  # another setting: trained locally
    assert module.CALLS == [400, 400]
    assert not list(store.FETCHED.glob("*.json"))


def test_a_damaged_published_entry_is_refused_and_not_kept(book, monkeypatch, published):
    module = book.experiment()
    _compute_into_store(book, monkeypatch, module)
    npz = next(book.store.glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:-10] + bytes(10))
    published()
    with pytest.raises(store.StoreError, match="damaged entry"):
        _run(module)
    assert not list(store.FETCHED.iterdir())


def test_unreachable_or_switched_off_fetching_trains_here(book, monkeypatch, published):
    module = book.experiment()
    _compute_into_store(book, monkeypatch, module)
    published()
    monkeypatch.setenv(store.URL_ENV, "http://127.0.0.1:9/")  # nothing listens there
    with pytest.warns(UserWarning, match="cannot be reached"):
        _run(module)
    monkeypatch.setenv(store.URL_ENV, "")
    _run(module, {**CONFIG, "steps": 300})
    assert module.CALLS == [400, 400, 300]


def test_the_published_store_is_the_repository_of_the_book():
    text = (Path(__file__).resolve().parents[1] / "_config.yml").read_text()
    url = re.search(r"^repository:\s*\n\s+url:\s*(\S+)\n\s+branch:\s*(\S+)", text, re.M)
    repo = url.group(1).removeprefix("https://github.com/")
    assert store.URL == f"https://raw.githubusercontent.com/{repo}/{url.group(2)}/results/"
