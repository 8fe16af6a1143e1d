"""Normalization layers besides plain BN, written from scratch.

BN taken apart (``PartialBatchNorm``, notebook 02) and BN with noise on top
(``NoisyBatchNorm1d``, notebook 08). The layers that do not need a large batch, derived
in notebook 09 and checked against ``torch.nn``: Layer Norm (Ba et al., 2016), Group
Norm (Wu & He, 2018) with Instance Norm as the case ``num_groups == num_channels``,
Batch Renormalization (Ioffe, 2017) and ghost batch norm (Hoffer et al., 2017). Inputs
are ``(N, C)`` or ``(N, C, H, W)`` (any trailing dimensions), channels on dimension 1 as
in ``torch.nn``; ``tests/test_norms.py`` checks them all.
"""

import torch
from torch import nn


def _affine(x, gamma, beta):
    """``gamma * x + beta`` with per-channel ``gamma, beta: (C,)`` broadcast over ``x``."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * gamma.view(shape) + beta.view(shape)


def _check_channels(x, num_channels, name):
    if x.dim() < 2 or x.shape[1] != num_channels:
        raise ValueError(f"{name} expects input (N, {num_channels}, ...), got shape {tuple(x.shape)}")


def _values_per_channel(x, where=""):
    """m, the number of values per channel in the batch ``x``; at least two when training."""
    m = x.numel() // x.shape[1]
    if m == 1:  # the variance of one value is 0: the output would be beta, whatever x is
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"size {tuple(x.shape)}{where}")
    return m


class LayerNorm(nn.Module):
    """Normalize each example over its last ``len(normalized_shape)`` dimensions.

    ``x: (N, *normalized_shape)`` -> same shape. The statistics are per example, so the
    output does not depend on the batch and training and inference are the same
    computation. ``gamma, beta`` have shape ``normalized_shape`` (elementwise affine).
    """

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(self.normalized_shape))
        self.beta = nn.Parameter(torch.zeros(self.normalized_shape))

    def forward(self, x):
        if tuple(x.shape[-len(self.normalized_shape):]) != self.normalized_shape:
            raise ValueError(f"LayerNorm expects input (..., {self.normalized_shape}), "
                             f"got shape {tuple(x.shape)}")
        dims = tuple(range(-len(self.normalized_shape), 0))
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)  # biased, like BN's sigma_B^2
        x_hat = (x - mean) / torch.sqrt(var + self.eps)
        return self.gamma * x_hat + self.beta


class GroupNorm(nn.Module):
    """Split the ``C`` channels into ``num_groups`` groups; normalize each example's group.

    ``x: (N, C, ...)`` -> same shape; statistics over the channels of a group and all
    spatial positions of one example. ``num_groups=1`` is Layer Norm over (C, H, W);
    ``num_groups=C`` is Instance Norm. ``gamma, beta: (C,)`` per channel.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.affine = affine
        if affine:
            self.gamma = nn.Parameter(torch.ones(num_channels))
            self.beta = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        _check_channels(x, self.num_channels, type(self).__name__)
        n = x.shape[0]
        g = x.reshape(n, self.num_groups, -1)
        mean = g.mean(-1, keepdim=True)
        var = g.var(-1, unbiased=False, keepdim=True)
        x_hat = ((g - mean) / torch.sqrt(var + self.eps)).reshape(x.shape)
        return _affine(x_hat, self.gamma, self.beta) if self.affine else x_hat


class InstanceNorm(GroupNorm):
    """Instance Norm: Group Norm with one channel per group, ``x: (N, C, H, W)``.

    Like ``nn.InstanceNorm2d`` it has no affine parameters by default and always uses
    the statistics of the example itself (no running statistics).
    """

    def __init__(self, num_channels, eps=1e-5, affine=False):
        super().__init__(num_channels, num_channels, eps=eps, affine=affine)


class _RunningStats(nn.Module):
    """Per-channel ``gamma, beta`` and the running statistics shared by the batch norms."""

    def __init__(self, num_features, eps, momentum):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _axes(self, x):
        _check_channels(x, self.num_features, type(self).__name__)
        return (0,) + tuple(range(2, x.dim()))

    def _shape(self, x):
        return (1, -1) + (1,) * (x.dim() - 2)

    @torch.no_grad()
    def _update(self, mean, var_unbiased):
        """``running = (1 - momentum) * running + momentum * batch`` (PyTorch's convention)."""
        self.running_mean.lerp_(mean, self.momentum)
        self.running_var.lerp_(var_unbiased, self.momentum)
        self.num_batches_tracked += 1

    def _eval(self, x):
        s = self._shape(x)
        x_hat = (x - self.running_mean.view(s)) / torch.sqrt(self.running_var.view(s) + self.eps)
        return _affine(x_hat, self.gamma, self.beta)


class BatchRenorm(_RunningStats):
    """Batch Renormalization (Ioffe, 2017): BN corrected towards the running statistics.

    In training, with ``sigma_B = sqrt(sigma_B^2 + eps)`` and ``sigma = sqrt(running_var + eps)``:
    ``r = clip(sigma_B / sigma, 1/r_max, r_max)``, ``d = clip((mu_B - mu) / sigma, -d_max, d_max)``,
    ``x_hat = (x - mu_B) / sigma_B * r + d``. ``r`` and ``d`` are constants for backprop.
    Unclipped, ``x_hat = (x - mu) / sigma``: the same function as at inference.

    The limits follow the paper's schedule on ``num_batches_tracked``: plain BN
    (``r_max = 1, d_max = 0``) for ``warmup`` steps, then a linear ramp to ``r_max`` and
    ``d_max`` over ``ramp`` steps. ``x: (N, C)`` or ``(N, C, H, W)``.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, r_max=3.0, d_max=5.0,
                 warmup=0, ramp=0):
        super().__init__(num_features, eps, momentum)
        if r_max < 1 or d_max < 0:
            raise ValueError(f"need r_max >= 1 and d_max >= 0, got {r_max}, {d_max}")
        self.r_max, self.d_max, self.warmup, self.ramp = r_max, d_max, warmup, ramp

    def limits(self):
        """The current ``(r_max, d_max)`` of the schedule."""
        step = int(self.num_batches_tracked)
        if step < self.warmup:
            return 1.0, 0.0
        t = 1.0 if self.ramp <= 0 else min(1.0, (step - self.warmup) / self.ramp)
        return 1.0 + t * (self.r_max - 1.0), t * self.d_max

    def forward(self, x):
        axes, s = self._axes(x), self._shape(x)
        if not self.training or x.numel() == 0:  # an empty batch has no statistics to use
            return self._eval(x)
        m = _values_per_channel(x)
        mean = x.mean(axes)
        var = x.var(axes, unbiased=False)
        std = torch.sqrt(var + self.eps)
        r_max, d_max = self.limits()
        with torch.no_grad():  # r and d are constants for backprop
            running_std = torch.sqrt(self.running_var + self.eps)
            r = (std / running_std).clamp(1.0 / r_max, r_max)
            d = ((mean - self.running_mean) / running_std).clamp(-d_max, d_max)
        x_hat = (x - mean.view(s)) / std.view(s) * r.view(s) + d.view(s)
        self._update(mean.detach(), var.detach() * m / (m - 1))
        return _affine(x_hat, self.gamma, self.beta)


class GhostBatchNorm(_RunningStats):
    """Ghost batch norm (Hoffer et al., 2017): BN statistics per virtual batch.

    In training, the batch is cut into consecutive chunks of ``virtual_batch_size``
    examples (the last may be smaller) and each chunk is normalized with its own
    ``mu_B, sigma_B^2``, as if it were a separate mini-batch. The running statistics
    move once per step, towards the average over the chunks. ``x: (N, C, ...)``. Like
    PyTorch's layers it refuses a chunk of a single value per channel (a last chunk of
    one example, for ``(N, C)`` input): its output would be beta, whatever its input.
    """

    def __init__(self, num_features, virtual_batch_size, eps=1e-5, momentum=0.1):
        super().__init__(num_features, eps, momentum)
        if virtual_batch_size < 2:
            raise ValueError(f"virtual_batch_size must be at least 2, got {virtual_batch_size}")
        self.virtual_batch_size = virtual_batch_size

    def forward(self, x):
        axes, s = self._axes(x), self._shape(x)
        if not self.training or x.numel() == 0:  # an empty batch has no statistics to use
            return self._eval(x)
        outs, means, vars_ = [], [], []
        for chunk in x.split(self.virtual_batch_size):
            m = _values_per_channel(chunk, f" (the last virtual batch of {tuple(x.shape)}, cut "
                                           f"into batches of {self.virtual_batch_size})")
            mean = chunk.mean(axes)
            var = chunk.var(axes, unbiased=False)
            outs.append((chunk - mean.view(s)) / torch.sqrt(var.view(s) + self.eps))
            means.append(mean.detach())
            vars_.append(var.detach() * m / (m - 1))
        self._update(torch.stack(means).mean(0), torch.stack(vars_).mean(0))
        return _affine(torch.cat(outs), self.gamma, self.beta)


class PartialBatchNorm(nn.Module):
    """BN's training-mode transform with its pieces switched on or off (notebook 02).

    ``center``: subtract the batch mean; ``scale``: divide by the batch standard
    deviation ``sqrt(sigma_B^2 + eps)`` (taken around the mean, as in BN);
    ``learn_gamma``, ``learn_beta``: learn gamma (else fixed at 1) and beta (else 0).
    With nothing switched on but beta, it is a plain bias. It keeps no running
    statistics: it always normalizes with the batch it is given, in eval mode too.
    ``x: (N, D)``, statistics over N.
    """

    def __init__(self, num_features, center=True, scale=True, learn_gamma=True,
                 learn_beta=True, eps=1e-5):
        super().__init__()
        self.center, self.scale, self.eps = center, scale, eps
        self.gamma = nn.Parameter(torch.ones(num_features), requires_grad=learn_gamma)
        self.beta = nn.Parameter(torch.zeros(num_features), requires_grad=learn_beta)

    def forward(self, x):
        if self.center:
            x = x - x.mean(0)
        if self.scale:
            x = x / torch.sqrt(x.var(0, correction=0) + self.eps)
        return self.gamma * x + self.beta


class NoisyBatchNorm1d(nn.Module):
    """``nn.BatchNorm1d`` and the noise of Santurkar et al. (notebook 08).

    In training, every call draws for each activation ``k`` a shift
    ``mu_k ~ U(-a, a)`` and a variance ``var_k ~ U(1, v)``.
    ``per_example=False``: one affine map per activation for the whole
    batch, ``sqrt(var_k) * y + mu_k``. ``True``: independent noise for
    every example and activation, ``y + mu_k + sqrt(var_k - 1) * xi`` with
    ``xi ~ N(0, 1)``: the same shift of the mean and the same variance over
    the batch. The draws come from the layer's own generator, seeded with
    ``seed``; in eval mode the layer is BN. ``x: (N, D)``.
    """

    def __init__(self, num_features, a=1.0, v=4.0, per_example=False, seed=0):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features)
        self.a, self.v, self.per_example = a, v, per_example
        self.g = torch.Generator().manual_seed(seed)

    def forward(self, x):
        y = self.bn(x)
        if not self.training:
            return y
        u, w, xi = (t.to(y.device) for t in self.draw(y.shape))
        mu = self.a * (2 * u - 1)  # U(-a, a)
        var = 1 + (self.v - 1) * w  # U(1, v)
        if not self.per_example:
            return var.sqrt() * y + mu
        return y + mu + (var - 1).sqrt() * xi

    def draw(self, shape):
        """This step's random numbers for ``y`` of ``shape`` (N, D): two
        U(0, 1) per activation and, with ``per_example``, an N(0, 1) per
        value (else an empty tensor)."""
        u = torch.rand(shape[1], generator=self.g)
        w = torch.rand(shape[1], generator=self.g)
        if not self.per_example:
            return u, w, torch.empty(0)
        return u, w, torch.randn(shape, generator=self.g)
