"""BN taken apart: which of its pieces matters, and where it goes. Many small MLPs
trained side by side.

BN centres (subtracts mu_B), scales (divides by sqrt(sigma_B^2 + eps)) and then applies
a learned gamma and beta, before the nonlinearity. ``PartialBatchNorm`` switches each
piece on or off, and ``StackedPieces`` trains k MLPs of the paper's MNIST shape at once
(batched weights, one forward and backward for all), each with its own pieces,
placement, learning rate and seed, so that a whole grid of variants, rates and seeds
trains in seconds; ``bnutils.batched.train_stacked`` trains it. Used by the ablation
exercises of notebook 02.

Both always normalize with the statistics of the batch they are given (no running
statistics): evaluate with one large batch, whose statistics are close to the
population's.
"""

import torch
from torch import nn

from . import batched
from .config import generator
from .models import mlp

# The variants of the exercises: which pieces each one keeps.
VARIANTS = {
    "BN": dict(center=True, scale=True, learn_gamma=True, learn_beta=True),
    "mean only": dict(center=True, scale=False, learn_gamma=True, learn_beta=True),
    "variance only": dict(center=False, scale=True, learn_gamma=True, learn_beta=True),
    "frozen gamma, beta": dict(center=True, scale=True, learn_gamma=False,
                               learn_beta=False),
    "BN after sigmoid": dict(center=True, scale=True, learn_gamma=True, learn_beta=True,
                             after=True),
    "no normalization": dict(center=False, scale=False, learn_gamma=False,
                             learn_beta=True),
}


class PartialBatchNorm(nn.Module):
    """BN's training-mode transform with its pieces switched on or off.

    ``center``: subtract the batch mean; ``scale``: divide by the batch standard
    deviation ``sqrt(sigma_B^2 + eps)`` (taken around the mean, as in BN);
    ``learn_gamma``, ``learn_beta``: learn gamma (else fixed at 1) and beta (else 0).
    With nothing switched on but beta, it is a plain bias. ``x: (N, D)``, statistics
    over N.
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


def _as_list(value, k, name):
    values = list(value) if isinstance(value, (list, tuple, range)) else [value] * k
    if len(values) != k:
        raise ValueError(f"{name} needs one value per net ({k}), got {len(values)}")
    return values


def placed_after(net, norm):
    """``net`` (an ``mlp`` without norm) with ``norm(width)`` after each nonlinearity."""
    layers = []
    for i, layer in enumerate(net):
        layers.append(layer)
        if i + 1 < len(net) and not isinstance(layer, nn.Linear):
            layers.append(norm(net[i - 1].out_features))
    return nn.Sequential(*layers)


class StackedPieces(nn.Module):
    """k MLPs ``[Linear -> PartialBatchNorm -> sigmoid] * 3 -> Linear``, one per entry of
    ``pieces`` (dicts of ``PartialBatchNorm``'s switches, and ``after=True`` for
    ``[Linear (with bias) -> sigmoid -> PartialBatchNorm]``), trained side by side.

    Net i starts from the weights of ``net(i)``'s construction:
    ``mlp(norm=PartialBatchNorm(**pieces[i]), init_std=init_std,
    generator=bnutils.generator(seeds[i]))`` (biases start at 0). ``forward(x)``:
    ``x: (B, in)`` shared by all nets or ``(k, B, in)``, logits ``(k, B, out)``.
    """

    def __init__(self, pieces, seeds, hidden=(100, 100, 100), in_features=784,
                 out_features=10, init_std=0.1, eps=1e-5):
        super().__init__()
        self.pieces = [dict(p) for p in pieces]
        self.k = k = len(self.pieces)
        self.seeds = _as_list(seeds, k, "seeds")
        self.shape = dict(in_features=in_features, hidden=tuple(hidden),
                          out_features=out_features, init_std=init_std, eps=eps)
        nets = [self._single(i) for i in range(k)]
        linears = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        norms = [[m for m in net if isinstance(m, PartialBatchNorm)] for net in nets]
        # the bias of a hidden layer before its sigmoid: used (and learned) only when after
        self.hidden_bias = nn.ParameterList(
            nn.Parameter(torch.zeros(k, 1, h)) for h in hidden)
        # weights as (k, in, out): a batched matmul multiplies each net's batch by its own
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([ls[j].weight.detach().T for ls in linears]))
            for j in range(len(hidden) + 1))
        self.bias = nn.Parameter(torch.stack([ls[-1].bias.detach() for ls in linears])[:, None])
        self.gammas = nn.ParameterList(
            nn.Parameter(torch.stack([ns[j].gamma.detach() for ns in norms])[:, None])
            for j in range(len(hidden)))
        self.betas = nn.ParameterList(
            nn.Parameter(torch.stack([ns[j].beta.detach() for ns in norms])[:, None])
            for j in range(len(hidden)))

        def mask(key):
            return torch.tensor([float(p.get(key, True)) for p in self.pieces])[:, None, None]

        self.register_buffer("scale", mask("scale"))
        for key in ("center", "learn_gamma", "learn_beta"):
            self.register_buffer(key, mask(key).bool())
        self.register_buffer(
            "after", torch.tensor([bool(p.get("after", False)) for p in self.pieces])[:, None, None])

    def _single(self, i):
        s, pieces = self.shape, dict(self.pieces[i])
        after = pieces.pop("after", False)

        def norm(d):
            return PartialBatchNorm(d, eps=s["eps"], **pieces)

        net = mlp(s["in_features"], s["hidden"], s["out_features"], "sigmoid",
                  norm=None if after else norm, init_std=s["init_std"],
                  generator=generator(self.seeds[i]))
        return placed_after(net, norm) if after else net

    def forward(self, x):
        h = x
        for j, w in enumerate(self.weights[:-1]):
            if h.dim() == 2:  # a shared input: one matrix product for all k nets
                k, n_in, n_out = w.shape
                h = (h @ w.transpose(0, 1).reshape(n_in, k * n_out)).view(-1, k, n_out)
                h = h.transpose(0, 1)
            else:
                h = torch.bmm(h, w)
            h = torch.where(self.after, torch.sigmoid(h + self.hidden_bias[j]), h)
            dev = h - h.mean(1, keepdim=True)
            h = torch.where(self.center, dev, h)
            # the biased variance, as a mean of squares (faster than var over dim 1)
            std = torch.sqrt((dev * dev).mean(1, keepdim=True) + self.shape["eps"])
            h = h / (self.scale * std + (1.0 - self.scale))
            # a fixed gamma or beta is replaced by 1 or 0, so its gradient is 0 and SGD
            # leaves it where it started
            gamma = torch.where(self.learn_gamma, self.gammas[j], 1.0)
            h = gamma * h + torch.where(self.learn_beta, self.betas[j], 0.0)
            h = torch.where(self.after, h, torch.sigmoid(h))
        return torch.matmul(h, self.weights[-1]) + self.bias

    def net(self, i):
        """Net i as an ordinary ``nn.Sequential`` with its current parameters."""
        net = self._single(i)
        linears = [m for m in net if isinstance(m, nn.Linear)]
        norms = [m for m in net if isinstance(m, PartialBatchNorm)]
        with torch.no_grad():
            for layer, w in zip(linears, self.weights, strict=True):
                layer.weight.copy_(w[i].T)
            for layer, b in zip(linears, self.hidden_bias, strict=False):
                if layer.bias is not None:
                    layer.bias.copy_(b[i, 0])
            linears[-1].bias.copy_(self.bias[i, 0])
            for norm, g, b in zip(norms, self.gammas, self.betas, strict=True):
                norm.gamma.copy_(g[i, 0])
                norm.beta.copy_(b[i, 0])
        return net


def run_grid(variants, lrs, seeds, steps, n_val, batch_size=60, init_std=0.1):
    """Train every (variant, learning rate, seed) of the grid side by side on MNIST.

    ``variants``: names in ``VARIANTS``. The networks train on the training set less a
    validation split of 10,000 images (``bnutils.data.train_val_split``, seed 0) and are
    evaluated on the first ``n_val`` of those, in one batch. Returns arrays of shape
    ``(len(variants), len(lrs), len(seeds))``: ``acc`` (validation accuracy), ``loss``
    (mean training loss over the last tenth of the steps), ``gamma`` and ``beta`` (mean
    absolute value over the units of every layer at the end).
    """
    from . import data  # the data set is read only when a grid is run

    x, y = data.mnist_tensors("train")
    (x_tr, y_tr), (x_val, y_val) = data.train_val_split(x, y, 10_000, seed=0)
    grid = [(v, lr, s) for v in variants for lr in lrs for s in seeds]
    model = StackedPieces([VARIANTS[v] for v, _, _ in grid], [s for *_, s in grid],
                          init_std=init_std)
    log = batched.train_stacked(model, x_tr, y_tr, steps, [lr for _, lr, _ in grid],
                                batch_size, progress=False)
    shape = (len(variants), len(lrs), len(seeds))

    def mean_abs(params):
        return torch.stack([p.detach().abs().mean((1, 2)) for p in params]).mean(0)

    return {"acc": batched.accuracy(model, x_val[:n_val], y_val[:n_val]).reshape(shape),
            "loss": log["losses"][-max(1, steps // 10):].mean(0).reshape(shape),
            "gamma": mean_abs(model.gammas).numpy().reshape(shape),
            "beta": mean_abs(model.betas).numpy().reshape(shape)}
