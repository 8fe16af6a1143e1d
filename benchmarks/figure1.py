"""Figure 1's training loop: the cost of its instrumentation, and the full-run time.

Trains the baseline and the BN network of ``bnutils.experiments.figure1`` twice per
repeat, on the same data: bare (no logging) and instrumented (test accuracy and
sigmoid percentiles every ``--log-every`` steps). Prints the instrumented/bare time
ratio (median and min over repeats, bare and instrumented interleaved so both see the
same machine load) and the time of both networks for the 50,000 steps of the paper,
measured (default) or extrapolated from the steps run (``--quick``).

    python benchmarks/figure1.py --quick      # 1-2 minutes
    python benchmarks/figure1.py               # the full 50,000 steps, one repeat
"""

import argparse
import statistics
import time

import torch
from torch import nn

from bnutils import train
from bnutils.config import device
from bnutils.experiments.figure1 import make_net, mnist, one_thread, probe

FULL_STEPS = 50_000


def run(x, y, x_test, y_test, steps, log_every, instrumented, lr=2.0, init_std=0.05):
    """Seconds to train both networks for ``steps`` steps, with or without the probes."""
    start = time.perf_counter()
    for norm in (None, nn.BatchNorm1d):
        model = make_net(norm, init_std, seed=0).to(x.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        on_log = (lambda step, m: probe(m, x_test, y_test, 1000, 8)) if instrumented else None
        train.train(model, optimizer, x, y, steps, log_every=log_every if instrumented else None,
                    on_log=on_log, progress=False)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3,000 steps, 3 repeats")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--log-every", type=int, default=500)
    args = parser.parse_args()
    steps = args.steps or (3_000 if args.quick else FULL_STEPS)
    repeats = args.repeats or (3 if args.quick else 1)

    (x, y), (x_test, y_test) = mnist(device())
    bare, inst = [], []
    with one_thread():
        run(x, y, x_test, y_test, 200, args.log_every, True)  # warm-up
        for _ in range(repeats):
            bare.append(run(x, y, x_test, y_test, steps, args.log_every, False))
            inst.append(run(x, y, x_test, y_test, steps, args.log_every, True))
    ratios = [i / b for i, b in zip(inst, bare, strict=True)]
    print(f"device {device()}, 1 thread, {steps} steps x 2 networks, log every "
          f"{args.log_every}, {repeats} repeat(s)")
    print(f"bare          min {min(bare):7.2f} s   median {statistics.median(bare):7.2f} s")
    print(f"instrumented  min {min(inst):7.2f} s   median {statistics.median(inst):7.2f} s")
    print(f"ratio instrumented/bare: median {statistics.median(ratios):.3f}, "
          f"of minima {min(inst) / min(bare):.3f}")
    verb = "measured" if steps == FULL_STEPS else "extrapolated"
    print(f"full run ({FULL_STEPS} steps, both networks, instrumented), {verb}: "
          f"{min(inst) * FULL_STEPS / steps / 60:.1f} min")


if __name__ == "__main__":
    main()
