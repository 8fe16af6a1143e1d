"""Batch Normalization as PyTorch building blocks, written from scratch.

Each piece is derived in a chapter and checked against ``torch.nn`` in ``tests/``.
"""

import torch
from torch import nn
from torch.autograd.function import once_differentiable

# --- Chapter 3: a custom autograd Function with the compact backward pass -------------


def _feature_shape(x):
    """The shape that broadcasts a per-feature vector over ``x: (N, D)`` or ``(N, C, H, W)``."""
    if x.dim() == 2:
        return (1, -1)
    if x.dim() == 4:
        return (1, -1, 1, 1)
    raise ValueError(
        f"expected x of shape (N, D) or (N, C, H, W), got {x.dim()}-d input of shape "
        f"{tuple(x.shape)}"
    )


def _accumulation_dtype(t):
    """float32 for half-precision tensors, else their own dtype.

    A float16 sum of squares overflows (its largest value is 65504) and bfloat16 keeps 8
    bits of mantissa, so half-precision statistics are accumulated in float32, as PyTorch
    does.
    """
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def _feature_sum(t):
    """Per-feature sum of ``t: (N, D)`` or ``(N, C, H, W)`` over everything else: ``(D,)`` or ``(C,)``.

    For ``(N, D)`` a matrix-vector product with ones: on the CPU it is about twice as fast
    as ``t.sum(0)``, whose reduction runs across rows.
    """
    if t.dim() == 2:
        return t.new_ones(t.shape[0]) @ t
    return t.sum((0, 2, 3))


class BatchNormFunction(torch.autograd.Function):
    """Batch Normalization in training mode, with the compact backward pass written by hand.

    ``BatchNormFunction.apply(x, gamma, beta, eps)``: ``x: (N, D)`` or ``(N, C, H, W)``,
    ``gamma, beta: (D,)`` or ``(C,)``. The forward pass normalizes with the mini-batch
    statistics (biased variance, Algorithm 1 of the paper) and keeps no running
    statistics. The backward pass is the compact form derived in notebook 03,
    ``dx = gamma / sqrt(var + eps) * (dy - mean(dy) - x_hat * mean(dy * x_hat))``.
    Use ``batch_norm`` for the checked entry point.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, eps=1e-5):
        shape = _feature_shape(x)
        dtype = x.dtype
        x = x.to(_accumulation_dtype(x))  # a no-op for float32 and float64
        # Two passes (the mean, then the mean of squared deviations) as in bnutils.bn; on
        # the CPU this is also faster than torch.var_mean over these dims. y's memory
        # holds the squared deviations first, so the forward pass allocates two tensors.
        m = x.numel() // x.shape[1]
        xmu = x - (_feature_sum(x) / m).view(shape)
        y = torch.mul(xmu, xmu)
        inv_std = torch.rsqrt(_feature_sum(y).view(shape) / m + eps)
        x_hat = xmu.mul_(inv_std)
        torch.addcmul(beta.view(shape), x_hat, gamma.view(shape), out=y)
        ctx.save_for_backward(x_hat, gamma, inv_std)
        return y.to(dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x_hat, gamma, inv_std = ctx.saved_tensors  # x_hat, inv_std: float32 for half x
        shape = _feature_shape(dy)
        m = dy.numel() // dy.shape[1]
        # half-precision dy: sum in float32 too; autograd casts the gradients back
        dy = dy.to(x_hat.dtype)
        dbeta = _feature_sum(dy)
        dx = torch.mul(dy, x_hat)
        dgamma = _feature_sum(dx)
        if not ctx.needs_input_grad[0]:
            return None, dgamma, dbeta, None
        # dx = gamma * inv_std * (dy - dbeta / m - x_hat * dgamma / m), in dx's memory
        torch.addcmul(dbeta.view(shape) / m, x_hat, dgamma.view(shape) / m, out=dx)
        dx.sub_(dy).mul_(-gamma.view(shape) * inv_std)
        return dx, dgamma, dbeta, None


def batch_norm(x, gamma, beta, eps=1e-5):
    """Batch-normalize ``x`` with its mini-batch statistics through ``BatchNormFunction``.

    ``x: (N, D)`` or ``(N, C, H, W)``; ``gamma, beta: (D,)`` or ``(C,)``. Checks the
    shapes and the batch size, which the bare Function does not. Derived in notebook 03.
    """
    _feature_shape(x)  # raises for input that is not 2-d or 4-d
    for name, p in (("gamma", gamma), ("beta", beta)):
        if p.shape != (x.shape[1],):
            raise ValueError(f"{name} must have shape ({x.shape[1]},), one value per feature "
                             f"of x {tuple(x.shape)}; got {tuple(p.shape)}")
    if x.numel() // x.shape[1] < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"of shape {tuple(x.shape)}")
    return BatchNormFunction.apply(x, gamma, beta, eps)


class BatchNormAutograd(nn.Module):
    """A minimal BN layer on top of ``BatchNormFunction``: ``weight`` (gamma), ``bias`` (beta).

    It always normalizes with the statistics of the current batch and keeps no running
    statistics, so its outputs in eval mode still depend on the batch; chapter 4 builds
    the full layer. ``x: (N, num_features)`` or ``(N, num_features, H, W)``.
    """

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        return batch_norm(x, self.weight, self.bias, self.eps)

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
        """``x: (N, C, ...)`` -> ``y`` of the same shape, normalized per channel ``C``.

        Half-precision input to a float32 layer (what ``torch.autocast`` produces) is
        normalized in float32, like ``torch.nn``'s layers, and ``y`` has the dtype of ``x``.
        """
        self._check_input_dim(x)
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} features in dimension 1 of the "
                             f"input, got input of shape {tuple(x.shape)}")
        axes = (0, *range(2, x.ndim))  # every axis but the channel's
        shape = (1, -1) + (1,) * (x.ndim - 2)  # broadcasts a per-channel vector
        dtype = x.dtype
        x = x.to(_accumulation_dtype(x))  # a no-op for float32 and float64
        # without running statistics, batch statistics are used in eval mode too
        use_batch_stats = self.training or self.running_mean is None
        if use_batch_stats:
            m = x.numel() // x.shape[1]
            if m == 1:
                raise ValueError(f"Expected more than 1 value per channel when training, "
                                 f"got input size {tuple(x.shape)}")
            if m == 0:  # an empty batch (N = 0) has no statistics, and an empty output
                mean, var = x.new_zeros(x.shape[1]), x.new_ones(x.shape[1])
            else:
                mean = x.mean(dim=axes)
                var = x.var(dim=axes, correction=0)  # biased: Algorithm 1 normalizes with it
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, m)
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        y = self.weight.reshape(shape) * x_hat + self.bias.reshape(shape) if self.affine else x_hat
        return y.to(dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean, var, m):
        """running = (1 - momentum) running + momentum batch; momentum None: the plain mean."""
        self.num_batches_tracked += 1
        if m == 0:  # torch.nn counts an empty batch but moves no statistic; so do we
            return
        if self.momentum is None:  # cumulative average of all batches so far
            factor = 1.0 / self.num_batches_tracked.item()
        else:
            factor = self.momentum
        # unbiased, as in Algorithm 2; .to(): the statistics of half-precision input are
        # float32, while a layer converted with .half() keeps float16 buffers
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_((var * m / (m - 1)).to(self.running_var.dtype), factor)

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
    # skip_init: the weights are overwritten below, so drawing initial ones would only
    # advance the global random generator and change what a seeded program draws next
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Linear):
        out = layer.out_features
        folded = nn.utils.skip_init(nn.Linear, layer.in_features, out, bias=True, **factory)
    elif isinstance(layer, nn.Conv2d):
        out = layer.out_channels
        folded = nn.utils.skip_init(
            nn.Conv2d, layer.in_channels, out, layer.kernel_size, stride=layer.stride,
            padding=layer.padding, dilation=layer.dilation, groups=layer.groups, bias=True,
            padding_mode=layer.padding_mode, **factory)
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
