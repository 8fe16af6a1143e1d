"""Synchronized batch norm over 2 gloo processes against one process on the whole batch."""

import numpy as np
import pytest
import torch

from bnutils import distributed

N, C = 24, 3
TOL = dict(rtol=1e-12, atol=1e-12)  # float64 throughout


@pytest.fixture(scope="module")
def two_processes():
    """Run the 2-process demonstration once; all tests below read its results."""
    return distributed.run_demo(world_size=2, n=N, channels=C, seed=3)


@pytest.fixture(scope="module")
def reference():
    return distributed.single_process_reference(n=N, channels=C, seed=3)


def test_sync_forward_matches_one_process(two_processes, reference):
    y = np.concatenate([r["sync"]["y"] for r in two_processes])
    np.testing.assert_allclose(y, reference["y"], **TOL)


def test_sync_gradients_match_one_process(two_processes, reference):
    dx = np.concatenate([r["sync"]["dx"] for r in two_processes])
    np.testing.assert_allclose(dx, reference["dx"], **TOL)
    # parameter gradients: each process holds its share; data parallelism sums them
    for key in ("dgamma", "dbeta"):
        np.testing.assert_allclose(sum(r["sync"][key] for r in two_processes), reference[key],
                                   **TOL)


def test_sync_running_statistics_are_global(two_processes, reference):
    for r in two_processes:
        np.testing.assert_allclose(r["sync"]["running_mean"], reference["running_mean"], **TOL)
        np.testing.assert_allclose(r["sync"]["running_var"], reference["running_var"], **TOL)


def test_per_process_statistics_differ_from_global(two_processes, reference):
    for r in two_processes:
        assert np.abs(r["mean"] - reference["mean"]).max() > 0.1
        assert np.abs(r["var"] - reference["var"]).max() > 0.1
    # and plain BN on each shard therefore gives other outputs and gradients
    diffs = distributed.compare(two_processes, reference)
    assert diffs["local"]["y"] > 0.1 and diffs["local"]["dx"] > 0.1
    assert diffs["sync"]["y"] < 1e-12 and diffs["sync"]["dgamma"] < 1e-12


def test_sync_batch_norm_alone_is_batch_norm():
    """Outside a process group the layer is plain BN (float32, default tolerances)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 4, 3, 3, generator=g)
    ours, ref = distributed.SyncBatchNorm(4), torch.nn.BatchNorm2d(4)
    xs, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    w = torch.randn(x.shape, generator=g)
    ys, yr = ours(xs), ref(xr)
    (w * ys).sum().backward()
    (w * yr).sum().backward()
    torch.testing.assert_close(ys, yr)
    torch.testing.assert_close(xs.grad, xr.grad)
    torch.testing.assert_close(ours.gamma.grad, ref.weight.grad)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    with pytest.raises(ValueError, match="expects input"):
        ours(torch.zeros(2, 5))


def test_batch_must_split_evenly():
    with pytest.raises(ValueError, match="divisible"):
        distributed.run_demo(world_size=2, n=5)
