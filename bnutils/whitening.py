"""Standardisation and full whitening of inputs (PCA, ZCA and ZCA-cor).

Derived in notebook 01, which uses them to show why normalized inputs make gradient
descent converge faster and why full whitening is too costly inside every layer.
Shapes: ``x: (N, D)``, N examples of D features, as a NumPy array or a torch tensor
(the result is of the same kind).
"""

import numpy as np
import torch

METHODS = ("pca", "zca", "zca-cor")


def covariance(x):
    """The biased covariance ``(D, D)`` of ``x: (N, D)`` around its mean, O(N D^2)."""
    xmu = x - x.mean(0)
    return xmu.T @ xmu / len(x)


def standardize(x, eps=0.0):
    """Per-feature zero mean and unit variance: ``(x - mean) / sqrt(var + eps)``, O(N D)."""
    xmu = x - x.mean(0)
    return xmu / ((xmu * xmu).mean(0) + eps) ** 0.5


def whitening_matrix(cov, method="zca", eps=0.0):
    """``W (D, D)`` with ``W @ cov @ W.T = I`` (up to ``eps``): ``cov^(-1/2)`` or a twin.

    With ``cov = U diag(lam) U^T``: PCA whitening is ``diag(lam + eps)^(-1/2) U^T`` (rotate
    onto the principal axes, then scale); ZCA whitening is ``U diag(lam + eps)^(-1/2) U^T``
    (the symmetric inverse square root: of all whitenings, its output is closest to the
    centred input). ZCA-cor whitening is ``P^(-1/2) V^(-1/2)``: standardise each feature
    (``V`` = the diagonal of ``cov``), then ZCA-whiten with the correlation matrix
    ``P = V^(-1/2) cov V^(-1/2)``; its output is the whitening closest to the
    *standardised* input (Kessy, Lewin and Strimmer, 2018). The eigendecomposition costs
    O(D^3). A covariance of N < D + 1 centred examples is singular (rank N - 1 at most):
    then only ``eps > 0`` keeps ``W`` finite.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    linalg = torch.linalg if isinstance(cov, torch.Tensor) else np.linalg
    if method == "zca-cor":
        inv_sd = 1.0 / (cov.diagonal() + eps) ** 0.5
        corr = cov * inv_sd[:, None] * inv_sd[None, :]
        return whitening_matrix(corr, "zca", eps) * inv_sd[None, :]
    lam, U = linalg.eigh(cov)
    scaled = U.T / ((lam + eps) ** 0.5)[:, None]
    return scaled if method == "pca" else U @ scaled


def whiten(x, method="zca", eps=0.0):
    """``(x - mean) @ W.T`` for the whitening matrix of ``x``: identity covariance."""
    W = whitening_matrix(covariance(x), method, eps)
    return (x - x.mean(0)) @ W.T
