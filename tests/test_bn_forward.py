"""bnutils.bn.batchnorm_forward (Algorithm 1) against torch.nn and the paper's properties."""

import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bnutils.bn import batchnorm_forward

# max |ours - torch| on O(1) outputs; float32 rounding of a few operations is ~1e-6
TOL = {np.float32: 1e-5, np.float64: 1e-12}
SHAPES = [(32, 5), (8, 3, 4, 5)]


def draw(shape, dtype, seed=0, mean=3.0, std=2.0):
    """Random input with a non-trivial mean and scale per feature, plus gamma and beta."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    bshape = (1, c) + (1,) * (len(shape) - 2)
    x = mean + std * rng.standard_normal(shape) * rng.uniform(0.5, 2.0, bshape)
    gamma = rng.uniform(0.5, 2.0, c)
    beta = rng.standard_normal(c)
    return x.astype(dtype), gamma.astype(dtype), beta.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_functional_batch_norm(shape, dtype):
    x, gamma, beta = draw(shape, dtype)
    y, _ = batchnorm_forward(x, gamma, beta, eps=1e-5)
    ref = F.batch_norm(torch.from_numpy(x), None, None, torch.from_numpy(gamma),
                       torch.from_numpy(beta), training=True, eps=1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, ref.numpy(), rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_batchnorm_module_in_training_mode(shape, dtype):
    x, gamma, beta = draw(shape, dtype, seed=1)
    module = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(shape[1], eps=1e-3)
    module = module.to(torch.float64 if dtype == np.float64 else torch.float32).train()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(gamma))
        module.bias.copy_(torch.from_numpy(beta))
        ref = module(torch.from_numpy(x))
    y, cache = batchnorm_forward(x, gamma, beta, eps=1e-3)
    np.testing.assert_allclose(y, ref.numpy(), rtol=0, atol=TOL[dtype])
    # the module's running mean moved a step of momentum 0.1 towards our batch mean
    np.testing.assert_allclose(module.running_mean.numpy(), 0.1 * cache["mean"],
                               rtol=1e-5, atol=0)


def test_cache_holds_the_batch_statistics():
    x, gamma, beta = draw((8, 3, 4, 5), np.float64)
    y, cache = batchnorm_forward(x, gamma, beta, eps=1e-5)
    axes = (0, 2, 3)
    assert cache["axes"] == axes and cache["eps"] == 1e-5
    np.testing.assert_allclose(cache["mean"], x.mean(axis=axes), rtol=1e-13)
    np.testing.assert_allclose(cache["var"], x.var(axis=axes), rtol=1e-12)  # biased
    np.testing.assert_allclose(cache["inv_std"], 1 / np.sqrt(x.var(axis=axes) + 1e-5), rtol=1e-12)
    np.testing.assert_allclose(cache["xmu"], x - x.mean(axis=axes, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(
        y, gamma[:, None, None] * cache["x_hat"] + beta[:, None, None], atol=1e-12)


@pytest.mark.parametrize("shape", [(256, 6), (16, 6, 4, 4)])
def test_large_mean_keeps_float32_precision(shape):
    # mean 1e4, std 1: E[x^2] - E[x]^2 in float32 loses every digit (the ulp of 1e8 is 8)
    x, gamma, beta = draw(shape, np.float32, mean=1e4, std=1.0)
    y, cache = batchnorm_forward(x, gamma, beta)
    ref, ref_cache = batchnorm_forward(x.astype(np.float64), gamma.astype(np.float64),
                                       beta.astype(np.float64))
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(cache["var"], ref_cache["var"], rtol=1e-5)
    # the corrected mean is the float64 mean rounded to float32 (within an ulp of 1e4,
    # 1e-3); the uncorrected one is several ulps off
    np.testing.assert_allclose(cache["mean"], ref_cache["mean"], rtol=0,
                               atol=np.spacing(np.float32(1e4)))
    axes = cache["axes"]
    naive = (x * x).mean(axis=axes) - x.mean(axis=axes) ** 2
    assert np.abs(naive - ref_cache["var"]).max() > 0.1  # the formula we avoid fails here


@pytest.mark.parametrize("shape", SHAPES)
def test_identity_recovery(shape):
    x, _, _ = draw(shape, np.float64)
    _, cache = batchnorm_forward(x, np.ones(shape[1]), np.zeros(shape[1]), eps=1e-5)
    gamma, beta = np.sqrt(cache["var"] + 1e-5), cache["mean"]
    y, _ = batchnorm_forward(x, gamma, beta, eps=1e-5)
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("a", [1e-2, 0.5, 3.0, 1e3])
def test_scale_invariance(a):
    rng = np.random.default_rng(2)
    u, W = rng.standard_normal((64, 10)), rng.standard_normal((10, 4))
    gamma, beta = rng.uniform(0.5, 2, 4), rng.standard_normal(4)
    y, _ = batchnorm_forward(u @ W, gamma, beta, eps=0.0)
    y_scaled, _ = batchnorm_forward(u @ (a * W), gamma, beta, eps=0.0)
    np.testing.assert_allclose(y_scaled, y, rtol=0, atol=1e-12)


def test_eps_keeps_a_constant_feature_finite():
    x, gamma, beta = draw((16, 3), np.float64)
    x[:, 1] = 7.0
    y, cache = batchnorm_forward(x, gamma, beta, eps=1e-5)
    assert cache["var"][1] == 0.0
    np.testing.assert_allclose(cache["inv_std"][1], 1 / np.sqrt(1e-5))
    np.testing.assert_array_equal(y[:, 1], beta[1])  # x_hat = 0, so y = beta
    with np.errstate(invalid="ignore", divide="ignore"):
        y0, _ = batchnorm_forward(x, gamma, beta, eps=0.0)
    assert np.isnan(y0[:, 1]).all() and np.isfinite(y0[:, [0, 2]]).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_output_has_zero_mean_and_unit_variance(shape):
    x, _, _ = draw(shape, np.float64)
    eps = 1e-5
    y, cache = batchnorm_forward(x, np.ones(shape[1]), np.zeros(shape[1]), eps=eps)
    axes = cache["axes"]
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-12)
    # eps makes the variance slightly less than one: var / (var + eps)
    np.testing.assert_allclose(y.var(axis=axes), cache["var"] / (cache["var"] + eps), rtol=1e-10)
    np.testing.assert_allclose(y.var(axis=axes), 1.0, atol=1e-5)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (2, 3, 4, 5, 6)])
def test_wrong_ndim_is_rejected(shape):
    with pytest.raises(ValueError, match=r"expected x of shape \(N, D\) or \(N, C, H, W\)"):
        batchnorm_forward(np.ones(shape), np.ones(3), np.zeros(3))


@pytest.mark.parametrize("shape", [(1, 4), (1, 4, 1, 1)])
def test_batch_of_one_is_rejected_like_pytorch(shape):
    message = "Expected more than 1 value per channel when training"
    with pytest.raises(ValueError, match=message):
        batchnorm_forward(np.ones(shape), np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match=message):
        F.batch_norm(torch.ones(shape), None, None, training=True)


@pytest.mark.parametrize("shape", [(2, 4), (2, 4, 1, 1)])
def test_batch_of_two_is_accepted(shape):
    x, gamma, beta = draw(shape, np.float64)
    y, _ = batchnorm_forward(x, gamma, beta)
    ref = F.batch_norm(torch.from_numpy(x), None, None, torch.from_numpy(gamma),
                       torch.from_numpy(beta), training=True)
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-12)


def test_one_example_with_several_pixels_is_fine():
    x, gamma, beta = draw((1, 2, 3, 3), np.float64)  # m = 1 * 3 * 3 values per channel
    y, _ = batchnorm_forward(x, gamma, beta)
    ref = F.batch_norm(torch.from_numpy(x), None, None, torch.from_numpy(gamma),
                       torch.from_numpy(beta), training=True)
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-12)


@pytest.mark.parametrize("name", ["gamma", "beta"])
@pytest.mark.parametrize("bad", [(3,), (4, 1), ()])
def test_mismatched_gamma_beta_shapes_are_rejected(name, bad):
    params = {"gamma": np.ones(4), "beta": np.zeros(4)}
    params[name] = np.ones(bad)
    with pytest.raises(ValueError, match=rf"{name} must have shape \(4,\).*got {re.escape(str(bad))}"):
        batchnorm_forward(np.ones((8, 4)), **params)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_input_is_rejected(value):
    x = np.ones((8, 4))
    x[3, 2] = value
    with pytest.raises(ValueError, match=r"NaN or infinite values \(1 of 32, the first at index "
                                         r"\(3, 2\)\)"):
        batchnorm_forward(x, np.ones(4), np.zeros(4))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_integer_input_is_computed_in_floating_point(dtype):
    x = np.array([[0, 1], [1, 3], [1, 5], [0, 7]]).astype(dtype)
    gamma, beta = np.array([0.5, 2.0]), np.array([0.25, -1.0])  # 0.5 and 0.25 would be 0
    y, cache = batchnorm_forward(x, gamma, beta)
    expected, _ = batchnorm_forward(x.astype(np.float64), gamma, beta)
    assert y.dtype == np.float64 and cache["gamma"].dtype == np.float64
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(y[:, 0], 0.25 + 0.5 * np.array([-1, 1, 1, -1]) / np.sqrt(1 + 4e-5))


def test_non_real_input_is_rejected():
    with pytest.raises(TypeError, match="real numbers"):
        batchnorm_forward(np.ones((4, 2), dtype=complex), np.ones(2), np.zeros(2))


def test_gamma_and_beta_take_the_dtype_of_x():
    x, gamma, beta = draw((16, 3), np.float32)
    y, cache = batchnorm_forward(x, gamma.astype(np.float64), beta.astype(np.float64))
    assert y.dtype == np.float32 and cache["gamma"].dtype == np.float32
    np.testing.assert_allclose(y, batchnorm_forward(x, gamma, beta)[0], rtol=0, atol=0)
