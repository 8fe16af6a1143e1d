"""Speed of BN's backward pass: the paper's staged form vs the compact form (NumPy), and
BatchNormFunction (compact backward, torch) vs native F.batch_norm, forward + backward.

Everything is measured in this run on the same inputs, interleaved, and printed as
ratios with the min and the median over repeats. Goals (issue 4): compact >= 3x faster
than staged; BatchNormFunction <= 2x the time of native F.batch_norm.
Usage: ``python benchmarks/bn_kernels.py [--quick] [--dtype float32|float64] [--threads 1]``.
"""

import argparse

import numpy as np
import torch
from torch.nn import functional as F

from bnutils.bn import batchnorm_backward, batchnorm_backward_staged, batchnorm_forward
from bnutils.layers import BatchNormFunction
from bnutils.timing import compared, interleaved_times

FULL_SHAPES = [(256, 1024), (64, 64, 28, 28)]
QUICK_SHAPES = [(64, 128), (8, 16, 14, 14)]


def numpy_kernels(shape, dtype, seed=0):
    """Zero-argument callables for the staged and the compact NumPy backward on one input."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    gamma, beta = rng.normal(size=(2, shape[1])).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    cache = batchnorm_forward(x, gamma, beta)[1]
    staged, compact = batchnorm_backward_staged(dy, cache), batchnorm_backward(dy, cache)
    err = max(float(np.max(np.abs(s - c)) / np.max(np.abs(s))) for s, c in zip(staged, compact, strict=True))
    return {"staged": lambda: batchnorm_backward_staged(dy, cache),
            "compact": lambda: batchnorm_backward(dy, cache)}, err


def torch_kernels(shape, dtype, seed=0):
    """Zero-argument callables: forward + backward of BatchNormFunction and of F.batch_norm."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 2 + 1).requires_grad_()
    gamma = torch.randn(shape[1], generator=g, dtype=dtype, requires_grad=True)
    beta = torch.randn(shape[1], generator=g, dtype=dtype, requires_grad=True)
    dy = torch.randn(shape, generator=g, dtype=dtype)

    def native():
        y = F.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5)
        return torch.autograd.grad(y, (x, gamma, beta), dy)

    def custom():
        return torch.autograd.grad(BatchNormFunction.apply(x, gamma, beta, 1e-5),
                                   (x, gamma, beta), dy)

    err = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(native(), custom(), strict=True))
    return {"native": native, "custom": custom}, err


def compare(shapes, dtype="float32", repeats=20, inner=1):
    """One row per (shape, comparison): the times of both kernels (seconds, per repeat)."""
    rows = []
    for shape in shapes:
        for label, make, slow, fast in (
            ("NumPy backward: staged / compact", numpy_kernels, "staged", "compact"),
            ("torch fwd+bwd: BatchNormFunction / native", torch_kernels, "custom", "native"),
        ):
            kind = np.dtype(dtype) if make is numpy_kernels else getattr(torch, dtype)
            fns, err = make(shape, kind)
            t = interleaved_times(fns, repeats=repeats, inner=inner)
            rows.append({"shape": shape, "comparison": label,
                         "times": {slow: t[slow], fast: t[fast]}, "max_rel_diff": err})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (NumPy's "
                        "elementwise kernels run on one)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    repeats = args.repeats or (5 if args.quick else 30)
    inner = 3 if args.quick else 1
    print(f"{args.dtype}, {args.threads} torch thread(s), {repeats} repeats x {inner} calls, "
          f"torch {torch.__version__}, numpy {np.__version__}")
    print("ratio = time of the first / time of the second (min and median over repeats)")
    for row in compare(shapes, args.dtype, repeats, inner):
        print(f"{str(row['shape']):17s} {row['comparison']:42s} {compared(row['times'])} | "
              f"max rel diff {row['max_rel_diff']:.1e}")


if __name__ == "__main__":
    main()
