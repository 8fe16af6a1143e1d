"""bnutils.ablation: BN's pieces switched on and off, and k MLPs trained side by side
exactly as each would train alone."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bnutils import ablation, batched
from bnutils.train import train


def _data(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 2.0 + 3.0 * torch.randn(n, 784, generator=g)
    return x, torch.randint(0, 10, (n,), generator=g)


def test_full_partial_batch_norm_is_batch_norm():
    x, _ = _data(64)
    x = x[:, :20]
    ours = ablation.PartialBatchNorm(20)
    torch.testing.assert_close(ours(x), F.batch_norm(x, None, None, training=True))


def test_each_piece_does_what_it_says():
    x, _ = _data(256)
    x = x[:, :10]
    mean_only = ablation.PartialBatchNorm(10, scale=False)(x)
    var_only = ablation.PartialBatchNorm(10, center=False)(x)
    torch.testing.assert_close(mean_only, x - x.mean(0))
    torch.testing.assert_close(var_only.std(0, correction=0), torch.ones(10), rtol=0, atol=1e-4)
    assert (var_only.mean(0) - x.mean(0) / x.std(0, correction=0)).abs().max() < 1e-4
    frozen = ablation.PartialBatchNorm(10, learn_gamma=False, learn_beta=False)
    assert not frozen.gamma.requires_grad and not frozen.beta.requires_grad
    bias_only = ablation.PartialBatchNorm(10, center=False, scale=False, learn_gamma=False)
    torch.testing.assert_close(bias_only(x), x)


def test_after_places_the_norm_after_each_sigmoid():
    model = ablation.StackedPieces([ablation.VARIANTS["BN after sigmoid"]], seeds=[0])
    kinds = [type(m).__name__ for m in model.net(0)]
    assert kinds == ["Linear", "Sigmoid", "PartialBatchNorm"] * 3 + ["Linear"]
    assert model.net(0)[0].bias is not None


def test_stacked_nets_start_as_the_single_nets():
    pieces = list(ablation.VARIANTS.values())
    model = ablation.StackedPieces(pieces, seeds=range(len(pieces)))
    x, _ = _data(50)
    logits = model(x)
    for i in range(len(pieces)):
        torch.testing.assert_close(logits[i], model.net(i)(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x[None].expand(len(pieces), -1, -1))[i], logits[i])


def test_stacked_training_equals_training_each_net_alone():
    """Same losses step by step and the same final weights, to float32 rounding, at a
    rate where no variant is unstable (instability would amplify the rounding)."""
    pieces = list(ablation.VARIANTS.values())
    lrs = [0.5, 0.3, 0.2, 0.5, 0.4, 0.1]
    model = ablation.StackedPieces(pieces, seeds=[3, 1, 2, 3, 0, 5])
    nets = [model.net(i) for i in range(len(pieces))]
    x, y = _data()
    losses = torch.from_numpy(
        batched.train_stacked(model, x, y, 15, lrs, progress=False)["losses"])
    for i, net in enumerate(nets):
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lrs[i])
        _, alone = train(net, opt, x, y, 15, 60, seed=model.seeds[i], progress=False)
        torch.testing.assert_close(losses[:, i], alone, rtol=1e-4, atol=1e-4)
        for a, b in zip(model.net(i).parameters(), net.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_frozen_parameters_stay_and_unused_biases_stay_zero():
    names = ["frozen gamma, beta", "BN", "BN after sigmoid"]
    model = ablation.StackedPieces([ablation.VARIANTS[n] for n in names], seeds=[0, 0, 0])
    x, y = _data()
    batched.train_stacked(model, x, y, 5, 1.0, progress=False)
    assert all((g[0] == 1).all() and (b[0] == 0).all()
               for g, b in zip(model.gammas, model.betas, strict=True))
    assert not (model.gammas[0][1] == 1).all()
    assert all((b[:2] == 0).all() and (b[2] != 0).any() for b in model.hidden_bias)


def test_accuracy_per_net_uses_the_statistics_of_the_whole_set():
    model = ablation.StackedPieces([ablation.VARIANTS["BN"]] * 2, seeds=[0, 1])
    x, y = _data(100)
    acc = batched.accuracy(model, x, y)
    assert acc.shape == (2,)
    logits = model.net(1)(x)
    assert acc[1] == pytest.approx((logits.argmax(1) == y).double().mean().item())


def test_bad_lengths_raise():
    with pytest.raises(ValueError, match="seeds needs one value per net"):
        ablation.StackedPieces([ablation.VARIANTS["BN"]] * 2, seeds=[0, 1, 2])


def test_no_module_state_is_shared_between_nets():
    model = ablation.StackedPieces([ablation.VARIANTS["BN"]] * 2, seeds=[0, 0])
    a, b = model.net(0), model.net(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert isinstance(a[0], nn.Linear) and a[0].weight is not b[0].weight
