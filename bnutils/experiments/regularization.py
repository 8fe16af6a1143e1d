"""Does BN regularize? Dropout, BN and ghost BN on a small training set.

Derived in notebook 07. Section 3.4 of the paper: a training example is seen together
with random batch-mates, so BN's output for it is noisy, which "acts as a regularizer"
and can make Dropout unnecessary. Tested where overfitting shows: a ReLU MLP trained on
a few thousand MNIST images until it fits them, {no BN, BN} x {no dropout, dropout},
then BN's noise turned up and down with ghost batches (the statistics of every
``virtual_batch`` examples of a mini-batch, Hoffer et al., 2017).

``bnutils.batched.StackedMLP`` has neither dropout nor ghost batches;
``RegularizedMLP`` adds both to its forward pass (per network), and nothing else.
"""

from functools import lru_cache

import numpy as np
import torch

from ..batched import StackedMLP, accuracy, train_stacked
from ..cache import train_or_load
from ..data import mnist_tensors, train_val_split

VAL_SIZE = 5000


class RegularizedMLP(StackedMLP):
    """``StackedMLP`` with dropout after every hidden activation and ghost BN.

    ``dropout``: a rate per net (one number or ``k``); net ``i`` zeroes each hidden
    activation with probability ``dropout[i]`` in training and scales the rest by
    ``1 / (1 - dropout[i])`` (``nn.Dropout``). ``virtual_batch``: ``None`` or one size
    per net (``None`` entries: the whole mini-batch); with ``norm``, net ``i``
    normalizes each run of ``virtual_batch[i]`` consecutive examples of its
    mini-batch with their own statistics, as ``bnutils.norms.GhostBatchNorm`` does
    (the mini-batch must be a multiple of it), and its running statistics move towards
    the average over those chunks. Evaluation uses the running statistics, no dropout.
    """

    def __init__(self, k, *args, dropout=0.0, virtual_batch=None, **kwargs):
        super().__init__(k, *args, **kwargs)
        self.dropout = torch.as_tensor(np.broadcast_to(np.asarray(dropout, float), (k,)).copy())
        if ((self.dropout < 0) | (self.dropout >= 1)).any():
            raise ValueError(f"dropout rates must be in [0, 1), got {self.dropout.tolist()}")
        sizes = [None] * k if virtual_batch is None else list(virtual_batch)
        if len(sizes) != k:
            raise ValueError(f"virtual_batch must have k={k} entries, got {len(sizes)}")
        if any(v is not None and v < 2 for v in sizes):
            raise ValueError(f"virtual batch sizes must be at least 2, got {sizes}")
        if not self.norm and any(v is not None for v in sizes):
            raise ValueError("virtual_batch needs norm=True")
        self.virtual_batch = sizes
        # the dropout masks come from a generator of their own, seeded by the nets'
        # seeds: the global one's state depends on whatever ran before in the process
        self.mask_seed = int(sum(kwargs.get("seeds") or [0])) + 7919 * k
        self._mask_generator = None

    def _masks(self, device):
        if self._mask_generator is None or self._mask_generator.device != device:
            self._mask_generator = torch.Generator(device=device).manual_seed(self.mask_seed)
        return self._mask_generator

    def forward(self, x):
        """Logits ``(k, B, out_features)``; ``x: (B, in_features)`` shared by all nets."""
        biases = iter(self.biases)
        act = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}[self.activation]
        if self.training and self.norm:
            self.num_batches_tracked += 1
        h = x
        for j, weight in enumerate(self.weights):
            last = j == len(self.weights) - 1
            if j == 0:  # one product for all nets: (B, in) @ (in, k * out)
                h = (x @ weight.reshape(-1, weight.shape[2]).T).view(len(x), self.k, -1)
                h = h.transpose(0, 1)
            else:
                h = torch.bmm(h, weight.transpose(1, 2))
            if not self.norm or last:
                h = h + next(biases).unsqueeze(1)
            if last:
                return h
            if self.norm:
                h = self._ghost_norm(h, j) if self.training else self._batch_norm(h, j)
            h = act(h)
            if self.training and (self.dropout > 0).any():
                keep = (1 - self.dropout).to(h).view(-1, 1, 1)
                draw = torch.rand(h.shape, generator=self._masks(h.device), device=h.device,
                                  dtype=h.dtype)
                h = h * (draw < keep) / keep
        return h

    def _ghost_norm(self, h, j):
        """BN of ``h: (k, B, w)`` in training, per net over its virtual batches."""
        k, n, w = h.shape
        sizes = [n if v is None else v for v in self.virtual_batch]
        if any(n % v for v in sizes):
            raise ValueError(f"the mini-batch ({n}) must be a multiple of every virtual "
                             f"batch size, got {sorted(set(sizes))}")
        running_mean, running_var = self._running(j)
        out = torch.empty_like(h)
        for v in sorted(set(sizes)):
            nets = torch.tensor([i for i, s in enumerate(sizes) if s == v])
            chunks = h[nets].view(len(nets), n // v, v, w)
            mean = chunks.mean(2, keepdim=True)
            var = chunks.var(2, unbiased=False, keepdim=True)
            x_hat = ((chunks - mean) / torch.sqrt(var + self.eps)).view(len(nets), n, w)
            out[nets] = self.gamma[j][nets].unsqueeze(1) * x_hat + self.beta[j][nets].unsqueeze(1)
            with torch.no_grad():
                unbiased = var.squeeze(2) * v / (v - 1)
                running_mean[nets] = torch.lerp(running_mean[nets], mean.squeeze(2).mean(1),
                                                self.momentum)
                running_var[nets] = torch.lerp(running_var[nets], unbiased.mean(1),
                                               self.momentum)
        return out


@lru_cache(maxsize=1)
def _tensors(n_train):
    """MNIST: the first ``n_train`` training images (after a fixed validation split is
    taken out), the validation split and the test set, ``(N, 784)``."""
    x, y = mnist_tensors("train")
    n_val = VAL_SIZE * len(x) // 60_000  # offline: the same share of the subset
    (x, y), (x_val, y_val) = train_val_split(x, y, n_val, seed=0)
    x_test, y_test = mnist_tensors("test")
    return x[:n_train], y[:n_train], x_val, y_val, x_test, y_test


def run_nets(steps, norm, nets, seeds, n_train=5000, hidden=(100, 100, 100), lr=0.1,
             batch_size=60, evals=10, n_val=None, n_test=None):
    """Train one ReLU MLP per (variant, seed), side by side, on ``n_train`` images; no
    caching. ``nets``: a list of ``(dropout, virtual_batch)`` variants; ``lr``: one
    rate or one per variant. Plain SGD, no weight decay, PyTorch's default init; net
    ``(variant, seed)`` is seeded with ``seed`` and all nets see the same mini-batches.

    Returns arrays ``[variant, seed]``: ``train_acc``, ``val_acc``, ``acc`` (test),
    all at the end, and ``step (n,)``, ``train_curve``, ``val_curve`` ``(n, variants,
    seeds)`` every ``steps / evals`` steps.
    """
    x, y, x_val, y_val, x_test, y_test = _tensors(n_train)
    x_val, y_val, x_test, y_test = x_val[:n_val], y_val[:n_val], x_test[:n_test], y_test[:n_test]
    n_v, n_s = len(nets), len(seeds)
    model = RegularizedMLP(n_v * n_s, 784, tuple(hidden), 10, "relu", norm=norm, init_std=None,
                           seeds=list(seeds) * n_v,
                           dropout=np.repeat([d for d, _ in nets], n_s),
                           virtual_batch=[v for _, v in nets for _ in seeds])
    rates = np.repeat(np.broadcast_to(np.asarray(lr, dtype=float), (n_v,)), n_s)

    def callback(step, model):
        return {"train_curve": accuracy(model, x, y).reshape(n_v, n_s),
                "val_curve": accuracy(model, x_val, y_val).reshape(n_v, n_s)}

    logs = train_stacked(model, x, y, steps, rates, batch_size=batch_size, data_seeds=0,
                         log_every=max(1, steps // evals), callback=callback,
                         desc=f"{'BN' if norm else 'no BN'} MLP")
    return {
        "step": logs["step"], "train_curve": logs["train_curve"],
        "val_curve": logs["val_curve"],
        "train_acc": logs["train_curve"][-1], "val_acc": logs["val_curve"][-1],
        "acc": accuracy(model, x_test, y_test).reshape(n_v, n_s),
        "diverged": logs["diverged"].reshape(n_v, n_s),
    }


# the cached stacks of ``regularization``: "ghost" holds BN's ghost-batch runs, kept
# apart from "bn" so that two worker processes get about the same work
STACKS = ("none", "bn", "ghost")


def regularization(steps, seeds, lr, virtual_batches=(), dropout=0.5, nets=STACKS,
                   **options):
    """{no BN, BN} x {no dropout, dropout}, and BN with each ghost batch size of
    ``virtual_batches`` (no dropout), every one with every seed (cached).

    ``lr``: ``{"none": rate, "bn": rate}``, and optionally ``"none_dropout"`` and
    ``"bn_dropout"`` (each network at its own tuned rate; missing: the rate without
    dropout); the ghost runs take BN's. ``dropout``: one rate, or ``{"none": p, "bn":
    p}`` (each tuned). Returns ``{name: {train_acc, val_acc, acc, gap, train_curve,
    val_curve, step}}`` with ``name`` in ``"none"``, ``"none_dropout"``, ``"bn"``,
    ``"bn_dropout"``, ``"ghost_<size>"``; ``gap`` is train minus test accuracy, per seed.
    ``nets``: only the runs of these stacks of ``STACKS`` (e.g. one per worker process,
    ``parallel.prefill``).
    """
    p = dropout if isinstance(dropout, dict) else {"none": dropout, "bn": dropout}
    variants = {"none": [((0.0, None), "none"), ((p["none"], None), "none_dropout")],
                "bn": [((0.0, None), "bn"), ((p["bn"], None), "bn_dropout")],
                "ghost": [((0.0, int(v)), f"ghost_{v}") for v in virtual_batches]}
    out = {}
    for net in nets:
        if not variants[net]:
            continue
        norm = net != "none"
        base = "bn" if norm else "none"
        rates = [float(lr.get(name, lr[base])) if net != "ghost" else float(lr["bn"])
                 for _, name in variants[net]]
        config = {"steps": steps, "norm": norm,
                  "nets": [[float(d), v] for (d, v), _ in variants[net]],
                  "seeds": list(seeds), "lr": rates, **options}
        r = train_or_load(
            f"regularization-{net}", config,
            lambda **c: run_nets(**{**c, "nets": [tuple(v) for v in c["nets"]]}),
            verbose=False)
        for i, (_, name) in enumerate(variants[net]):
            out[name] = {k: r[k][..., i, :] if r[k].ndim == 3 else r[k][i]
                         for k in ("train_acc", "val_acc", "acc", "train_curve", "val_curve")}
            out[name]["gap"] = out[name]["train_acc"] - out[name]["acc"]
            out[name]["step"] = r["step"]
    return out


def tune(steps, norm, rates, dropouts=(0.0,), seed=0, **options):
    """Final validation accuracy of the net at every learning rate of ``rates`` and
    dropout rate of ``dropouts`` (one stack, one seed; cached): ``{"lr": (R,),
    "dropout": (D,), "val_acc": (D, R), "step": (n,), "val_curve": (n, D, R)}``, the
    last two along the run."""
    def run(**c):
        grid = [(d, r) for d in c["dropouts"] for r in c["rates"]]
        out = run_nets(c["steps"], c["norm"], [(d, None) for d, _ in grid], [c["seed"]],
                       lr=[r for _, r in grid],
                       **{k: c[k] for k in c
                          if k not in ("steps", "norm", "rates", "dropouts", "seed")})
        shape = (len(c["dropouts"]), len(c["rates"]))
        return {"lr": np.array(c["rates"]), "dropout": np.array(c["dropouts"]),
                "val_acc": out["val_acc"][:, 0].reshape(shape),
                # logged along the run, so that a replay of its first steps checks it
                "step": out["step"], "val_curve": out["val_curve"][..., 0].reshape(
                    (-1, *shape))}

    config = {"steps": steps, "norm": norm, "rates": list(map(float, rates)),
              "dropouts": list(map(float, dropouts)), "seed": seed, **options}
    return train_or_load("regularization-tune", config, run, verbose=False)


def best(tuned, dropout):
    """The best setting of a ``tune`` result: ``(dropout rate, lr, interior)``.

    ``dropout``: False for the network without dropout (the row ``dropout == 0``), True
    for the one with dropout (the rows ``dropout > 0``). ``interior`` says whether the
    choice is bracketed: the best rate lies inside the rate grid, and the best dropout
    rate is not the largest of the grid (the smallest positive one is bracketed by
    0 from below). A best value at an edge means: extend the grid.
    """
    val = np.asarray(tuned["val_acc"], dtype=float)
    p = np.asarray(tuned["dropout"], dtype=float)
    rows = np.flatnonzero(p > 0) if dropout else np.flatnonzero(p == 0)
    if not len(rows):
        raise ValueError(f"no {'positive' if dropout else 'zero'} dropout rate in "
                         f"{p.tolist()}")
    i, j = np.unravel_index(int(np.argmax(val[rows])), val[rows].shape)
    row = rows[i]
    inside = 0 < j < val.shape[1] - 1 and (not dropout or row < len(p) - 1)
    return float(p[row]), float(tuned["lr"][j]), bool(inside)
