"""What a layer is doing while a network trains: dead units, saturation, statistics.

Derived in notebook 07, which uses them to test the paper's claims one by one: that
BN keeps ReLUs alive at high learning rates, keeps sigmoids out of their flat ends,
and makes training less sensitive to the initial weights.

Tensor functions take the activations of one layer, ``h: (N, C)`` (fully connected)
or ``(N, C, H, W)`` (convolutional), and reduce over ``reduce_dims``: by default every
dimension except dimension 1, the unit (channel), so a unit is judged over the batch
and all positions. For ``k`` networks trained side by side, ``h: (k, N, C)``, pass
``reduce_dims=(1,)`` to get one answer per network and unit.
"""

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

NONLINEARITIES = (nn.ReLU, nn.Sigmoid, nn.Tanh)
WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


def _reduce_dims(h, reduce_dims):
    if reduce_dims is None:
        if h.dim() < 2:
            raise ValueError(f"expected (N, C) or (N, C, ...) activations, got shape "
                             f"{tuple(h.shape)}")
        return tuple(d for d in range(h.dim()) if d != 1)
    return tuple(reduce_dims)


def dead_units(h, reduce_dims=None):
    """A boolean mask of the units that are never positive on this batch.

    ``h``: a ReLU's input or output (the same units are dead in both). A dead unit
    outputs 0 for every example and position, so no gradient reaches the weights that
    feed it: it stays dead unless its bias (or BN's beta) moves it back.
    Returns the mask over the dimensions not in ``reduce_dims``, e.g. ``(C,)``.
    """
    return h.detach().amax(dim=_reduce_dims(h, reduce_dims)) <= 0


def dead_fraction(h, reduce_dims=None):
    """The fraction of dead units (see ``dead_units``): a float, or per network when
    the mask keeps a leading network dimension, ``(k, C) -> (k,)``."""
    mask = dead_units(h, reduce_dims).float()
    return mask.mean().item() if mask.dim() <= 1 else mask.mean(dim=-1)


def saturation(u, activation="sigmoid", margin=0.02, reduce_dims=None):
    """The fraction of saturated values of a sigmoid or tanh layer.

    ``u``: the nonlinearity's *input* (pre-activation). A value is saturated when the
    output, mapped to [0, 1], lies within ``margin`` of 0 or 1: for a sigmoid
    ``|u| > ln((1 - margin) / margin)`` (3.89 for 2%), where the slope has fallen to
    under 8% of its value at 0; tanh(u) = 2 sigmoid(2u) - 1 gives the same share at
    half the input. ``reduce_dims``: the dimensions averaged over (default: all).
    """
    if activation not in ("sigmoid", "tanh"):
        raise ValueError(f"saturation is defined for 'sigmoid' or 'tanh', got {activation!r}")
    if not 0 < margin < 0.5:
        raise ValueError(f"margin must be between 0 and 0.5, got {margin}")
    s = torch.sigmoid(u.detach() if activation == "sigmoid" else 2 * u.detach())
    flat = ((s < margin) | (s > 1 - margin)).float()
    return flat.mean().item() if reduce_dims is None else flat.mean(dim=tuple(reduce_dims))


def update_ratio(before, after, reduce_dims=None):
    """The update-to-data ratio ``||after - before|| / ||before||`` of a parameter.

    Karpathy's rule of thumb puts a healthy step near 1e-3; much larger means the
    weights are being rewritten each step, much smaller that they barely move.
    ``reduce_dims``: the dimensions of the norm (default: all, a float).
    """
    before, after = before.detach(), after.detach()
    if before.shape != after.shape:
        raise ValueError(f"shapes differ: {tuple(before.shape)} and {tuple(after.shape)}")
    dims = tuple(range(before.dim())) if reduce_dims is None else tuple(reduce_dims)
    ratio = (after - before).norm(dim=dims) / before.norm(dim=dims)
    return ratio.item() if ratio.dim() == 0 else ratio


@contextmanager
def kept_buffers(model):
    """Run a block with ``model`` in train mode and give its buffers (BN's running
    statistics) their old values back afterwards, so that a probe in train mode (with
    batch statistics, as in training) leaves no trace. The mode is restored too."""
    saved = [b.clone() for b in model.buffers()]
    was_training = model.training
    model.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for b, old in zip(model.buffers(), saved, strict=True):
                b.copy_(old)
        model.train(was_training)


@contextmanager
def record_inputs(model, types=NONLINEARITIES):
    """Record the input of every module of ``types`` in ``model``, in forward order.

    ``with record_inputs(net) as seen: net(x)`` leaves ``seen`` a list of
    ``(module, input)`` pairs (the input keeps its graph, so gradients can reach it).
    """
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0])))
             for m in model.modules() if isinstance(m, types)]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def layer_statistics(model, x, y, lr=None, margin=0.02):
    """Per-layer statistics of ``model`` on the batch ``(x, y)``, one entry per layer.

    A layer is a nonlinearity (ReLU, sigmoid or tanh) and the weight layer (``Linear``
    or ``Conv2d``) that comes before it; the last weight layer, which feeds the loss,
    is left out. ``model``'s mode is kept (train mode: BN uses the batch's statistics).
    Returns a dict of lists, each with one float per layer:
    ``act_mean``, ``act_std`` (of the nonlinearity's output), ``saturated`` (share of
    saturated values, see ``saturation``; 0 for ReLU), ``dead`` (share of dead units,
    ``dead_fraction``; 0 for sigmoid and tanh), ``grad_std`` (std of the loss gradient
    with respect to the weight layer's weights), ``weight_norm`` and, with ``lr``,
    ``update_ratio``: ``lr * ||grad|| / ||W||``, the update-to-data ratio of one plain
    SGD step of rate ``lr`` (no momentum or weight decay). Neither the gradients nor
    the buffers of ``model`` (BN's running statistics) change.
    """
    saved = [b.clone() for b in model.buffers()]
    weights = [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)][:-1]
    with record_inputs(model) as seen:
        loss = F.cross_entropy(model(x), y)
    if len(seen) != len(weights):
        raise ValueError(f"expected one nonlinearity per hidden weight layer, found "
                         f"{len(seen)} nonlinearities and {len(weights)} weight layers")
    grads = torch.autograd.grad(loss, [w.weight for w in weights])
    with torch.no_grad():
        for b, old in zip(model.buffers(), saved, strict=True):
            b.copy_(old)
    stats = {k: [] for k in ("act_mean", "act_std", "saturated", "dead", "grad_std",
                             "weight_norm", *(["update_ratio"] if lr is not None else []))}
    for (module, u), layer, g in zip(seen, weights, grads, strict=True):
        u = u.detach()
        h = module(u)
        kind = type(module).__name__.lower()
        stats["act_mean"].append(h.mean().item())
        stats["act_std"].append(h.std().item())
        stats["saturated"].append(0.0 if kind == "relu" else saturation(u, kind, margin))
        stats["dead"].append(dead_fraction(u) if kind == "relu" else 0.0)
        stats["grad_std"].append(g.std().item())
        w_norm = layer.weight.detach().norm().item()
        stats["weight_norm"].append(w_norm)
        if lr is not None:
            stats["update_ratio"].append(lr * g.norm().item() / w_norm)
    return stats
