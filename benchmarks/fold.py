"""Eval-mode speed of a small CNN with BN folded into its convolutions, against unfolded.

Prints, for torch.nn's BatchNorm2d and for bnutils' from-scratch one, the time of a
forward pass of the unfolded and the folded network (min and median over repeats) and
their ratio, all measured in this run. Usage: ``python benchmarks/fold.py [--quick]``.
"""

import argparse

import torch
from torch import nn

from bnutils import layers
from bnutils.timing import compared, interleaved_times


def small_cnn(bn):
    """Conv-BN-ReLU blocks on (N, 1, 28, 28) MNIST-sized inputs, then a linear classifier."""
    def block(c_in, c_out, stride):
        return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), bn(c_out),
                nn.ReLU()]
    return nn.Sequential(*block(1, 16, 1), *block(16, 32, 2), *block(32, 32, 1),
                         *block(32, 64, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, inner, batch = (3, 2, 16) if args.quick else (15, 5, args.batch_size)
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28)
    print(f"batch {batch}, {args.threads} thread(s), {repeats} repeats x {inner} calls; "
          f"ratio = unfolded / folded time")
    for name, bn in (("torch.nn.BatchNorm2d", nn.BatchNorm2d),
                     ("bnutils.layers.BatchNorm2d", layers.BatchNorm2d)):
        model = small_cnn(bn)
        with torch.no_grad():  # non-trivial running statistics and gamma, beta
            for _ in range(3):
                model(x)
            for m in model.modules():
                if isinstance(m, layers.BATCHNORM_TYPES):
                    m.weight.uniform_(0.5, 2.0)
                    m.bias.normal_()
        model.eval()
        folded = layers.fold_sequential(model)
        with torch.no_grad():
            diff = (folded(x) - model(x)).abs().max().item()
        with torch.inference_mode():  # interleaved, so both see the same machine load
            t = interleaved_times({"plain": lambda m=model: m(x), "folded": lambda m=folded: m(x)},
                                  repeats=repeats, inner=inner)
        times = {"unfolded": t["plain"], "folded": t["folded"]}
        print(f"{name:27s} {compared(times)} | max abs diff {diff:.1e}")


if __name__ == "__main__":
    main()
