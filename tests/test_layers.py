"""bnutils.layers (chapter 4): BatchNorm1d/2d against torch.nn, and folding BN into a layer.

Algorithm 2 (bnutils.inference) is tested in test_inference.py.
"""

import itertools
import re
import warnings

import pytest
import torch
from torch import nn

from bnutils import layers

OPTIONS = list(itertools.product([0.1, None], [True, False], [True, False]))
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-11, "atol": 1e-11}}
SHAPES = {"1d": [(16, 5), (8, 5, 7)], "2d": [(6, 5, 4, 3)]}
CLASSES = {"1d": (layers.BatchNorm1d, nn.BatchNorm1d), "2d": (layers.BatchNorm2d, nn.BatchNorm2d)}


def raises(exc, message):
    """``pytest.raises`` for exactly ``message``: a changed word in an error is noticed."""
    return pytest.raises(exc, match=f"^{re.escape(message)}$")


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


@pytest.mark.parametrize(("cls", "shape", "message"), [
    (layers.BatchNorm1d, (4, 3, 2, 2), "expected 2D or 3D input (got 4D input)"),
    (layers.BatchNorm1d, (4,), "expected 2D or 3D input (got 1D input)"),
    (layers.BatchNorm2d, (4, 3), "expected 4D input (got 2D input)"),
    (layers.BatchNorm1d, (4, 7), "expected 3 features in dimension 1 of the input, got input "
                                 "of shape (4, 7)"),
    (layers.BatchNorm2d, (4, 2, 5, 5), "expected 3 features in dimension 1 of the input, got "
                                       "input of shape (4, 2, 5, 5)"),
])
def test_bad_input_raises(cls, shape, message):
    with raises(ValueError, message):
        cls(3)(torch.randn(shape))


@pytest.mark.parametrize(("cls", "shape"), [
    (layers.BatchNorm1d, (1, 3)), (layers.BatchNorm1d, (1, 3, 1)), (layers.BatchNorm2d, (1, 3, 1, 1)),
])
def test_batch_of_one(cls, shape):
    message = "Expected more than 1 value per channel when training"
    with raises(ValueError, f"{message}, got input size {shape}"):
        cls(3)(torch.randn(shape))
    with pytest.raises(ValueError, match=message):  # torch.nn says the same
        getattr(nn, cls.__name__)(3)(torch.randn(shape))
    with pytest.raises(ValueError, match=message):  # no running statistics: batch ones in eval
        cls(3, track_running_stats=False).eval()(torch.randn(shape))
    bn = cls(3).eval()
    x = torch.randn(shape)
    torch.testing.assert_close(bn(x), x / (1 + bn.eps) ** 0.5)
    cls(3)(torch.randn(2, *shape[1:]))  # a batch of two, or one image of 2 pixels, is fine
    x = torch.randn(2, 3)
    torch.testing.assert_close(layers.batch_norm(x, torch.ones(3), torch.zeros(3)),
                               nn.functional.batch_norm(x, None, None, training=True))


def test_bad_momentum():
    with raises(ValueError, "momentum must be in [0, 1] or None, got 1.5"):
        layers.BatchNorm1d(3, momentum=1.5)
    with raises(ValueError, "momentum must be in [0, 1] or None, got -0.1"):
        layers.BatchNorm1d(3, momentum=-0.1)


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_momentum_at_the_ends_of_its_range(momentum):
    # 0: the running statistics never move; 1: they are the last batch's
    torch.manual_seed(0)
    ours, ref = _pair("1d", torch.float64, momentum=momentum)
    for _ in range(3):
        _compare(ours.train(), ref.train(), 2.0 * torch.randn(16, 5, dtype=torch.float64) + 1,
                 TOL[torch.float64])
    assert ours.running_mean.eq(0).all() == (momentum == 0.0)


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_defaults_are_torchs(kind):
    # Low-variance input, so that a different eps shows (sigma^2 = 1e-6, eps = 1e-5), and
    # several batches, so that a different momentum shows in the running statistics.
    ours_cls, torch_cls = CLASSES[kind]
    ours, ref = ours_cls(5), torch_cls(5)
    assert (ours.eps, ours.momentum, ours.affine, ours.track_running_stats) == (
        ref.eps, ref.momentum, ref.affine, ref.track_running_stats)
    shape = SHAPES[kind][0]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = 1 + 1e-3 * torch.randn(shape, generator=g, dtype=torch.float64)
        _compare(ours.double().train(), ref.double().train(), x, TOL[torch.float64])
    _compare(ours.eval(), ref.eval(), x, TOL[torch.float64])


def test_reset_parameters():
    bn = layers.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.fill_(2.0)
        bn.bias.fill_(-1.0)
    bn(torch.randn(4, 3, 2, 2) + 5)
    bn.reset_parameters()
    assert bn.weight.eq(1).all() and bn.bias.eq(0).all()
    assert bn.running_mean.eq(0).all() and bn.running_var.eq(1).all()
    assert bn.num_batches_tracked.item() == 0
    for options in ({"affine": False}, {"track_running_stats": False}):
        bare = layers.BatchNorm2d(3, **options)
        bare.reset_parameters()  # nothing to reset, and no error
        assert bare.state_dict().keys() == nn.BatchNorm2d(3, **options).state_dict().keys()


def test_without_running_statistics_the_buffers_are_none():
    bn = layers.BatchNorm1d(3, track_running_stats=False)
    assert bn.running_mean is None and bn.running_var is None
    assert bn.num_batches_tracked is None
    bn.reset_running_stats()  # nothing to reset, and no error
    assert dict(bn.named_buffers()) == {}


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(("kind", "shape"), [("1d", (0, 5)), ("1d", (0, 5, 7)), ("1d", (4, 5, 0)),
                                             ("2d", (0, 5, 4, 3))])
def test_empty_batch_leaves_the_running_statistics(kind, shape, momentum):
    torch.manual_seed(0)
    ours, ref = _pair(kind, torch.float32, momentum=momentum)
    full = (8, 5) + shape[2:] if shape[0] == 0 else (8, 5, 3)
    _compare(ours, ref, torch.randn(full), TOL[torch.float32])
    before = ours.running_mean.clone(), ours.running_var.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.nn does not warn either
        y = ours(torch.randn(shape))
    assert y.shape == shape
    torch.testing.assert_close((ours.running_mean, ours.running_var), before, rtol=0, atol=0)
    # torch.nn counts the empty batch all the same: the state dicts agree, then and after
    ref(torch.randn(shape))
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)
    _compare(ours, ref, torch.randn(full), TOL[torch.float32])
    _compare(ours.eval(), ref.eval(), torch.randn(shape), TOL[torch.float32])


HALF = [torch.float16, torch.bfloat16]
HALF_TOL = {torch.float16: {"rtol": 2e-3, "atol": 4e-3}, torch.bfloat16: {"rtol": 1e-2, "atol": 3e-2}}


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_half_precision_input_to_a_float32_layer(kind, dtype):
    # what torch.autocast produces: float32 parameters and buffers, half-precision input
    torch.manual_seed(0)
    ours, ref = _pair(kind, torch.float32)
    for shape in SHAPES[kind]:
        for train in (True, False, True):
            x = (3.0 + 2.0 * torch.randn(shape)).to(dtype)
            ya, yb = ours.train(train)(x.requires_grad_()), ref.train(train)(x)
            assert ya.dtype == yb.dtype == dtype
            torch.testing.assert_close(ya, yb, **HALF_TOL[dtype])
            (dx,) = torch.autograd.grad(ya.float().square().sum(), x)
            assert dx.dtype == dtype
            for key, value in ref.state_dict().items():  # float32, and computed in float32
                assert ours.state_dict()[key].dtype == value.dtype
                torch.testing.assert_close(ours.state_dict()[key], value, rtol=1e-5, atol=1e-5)


def test_under_autocast_like_torch():
    torch.manual_seed(0)
    linear = nn.Linear(6, 5)
    ours, ref = _pair("1d", torch.float32)
    x = torch.randn(32, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya, yb = ours(linear(x)), ref(linear(x))
    assert ya.dtype == yb.dtype == torch.bfloat16
    torch.testing.assert_close(ya, yb, **HALF_TOL[torch.bfloat16])
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-5)


def test_half_precision_layer():
    # a layer converted with .half() keeps float16 buffers, updated from float32 statistics
    ours, ref = _pair("2d", torch.float32)
    ours, ref = ours.half(), ref.half()
    x = (3.0 + 2.0 * torch.randn(6, 5, 4, 3)).half()
    torch.testing.assert_close(ours(x), ref(x), **HALF_TOL[torch.float16])
    assert ours.running_var.dtype == torch.float16
    torch.testing.assert_close(ours.running_var, ref.running_var, **HALF_TOL[torch.float16])


# --- folding --------------------------------------------------------------------------


def _trained_bn(bn_cls, n, x):
    """A BN layer with non-trivial gamma, beta and running statistics, in eval mode."""
    bn = bn_cls(n, momentum=None, device=x.device, dtype=x.dtype)
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


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_fold_conv2d_keeps_padding_mode_and_dtype(padding_mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode=padding_mode, dtype=torch.float64)
    u = torch.randn(8, 3, 6, 6, dtype=torch.float64) * 2 + 1
    bn = _trained_bn(nn.BatchNorm2d, 4, conv(u).detach())
    folded = layers.fold_batchnorm(conv, bn)
    assert folded.padding_mode == padding_mode and folded.weight.dtype == torch.float64
    torch.testing.assert_close(folded(u), bn(conv(u)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: nn.Linear(6, 4), lambda: nn.Conv2d(3, 4, 3)])
def test_fold_does_not_draw_from_the_global_generator(make):
    layer, bn = make(), _trained_bn(nn.BatchNorm1d, 4, torch.randn(16, 4)).eval()
    torch.manual_seed(0)
    expected = torch.rand(5)
    torch.manual_seed(0)
    layers.fold_batchnorm(layer, bn)
    torch.testing.assert_close(torch.rand(5), expected, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda():
    # the device= arguments only matter off the CPU: folded layers and buffers stay there
    cuda = torch.device("cuda")
    bn = layers.BatchNorm1d(4, device=cuda)
    assert {t.device.type for t in bn.state_dict().values()} == {"cuda"}
    x = torch.randn(16, 4, device=cuda)
    ref = nn.BatchNorm1d(4, device=cuda)
    _compare(bn, ref, x, TOL[torch.float32])
    _compare(bn, ref, x.half(), HALF_TOL[torch.float16])
    bn.eval()
    for layer in (nn.Linear(6, 4, device=cuda), nn.Conv2d(3, 4, 3, device=cuda)):
        folded = layers.fold_batchnorm(layer, bn)
        assert {p.device.type for p in folded.parameters()} == {"cuda"}


def test_fold_errors():
    linear = nn.Linear(4, 3)
    with raises(ValueError, "bn is in training mode, where it normalizes with batch statistics "
                            "that no fixed layer can reproduce; call bn.eval() first"):
        layers.fold_batchnorm(linear, nn.BatchNorm1d(3))
    with raises(ValueError, "bn has no running statistics (track_running_stats=False): it "
                            "always normalizes with batch statistics, so it cannot be folded"):
        layers.fold_batchnorm(linear, layers.BatchNorm1d(3, track_running_stats=False).eval())
    with raises(ValueError, "bn normalizes 3 features but layer has 5 outputs"):
        layers.fold_batchnorm(nn.Linear(4, 5), nn.BatchNorm1d(3).eval())
    with raises(TypeError, "layer must be nn.Linear or nn.Conv2d, got Conv1d"):
        layers.fold_batchnorm(nn.Conv1d(4, 3, 1), nn.BatchNorm1d(3).eval())
    with raises(TypeError, "bn must be a BatchNorm layer, got LayerNorm"):
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


def test_fold_sequential_with_a_pair_at_the_end():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), layers.BatchNorm1d(4))
    x = torch.randn(32, 6)
    with torch.no_grad():
        net(x)
    folded = layers.fold_sequential(net.eval())
    assert [type(m) for m in folded] == [nn.Linear, nn.ReLU, nn.Linear]
    assert folded[0] is net[0]  # layers that are not folded are shared
    torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)
