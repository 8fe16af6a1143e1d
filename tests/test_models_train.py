"""bnutils.models and bnutils.train."""

import pytest
import torch
from torch import nn

from bnutils import data, models, train


def test_mlp_layout_without_and_with_bn():
    plain = models.mlp(hidden=(100, 100, 100))
    assert [type(m) for m in plain] == [nn.Linear, nn.Sigmoid] * 3 + [nn.Linear]
    bn = models.mlp(hidden=(100, 100, 100), norm=nn.BatchNorm1d)
    assert [type(m) for m in bn][:3] == [nn.Linear, nn.BatchNorm1d, nn.Sigmoid]
    # the layer before BN has no bias: BN's beta subsumes it
    assert all(m.bias is None for m in list(bn)[:-1] if isinstance(m, nn.Linear))
    assert bn(torch.randn(4, 784)).shape == (4, 10)


def test_mlp_with_the_norm_after_the_nonlinearity():
    after = models.mlp(hidden=(16, 8), norm=nn.BatchNorm1d, placement="after")
    assert [type(m) for m in after] == [nn.Linear, nn.Sigmoid, nn.BatchNorm1d] * 2 + [nn.Linear]
    # the bias is back: nothing else shifts the sigmoid's input
    assert all(m.bias is not None for m in after if isinstance(m, nn.Linear))
    assert [m.num_features for m in after if isinstance(m, nn.BatchNorm1d)] == [16, 8]
    with pytest.raises(ValueError, match="placement"):
        models.mlp(norm=nn.BatchNorm1d, placement="inside")


def test_mlp_gaussian_init():
    torch.manual_seed(0)
    net = models.mlp(hidden=(500,), init_std=0.01)
    w = net[0].weight
    assert abs(w.std().item() - 0.01) < 5e-4 and abs(w.mean().item()) < 5e-4
    assert torch.count_nonzero(net[0].bias) == 0
    with pytest.raises(ValueError, match="activation"):
        models.mlp(activation="softsign")


def test_training_reduces_loss_and_logs():
    torch.manual_seed(0)
    x, y = data.mnist_tensors("train", subset=True)
    net = models.mlp(hidden=(64,), activation="relu", norm=nn.BatchNorm1d)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    logs, losses = train.train(net, opt, x, y, steps=200, batch_size=60, log_every=100,
                               on_log=lambda step, m: (step, train.accuracy(m, x, y)),
                               progress=False)
    assert [s for s, _ in logs] == [100, 200]
    assert losses[-20:].mean() < 0.5 * losses[:20].mean()
    assert logs[-1][1] > 0.8 and net.training  # training mode restored after logging
