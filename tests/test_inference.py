"""bnutils.inference (chapter 4): Algorithm 2's population statistics, moving averages,
and accuracy with batch statistics, on MLPs and on a CNN."""

import copy

import pytest
import torch
from torch import nn

from bnutils import layers
from bnutils.config import generator
from bnutils.inference import (
    MovingAverages,
    accuracy_with_batch_statistics,
    batch_statistics,
    batchnorm_layers,
    mcnemar,
    population_statistics,
    record_inputs,
    set_statistics,
)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5, bias=False), layers.BatchNorm1d(5), nn.Tanh(),
                         nn.Linear(5, 4, bias=False), nn.BatchNorm1d(4))


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Conv2d(3, 4, 3), layers.BatchNorm2d(4))


def _expected_statistics(net, batches):
    """Algorithm 2 by hand: per BN layer, the mean of the batch means and m/(m-1) times
    the mean of the biased batch variances, each batch passed in training mode."""
    inputs = {}
    net.train()
    with torch.no_grad(), record_inputs(net, lambda name, x: inputs.setdefault(name, []).append(x)):
        for xb in batches:
            net(xb)
    stats = {}
    for name, xs in inputs.items():
        axes = (0, *range(2, xs[0].ndim))
        m = xs[0].numel() // xs[0].shape[1]
        means = torch.stack([x.double().mean(axes) for x in xs])
        variances = torch.stack([x.double().var(axes, unbiased=False) for x in xs])
        stats[name] = (means.mean(0), m / (m - 1) * variances.mean(0))
    return stats


def _assert_statistics(got, expected):
    assert got.keys() == expected.keys()
    for name, (mean, var) in expected.items():
        assert got[name][0].dtype == got[name][1].dtype == torch.float64
        torch.testing.assert_close(got[name][0], mean)
        torch.testing.assert_close(got[name][1], var)


# --- Algorithm 2 ------------------------------------------------------------------------


def test_population_statistics_shuffles_with_seed_0_by_default():
    net, x = _net(), torch.randn(40, 6) * 2 + 1
    default, zero = population_statistics(net, x, 8), population_statistics(net, x, 8, seed=0)
    other = population_statistics(net, x, 8, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(_flat(default), _flat(zero), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(_flat(default), _flat(other), strict=True))


def _flat(stats):
    return [t for value in stats.values() for t in value]


def test_population_statistics_is_algorithm_2():
    net, x, m = _net(), torch.randn(100, 6) * 2 + 1, 8
    before = {k: v.clone() for k, v in net.state_dict().items()}
    stats = population_statistics(net.eval(), x, batch_size=m, seed=None)
    assert not net.training
    for k, v in net.state_dict().items():  # nothing changed
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # directly: batch statistics of each layer's input, the network in training mode
    n = len(x) // m
    means, variances = [], []
    net.train()
    with torch.no_grad():
        for i in range(n):
            h = net[0](x[i * m : (i + 1) * m])
            means.append(h.mean(0))
            variances.append(h.var(0, unbiased=False))
    torch.testing.assert_close(stats["1"][0].float(), torch.stack(means).mean(0))
    torch.testing.assert_close(stats["1"][1].float(), m / (m - 1) * torch.stack(variances).mean(0))
    # and the same as torch's recipe: reset, momentum=None, one pass in training mode
    for bn in batchnorm_layers(net).values():
        bn.momentum = None
        bn.reset_running_stats()
    with torch.no_grad():
        for i in range(n):
            net(x[i * m : (i + 1) * m])
    for name, bn in batchnorm_layers(net).items():
        torch.testing.assert_close(bn.running_mean, stats[name][0].float())
        torch.testing.assert_close(bn.running_var, stats[name][1].float())


@pytest.mark.parametrize(("n", "batch_size", "used"), [(64, 16, 4), (63, 16, 3), (64, 2, 32),
                                                      (64, 64, 1), (70, 32, 2)])
def test_population_statistics_uses_every_full_batch(n, batch_size, used):
    net, x = _net(), torch.randn(n, 6) * 2 + 1
    batches = [x[i * batch_size : (i + 1) * batch_size] for i in range(used)]
    _assert_statistics(population_statistics(net, x, batch_size, seed=None),
                       _expected_statistics(net, batches))


@pytest.mark.parametrize("seed", [0, 3])
def test_population_statistics_draws_random_batches_with_the_seed(seed):
    # Algorithm 2 averages over training mini-batches, which are random ones
    net, x, m = _net(), torch.randn(70, 6) * 2 + 1, 16
    order = torch.randperm(70, generator=generator(seed))[:64]
    _assert_statistics(population_statistics(net, x, m, seed=seed),
                       _expected_statistics(net, x[order].split(m)))


def test_population_statistics_of_sorted_data_needs_the_shuffle():
    # data sorted by a feature (as MNIST's files are, roughly, by writer): batches cut in
    # order each hold similar values, so their variances underestimate the population's
    torch.manual_seed(1)
    net = nn.Sequential(nn.BatchNorm1d(1))
    x = torch.randn(6000, 1).sort(0).values
    truth = x.double().var()
    ordered = population_statistics(net, x, 60, seed=None)["0"][1]
    shuffled = population_statistics(net, x, 60)["0"][1]
    assert ordered < 0.01 * truth
    assert abs(shuffled / truth - 1) < 0.05


def test_population_statistics_of_a_cnn():
    # per channel, over the batch and every pixel: m = batch_size * H * W
    net, x = _cnn(), torch.randn(24, 2, 7, 7) * 2 + 1
    stats = population_statistics(net, x, batch_size=8, seed=None)
    assert [v[0].shape for v in stats.values()] == [(3,), (4,)]
    _assert_statistics(stats, _expected_statistics(net, x.split(8)))


@pytest.mark.parametrize("batch_size", [1, 0, 65])
def test_population_statistics_rejects_a_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be between 2 and 64"):
        population_statistics(_net(), torch.randn(64, 6), batch_size=batch_size)


# --- McNemar's test -----------------------------------------------------------------------


def test_mcnemar_counts_the_disagreements():
    a = torch.tensor([1, 1, 0, 0, 1, 1, 1, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 0, 0, 1, 0], dtype=torch.bool)
    got = mcnemar(a, b)
    assert (got["only_a"], got["only_b"]) == (3, 1)
    assert got["z"] == pytest.approx(2 / 2)
    assert mcnemar(b, a)["z"] == pytest.approx(-1.0)
    assert mcnemar(a, a) == {"only_a": 0, "only_b": 0, "z": 0.0}


def test_mcnemar_z_is_standard_normal_for_equal_classifiers():
    # two classifiers that are right on each example with the same probability:
    # z falls outside +-2 about 5% of the time
    g = generator(0)
    zs = torch.tensor([mcnemar(torch.rand(2000, generator=g) < 0.9,
                               torch.rand(2000, generator=g) < 0.9)["z"] for _ in range(400)])
    assert abs(zs.mean()) < 0.2 and abs(zs.std() - 1) < 0.15
    assert 0.01 < (zs.abs() > 2).float().mean() < 0.1


def test_mcnemar_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="one entry per example"):
        mcnemar(torch.ones(5, dtype=torch.bool), torch.ones(4, dtype=torch.bool))


def test_batch_statistics():
    x = torch.randn(5, 3, 4, 2, dtype=torch.float64)
    mean, var, m = batch_statistics(x)
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False))
    assert m == 40


@pytest.mark.parametrize("make", [_net, _cnn])
def test_set_statistics(make):
    net = make()
    x = torch.randn(32, 6) if make is _net else torch.randn(32, 2, 7, 7)
    stats = population_statistics(net, x, batch_size=16)
    assert set_statistics(net, stats) is net
    for name, bn in batchnorm_layers(net).items():
        torch.testing.assert_close(bn.running_mean, stats[name][0].float())
        torch.testing.assert_close(bn.running_var, stats[name][1].float())


def test_batchnorm_layers_finds_ours_and_torchs():
    assert list(batchnorm_layers(_net())) == ["1", "4"]
    assert [type(m) for m in batchnorm_layers(_cnn()).values()] == [nn.BatchNorm2d,
                                                                    layers.BatchNorm2d]


# --- moving averages --------------------------------------------------------------------


def _copies_with(momenta, make):
    copies = {}
    for mom in momenta:
        copies[mom] = make()
        for bn in batchnorm_layers(copies[mom]).values():
            bn.momentum = mom
    return copies


@pytest.mark.parametrize("make", [_net, _cnn])
def test_moving_averages_match_torch(make):
    momenta = [0.5, 0.1, None]
    net = make()
    x = torch.randn(40, 6) * 2 + 1 if make is _net else torch.randn(40, 2, 7, 7) * 2 + 1
    copies = _copies_with(momenta, make)
    with MovingAverages(net, momenta) as tracker, torch.no_grad():
        for i in range(0, 40, 8):
            if i == 16:
                net.eval()(x)  # eval-mode passes are not tracked
                net.train()
                with tracker.paused():
                    population_statistics(net, x, batch_size=8)  # nor paused training ones
                # nor a copy of the net, which carries the hooks along (chapter 4
                # evaluates copies with other statistics while the tracker runs)
                copy.deepcopy(net).eval()(-x)
            net(x[i : i + 8])  # tracked, before the pause and after it
            for twin in copies.values():
                twin(x[i : i + 8])
    for mom in momenta:
        stats = tracker.statistics(mom)
        assert stats.keys() == batchnorm_layers(net).keys()
        for name, (mean, var) in stats.items():
            bn = batchnorm_layers(copies[mom])[name]
            torch.testing.assert_close(mean, bn.running_mean)
            torch.testing.assert_close(var, bn.running_var)
    assert all(len(bn._forward_pre_hooks) == 0 for bn in batchnorm_layers(net).values())


def test_moving_averages_statistics_are_copies():
    net = _net()
    with MovingAverages(net, [0.1]) as tracker, torch.no_grad():
        net(torch.randn(8, 6))
        stats = tracker.statistics(0.1)
        net(torch.randn(8, 6))
    assert not torch.equal(stats["1"][0], tracker.statistics(0.1)["1"][0])


# --- accuracy with batch statistics -----------------------------------------------------


def _classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _batches_seen(model, x, y, batch_size, seed=None):
    """The accuracy, and the batches that the copy of ``model`` normalized."""
    seen = []
    # the hook's list is shared by the copy that accuracy_with_batch_statistics makes
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        accuracy = accuracy_with_batch_statistics(model, x, y, batch_size, seed=seed)
    finally:
        handle.remove()
    return accuracy, seen


def _expected_accuracy(model, x, y, batches):
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        correct = sum((model(x[i]).argmax(1) == y[i]).sum().item() for i in batches)
    return correct / sum(len(y[i]) for i in batches)


def test_accuracy_with_batch_statistics_uses_each_batch_and_leaves_the_model():
    model = _classifier().eval()
    x, y = torch.randn(70, 4), torch.randint(0, 3, (70,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    accuracy, seen = _batches_seen(model, x, y, 32)
    # in order, and the last 6 examples (a partial batch) left out of the count
    assert [len(b) for b in seen] == [32, 32]
    torch.testing.assert_close(torch.cat(seen), x[:64], rtol=0, atol=0)
    assert accuracy == _expected_accuracy(model, x, y, [slice(0, 32), slice(32, 64)])
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("seed", [0, 1])
def test_accuracy_with_batch_statistics_shuffles_with_the_seed(seed):
    model = _classifier()
    x, y = torch.randn(70, 4), torch.randint(0, 3, (70,))
    torch.manual_seed(seed + 1)  # the global generator is not the one to use
    accuracy, seen = _batches_seen(model, x, y, 32, seed=seed)
    order = torch.randperm(70, generator=generator(seed))
    torch.testing.assert_close(torch.cat(seen), x[order[:64]], rtol=0, atol=0)
    assert accuracy == _expected_accuracy(model, x, y, [order[:32], order[32:64]])


def test_moving_averages_during_training_with_gradients():
    # record_inputs hands over detached inputs: the statistics hold no autograd graph
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with MovingAverages(net, [0.1, None]) as tracker:
        for _ in range(3):
            opt.zero_grad()
            net(torch.randn(8, 6)).square().sum().backward()
            opt.step()
    for mom in (0.1, None):
        for mean, var in tracker.statistics(mom).values():
            assert not mean.requires_grad and not var.requires_grad
    assert tracker.count == {"1": 3, "4": 3}
