"""Batch Normalization as PyTorch building blocks, written from scratch.

Each piece is derived in a chapter and checked against ``torch.nn`` in ``tests/``.
"""

import torch  # noqa: F401  (used by the layers below)
from torch import nn  # noqa: F401

# --- Chapter 3: a custom autograd Function with the compact backward pass -------------


# --- Chapter 4: modules with running statistics, and folding BN into a layer ----------


class _BatchNorm(nn.Module):
    """What ``BatchNorm1d`` and ``BatchNorm2d`` share: everything but the input check.

    Same constructor, parameters (``weight`` = gamma, ``bias`` = beta), buffers
    (``running_mean``, ``running_var``, ``num_batches_tracked``) and semantics as
    ``torch.nn.BatchNorm1d/2d``, so state dicts load from one into the other.
    Written with plain tensor operations: autograd derives the backward pass.
    Derived in notebook 04.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None):
        super().__init__()
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, device=device))
        else:
            # None buffers stay out of the state dict, as in torch.nn
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        """Back to E[x] = 0, Var[x] = 1 and no batch seen."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def reset_parameters(self):
        """Running statistics reset, gamma = 1, beta = 0."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, x):
        raise NotImplementedError

    def forward(self, x):
        """``x: (N, C, ...)`` -> ``y`` of the same shape, normalized per channel ``C``."""
        self._check_input_dim(x)
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} features in dimension 1 of the "
                             f"input, got input of shape {tuple(x.shape)}")
        axes = (0, *range(2, x.ndim))  # every axis but the channel's
        shape = (1, -1) + (1,) * (x.ndim - 2)  # broadcasts a per-channel vector
        # without running statistics, batch statistics are used in eval mode too
        use_batch_stats = self.training or self.running_mean is None
        if use_batch_stats:
            m = x.numel() // x.shape[1]
            if m == 1:
                raise ValueError(f"Expected more than 1 value per channel when training, "
                                 f"got input size {tuple(x.shape)}")
            mean = x.mean(dim=axes)
            var = x.var(dim=axes, correction=0)  # biased: Algorithm 1 normalizes with it
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, m)
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        if not self.affine:
            return x_hat
        return self.weight.reshape(shape) * x_hat + self.bias.reshape(shape)

    @torch.no_grad()
    def _update_running_stats(self, mean, var, m):
        """running = (1 - momentum) running + momentum batch; momentum None: the plain mean."""
        self.num_batches_tracked += 1
        if self.momentum is None:  # cumulative average of all batches so far
            factor = 1.0 / self.num_batches_tracked.item()
        else:
            factor = self.momentum
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var * m / (m - 1), factor)  # unbiased, as in Algorithm 2

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch Normalization over ``(N, C)`` or ``(N, C, L)``, like ``torch.nn.BatchNorm1d``."""

    def _check_input_dim(self, x):
        if x.ndim not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {x.ndim}D input)")


class BatchNorm2d(_BatchNorm):
    """Batch Normalization over ``(N, C, H, W)``, per channel, like ``torch.nn.BatchNorm2d``."""

    def _check_input_dim(self, x):
        if x.ndim != 4:
            raise ValueError(f"expected 4D input (got {x.ndim}D input)")


BATCHNORM_TYPES = (_BatchNorm, nn.modules.batchnorm._BatchNorm)  # ours and torch.nn's


def fold_batchnorm(layer, bn):
    """A new ``nn.Linear`` or ``nn.Conv2d`` computing ``bn(layer(u))`` for an eval-mode ``bn``.

    With s = gamma / sqrt(Var[x] + eps) per output channel, the folded layer has
    ``weight = s * W`` (scaling each output channel) and
    ``bias = s * (b - E[x]) + beta``. ``bn``: ours or ``torch.nn``'s, in eval mode, with
    running statistics. Works for any stride, padding, dilation and groups, with or
    without a bias in ``layer``. Derived in notebook 04.
    """
    if not isinstance(bn, BATCHNORM_TYPES):
        raise TypeError(f"bn must be a BatchNorm layer, got {type(bn).__name__}")
    if bn.training:
        raise ValueError("bn is in training mode, where it normalizes with batch statistics "
                         "that no fixed layer can reproduce; call bn.eval() first")
    if bn.running_mean is None:
        raise ValueError("bn has no running statistics (track_running_stats=False): it always "
                         "normalizes with batch statistics, so it cannot be folded")
    if isinstance(layer, nn.Linear):
        out = layer.out_features
        folded = nn.Linear(layer.in_features, out, bias=True,
                           device=layer.weight.device, dtype=layer.weight.dtype)
    elif isinstance(layer, nn.Conv2d):
        out = layer.out_channels
        folded = nn.Conv2d(layer.in_channels, out, layer.kernel_size, stride=layer.stride,
                           padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                           bias=True, padding_mode=layer.padding_mode,
                           device=layer.weight.device, dtype=layer.weight.dtype)
    else:
        raise TypeError(f"layer must be nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    if bn.num_features != out:
        raise ValueError(f"bn normalizes {bn.num_features} features but layer has {out} outputs")
    with torch.no_grad():
        # float64 so that folding adds no rounding error of its own
        w = layer.weight.double()
        b = layer.bias.double() if layer.bias is not None else w.new_zeros(out)
        # affine=False (and torch's bias=False) leave gamma = 1 or beta = 0
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(b)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(b)
        s = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
        folded.weight.copy_(w * s.reshape(-1, *([1] * (w.ndim - 1))))
        folded.bias.copy_(s * (b - bn.running_mean.double()) + beta)
    return folded.train(layer.training)


def fold_sequential(model):
    """A copy of an ``nn.Sequential`` with each (Linear or Conv2d, eval-mode BN) pair folded.

    Other layers are kept (shared, not copied). Derived in notebook 04.
    """
    layers, children = [], list(model)
    i = 0
    while i < len(children):
        layer = children[i]
        nxt = children[i + 1] if i + 1 < len(children) else None
        if isinstance(layer, nn.Linear | nn.Conv2d) and isinstance(nxt, BATCHNORM_TYPES):
            layers.append(fold_batchnorm(layer, nxt))
            i += 2
        else:
            layers.append(layer)
            i += 1
    return nn.Sequential(*layers)
