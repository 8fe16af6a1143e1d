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
    a float64 computation. Integer input is computed in float64 (``y`` and the cache are
    float64; in the input's dtype, gamma = 0.5 would become 0). Raises ``ValueError`` for
    an input that is not 2-d or 4-d, for a single value per feature, for ``gamma``/``beta``
    of the wrong shape, and for NaN or infinite values; ``TypeError`` for complex or
    non-numeric input.
    """
    x = np.asarray(x)
    if x.dtype.kind in "biu":  # bool or integer: normalized values are fractions
        x = x.astype(np.float64)
    elif x.dtype.kind != "f":
        raise TypeError(f"x must hold real numbers, got dtype {x.dtype}")
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


def _m_and_shape(cache):
    """The number of values per statistic, m, and the per-feature broadcast shape."""
    x_hat = cache["x_hat"]
    _, shape = _axes(x_hat)
    return x_hat.size // x_hat.shape[1], shape


def _check_dy(dy, cache):
    dy = np.asarray(dy)
    if dy.shape != cache["x_hat"].shape:
        raise ValueError(
            f"dy must have the shape of the forward input {cache['x_hat'].shape}, got {dy.shape}"
        )
    return dy


def batchnorm_backward_staged(dy, cache):
    """Gradients of BN by the paper's staged chain rule (section 3), one node at a time.

    ``dy: (N, D)`` or ``(N, C, H, W)``, the gradient dl/dy; ``cache`` from
    ``batchnorm_forward``. Returns ``(dx, dgamma, dbeta)`` with the shapes of ``x``,
    ``gamma`` and ``beta``. Written to mirror the paper's equations, not for speed;
    ``batchnorm_backward`` is the fast form. Derived in notebook 03.
    """
    dy = _check_dy(dy, cache)
    axes = cache["axes"]
    m, shape = _m_and_shape(cache)
    xmu, var, eps = cache["xmu"], cache["var"], cache["eps"]
    dx_hat = dy * cache["gamma"].reshape(shape)
    dvar = (dx_hat * xmu).sum(axis=axes) * -0.5 * (var + eps) ** -1.5
    dmean = ((dx_hat * (-1.0 / np.sqrt(var + eps)).reshape(shape)).sum(axis=axes)
             + dvar * (-2.0 * xmu).sum(axis=axes) / m)
    dx = (dx_hat / np.sqrt(var + eps).reshape(shape)
          + dvar.reshape(shape) * 2.0 * xmu / m
          + dmean.reshape(shape) / m)
    dgamma = (dy * cache["x_hat"]).sum(axis=axes)
    dbeta = dy.sum(axis=axes)
    return dx, dgamma, dbeta


def _feature_sums(a, b=None):
    """Per-feature sum of ``a`` (or of ``a * b``) without a full-size temporary.

    ``a, b: (N, D)`` or ``(N, C, H, W)``; returns ``(D,)`` or ``(C,)``. ``einsum``
    multiplies and reduces in one pass.
    """
    sub = "nd" if a.ndim == 2 else "nchw"
    if b is None:
        return np.einsum(f"{sub}->{sub[1]}", a)
    return np.einsum(f"{sub},{sub}->{sub[1]}", a, b)


def _per_sample(v, x):
    """A per-feature vector ``v`` laid out like one sample of ``x``: ``(1, D)`` or ``(1, C, H, W)``.

    For images, multiplying by a ``(1, C, 1, 1)`` view makes NumPy's inner loop run over
    H*W values against a repeated scalar; a materialised ``(1, C, H, W)`` copy (small:
    one sample) lets it run over contiguous memory, which is about 1.5x faster.
    """
    if x.ndim == 2:
        return v.reshape(1, -1)
    return np.ascontiguousarray(np.broadcast_to(v[:, None, None], x.shape[1:]))[None]


def batchnorm_backward(dy, cache):
    """Gradients of BN in the compact form (derived in notebook 03).

    dx = gamma / sqrt(sigma_B^2 + eps) * (dy - mean(dy) - x_hat * mean(dy * x_hat)),
    with the means taken per feature, and dgamma = sum(dy * x_hat), dbeta = sum(dy).
    ``dy: (N, D)`` or ``(N, C, H, W)``; ``cache`` from ``batchnorm_forward``. Returns
    ``(dx, dgamma, dbeta)``. The two sums are exactly dbeta and dgamma, so they are
    computed once and reused; dx then takes four passes over the data and no temporary.
    """
    dy = _check_dy(dy, cache)
    x_hat = cache["x_hat"]
    m, _ = _m_and_shape(cache)
    dbeta = _feature_sums(dy)
    dgamma = _feature_sums(dy, x_hat)
    scale = cache["gamma"] * cache["inv_std"]
    # dx = scale * (dy - dbeta / m - x_hat * dgamma / m), built in place in dx's memory
    dx = x_hat * _per_sample(dgamma / m, dy)
    dx += _per_sample(dbeta / m, dy)
    dx -= dy
    dx *= _per_sample(-scale, dy)
    return dx, dgamma, dbeta
