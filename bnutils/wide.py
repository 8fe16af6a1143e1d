"""Many small MLPs trained as one wide network: seeds and learning rates side by side.

Chapters 8 and 9 train the same MLP several times (three seeds, a grid of learning
rates). Trained one after another, each small net pays Python's overhead per step;
here ``k`` nets become one network whose linear layers are batched matrix products
over ``k`` weight stacks and whose hidden activations sit side by side, ``(N, k*width)``.
Any layer that acts on each feature over the batch (BN, Batch Renorm, ghost BN, noise
per feature) then treats every net on its own when it is simply made ``k`` times as
wide, and so does Group Norm with ``k`` times the groups (Layer Norm is Group Norm with
one group per net). Net ``i`` computes what ``models.mlp`` computes with its weights,
and ``train_wide`` gives it the mini-batches ``train.train(..., seed=seeds[i])`` draws,
so a wide run equals ``k`` separate runs up to float32 rounding (``tests/test_wide.py``).
"""

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .config import progress as progress_bar
from .data import batches
from .models import ACTIVATIONS


class WideMLP(nn.Module):
    """``k`` independent copies of one ``models.mlp`` architecture, as one network.

    ``nets``: ``k`` nets built by ``models.mlp`` with the same sizes (their weights are
    copied, so build them with the seeds you want). ``wide_norm``: ``None`` when the
    nets have no normalization, else a callable ``num_features -> module`` that builds
    the wide layer for ``num_features = k * width`` (e.g. ``nn.BatchNorm1d``, or
    ``lambda d: norms.GroupNorm(k, d)`` for Layer Norm); its parameters and buffers of
    size ``k * width`` are the nets' own, concatenated in order.
    Input ``x: (N, in)`` shared by all nets or ``(k, N, in)``; output ``(k, N, out)``.
    """

    def __init__(self, nets, wide_norm=None):
        super().__init__()
        self.k = len(nets)
        # the layout of one net, for net(i); in a list, so not a submodule
        self._template = [copy.deepcopy(nets[0])]
        linears = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([ls[j].weight.detach().T for ls in linears]))
            for j in range(len(linears[0])))  # (k, in, out) each
        self.has_bias = [m.bias is not None for m in linears[0]]
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([ls[j].bias.detach()[None] for ls in linears]))
            for j, biased in enumerate(self.has_bias) if biased)  # (k, 1, out) each
        self.widths = [w.shape[2] for w in self.weights[:-1]]
        activations = tuple(ACTIVATIONS.values())
        self.activation = next(m for m in nets[0] if isinstance(m, activations))
        norm_at = [i for i, m in enumerate(nets[0])
                   if not isinstance(m, (nn.Linear, *activations))]
        if bool(norm_at) != (wide_norm is not None):
            raise ValueError("wide_norm must be given exactly when the nets have a norm layer")
        self.norms = nn.ModuleList()
        for j, i in enumerate(norm_at):
            layer = wide_norm(self.k * self.widths[j])
            _concat_state(layer, [net[i] for net in nets])
            self.norms.append(layer)

    def forward(self, x, return_hidden=False):
        n, hidden, last = x.shape[-2], [], len(self.weights) - 1
        biases = iter(self.biases)
        for j, w in enumerate(self.weights):
            if x.dim() == 2:  # one input for all nets: a single wide product
                h = x @ w.permute(1, 0, 2).reshape(w.shape[1], -1)
                h = h.view(n, self.k, -1).transpose(0, 1)
            else:
                h = torch.bmm(x, w)
            if self.has_bias[j]:
                h = h + next(biases)
            if j == last:
                break
            if self.norms:  # (N, k*width): net i's features are block i
                wide = self.norms[j](h.transpose(0, 1).reshape(n, -1))
                h = wide.view(n, self.k, -1).transpose(0, 1)
            hidden.append(h)
            x = self.activation(h)
        return (h, hidden) if return_hidden else h

    def net(self, i):
        """Net ``i`` as an ``nn.Sequential`` laid out like ``models.mlp``."""
        net = copy.deepcopy(self._template[0])
        linears = [m for m in net if isinstance(m, nn.Linear)]
        biases = iter(self.biases)
        with torch.no_grad():
            for j, layer in enumerate(linears):
                layer.weight.copy_(self.weights[j][i].T)
                if self.has_bias[j]:
                    layer.bias.copy_(next(biases)[i, 0])
        activations = tuple(ACTIVATIONS.values())
        singles = [m for m in net if not isinstance(m, (nn.Linear, *activations))]
        for layer, wide, width in zip(singles, self.norms, self.widths[: len(singles)], strict=True):
            _slice_state(layer, wide, i, width)
        return net.train(self.training)

    def lr_like(self, lr):
        """Per-parameter tensors that give net ``i`` the learning rate ``lr[i]``."""
        lr = torch.as_tensor(lr, dtype=torch.float32).expand(self.k)
        out = {}
        for name, p in self.named_parameters():
            if name.startswith(("weights.", "biases.")):
                out[name] = lr.view(-1, 1, 1)
            else:  # a norm parameter: one block of `width` entries per net
                out[name] = lr.repeat_interleave(p.numel() // self.k).view(p.shape)
        return out


def _concat_state(wide, singles):
    state = {}
    for key, value in singles[0].state_dict().items():
        parts = [s.state_dict()[key] for s in singles]
        state[key] = torch.cat(parts) if value.dim() else value.clone()
    wide.load_state_dict(state)


def _slice_state(single, wide, i, width):
    state = {key: (value[i * width:(i + 1) * width] if value.dim() else value)
             for key, value in wide.state_dict().items()}
    single.load_state_dict(state)


def losses_per_net(logits, y):
    """Mean cross-entropy of each net: ``logits: (k, N, C)``, ``y: (k, N)`` -> ``(k,)``."""
    k, n, c = logits.shape
    return F.cross_entropy(logits.reshape(k * n, c), y.reshape(k * n),
                           reduction="none").view(k, n).mean(1)


@torch.no_grad()
def accuracy(model, x, y, batch_size=10_000):
    """Fraction of ``x`` that each net of ``model`` (in eval mode) classifies as ``y``."""
    was_training = model.training
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum(1)
                  for i in range(0, len(x), batch_size))
    model.train(was_training)
    return (correct.double() / len(x)).numpy()


def train_wide(model, x, y, steps, batch_size, lr, seeds, momentum=0.0, log_every=None,
               on_log=None, progress=True, desc="training"):
    """Train every net of ``model`` with SGD for ``steps`` steps, like ``train.train``.

    Net ``i`` gets learning rate ``lr[i]`` (or one ``lr`` for all) and the mini-batches
    of ``train.train(..., seed=seeds[i])``. ``momentum``: PyTorch's SGD momentum.
    A net whose loss turns non-finite stops at that step (lr 0; ``diverged`` tells
    which) without harming the others. Every ``log_every`` steps and after the last,
    ``on_log(step, model)`` is called in training mode; its values are collected.
    Returns ``(logs, losses (steps, k) as NumPy, diverged (k,) bool)``.
    """
    if len(seeds) != model.k:
        raise ValueError(f"need one seed per net ({model.k}), got {len(seeds)}")
    streams = [batches(x, y, batch_size, seed=s) for s in seeds]
    lr = torch.as_tensor(lr, dtype=torch.float32).expand(model.k).clone()
    params = dict(model.named_parameters())
    buffers = {n: torch.zeros_like(p) for n, p in params.items()} if momentum else {}
    losses = torch.empty(steps, model.k)
    diverged = torch.zeros(model.k, dtype=torch.bool)
    logs = []
    model.train()
    for step in progress_bar(range(1, steps + 1), desc=desc, disable=not progress,
                             mininterval=1):
        pairs = [next(s) for s in streams]
        xb, yb = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        loss = losses_per_net(model(xb), yb)
        losses[step - 1] = loss.detach()
        bad = ~torch.isfinite(loss.detach())
        if bad.any():
            diverged |= bad
            lr[diverged] = 0.0
        total = torch.where(diverged, 0.0, loss).sum() if diverged.any() else loss.sum()
        grads = torch.autograd.grad(total, list(params.values()))
        if bad.any() or step == 1:
            rates = model.lr_like(lr)
        with torch.no_grad():
            for (name, p), g in zip(params.items(), grads, strict=True):
                if diverged.any():  # a frozen net's gradient may be NaN: keep it out
                    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
                if momentum:
                    g = buffers[name].mul_(momentum).add_(g)
                p.addcmul_(rates[name], g, value=-1.0)
        if on_log is not None and log_every and (step % log_every == 0 or step == steps):
            logs.append(on_log(step, model))
            model.train()
    return logs, losses.numpy(), diverged.numpy()


def mean_sd(values, axis=0):
    """Mean and sample standard deviation (``ddof=1``) over ``axis``: the seeds."""
    values = np.asarray(values, dtype=float)
    return values.mean(axis), values.std(axis, ddof=1)


def clearly_less(a, b):
    """True when the runs ``a`` are below the runs ``b`` by more than their spread.

    ``a, b``: one value per seed. "Clearly" means that the ranges mean ± sd of the two
    do not overlap: ``mean(a) + sd(a) < mean(b) - sd(b)``. The book's verdicts use it
    so that a difference smaller than the seed-to-seed variation is not called one.
    """
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    return bool(ma + sa < mb - sb)
