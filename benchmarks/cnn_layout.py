"""Training and evaluation speed of chapter 6's small CNN in NCHW and channels-last layout.

``figure3.run_cnn`` trains ``small_cnn`` in channels-last memory format: on a CPU, max
pooling and the convolutions' backward pass then vectorise over the channels. For each
network (ReLU without BN, BN, BN with sigmoids), prints the time of one SGD step (batch
64, momentum, weight decay, as chapter 6 trains) and of an evaluation pass (batch 500)
in both layouts, min and median over interleaved repeats, and their ratio NCHW /
channels-last, all measured in this run. Usage: ``python benchmarks/cnn_layout.py
[--quick] [--threads N]``.
"""

import argparse

import torch
from torch.nn import functional as F

from bnutils.models import small_cnn
from bnutils.timing import compared, interleaved_times

NETS = {"ReLU": (None, "relu"), "BN": ("bn", "relu"), "BN, sigmoid": ("bn", "sigmoid")}


def step_fn(norm, activation, layout, x, y):
    """One SGD step of a fresh ``small_cnn`` in memory format ``layout``, as a closure."""
    torch.manual_seed(0)
    net = small_cnn(norm=norm, activation=activation, dropout=0.2).to(memory_format=layout)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def eval_fn(norm, activation, layout, x):
    torch.manual_seed(0)
    net = small_cnn(norm=norm, activation=activation).to(memory_format=layout).eval()

    def evaluate():
        with torch.no_grad():
            net(x)

    return evaluate


def report(name, times):
    print(f"{name:<24} {compared(times)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, inner, batch, eval_batch = (2, 1, 8, 16) if args.quick else (10, 10, 64, 500)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    x_eval = torch.randn(eval_batch, 1, 28, 28, generator=g)
    layouts = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}
    print(f"{args.threads} thread(s), {repeats} repeats x {inner} calls; train batch "
          f"{batch}, eval batch {eval_batch}; ratio = NCHW / channels-last time")
    for name, (norm, activation) in NETS.items():
        report(f"{name}, train step", interleaved_times(
            {k: step_fn(norm, activation, v, x, y) for k, v in layouts.items()},
            repeats, inner))
        report(f"{name}, eval", interleaved_times(
            {k: eval_fn(norm, activation, v, x_eval) for k, v in layouts.items()},
            repeats, inner))


if __name__ == "__main__":
    main()
