"""Figure 1's training loop: the cost of its instrumentation, and the full-run time.

Trains the baseline and the BN network of ``bnutils.experiments.figure1`` three times
per repeat, on the same data: bare (no logging); instrumented as ``figure1`` does it
(test accuracy and sigmoid percentiles every ``--log-every`` steps, probed in a second
thread by ``Prober``); and instrumented inline (the same probes in the training
thread, i.e. their full CPU cost). Prints the time ratios to bare (median and min over
repeats; the variants are interleaved so all see the same machine load) and the time
of both networks for the 50,000 steps of the paper, measured (default) or extrapolated
from the steps run (``--steps``).

    python benchmarks/figure1.py                          # the full 50,000 steps (~5 min)
    python benchmarks/figure1.py --steps 3000 --repeats 3 # a shorter measurement
    python benchmarks/figure1.py --quick                  # a smoke test, no meaningful ratio
"""

import argparse
import statistics
import time

import torch
from torch import nn

from bnutils import train
from bnutils.config import device
from bnutils.experiments.figure1 import Prober, make_net, mnist, one_thread, probe

FULL_STEPS = 50_000


def run(x, y, x_test, y_test, steps, log_every, mode, lr=2.0, init_std=0.05):
    """Seconds to train both networks for ``steps`` steps; ``mode``: bare/thread/inline."""
    start = time.perf_counter()
    for norm in (None, nn.BatchNorm1d):
        model = make_net(norm, init_std, seed=0).to(x.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        on_log = {"bare": None, "thread": Prober(x_test, y_test, 1000, 8),
                  "inline": lambda step, m: probe(m, x_test, y_test, 1000, 8)}[mode]
        logs, _ = train.train(model, optimizer, x, y, steps, log_every=log_every,
                              on_log=on_log, progress=False)
        if mode == "thread":
            on_log.results(logs)  # wait for the last probes: they are part of the cost
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: 300 steps, 1 repeat")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--log-every", type=int, default=500)
    args = parser.parse_args()
    steps = args.steps or (300 if args.quick else FULL_STEPS)
    repeats = args.repeats or 1

    (x, y), (x_test, y_test) = mnist(device())
    modes = ("bare", "thread", "inline")
    times = {mode: [] for mode in modes}
    with one_thread():
        for mode in modes:  # warm-up
            run(x, y, x_test, y_test, 200, args.log_every, mode)
        for _ in range(repeats):
            for mode in modes:
                times[mode].append(run(x, y, x_test, y_test, steps, args.log_every, mode))
    print(f"device {device()}, training on 1 thread, {steps} steps x 2 networks, log every "
          f"{args.log_every}, {repeats} repeat(s)")
    for mode in modes:
        ratios = [t / b for t, b in zip(times[mode], times["bare"], strict=True)]
        print(f"{mode:>7}: min {min(times[mode]):7.2f} s, median "
              f"{statistics.median(times[mode]):7.2f} s; ratio to bare: median "
              f"{statistics.median(ratios):.3f}, of minima {min(times[mode]) / min(times['bare']):.3f}")
    verb = "measured" if steps == FULL_STEPS else "extrapolated"
    print(f"full run ({FULL_STEPS} steps, both networks, as figure1 runs it), {verb}: "
          f"{min(times['thread']) * FULL_STEPS / steps / 60:.1f} min")


if __name__ == "__main__":
    main()
