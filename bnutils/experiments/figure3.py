"""Section 4.2 of the paper scaled down: a small CNN trained with and without BN.

Derived in notebook 06. The paper's table compares Inception with BN-Inception variants
on ImageNet; here ``small_cnn`` is trained on (Fashion-)MNIST in the same seven
configurations, with the section 4.2.1 changes that apply to a model this small.
"""

import time
from functools import lru_cache

import numpy as np
import torch

from ..cache import train_or_load
from ..config import set_seed
from ..data import mnist_tensors
from ..models import small_cnn
from ..train import accuracy, train

# name -> (norm, activation, multiple of the base learning rate, section 4.2.1 changes)
CONFIGS = {
    "baseline": (None, "relu", 1, False),
    "bn": ("bn", "relu", 1, False),
    "bn_x5": ("bn", "relu", 5, True),
    "bn_x30": ("bn", "relu", 30, True),
    "bn_x5_sigmoid": ("bn", "sigmoid", 5, True),
    "baseline_sigmoid": (None, "sigmoid", 1, False),
    "baseline_x5": (None, "relu", 5, False),
}


@lru_cache(maxsize=1)
def _tensors(dataset, n_train, n_test):
    """Training and test images ``(N, 1, 28, 28)``, loaded once for all configurations."""
    x, y = mnist_tensors("train", flatten=False, dataset=dataset)
    x_test, y_test = mnist_tensors("test", flatten=False, dataset=dataset)
    return x[:n_train], y[:n_train], x_test[:n_test], y_test[:n_test]


def run_config(name, steps, seed=0, dataset="mnist", lr=0.1, batch_size=64,
               weight_decay=5e-4, dropout=0.2, evals=15, max_loss=20.0, n_train=None,
               n_test=None, progress=True):
    """Train ``small_cnn`` in configuration ``name`` (a key of ``CONFIGS``); no caching.

    SGD with momentum 0.9, learning rate ``lr`` times the configuration's multiple,
    halved every ``steps`` steps (every ``steps / 6`` with the section 4.2.1 changes,
    which also drop dropout and divide the weight decay by 5). The test accuracy is
    measured ``evals`` times, evenly spaced, and at step 0. A mini-batch loss that is
    not finite or exceeds ``max_loss`` marks the run diverged and stops it.
    ``n_train``, ``n_test``: use only the first ``n_train`` training and ``n_test`` test
    images (``None``: all; the quick mode uses fewer).
    Returns ``step, acc, loss`` arrays ``(evals + 1,)`` or shorter when the run diverged
    (``loss``: mean training loss since the previous evaluation), ``diverged``,
    ``diverged_step`` (``-1`` if not), ``seconds`` (wall-clock time) and the settings.
    """
    norm, activation, multiple, accelerated = CONFIGS[name]
    settings = {
        "norm": norm or "none", "activation": activation, "lr": lr * multiple,
        "dropout": 0.0 if accelerated else dropout,
        "weight_decay": weight_decay / 5 if accelerated else weight_decay,
        "lr_half_life": steps / 6 if accelerated else steps,
    }
    x, y, x_test, y_test = _tensors(dataset, n_train, n_test)
    start = time.perf_counter()
    set_seed(seed)
    model = small_cnn(norm=norm, activation=activation, dropout=settings["dropout"])
    optimizer = torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=0.9,
                                weight_decay=settings["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: 0.5 ** (t / settings["lr_half_life"]))

    initial_acc = accuracy(model, x_test, y_test, batch_size=500)
    log_every = max(1, steps // evals)
    logs, losses = train(model, optimizer, x, y, steps, batch_size=batch_size, seed=seed,
                         log_every=log_every, progress=progress, desc=name,
                         on_log=lambda s, m: (s, accuracy(m, x_test, y_test, batch_size=500)),
                         scheduler=scheduler, max_loss=max_loss)
    diverged = len(losses) > 0 and not losses[-1].item() <= max_loss
    step = np.array([0] + [s for s, _ in logs])
    window = [losses[a:b].mean().item() for a, b in zip(step[:-1], step[1:], strict=True)]
    return {
        "step": step,
        "acc": np.array([initial_acc] + [a for _, a in logs]),
        "loss": np.array(losses[:1].tolist() + window),  # step 0: the first, untrained batch
        "diverged": bool(diverged),
        "diverged_step": len(losses) if diverged else -1,
        "seconds": time.perf_counter() - start,
        **settings,
    }


def figure3(steps, seed=0, dataset="mnist", configs=None, progress=True, **options):
    """Train every configuration of ``CONFIGS`` (or those named in ``configs``) for
    ``steps`` steps on ``dataset`` ("mnist" or "fashion-mnist"), caching each run.

    Returns ``{name: result}`` with, per configuration, ``step`` and ``acc`` (test
    accuracy) arrays, ``loss``, ``diverged`` and the settings (see ``run_config``, which
    also takes the ``options``: ``lr``, ``batch_size``, ``weight_decay``, ``dropout``,
    ``evals``, ``max_loss``, ``n_train``, ``n_test``).
    """
    names = list(CONFIGS) if configs is None else list(configs)
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise ValueError(f"unknown configurations {unknown}; choose from {list(CONFIGS)}")
    results = {}
    for name in names:
        config = {"name": name, "steps": steps, "seed": seed, "dataset": dataset, **options}
        results[name] = train_or_load(
            f"figure3-{name}", config,
            lambda **c: run_config(**c, progress=progress), verbose=False)
    return results


def table(results, reference="baseline"):
    """One row per configuration, the columns of the paper's section 4.2 table.

    ``results``: what ``figure3`` returns. Each row holds ``name``, ``lr`` (initial),
    ``steps_to_reference``: the first evaluated step at which the test accuracy reaches
    the best accuracy of ``reference`` (``None``: never), ``best_acc`` and ``diverged``.
    """
    target = results[reference]["acc"].max()
    rows = []
    for name, r in results.items():
        reached = np.flatnonzero(r["acc"] >= target)
        rows.append({
            "name": name, "lr": r["lr"],
            "steps_to_reference": int(r["step"][reached[0]]) if len(reached) else None,
            "best_acc": float(r["acc"].max()), "diverged": bool(r["diverged"]),
        })
    return rows
