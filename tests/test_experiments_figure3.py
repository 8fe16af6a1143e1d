"""bnutils.models.small_cnn and bnutils.experiments.figure3 (notebook 06)."""

import numpy as np
import pytest
import torch
from torch import nn

from bnutils.experiments import figure3
from bnutils.experiments.figure3 import (
    CHANGES,
    CONFIGS,
    config_settings,
    run_cnn,
    schedule,
    settings,
    stack,
    table,
    target,
)
from bnutils.models import small_cnn

TINY = {"steps": 6, "evals": 2, "n_val": 200, "n_test": 200, "n_probe": 100}


def test_small_cnn_layout_and_shapes():
    torch.manual_seed(0)
    x = torch.randn(5, 1, 28, 28)
    for activation in ("relu", "sigmoid"):
        plain = small_cnn(activation=activation)
        bn = small_cnn(norm="bn", activation=activation, dropout=0.5)
        assert plain(x).shape == bn(x).shape == (5, 10)
        convs = [m for m in bn if isinstance(m, nn.Conv2d)]
        assert len(convs) == 3 and all(c.bias is None for c in convs)
        assert sum(isinstance(m, nn.BatchNorm2d) for m in bn) == 3
        assert all(m.bias is not None for m in plain if isinstance(m, nn.Conv2d))
    with pytest.raises(ValueError, match="activation"):
        small_cnn(activation="softsign")
    with pytest.raises(ValueError, match="norm"):
        small_cnn(norm="layer")


def test_conv_bias_gradient_is_zero_through_bn():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 10, 10, dtype=torch.float64)
    conv = nn.Conv2d(3, 4, 3, bias=True).double()
    nn.init.normal_(conv.bias, std=1.0)
    head = torch.randn(4 * 8 * 8, dtype=torch.float64)
    with_bn = nn.Sequential(conv, nn.BatchNorm2d(4).double(), nn.ReLU())
    with_bn(x).flatten(1).matmul(head).square().mean().backward()
    assert conv.weight.grad.abs().max() > 1e-3
    assert conv.bias.grad.abs().max() < 1e-12  # zero up to round-off in float64
    conv.zero_grad()
    nn.ReLU()(conv(x)).flatten(1).matmul(head).square().mean().backward()
    assert conv.bias.grad.abs().max() > 1e-3  # without BN the bias does learn


def test_figure3_returns_every_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    results = figure3(**TINY)
    assert list(results) == list(CONFIGS)
    for name, r in results.items():
        assert r["step"].tolist() == [0, 3, 6], name
        assert r["acc"].shape == r["val_acc"].shape == r["loss"].shape == (1, 3)
        assert r["dead"].shape == r["saturated"].shape == (1, 3, 3)  # 3 layers
        assert np.all((0 <= r["acc"]) & (r["acc"] <= 1))
        assert r["diverged"] == [False] and r["diverged_step"] == [-1]
        relu = CONFIGS[name][1] == "relu"
        assert np.isnan(r["saturated"]).all() == relu and np.isnan(r["dead"]).all() != relu
    assert results["bn_x30"]["lr"][0] == pytest.approx(30 * results["bn"]["lr"][0])
    # the section 4.2.1 changes: no dropout, weight decay / 5, 6x faster decay
    assert results["bn_x5"]["dropout"][0] == 0 < results["bn"]["dropout"][0]
    assert results["bn_x5"]["weight_decay"][0] == pytest.approx(
        results["bn"]["weight_decay"][0] / 5)
    assert results["bn_x5"]["lr_half_life"][0] == pytest.approx(
        results["bn"]["lr_half_life"][0] / 6)
    # the control: the baseline with the fast runs' decay, and nothing else
    assert results["baseline_decay"]["lr_half_life"][0] == pytest.approx(
        results["baseline"]["lr_half_life"][0] / 6)
    assert results["baseline_decay"]["dropout"] == results["baseline"]["dropout"]
    assert results["baseline_decay"]["lr"] == results["baseline"]["lr"]
    # validation is measured at every evaluation: it chooses
    assert np.isfinite(results["bn"]["val_acc"]).all()
    rows = {row["name"]: row for row in table(results)}
    baseline = results["baseline"]
    assert rows["baseline"]["chosen_step"] == [
        int(baseline["step"][baseline["val_acc"][0].argmax()])]
    with pytest.raises(ValueError, match="unknown configurations"):
        figure3(configs=["bn_x100"], **TINY)


def test_seeds_are_stacked_and_each_is_the_single_run(tmp_path, monkeypatch):
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    both = figure3(configs=["bn"], seeds=(0, 1), **TINY)["bn"]
    alone = figure3(configs=["bn"], seeds=(1,), **TINY)["bn"]
    assert both["acc"].shape == (2, 3) and both["n_seeds"] == 2
    np.testing.assert_array_equal(both["acc"][1], alone["acc"][0])
    assert not np.array_equal(both["acc"][0], both["acc"][1])  # seeds differ


def test_figure3_is_reproducible(tmp_path, monkeypatch):
    runs = []
    for folder in ("a", "b"):  # two caches, so the second run trains again
        monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path / folder))
        runs.append(figure3(configs=["bn", "baseline"], seeds=(3,), **TINY))
    for name in ("bn", "baseline"):
        np.testing.assert_array_equal(runs[0][name]["acc"], runs[1][name]["acc"])
        np.testing.assert_array_equal(runs[0][name]["loss"], runs[1][name]["loss"])


def test_absurd_learning_rate_is_flagged_and_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    r = figure3(configs=["baseline"], lr=1e4, **{**TINY, "steps": 50})["baseline"]
    assert r["diverged"] == [True]
    assert 0 < r["diverged_step"][0] < 50  # stopped early
    assert r["step"][-1] < r["diverged_step"][0]  # accuracy kept as it was before
    assert table({"baseline": r})[0]["final_acc"] == 0.1  # a diverged run counts as chance


def test_settings_apply_each_change_alone():
    base = settings("bn")
    assert base == {"norm": "bn", "activation": "relu", "lr": 0.1, "dropout": 0.2,
                    "weight_decay": 5e-4, "half_life": 1.0}
    for change, key, value in (("rate", "lr", 0.5), ("decay", "half_life", 1 / 6),
                               ("dropout", "dropout", 0.0),
                               ("weight_decay", "weight_decay", 1e-4)):
        changed = settings("bn", changes=[change])
        assert changed[key] == pytest.approx(value)
        assert {k: v for k, v in changed.items() if k != key} == {
            k: v for k, v in base.items() if k != key}
    assert settings(changes=[("rate", 30)])["lr"] == pytest.approx(3.0)
    assert config_settings("bn_x5") == settings("bn", changes=["rate", *CHANGES[1:]])
    assert config_settings("baseline_decay") == settings(changes=["decay"])
    with pytest.raises(ValueError, match="unknown change"):
        settings(changes=["lrn"])


def test_warmup_slow_groups_and_trace(tmp_path, monkeypatch):
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    r = run_cnn(8, norm="bn", lr=3.0, warmup=4, slow=("affine", "head"), slow_lr=0.1,
                trace=5, evals=2, n_val=100, n_test=100, n_probe=50)
    t = r["trace"]
    assert t["loss"].shape == t["logit_std"].shape == t["head_norm"].shape == (5,)
    for key in ("dead", "conv_norm", "gamma", "beta"):
        assert t[key].shape == (5, 3), key
    assert t["gamma"][0] == pytest.approx([1, 1, 1]) and t["beta"][0] == pytest.approx([0, 0, 0])
    assert np.all(t["conv_norm"] > 0) and np.all((0 <= t["dead"]) & (t["dead"] <= 1))
    assert r["slow"] == ["affine", "head"] and r["warmup"] == 4
    with pytest.raises(ValueError, match="parameter kinds"):
        run_cnn(2, norm="bn", slow=("conv",))


def test_learning_rate_factor_warms_up_then_halves():
    from bnutils.experiments.figure3 import lr_factor

    assert [lr_factor(t, 100, warmup=3) for t in range(3)] == pytest.approx(
        [0.25 * 0.5 ** (t / 100) * (t + 1) for t in range(3)])
    assert lr_factor(50, 100, half_life=0.5) == pytest.approx(0.5)
    assert lr_factor(100, 600, half_life=1 / 6) == pytest.approx(0.5)
    assert lr_factor(0, 10) == 1.0


def test_slow_parameters_get_their_own_rate():
    from bnutils.experiments.figure3 import _groups

    torch.manual_seed(0)
    net = small_cnn(norm="bn")
    groups = _groups(net, 3.0, ("head",), 0.1)
    assert [g["lr"] for g in groups] == [3.0, 0.1]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net[-1].parameters()}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(net.parameters()))
    assert len(_groups(net, 3.0, (), 0.1)) == 1
    affine = _groups(net, 3.0, ("affine",), 0.1)[1]["params"]
    assert len(affine) == 6  # gamma and beta of three BN layers


def test_table_chooses_on_validation_and_reports_test_there():
    """Issue 25: the best accuracy was a maximum over test evaluations, and the steps
    to the baseline's best were its last evaluation by construction."""
    step = np.array([0, 100, 200, 300])

    def run(val, acc, lr=0.1, diverged=False):
        return {"step": step[:len(val)], "val_acc": np.array(val), "acc": np.array(acc),
                "lr": lr, "diverged": diverged}

    results = {
        # validation peaks at 200 (0.80); test peaks at 300: test is not looked at
        "baseline": run([0.1, 0.70, 0.80, 0.795], [0.1, 0.69, 0.70, 0.75]),
        "fast": run([0.1, 0.79, 0.81, 0.82], [0.1, 0.78, 0.80, 0.83], lr=0.5),
        "slow": run([0.1, 0.3, 0.5, 0.77], [0.1, 0.3, 0.5, 0.76]),
        "broken": run([0.1, 0.80, 0.1], [0.1, 0.79, 0.1], diverged=True),
    }
    rows = {r["name"]: r for r in table(results)}
    assert rows["baseline"]["chosen_step"] == [200]
    assert rows["baseline"]["chosen_acc"] == 0.70  # test at the chosen step, not 0.75
    assert rows["fast"]["chosen_acc"] == 0.83
    assert rows["broken"]["chosen_step"] == [100] and rows["broken"]["final_acc"] == 0.1
    # target: the baseline's final validation accuracy minus 1 point, 0.785
    assert target(results)[0] == pytest.approx(0.785)
    assert str(rows["baseline"]["reach"]) == "200"  # before its end
    assert rows["fast"]["reach"].step == 100
    assert rows["slow"]["reach"].censored
    assert str(rows["slow"]["reach"]) == "not reached in 300 steps"
    assert rows["fast"]["lr"] == 0.5 and rows["broken"]["diverged"] is True
    other = {r["name"]: r for r in table(results, reference="fast")}
    assert other["baseline"]["reach"].censored  # never 0.81 on validation


def test_target_says_whether_the_reference_has_flattened():
    step = np.array([0, 100, 200, 300, 400])
    climbing = {"b": {"step": step, "val_acc": np.array([0.1, 0.6, 0.7, 0.75, 0.78])}}
    flat = {"b": {"step": step, "val_acc": np.array([[0.1, 0.6, 0.78, 0.779, 0.78]] * 3)}}
    assert target(climbing, "b") == (pytest.approx(0.77), False)
    assert target(flat, "b") == (pytest.approx(0.77), True)


def test_schedule_halves_every_half_life():
    fast = schedule(config_settings("bn_x5"), 600)
    assert fast[0] == pytest.approx(0.5) and fast[100] == pytest.approx(0.25)
    slow = schedule(config_settings("baseline"), 600)
    assert slow[600 - 1] == pytest.approx(0.1 * 0.5 ** (599 / 600))
    # the fast rate falls below the baseline's at 600 * log2(5) / 5 = 278.6 steps
    assert np.flatnonzero(fast < slow)[0] == 279


def test_a_run_that_diverges_before_its_first_evaluation_stacks_with_the_others(
        tmp_path, monkeypatch):
    """Chapter 7's grid evaluates only at the end (no evaluation at step 0): a seed that
    diverges at once has no evaluation at all, and must still stack with the others."""
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    options = {**TINY, "evals": 1, "eval_start": False}
    gone = run_cnn(seed=0, lr=1e6, **options)
    assert gone["diverged"] and len(gone["step"]) == 0
    assert gone["dead"].shape == gone["saturated"].shape == (0, 3)
    fine = run_cnn(seed=0, **options)
    both = stack([fine, gone])
    assert both["dead"].shape == (2, 1, 3) and np.isnan(both["dead"][1]).all()
    assert both["acc"].shape == (2, 1) and np.isnan(both["acc"][1, 0])


def test_a_run_that_diverges_inside_its_trace_stacks_with_the_others():
    """The trace ends where a run diverges: chapter 6's ``baseline_x5`` can diverge in
    its first ``trace`` steps, and its trace must still stack with the other seeds'."""
    options = {**TINY, "evals": 1, "trace": 3}
    fine = run_cnn(seed=0, **options)
    gone = run_cnn(seed=0, lr=1e6, **options)
    assert gone["diverged"] and len(gone["trace"]["loss"]) < 3
    both = stack([fine, gone])
    short = len(gone["trace"]["loss"])
    assert both["trace"]["loss"].shape == (2, 3)
    assert both["trace"]["dead"].shape == (2, 3, 3)
    np.testing.assert_array_equal(both["trace"]["loss"][0], fine["trace"]["loss"])
    assert np.isnan(both["trace"]["loss"][1, short:]).all()


def test_chosen_is_the_first_best_validation_evaluation_of_each_seed():
    from bnutils.experiments.figure3 import chosen

    r = {"val_acc": np.array([[0.1, 0.8, 0.8, 0.7], [0.1, 0.6, np.nan, np.nan]]),
         "acc": np.array([[0.1, 0.79, 0.81, 0.72], [0.1, 0.58, np.nan, np.nan]])}
    index, acc = chosen(r)
    assert index.tolist() == [1, 1]  # ties go to the first; NaN after divergence
    assert acc.tolist() == [0.79, 0.58]
    gone = {"val_acc": np.zeros((2, 0)), "acc": np.zeros((2, 0))}
    assert chosen(gone)[1].tolist() == [0.1, 0.1]  # diverged before any evaluation
