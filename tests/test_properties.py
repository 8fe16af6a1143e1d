"""Property-based tests: BN forward and backward (bnutils.bn, bnutils.layers) and the
modules (bnutils.layers, bnutils.norms) against torch.nn, on inputs that hypothesis
draws: shapes, dtypes, offsets up to 1e4 and scales from 1e-2 to 1e2.

The tolerances follow the conditioning of the input. A float32 value of 1e4 is only
known to about 1e-3, so normalizing data of offset ``mu`` and spread ``s`` cannot be
more accurate than about ``eps_dtype * (1 + |mu| / s)``, whoever computes it: the
modules are held to that. ``bnutils.bn`` does better (it corrects its mean, see
``batchnorm_forward``), and is held to a bound that does not grow with the offset.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from bnutils.bn import batchnorm_backward, batchnorm_backward_staged, batchnorm_forward
from bnutils.layers import BatchNorm1d, BatchNorm2d, batch_norm
from bnutils.norms import BatchRenorm, GhostBatchNorm, GroupNorm, LayerNorm

# a fixed set of examples per test (reproducible in CI), small enough for ~1 s each
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
EPS = {np.float32: 2.0**-23, np.float64: 2.0**-52}
TORCH = {np.float32: torch.float32, np.float64: torch.float64}


@st.composite
def problems(draw, ndim=None, dtypes=(np.float32, np.float64), max_offset=1e4):
    """A batch ``x`` (float64 values that the dtype holds exactly), gamma, beta, an
    upstream gradient ``dy``, the dtype and the condition number ``1 + |offset| / scale``."""
    ndim = draw(st.sampled_from([2, 4])) if ndim is None else ndim
    if ndim == 2:
        shape = (draw(st.integers(2, 24)), draw(st.integers(1, 6)))
    else:
        shape = tuple(draw(st.integers(1, 4)) for _ in range(4))
        if shape[0] * shape[2] * shape[3] < 2:  # one value per channel: no batch statistics
            shape = (2, *shape[1:])
    dtype = draw(st.sampled_from(dtypes))
    offset = draw(st.sampled_from([0.0, max_offset, -max_offset]) | st.floats(-max_offset, max_offset))
    scale = 10.0 ** draw(st.floats(-2, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    per_feature = (1, shape[1]) + (1,) * (ndim - 2)
    # features far apart (offset, -offset, 0): statistics must not mix them
    offsets = offset * rng.choice([1.0, -1.0, 0.0], per_feature)
    x = offsets + scale * rng.uniform(0.5, 2.0, per_feature) * rng.standard_normal(shape)
    x = x.astype(dtype).astype(np.float64)
    gamma = rng.uniform(-2, 2, shape[1]).astype(dtype).astype(np.float64)
    beta = rng.standard_normal(shape[1]).astype(dtype).astype(np.float64)
    dy = rng.standard_normal(shape).astype(dtype).astype(np.float64)
    return x, gamma, beta, dy, dtype, 1 + abs(offset) / scale


def _reference(x, gamma, beta, dy, eps=1e-5):
    """torch.nn.functional.batch_norm in float64: the output and the three gradients.

    BN does not change when a constant is added to a feature, so it is computed on x
    minus (about) its mean: float64 of a centred batch is accurate to a few ulps, while
    at an offset of 1e4 and a spread of 1e-2 its own rounding would be ~1e6 times larger.
    """
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    x = x - x.mean(axis=axes, keepdims=True)  # exact: x and its mean are within 2x
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, gamma, beta)]
    y = F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], training=True, eps=eps)
    return [y.detach().numpy()] + [g.numpy() for g in torch.autograd.grad(y, leaves, torch.tensor(dy))]


def _close(got, expected, tol):
    """max |got - expected| <= tol * max |expected| (and <= tol where expected is 0)."""
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max(initial=0) <= tol * max(np.abs(expected).max(initial=0), 1)


# --- bnutils.bn: Algorithm 1 and its gradients in NumPy ---------------------------------


@PROPERTY
@given(problems())
def test_numpy_forward_is_accurate_at_any_offset(problem):
    x, gamma, beta, dy, dtype, _ = problem
    y, cache = batchnorm_forward(x.astype(dtype), gamma.astype(dtype), beta.astype(dtype))
    assert y.dtype == dtype
    # the mean correction keeps the output accurate whatever the offset
    _close(y, _reference(x, gamma, beta, dy)[0], 64 * EPS[dtype])
    axes = cache["axes"]
    _close(cache["mean"], x.mean(axis=axes), 4 * EPS[dtype])


@PROPERTY
@given(problems(dtypes=(np.float64,)), st.sampled_from([batchnorm_backward, batchnorm_backward_staged]))
def test_numpy_backward_matches_autograd(problem, backward):
    x, gamma, beta, dy, dtype, cond = problem
    grads = backward(dy, batchnorm_forward(x, gamma, beta)[1])
    for got, expected in zip(grads, _reference(x, gamma, beta, dy)[1:], strict=True):
        _close(got, expected, 1e3 * EPS[dtype])


@PROPERTY
@given(problems())
def test_numpy_backward_in_float32_is_close_to_float64(problem):
    x, gamma, beta, dy, dtype, cond = problem
    cache = batchnorm_forward(x.astype(dtype), gamma.astype(dtype), beta.astype(dtype))[1]
    grads = batchnorm_backward(dy.astype(dtype), cache)
    assert all(g.dtype == dtype for g in grads)
    for got, expected in zip(grads, _reference(x, gamma, beta, dy)[1:], strict=True):
        _close(got, expected, 1e3 * EPS[dtype])


# --- bnutils.layers.batch_norm: the autograd Function ----------------------------------


@PROPERTY
@given(problems())
def test_function_matches_functional_batch_norm(problem):
    x, gamma, beta, dy, dtype, cond = problem
    leaves = [torch.tensor(a, dtype=TORCH[dtype], requires_grad=True) for a in (x, gamma, beta)]
    y = batch_norm(*leaves)
    assert y.dtype == TORCH[dtype]
    grads = torch.autograd.grad(y, leaves, torch.tensor(dy, dtype=TORCH[dtype]))
    expected = _reference(x, gamma, beta, dy)
    for got, exp in zip([y.detach(), *grads], expected, strict=True):
        _close(got.numpy(), exp, 1e3 * EPS[dtype] * cond)


# --- modules against torch.nn ------------------------------------------------------------


def _module_pair(ndim, dtype, **options):
    ours = (BatchNorm1d if ndim == 2 else BatchNorm2d)(options.pop("c"), dtype=dtype, **options)
    ref = (nn.BatchNorm1d if ndim == 2 else nn.BatchNorm2d)(ours.num_features, dtype=dtype,
                                                            **options)
    return ours, ref


@PROPERTY
@given(problems(), st.sampled_from([0.1, None, 0.0, 1.0, 0.5]), st.booleans(), st.booleans())
def test_modules_match_torch_through_training_and_eval(problem, momentum, affine, track):
    x, gamma, beta, dy, dtype, cond = problem
    tdtype = TORCH[dtype]
    ours, ref = _module_pair(x.ndim, tdtype, c=x.shape[1], momentum=momentum, affine=affine,
                             track_running_stats=track)
    if affine:
        with torch.no_grad():
            for module in (ours, ref):
                module.weight.copy_(torch.tensor(gamma))
                module.bias.copy_(torch.tensor(beta))
    tol = 1e3 * EPS[dtype] * cond
    # two training batches (the second shifted), then eval on the first
    for batch, train in ((x, True), (x[::-1].copy() + 1.0, True), (x, False)):
        xs = [torch.tensor(batch, dtype=tdtype, requires_grad=True) for _ in range(2)]
        ys = [m.train(train)(xi) for m, xi in zip((ours, ref), xs, strict=True)]
        assert ys[0].dtype == tdtype
        _close(ys[0].detach().numpy(), ys[1].detach().numpy(), tol)
        grads = [torch.autograd.grad(yi, xi, torch.tensor(dy, dtype=tdtype))[0]
                 for yi, xi in zip(ys, xs, strict=True)]
        _close(grads[0].numpy(), grads[1].numpy(), tol)
        assert ours.state_dict().keys() == ref.state_dict().keys()
        for key, value in ref.state_dict().items():
            _close(ours.state_dict()[key].numpy(), value.numpy(), tol)


@PROPERTY
@given(problems(max_offset=10.0, dtypes=(np.float32,)), st.sampled_from([torch.float16, torch.bfloat16]))
def test_modules_take_half_precision_input_like_torch(problem, half):
    x, gamma, beta, dy, _, cond = problem
    ours, ref = _module_pair(x.ndim, torch.float32, c=x.shape[1])
    xh = torch.tensor(x).to(half)
    for train in (True, False):
        ya, yb = ours.train(train)(xh), ref.train(train)(xh)
        assert ya.dtype == yb.dtype == half
        # one rounding of the output to half precision apart, at most
        ulp = 2.0**-10 if half == torch.float16 else 2.0**-7
        _close(ya.detach().float().numpy(), yb.detach().float().numpy(),
               2 * ulp + 1e2 * EPS[np.float32] * cond)
        for key, value in ref.state_dict().items():
            assert ours.state_dict()[key].dtype == value.dtype
            _close(ours.state_dict()[key].numpy(), value.numpy(), 1e2 * EPS[np.float32] * cond)


# --- bnutils.norms against torch.nn -------------------------------------------------------


def _forward_backward(layer, x, dy):
    x = x.clone().requires_grad_()
    y = layer(x)
    return y.detach().numpy(), torch.autograd.grad(y, x, dy)[0].numpy()


@PROPERTY
@given(problems(dtypes=(np.float64,)), st.data())
def test_group_and_layer_norm_match_torch(problem, data):
    x, _, _, dy, dtype, cond = problem
    x, dy = torch.tensor(x), torch.tensor(dy)
    c, pixels = x.shape[1], x[0, 0].numel()
    # a group of one value normalizes to 0, which torch computes as rounding noise
    assume(c * pixels >= 2)
    groups = data.draw(st.sampled_from([g for g in range(1, c + 1)
                                        if c % g == 0 and c // g * pixels >= 2]))
    pairs = [(GroupNorm(groups, c), nn.GroupNorm(groups, c)),
             (LayerNorm(x.shape[1:]), nn.LayerNorm(x.shape[1:]))]
    for ours, ref in pairs:
        ref.double(), ours.double()
        for got, expected in zip(_forward_backward(ours, x, dy), _forward_backward(ref, x, dy),
                                 strict=True):
            _close(got, expected, 1e3 * EPS[dtype] * cond)


@PROPERTY
@given(problems(dtypes=(np.float64,)), st.integers(2, 30))
def test_ghost_and_renorm_are_batch_norm_within_one_batch(problem, extra):
    # one virtual batch (virtual_batch_size >= N), and Batch Renorm during its warm-up
    x, _, _, dy, dtype, cond = problem
    x, dy = torch.tensor(x), torch.tensor(dy)
    ref = (nn.BatchNorm1d if x.ndim == 2 else nn.BatchNorm2d)(x.shape[1]).double()
    expected = _forward_backward(ref, x, dy)
    for layer in (GhostBatchNorm(x.shape[1], len(x) + extra - 2 if len(x) > 1 else extra),
                  BatchRenorm(x.shape[1], warmup=10)):
        layer.double()
        for got, exp in zip(_forward_backward(layer, x, dy), expected, strict=True):
            _close(got, exp, 1e3 * EPS[dtype] * cond)
        for name in ("running_mean", "running_var"):
            _close(getattr(layer, name).numpy(), getattr(ref, name).numpy(), 1e3 * EPS[dtype] * cond)


@pytest.mark.parametrize("ndim", [2, 4])
def test_problems_cover_large_offsets_and_both_dtypes(ndim):
    # the strategy itself: it must reach the offsets and dtypes the tests claim to cover
    seen = []

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(problems(ndim=ndim))
    def collect(problem):
        seen.append((problem[4], np.abs(problem[0]).max()))

    collect()
    assert {dtype for dtype, _ in seen} == {np.float32, np.float64}
    assert max(offset for _, offset in seen) > 5e3
