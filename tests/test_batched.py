"""bnutils.batched: k networks trained as one agree with the same networks trained alone.

The reference is the plain loop: ``models.mlp`` + ``torch.optim.SGD`` + the batches of
``train.train``. In float32 the two agree to rounding: the stacked products sum in
another order, so the last bits differ and grow slowly over training. For a smooth
activation (sigmoid) they stay at 1e-5 over hundreds of steps. A ReLU is not smooth: a
rounding-level change flips some unit on or off (BN even centres the ReLU's inputs on
the kink) and moves the run by a finite amount, which training then amplifies; a lone
run whose initial weights are scaled by 1 + 1e-7 moves as far. So every setting is also
checked in float64, where rounding is 1e-16 and any real difference would show.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from bnutils import data, generator, models, train
from bnutils.batched import StackedMLP, StackedSGD, _IndexStream, accuracy, train_stacked

STEPS = 300  # 3.6 epochs of the 5,000-image subset at batch 60: crosses epoch boundaries
LRS = {"sigmoid": [0.1, 0.5, 1.0], "relu": [0.02, 0.05, 0.1]}
STDS = [0.05, 0.1, 0.03]
SEEDS = [3, 4, 5]
RTOL, ATOL = 1e-4, 1e-5  # float32 rounding, grown over STEPS steps
TOL64 = dict(rtol=1e-9, atol=1e-10)


@pytest.fixture(scope="module")
def mnist():
    return data.mnist_tensors("train", subset=True)


def plain_net(activation, norm, init_std, seed, hidden=(100, 100, 100)):
    return models.mlp(hidden=hidden, activation=activation,
                      norm=nn.BatchNorm1d if norm else None, init_std=init_std,
                      generator=generator(seed))


def train_alone(mnist, activation, norm, init_std, seed, lr, data_seed, steps=STEPS,
                momentum=0.0, weight_decay=0.0, dtype=torch.float32, hidden=(100, 100, 100),
                **kwargs):
    """One net, the plain way: ``train.train`` with ``torch.optim.SGD``."""
    net = plain_net(activation, norm, init_std, seed, hidden).to(dtype)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    _, losses = train.train(net, opt, *mnist, steps, seed=data_seed, progress=False,
                            **kwargs)
    return net, losses.numpy()


def assert_same_net(stacked_net, net, rtol=RTOL, atol=ATOL):
    a, b = stacked_net.state_dict(), net.state_dict()
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=key)


CASES = [(a, n, s, d) for d in (torch.float32, torch.float64) for a in ("sigmoid", "relu")
         for n in (False, True) for s in (True, False)
         if not (a == "relu" and d == torch.float32)]  # see the module's docstring
IDS = [f"{a}-{'bn' if n else 'plain'}-{'shared' if s else 'per-net'}-data-{str(d)[6:]}"
       for a, n, s, d in CASES]


@pytest.mark.parametrize("activation, norm, shared_data, dtype", CASES, ids=IDS)
def test_batched_training_matches_one_by_one(mnist, activation, norm, shared_data, dtype):
    # float32: the Figure 1 net; float64 (slower): a smaller one, the same code paths
    x, y = mnist[0].to(dtype), mnist[1]
    hidden, steps, tol = ((100, 100, 100), STEPS, dict(rtol=RTOL, atol=ATOL))
    if dtype == torch.float64:
        hidden, steps, tol = (50, 50), 200, TOL64
    lrs = LRS[activation]
    model = StackedMLP(3, hidden=hidden, activation=activation, norm=norm, init_std=STDS,
                       seeds=SEEDS).to(dtype)
    log = train_stacked(model, x, y, steps, lrs, progress=False,
                        data_seeds=7 if shared_data else None)
    assert not log["diverged"].any()
    for i in range(3):
        net, losses = train_alone((x, y), activation, norm, STDS[i], SEEDS[i], lrs[i],
                                  data_seed=7 if shared_data else SEEDS[i], dtype=dtype,
                                  hidden=hidden, steps=steps)
        np.testing.assert_allclose(log["losses"][:, i], losses, **tol)
        assert_same_net(model.net(i), net, **tol)


def test_momentum_and_weight_decay_per_net_match_torch_sgd(mnist):
    momentum, weight_decay, lrs = [0.0, 0.9, 0.5], [0.0, 5e-4, 1e-2], [0.1, 0.05, 0.2]
    x, y = mnist[0].double(), mnist[1]
    model = StackedMLP(3, hidden=(50, 50), activation="relu", norm=True, seeds=SEEDS)
    log = train_stacked(model.double(), x, y, 200, lrs, momentum=momentum,
                        weight_decay=weight_decay, progress=False)
    for i in range(3):
        net, losses = train_alone((x, y), "relu", True, 0.05, SEEDS[i], lrs[i], SEEDS[i],
                                  steps=200, momentum=momentum[i], hidden=(50, 50),
                                  weight_decay=weight_decay[i], dtype=torch.float64)
        np.testing.assert_allclose(log["losses"][:, i], losses, **TOL64)
        assert_same_net(model.net(i), net, **TOL64)


def test_schedule_matches_lambda_lr(mnist):
    half_lives = np.array([20.0, 50.0])
    model = StackedMLP(2, hidden=(32,), norm=True, seeds=[0, 1])
    log = train_stacked(model, *mnist, 100, [0.5, 1.0], momentum=0.9,
                        schedule=lambda t: 0.5 ** (t / half_lives), progress=False)
    for i, lr in enumerate([0.5, 1.0]):
        net = models.mlp(hidden=(32,), norm=nn.BatchNorm1d, init_std=0.05,
                         generator=generator(i))
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t, h=half_lives[i]: 0.5 ** (t / h))
        _, losses = train.train(net, opt, *mnist, 100, seed=i, scheduler=sched,
                                progress=False)
        np.testing.assert_allclose(log["losses"][:, i], losses.numpy(), rtol=RTOL, atol=ATOL)
        assert_same_net(model.net(i), net)


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("init_std", [[0.05, 0.5, 0.01], None], ids=["gaussian", "default"])
def test_initial_weights_are_those_of_models_mlp(norm, init_std):
    model = StackedMLP(3, norm=norm, init_std=init_std, seeds=SEEDS)
    for i, seed in enumerate(SEEDS):
        if init_std is None:
            torch.manual_seed(seed)
            net = models.mlp(norm=nn.BatchNorm1d if norm else None)
        else:
            net = plain_net("sigmoid", norm, init_std[i], seed)
        for key, value in net.state_dict().items():
            assert torch.equal(model.net(i).state_dict()[key], value), key


def test_default_init_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    StackedMLP(2, init_std=None)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("per_net_input", [False, True], ids=["shared-x", "per-net-x"])
def test_net_i_computes_what_the_stack_computes(mnist, norm, per_net_input):
    x, y = mnist
    model = StackedMLP(3, activation="tanh", hidden=(64, 32), norm=norm, seeds=SEEDS)
    train_stacked(model, x, y, 30, [0.1, 0.3, 0.5], progress=False)  # non-trivial stats
    xb = x[:50] if not per_net_input else torch.stack([x[:50], x[50:100], x[100:150]])
    for training in (True, False):
        model.train(training)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            logits, hidden = model(xb, return_hidden=True)
        for i in range(3):
            model.load_state_dict(state)  # forget the statistics of the pass above
            net = model.net(i)
            assert net.training == training
            xi = xb[i] if per_net_input else xb
            with torch.no_grad():
                torch.testing.assert_close(net(xi), logits[i], rtol=1e-5, atol=1e-6)
                # the input of the last activation, after BN if any
                torch.testing.assert_close(net[:-2](xi), hidden[-1][i], rtol=1e-5, atol=1e-6)
            assert [h.shape for h in hidden] == [(3, 50, 64), (3, 50, 32)]


def test_batch_norm_running_statistics_as_batchnorm1d(mnist):
    """One training forward: running mean and unbiased variance, momentum 0.1."""
    x, _ = mnist
    model = StackedMLP(2, hidden=(16,), norm=True, momentum=0.1)
    h = (x[:40] @ model.weights[0][1].T).detach()
    model(x[:40])
    torch.testing.assert_close(model.running_mean_0[1], 0.1 * h.mean(0))
    torch.testing.assert_close(model.running_var_0[1], 0.9 + 0.1 * h.var(0, unbiased=True))
    assert model.num_batches_tracked.tolist() == [1, 1]


def test_diverged_net_is_flagged_frozen_and_harms_no_other(mnist):
    lrs = [0.05, 1e200, 0.1]  # net 1's weights overflow within a few steps
    x, y = mnist[0].double(), mnist[1]
    model = StackedMLP(3, hidden=(50, 50), activation="relu", norm=True, seeds=SEEDS)
    states = []  # net 1's parameters and statistics after every step
    log = train_stacked(model.double(), x, y, 100, lrs, data_seeds=0, progress=False,
                        log_every=1, callback=lambda step, m: states.append(
                            {k: v[1].clone() for k, v in m.state_dict().items()}))
    assert log["diverged"].tolist() == [False, True, False]
    stop = log["diverged_step"][1]
    assert 1 < stop < 100 and log["diverged_step"][[0, 2]].tolist() == [-1, -1]
    assert not np.isfinite(log["losses"][stop - 1, 1])
    assert np.isnan(log["losses"][stop:, 1]).all() and np.isnan(log["loss"][-1, 1])
    # frozen from its diverging step on: no update, and no statistics after that forward
    for key, value in states[-1].items():
        torch.testing.assert_close(value, states[stop - 1][key], rtol=0, atol=0,
                                   equal_nan=True, msg=key)
    assert model.num_batches_tracked.tolist() == [100, stop, 100]
    for i in (0, 2):  # the others trained as if alone
        net, losses = train_alone((x, y), "relu", True, 0.05, SEEDS[i], lrs[i], 0,
                                  steps=100, hidden=(50, 50), dtype=torch.float64)
        np.testing.assert_allclose(log["losses"][:, i], losses, **TOL64)
        assert_same_net(model.net(i), net, **TOL64)


def test_diverged_net_is_left_where_train_train_stops(mnist):
    # without BN: with it, lr 1e200 magnifies gradients that are zero up to rounding
    x, y = mnist[0].double(), mnist[1]
    model = StackedMLP(2, hidden=(50, 50), activation="relu", seeds=[0, 1]).double()
    log = train_stacked(model, x, y, 20, [0.1, 1e100], data_seeds=0, progress=False)
    net, losses = train_alone((x, y), "relu", False, 0.05, 1, 1e100, 0, steps=20,
                              hidden=(50, 50), dtype=torch.float64, max_loss=math.inf)
    assert log["diverged_step"][1] == len(losses) < 20
    assert_same_net(model.net(1), net, **TOL64)


def test_max_loss_freezes_a_net_whose_loss_is_finite_but_too_large(mnist):
    model = StackedMLP(2, hidden=(32,), activation="relu", init_std=0.05)
    log = train_stacked(model, *mnist, 50, [0.05, 50.0], max_loss=10.0, progress=False)
    assert log["diverged"].tolist() == [False, True]
    stop = log["diverged_step"][1]
    assert log["losses"][stop - 1, 1] > 10.0 and np.isfinite(log["losses"][:, 0]).all()


def test_index_stream_draws_the_batches_of_data_batches(mnist):
    x, y = mnist
    stream = _IndexStream(len(x), 64, [0, 9], x.device)
    reference = [data.batches(x, y, 64, seed=s) for s in (0, 9)]
    for _ in range(len(x) // 64 * 2 + 3):  # over two epoch boundaries
        idx = next(stream)
        for row, batches in zip(idx, reference, strict=True):
            xb, yb = next(batches)
            assert torch.equal(x[row], xb) and torch.equal(y[row], yb)


def test_logs_callback_and_accuracy(mnist):
    x, y = mnist
    model = StackedMLP(2, hidden=(32,), norm=True)
    log = train_stacked(model, x, y, 50, 0.5, log_every=20, progress=False,
                        callback=lambda step, m: {"acc": accuracy(m, x[:500], y[:500]),
                                                  "training": m.training})
    assert log["step"].tolist() == [20, 40, 50]
    assert log["loss"].shape == (3, 2) and log["losses"].shape == (50, 2)
    np.testing.assert_allclose(log["loss"][0], log["losses"][:20].mean(0))
    np.testing.assert_allclose(log["loss"][2], log["losses"][40:].mean(0))
    assert log["acc"].shape == (3, 2) and log["training"].all()
    for i in range(2):
        assert log["acc"][-1, i] == train.accuracy(model.net(i), x[:500], y[:500])
    assert model.training


def test_stacked_sgd_one_step_by_hand():
    p = torch.ones(2, 3, requires_grad=True)
    opt = StackedSGD([p], lr=[0.1, 1.0], momentum=[0.0, 0.5], weight_decay=[0.0, 0.1])
    # net 1: d = 2 + 0.1 * 1 = 2.1 = buf, p = 1 - 2.1; then d = 2 + 0.1 * (-1.1) = 1.89,
    # buf = 0.5 * 2.1 + 1.89 = 2.94, p = -1.1 - 2.94
    for expected in ([0.8, -1.1], [0.6, -4.04]):
        p.grad = torch.full((2, 3), 2.0)
        opt.step()
        torch.testing.assert_close(p[:, 0], torch.tensor(expected))
    opt.freeze([1])
    p.grad = torch.full((2, 3), math.nan)
    opt.step()
    assert torch.isnan(p[0]).all() and torch.equal(p[1].detach(), torch.full((3,), -4.04))


def test_bad_input_gives_clear_errors(mnist):
    x, y = mnist
    with pytest.raises(ValueError, match="init_std must be one number or k=3"):
        StackedMLP(3, init_std=[0.1, 0.2])
    with pytest.raises(ValueError, match="seeds must have k=3"):
        StackedMLP(3, seeds=[0, 1])
    with pytest.raises(ValueError, match="activation"):
        StackedMLP(3, activation="softsign")
    with pytest.raises(ValueError, match="positive integer"):
        StackedMLP(0)
    with pytest.raises(ValueError, match="norm must be True or False"):
        StackedMLP(2, norm=nn.BatchNorm1d)
    model = StackedMLP(3, hidden=(8,))
    with pytest.raises(ValueError, match="lr must be one number or k=3"):
        train_stacked(model, x, y, 5, [0.1, 0.2], progress=False)
    with pytest.raises(ValueError, match="data_seeds must be None, one int or k=3"):
        train_stacked(model, x, y, 5, 0.1, data_seeds=[0, 1], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train_stacked(model, x, y, 5, 0.1, batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"x must be \(B, 784\) or \(k=3, B, 784\).*\(5, 100\)"):
        model(torch.zeros(5, 100))
    with pytest.raises(ValueError, match=r"got \(2, 5, 784\)"):
        model(torch.zeros(2, 5, 784))
    with pytest.raises(ValueError, match="finite and >= 0"):
        StackedSGD(model.parameters(), lr=-1.0)
    with pytest.raises(ValueError, match="first dimension"):
        StackedSGD([torch.zeros(3, 2), torch.zeros(2, 2)], lr=0.1)


def test_moves_to_another_device_with_its_buffers():
    model = StackedMLP(2, hidden=(8,), norm=True).to(torch.device("cpu"), torch.float64)
    assert model.running_var_0.dtype == torch.float64
    assert model(torch.zeros(4, 784, dtype=torch.float64)).shape == (2, 4, 10)

