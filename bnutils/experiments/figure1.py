"""Figure 1 of the paper: a sigmoid MLP on MNIST with and without BN (section 4.1).

Derived in notebook 05. Both networks see the same mini-batches in the same order; at
every log the whole test set goes through each network once, in eval mode, and that one
forward pass gives both the test accuracy and the inputs to the last hidden layer's
sigmoids, whose percentiles are the paper's Figure 1 (b, c). Training runs on one
thread; the probes run on a second one (``Prober``), so a two-core CPU hides their cost.
"""

import contextlib
import copy
import functools
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from .. import cache, data, train
from ..config import device as default_device
from ..config import generator as make_generator
from ..models import mlp

PERCENTILES = (0.15, 0.50, 0.85)
NETS = ("baseline", "bn")


def figure1(steps=50_000, seed=0, batch_size=60, log_every=500, lr=2.0, init_std=0.05,
            units=8, pct_examples=1000, progress=True):
    """Train the baseline and the BN network of Figure 1 and return their logs (cached).

    Both are ``784-100-100-100-10`` sigmoid MLPs (``bnutils.models.mlp``) with weights
    from N(0, ``init_std``^2), trained by plain SGD at learning rate ``lr`` with
    cross-entropy on mini-batches of ``batch_size``; the BN net has ``BatchNorm1d``
    before every hidden sigmoid and no bias in the layer before it.

    Returns a dict of NumPy arrays, with ``n = n_logged`` (every ``log_every`` steps and
    after the last):

    - ``step: (n,)`` int64; ``acc_baseline``, ``acc_bn: (n,)`` float64, test accuracy;
    - ``pct_baseline``, ``pct_bn: (n, 3)``: 15th, 50th, 85th percentiles, over the first
      ``pct_examples`` test images, of the input to sigmoid 0 of the last hidden layer
      (for the BN net, the BN output in eval mode);
    - ``pct_units_baseline``, ``pct_units_bn: (n, units, 3)``: the same for sigmoids
      ``0 .. units-1`` of that layer (``pct_*`` is unit 0 of these);
    - ``loss_baseline``, ``loss_bn: (n,)``: mean training loss since the previous log;
    - ``seconds``: a dict with the wall-clock time of each network's run (not arrays).
    """
    config = dict(steps=steps, seed=seed, batch_size=batch_size, log_every=log_every,
                  lr=lr, init_std=init_std, units=units, pct_examples=pct_examples)
    return cache.train_or_load("figure1", config,
                               functools.partial(_run, progress=progress))


def make_net(norm, init_std, seed):
    """The Figure 1 network, ``norm=None`` (baseline) or ``nn.BatchNorm1d`` (BN).

    The same ``seed`` gives both the same weights, so BN is their only difference.
    """
    return mlp(784, (100, 100, 100), 10, activation="sigmoid", norm=norm,
               init_std=init_std, generator=make_generator(seed))


@torch.no_grad()
def probe(model, x, y, n_pct, units):
    """Test hits and sigmoid-input percentiles of ``model`` from one forward pass.

    ``x: (N, 784)``, ``y: (N,)``. Returns ``correct`` (0-d int tensor, the number of
    ``x`` classified right) and ``pct: (units, 3)``,
    the ``PERCENTILES`` over ``x[:n_pct]`` of the inputs to the first ``units`` sigmoids
    of the last hidden layer. The model is evaluated in eval mode.
    """
    model.eval()
    pre = model[:-2](x)  # everything before the last sigmoid: its input, (N, 100)
    logits = model[-1](torch.sigmoid(pre))
    correct = (logits.argmax(1) == y).sum()
    q = torch.tensor(PERCENTILES, device=x.device)
    pct = torch.quantile(pre[:n_pct, :units], q, dim=0).T
    return correct, pct


class Prober:
    """``on_log`` for ``bnutils.train.train``: ``probe`` a snapshot of the model in a thread.

    Each call copies the model as it is at the logged step and queues ``probe`` on that
    copy in one background thread, returning ``(step, future)``; ``results(logs)`` waits
    for them. The numbers are those of probing inline; the training thread only pays for
    the copy, while the forward pass over the test set runs on another core.
    """

    def __init__(self, x, y, n_pct, units):
        self.args = (x, y, n_pct, units)
        self.pool = ThreadPoolExecutor(max_workers=1)

    def __call__(self, step, model):
        return step, self.pool.submit(probe, copy.deepcopy(model), *self.args)

    def results(self, logs):
        """``logs``: what the calls returned. Returns ``(steps, correct, pct)`` stacked."""
        done = [future.result() for _, future in logs]
        self.pool.shutdown()
        steps = np.array([step for step, _ in logs], dtype=np.int64)
        return steps, torch.stack([c for c, _ in done]), torch.stack([p for _, p in done])


@functools.lru_cache(maxsize=2)
def mnist(device):
    """Full MNIST train and test tensors on ``device`` (loaded once per process)."""
    return data.mnist_tensors("train", device=device), data.mnist_tensors("test", device=device)


def _run(steps, seed, batch_size, log_every, lr, init_std, units, pct_examples,
         progress=True):
    dev = default_device()
    (x, y), (x_test, y_test) = mnist(dev)
    out, seconds = {}, {}
    with one_thread():
        for name, norm in zip(NETS, (None, nn.BatchNorm1d), strict=True):
            model = make_net(norm, init_std, seed).to(dev)
            optimizer = torch.optim.SGD(model.parameters(), lr=lr)
            prober = Prober(x_test, y_test, pct_examples, units)
            start = time.perf_counter()
            logs, losses = train.train(
                model, optimizer, x, y, steps, batch_size=batch_size, seed=seed,
                log_every=log_every, progress=progress, desc=name, on_log=prober)
            step, correct, pct = prober.results(logs)
            seconds[name] = time.perf_counter() - start
            out["step"] = step
            out[f"acc_{name}"] = correct.cpu().numpy() / len(y_test)
            pct = pct.cpu().numpy()
            out[f"pct_{name}"] = pct[:, 0, :]
            out[f"pct_units_{name}"] = pct
            out[f"loss_{name}"] = _interval_means(losses.numpy(), step)
    out["seconds"] = seconds
    return out


@contextlib.contextmanager
def one_thread():
    """Run PyTorch's CPU ops on one thread inside the block, then restore the setting.

    Mini-batches of 60 are too small to gain from several threads, and on a machine whose
    cores are shared, OpenMP threads that wait for each other slow each step down tenfold.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _interval_means(losses, step):
    """Mean of ``losses`` (one per step) over each interval ``(step[i-1], step[i]]``."""
    edges = np.concatenate([[0], step])
    return np.array([losses[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)])
