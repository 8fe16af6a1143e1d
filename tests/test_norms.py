"""The normalization layers of bnutils.norms against torch.nn and against batch norm."""

import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bnutils.norms import (
    BatchRenorm,
    GhostBatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    NoisyBatchNorm1d,
    PartialBatchNorm,
)

TOL = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture(autouse=True)
def double_precision():
    """Tight tolerances need float64; restore the default afterwards for other test files."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _randomize(*params):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g))


def _forward_backward(layer, x, w):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (w * y).sum().backward()
    return y.detach(), x.grad


def _assert_matches_torch(ours, ref, x, w):
    """Same output and input gradient; with affine parameters, the same gamma/beta gradients."""
    assert len(list(ours.parameters())) == len(list(ref.parameters()))  # affine or not
    if getattr(ours, "gamma", None) is not None:
        _randomize(ours.gamma, ours.beta)
        with torch.no_grad():
            ref.weight.copy_(ours.gamma)
            ref.bias.copy_(ours.beta)
    for a, b in zip(_forward_backward(ours, x, w), _forward_backward(ref, x, w), strict=True):
        torch.testing.assert_close(a, b, **TOL)
    if getattr(ours, "gamma", None) is not None:
        torch.testing.assert_close(ours.gamma.grad, ref.weight.grad, **TOL)
        torch.testing.assert_close(ours.beta.grad, ref.bias.grad, **TOL)


def _data(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(*shape, generator=g) + 1, torch.randn(*shape, generator=g)


@pytest.mark.parametrize("shape", [(8, 6), (4, 3, 5, 5)])
def test_layer_norm_matches_torch(shape):
    _assert_matches_torch(LayerNorm(shape[1:]), nn.LayerNorm(shape[1:]), *_data(*shape))


@pytest.mark.parametrize("groups, shape", [(1, (5, 6)), (3, (5, 6)), (2, (4, 6, 3, 3)),
                                           (6, (4, 6, 3, 3))])
def test_group_norm_matches_torch(groups, shape):
    _assert_matches_torch(GroupNorm(groups, shape[1]), nn.GroupNorm(groups, shape[1]),
                          *_data(*shape))


def test_group_norm_with_one_group_is_layer_norm_over_chw():
    x, _ = _data(4, 6, 3, 3)
    torch.testing.assert_close(GroupNorm(1, 6)(x), LayerNorm((6, 3, 3))(x), **TOL)


def test_instance_norm_matches_torch():
    _assert_matches_torch(InstanceNorm(3), nn.InstanceNorm2d(3), *_data(4, 3, 5, 5))
    _assert_matches_torch(InstanceNorm(3, eps=0.1, affine=True),
                          nn.InstanceNorm2d(3, eps=0.1, affine=True), *_data(4, 3, 5, 5))


def raises(message):
    """``pytest.raises(ValueError)`` for exactly ``message``."""
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


def test_bad_inputs_raise():
    with raises("num_channels (6) must be divisible by num_groups (4)"):
        GroupNorm(4, 6)
    with raises("GroupNorm expects input (N, 6, ...), got shape (3, 5)"):
        GroupNorm(2, 6)(torch.zeros(3, 5))
    with raises("InstanceNorm expects input (N, 6, ...), got shape (3,)"):
        InstanceNorm(6)(torch.zeros(3))
    with raises("BatchRenorm expects input (N, 3, ...), got shape (3, 5)"):
        BatchRenorm(3)(torch.zeros(3, 5))
    with raises("GhostBatchNorm expects input (N, 3, ...), got shape (3, 5)"):
        GhostBatchNorm(3, 4).eval()(torch.zeros(3, 5))
    with raises("LayerNorm expects input (..., (4,)), got shape (3, 5)"):
        LayerNorm(4)(torch.zeros(3, 5))
    with raises("need r_max >= 1 and d_max >= 0, got 0.5, 5.0"):
        BatchRenorm(3, r_max=0.5)
    with raises("need r_max >= 1 and d_max >= 0, got 3.0, -1"):
        BatchRenorm(3, d_max=-1)
    with raises("virtual_batch_size must be at least 2, got 1"):
        GhostBatchNorm(3, virtual_batch_size=1)
    # the limits themselves are fine
    BatchRenorm(3, r_max=1.0, d_max=0.0)
    GhostBatchNorm(3, virtual_batch_size=2)


@pytest.mark.parametrize("shape", [(16, 5), (8, 5, 3, 3)])
def test_batch_renorm_with_tight_limits_is_batch_norm(shape):
    x, w = _data(*shape)
    ours = BatchRenorm(5, warmup=10, ramp=10)  # r_max = 1, d_max = 0 during the warm-up
    assert ours.limits() == (1.0, 0.0)
    ref = nn.BatchNorm1d(5) if len(shape) == 2 else nn.BatchNorm2d(5)
    _randomize(ours.gamma, ours.beta)
    with torch.no_grad():
        ref.weight.copy_(ours.gamma)
        ref.bias.copy_(ours.beta)
    for a, b in zip(_forward_backward(ours, x, w), _forward_backward(ref, x, w), strict=True):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(ours.gamma.grad, ref.weight.grad, **TOL)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL)
    torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), **TOL)


def test_batch_renorm_at_running_statistics_equal_to_batch_statistics_is_batch_norm():
    x, w = _data(16, 5)
    ours, ref = BatchRenorm(5, r_max=3, d_max=5), nn.BatchNorm1d(5)
    with torch.no_grad():  # running statistics that match this batch: r = 1, d = 0
        ours.running_mean.copy_(x.mean(0))
        ours.running_var.copy_(x.var(0, unbiased=False))
    for a, b in zip(_forward_backward(ours, x, w), _forward_backward(ref, x, w), strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_batch_renorm_unclipped_uses_running_statistics_and_constant_r_d():
    x, w = _data(16, 5)
    layer = BatchRenorm(5, r_max=1e6, d_max=1e6)
    with torch.no_grad():
        layer.running_mean.copy_(torch.linspace(-1, 1, 5))
        layer.running_var.copy_(torch.linspace(0.5, 4, 5))
    mu, var = layer.running_mean.clone(), layer.running_var.clone()
    y, dx = _forward_backward(layer, x, w)
    # forward: the inference transform with the running statistics
    torch.testing.assert_close(y, (x - mu) / torch.sqrt(var + layer.eps), **TOL)
    # backward: r and d constant, i.e. BN's gradient scaled by r
    xr = x.clone().requires_grad_(True)
    std_b = torch.sqrt(xr.var(0, unbiased=False) + layer.eps)
    r = (std_b / torch.sqrt(var + layer.eps)).detach()
    d = ((xr.mean(0) - mu) / torch.sqrt(var + layer.eps)).detach()
    (w * ((xr - xr.mean(0)) / std_b * r + d)).sum().backward()
    torch.testing.assert_close(dx, xr.grad, **TOL)


def test_batch_renorm_schedule():
    layer = BatchRenorm(2, r_max=3, d_max=5, warmup=4, ramp=8)
    seen = []
    for _ in range(14):
        seen.append(layer.limits())
        layer(torch.randn(4, 2))
    assert seen[3] == (1.0, 0.0)
    assert seen[8] == pytest.approx((2.0, 2.5))
    assert seen[13] == (3.0, 5.0)


@pytest.mark.parametrize("shape", [(12, 5), (12, 5, 2, 2)])
def test_ghost_batch_norm_is_batch_norm_per_virtual_batch(shape):
    x, w = _data(*shape)
    ghost = GhostBatchNorm(5, virtual_batch_size=4)
    _randomize(ghost.gamma, ghost.beta)
    y, dx = _forward_backward(ghost, x, w)
    refs = [nn.BatchNorm1d(5) if len(shape) == 2 else nn.BatchNorm2d(5) for _ in range(3)]
    for i, ref in enumerate(refs):
        with torch.no_grad():
            ref.weight.copy_(ghost.gamma)
            ref.bias.copy_(ghost.beta)
        rows = slice(4 * i, 4 * i + 4)
        y_ref, dx_ref = _forward_backward(ref, x[rows], w[rows])
        torch.testing.assert_close(y[rows], y_ref, **TOL)
        torch.testing.assert_close(dx[rows], dx_ref, **TOL)
    mean_of = torch.stack([r.running_mean for r in refs]).mean(0)
    torch.testing.assert_close(ghost.running_mean, mean_of, **TOL)
    torch.testing.assert_close(ghost.running_var, torch.stack([r.running_var for r in refs]).mean(0),
                               **TOL)


def test_ghost_batch_norm_with_one_virtual_batch_is_batch_norm():
    x, w = _data(8, 5)
    ghost, ref = GhostBatchNorm(5, virtual_batch_size=8), nn.BatchNorm1d(5)
    for a, b in zip(_forward_backward(ghost, x, w), _forward_backward(ref, x, w), strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_ghost_batch_norm_refuses_a_last_virtual_batch_of_one():
    ghost = GhostBatchNorm(3, virtual_batch_size=4)
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training"
                                         r".*last virtual batch of \(9, 3\)"):
        ghost(torch.randn(9, 3))
    assert ghost.num_batches_tracked.item() == 0 and ghost.running_mean.eq(0).all()
    ghost(torch.randn(9, 3, 2, 2))  # the last batch holds 4 values per channel: fine
    ghost(torch.randn(10, 3))  # a last batch of two: fine


def test_batch_renorm_refuses_a_batch_of_one():
    with raises("Expected more than 1 value per channel when training, got input size (1, 3)"):
        BatchRenorm(3)(torch.randn(1, 3))
    BatchRenorm(3)(torch.randn(1, 3, 2, 1))  # two values per channel: fine


@pytest.mark.parametrize("make", [BatchRenorm, lambda c: GhostBatchNorm(c, virtual_batch_size=4)])
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 2, 2)])
def test_an_empty_batch_changes_nothing(make, shape):
    layer = make(3)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(shape, requires_grad=True)
    y = layer(x)
    assert y.shape == shape
    y.sum().backward()
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_defaults_are_torchs_on_low_variance_input():
    # sigma^2 = 1e-6 per group, so that eps = 1e-5 shows
    x, w = _data(4, 6, 3, 3)
    x = 1 + 1e-3 * x
    _assert_matches_torch(LayerNorm((6, 3, 3)), nn.LayerNorm((6, 3, 3)), x, w)
    _assert_matches_torch(GroupNorm(2, 6), nn.GroupNorm(2, 6), x, w)
    _assert_matches_torch(InstanceNorm(6), nn.InstanceNorm2d(6), x, w)
    _assert_matches_torch(LayerNorm(9), nn.LayerNorm(9), x.reshape(-1, 9), w.reshape(-1, 9))
    # during its warm-up Batch Renorm is BN; 4 examples are one virtual batch of 4
    for layer in (BatchRenorm(6, warmup=10), GhostBatchNorm(6, virtual_batch_size=4)):
        ref = nn.BatchNorm2d(6)
        for _ in range(3):  # the running statistics move by torch's default momentum
            for a, b in zip(_forward_backward(layer, x, w), _forward_backward(ref, x, w),
                            strict=True):
                torch.testing.assert_close(a, b, **TOL)
            x = x + 1e-3
        torch.testing.assert_close(layer.running_var, ref.running_var, **TOL)
        torch.testing.assert_close(layer.running_mean, ref.running_mean, **TOL)


@pytest.mark.parametrize("affine", [False, True])
def test_group_norm_affine_option_matches_torch(affine):
    ours, ref = GroupNorm(3, 6, affine=affine), nn.GroupNorm(3, 6, affine=affine)
    assert hasattr(ours, "gamma") == affine
    _assert_matches_torch(ours, ref, *_data(4, 6, 2, 2))


def test_batch_renorm_clips_r_and_d_at_both_ends():
    x, w = _data(16, 4)
    layer = BatchRenorm(4, r_max=2.0, d_max=0.5)
    mean, std = x.mean(0), torch.sqrt(x.var(0, unbiased=False) + layer.eps)
    with torch.no_grad():  # running statistics far off, in both directions, per feature
        layer.running_mean.copy_(mean + torch.tensor([10.0, -10.0, 10.0, -10.0]) * std)
        layer.running_var.copy_(torch.tensor([100.0, 100.0, 0.01, 0.01]) * std**2 - layer.eps)
    y, _ = _forward_backward(layer, x, w)
    r = torch.tensor([0.5, 0.5, 2.0, 2.0])  # 1 / r_max where sigma_B is small, r_max where large
    d = torch.tensor([-0.5, 0.5, -0.5, 0.5])
    torch.testing.assert_close(y, (x - mean) / std * r + d, **TOL)


def test_batch_renorm_default_limits():
    layer = BatchRenorm(3)
    assert layer.limits() == (3.0, 5.0)  # no warm-up and no ramp: the limits at once
    layer = BatchRenorm(3, r_max=2.0, d_max=1.0, ramp=4)
    assert layer.limits() == (1.0, 0.0)  # the ramp starts at plain BN
    layer = BatchRenorm(2, r_max=3.0, d_max=5.0, warmup=1, ramp=1)
    seen = []
    for _ in range(3):
        seen.append(layer.limits())
        layer(torch.randn(4, 2))
    assert seen == [(1.0, 0.0), (1.0, 0.0), (3.0, 5.0)]  # a ramp of one step


@pytest.mark.parametrize("make", [BatchRenorm, lambda c: GhostBatchNorm(c, virtual_batch_size=4)])
def test_eval_mode_uses_the_running_statistics(make):
    layer = make(5)  # here, not at collection: in float64
    x, w = _data(12, 5, 2, 2)
    _randomize(layer.gamma, layer.beta)
    layer(x + 2)
    mean, var = layer.running_mean.clone(), layer.running_var.clone()
    y, _ = _forward_backward(layer.eval(), x, w)
    s = (1, -1, 1, 1)
    expected = (x - mean.view(s)) / torch.sqrt(var.view(s) + layer.eps) * layer.gamma.view(s)
    torch.testing.assert_close(y, expected + layer.beta.view(s), **TOL)
    assert torch.equal(layer.running_mean, mean) and layer.num_batches_tracked.item() == 1


# --- BN taken apart (notebook 02) and BN with noise (notebook 08) ---------------------


def test_full_partial_batch_norm_is_batch_norm():
    x, _ = _data(64, 20)
    torch.testing.assert_close(PartialBatchNorm(20)(x), F.batch_norm(x, None, None, training=True),
                               **TOL)
    torch.testing.assert_close(PartialBatchNorm(20, eps=0.5)(x),
                               F.batch_norm(x, None, None, training=True, eps=0.5), **TOL)


def test_each_piece_of_partial_batch_norm_does_what_it_says():
    x, _ = _data(256, 10)
    mean_only = PartialBatchNorm(10, scale=False)
    var_only = PartialBatchNorm(10, center=False)
    torch.testing.assert_close(mean_only(x), x - x.mean(0), **TOL)
    # scaled by the spread around the mean: unit variance, the mean divided by sigma_B
    sigma = torch.sqrt(x.var(0, correction=0) + 1e-5)
    torch.testing.assert_close(var_only(x), x / sigma, **TOL)
    _randomize(mean_only.gamma, mean_only.beta)
    torch.testing.assert_close(mean_only(x), mean_only.gamma * (x - x.mean(0)) + mean_only.beta,
                               **TOL)
    frozen = PartialBatchNorm(10, learn_gamma=False, learn_beta=False)
    assert not frozen.gamma.requires_grad and not frozen.beta.requires_grad
    assert PartialBatchNorm(10).gamma.requires_grad and PartialBatchNorm(10).beta.requires_grad
    bias_only = PartialBatchNorm(10, center=False, scale=False, learn_gamma=False)
    torch.testing.assert_close(bias_only(x), x, **TOL)
    assert torch.equal(PartialBatchNorm(10).eval()(x), PartialBatchNorm(10)(x))  # no running stats


@pytest.mark.parametrize("per_example", [False, True], ids=["shared", "per-activation"])
def test_noisy_batch_norm_adds_the_noise_it_draws(per_example):
    """Training: BN, then the noise of shifts U(-a, a) and variances U(1, v) drawn from
    the layer's own generator, in that order; eval: BN alone."""
    x, _ = _data(32, 6)
    layer = NoisyBatchNorm1d(6, a=0.5, v=3.0, per_example=per_example, seed=7)
    reference = nn.BatchNorm1d(6)
    g = torch.Generator().manual_seed(7)
    for _ in range(2):  # new noise at every call
        y = reference(x)
        mu = 0.5 * (2 * torch.rand(6, generator=g) - 1)
        var = 1 + 2.0 * torch.rand(6, generator=g)
        if per_example:
            expected = y + mu + (var - 1).sqrt() * torch.randn(32, 6, generator=g)
        else:
            expected = var.sqrt() * y + mu
        torch.testing.assert_close(layer(x), expected, **TOL)
    torch.testing.assert_close(layer.bn.running_mean, reference.running_mean, **TOL)
    torch.testing.assert_close(layer.eval()(x), reference.eval()(x), **TOL)
    u, w, xi = layer.draw((32, 6))
    assert u.shape == w.shape == (6,) and xi.shape == ((32, 6) if per_example else (0,))


def test_noisy_batch_norm_moves_the_batch_statistics():
    x, _ = _data(4000, 50)
    means, variances = [], []
    for per_example in (False, True):
        layer = NoisyBatchNorm1d(50, a=1.0, v=4.0, per_example=per_example, seed=1)
        z = layer(x)
        means.append(z.mean(0))
        variances.append(z.var(0, correction=0))
    for mean, var in zip(means, variances, strict=True):  # per activation, over the batch
        assert mean.abs().max() < 1.05 and mean.abs().max() > 0.8
        assert var.min() > 0.9 and var.max() < 4.3 and var.max() > 3.0
    torch.testing.assert_close(means[0], means[1], rtol=0, atol=0.1)  # the same draws
    assert not torch.equal(NoisyBatchNorm1d(5, seed=1)(x[:, :5]), NoisyBatchNorm1d(5, seed=2)(x[:, :5]))


def test_noisy_batch_norm_defaults_are_santurkar_et_al_s():
    layer = NoisyBatchNorm1d(3)
    assert (layer.a, layer.v, layer.per_example) == (1.0, 4.0, False)
    # seed 0 by default: the draws of NoisyBatchNorm1d(3, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(layer.draw((2, 3)),
                                                  NoisyBatchNorm1d(3, seed=0).draw((2, 3)),
                                                  strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_noisy_batch_norm_on_cuda():
    # the noise is drawn on the CPU (the layer's generator) and moved to the activations
    for per_example in (False, True):
        layer = NoisyBatchNorm1d(4, per_example=per_example).cuda()
        assert layer(torch.randn(8, 4, device="cuda")).device.type == "cuda"
