"""bnutils.wide: k nets trained as one wide network equal k nets trained one by one."""

import numpy as np
import pytest
import torch
from torch import nn

from bnutils import data, models, norms, train, wide

K = 3
SINGLE_AND_WIDE = {
    "none": (None, None),
    "bn": (nn.BatchNorm1d, nn.BatchNorm1d),
    "layer norm": (norms.LayerNorm, lambda d: norms.GroupNorm(K, d)),
    "group norm": (lambda d: norms.GroupNorm(4, d), lambda d: norms.GroupNorm(4 * K, d)),
    "batch renorm": (lambda d: norms.BatchRenorm(d, warmup=2, ramp=3),
                     lambda d: norms.BatchRenorm(d, warmup=2, ramp=3)),
    "ghost bn": (lambda d: norms.GhostBatchNorm(d, 4), lambda d: norms.GhostBatchNorm(d, 4)),
}


def _nets(norm, activation="relu", seeds=range(K)):
    nets = []
    for s in seeds:
        torch.manual_seed(s)
        nets.append(models.mlp(784, (16, 12), 10, activation, norm=norm))
        with torch.no_grad():  # non-trivial gamma, beta so that slicing errors show
            for m in nets[-1]:
                for name in ("weight", "gamma", "bias", "beta"):
                    p = getattr(m, name, None)
                    if p is not None and not isinstance(m, nn.Linear):
                        p.uniform_(0.5, 1.5)
    return nets


@pytest.fixture(scope="module")
def mnist():
    return data.mnist_tensors("train", subset=True)


@pytest.mark.parametrize("kind", SINGLE_AND_WIDE)
def test_forward_matches_each_net(kind, mnist):
    single, wide_norm = SINGLE_AND_WIDE[kind]
    nets = _nets(single)
    model = wide.WideMLP(nets, wide_norm)
    x = mnist[0][:32]
    xs = torch.stack([x.roll(i, 0) for i in range(K)])  # a different batch per net
    out_shared, out_own = model(x), model(xs)
    for i, net in enumerate(nets):
        torch.testing.assert_close(out_shared[i], net(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out_own[i], net(xs[i]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", SINGLE_AND_WIDE)
def test_training_matches_separate_runs(kind, mnist):
    """Same losses, weights, running statistics; per-net rates and momentum."""
    single, wide_norm = SINGLE_AND_WIDE[kind]
    x, y = mnist
    lrs, seeds, steps = [0.05, 0.1, 0.2], [3, 4, 5], 8
    model = wide.WideMLP(_nets(single), wide_norm)
    _, losses, diverged = wide.train_wide(model, x, y, steps, 16, lrs, seeds, momentum=0.9,
                                          progress=False)
    assert losses.shape == (steps, K) and not diverged.any()
    for i, net in enumerate(_nets(single)):
        opt = torch.optim.SGD(net.parameters(), lr=lrs[i], momentum=0.9)
        _, ref = train.train(net, opt, x, y, steps, 16, seed=seeds[i], progress=False)
        np.testing.assert_allclose(losses[:, i], ref.numpy(), rtol=1e-4, atol=1e-5)
        got = model.net(i)
        for (name, a), b in zip(got.state_dict().items(), net.state_dict().values(),
                                strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)
        torch.testing.assert_close(got.eval()(x[:50]), net.eval()(x[:50]), atol=1e-4,
                                   rtol=1e-4)


def test_accuracy_per_net(mnist):
    x, y = mnist
    nets = _nets(nn.BatchNorm1d)
    model = wide.WideMLP(nets, nn.BatchNorm1d)
    got = wide.accuracy(model, x, y, batch_size=100)
    assert got == pytest.approx([train.accuracy(n, x, y) for n in nets])
    assert model.training


def test_a_diverging_net_leaves_the_others_alone(mnist):
    x, y = mnist
    lrs, seeds = [0.1, 1e6, 0.1], [0, 1, 2]
    model = wide.WideMLP(_nets(None, "relu"), None)
    _, losses, diverged = wide.train_wide(model, x, y, 30, 16, lrs, seeds, progress=False)
    assert diverged.tolist() == [False, True, False]
    for i in (0, 2):
        net = _nets(None, "relu")[i]
        _, ref = train.train(net, torch.optim.SGD(net.parameters(), lr=lrs[i]), x, y, 30, 16,
                             seed=seeds[i], progress=False)
        np.testing.assert_allclose(losses[:, i], ref.numpy(), rtol=1e-4, atol=1e-5)


def test_hidden_activations_and_bad_input():
    nets = _nets(nn.BatchNorm1d)
    model = wide.WideMLP(nets, nn.BatchNorm1d)
    x = torch.randn(20, 784)
    _, hidden = model(x, return_hidden=True)
    assert [h.shape for h in hidden] == [(K, 20, 16), (K, 20, 12)]
    torch.testing.assert_close(hidden[0][1], nets[1][1](nets[1][0](x)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="wide_norm"):
        wide.WideMLP(nets, None)
    with pytest.raises(ValueError, match="one seed per net"):
        wide.train_wide(model, x, torch.zeros(20, dtype=torch.long), 1, 4, 0.1, [0])


def test_mean_sd():
    mean, sd = wide.mean_sd([[1.0, 2.0], [3.0, 6.0]])
    assert mean.tolist() == [2.0, 4.0] and sd == pytest.approx([np.sqrt(2), np.sqrt(8)])


def test_clearly_less_needs_separated_ranges():
    assert wide.clearly_less([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert not wide.clearly_less([1.0, 1.5, 0.5], [2.0, 2.5, 1.5])  # 1.5 + ... overlaps
    assert not wide.clearly_less([2.0, 2.1, 1.9], [1.0, 1.1, 0.9])
