"""bnutils.whitening (chapter 1): standardisation and PCA, ZCA and ZCA-cor whitening."""

import numpy as np
import pytest
import torch

from bnutils.whitening import METHODS, covariance, standardize, whiten, whitening_matrix


def _data(n=500, d=4, seed=0):
    """Correlated features with unequal means and scales."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) + 2 * np.eye(d)
    return rng.standard_normal((n, d)) @ mix * rng.uniform(0.2, 5.0, d) + rng.normal(0, 5, d)


def _random_rotation(d, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_covariance_and_standardize():
    x = _data()
    np.testing.assert_allclose(covariance(x), np.cov(x.T, bias=True), rtol=1e-12)
    z = standardize(x)
    np.testing.assert_allclose(z, (x - x.mean(0)) / x.std(0), rtol=1e-12)
    np.testing.assert_allclose(standardize(x, eps=1.0), (x - x.mean(0)) / np.sqrt(x.var(0) + 1))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_every_method_whitens(method, kind):
    x = _data()
    if kind == "torch":
        x = torch.from_numpy(x)
    white = whiten(x, method)
    assert type(white) is type(x)
    cov = np.asarray(covariance(white))
    np.testing.assert_allclose(cov, np.eye(4), atol=1e-10)
    W = np.asarray(whitening_matrix(covariance(x), method))
    np.testing.assert_allclose(W @ np.asarray(covariance(x)) @ W.T, np.eye(4), atol=1e-10)


def test_the_methods_differ_by_a_rotation():
    x = _data()
    cov = covariance(x)
    W = {m: whitening_matrix(cov, m) for m in METHODS}
    np.testing.assert_allclose(W["zca"], W["zca"].T, atol=1e-12)  # symmetric
    for m in ("pca", "zca-cor"):
        rotation = W[m] @ np.linalg.inv(W["zca"])
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(4), atol=1e-9)
        assert not np.allclose(W[m], W["zca"])


def test_zca_is_closest_to_the_centred_input_and_zca_cor_to_the_standardised_one():
    # Kessy, Lewin and Strimmer (2018): among all whitenings Q W (Q orthogonal), ZCA
    # minimises the distance to x - mean, ZCA-cor the distance to the standardised x
    x = _data()
    centred, z = x - x.mean(0), standardize(x)
    W = {m: whitening_matrix(covariance(x), m) for m in METHODS}

    def distance(W_, target):
        return ((centred @ W_.T - target) ** 2).mean()

    for seed in range(20):
        Q = _random_rotation(4, seed)
        assert distance(W["zca"], centred) <= distance(Q @ W["zca"], centred)
        assert distance(W["zca-cor"], z) <= distance(Q @ W["zca"], z)
    assert distance(W["zca-cor"], z) < distance(W["zca"], z) < distance(W["pca"], z)


def test_zca_cor_is_zca_of_the_standardised_input():
    x = _data()
    np.testing.assert_allclose(whiten(x, "zca-cor"), whiten(standardize(x), "zca"), atol=1e-10)


def test_a_covariance_of_fewer_examples_than_features_is_singular():
    # the paper's reason (section 3) to normalize features one at a time: a mini-batch
    # of m <= d examples has a covariance of rank m - 1, whose inverse square root
    # exists only thanks to eps, which then dominates the whitened output
    x = _data(n=8, d=16)
    cov = covariance(x)
    assert np.linalg.matrix_rank(cov) == 7
    W = whitening_matrix(cov, "zca", eps=1e-5)
    assert np.isfinite(W).all()
    assert np.abs(W).max() > 100  # 1 / sqrt(eps) along the null directions


def test_a_bad_method_is_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        whitening_matrix(np.eye(2), "cholesky")
