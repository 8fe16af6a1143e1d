"""Synchronized batch norm across processes with ``torch.distributed``. Derived in notebook 09.

Data-parallel training splits a mini-batch over processes (devices); plain BN would
normalize each shard with its own, noisier statistics. ``SyncBatchNorm`` all-reduces the
per-channel count, sum and sum of squares, so every process normalizes with the
statistics of the whole batch, and its backward all-reduces the two per-channel gradient
sums that the compact BN backward needs. Checked in ``tests/test_distributed.py``.

Run ``python -m bnutils.distributed`` for a demonstration with 2 CPU processes (gloo).
"""

import argparse
import json
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


def _all_reduce(t, group=None):
    """Sum ``t`` over the processes (in place); a no-op outside a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def _view(x):
    """``(axes, shape)``: the reduction axes of ``x: (N, C, ...)`` and the per-channel view."""
    return (0,) + tuple(range(2, x.dim())), (1, -1) + (1,) * (x.dim() - 2)


class SyncBatchNormFunction(torch.autograd.Function):
    """BN with statistics over all processes. ``x: (N_local, C, ...)``, ``gamma, beta: (C,)``.

    Forward: one all-reduce of ``[m, sum x, sum x^2]`` per channel gives
    ``mu_B = sum x / m`` and ``sigma_B^2 = sum x^2 / m - mu_B^2`` over the global batch.
    Backward (the compact form of notebook 03, with global sums):
    ``dx = gamma / (m sigma_B) * (m dy - sum dy - x_hat * sum(dy x_hat))``,
    where the two sums are all-reduced. ``dgamma, dbeta`` are the local sums; data-parallel
    training sums them over processes with the other parameter gradients.
    Returns ``y`` and the global ``mean``, biased ``var`` and ``count`` (no gradient).
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, group):
        axes, s = _view(x)
        m_local = x.numel() // x.shape[1]
        stats = torch.stack([
            x.new_full((x.shape[1],), m_local), x.sum(axes), (x * x).sum(axes)
        ]).to(torch.float64)  # sums of squares lose precision in float32
        _all_reduce(stats, group)
        count, mean = stats[0], stats[1] / stats[0]
        var = stats[2] / count - mean**2
        inv_std = torch.rsqrt(var.clamp_min(0) + eps).to(x.dtype)
        mean, var = mean.to(x.dtype), var.to(x.dtype)
        x_hat = (x - mean.view(s)) * inv_std.view(s)
        ctx.save_for_backward(x_hat, gamma, inv_std, count[0].to(x.dtype))
        ctx.group = group
        count = count[0].to(x.dtype)
        ctx.mark_non_differentiable(mean, var, count)
        return x_hat * gamma.view(s) + beta.view(s), mean, var, count

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar, _dcount):
        x_hat, gamma, inv_std, count = ctx.saved_tensors
        axes, s = _view(dy)
        dbeta = dy.sum(axes)
        dgamma = (dy * x_hat).sum(axes)
        sums = _all_reduce(torch.stack([dbeta, dgamma]), ctx.group)  # global sums
        m = count.view(s)
        dx = (gamma * inv_std).view(s) / m * (m * dy - sums[0].view(s) - x_hat * sums[1].view(s))
        return dx, dgamma, dbeta, None, None


class SyncBatchNorm(nn.Module):
    """A BN layer whose training statistics span every process of ``group``.

    ``x: (N_local, C)`` or ``(N_local, C, H, W)``. Running statistics are updated from the
    global batch, so all processes keep the same ones (unbiased variance, PyTorch's
    ``momentum`` convention). Outside a process group it is plain BN.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, group=None):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.group = num_features, eps, momentum, group
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm expects input (N, {self.num_features}, ...), "
                             f"got shape {tuple(x.shape)}")
        _, s = _view(x)
        if not self.training:
            x_hat = (x - self.running_mean.view(s)) * torch.rsqrt(self.running_var.view(s) + self.eps)
            return x_hat * self.gamma.view(s) + self.beta.view(s)
        y, mean, var, count = SyncBatchNormFunction.apply(x, self.gamma, self.beta, self.eps,
                                                          self.group)
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1).clamp_min(1), self.momentum)
        return y


# --- the demonstration: 2 processes on one machine ------------------------------------


def free_port():
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def example_batch(n=32, channels=4, seed=0):
    """A reproducible batch ``x: (n, channels)`` whose first and second halves differ.

    Shards that see different data (as real data-parallel shards often do) make the
    per-process statistics visibly different from the global ones. Also a fixed
    ``w: (n, channels)`` defining the loss ``sum(w * y)``.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, generator=g, dtype=torch.float64)
    x[: n // 2] = 2.0 * x[: n // 2] + 1.0
    w = torch.randn(n, channels, generator=g, dtype=torch.float64)
    return x, w


def _worker(rank, world_size, port, n, channels, seed, queue):
    """One process: BN on its shard, plain and synchronized; results go to ``queue``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world_size)
    try:
        x, w = example_batch(n, channels, seed)
        rows = slice(rank * n // world_size, (rank + 1) * n // world_size)
        out = {"rank": rank}
        for name, layer in (("local", nn.BatchNorm1d(channels)), ("sync", SyncBatchNorm(channels))):
            layer = layer.double()
            xs = x[rows].clone().requires_grad_(True)
            y = layer(xs)
            (w[rows] * y).sum().backward()
            weight = layer.weight if name == "local" else layer.gamma
            bias = layer.bias if name == "local" else layer.beta
            out[name] = {"y": y.detach().numpy(), "dx": xs.grad.numpy(),
                         "dgamma": weight.grad.numpy(), "dbeta": bias.grad.numpy(),
                         "running_mean": layer.running_mean.numpy(),
                         "running_var": layer.running_var.numpy()}
        out["mean"] = x[rows].mean(0).numpy()
        out["var"] = x[rows].var(0, unbiased=False).numpy()
        queue.put(out)
    finally:
        dist.destroy_process_group()


def run_demo(world_size=2, n=32, channels=4, seed=0):
    """Start ``world_size`` gloo processes on this machine; return their results by rank.

    Each result holds the shard's ``mean``/``var`` and, for ``"local"`` (``nn.BatchNorm1d``
    on the shard) and ``"sync"`` (``SyncBatchNorm``), the outputs ``y``, gradients
    ``dx, dgamma, dbeta`` of the loss ``sum(w * y)`` and running statistics.
    """
    if n % world_size:
        raise ValueError(f"n ({n}) must be divisible by world_size ({world_size})")
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = torch.multiprocessing.start_processes(
        _worker, args=(world_size, free_port(), n, channels, seed, queue),
        nprocs=world_size, join=False, start_method="spawn")
    results = [queue.get() for _ in range(world_size)]
    procs.join()
    return sorted(results, key=lambda r: r["rank"])


def single_process_reference(n=32, channels=4, seed=0):
    """``nn.BatchNorm1d`` on the whole batch: what the shards should reproduce together."""
    x, w = example_batch(n, channels, seed)
    layer = nn.BatchNorm1d(channels).double()
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (w * y).sum().backward()
    return {"y": y.detach().numpy(), "dx": x.grad.numpy(), "dgamma": layer.weight.grad.numpy(),
            "dbeta": layer.bias.grad.numpy(), "running_mean": layer.running_mean.numpy(),
            "running_var": layer.running_var.numpy(),
            "mean": x.detach().mean(0).numpy(), "var": x.detach().var(0, unbiased=False).numpy()}


def compare(results, reference):
    """Largest absolute differences from the single-process reference, per method.

    Shard outputs and ``dx`` are concatenated; ``dgamma, dbeta`` are summed over processes
    (what data-parallel training does with parameter gradients); running statistics are
    compared per process.
    """
    summary = {}
    for name in ("local", "sync"):
        parts = [r[name] for r in results]
        joined = {"y": np.concatenate([p["y"] for p in parts]),
                  "dx": np.concatenate([p["dx"] for p in parts]),
                  "dgamma": sum(p["dgamma"] for p in parts),
                  "dbeta": sum(p["dbeta"] for p in parts)}
        diffs = {k: float(np.abs(v - reference[k]).max()) for k, v in joined.items()}
        for k in ("running_mean", "running_var"):
            diffs[k] = max(float(np.abs(p[k] - reference[k]).max()) for p in parts)
        summary[name] = diffs
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the statistics and differences here")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = run_demo(args.world_size, args.batch, args.channels, args.seed)
    reference = single_process_reference(args.batch, args.channels, args.seed)
    diffs = compare(results, reference)
    np.set_printoptions(precision=3, suppress=True)
    print(f"{args.world_size} processes, global batch {args.batch}, {args.channels} channels")
    print(f"global  mean {reference['mean']}  var {reference['var']}")
    for r in results:
        print(f"rank {r['rank']}  mean {r['mean']}  var {r['var']}")
    for name, d in diffs.items():
        print(f"{name:>5} BN vs one process, max |difference|: "
              + ", ".join(f"{k} {v:.1e}" for k, v in d.items()))
    if args.json:
        doc = {"world_size": args.world_size, "batch": args.batch, "diffs": diffs,
               "global": {"mean": reference["mean"].tolist(), "var": reference["var"].tolist()},
               "ranks": [{"mean": r["mean"].tolist(), "var": r["var"].tolist()} for r in results]}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
