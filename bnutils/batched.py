"""Many small networks trained as one: stacked weights, one forward and backward pass.

Used by notebooks 05 and 07. A sweep over learning rates, initial scales or seeds trains
dozens of networks of one architecture. Trained one after another, a step of a small
network at batch 60 spends much of its time in Python and in tiny matrix products;
stacked, the ``k`` networks share every Python call and their products become one
batched product (``torch.bmm``) that can use both cores.

Each network stays exactly what it would be alone: network ``i`` of a ``StackedMLP``
starts from the weights of ``bnutils.models.mlp`` built with seed ``seeds[i]``, its
batch-norm statistics are computed over its own mini-batch, ``StackedSGD`` applies its
own learning rate as ``torch.optim.SGD`` would, and ``train_stacked`` feeds it the
mini-batches that ``bnutils.train.train`` would draw. Batched and one-by-one training
agree to float32 rounding (``tests/test_batched.py``). Shapes: ``k`` networks,
mini-batch ``B``; stacked parameters have ``k`` as their first dimension.
"""

import math
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .config import generator as make_generator
from .config import progress as progress_bar
from .models import ACTIVATIONS, mlp

_ACTIVATION_FNS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}


def _per_net(value, k, name, dtype=torch.float64):
    """``value`` (a number or ``k`` numbers) as a float64 CPU tensor ``(k,)``."""
    t = torch.as_tensor(value, dtype=dtype).detach().cpu().flatten()
    if t.numel() == 1:
        return t.expand(k).clone()
    if t.numel() != k:
        raise ValueError(f"{name} must be one number or k={k} numbers, got {t.numel()}")
    return t


def _seeds(seeds, k):
    seeds = list(range(k)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != k:
        raise ValueError(f"seeds must have k={k} entries, got {len(seeds)}")
    return seeds


def _check_k(k):
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k (the number of networks) must be a positive integer, got {k!r}")
    return int(k)


class StackedMLP(nn.Module):
    """``k`` independent MLPs of one architecture, stored and run as one.

    Each is ``bnutils.models.mlp(in_features, hidden, out_features, activation, norm)``:
    ``[Linear -> (BN) -> activation] * len(hidden) -> Linear``; ``norm=True`` puts batch
    norm before every hidden activation and drops the bias of the layer before it.

    ``init_std``: a float or ``k`` floats. Net ``i`` starts from exactly the weights of
    ``mlp(..., init_std=init_std[i], generator=bnutils.generator(seeds[i]))``;
    ``init_std=None`` keeps PyTorch's default init, drawn after
    ``torch.manual_seed(seeds[i])`` (the global generator's state is restored after).
    ``eps``, ``momentum``: as in ``nn.BatchNorm1d`` (running statistics
    ``(1 - momentum) * running + momentum * batch``, the batch variance unbiased).

    Parameters: ``weights[j]: (k, out_j, in_j)``, ``biases[j]: (k, out_j)`` (only the
    last layer's with ``norm``), and with ``norm`` ``gamma[j]``, ``beta[j]: (k, h_j)``
    and buffers ``running_mean_j``, ``running_var_j: (k, h_j)``,
    ``num_batches_tracked: (k,)``.
    """

    def __init__(self, k, in_features=784, hidden=(100, 100, 100), out_features=10,
                 activation="sigmoid", norm=False, init_std=0.05, seeds=None, eps=1e-5,
                 momentum=0.1):
        super().__init__()
        self.k = _check_k(k)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {activation!r}")
        if not isinstance(norm, bool):
            raise ValueError(f"norm must be True or False, got {norm!r}")
        self.in_features, self.hidden = in_features, tuple(hidden)
        self.out_features, self.activation, self.norm = out_features, activation, norm
        self.eps, self.momentum = eps, momentum
        self.seeds = _seeds(seeds, self.k)
        self.init_std = None if init_std is None else _per_net(init_std, self.k, "init_std")

        nets = [self._make_net(i) for i in range(self.k)]
        self.weights = _stack(nets, nn.Linear, "weight")
        self.biases = _stack(nets, nn.Linear, "bias")  # the last layer's only, with BN
        self.gamma = _stack(nets, nn.BatchNorm1d, "weight")
        self.beta = _stack(nets, nn.BatchNorm1d, "bias")
        for j, h in enumerate(self.hidden if norm else ()):
            self.register_buffer(f"running_mean_{j}", torch.zeros(self.k, h))
            self.register_buffer(f"running_var_{j}", torch.ones(self.k, h))
        if norm:
            self.register_buffer("num_batches_tracked", torch.zeros(self.k, dtype=torch.long))

    def _make_net(self, i):
        """Net ``i`` as ``models.mlp`` builds it, with its initial weights."""
        norm = partial(nn.BatchNorm1d, eps=self.eps, momentum=self.momentum) if self.norm else None
        build = partial(mlp, self.in_features, self.hidden, self.out_features,
                        self.activation, norm)
        if self.init_std is not None:
            return build(init_std=float(self.init_std[i]),
                         generator=make_generator(self.seeds[i]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seeds[i])
            return build()

    def _running(self, j):
        return getattr(self, f"running_mean_{j}"), getattr(self, f"running_var_{j}")

    def forward(self, x, return_hidden=False):
        """Logits ``(k, B, out_features)`` of every net.

        ``x``: ``(B, in_features)``, the same mini-batch for all nets, or
        ``(k, B, in_features)``, one per net. With ``return_hidden=True`` also returns a
        list with the input of each hidden layer's activation, ``(k, B, h_j)`` (after BN
        when ``norm``).
        """
        shared = _check_input(x, self.k, (self.in_features,), "in_features")
        if self.training and self.norm:
            self.num_batches_tracked += 1
        hidden, bias = [], iter(self.biases)
        act = _ACTIVATION_FNS[self.activation]
        for j, weight in enumerate(self.weights):
            last = j == len(self.weights) - 1
            b = None if (self.norm and not last) else next(bias)
            if shared:  # one matrix product for all nets: (B, in) @ (in, k * out)
                h = x @ weight.reshape(-1, weight.shape[2]).T
                h = h if b is None else h + b.reshape(-1)
                h = h.view(len(x), self.k, -1).transpose(0, 1)
            else:  # (k, B, in) @ (k, in, out)
                h = torch.bmm(x, weight.transpose(1, 2))
                h = h if b is None else h + b.unsqueeze(1)
            if last:
                break
            if self.norm:
                h = self._batch_norm(h, j)
            hidden.append(h)
            x, shared = act(h), False
        return (h, hidden) if return_hidden else h

    def _batch_norm(self, h, j):
        """BN of ``h: (k, B, w)`` per net and unit: ``F.batch_norm`` on ``(B, k * w)``."""
        k, n, w = h.shape
        running_mean, running_var = self._running(j)
        y = F.batch_norm(h.transpose(0, 1).reshape(n, k * w), running_mean.view(-1),
                         running_var.view(-1), self.gamma[j].reshape(-1),
                         self.beta[j].reshape(-1), self.training, self.momentum, self.eps)
        return y.view(n, k, w).transpose(0, 1)

    @torch.no_grad()
    def net(self, i):
        """Net ``i`` as a new ``models.mlp`` ``nn.Sequential`` (a copy, on this device
        and in this dtype),
        with its current parameters and buffers and this stack's train/eval mode."""
        net = self._make_net(i).to(self.weights[0].device, self.weights[0].dtype)
        linears = [m for m in net if isinstance(m, nn.Linear)]
        norms = [m for m in net if isinstance(m, nn.BatchNorm1d)]
        biases = iter(self.biases)
        for layer, weight in zip(linears, self.weights, strict=True):
            layer.weight.copy_(weight[i])
            if layer.bias is not None:
                layer.bias.copy_(next(biases)[i])
        for j, bn in enumerate(norms):
            bn.weight.copy_(self.gamma[j][i])
            bn.bias.copy_(self.beta[j][i])
            running_mean, running_var = self._running(j)
            bn.running_mean.copy_(running_mean[i])
            bn.running_var.copy_(running_var[i])
            bn.num_batches_tracked.copy_(self.num_batches_tracked[i])
        return net.train(self.training)

    def extra_repr(self):
        return (f"k={self.k}, sizes={(self.in_features, *self.hidden, self.out_features)}, "
                f"activation={self.activation!r}, norm={self.norm}")


def _stack(nets, kind, name):
    """The parameter ``name`` of every ``kind`` layer of ``nets``, stacked: one
    ``(k, ...)`` parameter per layer (layers without it are skipped)."""
    layers = zip(*[[m for m in net if isinstance(m, kind)] for net in nets], strict=True)
    return nn.ParameterList(torch.stack([getattr(m, name).detach() for m in same])
                            for same in layers if getattr(same[0], name) is not None)


def _check_input(x, k, feature_shape, what):
    """True if ``x`` is one batch ``(B, *feature_shape)`` for all nets, False if it is
    ``(k, B, *feature_shape)``; a ``ValueError`` naming both shapes otherwise."""
    d = len(feature_shape)
    if x.dim() == d + 1 and tuple(x.shape[1:]) == tuple(feature_shape):
        return True
    if x.dim() == d + 2 and x.shape[0] == k and tuple(x.shape[2:]) == tuple(feature_shape):
        return False
    raise ValueError(f"x must be (B, {', '.join(map(str, feature_shape))}) or "
                     f"(k={k}, B, {', '.join(map(str, feature_shape))}) ({what}), "
                     f"got {tuple(x.shape)}")


class StackedSGD:
    """SGD for stacked parameters, with a learning rate, momentum and weight decay per net.

    ``params``: tensors whose first dimension is ``k`` (e.g. ``model.parameters()`` of a
    ``StackedMLP``). ``lr``, ``momentum``, ``weight_decay``: a number or ``k`` numbers.
    Net ``i`` is updated as ``torch.optim.SGD`` (no dampening, no Nesterov) updates it
    alone: ``d = grad + weight_decay * p``; ``buf = momentum * buf + d`` (``buf = d`` on
    the first step); ``p -= lr * buf``.

    ``freeze(nets)`` stops updating some nets for good (a diverged net); their parameters
    keep their values even when their gradients are not finite.
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError("StackedSGD got no parameters")
        ks = {p.shape[0] if p.dim() else None for p in self.params}
        if len(ks) != 1 or None in ks:
            raise ValueError(f"every parameter must have the number of nets k as its first "
                             f"dimension, got first dimensions {sorted(map(str, ks))}")
        self.k = ks.pop()
        self.device = self.params[0].device
        self.momentum = _per_net(momentum, self.k, "momentum")
        self.weight_decay = _per_net(weight_decay, self.k, "weight_decay")
        if (self.momentum < 0).any() or (self.weight_decay < 0).any():
            raise ValueError("momentum and weight_decay must be >= 0")
        self.dtype = self.params[0].dtype
        self._momentum = self.momentum.to(self.device, self.dtype)
        self._weight_decay = self.weight_decay.to(self.device, self.dtype)
        self.buffers = ([torch.zeros_like(p) for p in self.params]
                        if (self.momentum > 0).any() else None)
        self.active = torch.ones(self.k, dtype=torch.bool, device=self.device)
        self._any_frozen = False
        self.set_lr(lr)

    def set_lr(self, lr):
        """Set the learning rates: a number or ``k`` numbers (for schedules)."""
        self.lr = _per_net(lr, self.k, "lr")
        if (self.lr < 0).any() or not torch.isfinite(self.lr).all():
            raise ValueError(f"learning rates must be finite and >= 0, got {self.lr.tolist()}")
        # in the parameters' precision, like the lr that torch.optim.SGD passes its kernels
        self._lr = self.lr.to(self.device, self.dtype)

    def freeze(self, nets):
        """Stop updating ``nets`` (a boolean mask ``(k,)`` or indices) from now on."""
        mask = torch.zeros(self.k, dtype=torch.bool, device=self.device)
        mask[torch.as_tensor(nets, device=self.device)] = True
        self.active &= ~mask
        self._any_frozen = not bool(self.active.all())

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        for j, p in enumerate(self.params):
            if p.grad is None:
                continue
            shape = (self.k,) + (1,) * (p.dim() - 1)  # broadcast a (k,) vector over p
            d = p.grad
            if (self.weight_decay > 0).any():
                d = d.addcmul(self._weight_decay.view(shape), p)
            if self.buffers is not None:
                buf = self.buffers[j]
                new = buf.mul(self._momentum.view(shape)).add_(d)
                if self._any_frozen:
                    new = torch.where(self.active.view(shape), new, buf)
                buf.copy_(new)
                d = buf
            if self._any_frozen:  # where, not lr=0: 0 * nan would still be nan
                p.sub_(torch.where(self.active.view(shape), self._lr.view(shape) * d, 0.0))
            else:
                p.addcmul_(self._lr.view(shape), d, value=-1.0)


class _IndexStream:
    """The mini-batch indices that ``bnutils.data.batches`` draws, for several seeds.

    ``next()`` returns ``(len(seeds), batch_size)`` indices into the data: row ``j`` is
    the batch that ``batches(x, y, batch_size, seed=seeds[j])`` yields at this step
    (a new permutation from the seed's generator each epoch, the last partial batch
    dropped).
    """

    def __init__(self, n, batch_size, seeds, device):
        if batch_size < 1 or batch_size > n:
            raise ValueError(f"batch_size must be between 1 and {n}, got {batch_size}")
        self.n, self.batch_size, self.device = n, batch_size, device
        self.generators = [make_generator(s) for s in seeds]
        self.per_epoch = n // batch_size
        self.position = self.per_epoch  # start with a fresh epoch

    def __next__(self):
        if self.position == self.per_epoch:
            perms = [torch.randperm(self.n, generator=g) for g in self.generators]
            stop = self.per_epoch * self.batch_size
            self.epoch = torch.stack(perms)[:, :stop].reshape(
                len(perms), self.per_epoch, self.batch_size).to(self.device)
            self.position = 0
        self.position += 1
        return self.epoch[:, self.position - 1]


def _data_seeds(data_seeds, model):
    if data_seeds is None:
        return list(model.seeds)
    if isinstance(data_seeds, int | np.integer):
        return [int(data_seeds)] * model.k
    seeds = [int(s) for s in data_seeds]
    if len(seeds) != model.k:
        raise ValueError(f"data_seeds must be None, one int or k={model.k} ints, "
                         f"got {len(seeds)}")
    return seeds


def per_net_loss(logits, y):
    """Mean cross-entropy of each net: ``logits (k, B, C)``, ``y (B,)`` or ``(k, B)`` ->
    ``(k,)``."""
    k, n, c = logits.shape
    y = y.expand(k, n).reshape(-1)
    return F.cross_entropy(logits.reshape(k * n, c), y, reduction="none").view(k, n).mean(1)


def train_stacked(model, x, y, steps, lr, batch_size=60, data_seeds=None, momentum=0.0,
                  weight_decay=0.0, schedule=None, log_every=None, callback=None,
                  progress=True, max_loss=None, desc="training"):
    """Train the ``k`` nets of ``model`` with cross-entropy and SGD for ``steps`` steps.

    ``x: (N, ...)``, ``y: (N,)``: the training set, on the model's device.
    ``lr``, ``momentum``, ``weight_decay``: a number or ``k`` numbers (``StackedSGD``).
    ``data_seeds``: net ``i`` sees the mini-batches that
    ``bnutils.train.train(..., batch_size=batch_size, seed=data_seeds[i])`` draws;
    ``None`` uses the nets' init ``seeds`` (as ``figure1`` seeds both with one number),
    one int gives every net the same batches. Nets with equal data seeds share one
    batch (faster).
    ``schedule``: ``t -> factor`` (a number or ``k`` numbers); update ``t = 1, 2, ...``
    uses ``lr * schedule(t - 1)``, as ``torch.optim.lr_scheduler.LambdaLR(opt,
    schedule)`` stepped after every update does.
    ``max_loss``: a loss above it counts as diverged too (``None``: only non-finite).

    A net whose mini-batch loss is not finite (or exceeds ``max_loss``) is flagged and
    frozen before that step's update, as ``train.train(..., max_loss=...)`` stops:
    its parameters and running statistics stay as they were, its loss is masked out of
    the summed loss (so its ``nan`` cannot reach the others' gradients), and the other
    nets train on unchanged.

    Every ``log_every`` steps and after the last (only after the last if ``None``),
    ``callback(step, model)`` is called with the model in training mode. Returns a dict
    of NumPy arrays, ``n`` logs: ``step (n,)``; ``loss (n, k)``, the mean mini-batch loss
    since the previous log (``nan`` once a net is frozen); ``losses (steps, k)``, every
    mini-batch loss; ``diverged (k,)`` bool; ``diverged_step (k,)``, the step whose loss
    diverged (``-1``: never). If ``callback`` returns a dict, each of its keys becomes an
    array ``(n, ...)`` of the returned values; anything else is collected in a list under
    ``"callback"``.
    """
    k = model.k
    seeds = _data_seeds(data_seeds, model)
    unique = sorted(set(seeds))
    stream = _IndexStream(len(x), batch_size, unique, x.device)
    # the row of the stream's output that each net uses; None: all nets share one batch
    rows = (None if len(unique) == 1
            else torch.tensor([unique.index(s) for s in seeds], device=x.device))
    optimizer = StackedSGD(model.parameters(), lr, momentum, weight_decay)
    base_lr = optimizer.lr.clone()
    state = [b for b in model.buffers() if b.dim() and b.shape[0] == k]  # BN statistics

    losses = torch.full((steps, k), math.nan, device=x.device)
    diverged_step = torch.full((k,), -1, dtype=torch.long)
    logged, returned = [], []
    model.train()
    for step in progress_bar(range(1, steps + 1), desc=desc, disable=not progress,
                             mininterval=1):
        if schedule is not None:
            optimizer.set_lr(base_lr * _per_net(schedule(step - 1), k, "schedule"))
        idx = next(stream)
        idx = idx[0] if rows is None else idx[rows]
        frozen = ~optimizer.active if optimizer._any_frozen else None
        saved = [b.clone() for b in state] if frozen is not None else None

        loss = per_net_loss(model(x[idx]), y[idx])
        losses[step - 1] = torch.where(optimizer.active, loss.detach(), math.nan)
        ok = torch.isfinite(loss)
        if max_loss is not None:
            ok &= loss <= max_loss
        bad = optimizer.active & ~ok
        if bad.any():
            diverged_step[bad.cpu()] = step
            optimizer.freeze(bad)

        optimizer.zero_grad()
        torch.where(optimizer.active, loss, 0.0).sum().backward()
        optimizer.step()
        if saved is not None:  # frozen nets keep their statistics (after backward: it uses them)
            for b, old in zip(state, saved, strict=True):
                b.copy_(torch.where(frozen.view((k,) + (1,) * (b.dim() - 1)), old, b))

        if step == steps or (log_every and step % log_every == 0):
            logged.append(step)
            if callback is not None:
                returned.append(callback(step, model))
                model.train()

    losses = losses.cpu().numpy()
    edges = [0, *logged]
    out = {
        "step": np.array(logged, dtype=np.int64),
        "loss": np.stack([losses[a:b].mean(0) for a, b in zip(edges[:-1], edges[1:],
                                                                strict=True)]),
        "losses": losses,
        "diverged": diverged_step.numpy() >= 0,
        "diverged_step": diverged_step.numpy(),
    }
    if returned and all(isinstance(r, dict) for r in returned):
        for key in returned[0]:
            out[key] = np.stack([_numpy(r[key]) for r in returned])
    elif callback is not None:
        out["callback"] = returned
    return out


def _numpy(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


@torch.no_grad()
def accuracy(model, x, y, batch_size=10_000):
    """Fraction of ``x`` that each net (in eval mode) classifies as ``y``: ``(k,)`` NumPy.

    ``x: (N, ...)`` shared by all nets, ``y: (N,)``. The model's mode is restored.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros(model.k, dtype=torch.long, device=x.device)
    for i in range(0, len(x), batch_size):
        correct += (model(x[i:i + batch_size]).argmax(2) == y[i:i + batch_size]).sum(1)
    model.train(was_training)
    return correct.cpu().numpy() / len(x)


__all__ = ["StackedMLP", "StackedSGD", "accuracy", "per_net_loss", "train_stacked"]
