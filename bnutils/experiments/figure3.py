"""Section 4.2 of the paper scaled down: a small CNN trained with and without BN.

Derived in notebook 06; notebook 07 takes its configurations apart one change at a
time. The paper's table compares Inception with BN-Inception variants on ImageNet;
here ``small_cnn`` is trained on (Fashion-)MNIST in the same seven configurations, with
the section 4.2.1 changes that apply to a model this small.

Every run trains on the training set minus a fixed validation split
(``VAL_SIZE`` images, the same for every run). Every choice is made on the validation
accuracy (which data set, which evaluation of a run counts, the target accuracy of
"steps to reach"); the test set is only reported, at the steps validation chose.
"""

import time
from contextlib import nullcontext
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import diagnostics
from ..cache import train_or_load
from ..config import choose, set_seed
from ..config import progress as progress_bar
from ..data import batches, mnist_tensors, train_val_split
from ..models import small_cnn
from ..train import accuracy
from ..verdict import first_reach, paired, plateaued, speedup

VAL_SIZE = 5000

# the section 4.2.1 changes that apply to small_cnn, each a change of one setting
CHANGES = ("rate", "decay", "dropout", "weight_decay")
ACCELERATED = CHANGES[1:]  # what the fast runs change besides the rate

# name -> (norm, activation, multiple of the base learning rate, other section 4.2.1
# changes). ``baseline_decay`` is not in the paper's table: the baseline with the fast
# runs' faster decay, a control for what the schedule alone does.
CONFIGS = {
    "baseline": (None, "relu", 1, ()),
    "bn": ("bn", "relu", 1, ()),
    "bn_x5": ("bn", "relu", 5, ACCELERATED),
    "bn_x30": ("bn", "relu", 30, ACCELERATED),
    "bn_x5_sigmoid": ("bn", "sigmoid", 5, ACCELERATED),
    "baseline_sigmoid": (None, "sigmoid", 1, ()),
    "baseline_x5": (None, "relu", 5, ()),
    "baseline_decay": (None, "relu", 1, ("decay",)),
}

# Chapter 6's runs, full and quick. Chapter 7 trains on the same protocol, so the runs
# the two chapters share (same settings, steps, seeds and options) come from the cache.
PROTOCOL = {
    # until the baseline's validation curve flattens (bnutils.verdict.plateaued): at
    # 8,000 steps it still climbed, at 16,000 it is flat; 32 evaluations (one per 500
    # steps), fine enough for "steps to reach" to show the paper's factor of 14
    "full": {"steps": 16000, "seeds": (0, 1, 2), "dataset": "fashion-mnist",
             "options": {"evals": 32, "trace": 100}},
    "quick": {"steps": 30, "seeds": (0, 1), "dataset": "fashion-mnist",
              "options": {"evals": 1, "trace": 10, "n_val": 200, "n_test": 500,
                          "n_probe": 100}},
}


def protocol():
    """Chapter 6's protocol in the current run mode: ``steps``, ``seeds``, ``dataset``
    and the ``options`` of ``run_cnn`` (a copy)."""
    chosen = choose(full=PROTOCOL["full"], quick=PROTOCOL["quick"])
    return {**chosen, "options": dict(chosen["options"])}


@lru_cache(maxsize=2)
def _tensors(dataset, n_train, n_test):
    """Training, validation and test images ``(N, 1, 28, 28)``, loaded once.

    The validation split is the same for every run; ``n_train`` keeps the first
    ``n_train`` training images after it is split off.
    """
    x, y = mnist_tensors("train", flatten=False, dataset=dataset)
    n_val = VAL_SIZE * len(x) // 60_000  # offline: the same share of the subset
    (x, y), (x_val, y_val) = train_val_split(x, y, n_val, seed=0)
    x_test, y_test = mnist_tensors("test", flatten=False, dataset=dataset)
    return x[:n_train], y[:n_train], x_val, y_val, x_test[:n_test], y_test[:n_test]


def settings(norm=None, activation="relu", lr=0.1, dropout=0.2, weight_decay=5e-4,
             changes=()):
    """The settings of one run: the baseline's, with some section 4.2.1 ``changes``.

    ``changes``: a subset of ``CHANGES``, or a multiple ``("rate", m)`` pair for the
    rate: ``"rate"`` multiplies the learning rate by 5, ``"decay"`` halves the rate
    6 times as often, ``"dropout"`` removes dropout, ``"weight_decay"`` divides the L2
    weight decay by 5. Returns a dict for ``run_cnn``; ``half_life`` is a fraction of
    the run's steps.
    """
    multiple = 1
    for change in changes:
        if isinstance(change, tuple) and change[0] == "rate":
            multiple = change[1]
        elif change == "rate":
            multiple = 5
        elif change not in CHANGES:
            raise ValueError(f"unknown change {change!r}; choose from {CHANGES}")
    return {
        "norm": norm, "activation": activation, "lr": lr * multiple,
        "dropout": 0.0 if "dropout" in changes else dropout,
        "weight_decay": weight_decay / 5 if "weight_decay" in changes else weight_decay,
        "half_life": 1 / 6 if "decay" in changes else 1.0,
    }


def config_settings(name, lr=0.1, dropout=0.2, weight_decay=5e-4):
    """The settings (see ``settings``) of configuration ``name`` of ``CONFIGS``."""
    norm, activation, multiple, changes = CONFIGS[name]
    return settings(norm, activation, lr, dropout, weight_decay,
                    [("rate", multiple), *changes])


def schedule(spec, steps):
    """The learning rate of every update ``0 .. steps-1`` of a run with settings ``spec``
    (``settings``, ``config_settings``): its rate times ``lr_factor``."""
    return np.array([spec["lr"] * lr_factor(t, steps, spec["half_life"],
                                            spec.get("warmup", 0)) for t in range(steps)])


def _groups(model, lr, slow, slow_lr):
    """Parameter groups: the ``slow`` kinds (``"affine"``: BN's gamma and beta,
    ``"head"``: the last linear layer) get ``slow_lr``, everything else ``lr``."""
    kinds = {"affine": [p for m in model.modules() if isinstance(m, nn.BatchNorm2d)
                        for p in m.parameters()],
             "head": list(model[-1].parameters())}
    unknown = sorted(set(slow) - set(kinds))
    if unknown:
        raise ValueError(f"unknown parameter kinds {unknown}; choose from {sorted(kinds)}")
    chosen = {id(p) for kind in slow for p in kinds[kind]}
    fast = [p for p in model.parameters() if id(p) not in chosen]
    groups = [{"params": fast, "lr": lr}]
    if chosen:
        groups.append({"params": [p for p in model.parameters() if id(p) in chosen],
                       "lr": slow_lr})
    return groups


def lr_factor(t, steps, half_life=1.0, warmup=0):
    """The learning rate of update ``t = 0, 1, ...`` as a multiple of the initial one:
    a linear rise over the first ``warmup`` updates (``1/(warmup+1), 2/(warmup+1),
    ...``), times a halving every ``half_life * steps`` updates."""
    return min(1.0, (t + 1) / (warmup + 1)) * 0.5 ** (t / (half_life * steps))


def _trace_row(model, logits, loss, seen):
    """What ``run_cnn`` records at each traced step (see its docstring)."""
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    bns = [m for m in model if isinstance(m, nn.BatchNorm2d)]
    relus = [u for m, u in seen if isinstance(m, nn.ReLU)]
    return {
        "loss": loss.item(),
        "logit_std": logits.detach().std(dim=1).mean().item(),
        "dead": [diagnostics.dead_fraction(u) for u in relus],
        "conv_norm": [c.weight.detach().norm().item() for c in convs],
        "head_norm": model[-1].weight.detach().norm().item(),
        "gamma": [b.weight.detach().mean().item() for b in bns],
        "beta": [b.bias.detach().mean().item() for b in bns],
    }


def _probe(model, x):
    """Dead ReLU units (share per layer) or saturated sigmoid values (share per layer)
    of ``model`` on the images ``x``, in train mode (BN with the statistics of ``x``,
    as in training; the running statistics are left as they were)."""
    with torch.no_grad(), diagnostics.kept_buffers(model), \
            diagnostics.record_inputs(model) as seen:
        model(x)
    dead = [diagnostics.dead_fraction(u) if isinstance(m, nn.ReLU) else np.nan
            for m, u in seen]
    saturated = [diagnostics.saturation(u, "sigmoid") if isinstance(m, nn.Sigmoid)
                 else np.nan for m, u in seen]
    return dead, saturated


def run_cnn(steps, seed=0, dataset="mnist", norm=None, activation="relu", lr=0.1,
            dropout=0.2, weight_decay=5e-4, half_life=1.0, warmup=0, slow=(),
            slow_lr=0.1, batch_size=64, evals=15, max_loss=20.0, n_train=None,
            n_val=None, n_test=None, n_probe=1000, trace=0, eval_start=True,
            desc="training"):
    """Train one ``small_cnn(norm, activation, dropout)``; no caching.

    SGD with momentum 0.9 and L2 ``weight_decay``; the learning rate ``lr`` rises
    linearly over the first ``warmup`` steps and halves every ``half_life * steps``
    steps. ``slow``: kinds of parameters (``"affine"``: BN's gamma and beta, ``"head"``:
    the last linear layer) that get ``slow_lr`` instead (the parameters BN's scale
    invariance does not protect). The test and the validation accuracy are measured
    ``evals`` times, evenly spaced, and at step 0 (unless ``eval_start`` is false),
    together with the share of dead ReLU units and of saturated sigmoid values per layer
    on the first ``n_probe`` validation images (in train mode, see ``_probe``). ``n_train``, ``n_val``, ``n_test``: use only the
    first so many images of each set (``None``: all). A mini-batch loss that is not finite or exceeds
    ``max_loss`` marks the run diverged and stops it.

    Returns ``step, acc, val_acc, loss`` ``(n,)`` with ``n = evals + 1`` or fewer when
    the run diverged (``loss``: mean training loss since the previous evaluation),
    ``dead, saturated`` ``(n, layers)`` (NaN where a layer has the other nonlinearity),
    ``diverged``, ``diverged_step`` (``-1`` if not), ``seconds`` (wall clock),
    ``cpu_seconds`` (CPU time of the process) and the settings.
    With ``trace > 0``, ``trace`` holds per-step arrays over the first ``trace`` steps,
    measured on each training batch: ``loss``, ``logit_std`` (the logits' std over the
    classes, averaged over the batch), ``dead`` (share of dead ReLU units per layer),
    ``conv_norm`` (the norm of each convolution's weights), ``head_norm`` (the last
    linear layer's), ``gamma`` and ``beta`` (their mean per BN layer).
    """
    x, y, x_val, y_val, x_test, y_test = _tensors(dataset, n_train, n_test)
    x_val, y_val = x_val[:n_val], y_val[:n_val]
    start, cpu = time.perf_counter(), time.process_time()
    set_seed(seed)
    # channels last: on a CPU, max pooling and the convolutions' backward pass then
    # vectorise over the channels (1.4-1.5x faster training steps and 1.6-2x faster
    # evaluation on one thread: benchmarks/cnn_layout.py)
    model = small_cnn(norm=norm, activation=activation, dropout=dropout).to(
        x.device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(_groups(model, lr, slow, slow_lr), lr=lr, momentum=0.9,
                                weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: lr_factor(t, steps, half_life, warmup))
    log_every = max(1, steps // evals)
    logs, losses, traced = [], [], []

    def evaluate(step):
        dead, saturated = _probe(model, x_val[:n_probe])
        val = accuracy(model, x_val, y_val, batch_size=500)
        logs.append((step, accuracy(model, x_test, y_test, batch_size=500), val, dead,
                     saturated))

    if eval_start:
        evaluate(0)
    stream = batches(x, y, batch_size, seed=seed)
    model.train()
    diverged = False
    for step in progress_bar(range(1, steps + 1), desc=desc,
                             mininterval=1):
        xb, yb = next(stream)
        tracing = step <= trace
        with diagnostics.record_inputs(model) if tracing else nullcontext([]) as seen:
            logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        losses.append(loss.item())
        if not losses[-1] <= max_loss:  # also catches NaN
            diverged = True
            break
        if tracing:
            traced.append(_trace_row(model, logits, loss, seen))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % log_every == 0 or step == steps:
            evaluate(step)
    step = np.array([s for s, *_ in logs], dtype=int)
    n_layers = sum(isinstance(m, (nn.ReLU, nn.Sigmoid, nn.Tanh)) for m in model)
    losses = np.array(losses)
    edges = step if eval_start else np.concatenate([[0], step])
    window = [losses[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]
    result = {
        "step": step,
        "acc": np.array([a for _, a, *_ in logs]),
        "val_acc": np.array([v for _, _, v, *_ in logs]),
        # at step 0: the loss of the first, untrained batch
        "loss": np.array([losses[0], *window] if eval_start else window),
        # (evaluations, layers), also when a run diverged before its first evaluation
        "dead": np.array([d for *_, d, _ in logs], dtype=float).reshape(len(logs), n_layers),
        "saturated": np.array([s for *_, s in logs], dtype=float).reshape(len(logs), n_layers),
        "diverged": diverged,
        "diverged_step": len(losses) if diverged else -1,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "norm": norm or "none", "activation": activation, "lr": lr, "dropout": dropout,
        "weight_decay": weight_decay, "lr_half_life": half_life * steps, "warmup": warmup,
        "slow": list(slow), "slow_lr": slow_lr if slow else lr,
    }
    if traced:
        result["trace"] = {k: np.array([row[k] for row in traced]) for k in traced[0]}
    return result


def run_config(name, steps, seed=0, dataset="mnist", lr=0.1, dropout=0.2,
               weight_decay=5e-4, **options):
    """Train ``small_cnn`` in configuration ``name`` (a key of ``CONFIGS``); no caching.

    SGD with momentum 0.9, learning rate ``lr`` times the configuration's multiple,
    halved every ``steps`` steps (every ``steps / 6`` with the section 4.2.1 changes,
    which also drop dropout and divide the weight decay by 5). ``options`` go to
    ``run_cnn`` (``batch_size``, ``evals``, ``max_loss``, ``n_train``, ``n_val``,
    ``n_test``, ``n_probe``, ``trace``), which documents the result.
    """
    return run_cnn(steps, seed, dataset, **config_settings(name, lr, dropout, weight_decay),
                   desc=name, **options)


def cached_runs(key, steps, seeds, run, **config):
    """``run(steps=..., seed=s, **config)`` for every seed in ``seeds``, each cached
    under the name ``key``, stacked along a first seed axis (see ``stack``)."""
    runs = [train_or_load(key, {"steps": steps, "seed": int(s), **config},
                          run, verbose=False)
            for s in seeds]
    return stack(runs)


def stack(runs):
    """One dict from the results of several seeds: arrays get a first seed axis
    (a run that diverged early is padded with NaN), other values become lists, and
    ``seeds`` counts them. ``step`` is the longest run's."""
    longest = max(runs, key=lambda r: len(r["step"]))
    out = {"step": longest["step"], "n_seeds": len(runs)}
    for key, value in runs[0].items():
        if key == "step":
            continue
        if isinstance(value, np.ndarray):
            out[key] = _pad_stack([r[key] for r in runs])
        elif isinstance(value, dict):  # the trace: a run that diverged stopped early
            out[key] = {k: _pad_stack([r[key][k] for r in runs]) for k in value}
        else:
            out[key] = [r[key] for r in runs]
    return out


def _pad_stack(arrays):
    """Stack arrays of different lengths, the shorter ones padded with NaN."""
    n = max(len(a) for a in arrays)
    return np.stack([_pad(a, n) for a in arrays])


def _pad(a, n):
    a = np.asarray(a, dtype=float)
    if len(a) == n:
        return a
    return np.concatenate([a, np.full((n - len(a), *a.shape[1:]), np.nan)])


def figure3(steps, seeds=(0,), dataset="mnist", configs=None, **options):
    """Train every configuration of ``CONFIGS`` (or those named in ``configs``) for
    ``steps`` steps on ``dataset`` ("mnist" or "fashion-mnist") with every seed of
    ``seeds``, caching each run.

    Returns ``{name: result}``: per configuration, the arrays of ``run_cnn`` stacked
    over seeds (``acc: (n_seeds, n)`` and so on, NaN after a seed diverged), ``step``,
    ``diverged`` (a list, one per seed) and the settings (``lr`` etc., one per seed).
    ``options`` go to ``run_config``.
    """
    names = list(CONFIGS) if configs is None else list(configs)
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise ValueError(f"unknown configurations {unknown}; choose from {list(CONFIGS)}")
    return {name: cached_runs(f"figure3-{name}", steps, seeds, run_config,
                              name=name, dataset=dataset, **options)
            for name in names}


def finals(result):
    """Each seed's final test accuracy, ``(n_seeds,)``; a seed that diverged counts as
    chance (0.1): its training stopped, so its last accuracy is not a final one."""
    acc = np.atleast_2d(result["acc"])
    diverged = np.atleast_1d(result["diverged"]).astype(bool)
    if acc.shape[1] == 0:  # every seed diverged before its first evaluation
        return np.full(len(diverged), 0.1)
    return np.where(diverged | np.isnan(acc[:, -1]), 0.1, acc[:, -1])


def mean_sd(values):
    """Mean and standard deviation (``ddof=1``; 0 for one value) over a seed axis."""
    values = np.asarray(values, dtype=float)
    sd = values.std(ddof=1) if len(values) > 1 else 0.0
    return float(values.mean()), float(sd)


def target(results, reference="baseline", margin=0.01):
    """The accuracy that "steps to reach" counts to, decided on validation.

    The ``reference``'s final seed-averaged validation accuracy minus ``margin``: a value
    it reaches before its end once its curve has flattened. Returns ``(target,
    flat)``; ``flat`` says whether the reference's validation curve has flattened
    (``bnutils.verdict.plateaued``): while it still climbs, how fast the others get
    there is not tested at this length.
    """
    r = results[reference]
    curve = np.nanmean(np.atleast_2d(r["val_acc"]), axis=0)
    return float(curve[-1] - margin), plateaued(r["step"], curve)


def at_step(results, step):
    """``results`` as if every run had stopped at the logged ``step``: their logs up to
    it (the trace, over the first steps, is kept whole); a seed that diverged after it
    has not diverged yet. The schedule is still the whole run's: this asks whether a
    verdict already holds halfway through, not what a shorter run would give."""
    out = {}
    for name, r in results.items():
        keep = np.asarray(r["step"]) <= step
        late = [bool(d) and s > step
                for d, s in zip(r["diverged"], r["diverged_step"], strict=True)]
        out[name] = {**r, "step": np.asarray(r["step"])[keep],
                     **{k: np.atleast_2d(r[k])[:, keep] for k in LOGGED},
                     "diverged": [bool(d) and not lt
                                  for d, lt in zip(r["diverged"], late, strict=True)]}
    return out


LOGGED = ("acc", "val_acc", "loss", "dead", "saturated")  # one value per evaluation


def ledger(results):
    """The words of the claims ledger for chapter 6's six claims, from ``results``
    (all of ``CONFIGS``, stacked over the same seeds): ``fast`` (BN-x5 reaches the
    baseline's target sooner; "reproduces" needs the paper's 14 times), ``best``,
    ``bn``, ``diverge``, ``x30``, ``sigmoid``: "reproduces", "partly", "does not
    reproduce" or "not tested" (a run it compares still climbs)."""
    final = {name: finals(r) for name, r in results.items()}
    at_choice = {name: chosen(r)[1] for name, r in results.items()}
    reach = {row["name"]: row["reach"] for row in table(results)}
    _, flat = target(results)

    def cmp(a, b, values=final):
        return paired(values[a], values[b]).outcome

    def flattened(name):
        r = results[name]
        return plateaued(r["step"], np.nanmean(np.atleast_2d(r["val_acc"]), axis=0))

    yes = {True: "reproduces", False: "does not reproduce"}
    ratio = speedup(reach["baseline"], reach["bn_x5"])
    if not flat:
        fast = "not tested"
    elif ratio is not None and ratio > 1:
        fast = "reproduces" if ratio >= 14 else "partly"
    else:
        fast = "does not reproduce"
    fails = cmp("baseline_x5", "baseline") == "below" and (
        final["baseline_x5"].mean() < 0.5 * final["baseline"].mean())
    x30 = ("not tested" if not (flattened("bn_x30") and flattened("bn_x5")) else
           {"above": "reproduces", "level": "partly",
            "below": "does not reproduce"}[cmp("bn_x30", "bn_x5")])
    return {"fast": fast, "best": yes[cmp("bn_x5", "baseline", at_choice) == "above"],
            "bn": yes[cmp("bn", "baseline") == "above"], "diverge": yes[bool(fails)],
            "x30": x30,
            "sigmoid": yes[cmp("bn_x5_sigmoid", "baseline_sigmoid") == "above"]}


def chosen(result):
    """The evaluation that validation chooses for each seed: ``(index (n_seeds,), test
    accuracy there (n_seeds,))``, the first evaluation with the seed's highest
    validation accuracy (before it diverged, if it did)."""
    val = np.atleast_2d(result["val_acc"])
    acc = np.atleast_2d(result["acc"])
    if val.shape[1] == 0:  # every seed diverged before its first evaluation
        return np.zeros(len(val), dtype=int), np.full(len(val), 0.1)
    best = np.nanargmax(np.where(np.isnan(val), -np.inf, val), axis=1)
    return best, acc[np.arange(len(acc)), best]


def table(results, reference="baseline", margin=0.01):
    """One row per configuration: the columns of the paper's section 4.2 table, with
    every choice made on validation and the test set only reported.

    ``results``: what ``figure3`` returns (``acc``, ``val_acc`` of one seed ``(n,)`` or
    of several ``(n_seeds, n)``). Each row holds ``name``, ``lr`` (initial),
    ``reach``: a ``bnutils.verdict.Reach``, the first evaluated step at which the
    seed-averaged validation accuracy reaches ``target(results, reference, margin)``
    (censored, never a number, when it does not), ``chosen_acc`` and ``chosen_sd``:
    the test accuracy at the evaluation each seed's validation accuracy chose (mean and
    sd over seeds), ``chosen_step`` (those steps, a list), ``final_acc`` and
    ``final_sd`` (at the last step; a seed that diverged counts as chance, 0.1), and
    ``diverged`` (how many seeds diverged; a bool for one seed).
    """
    goal, _ = target(results, reference, margin)
    rows = []
    for name, r in results.items():
        val = np.nanmean(np.atleast_2d(r["val_acc"]), axis=0)
        index, at_chosen = chosen(r)
        lr, diverged = r["lr"], r["diverged"]
        final = finals(r)
        rows.append({
            "name": name, "lr": lr[0] if isinstance(lr, list) else lr,
            "reach": first_reach(r["step"], val, goal),
            "chosen_acc": mean_sd(at_chosen)[0], "chosen_sd": mean_sd(at_chosen)[1],
            "chosen_step": [int(r["step"][i]) for i in index],
            "final_acc": mean_sd(final)[0], "final_sd": mean_sd(final)[1],
            "diverged": sum(diverged) if isinstance(diverged, list) else bool(diverged),
        })
    return rows
