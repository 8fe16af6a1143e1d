"""Figure 1's training runs: the cost of their instrumentation.

``bnutils.experiments.figure1_runs`` trains a grid of settings as two stacks of networks
(``bnutils.batched``) and probes every network at each log (test accuracy,
sigmoid-input percentiles, gamma and beta; validation accuracy at the last log). This
script trains one stack of ``--k`` networks of each kind, both bare (no probes) and
instrumented as ``figure1_runs`` does it, logging every 500 steps as chapter 5 does,
interleaved so both see the same machine load, and prints the throughput,
network-steps per second, bare and instrumented, and their ratio. (Chapter 5 states
its own run time; the build measures it.)

    python benchmarks/figure1.py                   # 2,000 steps, k = 7, 2 repeats
    python benchmarks/figure1.py --threads 1       # the same on one thread
    python benchmarks/figure1.py --quick           # a smoke test, no meaningful ratio
"""

import argparse
import statistics
import time

import torch

from bnutils.batched import StackedMLP, train_stacked
from bnutils.config import device
from bnutils.experiments.figure1 import Probe, held_out_data


def run(train, val, test, k, steps, log_every, probed):
    """Seconds to train a baseline stack and a BN stack of ``k`` nets for ``steps`` steps."""
    start = time.perf_counter()
    for norm in (False, True):
        model = StackedMLP(k, norm=norm, init_std=0.05, seeds=range(k)).to(train[0].device)
        probe = Probe(test, val, val[0][:1000], 8, last=steps) if probed else None
        train_stacked(model, *train, steps, [0.1 * (i + 1) for i in range(k)],
                      log_every=log_every if probed else None, callback=probe,
                      progress=False)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: 40 steps, k = 2")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--k", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--log-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: "
                        "as the environment sets them)")
    args = parser.parse_args()
    steps = args.steps or (40 if args.quick else 2000)
    k = args.k or (2 if args.quick else 7)
    repeats = args.repeats or (1 if args.quick else 2)
    log_every = min(args.log_every, steps)
    if args.threads:
        torch.set_num_threads(args.threads)

    train, val, test = held_out_data("standardized", 5000, device())
    times = {"bare": [], "probed": []}
    run(train, val, test, k, 20, log_every, True)  # warm-up
    for _ in range(repeats):
        for mode in times:
            times[mode].append(run(train, val, test, k, steps, log_every, mode == "probed"))
    net_steps = 2 * k * steps
    rate = {mode: net_steps / min(t) for mode, t in times.items()}
    print(f"device {device()}, {torch.get_num_threads()} thread(s), 2 stacks of k={k} nets, "
          f"{steps} steps, probes every {log_every}, {repeats} repeat(s)")
    for mode, t in times.items():
        print(f"{mode:>7}: min {min(t):7.2f} s, median {statistics.median(t):7.2f} s, "
              f"{rate[mode]:8.0f} network-steps/s")
    print(f"ratio probed / bare (time): {min(times['probed']) / min(times['bare']):.3f}")


if __name__ == "__main__":
    main()
