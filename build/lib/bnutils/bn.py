"""The Batch Normalizing Transform in NumPy (Algorithm 1 of the paper), and its gradients.

Derived in notebook 02 (forward) and notebook 03 (backward). Shapes: ``x: (N, D)``
with statistics per feature over N, or ``x: (N, C, H, W)`` with statistics per channel
over N, H and W (the convolutional case, section 3.2 of the paper).
"""

import numpy as np


def _axes(x):
    """The axes a statistic is taken over, and the shape that broadcasts a per-feature vector."""
    if x.ndim == 2:
        return (0,), (1, -1)
    if x.ndim == 4:
        return (0, 2, 3), (1, -1, 1, 1)
    raise ValueError(
        f"expected x of shape (N, D) or (N, C, H, W), got {x.ndim}-d input of shape {x.shape}"
    )


def _check_params(x, gamma, beta):
    features = x.shape[1]
    for name, p in (("gamma", gamma), ("beta", beta)):
        if np.shape(p) != (features,):
            raise ValueError(
                f"{name} must have shape ({features},), one value per feature of x {x.shape}; "
                f"got {np.shape(p)}"
            )


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """Batch-normalize ``x`` with its own mini-batch statistics (training mode).

    ``x: (N, D)`` or ``(N, C, H, W)``; ``gamma, beta: (D,)`` or ``(C,)``.
    Returns ``y`` (same shape as ``x``) and a ``cache`` dict for the backward pass with
    ``x_hat``, ``xmu`` (x - mu_B), ``mean`` (mu_B), ``var`` (sigma_B^2, biased),
    ``inv_std`` (1 / sqrt(sigma_B^2 + eps)), ``gamma``, ``eps`` and ``axes``.

    The variance is the mean of squared deviations from the mean (two passes, the mean
    corrected once), not E[x^2] - E[x]^2, which cancels catastrophically when a feature's
    mean is large: with a mean of 1e4 in float32 the output stays within about 1e-5 of
    a float64 computation. Raises ``ValueError`` for an input that is not 2-d or 4-d, for
    a single value per feature, for ``gamma``/``beta`` of the wrong shape, and for NaN or
    infinite values.
    """
    x = np.asarray(x)
    axes, shape = _axes(x)
    _check_params(x, gamma, beta)
    m = x.size // x.shape[1]
    if m < 2:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input of shape "
            f"{x.shape}: batch statistics of a single value are undefined (the variance is 0)"
        )
    finite = np.isfinite(x)
    if not finite.all():
        where = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(
            f"x contains NaN or infinite values ({(~finite).sum()} of {x.size}, the first "
            f"at index {where}): every output of its feature would be NaN"
        )
    gamma = np.asarray(gamma, dtype=x.dtype)
    beta = np.asarray(beta, dtype=x.dtype)
    mean = x.mean(axis=axes)
    xmu = x - mean.reshape(shape)
    # The rounded mean of large values can be off by many ulps of the spread (1e-3 for a
    # mean of 1e4 in float32); the deviations are small, so their own mean corrects it.
    shift = xmu.mean(axis=axes)
    xmu -= shift.reshape(shape)
    mean = mean + shift
    var = (xmu * xmu).mean(axis=axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = xmu * inv_std.reshape(shape)
    y = gamma.reshape(shape) * x_hat + beta.reshape(shape)
    cache = {"x_hat": x_hat, "xmu": xmu, "mean": mean, "var": var, "inv_std": inv_std,
             "gamma": gamma, "eps": eps, "axes": axes}
    return y, cache
