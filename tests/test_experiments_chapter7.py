"""Chapter 7's experiments: the regularization MLP, the deep MLP and learning rates."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from bnutils.batched import StackedMLP
from bnutils.experiments import deep_mlp, regularization
from bnutils.experiments import learning_rates as lrs
from bnutils.experiments.figure3 import config_settings
from bnutils.experiments.regularization import RegularizedMLP
from bnutils.norms import GhostBatchNorm


def _pair(**kwargs):
    args = dict(k=3, in_features=12, hidden=(8, 6), out_features=4, activation="relu",
                norm=True, init_std=0.3, seeds=[0, 1, 2])
    return StackedMLP(**args), RegularizedMLP(**args, **kwargs)


def test_without_dropout_or_ghosts_it_is_the_stacked_mlp():
    plain, ours = _pair()
    x = torch.randn(20, 12)
    for mode in (True, False):
        plain.train(mode), ours.train(mode)
        torch.testing.assert_close(ours(x), plain(x))
    for a, b in zip(ours.buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(a, b)


def test_ghost_batches_match_ghost_batch_norm_net_by_net():
    _, ours = _pair(virtual_batch=[4, None, 10])
    x = torch.randn(20, 12)
    out = ours(x)
    for i, v in enumerate([4, 20, 10]):
        net = ours._make_net(i)  # the same initial weights as net i
        layers = []
        for m in net:  # BatchNorm1d -> GhostBatchNorm over chunks of v examples
            layers.append(GhostBatchNorm(m.num_features, v) if isinstance(m, nn.BatchNorm1d)
                          else m)
        ghost = nn.Sequential(*layers)
        torch.testing.assert_close(out[i], ghost(x), rtol=1e-5, atol=1e-5)
        norms = [m for m in ghost if isinstance(m, GhostBatchNorm)]
        for j, g in enumerate(norms):
            mean, var = ours._running(j)
            torch.testing.assert_close(mean[i], g.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(var[i], g.running_var, rtol=1e-5, atol=1e-6)


def test_smaller_virtual_batches_make_an_example_depend_less_on_the_rest():
    _, ours = _pair(virtual_batch=[4, None, 10])
    x = torch.randn(20, 12)
    y = x.clone()
    y[10:] += 5.0  # change the second half of the batch only
    a, b = ours(x), ours(y)
    assert torch.equal(a[0, :8], b[0, :8])  # chunks of 4: the first 8 are untouched
    assert torch.equal(a[2, :10], b[2, :10])  # chunks of 10
    assert not torch.allclose(a[1, :10], b[1, :10])  # one batch: all of it moves


def test_dropout_keeps_the_mean_and_is_off_in_eval():
    torch.manual_seed(0)
    net = RegularizedMLP(2, 1, (2000,), 1, "relu", norm=False, init_std=0.0, seeds=[0, 1],
                         dropout=[0.0, 0.5])
    with torch.no_grad():  # every hidden unit outputs 1, the output is their mean
        net.weights[0].fill_(1.0)
        net.weights[1].fill_(1 / 2000)
        net.biases[1].zero_()
    x = torch.ones(3, 1)
    out = net(x)[:, :, 0]
    assert torch.allclose(out[0], torch.ones(3))
    assert not torch.allclose(out[1], torch.ones(3))
    assert out[1].sub(1).abs().max() < 0.1  # inverted dropout: the mean is kept
    net.eval()
    assert torch.allclose(net(x), torch.ones(2, 3, 1))


def test_regularized_mlp_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="needs norm=True"):
        RegularizedMLP(2, 4, (3,), 2, norm=False, virtual_batch=[2, None])
    with pytest.raises(ValueError, match="dropout"):
        RegularizedMLP(2, 4, (3,), 2, dropout=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        RegularizedMLP(2, 4, (3,), 2, norm=True, virtual_batch=[1, None])
    net = RegularizedMLP(2, 4, (3,), 2, norm=True, virtual_batch=[3, None])
    with pytest.raises(ValueError, match="multiple"):
        net(torch.randn(10, 4))


def test_window_of_trainable_scales():
    scales = np.array([0.01, 0.1, 1.0, 10.0])
    acc = np.array([[0.1, 0.1], [0.9, 0.8], [0.95, 0.97], [0.2, 0.9]])  # (scales, seeds)
    assert deep_mlp.window(acc, scales, 0.5) == (0.1, 10.0, 100.0)
    assert deep_mlp.window(acc, scales, 0.9) == (1.0, 1.0, 1.0)
    lo, hi, ratio = deep_mlp.window(acc, scales, 0.99)
    assert np.isnan(lo) and np.isnan(hi) and ratio == 0.0


def test_run_scales_records_what_it_promises(monkeypatch, tmp_path):
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    r = deep_mlp.run_scales(4, True, [0.1, 1.0], [0, 1], lr=[0.5, 0.1], depth=3, width=8,
                            evals=2, detail=(1,), n_probe=50, n_val=100, n_test=100)
    assert r["acc"].shape == r["val_acc"].shape == r["diverged"].shape == (2, 2)
    assert r["step"].tolist() == [0, 2, 4]
    assert r["saturated"].shape == (3, 2, 2, 3) and r["val_curve"].shape == (3, 2, 2)
    assert r["start"]["act_std"].shape == r["end"]["update_ratio"].shape == (1, 2, 3)
    # BN makes each layer's input N(0, 1) at the start, whatever the scale: sigmoid
    # outputs near 1/2, few saturated
    assert np.allclose(r["start"]["act_mean"], 0.5, atol=0.05)
    assert np.all(r["saturated"][0] < 0.05)


def test_without_bn_a_large_scale_saturates_and_a_small_one_does_not():
    r = deep_mlp.run_scales(1, False, [0.01, 3.0], [0], lr=0.1, depth=3, width=16,
                            evals=1, n_probe=200, n_val=200, n_test=100)
    small, large = r["saturated"][0, :, 0]  # at the start, (depth,) each
    assert large[0] > 0.9 and np.all(large > 0.5) and np.all(small == 0.0)


def test_regularization_returns_train_test_and_gap(monkeypatch, tmp_path):
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    out = regularization.regularization(4, seeds=(0, 1), lr={"none": 0.1, "bn": 0.1},
                                        virtual_batches=(6,), n_train=120, hidden=(8,),
                                        batch_size=12, evals=2, n_val=50, n_test=50)
    assert list(out) == ["none", "none_dropout", "bn", "bn_dropout", "ghost_6"]
    for r in out.values():
        assert r["train_acc"].shape == r["acc"].shape == r["gap"].shape == (2,)
        np.testing.assert_allclose(r["gap"], r["train_acc"] - r["acc"])
        assert r["train_curve"].shape == (2, 2) and r["step"].tolist() == [2, 4]
    assert not np.array_equal(out["bn"]["train_curve"], out["ghost_6"]["train_curve"])


def test_regularization_takes_a_rate_and_a_dropout_per_network(monkeypatch, tmp_path):
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    small = {"n_train": 120, "hidden": (8,), "batch_size": 12, "evals": 2, "n_val": 50,
             "n_test": 50}
    one = regularization.regularization(4, (0,), {"none": 0.1, "bn": 0.1}, nets=("none",),
                                        dropout={"none": 0.5, "bn": 0.5}, **small)
    other = regularization.regularization(4, (0,), {"none": 0.1, "none_dropout": 0.3,
                                                    "bn": 0.1}, nets=("none",),
                                          dropout={"none": 0.2, "bn": 0.5}, **small)
    np.testing.assert_array_equal(one["none"]["acc"], other["none"]["acc"])  # unchanged
    assert not np.array_equal(one["none_dropout"]["train_curve"],
                              other["none_dropout"]["train_curve"])


def test_tune_searches_dropout_and_rate_and_says_if_the_best_is_inside(monkeypatch,
                                                                       tmp_path):
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    t = regularization.tune(4, False, (0.03, 0.1, 0.3), dropouts=(0.0, 0.2, 0.5),
                            n_train=120, hidden=(8,), batch_size=12, evals=2, n_val=50,
                            n_test=50)
    assert t["val_acc"].shape == (3, 3) and t["dropout"].tolist() == [0.0, 0.2, 0.5]
    grid = {"lr": np.array([0.1, 0.3, 1.0]), "dropout": np.array([0.0, 0.1, 0.2, 0.5])}
    peak = np.zeros((4, 3))
    peak[2, 1], peak[0, 2] = 1.0, 0.5
    assert regularization.best({**grid, "val_acc": peak}, dropout=True) == (0.2, 0.3, True)
    assert regularization.best({**grid, "val_acc": peak}, dropout=False) == (0.0, 1.0, False)
    peak[3, 1] = 2.0  # the largest dropout rate: the grid must grow
    assert regularization.best({**grid, "val_acc": peak}, dropout=True) == (0.5, 0.3, False)
    peak[1, 1] = 3.0  # the smallest positive rate is bracketed by 0
    assert regularization.best({**grid, "val_acc": peak}, dropout=True) == (0.1, 0.3, True)


def _run(val, acc=None, diverged=(False, False, False)):
    val = np.asarray(val, dtype=float)
    return {"val_acc": val, "acc": val if acc is None else np.asarray(acc, dtype=float),
            "diverged": list(diverged)}


def test_stable_needs_every_seed_above_the_threshold_and_none_diverged():
    assert lrs.stable(_run([[0.2, 0.8], [0.3, 0.7], [0.1, 0.6]]), 0.5)
    assert not lrs.stable(_run([[0.2, 0.8], [0.3, 0.4], [0.1, 0.6]]), 0.5)
    assert not lrs.stable(_run([[0.2, 0.8], [0.3, 0.7], [0.1, 0.6]], diverged=(0, 1, 0)), 0.5)
    assert not lrs.stable(_run(np.zeros((3, 0))), 0.5)  # diverged before any evaluation


def test_largest_stable_is_the_top_of_the_unbroken_run_from_the_bottom():
    ok, bad = _run([[0.9], [0.9], [0.9]]), _run([[0.9], [0.1], [0.9]])
    assert lrs.largest_stable({0.5: ok, 1: ok, 2: bad, 5: ok}, 0.5) == 1  # 5 comes too late
    assert lrs.largest_stable({0.5: bad, 1: ok}, 0.5) is None
    assert lrs.largest_stable({1: ok, 10: ok}, 0.5) == 10


def test_gains_are_paired_differences_and_shares_only_of_a_clear_total():
    runs = {"bn": _run([[0.8], [0.81], [0.79]]), "rate": _run([[0.83], [0.82], [0.81]]),
            "all": _run([[0.84], [0.85], [0.83]]),
            "broken": _run([[0.9], [0.9], [0.9]], diverged=(True, True, True))}
    g = lrs.gains(runs)
    assert g["bn"].gain == 0 and g["bn"].paired.level
    assert g["rate"].gain == pytest.approx(0.02) and g["rate"].share == pytest.approx(0.5)
    assert g["all"].share == pytest.approx(1.0) and g["all"].paired.above
    assert g["broken"].gain == pytest.approx(0.1 - 0.8)  # a diverged seed counts as chance
    assert g["broken"].paired.below


def test_no_share_of_a_total_gain_that_is_not_clear():
    """Issue 25: "no dropout (31% of the gain)" of a +0.72-point gain with sd 1.3."""
    runs = {"bn": _run([[0.80], [0.81], [0.79]]), "dropout": _run([[0.81], [0.80], [0.80]]),
            "all": _run([[0.82], [0.80], [0.80]])}
    g = lrs.gains(runs)
    assert g["all"].paired.level
    assert g["dropout"].share is None and g["all"].share is None


def test_ablation_and_x30_settings_change_one_thing_each():
    ab = lrs.ablation_settings()
    base = ab["bn"]
    for name in ("rate", "decay", "dropout", "weight_decay"):
        assert sum(ab[name][k] != base[k] for k in base) == 1, name
    assert ab["all"] == config_settings("bn_x5")
    fixes = lrs.x30_settings(50)
    x30 = fixes.pop("bn_x30")
    assert x30 == config_settings("bn_x30")
    for name, spec in fixes.items():
        assert {k: v for k, v in spec.items() if k in x30} == x30, name
        assert len(set(spec) - set(x30)) in (1, 2), name


def _touch(path, text):
    with open(path, "w") as f:
        f.write(text)


def _fail():
    raise RuntimeError("a run failed")


def test_prefill_runs_every_call_in_workers_and_in_process(tmp_path):
    from bnutils.experiments.parallel import prefill

    for workers in (1, 2):
        calls = [(_touch, (tmp_path / f"{workers}-{i}", str(i)), {}) for i in range(3)]
        assert prefill(calls, workers=workers) == 3
        assert [(tmp_path / f"{workers}-{i}").read_text() for i in range(3)] == ["0", "1", "2"]
    with pytest.raises(RuntimeError, match="a run failed"):
        prefill([(_fail, (), {}), (_touch, (tmp_path / "x", ""), {})], workers=2)
    with pytest.raises(ValueError, match="workers"):
        prefill([], workers=0)


def _pid_and_mark(path):
    with open(path, "w") as f:
        f.write(f"{os.getpid()} {os.environ.get('BNBOOK_TEST_MARK')}")


def test_prefill_keeps_its_workers_and_gives_them_the_callers_environment(
        tmp_path, monkeypatch):
    from bnutils.experiments import parallel

    for mark in ("a", "b"):  # the second call reuses the workers of the first
        monkeypatch.setenv("BNBOOK_TEST_MARK", mark)
        parallel.prefill([(_pid_and_mark, (tmp_path / f"{mark}{i}",), {})
                          for i in range(4)], workers=2)
    pool = parallel._POOLS[2]
    seen = {p.name: p.read_text().split() for p in tmp_path.iterdir()}
    assert len(seen) == 8
    assert all(mark == name[0] for name, (_, mark) in seen.items())
    assert {int(pid) for pid, _ in seen.values()} <= set(pool._processes)
    parallel.shutdown()
    assert parallel._POOLS == {} and pool._processes is None


def _slow_touch(path):
    import time

    time.sleep(0.2)
    _touch(path, "")


def test_a_failed_call_cancels_the_calls_not_started(tmp_path):
    """The workers outlive a failed prefill: the calls queued behind the failure must
    not keep them busy (or fill the cache) after the error reached the notebook."""
    import time

    from bnutils.experiments import parallel

    calls = [(_fail, (), {})] + [(_slow_touch, (tmp_path / str(i),), {}) for i in range(20)]
    with pytest.raises(RuntimeError, match="a run failed"):
        parallel.prefill(calls, workers=2)
    time.sleep(2.0)  # what was started has finished by now (20 calls would take 2 s)
    assert len(list(tmp_path.iterdir())) < 10
    assert parallel.prefill([(_touch, (tmp_path / "after", "ok"), {})] * 2, workers=2) == 2
    assert (tmp_path / "after").read_text() == "ok"


def test_prefilled_runs_are_the_notebooks_cache_hits(tmp_path, monkeypatch):
    """Workers store each run under the key the notebook's own call looks up."""
    from bnutils.experiments.figure3 import figure3
    from bnutils.experiments.parallel import prefill

    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    tiny = {"dataset": "fashion-mnist", "evals": 1, "n_val": 50, "n_test": 50,
            "n_probe": 20}
    calls = [(figure3, (4,), {"seeds": (s,), "configs": ["bn"], **tiny})
             for s in (0, 1)]
    prefill(calls, workers=2)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 4  # two runs, .json and .npz each
    both = figure3(4, seeds=(0, 1), configs=["bn"], **tiny)["bn"]
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # nothing trained again
    assert both["acc"].shape == (2, 2)


def test_runs_in_workers_are_the_calls_with_progress(tmp_path, monkeypatch):
    """Chapters 5 and 7 prefill (one network per worker, no bars there); their own
    calls, with progress bars and both networks, must only load."""
    import importlib

    from bnutils.experiments.parallel import prefill

    figure1 = importlib.import_module("bnutils.experiments.figure1")  # the module
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    deep = {"depth": 2, "width": 8, "n_probe": 20, "n_val": 50, "n_test": 50}
    rates = {"none": 0.1, "bn": 0.5}
    reg = {"n_train": 60, "hidden": (8,), "batch_size": 12, "evals": 1, "n_val": 50,
           "n_test": 50}
    fig1 = {"steps": 2, "n_val": 50, "n_test": 50, "log_every": 1, "pct_examples": 20}
    calls = [(deep_mlp.tune_lr, (2, norm, (0.1, 1.0), 0.5), {**deep})
             for norm in (False, True)]
    calls += [(deep_mlp.trainability, (2, (0.1, 1.0), (0,), rates),
               {"nets": (net,), **deep}) for net in rates]
    calls += [(regularization.tune, (2, norm, (0.1, 1.0), (0.0, 0.2)), {**reg})
              for norm in (False, True)]
    reg_rates = {**rates, "none_dropout": 1.0, "bn_dropout": 0.1}
    dropout = {"none": 0.2, "bn": 0.1}
    calls += [(regularization.regularization, (2, (0,), reg_rates),
               {"virtual_batches": (6,), "dropout": dropout, "nets": (net,), **reg})
              for net in regularization.STACKS]
    calls += [(figure1.figure1_runs, ((0.1,), (0.05,), (0,)), {**fig1})]
    prefill(calls, workers=1)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 * len(calls)  # one .json and one .npz per run
    for norm in (False, True):
        deep_mlp.tune_lr(2, norm, (0.1, 1.0), 0.5, **deep)
        regularization.tune(2, norm, (0.1, 1.0), (0.0, 0.2), **reg)
    assert list(deep_mlp.trainability(2, (0.1, 1.0), (0,), rates, **deep)) == ["none", "bn"]
    out = regularization.regularization(2, (0,), reg_rates, virtual_batches=(6,),
                                        dropout=dropout, **reg)
    assert list(out) == ["none", "none_dropout", "bn", "bn_dropout", "ghost_6"]
    figure1.figure1_runs((0.1,), (0.05,), (0,), **fig1)
    # a run trained again, under another key, would have written new files
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_one_worker_per_core_at_most_max_workers(monkeypatch):
    from bnutils.experiments import parallel

    for cores, workers in ((1, 1), (2, 2), (6, 6), (64, parallel.MAX_WORKERS)):
        monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid, n=cores: range(n),
                            raising=False)
        assert parallel.workers_default() == workers


def _sleep(seconds):
    import time

    time.sleep(seconds)


def test_workers_ignore_ctrl_c_and_an_interrupted_prefill_stops_them(tmp_path):
    """Ctrl-C reaches the whole process group: the workers leave it to the caller
    (no tracebacks from idle workers), and an interrupted prefill kills its workers
    rather than wait for the runs in flight."""
    import signal
    import threading
    import time
    from multiprocessing.connection import wait

    from bnutils.experiments import parallel

    # both workers up (past their initializer): the pool starts them lazily
    pids = set()
    for i in range(50):
        parallel.prefill([(_pid_and_mark, (tmp_path / f"w{i}{j}",), {}) for j in range(4)],
                         workers=2)
        pids = {(tmp_path / f"w{i}{j}").read_text().split()[0] for j in range(4)}
        if len(pids) == 2:
            break
    processes = list(parallel._POOLS[2]._processes.values())
    assert {str(p.pid) for p in processes} == pids
    os.kill(processes[0].pid, signal.SIGINT)
    time.sleep(0.5)
    assert processes[0].is_alive()

    # Python's own Ctrl-C handler, as in a terminal or a kernel: a process started as a
    # background job by a shell without job control inherits SIGINT ignored, and Python
    # keeps it so (`make test &` in a script did)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            parallel.prefill([(_sleep, (60,), {})] * 2, workers=2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 30  # the calls would sleep for 60 s
    assert 2 not in parallel._POOLS
    # exited: each one's sentinel is ready (is_alive() can misreport a process that
    # the pool's own thread reaped at the same moment)
    assert all(wait([p.sentinel], timeout=10) for p in processes)
    assert parallel.prefill([(_touch, (tmp_path / "after", "ok"), {})] * 2, workers=2) == 2


def test_dropout_masks_do_not_depend_on_the_global_generator():
    """A stored run is replayed in another process, after other runs: its dropout masks
    must come from its own seeds, not from the global generator's state."""
    outputs = []
    for before in (0, 1000):
        torch.rand(before)  # what ran before in this process
        net = RegularizedMLP(2, 8, (16,), 3, "relu", norm=False, init_std=None,
                             seeds=[0, 1], dropout=[0.5, 0.2])
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
        outputs.append(torch.stack([net(x), net(x)]))
    assert torch.equal(outputs[0], outputs[1])


@pytest.fixture
def offline_subset(monkeypatch):
    """The experiments' data on the bundled subsets (5,000 training images), as offline
    with nothing local; their loaded tensors are forgotten before and after."""
    import importlib

    from bnutils import data

    figure3 = importlib.import_module("bnutils.experiments.figure3")  # the module
    modules = (figure3, deep_mlp, regularization)
    for module in modules:
        module._tensors.cache_clear()
        monkeypatch.setattr(module, "mnist_tensors",
                            lambda *a, **k: data.mnist_tensors(*a, subset=True, **k))
    yield figure3
    for module in modules:
        module._tensors.cache_clear()


def test_offline_the_validation_split_is_the_same_share_of_the_subset(offline_subset):
    """5,000 of the 60,000 training images are validation; of the subset's 5,000, 416
    (a fixed 5,000 would leave nothing to train on, and used to stop chapters 6-7)."""
    figure3 = offline_subset
    splits = {"figure3": figure3._tensors("fashion-mnist", 60_000, 1000),
              "deep_mlp": deep_mlp._tensors(60_000, 1000),
              "regularization": regularization._tensors(60_000)}
    for name, (x, y, x_val, y_val, x_test, _) in splits.items():
        assert (len(x), len(x_val), len(x_test)) == (4584, 416, 1000), name
        assert len(y) == len(x) and len(y_val) == len(x_val), name
