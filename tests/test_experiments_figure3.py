"""bnutils.models.small_cnn and bnutils.experiments.figure3 (notebook 06)."""

import numpy as np
import pytest
import torch
from torch import nn

from bnutils.experiments import figure3
from bnutils.experiments.figure3 import CONFIGS, table
from bnutils.models import small_cnn

TINY = {"steps": 6, "evals": 2, "n_test": 200, "progress": False}


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
        assert r["acc"].shape == r["loss"].shape == (3,)
        assert np.all((0 <= r["acc"]) & (r["acc"] <= 1))
        assert r["diverged"] is False and r["diverged_step"] == -1
    assert results["bn_x30"]["lr"] == pytest.approx(30 * results["bn"]["lr"])
    # the section 4.2.1 changes: no dropout, weight decay / 5, 6x faster decay
    assert results["bn_x5"]["dropout"] == 0 < results["bn"]["dropout"]
    assert results["bn_x5"]["weight_decay"] == pytest.approx(results["bn"]["weight_decay"] / 5)
    assert results["bn_x5"]["lr_half_life"] == pytest.approx(results["bn"]["lr_half_life"] / 6)
    rows = {row["name"]: row for row in table(results)}
    baseline = results["baseline"]
    assert rows["baseline"]["steps_to_reference"] == baseline["step"][baseline["acc"].argmax()]
    with pytest.raises(ValueError, match="unknown configurations"):
        figure3(configs=["bn_x100"], **TINY)


def test_figure3_is_reproducible(tmp_path, monkeypatch):
    runs = []
    for folder in ("a", "b"):  # two caches, so the second run trains again
        monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path / folder))
        runs.append(figure3(configs=["bn", "baseline"], seed=3, **TINY))
    for name in ("bn", "baseline"):
        np.testing.assert_array_equal(runs[0][name]["acc"], runs[1][name]["acc"])
        np.testing.assert_array_equal(runs[0][name]["loss"], runs[1][name]["loss"])


def test_absurd_learning_rate_is_flagged_and_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    r = figure3(configs=["baseline"], lr=1e4, **{**TINY, "steps": 50})["baseline"]
    assert r["diverged"] is True
    assert 0 < r["diverged_step"] < 50  # stopped early
    assert r["step"][-1] < r["diverged_step"]  # accuracy kept as it was before


def test_table_measures_every_row_against_the_reference_best():
    """Steps to the *reference's* best accuracy, not each row's own (issue 15)."""
    step = np.array([0, 100, 200, 300])

    def run(acc, lr=0.1, diverged=False):
        return {"step": step, "acc": np.array(acc), "lr": lr, "diverged": diverged}

    results = {
        "baseline": run([0.1, 0.5, 0.7, 0.6]),  # best 0.7 at step 200
        "fast": run([0.1, 0.75, 0.8, 0.95], lr=0.5),  # passes 0.7 at step 100
        "slow": run([0.1, 0.3, 0.5, 0.69]),  # never reaches 0.7
        "broken": run([0.1, 0.72, 0.1], diverged=True),
    }
    results["broken"]["step"] = step[:3]
    rows = {r["name"]: r for r in table(results)}
    assert rows["baseline"]["steps_to_reference"] == 200
    assert rows["fast"]["steps_to_reference"] == 100  # its own best (0.95) comes at 300
    assert rows["slow"]["steps_to_reference"] is None  # its own best it reaches, at 300
    assert rows["broken"]["steps_to_reference"] == 100
    assert [rows[n]["best_acc"] for n in results] == [0.7, 0.95, 0.69, 0.72]
    assert rows["fast"]["lr"] == 0.5 and rows["broken"]["diverged"] is True
    other = {r["name"]: r for r in table(results, reference="fast")}
    assert other["fast"]["steps_to_reference"] == 300
    assert other["baseline"]["steps_to_reference"] is None
