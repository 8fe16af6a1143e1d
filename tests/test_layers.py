"""bnutils.layers (chapter 4): BatchNorm1d/2d against torch.nn, folding, Algorithm 2."""

import itertools

import pytest
import torch
from torch import nn

from bnutils import layers
from bnutils.inference import (
    MovingAverages,
    batchnorm_layers,
    population_statistics,
    set_statistics,
)

OPTIONS = list(itertools.product([0.1, None], [True, False], [True, False]))
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-11, "atol": 1e-11}}
SHAPES = {"1d": [(16, 5), (8, 5, 7)], "2d": [(6, 5, 4, 3)]}
CLASSES = {"1d": (layers.BatchNorm1d, nn.BatchNorm1d), "2d": (layers.BatchNorm2d, nn.BatchNorm2d)}


def _pair(kind, dtype, **options):
    ours_cls, torch_cls = CLASSES[kind]
    ours = ours_cls(5, dtype=dtype, **options)
    ref = torch_cls(5, dtype=dtype, **options)
    if ref.affine:  # non-trivial gamma, beta, the same in both
        with torch.no_grad():
            ref.weight.uniform_(0.5, 2.0)
            ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _compare(ours, ref, x, tol):
    """Forward and backward through both; outputs, input gradients and buffers must agree."""
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb, **tol)
    dy = torch.randn_like(ya)
    (ya * dy).sum().backward()
    (yb * dy).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    if ref.affine:
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **tol)
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, **tol)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["1d", "2d"])
@pytest.mark.parametrize(("momentum", "affine", "track"), OPTIONS)
def test_matches_torch_over_training_then_eval(kind, dtype, momentum, affine, track):
    torch.manual_seed(0)
    ours, ref = _pair(kind, dtype, momentum=momentum, affine=affine, track_running_stats=track)
    tol = TOL[dtype]
    for shape in SHAPES[kind]:
        for _ in range(4):  # several training batches, shifted and scaled
            x = 3.0 + 2.0 * torch.randn(shape, dtype=dtype)
            _compare(ours.train(), ref.train(), x, tol)
        x = 3.0 + 2.0 * torch.randn(shape, dtype=dtype)
        _compare(ours.eval(), ref.eval(), x, tol)
    if track:
        assert ours.num_batches_tracked.item() == 4 * len(SHAPES[kind])


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_state_dict_round_trip(kind):
    ours, ref = _pair(kind, torch.float32)
    ref.load_state_dict(ours.state_dict())
    ours_off, ref_off = _pair(kind, torch.float32, track_running_stats=False, affine=False)
    assert ours_off.state_dict().keys() == ref_off.state_dict().keys() == set()


def test_reset_running_stats():
    bn = layers.BatchNorm1d(3)
    bn(torch.randn(10, 3) + 5)
    bn.reset_running_stats()
    assert bn.running_mean.eq(0).all() and bn.running_var.eq(1).all()
    assert bn.num_batches_tracked.item() == 0


@pytest.mark.parametrize(("cls", "shape", "match"), [
    (layers.BatchNorm1d, (4, 3, 2, 2), "expected 2D or 3D input"),
    (layers.BatchNorm1d, (4,), "expected 2D or 3D input"),
    (layers.BatchNorm2d, (4, 3), "expected 4D input"),
    (layers.BatchNorm1d, (4, 7), "expected 3 features"),
    (layers.BatchNorm2d, (4, 2, 5, 5), "expected 3 features"),
])
def test_bad_input_raises(cls, shape, match):
    with pytest.raises(ValueError, match=match):
        cls(3)(torch.randn(shape))


@pytest.mark.parametrize(("cls", "shape"), [
    (layers.BatchNorm1d, (1, 3)), (layers.BatchNorm1d, (1, 3, 1)), (layers.BatchNorm2d, (1, 3, 1, 1)),
])
def test_batch_of_one(cls, shape):
    message = "Expected more than 1 value per channel when training"
    with pytest.raises(ValueError, match=message):
        cls(3)(torch.randn(shape))
    with pytest.raises(ValueError, match=message):  # torch.nn says the same
        getattr(nn, cls.__name__)(3)(torch.randn(shape))
    with pytest.raises(ValueError, match=message):  # no running statistics: batch ones in eval
        cls(3, track_running_stats=False).eval()(torch.randn(shape))
    bn = cls(3).eval()
    x = torch.randn(shape)
    torch.testing.assert_close(bn(x), x / (1 + bn.eps) ** 0.5)
    cls(3)(torch.randn(2, *shape[1:]))  # a batch of two, or one image of 2 pixels, is fine


def test_bad_momentum():
    with pytest.raises(ValueError, match="momentum"):
        layers.BatchNorm1d(3, momentum=1.5)


# --- folding --------------------------------------------------------------------------


def _trained_bn(bn_cls, n, x):
    """A BN layer with non-trivial gamma, beta and running statistics, in eval mode."""
    bn = bn_cls(n, momentum=None)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
        for _ in range(3):
            bn(x)
    return bn.eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bn_cls", [nn.BatchNorm1d, layers.BatchNorm1d])
def test_fold_linear(bias, bn_cls):
    torch.manual_seed(0)
    linear = nn.Linear(20, 8, bias=bias)
    u = torch.randn(64, 20) * 3 + 1
    bn = _trained_bn(bn_cls, 8, linear(u).detach())
    folded = layers.fold_batchnorm(linear, bn)
    u_test = torch.randn(32, 20)
    diff = (folded(u_test) - bn(linear(u_test))).abs().max().item()
    print(f"Linear bias={bias} {bn_cls.__module__}: max abs diff {diff:.2e}")
    assert diff < 1e-5
    assert folded.bias is not None and folded is not linear


@pytest.mark.parametrize(("bias", "groups", "stride", "padding", "dilation"), [
    (True, 1, 1, 0, 1), (False, 1, 2, 1, 1), (True, 2, 1, 2, 2), (False, 4, 2, 1, 1),
    (True, 8, 1, "same", 1),
])
def test_fold_conv2d(bias, groups, stride, padding, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, stride=stride, padding=padding, dilation=dilation,
                     groups=groups, bias=bias)
    u = torch.randn(16, 8, 9, 9) * 2 - 1
    for bn_cls in (nn.BatchNorm2d, layers.BatchNorm2d):
        bn = _trained_bn(bn_cls, 8, conv(u).detach())
        folded = layers.fold_batchnorm(conv, bn)
        assert (folded.stride, folded.padding, folded.groups) == (conv.stride, conv.padding, groups)
        u_test = torch.randn(4, 8, 9, 9)
        diff = (folded(u_test) - bn(conv(u_test))).abs().max().item()
        print(f"Conv2d groups={groups} stride={stride} padding={padding}: max abs diff {diff:.2e}")
        assert diff < 1e-5


def test_fold_without_affine_float64():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4, dtype=torch.float64)
    h = linear(torch.randn(30, 6, dtype=torch.float64) * 2 + 1).detach()
    u = torch.randn(5, 6, dtype=torch.float64)
    for bn in (layers.BatchNorm1d(4, affine=False, dtype=torch.float64),
               nn.BatchNorm1d(4, affine=False, dtype=torch.float64)):
        with torch.no_grad():
            bn(h)
        bn.eval()
        torch.testing.assert_close(layers.fold_batchnorm(linear, bn)(u), bn(linear(u)),
                                   rtol=1e-12, atol=1e-12)


def test_fold_errors():
    linear = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="training mode"):
        layers.fold_batchnorm(linear, nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="no running statistics"):
        layers.fold_batchnorm(linear, layers.BatchNorm1d(3, track_running_stats=False).eval())
    with pytest.raises(ValueError, match="3 features but layer has 5"):
        layers.fold_batchnorm(nn.Linear(4, 5), nn.BatchNorm1d(3).eval())
    with pytest.raises(TypeError, match="nn.Linear or nn.Conv2d"):
        layers.fold_batchnorm(nn.Conv1d(4, 3, 1), nn.BatchNorm1d(3).eval())
    with pytest.raises(TypeError, match="BatchNorm"):
        layers.fold_batchnorm(linear, nn.LayerNorm(3))


def test_fold_sequential():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), layers.BatchNorm2d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        net(x)
    net.eval()
    folded = layers.fold_sequential(net)
    assert len(folded) == len(net) - 2
    assert not any(isinstance(m, layers.BATCHNORM_TYPES) for m in folded)
    torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


# --- Algorithm 2 and moving averages ---------------------------------------------------


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5, bias=False), layers.BatchNorm1d(5), nn.Tanh(),
                         nn.Linear(5, 4, bias=False), nn.BatchNorm1d(4))


def test_population_statistics_is_algorithm_2():
    net, x, m = _net(), torch.randn(100, 6) * 2 + 1, 8
    before = {k: v.clone() for k, v in net.state_dict().items()}
    stats = population_statistics(net.eval(), x, batch_size=m)
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


def test_set_statistics():
    net, x = _net(), torch.randn(64, 6)
    stats = population_statistics(net, x, batch_size=16)
    set_statistics(net, stats)
    torch.testing.assert_close(net[4].running_var, stats["4"][1].float())
    with pytest.raises(ValueError, match="batch_size"):
        population_statistics(net, x, batch_size=1)


def test_moving_averages_match_torch():
    momenta = [0.5, 0.1, None]
    net, x = _net(), torch.randn(40, 6) * 2 + 1
    copies = {}
    for mom in momenta:
        copies[mom] = _net()
        for bn in batchnorm_layers(copies[mom]).values():
            bn.momentum = mom
    with MovingAverages(net, momenta) as tracker, torch.no_grad():
        for i in range(0, 40, 8):
            net(x[i : i + 8])
            for copy in copies.values():
                copy(x[i : i + 8])
        net.eval()(x)  # eval-mode passes are not tracked
        with tracker.paused():
            population_statistics(net, x, batch_size=8)  # nor paused training-mode ones
    for mom in momenta:
        for name, (mean, var) in tracker.statistics(mom).items():
            bn = batchnorm_layers(copies[mom])[name]
            torch.testing.assert_close(mean, bn.running_mean)
            torch.testing.assert_close(var, bn.running_var)
    assert len(net[1]._forward_pre_hooks) == 0  # hooks removed on exit


def test_accuracy_with_batch_statistics_uses_each_batch_and_leaves_the_model():
    from bnutils.inference import accuracy_with_batch_statistics

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = (model.train()(x[:32]).argmax(1) == y[:32]).sum().item()
        expected += (model(x[32:]).argmax(1) == y[32:]).sum().item()
    model.load_state_dict(before)
    model.eval()
    assert accuracy_with_batch_statistics(model, x, y, 32) == expected / 64
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    shuffled = accuracy_with_batch_statistics(model, x, y, 32, seed=1)
    assert shuffled == accuracy_with_batch_statistics(model, x, y, 32, seed=1)
