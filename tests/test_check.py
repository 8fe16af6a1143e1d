"""The exercise checkers of bnutils.check: they pass right answers, name known mistakes,
fail wrong ones, and never raise because of the reader's function.

Each mistake is written here as a reader would write it, independently of the mistaken
variants inside bnutils.check, so a diagnosis that only matched its own code would fail.
"""

import numpy as np
import pytest
import torch

from bnutils import check

# --- Right answers, as a reader would write them ---------------------------------------


def forward(x, gamma, beta, eps):
    mu = x.mean(axis=0)
    var = ((x - mu) ** 2).mean(axis=0)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def conv_forward(x, gamma, beta, eps):
    mu = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    x_hat = (x - mu) / np.sqrt(var + eps)
    return gamma.reshape(1, -1, 1, 1) * x_hat + beta.reshape(1, -1, 1, 1)


def staged(dy, x, gamma, eps, var_path=True, mu_path=True, dmu_direct=True, ddof=0,
           eps_inside=True, with_gamma=True):
    """The paper's staged gradients; the keywords switch in one mistake each."""
    m = x.shape[0]
    mu = x.mean(0)
    var = x.var(0, ddof=ddof)
    std = np.sqrt(var + eps) if eps_inside else np.sqrt(var) + eps
    x_hat = (x - mu) / std
    dx_hat = dy * gamma if with_gamma else dy
    dvar = np.sum(dx_hat * (x - mu), axis=0) * -0.5 * (var + eps) ** -1.5
    dmu = dvar * np.sum(-2.0 * (x - mu), axis=0) / m
    if dmu_direct:
        dmu += np.sum(dx_hat * -1.0 / std, axis=0)
    dx = dx_hat / std
    if var_path:
        dx += dvar * 2.0 * (x - mu) / m
    if mu_path:
        dx += dmu / m
    return {"dx_hat": dx_hat, "dvar": dvar, "dmu": dmu, "dx": dx,
            "dgamma": np.sum(dy * x_hat, axis=0), "dbeta": np.sum(dy, axis=0)}


def staged_ok(dy, x, gamma, eps):
    return staged(dy, x, gamma, eps)


def compact(dy, x, gamma, eps, means=True, ddof=0, eps_inside=True):
    m = x.shape[0]
    var = x.var(0, ddof=ddof)
    std = np.sqrt(var + eps) if eps_inside else np.sqrt(var) + eps
    x_hat = (x - x.mean(0)) / std
    dbeta = dy.sum(0)
    dgamma = (dy * x_hat).sum(0)
    k = m if means else 1
    return gamma / std * (dy - dbeta / k - x_hat * dgamma / k), dgamma, dbeta


def compact_ok(dy, x, gamma, eps):
    return compact(dy, x, gamma, eps)


def running(x, running_mean, running_var, momentum):
    m = x.shape[0]
    mean, var = x.mean(0), x.var(0) * m / (m - 1)
    return ((1 - momentum) * running_mean + momentum * mean,
            (1 - momentum) * running_var + momentum * var)


def eval_bn(x, gamma, beta, running_mean, running_var, eps):
    return gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta


def fold(W, b, gamma, beta, running_mean, running_var, eps):
    s = gamma / np.sqrt(running_var + eps)
    return s[:, None] * W, s * (b - running_mean) + beta


def layer_norm(x, gamma, beta, eps):
    mu = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def group_norm(x, gamma, beta, num_groups, eps):
    n, c, h, w = x.shape
    g = x.reshape(n, num_groups, -1)
    x_hat = (g - g.mean(2, keepdims=True)) / np.sqrt(g.var(2, keepdims=True) + eps)
    return gamma.reshape(1, c, 1, 1) * x_hat.reshape(x.shape) + beta.reshape(1, c, 1, 1)


# --- Known mistakes, one small function each -------------------------------------------


def fw_unbiased(x, gamma, beta, eps):
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + eps) + beta


def fw_eps_outside(x, gamma, beta, eps):
    return gamma * (x - x.mean(0)) / (x.std(0) + eps) + beta


def fw_eps_missing(x, gamma, beta, eps):
    return gamma * (x - x.mean(0)) / x.std(0) + beta


def fw_no_sqrt(x, gamma, beta, eps):
    return gamma * (x - x.mean(0)) / (x.var(0) + eps) + beta


def fw_feature_axis(x, gamma, beta, eps):
    mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def fw_feature_axis_no_keepdims(x, gamma, beta, eps):  # raises unless N == D
    return gamma * (x - x.mean(axis=1)) / np.sqrt(x.var(axis=1) + eps) + beta


def fw_no_affine(x, gamma, beta, eps):
    return (x - x.mean(0)) / np.sqrt(x.var(0) + eps)


def fw_swapped(x, gamma, beta, eps):
    return beta * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + gamma


def fw_one_pass(x, gamma, beta, eps):
    mu = x.mean(0)
    var = (x * x).mean(0) - mu * mu
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def conv_batch_only(x, gamma, beta, eps):  # BatchNorm1d's axis on images
    x_hat = (x - x.mean(0)) / np.sqrt(x.var(0) + eps)
    return gamma[:, None, None] * x_hat + beta[:, None, None]


def conv_per_example(x, gamma, beta, eps):
    mu, var = x.mean((2, 3), keepdims=True), x.var((2, 3), keepdims=True)
    return gamma[:, None, None] * (x - mu) / np.sqrt(var + eps) + beta[:, None, None]


def conv_reshape(x, gamma, beta, eps):
    flat = x.reshape(-1, x.shape[1])
    return forward(flat, gamma, beta, eps).reshape(x.shape)


def conv_unreshaped_gamma(x, gamma, beta, eps):
    mu = x.mean((0, 2, 3), keepdims=True)
    x_hat = (x - mu) / np.sqrt(x.var((0, 2, 3), keepdims=True) + eps)
    return gamma * x_hat + beta


def conv_unbiased(x, gamma, beta, eps):
    mu = x.mean((0, 2, 3), keepdims=True)
    x_hat = (x - mu) / np.sqrt(x.var((0, 2, 3), ddof=1, keepdims=True) + eps)
    return gamma.reshape(1, -1, 1, 1) * x_hat + beta.reshape(1, -1, 1, 1)


def conv_eps_outside(x, gamma, beta, eps):
    mu = x.mean((0, 2, 3), keepdims=True)
    x_hat = (x - mu) / (x.std((0, 2, 3), keepdims=True) + eps)
    return gamma.reshape(1, -1, 1, 1) * x_hat + beta.reshape(1, -1, 1, 1)


def st_no_dmu_direct(dy, x, gamma, eps):
    return staged(dy, x, gamma, eps, dmu_direct=False)


def st_no_mu_path(dy, x, gamma, eps):
    return staged(dy, x, gamma, eps, mu_path=False)


def st_no_var_path(dy, x, gamma, eps):
    return staged(dy, x, gamma, eps, var_path=False)


def st_constant_stats(dy, x, gamma, eps):
    return staged(dy, x, gamma, eps, var_path=False, mu_path=False)


def st_no_gamma(dy, x, gamma, eps):
    return staged(dy, x, gamma, eps, with_gamma=False)


def st_unbiased(dy, x, gamma, eps):
    return staged(dy, x, gamma, eps, ddof=1)


def st_eps_outside(dy, x, gamma, eps):
    return staged(dy, x, gamma, eps, eps_inside=False)


def _replace(nodes, **new):
    nodes.update(new)
    return nodes


def st_dgamma_not_summed(dy, x, gamma, eps):
    x_hat = (x - x.mean(0)) / np.sqrt(x.var(0) + eps)
    return _replace(staged(dy, x, gamma, eps), dgamma=dy * x_hat)


def st_dbeta_not_summed(dy, x, gamma, eps):
    return _replace(staged(dy, x, gamma, eps), dbeta=dy)


def st_averaged(dy, x, gamma, eps):
    return _replace(staged(dy, x, gamma, eps), dbeta=dy.mean(0))


def st_dgamma_uses_x(dy, x, gamma, eps):
    return _replace(staged(dy, x, gamma, eps), dgamma=(dy * x).sum(0))


def _final(nodes):
    return nodes["dx"], nodes["dgamma"], nodes["dbeta"]


def cp_sums(dy, x, gamma, eps):
    return compact(dy, x, gamma, eps, means=False)


def cp_no_gamma(dy, x, gamma, eps):
    dx, dgamma, dbeta = compact(dy, x, gamma, eps)
    return dx / gamma, dgamma, dbeta


def cp_dgamma_not_summed(dy, x, gamma, eps):
    dx, _, dbeta = compact(dy, x, gamma, eps)
    return dx, dy * (x - x.mean(0)) / np.sqrt(x.var(0) + eps), dbeta


def cp_dbeta_not_summed(dy, x, gamma, eps):
    dx, dgamma, _ = compact(dy, x, gamma, eps)
    return dx, dgamma, dy


def cp_averaged(dy, x, gamma, eps):
    dx, dgamma, dbeta = compact(dy, x, gamma, eps)
    return dx, dgamma / len(x), dbeta / len(x)


def cp_no_mu_path(dy, x, gamma, eps):
    return _final(staged(dy, x, gamma, eps, mu_path=False))


def cp_constant_stats(dy, x, gamma, eps):
    x_hat = (x - x.mean(0)) / np.sqrt(x.var(0) + eps)
    return gamma * dy / np.sqrt(x.var(0) + eps), (dy * x_hat).sum(0), dy.sum(0)


def cp_unbiased(dy, x, gamma, eps):
    return compact(dy, x, gamma, eps, ddof=1)


def cp_unbiased_autograd(dy, x, gamma, eps):
    """The exact gradient of a forward that normalizes with the unbiased variance."""
    xt, gt = torch.tensor(x, requires_grad=True), torch.tensor(gamma, requires_grad=True)
    bt = torch.zeros_like(gt, requires_grad=True)
    y = gt * (xt - xt.mean(0)) / torch.sqrt(xt.var(0, unbiased=True) + eps) + bt
    return [g.numpy() for g in torch.autograd.grad(y, (xt, gt, bt), torch.tensor(dy))]


def cp_eps_outside(dy, x, gamma, eps):
    return compact(dy, x, gamma, eps, eps_inside=False)


def rs_keras(x, running_mean, running_var, momentum):
    mean, var = x.mean(0), x.var(0, ddof=1)
    return (momentum * running_mean + (1 - momentum) * mean,
            momentum * running_var + (1 - momentum) * var)


def rs_biased(x, running_mean, running_var, momentum):
    return ((1 - momentum) * running_mean + momentum * x.mean(0),
            (1 - momentum) * running_var + momentum * x.var(0))


def rs_replaced(x, running_mean, running_var, momentum):
    return x.mean(0), x.var(0, ddof=1)


def rs_feature_axis(x, running_mean, running_var, momentum):
    return ((1 - momentum) * running_mean + momentum * x.mean(1),
            (1 - momentum) * running_var + momentum * x.var(1, ddof=1))


def ev_batch_stats(x, gamma, beta, running_mean, running_var, eps):
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + beta


def ev_eps_outside(x, gamma, beta, running_mean, running_var, eps):
    return gamma * (x - running_mean) / (np.sqrt(running_var) + eps) + beta


def ev_no_sqrt(x, gamma, beta, running_mean, running_var, eps):
    return gamma * (x - running_mean) / (running_var + eps) + beta


def ev_no_affine(x, gamma, beta, running_mean, running_var, eps):
    return (x - running_mean) / np.sqrt(running_var + eps)


def fd_columns(W, b, gamma, beta, running_mean, running_var, eps):
    s = gamma / np.sqrt(running_var + eps)
    return W * s, s * (b - running_mean) + beta


def fd_bias_dropped(W, b, gamma, beta, running_mean, running_var, eps):
    s = gamma / np.sqrt(running_var + eps)
    return s[:, None] * W, beta - s * running_mean


def fd_bias_unscaled(W, b, gamma, beta, running_mean, running_var, eps):
    s = gamma / np.sqrt(running_var + eps)
    return s[:, None] * W, b - s * running_mean + beta


def fd_eps_outside(W, b, gamma, beta, running_mean, running_var, eps):
    s = gamma / (np.sqrt(running_var) + eps)
    return s[:, None] * W, s * (b - running_mean) + beta


def ln_batch_axis(x, gamma, beta, eps):
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + beta


def ln_unbiased(x, gamma, beta, eps):
    mu, var = x.mean(1, keepdims=True), x.var(1, ddof=1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def ln_eps_outside(x, gamma, beta, eps):
    mu, std = x.mean(1, keepdims=True), x.std(1, keepdims=True)
    return gamma * (x - mu) / (std + eps) + beta


def ln_one_pass(x, gamma, beta, eps):
    mu = x.mean(1, keepdims=True)
    var = (x**2).mean(1, keepdims=True) - mu**2
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def _gn_affine(x_hat, gamma, beta):
    return gamma.reshape(1, -1, 1, 1) * x_hat + beta.reshape(1, -1, 1, 1)


def gn_interleaved(x, gamma, beta, num_groups, eps):
    n, c, h, w = x.shape
    g = x.reshape(n, c // num_groups, num_groups, h * w)
    mu, var = g.mean((1, 3), keepdims=True), g.var((1, 3), keepdims=True)
    return _gn_affine(((g - mu) / np.sqrt(var + eps)).reshape(x.shape), gamma, beta)


def gn_instance(x, gamma, beta, num_groups, eps):
    mu, var = x.mean((2, 3), keepdims=True), x.var((2, 3), keepdims=True)
    return _gn_affine((x - mu) / np.sqrt(var + eps), gamma, beta)


def gn_layer(x, gamma, beta, num_groups, eps):
    mu, var = x.mean((1, 2, 3), keepdims=True), x.var((1, 2, 3), keepdims=True)
    return _gn_affine((x - mu) / np.sqrt(var + eps), gamma, beta)


def gn_batch(x, gamma, beta, num_groups, eps):
    mu, var = x.mean((0, 2, 3), keepdims=True), x.var((0, 2, 3), keepdims=True)
    return _gn_affine((x - mu) / np.sqrt(var + eps), gamma, beta)


def gn_unbiased(x, gamma, beta, num_groups, eps):
    g = x.reshape(x.shape[0], num_groups, -1)
    x_hat = (g - g.mean(2, keepdims=True)) / np.sqrt(g.var(2, ddof=1, keepdims=True) + eps)
    return _gn_affine(x_hat.reshape(x.shape), gamma, beta)


def gn_eps_outside(x, gamma, beta, num_groups, eps):
    g = x.reshape(x.shape[0], num_groups, -1)
    x_hat = (g - g.mean(2, keepdims=True)) / (g.std(2, keepdims=True) + eps)
    return _gn_affine(x_hat.reshape(x.shape), gamma, beta)


def gn_unreshaped(x, gamma, beta, num_groups, eps):
    g = x.reshape(x.shape[0], num_groups, -1)
    x_hat = (g - g.mean(2, keepdims=True)) / np.sqrt(g.var(2, keepdims=True) + eps)
    return gamma * x_hat.reshape(x.shape) + beta


# --- The table: checker, right answer, mistakes ----------------------------------------

CHECKERS = {
    "batchnorm_forward": (check.batchnorm_forward, forward, {
        fw_unbiased: "unbiased_variance", fw_eps_outside: "eps_outside_sqrt",
        fw_eps_missing: "eps_missing", fw_no_sqrt: "no_sqrt",
        fw_feature_axis: "feature_axis", fw_feature_axis_no_keepdims: "feature_axis",
        fw_no_affine: "affine_missing", fw_swapped: "gamma_beta_swapped",
        fw_one_pass: "one_pass_variance"}),
    "batchnorm_forward_conv": (check.batchnorm_forward_conv, conv_forward, {
        conv_batch_only: "batch_only_axis", conv_per_example: "per_example_axis",
        conv_reshape: "reshape_without_transpose",
        conv_unreshaped_gamma: "broadcast_last_axis", conv_unbiased: "unbiased_variance",
        conv_eps_outside: "eps_outside_sqrt"}),
    "batchnorm_backward_staged": (check.batchnorm_backward_staged, staged_ok, {
        st_no_dmu_direct: "missing_dmu_term", st_no_mu_path: "missing_dmu_term",
        st_no_var_path: "missing_dvar_term", st_constant_stats: "statistics_constant",
        st_no_gamma: "missing_gamma", st_unbiased: "unbiased_variance",
        st_eps_outside: "eps_outside_sqrt", st_dgamma_not_summed: "dgamma_not_summed",
        st_dbeta_not_summed: "dbeta_not_summed", st_averaged: "averaged_not_summed",
        st_dgamma_uses_x: "dgamma_uses_x"}),
    "batchnorm_backward": (check.batchnorm_backward, compact_ok, {
        cp_sums: "sums_for_means", cp_no_gamma: "missing_gamma",
        cp_dgamma_not_summed: "dgamma_not_summed", cp_dbeta_not_summed: "dbeta_not_summed",
        cp_averaged: "averaged_not_summed", cp_no_mu_path: "missing_dmu_term",
        cp_constant_stats: "statistics_constant", cp_unbiased: "unbiased_variance",
        cp_unbiased_autograd: "unbiased_variance", cp_eps_outside: "eps_outside_sqrt"}),
    "running_stats_update": (check.running_stats_update, running, {
        rs_keras: "keras_momentum", rs_biased: "biased_running_var",
        rs_replaced: "running_replaced", rs_feature_axis: "feature_axis"}),
    "batchnorm_eval": (check.batchnorm_eval, eval_bn, {
        ev_batch_stats: "batch_statistics_in_eval", ev_eps_outside: "eps_outside_sqrt",
        ev_no_sqrt: "no_sqrt", ev_no_affine: "affine_missing"}),
    "fold_linear": (check.fold_linear, fold, {
        fd_columns: "fold_scaled_columns", fd_bias_dropped: "fold_bias_dropped",
        fd_bias_unscaled: "fold_bias_unscaled", fd_eps_outside: "eps_outside_sqrt"}),
    "layer_norm": (check.layer_norm, layer_norm, {
        ln_batch_axis: "batch_axis", ln_unbiased: "unbiased_variance",
        ln_eps_outside: "eps_outside_sqrt", ln_one_pass: "one_pass_variance"}),
    "group_norm": (check.group_norm, group_norm, {
        gn_interleaved: "interleaved_groups", gn_instance: "instance_norm",
        gn_layer: "layer_norm", gn_batch: "batch_axis", gn_unbiased: "unbiased_variance",
        gn_eps_outside: "eps_outside_sqrt", gn_unreshaped: "broadcast_last_axis"}),
}

MISTAKE_CASES = [(name, fn, key) for name, (_, _, mistakes) in CHECKERS.items()
                 for fn, key in mistakes.items()]


def _flat(out):
    """A printed verdict without its line breaks."""
    return out.replace("\n  ", " ").replace("\n", " ")


def _checker(name):
    return CHECKERS[name][0]


@pytest.mark.parametrize("name", CHECKERS)
def test_passes_the_right_answer(name, capsys):
    checker, right, _ = CHECKERS[name]
    result = checker(right)
    out = capsys.readouterr().out
    assert result.passed and bool(result), out
    assert result.status == "passed" and result.diagnosis is None
    assert out.startswith(f"{name}: passed") and out == result.message + "\n"


@pytest.mark.parametrize("name, mistake, key", MISTAKE_CASES,
                         ids=[f"{n}-{f.__name__}" for n, f, _ in MISTAKE_CASES])
def test_names_each_known_mistake(name, mistake, key, capsys):
    result = _checker(name)(mistake)
    out = capsys.readouterr().out
    assert not result.passed and result.diagnosis == key, out
    assert "FAILED" in out and check.MISTAKES[key][:40] in _flat(out)
    assert result.case is not None


def test_every_mistake_is_tested():
    """Each diagnosis a checker can give is exercised by a mistake above, and each key
    used is documented in MISTAKES."""
    tested = {key for *_, key in MISTAKE_CASES} | set(MODULE_MISTAKES.values())
    assert tested == set(check.MISTAKES)


def _wrong_values(name):
    """Right shapes, wrong values: the right answer with a shifted first output."""
    right = CHECKERS[name][1]

    def wrong(*args):
        out = right(*args)
        if isinstance(out, dict):
            out = dict(out)
            out["dx"] = out["dx"] + 0.01 * np.sin(np.arange(out["dx"].size)).reshape(
                out["dx"].shape)
            return out
        if isinstance(out, tuple):
            return (np.tanh(out[0]), *out[1:])
        return np.tanh(out)

    return wrong


@pytest.mark.parametrize("name", CHECKERS)
def test_fails_wrong_values_without_a_diagnosis(name, capsys):
    result = _checker(name)(_wrong_values(name))
    out = capsys.readouterr().out
    assert not result.passed and result.status == "wrong" and result.diagnosis is None
    assert result.error is not None and result.error > 0
    assert f"off by up to {result.error:.3g}" in _flat(out)
    assert "Likely mistake" not in out


@pytest.mark.parametrize("name", CHECKERS)
def test_a_function_that_raises_is_a_failed_check(name, capsys):
    def broken(*args):
        return args[0].no_such_attribute

    result = _checker(name)(broken)
    out = capsys.readouterr().out
    assert not result.passed and result.status == "raised"
    assert isinstance(result.exception, AttributeError)
    assert "AttributeError" in out and "no_such_attribute" in out


@pytest.mark.parametrize("name", CHECKERS)
def test_a_stub_is_not_implemented_yet(name, capsys):
    def stub(*args):
        """Your code here."""
        raise NotImplementedError("fill in the body")

    result = _checker(name)(stub)
    out = capsys.readouterr().out
    assert not result.passed and result.status == "not implemented"
    assert result.diagnosis is None
    assert out.startswith(f"{name}: not implemented yet") and "stub" in out


@pytest.mark.parametrize("name", CHECKERS)
@pytest.mark.parametrize("returned", [None, "text", (1, 2, 3, 4, 5, 6, 7)])
def test_a_wrong_return_value_is_a_failed_check(name, returned, capsys):
    result = _checker(name)(lambda *args: returned)
    out = _flat(capsys.readouterr().out)
    assert not result.passed and result.status == "wrong"
    assert "returned the wrong thing" in out or "has shape (7,)" in out


@pytest.mark.parametrize("name", CHECKERS)
def test_verdict_lines_fit_the_page(name, capsys):
    for fn in (CHECKERS[name][1], _wrong_values(name),
               *list(CHECKERS[name][2])[:3]):
        _checker(name)(fn)
    lines = capsys.readouterr().out.splitlines()
    assert check.WIDTH == 71  # a solution dropdown's code column
    assert lines and max(len(line) for line in lines) <= check.WIDTH


def test_in_place_changes_do_not_fool_the_checker():
    """The reader's function gets copies: overwriting x in place still checks the answer."""
    def in_place(x, gamma, beta, eps):
        x -= x.mean(0)
        x /= np.sqrt(x.var(0) + eps)
        return gamma * x + beta

    assert check.batchnorm_forward(in_place).passed


def test_the_checkers_leave_the_global_random_state_alone():
    """A notebook's later random draws do not depend on whether it ran a checker."""
    torch.manual_seed(0)
    np.random.seed(0)
    expected = torch.rand(3), np.random.rand(3)
    torch.manual_seed(0)
    np.random.seed(0)
    for checker, right, _ in CHECKERS.values():
        checker(right)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])


def test_not_a_function_is_an_error():
    with pytest.raises(TypeError, match="expects your function"):
        check.batchnorm_forward(np.zeros(3))


def test_shape_mismatch_is_reported(capsys):
    def per_example(x, gamma, beta, eps):
        return forward(x, gamma, beta, eps).mean(1)

    result = check.batchnorm_forward(per_example)
    assert result.output == "y" and result.error is None
    assert "has shape" in _flat(capsys.readouterr().out)


def test_nan_is_reported(capsys):
    def nan_for_constant_features(x, gamma, beta, eps):
        y = forward(x, gamma, beta, eps)
        return np.where(x.std(0) == 0, np.nan, y)

    result = check.batchnorm_forward(nan_for_constant_features)
    out = _flat(capsys.readouterr().out)
    assert result.case.startswith("epsilon matters") and result.diagnosis is None
    assert "y has 16 NaN or infinite values (of 64)" in out


def test_one_pass_variance_fails_only_the_float32_case():
    result = check.batchnorm_forward(fw_one_pass)
    assert "float32" in result.case


def test_staged_names_the_first_wrong_node(capsys):
    result = check.batchnorm_backward_staged(st_no_dmu_direct)
    assert result.output == "dmu"
    result = check.batchnorm_backward_staged(st_no_gamma)
    assert result.output == "dx_hat"
    result = check.batchnorm_backward_staged(lambda *a: {"dx": 0})
    assert "lacks dx_hat" in capsys.readouterr().out


def _scaled(name, factor, dtype=np.float64):
    """The right answer with every output multiplied by ``factor`` and cast to ``dtype``."""
    right = CHECKERS[name][1]

    def answer(*args):
        out = right(*args)
        if isinstance(out, dict):
            return {k: (v * factor).astype(dtype) for k, v in out.items()}
        if isinstance(out, (tuple, list)):
            return tuple((np.asarray(v) * factor).astype(dtype) for v in out)
        return (out * factor).astype(dtype)

    return answer


@pytest.mark.parametrize("name", CHECKERS)
def test_tolerance_fails_a_near_miss_and_passes_float32_rounding(name):
    """An answer 1e-4 off (relative) fails; the right answer rounded to float32 passes."""
    assert not _checker(name)(_scaled(name, 1 + 1e-4)).passed
    assert _checker(name)(_scaled(name, 1.0, np.float32)).passed


# --- The module checker (chapter 4): classes, as a reader would write them ------------


class ReaderBN(torch.nn.Module):
    """A BN layer for (N, D), PyTorch's conventions; the class attributes switch in one
    mistake each in the subclasses below."""

    keras = biased_running = replace = eval_batch = unbiased = False
    update = True

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        if self.training or self.eval_batch:
            mean = x.mean(0)
            var = x.var(0, correction=1 if self.unbiased else 0)
        if self.training and self.update:
            with torch.no_grad():
                batch_var = x.var(0, correction=0 if self.biased_running else 1)
                w = self.momentum
                if self.keras:
                    w = 1 - w
                if self.replace:
                    w = 1.0
                self.running_mean.mul_(1 - w).add_(w * x.mean(0))
                self.running_var.mul_(1 - w).add_(w * batch_var * 1.0)
        if not self.training and not self.eval_batch:
            mean, var = self.running_mean, self.running_var
        return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias


class KerasBN(ReaderBN):
    keras = True


class BiasedRunningBN(ReaderBN):
    biased_running = True


class ReplacedBN(ReaderBN):
    replace = True


class FrozenStatsBN(ReaderBN):
    update = False


class BatchStatsInEvalBN(ReaderBN):
    eval_batch = True


class UnbiasedBN(ReaderBN):
    unbiased = True


MODULE_MISTAKES = {KerasBN: "keras_momentum", BiasedRunningBN: "biased_running_var",
                   ReplacedBN: "running_replaced", FrozenStatsBN: "running_not_updated",
                   BatchStatsInEvalBN: "batch_statistics_in_eval",
                   UnbiasedBN: "unbiased_variance"}


def test_module_checker_passes_a_right_class_and_torchs(capsys):
    for cls in (ReaderBN, torch.nn.BatchNorm1d):
        result = check.batchnorm_module(cls)
        out = capsys.readouterr().out
        assert result.passed, out
        assert out.startswith("batchnorm_module: passed")


@pytest.mark.parametrize("cls, key", MODULE_MISTAKES.items(),
                         ids=[c.__name__ for c in MODULE_MISTAKES])
def test_module_checker_names_each_known_mistake(cls, key, capsys):
    result = check.batchnorm_module(cls)
    out = capsys.readouterr().out
    assert not result.passed and result.diagnosis == key, out
    assert check.MISTAKES[key][:40] in _flat(out)
    assert max(len(line) for line in out.splitlines()) <= check.WIDTH


def test_module_checker_stub_wrong_names_and_not_a_class(capsys):
    class Stub(ReaderBN):
        def forward(self, x):
            raise NotImplementedError("your code here")

    class OwnNames(torch.nn.Module):
        def __init__(self, num_features, eps=1e-5, momentum=0.1):
            super().__init__()
            self.gamma = torch.nn.Parameter(torch.ones(num_features))

    assert check.batchnorm_module(Stub).status == "not implemented"
    assert "batchnorm_module: not implemented yet" in capsys.readouterr().out
    result = check.batchnorm_module(OwnNames)
    assert result.status == "raised" and "no tensor 'weight'" in capsys.readouterr().out
    with pytest.raises(TypeError, match="expects your class"):
        check.batchnorm_module(ReaderBN(3))
