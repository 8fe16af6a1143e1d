"""Chapter 3: the backward pass of BN (NumPy staged and compact forms, BatchNormFunction).

Checked against centred finite differences, against torch.autograd on F.batch_norm, and
against each other; plus the structure of the gradient (sum zero, orthogonal to x_hat).
"""

import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bnutils.bn import batchnorm_backward, batchnorm_backward_staged, batchnorm_forward
from bnutils.layers import BatchNormAutograd, BatchNormFunction, batch_norm

torch.set_num_threads(1)
SHAPES = [(6, 3), (4, 3, 2, 2)]
BACKWARDS = [batchnorm_backward_staged, batchnorm_backward]


def problem(shape, seed=0, dtype=np.float64):
    """x with a non-zero mean and non-unit scale, gamma, beta and an upstream gradient dy."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.normal(size=shape) * 3 + 2).astype(dtype)
    gamma = rng.normal(size=c).astype(dtype)
    beta = rng.normal(size=c).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    return x, gamma, beta, dy


def numeric_grad(f, a, h=1e-5):
    """Centred finite differences of the scalar f() with respect to every entry of a."""
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        up = f()
        a[i] = old - h
        down = f()
        a[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad


def rel_error(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(a) + np.abs(b)), 1e-300)


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_finite_differences(shape, backward):
    x, gamma, beta, dy = problem(shape)

    def loss():  # l = sum(y * dy), so dl/dy = dy
        return np.sum(batchnorm_forward(x, gamma, beta)[0] * dy)

    dx, dgamma, dbeta = backward(dy, batchnorm_forward(x, gamma, beta)[1])
    for analytic, param in ((dx, x), (dgamma, gamma), (dbeta, beta)):
        assert rel_error(analytic, numeric_grad(loss, param)) < 1e-7


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("shape", SHAPES + [(32, 5), (8, 4, 3, 5)])
def test_matches_torch_autograd(shape, backward):
    x, gamma, beta, dy = problem(shape, seed=1)
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    yt = F.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-5)
    expected = torch.autograd.grad(yt, (xt, gt, bt), torch.tensor(dy))
    got = backward(dy, batchnorm_forward(x, gamma, beta, eps=1e-5)[1])
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("shape", SHAPES + [(64, 16), (16, 8, 5, 5)])
def test_staged_and_compact_agree(shape, dtype, tol):
    x, gamma, beta, dy = problem(shape, seed=2, dtype=dtype)
    cache = batchnorm_forward(x, gamma, beta)[1]
    staged, compact = batchnorm_backward_staged(dy, cache), batchnorm_backward(dy, cache)
    for s, c in zip(staged, compact, strict=True):
        assert c.dtype == dtype and c.shape == s.shape
        assert rel_error(s, c) < tol


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_dx_sums_to_zero_per_feature(shape, backward):
    x, gamma, beta, dy = problem(shape, seed=3)
    dx = backward(dy, batchnorm_forward(x, gamma, beta)[1])[0]
    axes = (0,) if dx.ndim == 2 else (0, 2, 3)
    assert np.max(np.abs(dx.sum(axis=axes))) < 1e-12 * np.max(np.abs(dx)) * dx.size


@pytest.mark.parametrize("shape", SHAPES)
def test_dx_orthogonal_to_x_hat(shape):
    x, gamma, beta, dy = problem(shape, seed=4)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    # exactly orthogonal when eps = 0 ...
    cache = batchnorm_forward(x, gamma, beta, eps=0.0)[1]
    dx, _, _ = batchnorm_backward(dy, cache)
    assert np.max(np.abs((dx * cache["x_hat"]).sum(axis=axes))) < 1e-12
    # ... and off by scale * dgamma * eps / (var + eps) otherwise
    eps = 0.5
    cache = batchnorm_forward(x, gamma, beta, eps=eps)[1]
    dx, dgamma, _ = batchnorm_backward(dy, cache)
    expected = gamma * cache["inv_std"] * dgamma * eps / (cache["var"] + eps)
    np.testing.assert_allclose((dx * cache["x_hat"]).sum(axis=axes), expected, rtol=1e-10)


def test_backward_rejects_bad_dy():
    x, gamma, beta, dy = problem((6, 3))
    cache = batchnorm_forward(x, gamma, beta)[1]
    for backward in BACKWARDS:
        with pytest.raises(ValueError, match="dy must have the shape"):
            backward(dy[:, :2], cache)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2, 3)])
def test_function_passes_gradcheck(shape):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_()
    gamma = torch.randn(shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(BatchNormFunction.apply, (x, gamma, beta, 1e-5))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("shape", [(32, 7), (8, 4, 5, 5)])
def test_function_matches_native(shape, dtype, tol):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 3 + 2).requires_grad_()
    gamma = torch.randn(shape[1], generator=g, dtype=dtype, requires_grad=True)
    beta = torch.randn(shape[1], generator=g, dtype=dtype, requires_grad=True)
    dy = torch.randn(shape, generator=g, dtype=dtype)
    ours = batch_norm(x, gamma, beta)
    native = F.batch_norm(x, None, None, gamma, beta, training=True)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, native, rtol=tol, atol=tol)
    grads = torch.autograd.grad(ours, (x, gamma, beta), dy)
    expected = torch.autograd.grad(native, (x, gamma, beta), dy)
    for a, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


def test_function_without_input_grad():
    x = torch.randn(16, 4, dtype=torch.float64)
    gamma = torch.rand(4, dtype=torch.float64, requires_grad=True)
    beta = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    (batch_norm(x, gamma, beta) ** 3).sum().backward()
    gamma_ref = gamma.detach().clone().requires_grad_()
    (F.batch_norm(x, None, None, gamma_ref, beta.detach(), training=True) ** 3).sum().backward()
    torch.testing.assert_close(gamma.grad, gamma_ref.grad)


def test_module_matches_batchnorm1d_in_training():
    x = torch.randn(20, 6) * 4 - 1
    ours, ref = BatchNormAutograd(6), nn.BatchNorm1d(6)
    torch.testing.assert_close(ours(x), ref(x))
    (ours(x) ** 2).sum().backward()
    (ref(x) ** 2).sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


def test_function_errors():
    gamma, beta = torch.ones(3), torch.zeros(3)
    def raises(message):
        return pytest.raises(ValueError, match=f"^{re.escape(message)}$")

    with raises("expected x of shape (N, D) or (N, C, H, W), got 3-d input of shape (4, 3, 5)"):
        batch_norm(torch.randn(4, 3, 5), gamma, beta)
    with raises("gamma must have shape (3,), one value per feature of x (4, 3); got (2,)"):
        batch_norm(torch.randn(4, 3), torch.ones(2), beta)
    with raises("beta must have shape (3,), one value per feature of x (4, 3); got (3, 1)"):
        batch_norm(torch.randn(4, 3), gamma, torch.zeros(3, 1))
    with raises("Expected more than 1 value per channel when training, got input of shape "
                "(1, 3)"):
        batch_norm(torch.randn(1, 3), gamma, beta)
    # the hand-written backward is not itself differentiable: say so instead of a wrong answer
    x, dy = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    (dx,) = torch.autograd.grad(batch_norm(x, gamma, beta), x, dy, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dx.sum().backward()


def _half_problem(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 4, 32, 32, generator=g) * 3 + 2).to(dtype)
    gamma = (torch.rand(4, generator=g) + 0.5).to(dtype)
    beta = torch.randn(4, generator=g).to(dtype)
    # an offset: sum(dy), dbeta, is about 2 * 64 * 32 * 32, beyond float16's range too
    dy = (2 + torch.randn(x.shape, generator=g)).to(dtype)
    return x, gamma, beta, dy


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_function_accumulates_half_precision_in_float32(dtype):
    # 64 * 32 * 32 squares of values near 4 sum to ~1e6: float16 overflows (max 65504)
    x, gamma, beta, dy = _half_problem(dtype)
    leaves = [t.double().requires_grad_() for t in (x, gamma, beta)]
    exact = F.batch_norm(leaves[0], None, None, *leaves[1:], training=True)
    exact_grads = torch.autograd.grad(exact, leaves, dy.double())

    def errors(fn):
        inputs = [t.clone().requires_grad_() for t in (x, gamma, beta)]
        y = fn(*inputs)
        grads = torch.autograd.grad(y, inputs, dy)
        assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
        return [((a.double() - e).abs().max() / e.abs().max()).item()
                for a, e in zip((y, *grads), (exact, *exact_grads), strict=True)]

    ours = errors(batch_norm)
    native = errors(lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True))
    # no worse than PyTorch's own kernel (which accumulates in float32), to rounding
    for a, b in zip(ours, native, strict=True):
        assert a <= 1.5 * b + 1e-6, (ours, native)


def test_default_eps_is_torchs():
    # low variance (1e-6), so that eps = 1e-5 matters
    x = 1 + 1e-3 * torch.randn(32, 5, dtype=torch.float64)
    gamma, beta = torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    native = F.batch_norm(x, None, None, gamma, beta, training=True)
    torch.testing.assert_close(BatchNormFunction.apply(x, gamma, beta), native)
    torch.testing.assert_close(batch_norm(x, gamma, beta), native)
    torch.testing.assert_close(BatchNormAutograd(5).double()(x),
                               nn.BatchNorm1d(5).double()(x))


@pytest.mark.parametrize("shape", [(16, 3), (4, 3, 2, 2)])
def test_eps_is_passed_on(shape):
    x = 1 + 1e-2 * torch.randn(shape, dtype=torch.float64)
    gamma, beta = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    native = F.batch_norm(x, None, None, gamma, beta, training=True, eps=0.1)
    torch.testing.assert_close(batch_norm(x, gamma, beta, eps=0.1), native)
    torch.testing.assert_close(BatchNormAutograd(3, eps=0.1).double()(x), native)


def test_function_with_float64_parameters_keeps_the_dtype_of_x():
    x = torch.randn(16, 3) * 2 + 1
    gamma, beta = torch.rand(3, dtype=torch.float64) + 0.5, torch.randn(3, dtype=torch.float64)
    y = batch_norm(x, gamma, beta)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, batch_norm(x, gamma.float(), beta.float()))
