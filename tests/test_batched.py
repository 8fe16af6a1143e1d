"""bnutils.batched: k networks trained as one agree with the same networks trained alone.

The reference is the plain loop: ``models.mlp`` + ``torch.optim.SGD`` + the batches of
``train.train``, for every normalization the chapters train. In float32 the two agree to rounding: the stacked products sum in
another order, so the last bits differ and grow slowly over training. For a smooth
activation (sigmoid) they stay at 1e-5 over hundreds of steps. A ReLU is not smooth: a
rounding-level change flips some unit on or off (BN even centres the ReLU's inputs on
the kink) and moves the run by a finite amount, which training then amplifies; a lone
run whose initial weights are scaled by 1 + 1e-7 moves as far. So every setting is also
checked in float64, where rounding is 1e-16 and any real difference would show.
"""

import itertools
import math
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from bnutils import config, data, generator, models, norms, set_seed, train
from bnutils.batched import (
    StackedCNN,
    StackedMLP,
    StackedSGD,
    _IndexStream,
    accuracy,
    train_stacked,
)

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
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol,
                                   msg=lambda m, key=key: f"{key}: {m}")


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


@pytest.mark.parametrize("init_std", [0.05, None])
def test_init_leaves_the_global_generator_alone(init_std):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    StackedMLP(2, init_std=init_std).net(1)
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


def test_batch_norm_method_for_subclasses_is_batchnorm1d_per_net():
    model = StackedMLP(2, hidden=(6,), norm=True)
    bn = nn.BatchNorm1d(6)
    with torch.no_grad():
        model.gamma[0][1].uniform_(0.5, 2.0)
        model.beta[0][1].uniform_(-1.0, 1.0)
        bn.weight.copy_(model.gamma[0][1])
        bn.bias.copy_(model.beta[0][1])
    h = torch.randn(2, 16, 6) * 3 + 1  # (k, B, w)
    torch.testing.assert_close(model._batch_norm(h, 0)[1], bn(h[1]))
    running_mean, running_var = model._running(0)
    torch.testing.assert_close(running_mean[1], bn.running_mean)
    torch.testing.assert_close(running_var[1], bn.running_var)


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


@pytest.mark.parametrize("cut, log_every, logs", [(7, 20, [20]), (20, 20, [20]),
                                                 (21, 20, [20, 40]), (7, None, [7]),
                                                 (1, 1, [1])])
def test_a_replays_cut_trains_on_to_the_next_log(mnist, cut, log_every, logs):
    """Cut by ``config.step_limit``, a run returns the first logs of the whole run (the
    replay compares them with the stored ones, entry by entry) and the losses of the
    steps it took. A run that logs only at its end logs the cut."""
    x, y = mnist

    def run():
        model = StackedMLP(2, hidden=(32,), norm=True, seeds=[0, 1])
        return train_stacked(model, x, y, 50, [0.5, 0.1], log_every=log_every,
                             progress=False, schedule=lambda t: 0.99 ** t,
                             callback=lambda step, m: {"acc": accuracy(m, x[:500], y[:500])})

    whole = run()
    with config.step_limit(cut):
        part = run()
    assert part["step"].tolist() == logs
    steps = logs[-1]
    np.testing.assert_array_equal(part["losses"], whole["losses"][:steps])
    if log_every:  # the same logs as the whole run's first ones
        np.testing.assert_array_equal(part["acc"], whole["acc"][:len(logs)])
        np.testing.assert_array_equal(part["loss"], whole["loss"][:len(logs)])


def test_stacked_sgd_one_step_by_hand():
    p = torch.ones(2, 3, requires_grad=True)
    opt = StackedSGD([p], lr=[0.1, 1.0], momentum=[0.0, 0.5], weight_decay=[0.0, 0.1])
    # net 1: d = 2 + 0.1 * 1 = 2.1 = buf, p = 1 - 2.1; then d = 2 + 0.1 * (-1.1) = 1.89,
    # buf = 0.5 * 2.1 + 1.89 = 2.94, p = -1.1 - 2.94
    for expected in ([0.8, -1.1], [0.6, -4.04]):
        p.grad = torch.full((2, 3), 2.0)
        opt.step()
        torch.testing.assert_close(p[:, 0], torch.tensor(expected))
    for momentum in ([0.0, 0.5], 0.0):  # a frozen net keeps its values even under nan
        q = p.detach().clone().requires_grad_()
        opt = StackedSGD([q], lr=[0.1, 1.0], momentum=momentum)
        opt.freeze([1])
        q.grad = torch.full((2, 3), math.nan)
        opt.step()
        assert torch.isnan(q[0]).all() and torch.equal(q[1], p[1])


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
    with pytest.raises(ValueError, match="norm must be True, False or a callable"):
        StackedMLP(2, norm="bn")
    with pytest.raises(ValueError, match="placement must be one of"):
        StackedMLP(2, norm=True, placement="inside")
    sizes = iter([4, 5])  # net 1's layer would have another size
    with pytest.raises(ValueError, match="same parameters and buffers for every net"):
        StackedMLP(2, hidden=(4,), norm=lambda d: nn.BatchNorm1d(next(sizes)))
    learns = iter([True, False])  # net 1's gamma would not learn
    with pytest.raises(ValueError, match="same parameters and buffers for every net"):
        StackedMLP(2, hidden=(4,),
                   norm=lambda d: norms.PartialBatchNorm(d, learn_gamma=next(learns)))
    model = StackedMLP(3, hidden=(8,))
    with pytest.raises(ValueError, match="lr must be one number or k=3"):
        train_stacked(model, x, y, 5, [0.1, 0.2], progress=False)
    with pytest.raises(ValueError, match="data_seeds must be None, one int or k=3"):
        train_stacked(model, x, y, 5, 0.1, data_seeds=[0, 1], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train_stacked(model, x, y, 5, 0.1, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train_stacked(model, x, y, 0, 0.1, progress=False)
    with pytest.raises(ValueError, match="as many examples"):
        train_stacked(model, x, y[:-1], 5, 0.1, progress=False)
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



# --- every normalization the chapters train -----------------------------------------------


def _noisy(per_example):
    """A factory whose layers are seeded in the order they are built (as chapter 8's);
    not the default settings, so that a stack that drops one shows."""
    seeds = itertools.count(100)

    def layer(d):
        noisy = norms.NoisyBatchNorm1d(d, a=0.5, v=3.0, per_example=per_example,
                                       seed=next(seeds))
        noisy.bn.eps, noisy.bn.momentum = 1e-3, 0.3
        return noisy

    return layer


class _Shift(nn.Module):
    """A layer batched.py knows nothing about: it must run once per net."""

    def __init__(self, d):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return x - x.mean(0) + self.shift


# name: (a function that makes a fresh factory, placement); chapters 2, 8 and 9 train these
NORMS = {
    "none": (lambda: None, "before"),
    "bn": (lambda: nn.BatchNorm1d, "before"),
    "bn after": (lambda: nn.BatchNorm1d, "after"),
    "bn eps momentum": (lambda: partial(nn.BatchNorm1d, eps=1e-3, momentum=0.3), "before"),
    "bn without affine": (lambda: partial(nn.BatchNorm1d, affine=False), "before"),
    "partial bn": (lambda: norms.PartialBatchNorm, "before"),
    "mean only": (lambda: partial(norms.PartialBatchNorm, scale=False), "before"),
    "variance only": (lambda: partial(norms.PartialBatchNorm, center=False), "before"),
    "frozen gamma beta": (lambda: partial(norms.PartialBatchNorm, learn_gamma=False,
                                          learn_beta=False), "before"),
    "partial bn after": (lambda: norms.PartialBatchNorm, "after"),
    "ghost bn": (lambda: partial(norms.GhostBatchNorm, virtual_batch_size=4), "before"),
    "noisy per feature": (lambda: _noisy(False), "before"),
    "noisy per activation": (lambda: _noisy(True), "before"),
    "batch renorm": (lambda: partial(norms.BatchRenorm, momentum=0.3, warmup=3, ramp=5,
                                     r_max=1.5, d_max=0.5), "before"),
    "layer norm": (lambda: partial(norms.LayerNorm, eps=1e-3), "before"),
    "group norm": (lambda: partial(norms.GroupNorm, 4), "before"),
    "torch layer norm": (lambda: nn.LayerNorm, "before"),
    "a layer of ours": (lambda: _Shift, "before"),
}
HIDDEN = (16, 12)


def _stack(name, dtype, seeds=SEEDS):
    make, placement = NORMS[name]
    return StackedMLP(len(seeds), hidden=HIDDEN, norm=make(), placement=placement,
                      init_std=0.1, seeds=seeds).to(dtype)


def _alone(name, dtype, seeds=SEEDS):
    """The same nets built one by one, as ``models.mlp`` builds them."""
    make, placement = NORMS[name]
    factory = make()
    return [models.mlp(784, HIDDEN, 10, "sigmoid", factory, init_std=0.1,
                       generator=generator(s), placement=placement).to(dtype) for s in seeds]


def _randomize(model):
    """Move every parameter and running statistic away from its initial value, so that
    a net that got another net's (or no) values shows."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if t.is_floating_point():
                t.add_(0.2 * torch.rand(t.shape, generator=g, dtype=t.dtype)
                       * (1 if "var" in name else torch.sign(torch.randn(t.shape, generator=g))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", NORMS)
def test_every_norm_trains_as_each_net_alone(mnist, name, dtype):
    """Net i of a stack follows ``train.train`` on the same seed: its losses, its final
    parameters and buffers, and its outputs in eval mode, to float32 rounding (the
    rates are moderate: an unstable run amplifies rounding) and in float64 to 1e-9;
    per-net rates, momentum and data orders."""
    x, y = mnist[0][:2000].to(dtype), mnist[1][:2000]
    lrs, data_seeds, steps = [0.05, 0.1, 0.2], [7, 8, 7], 20
    tol = dict(rtol=RTOL, atol=ATOL) if dtype == torch.float32 else TOL64
    model = _stack(name, dtype)
    log = train_stacked(model, x, y, steps, lrs, batch_size=16, data_seeds=data_seeds,
                        momentum=0.5, progress=False)
    assert not log["diverged"].any()
    for i, net in enumerate(_alone(name, dtype)):
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lrs[i],
                              momentum=0.5)
        _, losses = train.train(net, opt, x, y, steps, 16, seed=data_seeds[i], progress=False)
        np.testing.assert_allclose(log["losses"][:, i], losses.numpy(), **tol)
        assert_same_net(model.net(i), net, **tol)
        assert [type(m) for m in model.net(i)] == [type(m) for m in net]
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x[:50])[i], net.eval()(x[:50]), **tol)
        model.train()


@pytest.mark.parametrize("per_net_input", [False, True], ids=["shared-x", "per-net-x"])
@pytest.mark.parametrize("name", NORMS)
def test_every_norm_forward_is_each_nets(mnist, name, per_net_input):
    """In training and in eval mode, from non-trivial parameters and statistics: the
    logits, the inputs of the activations, and the statistics the pass leaves."""
    x = mnist[0][:48].double()
    xb = torch.stack([x[:16], x[16:32], x[32:]]) if per_net_input else x[:16]
    for training in (True, False):
        model = _stack(name, torch.float64)
        _randomize(model)
        # copies before the pass, which draws the noise of noisy BN
        nets = [model.net(i).train(training) for i in range(3)]
        firsts = [model.net(i).train(training) for i in range(3)]
        model.train(training)
        with torch.no_grad():
            logits, hidden = model(xb, return_hidden=True)
        for i, net in enumerate(nets):
            xi = xb[i] if per_net_input else xb
            with torch.no_grad():
                torch.testing.assert_close(net(xi), logits[i], **TOL64)
            assert_same_net(model.net(i), net, **TOL64)
            # the input of the first activation: after the norm when it comes before
            first = [type(m) for m in net].index(nn.Sigmoid)
            with torch.no_grad():
                torch.testing.assert_close(hidden[0][i], firsts[i][:first](xi), **TOL64)
        assert [h.shape for h in hidden] == [(3, 16, 16), (3, 16, 12)]


def test_norm_layers_run_side_by_side_or_per_net():
    """Plain BN is one F.batch_norm (and keeps the attributes figure1 reads); the layers
    of bnutils.norms run side by side; others, or nets whose layers differ, per net."""
    bn = _stack("bn", torch.float32)
    assert len(bn.gamma) == 2 and not bn.norms and bn.num_batches_tracked.shape == (3,)
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)
    tuned = _stack("bn eps momentum", torch.float32)
    assert (tuned.eps, tuned.momentum) == (1e-3, 0.3) and not tuned.norms
    for name in ("partial bn", "ghost bn", "noisy per feature", "batch renorm",
                 "layer norm", "group norm"):
        model = _stack(name, torch.float32)
        assert not model.gamma and all(layer.wide is not None for layer in model.norms), name
    for name in ("bn without affine", "torch layer norm", "a layer of ours"):
        assert all(layer.wide is None for layer in _stack(name, torch.float32).norms), name
    groups = iter([2, 4, 2, 4])  # net 1's Group Norm has other groups: per net
    model = StackedMLP(2, hidden=(8,), norm=lambda d: norms.GroupNorm(next(groups), d))
    assert model.norms[0].wide is None
    assert [model.net(i)[1].num_groups for i in range(2)] == [2, 4]
    x = torch.randn(5, 784)
    with torch.no_grad():
        for i, logits in enumerate(model(x)):  # each net through its own layer
            torch.testing.assert_close(logits, model.net(i)(x))
    assert model.norms[0].gamma.shape == (2, 8) and model.norms[0].gamma.requires_grad


def test_after_the_nonlinearity_the_bias_learns_and_frozen_parameters_stay(mnist):
    model = _stack("partial bn after", torch.float32)
    frozen = _stack("frozen gamma beta", torch.float32)
    for m in (model, frozen):
        train_stacked(m, *mnist, 10, 1.0, batch_size=16, progress=False)
    assert len(model.biases) == 3 and all((b != 0).any() for b in model.biases)
    assert len(frozen.biases) == 1  # before the norm, the hidden layers have none
    for layer in frozen.norms:
        assert (layer.gamma == 1).all() and (layer.beta == 0).all()
        assert not layer.gamma.requires_grad
    assert all((layer.gamma != 1).any() for layer in model.norms)


def test_a_step_counter_counts_for_the_nets_that_train(mnist):
    """Batch Renorm's limits follow its step counter: side by side, the nets share one
    count, a frozen net's stays where it stopped."""
    x, y = mnist[0].double(), mnist[1]
    make, _ = NORMS["batch renorm"]
    model = StackedMLP(3, hidden=(50, 50), activation="relu", norm=make(), seeds=SEEDS)
    lrs = [0.05, 1e200, 0.1]
    log = train_stacked(model.double(), x, y, 30, lrs, data_seeds=0, progress=False)
    stop = log["diverged_step"][1]
    assert log["diverged"].tolist() == [False, True, False] and 1 < stop < 30
    for layer in model.norms:
        assert layer.num_batches_tracked.tolist() == [30, stop, 30]  # as with plain BN
    factory = make()
    for i in (0, 2):
        net = models.mlp(784, (50, 50), 10, "relu", factory, init_std=0.05,
                         generator=generator(SEEDS[i])).double()
        _, losses = train.train(net, torch.optim.SGD(net.parameters(), lr=lrs[i]), x, y, 30,
                                seed=0, progress=False)
        np.testing.assert_allclose(log["losses"][:, i], losses.numpy(), **TOL64)
        assert_same_net(model.net(i), net, **TOL64)


def test_accuracy_of_a_batch_statistics_norm_uses_the_whole_set_as_one_batch(mnist):
    x, y = mnist[0][:300], mnist[1][:300]
    model = _stack("partial bn", torch.float32)
    train_stacked(model, *mnist, 20, 0.5, progress=False)
    acc = accuracy(model, x, y)
    for i in range(3):
        with torch.no_grad():
            logits = model.net(i)(x)
        assert acc[i] == (logits.argmax(1) == y).double().mean().item()
    assert accuracy(model, x, y, batch_size=100).tolist() != acc.tolist()


def test_repr_says_what_the_stack_is():
    text = repr(_stack("group norm", torch.float32))
    assert "k=3, sizes=(784, 16, 12, 10), activation='sigmoid'" in text
    assert "placement='before'" in text and "side_by_side=True" in text
    assert "GroupNorm" in text and "k=3" in text
    assert "placement='after'" in repr(_stack("bn after", torch.float32))
    cnn = repr(StackedCNN(2, norm="bn", dropout=0.1, widths=(4, 8)))
    assert "k=2, widths=(4, 8), norm='bn', activation='relu', dropout=0.1" in cnn


def test_net_i_is_a_copy():
    model = _stack("noisy per activation", torch.float32, seeds=[0, 0])
    a, b = model.net(0), model.net(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert a[1] is not model.norms[0].layers[0] and a[1].g is not model.norms[0].layers[0].g
    with torch.no_grad():
        a[1].bn.weight.fill_(5.0)
        a[0].weight.fill_(5.0)
    assert not (model.norms[0].bn_weight == 5).any() and not (model.weights[0] == 5).any()
    # the two nets' layers were built by two calls: their noise differs
    x = torch.randn(8, 784)
    assert not torch.equal(a[:2](x), b[:2](x))


# --- settings and corners that the agreement tests above do not reach ----------------------


def test_batch_norm_settings_reach_every_net():
    model = StackedMLP(2, hidden=(6,), norm=True, eps=1e-3, momentum=0.3)
    assert (model.eps, model.momentum) == (1e-3, 0.3)
    assert [(m.eps, m.momentum) for m in model.net(1) if isinstance(m, nn.BatchNorm1d)] == [
        (1e-3, 0.3)]
    assert "norm=True" in repr(model)
    for norm in (False, None):
        assert "norm=False" in repr(StackedMLP(2, hidden=(6,), norm=norm))


@pytest.mark.parametrize("name", ["bn", "group norm", "noisy per activation", "layer norm",
                                  "a layer of ours"])
def test_a_stack_of_one_net_is_that_net(mnist, name):
    model = _stack(name, torch.float64, seeds=[7])
    (alone,) = _alone(name, torch.float64, seeds=[7])
    assert f"k=1, sizes=(784, {HIDDEN[0]}, {HIDDEN[1]}, 10)" in repr(model)
    x = mnist[0][:32].double()
    torch.testing.assert_close(model(x)[0], alone(x), **TOL64)
    assert_same_net(model.net(0), alone, **TOL64)


@pytest.mark.parametrize("name", ["none", "bn", "bn without affine", "group norm",
                                  "noisy per activation", "a layer of ours"])
def test_a_stack_holds_k_nets_worth_of_tensors_and_no_more(name):
    model = _stack(name, torch.float32)
    one = model.net(0)
    assert sum(p.numel() for p in model.parameters()) == 3 * sum(
        p.numel() for p in one.parameters())
    floats = [b for b in model.buffers() if b.is_floating_point()]
    assert sum(b.numel() for b in floats) == 3 * sum(
        b.numel() for b in one.buffers() if b.is_floating_point())


def test_batch_norm_without_running_statistics_is_not_plain_batch_norm():
    model = StackedMLP(2, hidden=(6,), norm=lambda d: nn.BatchNorm1d(d, track_running_stats=False))
    assert len(model.gamma) == 0 and len(model.norms) == 1
    assert not any("running" in name for name, _ in model.named_buffers())


class _TwiceGroupNorm(norms.GroupNorm):
    """Group Norm's tensors and settings, another class and output: it must not be taken
    for a Group Norm and run side by side with one."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_layers_of_different_classes_run_per_net(mnist):
    kinds = itertools.cycle([partial(norms.GroupNorm, 4), partial(_TwiceGroupNorm, 4)])
    model = StackedMLP(2, hidden=(8,), norm=lambda d: next(kinds)(d), seeds=[0, 1])
    assert "side_by_side=False" in repr(model)
    x = mnist[0][:16]
    for i in range(2):
        torch.testing.assert_close(model(x)[i], model.net(i)(x))


def test_accuracy_in_chunks_equals_accuracy_at_once(mnist):
    x, y = mnist[0][:500], mnist[1][:500]
    model = StackedMLP(3, hidden=(16,), norm=True)
    train_stacked(model, *mnist, 20, 0.5, progress=False)
    assert accuracy(model, x, y, batch_size=7).tolist() == accuracy(model, x, y).tolist()


def test_one_step_is_a_run():
    x, y = torch.randn(10, 784), torch.arange(10)
    log = train_stacked(StackedMLP(2, hidden=(4,)), x, y, 1, 0.1, batch_size=5,
                        progress=False)
    assert log["losses"].shape == (1, 2) and log["diverged_step"].tolist() == [-1, -1]
    assert log["diverged_step"].dtype.kind == "i"


def test_a_schedule_with_the_wrong_number_of_factors_is_named(mnist):
    with pytest.raises(ValueError, match="^schedule must be one number or k=2 numbers, got 3"):
        train_stacked(StackedMLP(2, hidden=(4,)), *mnist, 3, 0.1,
                      schedule=lambda t: [1.0, 1.0, 1.0], progress=False)


def test_a_loss_equal_to_max_loss_is_not_above_it(mnist):
    def run(max_loss):
        model = StackedMLP(2, hidden=(8,), seeds=[0, 1])
        return train_stacked(model, *mnist, 1, 0.1, max_loss=max_loss, progress=False)

    first = run(None)["losses"][0]
    assert run(float(first.max()))["diverged"].tolist() == [False, False]
    assert run(float(first.min()))["diverged"].tolist() == (first > first.min()).tolist()


def test_frozen_nets_accumulate_and_momentum_goes_on_for_the_others():
    torch.manual_seed(0)
    p = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ref = p[2].detach().clone().requires_grad_(True)
    opt, torch_opt = StackedSGD([p], lr=0.1, momentum=0.9), torch.optim.SGD([ref], 0.1, 0.9)
    opt.freeze([0])
    opt.freeze(torch.tensor([False, True, False]))
    assert opt.active.tolist() == [False, False, True]
    frozen = p[:2].detach().clone()
    for _ in range(3):
        g = torch.randn(3, 4, dtype=torch.float64)
        p.grad, ref.grad = g.clone(), g[2].clone()
        opt.step()
        torch_opt.step()
        torch.testing.assert_close(p[2], ref, rtol=0, atol=1e-15)
    assert torch.equal(p[:2], frozen)


def test_a_parameter_without_a_gradient_leaves_the_others_updated():
    # and by default no momentum and no weight decay: two steps of plain SGD
    a, b = torch.zeros(2, 3, requires_grad=True), torch.ones(2, 3, requires_grad=True)
    opt = StackedSGD([a, b], lr=0.5)
    for _ in range(2):
        b.grad = torch.ones(2, 3)
        opt.step()
    assert torch.equal(a, torch.zeros(2, 3)) and torch.equal(b, torch.zeros(2, 3))


def test_stacked_sgd_is_torch_sgd_to_the_bit_in_float32():
    # the rates in the parameters' precision, as torch.optim.SGD passes them to its kernels
    torch.manual_seed(0)
    p = torch.randn(2, 5, requires_grad=True)
    refs = [p[i].detach().clone().requires_grad_(True) for i in range(2)]
    opt = StackedSGD([p], lr=[0.1, 0.3], momentum=[0.9, 0.7], weight_decay=[1e-3, 3e-2])
    torch_opts = [torch.optim.SGD([r], lr, m, weight_decay=wd)
                  for r, lr, m, wd in zip(refs, [0.1, 0.3], [0.9, 0.7], [1e-3, 3e-2],
                                          strict=True)]
    for _ in range(3):
        g = torch.randn(2, 5)
        p.grad = g.clone()
        opt.step()
        for i, (r, o) in enumerate(zip(refs, torch_opts, strict=True)):
            r.grad = g[i].clone()
            o.step()
            assert torch.equal(p[i], r)


def test_stacked_sgd_settings_per_net_and_their_bounds():
    p = torch.zeros(2, 3, requires_grad=True)
    StackedSGD([p], lr=[0.0, 0.1])  # a rate of 0: a net that does not move
    for name in ("momentum", "weight_decay"):
        with pytest.raises(ValueError, match=f"^{name} must be one number or k=2 numbers"):
            StackedSGD([p], lr=0.1, **{name: [0.1, 0.2, 0.3]})
        with pytest.raises(ValueError, match="^momentum and weight_decay must be >= 0$"):
            StackedSGD([p], lr=0.1, **{name: [0.1, -0.2]})


def test_batches_of_one_and_of_the_whole_set():
    for size in (1, 10):
        stream = _IndexStream(10, size, [0, 1], "cpu")
        epoch = torch.cat([next(stream) for _ in range(10 // size)], dim=1)
        assert epoch.shape == (2, 10) and (epoch.sort(1).values == torch.arange(10)).all()


def test_a_number_is_no_batch():
    with pytest.raises(ValueError, match=r"x must be \(B, 784\) or \(k=2, B, 784\), got \(\)"):
        StackedMLP(2, hidden=(4,))(torch.tensor(1.0))


def test_stacked_sgd_refuses_what_has_no_nets_axis():
    with pytest.raises(ValueError, match="^StackedSGD got no parameters$"):
        StackedSGD([], lr=0.1)
    with pytest.raises(ValueError, match="first dimension"):
        StackedSGD([torch.zeros(2, 3), torch.tensor(1.0)], lr=0.1)


def test_the_callback_gets_the_step_and_may_return_anything(mnist):
    model = StackedMLP(2, hidden=(4,))
    log = train_stacked(model, *mnist, 5, 0.1, log_every=2, progress=False,
                        callback=lambda step, m: step * 10)
    assert log["callback"] == [20, 40, 50] and log["step"].tolist() == [2, 4, 5]
    with pytest.raises(ValueError, match="the callback returned the key 'loss', which"):
        train_stacked(model, *mnist, 2, 0.1, log_every=1, progress=False,
                      callback=lambda step, m: {"loss": step})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda(mnist):
    # the device arguments only matter off the CPU: every tensor a run makes stays there
    cuda = torch.device("cuda")
    x, y = (t.to(cuda) for t in mnist)
    models = {  # the first as test_max_loss_freezes_... (its net 1 diverges)
        "relu": StackedMLP(3, hidden=(32,), activation="relu", init_std=0.05),
        "bn": StackedMLP(3, hidden=(16,), norm=True),
        "group norm": StackedMLP(3, hidden=(16,), norm=partial(norms.GroupNorm, 4)),
    }
    for name, model in models.items():
        model = model.to(cuda)
        log = train_stacked(model, x, y, 30, [0.05, 50.0, 0.05], data_seeds=[0, 1, 1],
                            max_loss=10.0, log_every=10, progress=False,
                            callback=lambda step, m: {"acc": accuracy(m, x[:100], y[:100])})
        assert log["acc"].shape == (3, 3) and np.isfinite(log["losses"][:, 0]).all()
        if name == "relu":
            assert log["diverged"].tolist() == [False, True, False]
        net = model.net(0)
        assert {t.device.type for t in net.state_dict().values()} == {"cuda"}
        torch.testing.assert_close(model.eval()(x[:8])[0], net.eval()(x[:8]))
    cnn = StackedCNN(2, norm="bn", dropout=0.2, widths=(4, 8)).to(cuda)
    images = x[:64].view(-1, 1, 28, 28)
    train_stacked(cnn, images, y[:64], 3, 0.1, batch_size=16, progress=False)
    assert {t.device.type for t in cnn.net(1).state_dict().values()} == {"cuda"}
    assert accuracy(cnn, images, y[:64]).shape == (2,)


# --- StackedCNN: k copies of small_cnn, trained as figure3 trains one ---------------------


@pytest.fixture(scope="module")
def images():
    return data.mnist_tensors("train", subset=True, flatten=False)


def one_norm(norm, groups=4):
    """The ``small_cnn`` norm argument of a ``StackedCNN`` norm."""
    return (lambda c: nn.GroupNorm(groups, c)) if norm == "gn" else norm


def cnn_alone(images, norm, activation, dropout, seed, lr, steps, half_life, dtype):
    """``small_cnn`` trained as ``figure3.run_config`` trains it."""
    set_seed(seed)
    net = models.small_cnn(norm=one_norm(norm), activation=activation,
                           dropout=dropout).to(dtype)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 ** (t / half_life))
    _, losses = train.train(net, opt, *images, steps, batch_size=64, seed=seed,
                            scheduler=sched, progress=False)
    return net, losses.numpy()


@pytest.mark.parametrize("norm, activation, dropout",
                         [(None, "relu", 0.2), ("bn", "relu", 0.2), ("bn", "sigmoid", 0.0),
                          (None, "sigmoid", 0.0), ("gn", "relu", 0.2)])
def test_cnn_training_matches_small_cnn_one_by_one(images, norm, activation, dropout):
    """float64 (ReLU and max-pooling have kinks, see the module's docstring); the
    dropout masks are the ones small_cnn draws after set_seed."""
    x, y = images[0].double(), images[1]
    lrs, half_lives, seeds, steps = [0.1, 0.05], np.array([10.0, 30.0]), [0, 1], 25
    model = StackedCNN(2, norm=norm, activation=activation, dropout=dropout, seeds=seeds)
    log = train_stacked(model.double(), x, y, steps, lrs, batch_size=64, momentum=0.9,
                        weight_decay=5e-4, schedule=lambda t: 0.5 ** (t / half_lives),
                        progress=False)
    for i in range(2):
        net, losses = cnn_alone((x, y), norm, activation, dropout, seeds[i], lrs[i], steps,
                                half_lives[i], torch.float64)
        np.testing.assert_allclose(log["losses"][:, i], losses, **TOL64)
        assert_same_net(model.net(i), net, **TOL64)


def test_cnn_float32_agrees_with_shared_data(images):
    """Sigmoid, no BN: smooth but for the max-pooling, so float32 agrees to rounding.
    (With BN the first layer's gradient is a small difference of large terms, which
    magnifies rounding; float64 checks that case above.)"""
    model = StackedCNN(2, activation="sigmoid", seeds=[3, 4])
    log = train_stacked(model, *images, 30, [0.1, 0.05], batch_size=64, data_seeds=0,
                        momentum=0.9, progress=False)
    for i, (seed, lr) in enumerate([(3, 0.1), (4, 0.05)]):
        set_seed(seed)
        net = models.small_cnn(activation="sigmoid")
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        _, losses = train.train(net, opt, *images, 30, batch_size=64, seed=0, progress=False)
        np.testing.assert_allclose(log["losses"][:, i], losses.numpy(), rtol=RTOL, atol=ATOL)
        assert_same_net(model.net(i), net)


@pytest.mark.parametrize("norm", [None, "bn", "gn"])
def test_cnn_initial_weights_are_those_of_small_cnn(norm):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model = StackedCNN(2, norm=norm, widths=(4, 8), seeds=[5, 6])
    assert torch.equal(torch.rand(3), expected)  # the global generator is left alone
    for i, seed in enumerate([5, 6]):
        torch.manual_seed(seed)
        net = models.small_cnn(norm=one_norm(norm), widths=(4, 8))
        for key, value in net.state_dict().items():
            assert torch.equal(model.net(i).state_dict()[key], value), key


@pytest.mark.parametrize("norm", [None, "bn", "gn"])
@pytest.mark.parametrize("per_net_input", [False, True], ids=["shared-x", "per-net-x"])
def test_cnn_net_i_computes_what_the_stack_computes(images, norm, per_net_input):
    x, y = images[0].double(), images[1]  # float64: equal up to 1e-16 rounding
    model = StackedCNN(3, norm=norm, widths=(4, 8, 8), seeds=SEEDS).double()
    train_stacked(model, x, y, 10, [0.05, 0.1, 0.2], batch_size=32, progress=False)
    xb = torch.stack([x[:20], x[20:40], x[40:60]]) if per_net_input else x[:20]
    for training in (True, False):
        model.train(training)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            logits, hidden = model(xb, return_hidden=True)
        assert [h.shape for h in hidden] == [(3, 20, 4, 28, 28), (3, 20, 8, 14, 14),
                                             (3, 20, 8, 7, 7)]
        for i in range(3):
            model.load_state_dict(state)  # forget the statistics of the pass above
            net = model.net(i)
            assert net.training == training
            xi = xb[i] if per_net_input else xb
            with torch.no_grad():
                torch.testing.assert_close(net(xi), logits[i], **TOL64)
                before_activation = net[:2] if norm else net[:1]  # conv, (BN)
                torch.testing.assert_close(before_activation(xi), hidden[0][i], **TOL64)


def test_cnn_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="norm must be None, 'bn' or 'gn'"):
        StackedCNN(2, norm="ln")
    with pytest.raises(ValueError, match=r"multiple of groups=3, got widths \(8, 16, 32\)"):
        StackedCNN(2, norm="gn", groups=3)
    with pytest.raises(ValueError, match="dropout must be in"):
        StackedCNN(2, dropout=1.0)
    with pytest.raises(ValueError, match="activation"):
        StackedCNN(2, activation="softsign")
    model = StackedCNN(2)
    with pytest.raises(ValueError, match=r"x must be \(B, 1, H, W\) or \(k=2, B, 1, H, W\)"):
        model(torch.zeros(4, 3, 28, 28))
    with pytest.raises(ValueError, match=r"got \(4, 784\)"):
        model(torch.zeros(4, 784))


def test_cnn_settings_reach_every_net(images):
    x = images[0][:16]
    for norm in ("bn", "gn"):
        model = StackedCNN(2, norm=norm, eps=0.5, momentum=0.3, widths=(4, 8), groups=2,
                           num_classes=3)
        nets = [model.net(i) for i in range(2)]
        logits = model(x)  # training mode: batch statistics, running ones updated
        assert logits.shape == (2, 16, 3)
        for i, net in enumerate(nets):
            torch.testing.assert_close(logits[i], net(x), rtol=1e-4, atol=1e-5)
            assert_same_net(model.net(i), net)
    assert "groups=2" in repr(model) and "groups" not in repr(StackedCNN(2, norm="bn"))
    assert dict(StackedCNN(2, norm="gn").named_buffers()) == {}
    assert dict(StackedCNN(2).named_buffers()) == {}
    assert StackedCNN(2, norm="bn").num_batches_tracked.dtype == torch.long


def test_cnn_per_net_input_with_several_channels(images):
    model = StackedCNN(2, norm="bn", in_channels=3, widths=(4, 8))
    x = torch.randn(2, 5, 3, 12, 12)
    logits = model.eval()(x)
    for i in range(2):
        torch.testing.assert_close(logits[i], model.net(i)(x[i]), rtol=1e-4, atol=1e-5)


def test_cnn_dropout_is_off_in_eval_mode(images):
    model = StackedCNN(2, dropout=0.5, widths=(4, 8)).eval()
    x = images[0][:8]
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    for i in range(2):
        torch.testing.assert_close(model(x)[i], model.net(i)(x), rtol=1e-4, atol=1e-5)
