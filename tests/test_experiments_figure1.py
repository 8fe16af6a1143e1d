"""bnutils.experiments.figure1: the shape of its result, reproducibility, caching."""

import numpy as np
import pytest
import torch

from bnutils.experiments import figure1
from bnutils.experiments.figure1 import make_net, probe

TINY = dict(steps=20, log_every=10, units=3, pct_examples=200, progress=False)


@pytest.fixture(autouse=True)
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path))
    torch.set_num_threads(1)
    return tmp_path


@pytest.fixture()
def result():
    return figure1(**TINY)


def test_keys_shapes_dtypes(result):
    assert result["step"].tolist() == [10, 20]
    assert result["step"].dtype == np.int64
    for net in ("baseline", "bn"):
        assert result[f"acc_{net}"].shape == (2,)
        assert result[f"acc_{net}"].dtype == np.float64
        assert result[f"pct_{net}"].shape == (2, 3)
        assert result[f"pct_units_{net}"].shape == (2, 3, 3)
        assert result[f"loss_{net}"].shape == (2,)
        np.testing.assert_array_equal(result[f"pct_{net}"], result[f"pct_units_{net}"][:, 0])
        assert result["seconds"][net] > 0


def test_values_are_sane(result):
    for net in ("baseline", "bn"):
        acc = result[f"acc_{net}"]
        assert np.all((acc >= 0) & (acc <= 1))
        pct = result[f"pct_units_{net}"]
        assert np.all(pct[..., 0] <= pct[..., 1]) and np.all(pct[..., 1] <= pct[..., 2])
        assert np.all(np.isfinite(result[f"loss_{net}"]))


def test_bias_only_in_the_baseline():
    base, bn = make_net(None, 0.05, 0), make_net(torch.nn.BatchNorm1d, 0.05, 0)
    assert base[0].bias is not None and bn[0].bias is None
    # the same seed draws the same initial weights for both networks
    torch.testing.assert_close(base[0].weight, bn[0].weight, rtol=0, atol=0)


def test_probe_matches_a_hooked_forward_pass():
    net = make_net(torch.nn.BatchNorm1d, 0.05, 0).eval()
    x, y = torch.randn(50, 784), torch.randint(0, 10, (50,))
    seen = {}
    net[-2].register_forward_hook(lambda m, inp, out: seen.setdefault("pre", inp[0]))
    with torch.no_grad():
        correct_ref = (net(x).argmax(1) == y).sum()
    correct, pct = probe(net, x, y, n_pct=30, units=4)
    assert correct == correct_ref
    q = torch.tensor([0.15, 0.5, 0.85])
    torch.testing.assert_close(pct, torch.quantile(seen["pre"][:30, :4], q, dim=0).T)


def test_same_seed_reproduces_and_cache_returns_the_same(result, results_dir):
    assert len(list(results_dir.glob("figure1-*.npz"))) == 1
    again = figure1(**TINY)  # from the cache
    assert len(list(results_dir.glob("figure1-*.npz"))) == 1
    for f in results_dir.glob("figure1-*"):
        f.unlink()
    fresh = figure1(**TINY)  # recomputed from scratch
    for key, value in result.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(again[key], value)
            np.testing.assert_array_equal(fresh[key], value)


def test_a_changed_argument_reruns(result, results_dir):
    other = figure1(**{**TINY, "seed": 1})
    assert len(list(results_dir.glob("figure1-*.npz"))) == 2
    assert not np.array_equal(other["pct_bn"], result["pct_bn"])


def test_prober_in_a_thread_matches_inline_probes():
    from bnutils import train
    from bnutils.experiments.figure1 import Prober

    x, y = torch.randn(300, 784), torch.randint(0, 10, (300,))
    results = []
    for on_log in (Prober(x, y, 100, 4), lambda step, m: (step, *probe(m, x, y, 100, 4))):
        net = make_net(torch.nn.BatchNorm1d, 0.05, 0)
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        logs, _ = train.train(net, opt, x, y, 30, batch_size=20, log_every=10,
                              on_log=on_log, progress=False)
        results.append(logs)
    steps, correct, pct = Prober(x, y, 100, 4).results(results[0])
    assert steps.tolist() == [s for s, _, _ in results[1]] == [10, 20, 30]
    torch.testing.assert_close(correct, torch.stack([c for _, c, _ in results[1]]), rtol=0, atol=0)
    torch.testing.assert_close(pct, torch.stack([p for _, _, p in results[1]]), rtol=0, atol=0)
