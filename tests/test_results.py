"""make results (bnutils/results.py): a notebook executed in store mode fills the store;
a change of code that leaves the numbers alone is re-keyed and verified whole; one that
changes them late in a run is caught by the whole replay and computed; the manifest
lists what the notebook reads and nothing else stays."""

import json
import os
import sys
import time

import nbformat
import pytest
from test_store import BASE, EXPERIMENT

from bnutils import results, store

NOTEBOOK = [
    "import sys\nsys.path.insert(0, {folder!r})\nimport experiment_results_test as toy\n"
    "from bnutils.cache import train_or_load",
    'a = train_or_load("toy", {{"steps": 400, "lr": 0.05}}, toy.train)',
    'b = train_or_load("toy", {{"steps": 200, "lr": 0.07}}, toy.train)',
    'c = train_or_load("toy", {{"steps": 400, "lr": 0.06}}, toy.train)',
]


@pytest.fixture
def job(tmp_path, monkeypatch):
    """A store, a notebook with two runs of a module experiment, and the job's logs."""
    folder, logs = tmp_path / "results", tmp_path / "logs"
    folder.mkdir()
    logs.mkdir()
    store.write_manifest(folder, {"notebooks": {}})
    monkeypatch.setenv(store.STORE_ENV, str(folder))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.format(folder=str(tmp_path))) for c in NOTEBOOK]
    path = tmp_path / "05_toy.ipynb"
    nbformat.write(nb, path)

    def code(**changes):
        (tmp_path / "experiment_results_test.py").write_text(
            EXPERIMENT.format(**{**BASE, **changes}))

    def run():
        return results.compute_notebook(path, folder, logs, {"mlp": 1e3, "cnn": 1e2},
                                        out=tmp_path / "executed")

    seen = []

    def events():
        """The job log's events since the last call."""
        new = [r["event"] for r in store.read_log(logs / "job.jsonl")][len(seen):]
        seen.extend(new)
        return new

    return type("Job", (), {"folder": folder, "logs": logs, "code": staticmethod(code),
                            "run": staticmethod(run), "events": staticmethod(events)})


def _provenance(folder, key):
    return json.loads((folder / f"{key}.json").read_text())["provenance"]


def _steps(folder, key):
    return json.loads((folder / f"{key}.json").read_text())["config"]["steps"]


def _rekeyed_then_computed(events):
    """Re-keyed, a whole replay read (up to the one that failed), then all computed."""
    assert events[:3] == ["rekey"] * 3 and events[-6:] == ["start", "done"] * 3
    assert events[3:-6] and set(events[3:-6]) == {"read"}


@pytest.mark.skipif(sys.platform != "linux", reason="kernels: tested on Linux")
def test_a_job_computes_rekeys_and_catches_late_changes(job):
    job.code()
    first = job.run()
    assert len(first) == 3 and job.events() == ["start", "done"] * 3
    assert store.read_manifest(job.folder)["notebooks"] == {"05_toy": sorted(first)}
    assert all(_provenance(job.folder, k)["notebook"] == "05_toy" for k in first)
    assert job.run() == first and job.events() == ["read"] * 3  # resumes

    job.code(doc="Version 2: the docstring explains more.")  # the numbers stay
    second = job.run()
    # re-keyed after a prefix replay, then read by the whole replay of one run per length
    assert second.isdisjoint(first) and job.events() == ["rekey"] * 3 + ["read"] * 3
    checks = {k: _provenance(job.folder, k)["rekeyed"][-1]["whole_check"] for k in second}
    assert len(set(checks.values())) == 2 and set(checks.values()) <= second
    assert all(_steps(job.folder, k) == _steps(job.folder, c) for k, c in checks.items())
    whole = store.read_log(job.logs / "verify-05_toy.jsonl")
    assert sorted(r["key"] for r in whole if r["whole"] and r["ok"]) == sorted(
        set(checks.values()))
    assert results.prune(job.folder) == sorted(first)
    assert set(store.read_entries(job.folder)) == second

    job.code(doc="Version 2: the docstring explains more.", late="0.49")  # after mid-run
    third = job.run()
    _rekeyed_then_computed(job.events())
    for key in third:
        assert "rekeyed" not in _provenance(job.folder, key)  # computed, not re-keyed
    assert results.prune(job.folder) == sorted(second)


@pytest.mark.skipif(sys.platform != "linux", reason="kernels: tested on Linux")
def test_a_change_after_a_short_runs_end_meets_a_whole_replay_of_the_long_runs(job):
    job.code()
    first = job.run()
    job.events()
    # from step 251 on: the 400-step runs change, the 200-step run (the cheapest) cannot
    job.code(late="(0.5 if step <= 250 else 0.49)")
    second = job.run()
    _rekeyed_then_computed(job.events())
    assert second.isdisjoint(first)
    for key in second:
        assert "rekeyed" not in _provenance(job.folder, key)  # computed, not re-keyed


def test_estimates_count_network_steps():
    assert results.estimate("figure1-runs", {"lrs": [0.1, 1.0], "init_stds": [0.05],
                                             "seeds": [0, 1, 2], "steps": 1000}) == (
        "mlp", 2 * 2 * 3 * 1000)
    assert results.estimate("figure3-bn", {"steps": 4000, "seed": 1}) == ("cnn", 4000)
    assert results.estimate("cnn-variant", {"steps": 10, "seeds": [0]}) == ("cnn", 10)
    assert results.estimate("ch01_whitening_cost", {"dims": [16, 32]}) is None
    per_size = {"batch_sizes": [2, 4], "steps": [400, 200], "seeds": [0, 1, 2]}
    assert results.estimate("ch09-epochs-bn-v3", per_size) == ("mlp", 1800)
    assert results.estimate("x", {**per_size, "steps": [400]}) is None  # not one per size


def test_the_plan_scales_recorded_times_by_the_rates(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    entry = {"name": "figure1-runs", "config": {"lrs": [1.0], "seeds": [0], "steps": 500},
             "provenance": {"seconds": 100.0, "rates": {"mlp": 200.0}}}
    (folder / "figure1-runs-0123456789abcdef.json").write_text(json.dumps(entry))
    store.write_manifest(folder, {"notebooks": {"05_mnist": [
        "figure1-runs-0123456789abcdef", "figure1-runs-fedcba9876543210"]}})
    rows = results.plan(["05_mnist", "06_cnn"], folder, {"mlp": 400.0, "cnn": 10.0})
    assert [(r["stored"], r["seconds"]) for r in rows] == [(True, 50.0), (False, None)]


def test_progress_follows_the_job_log(tmp_path):
    log = tmp_path / "job.jsonl"
    rows = [{"notebook": "05_x", "key": "a-1", "name": "a", "config": {"steps": 1},
             "seconds": 100.0},
            {"notebook": "05_x", "key": "b-1", "name": "b", "config": {"steps": 2},
             "seconds": 300.0}]
    progress = results.Progress(log, rows, {"mlp": 1.0, "cnn": 1.0}, workers=2)
    assert progress.state()["total"] == 400.0
    lines = [{"event": "read", "key": "a-1", "name": "a"},  # still stored: costs nothing
             {"event": "start", "key": "b-2", "name": "b", "config": {"steps": 2}},
             {"event": "start", "key": "c-1", "name": "c", "config": {"steps": 50}},
             {"event": "done", "key": "b-2", "name": "b", "seconds": 250.0}]
    log.write_text("".join(json.dumps({**r, "time": 0.0}) + "\n" for r in lines))
    state = progress.state()
    assert state["total"] == 350.0  # b as planned, c estimated at its start (50 / 1)
    assert state["finished"] == 1 and state["running"] == 1
    assert "runs: 1 computed, 1 running" in progress.line()
    rows.append({"notebook": "06_y", "key": "d-1", "name": "d", "config": {"steps": 3},
                 "seconds": 1000.0})
    progress = results.Progress(log, rows, {"mlp": 1.0, "cnn": 1.0}, workers=2)
    progress.settle("05_x")  # done: what 05_x did not ask for costs nothing
    assert progress.state()["total"] == 1350.0
    progress.settle("06_y")
    assert progress.state()["total"] == 350.0


def test_a_changed_setting_replaces_the_planned_runs_it_retrains(tmp_path):
    """Twice the steps: each new run costs its old twin's time twice, the twin nothing."""
    log = tmp_path / "job.jsonl"

    def row(seed, steps, seconds):
        config = {"seed": seed, "steps": steps}
        return {"notebook": "06_x", "key": f"figure3-bn-{seed}{steps}",
                "name": "figure3-bn", "config": config, "seconds": seconds}

    rows = [row(0, 400, 10.0), row(0, 16000, 300.0), row(1, 16000, 400.0),
            row(2, 16000, 500.0)]
    progress = results.Progress(log, rows, {"mlp": 1.0, "cnn": 1000.0}, workers=2)
    assert progress.state()["total"] == 1210.0
    lines = [{"event": "start", "key": f"k{seed}", "name": "figure3-bn",
              "config": {"seed": seed, "steps": 32000}} for seed in (1, 0)]
    lines.append({"event": "start", "key": "k2", "name": "figure3-bn",
                  "config": {"seed": 2, "steps": 16000}})  # as planned: no twin
    log.write_text("".join(json.dumps({**r, "time": time.time()}) + "\n" for r in lines))
    # of the two seed-0 runs, the nearer in steps is the twin; the 400-step run stays
    assert progress.state()["total"] == 10.0 + 800.0 + 600.0 + 500.0
    # a planned run the job started is nobody's twin: a second seed-2 run, at 32,000
    # steps, takes the only untouched one left
    lines.append({"event": "start", "key": "k3", "name": "figure3-bn",
                  "config": {"seed": 2, "steps": 32000}})
    log.write_text("".join(json.dumps({**r, "time": time.time()}) + "\n" for r in lines))
    assert progress.state()["total"] == 800.0 + 600.0 + 500.0 + 10.0 * 80
    progress.settle("06_x")
    assert progress.state()["total"] == 2700.0


def test_progress_counts_nothing_for_runs_another_job_wrote(tmp_path):
    """Two make results jobs over one store: what the other one computed is not left."""
    folder, log = tmp_path / "results", tmp_path / "job.jsonl"
    folder.mkdir()
    rows = [{"notebook": "09_x", "key": f"{n}-1", "name": n, "config": {"steps": s},
             "seconds": 100.0 * s} for n, s in (("a", 1), ("b", 2), ("c", 3))]
    old = folder / "c-1.json"  # an entry from before this job: still to compute
    old.write_text(json.dumps({"name": "c", "config": {"steps": 3}}))
    os.utime(old, (0, 0))
    progress = results.Progress(log, rows, {"mlp": 1.0, "cnn": 1.0}, workers=2,
                                folder=folder)
    assert progress.state()["total"] == 600.0
    (folder / "b-2.json").write_text(json.dumps({"name": "b", "config": {"steps": 2}}))
    (folder / "manifest.json").write_text(json.dumps({"notebooks": {}}))
    (folder / "x-1.json").write_text("{not json yet")  # being written
    assert progress.state()["total"] == 400.0
    # a run this job started and wrote itself is still its own
    log.write_text(json.dumps({"event": "start", "key": "a-2", "name": "a",
                               "config": {"steps": 1}, "time": time.time()}) + "\n")
    (folder / "a-2.json").write_text(json.dumps({"name": "a", "config": {"steps": 1}}))
    assert progress.state()["total"] == 400.0


def test_chapters_are_picked_by_number(tmp_path):
    for name in ("00_setup", "05_mnist", "06_cnn"):
        (tmp_path / f"{name}.ipynb").write_text("{}")
    assert [p.stem for p in results.chapter_notebooks("6", tmp_path)] == ["06_cnn"]
    assert len(results.chapter_notebooks(None, tmp_path)) == 3
    with pytest.raises(SystemExit, match="no notebook for CHAPTER=07"):
        results.chapter_notebooks("07", tmp_path)


@pytest.mark.filterwarnings("ignore:could not download")
def test_make_results_stops_at_once_without_the_full_data(tmp_path, monkeypatch):
    import dataclasses

    from bnutils import data

    for name in ("mnist", "fashion-mnist"):
        spec = dataclasses.replace(data.DATASETS[name], mirrors=("http://127.0.0.1:9/",))
        monkeypatch.setitem(data.DATASETS, name, spec)
        monkeypatch.setenv(spec.env, str(tmp_path / "none"))
    with pytest.raises(SystemExit, match="full mnist data, not the bundled subset"):
        results.check_data()
