"""bnutils.experiments.figure1: results, the BN that makes the difference, the held-out data.

The tests train on full MNIST for a few dozen steps: enough for every array to have its
shape and for BN's properties to show, in a few seconds.
"""

import importlib

import numpy as np
import pytest
import torch

from bnutils import drift
from bnutils.batched import StackedMLP
from bnutils.experiments.figure1 import (
    choose_lr,
    drift_summary,
    figure1,
    figure1_runs,
    make_net,
    nearest_lr,
    sigmoid_inputs,
)

f1 = importlib.import_module("bnutils.experiments.figure1")  # the module, not the function
TINY = dict(steps=20, log_every=10, units=3, pct_examples=200)
GRID = dict(steps=30, log_every=10, units=4, pct_examples=300, n_val=500)


@pytest.fixture(autouse=True)
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    torch.set_num_threads(1)
    return tmp_path


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Runs shared by several tests, computed once in their own results folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BNUTILS_RESULTS", str(tmp_path_factory.mktemp("results")))
        torch.set_num_threads(1)
        yield {"result": figure1(**TINY),
               "runs": figure1_runs((0.5, 2.0), (0.05,), (0, 1), **GRID)}


@pytest.fixture()
def result(shared):
    return shared["result"]


@pytest.fixture()
def runs(shared):
    return shared["runs"]


# --- figure1: the public API ---------------------------------------------------------------


def test_keys_shapes_dtypes(result):
    assert result["step"].tolist() == [10, 20]
    assert result["step"].dtype == np.int64
    for net in ("baseline", "bn"):
        assert result[f"acc_{net}"].shape == (2,)
        assert result[f"acc_{net}"].dtype == np.float64
        assert result[f"pct_{net}"].shape == (2, 3)
        assert result[f"pct_units_{net}"].shape == (2, 3, 3)
        assert result[f"pct_units_{net}_init"].shape == (3, 3)
        assert result[f"loss_{net}"].shape == (2,)
        np.testing.assert_array_equal(result[f"pct_{net}"], result[f"pct_units_{net}"][:, 0])
        assert result["seconds"][net] > 0
    assert result["gamma_bn"].shape == result["beta_bn"].shape == (2, 3)
    assert result["pct_xhat_bn"].shape == (2, 3, 3)


def test_values_are_sane(result):
    for net in ("baseline", "bn"):
        acc = result[f"acc_{net}"]
        assert np.all((acc >= 0) & (acc <= 1))
        pct = result[f"pct_units_{net}"]
        assert np.all(pct[..., 0] <= pct[..., 1]) and np.all(pct[..., 1] <= pct[..., 2])
        assert np.all(np.isfinite(result[f"loss_{net}"]))
    # 20 steps at lr 2 take the BN net well above chance (10%); the baseline starts slower
    assert result["acc_bn"][-1] > 0.3
    # before training both nets compute the same function: same weights, no biases,
    # and BN starts at gamma = 1, beta = 0 (its batch statistics differ, so not its inputs)
    assert result["acc_baseline_init"] == result["acc_bn_init"]


def test_same_seed_reproduces_and_cache_returns_the_same(result, results_dir):
    first = figure1(**TINY)
    assert len(list(results_dir.glob("figure1-runs-*.npz"))) == 1
    again = figure1(**TINY)  # from the cache
    assert len(list(results_dir.glob("figure1-runs-*.npz"))) == 1
    for f in results_dir.glob("figure1-runs-*"):
        f.unlink()
    fresh = figure1(**TINY)  # recomputed from scratch
    for key, value in result.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(first[key], value)
            np.testing.assert_array_equal(again[key], value)
            np.testing.assert_array_equal(fresh[key], value)


def test_a_changed_argument_reruns(result, results_dir):
    other = figure1(**{**TINY, "seed": 1})
    assert len(list(results_dir.glob("figure1-runs-*.npz"))) == 1
    assert not np.array_equal(other["pct_bn"], result["pct_bn"])


# --- the BN network has BN (these fail when it is built without) ---------------------------


def test_bn_output_is_gamma_xhat_plus_beta(result):
    """The logged sigmoid inputs of the BN net are gamma * x_hat + beta, unit by unit."""
    gamma, beta = result["gamma_bn"], result["beta_bn"]
    assert np.all(gamma > 0)
    np.testing.assert_allclose(
        result["pct_units_bn"],
        gamma[..., None] * result["pct_xhat_bn"] + beta[..., None], rtol=1e-5, atol=1e-5)
    assert not np.allclose(gamma, 1.0) and not np.allclose(beta, 0.0)  # they were trained


def test_bn_makes_the_sigmoid_inputs_independent_of_the_weight_scale():
    """Section 3.3: scaling the weights by 10 leaves BN's outputs as they were.

    At step 0 the BN net's last-layer sigmoid inputs are the same for weights drawn with
    std 0.05 or 0.5 (same draws, ten times larger); the baseline's are not.
    """
    r = figure1_runs((2.0,), (0.05, 0.5), (0,), **{**GRID, "steps": 1, "log_every": 1})
    small, large = r["pct_bn"][0, 0, 0, 0], r["pct_bn"][0, 1, 0, 0]
    np.testing.assert_allclose(large, small, rtol=1e-3, atol=1e-3)
    spread = lambda p: np.mean(p[:, 2] - p[:, 0])  # noqa: E731
    base_small, base_large = r["pct_baseline"][0, 0, 0, 0], r["pct_baseline"][0, 1, 0, 0]
    assert spread(base_large) > 5 * spread(base_small)
    assert spread(small) > 5 * spread(base_small)  # BN widens what the baseline squeezes


def test_bn_normalises_the_probe_batch():
    """In training mode, x_hat has zero mean and unit variance over the probed images."""
    model = StackedMLP(2, norm=True, init_std=[0.05, 0.3], seeds=[0, 1])
    x = torch.randn(400, 784)
    _, hidden = model(x, return_hidden=True)
    out = sigmoid_inputs(model, x, units=5)
    # percentiles of a standardised unit: the 15th below -0.5, the 85th above 0.5
    assert np.all(out["pct_xhat"][..., 0].numpy() < -0.5)
    assert np.all(out["pct_xhat"][..., 2].numpy() > 0.5)
    model.eval()
    model.gamma[-1].data.mul_(3.0)
    out = sigmoid_inputs(model, x, units=5)
    torch.testing.assert_close(out["pct"], 3.0 * out["pct_xhat"], rtol=1e-5, atol=1e-5)


# --- the probe ----------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [False, True])
def test_sigmoid_inputs_match_the_plain_net_and_leave_the_model_as_it_was(norm):
    model = StackedMLP(3, norm=norm, init_std=[0.05, 0.1, 0.2], seeds=[0, 1, 2]).eval()
    buffers = [b.clone() for b in model.buffers()]
    x = torch.randn(250, 784)
    out = sigmoid_inputs(model, x, units=4)
    assert not model.training
    for b, old in zip(model.buffers(), buffers, strict=True):
        torch.testing.assert_close(b, old, rtol=0, atol=0)
    q = torch.tensor([0.15, 0.5, 0.85])
    for i in range(3):
        net = model.net(i).train()  # training mode: BN with the batch's statistics
        with torch.no_grad():
            pre = net[:-2](x)  # the input of the last sigmoid
            torch.testing.assert_close(net[-1](net[-2](pre)), net(x))
        expected = torch.quantile(pre[:, :4], q, dim=0).T
        torch.testing.assert_close(out["pct"][i], expected, rtol=1e-4, atol=1e-5)
    assert ("gamma" in out) == norm


def test_bias_only_in_the_baseline():
    base, bn = make_net(None, 0.05, 0), make_net(torch.nn.BatchNorm1d, 0.05, 0)
    assert base[0].bias is not None and bn[0].bias is None
    # the same seed draws the same initial weights for both networks
    torch.testing.assert_close(base[0].weight, bn[0].weight, rtol=0, atol=0)


# --- figure1_runs: the grid ---------------------------------------------------------------


def test_grid_shapes(runs):
    n = 4  # steps 0, 10, 20, 30
    assert runs["step"].tolist() == [0, 10, 20, 30]
    assert runs["probe_set"] == "validation"
    for net in ("baseline", "bn"):
        for key in ("acc", "val", "loss"):
            assert runs[f"{key}_{net}"].shape == (2, 1, 2, n)
        assert runs[f"pct_{net}"].shape == (2, 1, 2, n, 4, 3)
        assert runs[f"diverged_{net}"].shape == (2, 1, 2) and not runs[f"diverged_{net}"].any()
        assert np.isnan(runs[f"loss_{net}"][..., 0]).all()
        # validation accuracy at the end only: the choices need no more
        assert np.isnan(runs[f"val_{net}"][..., :-1]).all()
        assert np.isfinite(runs[f"val_{net}"][..., -1]).all()
    assert runs["gamma_bn"].shape == (2, 1, 2, n, 4)
    np.testing.assert_array_equal(runs["gamma_bn"][..., 0, :], 1.0)  # step 0: untrained


def test_each_setting_of_a_grid_is_the_setting_run_alone(runs):
    """The grid's axes are what they say: setting (lr 2.0, seed 1) equals its own run."""
    alone = figure1_runs((2.0,), (0.05,), (1,), **GRID)
    for key in ("acc_bn", "val_baseline", "pct_bn", "pct_baseline", "gamma_bn"):
        np.testing.assert_allclose(runs[key][1, 0, 1], alone[key][0, 0, 0],
                                   rtol=1e-4, atol=1e-4, err_msg=key)
    assert not np.allclose(runs["pct_bn"][0, 0, 1], alone["pct_bn"][0, 0, 0])


def test_sensitivity_joins_the_initial_scales():
    kw = {**GRID, "steps": 10, "log_every": 10}
    maps = f1.figure1_sensitivity((0.5,), (0.05, 0.1), inputs=("raw",), **kw)
    raw = maps["raw"]
    assert raw["init_std"].tolist() == [0.05, 0.1]
    assert raw["pct_bn"].shape == (1, 2, 1, 2, 4, 3)
    alone = figure1_runs((0.5,), (0.1,), (0,), inputs="raw", **kw)
    np.testing.assert_array_equal(raw["pct_bn"][:, 1], alone["pct_bn"][:, 0])


# --- inputs="raw" ------------------------------------------------------------------------


def test_raw_inputs_are_pixels_in_0_1():
    (x, _), val, (x_test, _) = f1.held_out_data("raw", 0, torch.device("cpu"))
    assert val is None
    assert x.min() == 0.0 and x.max() == 1.0 and x_test.max() == 1.0
    (xs, _), _, _ = f1.held_out_data("standardized", 0, torch.device("cpu"))
    assert abs(float(xs.mean())) < 1e-3 and abs(float(xs.std()) - 1) < 1e-2
    torch.testing.assert_close(xs, (x - 0.1307) / 0.3081, rtol=0, atol=1e-5)


def test_raw_inputs_train_another_network(result, results_dir):
    raw = figure1(**{**TINY, "inputs": "raw"})
    assert len(list(results_dir.glob("figure1-runs-*.npz"))) == 1
    assert not np.allclose(raw["pct_units_baseline"], result["pct_units_baseline"])
    assert raw["acc_bn"][-1] > 0.3


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="inputs"):
        figure1(**{**TINY, "inputs": "normalised"})
    with pytest.raises(ValueError, match="> 0"):
        figure1_runs((0.0,), **GRID)
    with pytest.raises(ValueError, match="at least one"):
        figure1_runs((), **GRID)


# --- the validation split: nothing is chosen on test images --------------------------------


def test_validation_split_is_carved_from_the_training_set():
    (x, y), (xv, yv), (xt, yt) = f1.held_out_data("standardized", 5000, torch.device("cpu"))
    assert len(x) == 55_000 and len(xv) == 5000 and len(xt) == 10_000
    full, _ = f1._tensors("train", "standardized", torch.device("cpu"))
    rows = lambda a: {r.tobytes() for r in a.numpy()}  # noqa: E731
    assert rows(xv) <= rows(full) and not rows(xv) & rows(xt)
    assert len(rows(x) & rows(xv)) <= 1  # disjoint (MNIST has a few duplicate images)


def test_the_choice_never_sees_the_test_set(runs, monkeypatch, results_dir):
    """Replace every test image by noise: the validation numbers and the choice stay."""
    real = f1._tensors

    def noisy_test(split, inputs, device):
        x, y = real(split, inputs, device)
        if split == "test":
            g = torch.Generator().manual_seed(1)
            x = torch.randn(x.shape, generator=g).to(device)
            y = torch.randint(0, 10, y.shape, generator=g).to(device)
        return x, y

    monkeypatch.setattr(f1, "_tensors", noisy_test)
    f1.held_out_data.cache_clear()
    for f in results_dir.glob("figure1-runs-*"):
        f.unlink()
    try:
        noisy = figure1_runs((0.5, 2.0), (0.05,), (0, 1), **GRID)
    finally:
        f1.held_out_data.cache_clear()
    assert not np.allclose(noisy["acc_baseline"], runs["acc_baseline"])  # test changed
    for key in ("val_baseline", "val_bn", "pct_baseline", "pct_bn", "loss_bn"):
        np.testing.assert_array_equal(noisy[key], runs[key], err_msg=key)
    last = lambda r: r["val_baseline"][:, 0, :, -1]  # noqa: E731
    assert choose_lr(runs["lr"], last(noisy)) == choose_lr(runs["lr"], last(runs))


def test_choose_lr():
    lrs = [0.1, 0.5, 2.0]
    assert choose_lr(lrs, [0.90, 0.95, 0.93]) == (0.5, True)
    assert choose_lr(lrs, [0.90, 0.92, 0.93]) == (2.0, False)
    assert choose_lr(lrs, [0.95, 0.92, 0.93]) == (0.1, False)
    # several seeds: the mean decides (seed 0 alone would pick 2.0)
    acc = [[0.90, 0.90], [0.94, 0.95], [0.96, 0.90]]
    assert choose_lr(lrs, acc) == (0.5, True)
    with pytest.raises(ValueError, match="increasing"):
        choose_lr([0.5, 0.1, 2.0], [0.9, 0.9, 0.9])
    with pytest.raises(ValueError, match="one row"):
        choose_lr(lrs, [0.9, 0.9])
    with pytest.raises(ValueError, match="finite"):
        choose_lr(lrs, [0.9, np.nan, 0.9])


# --- the drift of a grid ------------------------------------------------------------------


def test_drift_summary_agrees_with_bnutils_drift(runs):
    d = drift_summary(runs, start=10)
    assert d["ratio"].shape == (2, 1) and d["move_bn"].shape == (2, 1, 2)
    one = drift.drift(runs["pct_bn"][1, 0, 0], start=1, end=-1)  # step 10 to the end
    assert d["move_bn"][1, 0, 0] == pytest.approx(np.median(one.move))
    assert d["widen_bn"][1, 0, 0] == pytest.approx(np.median(one.widen))
    base = np.median([drift.drift(runs["pct_baseline"][0, 0, s], 1).move for s in (0, 1)])
    bn = np.median([drift.drift(runs["pct_bn"][0, 0, s], 1).move for s in (0, 1)])
    assert d["ratio"][0, 0] == pytest.approx(base / bn)
    # each seed's ratio of its typical moves, the spread that the pooled ratio hides
    assert d["ratio_seed"].shape == (2, 1, 2)
    np.testing.assert_allclose(d["ratio_seed"], d["move_baseline"] / d["move_bn"])
    with pytest.raises(ValueError, match="not logged"):
        drift_summary(runs, start=5)


def test_choose_setting_takes_the_best_rate_and_scale_on_validation():
    lrs, stds = [0.1, 0.5, 2.0], [0.05, 0.2, 0.5]
    acc = np.full((3, 3), 0.9)
    acc[1, 1] = 0.95
    assert f1.choose_setting(lrs, stds, acc) == (0.5, 0.2, True)
    acc[1, 2] = 0.96  # the largest scale: the grid must grow
    assert f1.choose_setting(lrs, stds, acc) == (0.5, 0.5, False)
    with pytest.raises(ValueError, match="finite"):
        f1.choose_setting(lrs, stds, np.full((3, 3), np.nan))


def test_cached_runs_load_without_a_word(capsys):
    """Chapter 5 printed ten "loaded cached result ... _cache/results" lines."""
    f1.figure1_runs((0.5,), (0.05,), (0,), **GRID)
    capsys.readouterr()
    f1.figure1_runs((0.5,), (0.05,), (0,), **GRID)
    assert "cached result" not in capsys.readouterr().out


def test_nearest_lr():
    lrs = [0.1, 0.2, 0.5, 1.0, 2.0]
    assert nearest_lr(lrs, [9.0, 3.0, 1.0, 0.5, 0.2], chosen=1.0) == 0.2
    assert nearest_lr(lrs, [9.0, 3.0, 2.5, 0.5, 0.2], chosen=0.5) == 0.5
    assert nearest_lr(lrs, [9.0, 1.0, 3.0, 1.0, 3.0], chosen=1.0) == 0.5  # a tie
    assert nearest_lr(lrs, [9.0, 1.0, 1.0, 1.0, 3.0], chosen=0.5) == 2.0  # 4x, not 5x
    assert nearest_lr(lrs, [1.0] * 5, chosen=0.5) is None
    ratios = [9.0, 3.0, 1.0, 0.5, 0.2]
    assert nearest_lr(lrs, ratios, chosen=0.2, picture="reversed") == 1.0
    assert nearest_lr(lrs, ratios, chosen=0.2, picture="neither") == 0.5
    assert nearest_lr(lrs, [np.inf, np.nan, 1, 1, 1], chosen=0.2) == 0.1  # NaN: diverged
    with pytest.raises(ValueError, match="one ratio per rate"):
        nearest_lr(lrs, ratios[:3], chosen=0.5)


def test_select_and_join(runs):
    one = f1.select(runs, lr=2.0, seed=1)
    assert one["lr"].tolist() == [2.0] and one["seed"].tolist() == [1]
    np.testing.assert_array_equal(one["pct_bn"][0, 0, 0], runs["pct_bn"][1, 0, 1])
    assert one["val_bn"].shape == (1, 1, 1, 4) and one["step"].shape == (4,)
    both = f1.join([f1.select(runs, seed=0), f1.select(runs, seed=1)], "seed")
    for key, value in runs.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(both[key], value, err_msg=key)
    with pytest.raises(ValueError, match="not in the grid"):
        f1.select(runs, lr=1.0)


def test_n_test_measures_the_first_test_images(runs):
    few = figure1_runs((0.5, 2.0), (0.05,), (0, 1), **{**GRID, "n_test": 100})
    hits = few["acc_bn"] * 100
    np.testing.assert_allclose(hits, np.round(hits), atol=1e-9)
    np.testing.assert_array_equal(few["val_bn"], runs["val_bn"])  # training unchanged
