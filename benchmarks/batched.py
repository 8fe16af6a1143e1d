"""Throughput of the batched trainer (bnutils.batched) against training the same nets one by one.

For each case, K networks are trained for ``--steps`` steps both ways, on the same data:
one by one (``bnutils.train.train`` with ``torch.optim.SGD``, one net after another, as
the chapters train a single net) and stacked (``bnutils.batched.train_stacked``). Each is
run on 1 torch thread and on all of them; the variants are interleaved so that all see
the same machine load. Prints network-steps per second (K * steps / wall-clock seconds,
best of the repeats), the CPU time per network-step, and the speed-up ratios: at one
thread each (the same resources; also as a ratio of CPU times, which other processes on
a busy machine disturb less) and each at its best thread count (what a sweep on this
machine gains). Goal (issue 12): >= 2x for the Figure 1 MLPs on 2 cores.

Cases: K = 8 and 24 Figure-1 MLPs (784-100-100-100-10, sigmoid, batch 60) without and
with BN, every net on the same batches (a learning-rate or init-scale sweep); K = 24
BN MLPs with one data order per net (a seed sweep); K = 8 ``small_cnn`` with BN
(batch 64, momentum 0.9, weight decay, as ``figure3`` trains them). The networks of
chapters 8 and 9, whose norm layer runs once per net or side by side: chapter 8's
learning-rate sweep, K = 5 Figure-1 MLPs with BN and per-activation noise
(``norms.NoisyBatchNorm1d``); chapter 9's seeds, K = 3 ReLU MLPs 784-100-100-10 with
Group Norm (10 groups), batch 8, momentum 0.9, one data order per net.

    python benchmarks/batched.py                 # ~10 min on 2 cores
    python benchmarks/batched.py --repeats 1     # a shorter measurement
    python benchmarks/batched.py --only "MLP 24"  # some of the cases
    python benchmarks/batched.py --quick         # a smoke test, no meaningful ratio
"""

import argparse
import itertools
import os
import time

import numpy as np
import torch
from torch import nn

from bnutils import data, generator, models, norms, set_seed, train
from bnutils.batched import StackedCNN, StackedMLP, train_stacked
from bnutils.config import device

# name, K, network, data order: "shared" (one order) or "per-net"
CASES = [
    ("MLP", 8, "plain", "shared"),
    ("MLP", 8, "bn", "shared"),
    ("MLP", 24, "plain", "shared"),
    ("MLP", 24, "bn", "shared"),
    ("MLP", 24, "bn", "per-net"),
    ("CNN", 8, "bn", "shared"),
    ("MLP", 5, "noisy", "shared"),
    ("MLP", 3, "group norm", "per-net"),
]
QUICK_CASES = [("MLP", 2, "bn", "per-net"), ("CNN", 2, "bn", "shared"),
               ("MLP", 2, "noisy", "shared")]


def _noisy():
    """Chapter 8's layers: BN, then noise per activation, each layer its own seed."""
    seeds = itertools.count()
    return lambda d: norms.NoisyBatchNorm1d(d, per_example=True, seed=next(seeds))


# the MLPs by their norm: models.mlp's arguments (the norm as a function returning a
# fresh factory), and how they train
MLPS = {
    "plain": (dict(norm=lambda: None), dict(lr=0.5, batch_size=60)),
    "bn": (dict(norm=lambda: nn.BatchNorm1d), dict(lr=0.5, batch_size=60)),
    "noisy": (dict(norm=_noisy), dict(lr=0.5, batch_size=60)),
    "group norm": (dict(norm=lambda: lambda d: norms.GroupNorm(10, d), hidden=(100, 100),
                        activation="relu"), dict(lr=0.01, batch_size=8, momentum=0.9)),
}


def one_by_one(kind, k, norm, order, x, y, steps):
    """Train ``k`` nets one after another, the plain way."""
    factory = MLPS[norm][0]["norm"]() if kind == "MLP" else None
    for i in range(k):
        seed = i if order == "per-net" else 0
        if kind == "MLP":
            shape, how = MLPS[norm]
            net = models.mlp(**{**shape, "norm": factory}, init_std=0.05,
                             generator=generator(i)).to(x.device)
            opt = torch.optim.SGD(net.parameters(), lr=how["lr"],
                                  momentum=how.get("momentum", 0.0))
            train.train(net, opt, x, y, steps, batch_size=how["batch_size"], seed=seed,
                        progress=False)
        else:
            set_seed(i)
            net = models.small_cnn(norm="bn" if norm == "bn" else None).to(x.device)
            opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
            train.train(net, opt, x, y, steps, batch_size=64, seed=seed, progress=False)


def stacked(kind, k, norm, order, x, y, steps):
    """Train the same ``k`` nets as one."""
    seeds = None if order == "per-net" else 0
    if kind == "MLP":
        shape, how = MLPS[norm]
        model = StackedMLP(k, **{**shape, "norm": shape["norm"]()}, init_std=0.05).to(x.device)
        train_stacked(model, x, y, steps, how["lr"], batch_size=how["batch_size"],
                      momentum=how.get("momentum", 0.0), data_seeds=seeds, progress=False)
    else:
        model = StackedCNN(k, norm="bn" if norm == "bn" else None).to(x.device)
        train_stacked(model, x, y, steps, 0.1, batch_size=64, momentum=0.9,
                      weight_decay=5e-4, data_seeds=seeds, progress=False)


def measure(case, tensors, steps, repeats, threads):
    """Seconds (wall, CPU) per network-step of each variant: dict name -> two arrays."""
    kind, k, norm, order = case
    x, y = tensors[kind]
    variants = {f"{name}, {n} thread{'s' * (n > 1)}": (fn, n)
                for name, fn in (("one by one", one_by_one), ("batched", stacked))
                for n in sorted({1, threads})}
    times = {name: (np.empty(repeats), np.empty(repeats)) for name in variants}
    for fn, n in variants.values():  # warm-up
        torch.set_num_threads(n)
        fn(kind, k, norm, order, x, y, max(1, steps // 10))
    for r in range(repeats):
        for name, (fn, n) in variants.items():
            torch.set_num_threads(n)
            wall, cpu = time.perf_counter(), time.process_time()
            fn(kind, k, norm, order, x, y, steps)
            times[name][0][r] = (time.perf_counter() - wall) / (k * steps)
            times[name][1][r] = (time.process_time() - cpu) / (k * steps)
    torch.set_num_threads(threads)
    return times


NAMES = {"plain": "no BN", "bn": "BN", "noisy": "BN + noise (chapter 8)",
         "group norm": "Group Norm (chapter 9)"}


def report(case, times, threads):
    kind, k, norm, order = case
    print(f"\nK={k} {kind}s, {NAMES[norm]}, "
          f"{'one data order per net' if order == 'per-net' else 'shared batches'}:")
    for name, (wall, cpu) in times.items():
        print(f"  {name:>22}: {1 / wall.min():8.0f} net-steps/s, "
              f"{1e3 * np.median(cpu):6.2f} ms CPU per net-step")
    def best(name, n, kind=0):  # kind 0: wall-clock, 1: CPU time
        return times[f"{name}, {n} thread{'s' * (n > 1)}"][kind].min()

    counts = sorted({1, threads})
    print(f"  speed-up ratio, 1 thread each: {best('one by one', 1) / best('batched', 1):.2f}x "
          f"(CPU time: {best('one by one', 1, 1) / best('batched', 1, 1):.2f}x); "
          f"each at its best thread count: "
          f"{min(best('one by one', n) for n in counts) / min(best('batched', n) for n in counts):.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny sizes")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per MLP run (CNN runs: a fifth); default 200")
    parser.add_argument("--repeats", type=int, default=None, help="default 3")
    parser.add_argument("--only", default=None, help="run the cases whose label (as "
                        "'MLP 24 bn per-net') contains this text")
    parser.add_argument("--threads", type=int, default=None,
                        help="the most torch threads to try (default: all cores; "
                        "--quick: 1)")
    args = parser.parse_args()
    steps = args.steps or (3 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 3)
    threads = args.threads or (1 if args.quick else os.cpu_count())
    cases = [case for case in (QUICK_CASES if args.quick else CASES)
             if args.only is None or args.only in " ".join(map(str, case))]

    dev = device()
    tensors = {"MLP": data.mnist_tensors("train", subset=args.quick, device=dev),
               "CNN": data.mnist_tensors("train", subset=args.quick, flatten=False,
                                         device=dev)}
    print(f"device {dev}, {os.cpu_count()} cores; {steps} steps per MLP run, "
          f"{max(1, steps // 5)} per CNN run; {repeats} repeat(s), best of them")
    for case in cases:
        n = steps if case[0] == "MLP" else max(1, steps // 5)
        report(case, measure(case, tensors, n, repeats, threads), threads)


if __name__ == "__main__":
    main()
