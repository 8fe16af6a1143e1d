"""Checkers for the "Your turn" exercises: run the reader's function, say what is wrong.

Each checker takes the reader's NumPy function, runs it on several cases (small and
large batches, a feature mean of 1e4 in float32, an epsilon that matters, gamma != 1,
beta != 0, both layouts where they apply) against the reference implementations of
``bnutils`` (``bn``, ``layers``, ``norms``), prints a short verdict and returns a
``Result``. When an output is wrong, the checker computes the answers that known
mistakes give on the same cases (``MISTAKES``); if the reader's answers agree with one
of them on every case, the verdict names it. A wrong answer, a function that raises
and a stub that raises ``NotImplementedError`` are all failed checks, never errors.

The checkers, with the chapter whose exercise uses each:

- ``batchnorm_forward(fn)``, ``fn(x, gamma, beta, eps) -> y``, ``x: (N, D)`` (ch. 2)
- ``batchnorm_forward_conv(fn)``, the same with ``x: (N, C, H, W)`` (ch. 6)
- ``batchnorm_backward_staged(fn)``, ``fn(dy, x, gamma, eps) -> dict`` of the graph's
  nodes ``dx_hat, dvar, dmu, dx, dgamma, dbeta`` (ch. 3)
- ``batchnorm_backward(fn)``, ``fn(dy, x, gamma, eps) -> (dx, dgamma, dbeta)`` (ch. 3)
- ``running_stats_update(fn)``, ``fn(x, running_mean, running_var, momentum) ->
  (running_mean, running_var)``, PyTorch's convention (ch. 4)
- ``batchnorm_eval(fn)``, ``fn(x, gamma, beta, running_mean, running_var, eps) -> y`` (ch. 4)
- ``batchnorm_module(cls)``, a module class ``cls(num_features, eps, momentum)`` for
  ``x: (N, D)`` with training and eval modes, compared with ``layers.BatchNorm1d`` (ch. 4)
- ``fold_linear(fn)``, ``fn(W, b, gamma, beta, running_mean, running_var, eps) ->
  (W_folded, b_folded)`` with ``W: (D_out, D_in)`` as in ``nn.Linear`` (ch. 4)
- ``layer_norm(fn)``, ``fn(x, gamma, beta, eps) -> y``, ``x: (N, D)`` (ch. 9)
- ``group_norm(fn)``, ``fn(x, gamma, beta, num_groups, eps) -> y``,
  ``x: (N, C, H, W)`` (ch. 9)
"""

import contextlib
import textwrap
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import bn, layers, norms

WIDTH = 71  # the code column of a solution dropdown, where the checked answer runs

# The mistakes a checker recognises: key -> what the verdict says.
MISTAKES = {
    "unbiased_variance": "the unbiased variance (dividing by m - 1) normalizes x; "
    "BN (Algorithm 1) and its relatives divide by m (np.var's default, ddof=0).",
    "eps_outside_sqrt": "epsilon is added outside the square root, "
    "(x - mu) / (sqrt(var) + eps); it belongs inside: sqrt(var + eps).",
    "eps_missing": "epsilon is missing: (x - mu) / sqrt(var) divides 0 by 0 for a "
    "constant feature; use sqrt(var + eps).",
    "no_sqrt": "x - mu is divided by the variance instead of the standard deviation "
    "sqrt(var + eps).",
    "feature_axis": "the statistics are taken over the features (axis 1), once per "
    "example; BN takes them over the batch (axis 0), once per feature.",
    "batch_only_axis": "the statistics are taken over N only, one per channel and "
    "position; for images BN takes them over N, H and W (axis=(0, 2, 3)), one per "
    "channel.",
    "per_example_axis": "the statistics are taken per example (over H, W or C, H, W); "
    "BN takes them over the batch and all positions, axis=(0, 2, 3).",
    "reshape_without_transpose": "x.reshape(-1, C) mixes the channels: move the "
    "channel axis last first (x.transpose(0, 2, 3, 1)), or reduce over axis=(0, 2, 3).",
    "broadcast_last_axis": "a per-channel vector of shape (C,) broadcasts against the "
    "last axis (W), not the channels: reshape it to (1, C, 1, 1) or use keepdims=True.",
    "affine_missing": "gamma and beta are not applied: y = gamma * x_hat + beta.",
    "gamma_beta_swapped": "gamma and beta are swapped: y = gamma * x_hat + beta.",
    "one_pass_variance": "the variance loses its digits when the mean (1e4 here, in "
    "float32) is large next to the spread, as E[x^2] - E[x]^2 does: subtract the mean "
    "first, then average the squared deviations.",
    "statistics_constant": "mu_B and sigma_B^2 are treated as constants: dl/dx lacks "
    "the paths through the batch statistics (section 2 of the paper).",
    "missing_dmu_term": "a term of dl/dmu_B is missing: its direct term "
    "sum_i dl/dx_hat_i * (-1 / sqrt(var + eps)), which reaches dl/dx as dl/dmu_B / m.",
    "missing_dvar_term": "the path through sigma_B^2 is missing from dl/dx: add "
    "dl/dvar * 2 (x - mu_B) / m.",
    "missing_gamma": "dl/dx_hat = dl/dy * gamma: the factor gamma is missing.",
    "sums_for_means": "a factor 1/m is missing: the compact form subtracts the means "
    "of dy and dy * x_hat (dbeta / m and dgamma / m), not their sums.",
    "dgamma_not_summed": "dgamma is not summed over the batch: gamma is shared by all "
    "examples, so dgamma = (dy * x_hat).sum(axis=0), of shape (D,).",
    "dbeta_not_summed": "dbeta is not summed over the batch: beta is shared by all "
    "examples, so dbeta = dy.sum(axis=0), of shape (D,).",
    "averaged_not_summed": "dgamma or dbeta is a mean over the batch; the gradient of "
    "a shared parameter is the sum of the examples' contributions.",
    "dgamma_uses_x": "dgamma uses x instead of x_hat: dgamma = sum(dy * x_hat).",
    "keras_momentum": "momentum is used the Keras way round, momentum * old + "
    "(1 - momentum) * batch; PyTorch's momentum weighs the new batch: "
    "(1 - momentum) * old + momentum * batch.",
    "biased_running_var": "the biased variance is stored in running_var; PyTorch "
    "stores the unbiased one, m / (m - 1) * sigma_B^2, as Algorithm 2 prescribes.",
    "running_replaced": "the running statistics are replaced by the batch's instead "
    "of averaged: (1 - momentum) * old + momentum * batch.",
    "batch_statistics_in_eval": "the batch's own statistics are used in eval mode; "
    "eval mode normalizes with running_mean and running_var.",
    "running_not_updated": "running_mean and running_var are never updated: in "
    "training mode, after normalizing, move them towards the batch's statistics "
    "(under torch.no_grad(), since they are not learned).",
    "fold_scaled_columns": "the columns of W are scaled (W * s); each output unit's "
    "row must be scaled: s[:, None] * W.",
    "fold_bias_dropped": "the layer's own bias b is dropped: "
    "b' = s * (b - running_mean) + beta.",
    "fold_bias_unscaled": "the layer's bias b is not scaled by s: "
    "b' = s * (b - running_mean) + beta.",
    "batch_axis": "the statistics are taken over the batch (axis 0), as in BN; "
    "Layer Norm and Group Norm take them per example.",
    "interleaved_groups": "the groups are interleaved: reshape to (N, G, C // G, H, W), "
    "so that a group is C // G consecutive channels.",
    "instance_norm": "one mean and variance per channel (Instance Norm): the C // G "
    "channels of a group share them.",
    "layer_norm": "one mean and variance per example over all channels (Layer Norm, "
    "G = 1): each of the G groups has its own.",
}


@dataclass
class Result:
    """What a checker found. ``passed``: every case right. ``diagnosis``: the key of the
    recognised mistake in ``MISTAKES`` or ``None``. ``status``: ``"passed"``,
    ``"not implemented"``, ``"raised"`` or ``"wrong"``. ``case``, ``output``, ``error``:
    the first failing case, the output that is wrong there and its largest absolute
    error (``None`` when it raised or had the wrong shape). ``exception``: what the
    function raised, if it did. ``message``: the printed verdict."""

    check: str
    passed: bool
    status: str
    diagnosis: str | None = None
    case: str | None = None
    output: str | None = None
    error: float | None = None
    exception: BaseException | None = field(default=None, repr=False)
    message: str = field(default="", repr=False)

    def __bool__(self):
        return self.passed

    def __str__(self):
        return self.message


@dataclass
class _Case:
    name: str
    args: tuple
    rtol: float = 1e-5
    precision: bool = False  # passes only with a variance that survives a large mean


class _BadReturn(Exception):
    """The function returned something that is not the expected outputs."""


# --- Running the reader's function and comparing ------------------------------------


def _copy(args):
    return tuple(np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args)


def _as_array(value, name):
    if value is None:
        raise _BadReturn(f"{name} is None (a missing return?)")
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise _BadReturn(f"{name} is not an array of numbers ({type(value).__name__}: "
                         f"{err})") from None


def _unpack(value, outputs):
    """The function's return value as ``{output name: float64 array}``."""
    if isinstance(outputs, dict):  # named nodes, returned as a dict
        if not isinstance(value, Mapping):
            raise _BadReturn(f"expected a dict with keys {', '.join(outputs)}; got "
                             f"{type(value).__name__}")
        missing = [k for k in outputs if k not in value]
        if missing:
            raise _BadReturn(f"the dict lacks {', '.join(missing)}")
        return {k: _as_array(value[k], k) for k in outputs}
    if len(outputs) == 1:
        return {outputs[0]: _as_array(value, outputs[0])}
    if not isinstance(value, (tuple, list)) or len(value) != len(outputs):
        got = (f"{len(value)} values" if isinstance(value, (tuple, list))
               else type(value).__name__)
        raise _BadReturn(f"expected a tuple ({', '.join(outputs)}); got {got}")
    return {k: _as_array(v, k) for k, v in zip(outputs, value, strict=True)}


def _quiet():
    """NumPy's warnings (division by zero, ddof >= m) are the verdict's business."""
    stack = contextlib.ExitStack()
    stack.enter_context(np.errstate(all="ignore"))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore", RuntimeWarning)
    return stack


def _call(fn, case, outputs):
    """``("ok", outputs)``, ``("raised", exception)`` or ``("bad", message)``."""
    try:
        with _quiet():
            value = fn(*_copy(case.args))
    except Exception as err:  # the reader's code: any failure is a failed check
        return "raised", err
    try:
        return "ok", _unpack(value, outputs)
    except _BadReturn as err:
        return "bad", str(err)


def _error(got, want):
    """Largest absolute error, or ``None`` when the shapes differ."""
    if got.shape != want.shape:
        return None
    with np.errstate(invalid="ignore"):
        diff = np.abs(got - want)
    same_nan = np.isnan(got) & np.isnan(want)
    diff = np.where(same_nan, 0.0, diff)
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))


def _close(got, want, rtol):
    err = _error(got, want)
    if err is None:
        return False
    scale = float(np.nan_to_num(np.abs(want), nan=0.0, posinf=0.0).max(initial=0.0))
    return err <= 1e-9 + rtol * max(scale, 1e-3)


def _same(a, b, case):
    """Two answers of one case agree: both raised, or every compared output is close."""
    if a[0] != b[0]:
        return False
    if a[0] == "raised":
        return True
    if a[0] != "ok":
        return False
    return all(b[1][k] is None or a[1][k] is None or _close(a[1][k], b[1][k], case.rtol)
               for k in a[1])


def _variant(fn, case, outputs):
    """A mistake's answer; an output it leaves ``None`` is not compared."""
    try:
        with _quiet():
            value = fn(*_copy(case.args))
    except Exception as err:
        return "raised", err
    names = list(outputs)
    if not isinstance(value, (tuple, list, Mapping)) or len(names) == 1:
        value = (value,)
    if isinstance(value, Mapping):
        value = [value.get(k) for k in names]
    return "ok", {k: None if v is None else np.asarray(v, dtype=np.float64)
                  for k, v in zip(names, value, strict=True)}


def _diagnose(answers, cases, reference, mistakes, outputs):
    """The first mistake whose answers agree with the reader's on every case."""
    for key, variants in mistakes:
        for variant in variants:
            theirs = [_variant(variant, c, outputs) for c in cases]
            if all(_same(a, t, c) for a, t, c in zip(answers, theirs, cases, strict=True)) \
                    and not all(_same(r, t, c) for r, t, c in
                                zip(reference, theirs, cases, strict=True)):
                return key
    failing = [(a, c) for a, r, c in zip(answers, reference, cases, strict=True)
               if not _same(a, r, c)]
    if failing and all(c.precision and a[0] == "ok" for a, c in failing):
        return "one_pass_variance"
    return None


def _where(err):
    """The reader's line that raised: the innermost frame outside this module and the
    installed libraries (NumPy raises some errors from its own Python code)."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)[1:]
              if f.filename != __file__ and "site-packages" not in f.filename and f.line]
    return f" at `{frames[-1].line.strip()}`" if frames else ""


def _say(text):
    return textwrap.fill(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False)


def _run(name, fn, cases, reference, mistakes, outputs):
    """Run ``fn`` on every case, compare with ``reference``, print and return the verdict."""
    if not callable(fn):
        raise TypeError(f"check.{name} expects your function, got {type(fn).__name__}")
    label = getattr(fn, "__name__", "your function")
    answers = [_call(fn, c, outputs) for c in cases]
    expected = [_variant(reference, c, outputs) for c in cases]
    for (state, value), case in zip(answers, cases, strict=True):
        if state == "raised" and isinstance(value, NotImplementedError):
            text = _say(f"{name}: not implemented yet. Fill in the body of {label} "
                        f"(it raised NotImplementedError) and run this cell again.")
            print(text)
            return Result(name, False, "not implemented", case=case.name,
                          exception=value, message=text)
    failed = next(((a, e, c) for a, e, c in zip(answers, expected, cases, strict=True)
                   if not _same(a, e, c)), None)
    if failed is None:
        text = _say(f"{name}: passed, all {len(cases)} cases right "
                    f"({'; '.join(c.name for c in cases)}).")
        print(text)
        return Result(name, True, "passed", message=text)
    (state, value), (_, want), case = failed
    what = "its answer differs"
    diagnosis = _diagnose(answers, cases, expected, mistakes, outputs)
    result = Result(name, False, "wrong", diagnosis=diagnosis, case=case.name)
    if state == "raised":
        result.status, result.exception = "raised", value
        what = f"{label} raised {type(value).__name__}: {str(value).strip()}{_where(value)}"
    elif state == "bad":
        what = f"{label} returned the wrong thing: {value}"
    else:
        for k in outputs:
            got = value[k]
            if _close(got, want[k], case.rtol):
                continue
            result.output = k
            err = _error(got, want[k])
            # a node of the graph: say which gradient it is
            name_k = f"{k} ({outputs[k]})" if isinstance(outputs, dict) else k
            if err is None:
                what = f"{name_k} has shape {got.shape}, expected {want[k].shape}"
            elif not np.isfinite(got).all():
                result.error = err
                what = (f"{name_k} has {(~np.isfinite(got)).sum()} NaN or infinite values "
                        f"(of {got.size}) where the right ones are finite")
            else:
                result.error = err
                what = (f"{name_k} is off by up to {err:.3g} (the right values reach "
                        f"{np.abs(want[k]).max():.3g})")
            break
    text = f"{name}: FAILED on the case {case.name}: {what}."
    if diagnosis is not None:
        text += f"\n  Likely mistake: {MISTAKES[diagnosis]}"
    result.message = "\n".join(_say(line) for line in text.split("\n"))
    print(result.message)
    return result


# --- Reference pieces and mistaken variants ----------------------------------------


def _t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _normalize(x, axes, eps, ddof=0, how="inside"):
    """(x - mean) / spread over ``axes`` (kept), with a choice of (mistaken) spreads."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, ddof=ddof, keepdims=True)
    spread = {"inside": lambda: np.sqrt(var + eps), "outside": lambda: np.sqrt(var) + eps,
              "missing": lambda: np.sqrt(var), "no_sqrt": lambda: var + eps}[how]()
    return (x - mean) / spread


def _per_channel(v, x):
    return np.asarray(v, dtype=np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))


def _affine(x_hat, gamma, beta):
    return _per_channel(gamma, x_hat) * x_hat + _per_channel(beta, x_hat)


def _stat_axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _norm_variants(axes_of, affine=_affine):
    """The mistakes of a normalizing forward ``(x, gamma, beta, eps) -> y`` whose
    statistics are taken over ``axes_of(x)``: the spread, the affine part."""
    def spread(**kw):
        return lambda x, g, b, eps: affine(_normalize(x, axes_of(x), eps, **kw), g, b)

    return [
        ("unbiased_variance", [spread(ddof=1)]),
        ("eps_outside_sqrt", [spread(how="outside")]),
        ("eps_missing", [spread(how="missing")]),
        ("no_sqrt", [spread(how="no_sqrt")]),
        ("affine_missing", [lambda x, g, b, eps: _normalize(x, axes_of(x), eps)]),
        ("gamma_beta_swapped",
         [lambda x, g, b, eps: affine(_normalize(x, axes_of(x), eps), b, g)]),
    ]


def _bn_reference(x, gamma, beta, eps):
    return bn.batchnorm_forward(np.asarray(x, dtype=np.float64), gamma, beta, eps)[0]


def _unreshaped(x, gamma, beta, eps):
    """Per-channel vectors of shape (C,) used as they are: they align with W."""
    axes = (0, 2, 3)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    return gamma * ((x - mean) / np.sqrt(var + eps)) + beta


def _unreshaped_affine(x, gamma, beta, eps):
    return gamma * _normalize(x, (0, 2, 3), eps) + beta


def _flattened(x, gamma, beta, eps):
    n, c, h, w = x.shape
    return _bn_reference(x.reshape(-1, c), gamma, beta, eps).reshape(n, c, h, w)


# --- The cases -----------------------------------------------------------------------


def _rng(seed):
    return np.random.default_rng(seed)


def _params(rng, d, dtype=np.float64):
    gamma = rng.uniform(0.5, 2.0, d) * rng.choice([-1.0, 1.0], d)
    return gamma.astype(dtype), rng.normal(0.0, 1.0, d).astype(dtype)


def _features(rng, shape, dtype=np.float64):
    """Values with a non-zero mean and a scale that differs per feature (axis 1)."""
    scale_shape = (1, shape[1]) + (1,) * (len(shape) - 2)
    loc = rng.normal(0.0, 3.0, scale_shape)
    scale = rng.uniform(0.5, 3.0, scale_shape)
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def _with_tiny_spread(x):
    """The first feature nearly constant, the second constant: epsilon decides them."""
    x = x.copy()
    x[:, 0] = 1.0 + 1e-3 * (x[:, 0] - x[:, 0].mean()) / x[:, 0].std()
    x[:, 1] = 2.5
    return x


def _large_mean(rng, shape):
    """A mean of 1e4 and a spread of about 1, in float32."""
    return (1e4 + rng.standard_normal(shape)).astype(np.float32)


def _forward_cases(seed):
    rng = _rng(seed)
    cases = []
    for name, shape, eps in [("small batch, N=4, D=3", (4, 3), 1e-5),
                             ("large batch, N=512, D=10", (512, 10), 1e-5),
                             ("square, N=D=6", (6, 6), 1e-5),
                             ("batch of 2", (2, 5), 1e-5)]:
        cases.append(_Case(name, (_features(rng, shape), *_params(rng, shape[1]), eps)))
    x = _with_tiny_spread(_features(rng, (16, 4)))
    cases.append(_Case("epsilon matters (eps=0.1, a constant feature)",
                       (x, *_params(rng, 4), 0.1)))
    cases.append(_Case("mean 1e4 in float32, N=64", (_large_mean(rng, (64, 5)),
                       *_params(rng, 5, np.float32), 1e-5), rtol=1e-2, precision=True))
    return cases


def _conv_cases(seed):
    rng = _rng(seed)
    cases = []
    for name, shape in [("small, (2, 3, 2, 2)", (2, 3, 2, 2)),
                        ("(8, 4, 5, 5)", (8, 4, 5, 5)),
                        ("one image, (1, 3, 4, 4)", (1, 3, 4, 4)),
                        ("C = W, (4, 3, 3, 3)", (4, 3, 3, 3))]:
        cases.append(_Case(name, (_features(rng, shape), *_params(rng, shape[1]), 1e-5)))
    x = _features(rng, (4, 3, 3, 2))
    x[:, 0] = 1.0 + 1e-3 * rng.standard_normal((4, 3, 2))
    x[:, 1] = -2.0
    cases.append(_Case("epsilon matters (eps=0.1, a constant channel)",
                       (x, *_params(rng, 3), 0.1)))
    cases.append(_Case("mean 1e4 in float32, (16, 3, 4, 4)",
                       (_large_mean(rng, (16, 3, 4, 4)), *_params(rng, 3, np.float32),
                        1e-5), rtol=1e-2, precision=True))
    return cases


# --- Chapter 2: the forward transform --------------------------------------------------


def batchnorm_forward(fn):
    """Check ``fn(x, gamma, beta, eps) -> y``, BN's training-mode forward for ``x: (N, D)``.

    ``gamma, beta: (D,)``; ``y: (N, D)``. The cases: N from 2 to 512, a square batch,
    an epsilon that decides a (nearly) constant feature, and a mean of 1e4 in float32.
    Returns a ``Result``.
    """
    mistakes = [
        *_norm_variants(lambda x: (0,)),
        ("feature_axis", [
            lambda x, g, b, eps: _affine(_normalize(x, (1,), eps), g, b),
            lambda x, g, b, eps: g * (x - x.mean(1)) / np.sqrt(x.var(1) + eps) + b,
        ]),
    ]
    return _run("batchnorm_forward", fn, _forward_cases(2), _bn_reference, mistakes, ("y",))


# --- Chapter 6: the convolutional forward ------------------------------------------


def batchnorm_forward_conv(fn):
    """Check ``fn(x, gamma, beta, eps) -> y``, BN's training-mode forward for images.

    ``x: (N, C, H, W)``, statistics per channel over N, H and W; ``gamma, beta: (C,)``.
    The cases include a single image, C = W (where a wrongly broadcast vector gives
    wrong values rather than an error), an epsilon that matters and a mean of 1e4.
    Returns a ``Result``.
    """
    mistakes = [
        *_norm_variants(lambda x: (0, 2, 3)),
        ("batch_only_axis", [lambda x, g, b, eps: _affine(_normalize(x, (0,), eps), g, b)]),
        ("per_example_axis", [
            lambda x, g, b, eps: _affine(_normalize(x, (2, 3), eps), g, b),
            lambda x, g, b, eps: _affine(_normalize(x, (1, 2, 3), eps), g, b),
        ]),
        ("reshape_without_transpose", [_flattened]),
        ("broadcast_last_axis", [_unreshaped, _unreshaped_affine]),
    ]
    return _run("batchnorm_forward_conv", fn, _conv_cases(6), _bn_reference, mistakes,
                ("y",))


# --- Chapter 3: the backward pass ----------------------------------------------------

_NODES = {"dx_hat": "dl/dx_hat", "dvar": "dl/dsigma_B^2", "dmu": "dl/dmu_B",
          "dx": "dl/dx", "dgamma": "dl/dgamma", "dbeta": "dl/dbeta"}


def _staged(dy, x, gamma, eps, ddof=0, m_var=None, how="inside", drop=(), dgamma_of=None):
    """The paper's staged gradients as a dict of nodes, with optional mistakes.

    ``drop``: ``"gamma"`` (dl/dx_hat = dy), ``"dmu_direct"`` (dl/dmu_B without its direct
    term), ``"mu_path"`` / ``"var_path"`` (dl/dx without the term through mu_B /
    sigma_B^2). ``ddof``, ``how``: the variance and spread of the forward pass; ``m_var``:
    the m of the path through the variance.
    """
    x, dy = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    m = x.shape[0]
    m_var = m if m_var is None else m_var
    mu = x.mean(0)
    xmu = x - mu
    var = x.var(0, ddof=ddof)
    std = {"inside": np.sqrt(var + eps), "outside": np.sqrt(var) + eps}[how]
    x_hat = xmu / std
    dx_hat = dy if "gamma" in drop else dy * gamma
    dvar = (dx_hat * xmu).sum(0) * -0.5 * (var + eps) ** -1.5
    dmu = dvar * (-2.0 * xmu).sum(0) / m_var
    if "dmu_direct" not in drop:
        dmu = dmu + (dx_hat * -1.0 / std).sum(0)
    dx = dx_hat / std
    if "var_path" not in drop:
        dx = dx + dvar * 2.0 * xmu / m_var
    if "mu_path" not in drop:
        dx = dx + dmu / m
    dgamma = (dy * x_hat).sum(0) if dgamma_of is None else dgamma_of(dy, x, x_hat)
    return {"dx_hat": dx_hat, "dvar": dvar, "dmu": dmu, "dx": dx, "dgamma": dgamma,
            "dbeta": dy.sum(0)}


def _staged_reference(dy, x, gamma, eps):
    """The nodes of the paper's staged backward, from ``bnutils.bn``'s forward cache."""
    x, dy = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    _, cache = bn.batchnorm_forward(x, gamma, np.zeros_like(gamma, dtype=np.float64), eps)
    dx, dgamma, dbeta = bn.batchnorm_backward_staged(dy, cache)
    nodes = _staged(dy, x, gamma, eps)  # dx_hat, dvar, dmu: the same formulas
    nodes.update(dx=dx, dgamma=dgamma, dbeta=dbeta)
    return nodes


def _compact_reference(dy, x, gamma, eps):
    _, cache = bn.batchnorm_forward(np.asarray(x, dtype=np.float64), gamma,
                                    np.zeros_like(gamma, dtype=np.float64), eps)
    return bn.batchnorm_backward(np.asarray(dy, dtype=np.float64), cache)


def _autograd_of(forward):
    """(dx, dgamma, dbeta) of a (mistaken) torch forward ``(x, gamma, beta, eps) -> y``."""
    def backward(dy, x, gamma, eps):
        xt, gt = _t(x).requires_grad_(), _t(gamma).requires_grad_()
        bt = torch.zeros_like(gt, requires_grad=True)
        y = forward(xt, gt, bt, eps)
        grads = torch.autograd.grad((y * _t(dy)).sum(), (xt, gt, bt))
        return tuple(g.numpy() for g in grads)
    return backward


def _torch_norm(axes, ddof=0, how="inside"):
    def forward(x, gamma, beta, eps):
        mean = x.mean(axes, keepdim=True)
        var = x.var(axes, correction=ddof, keepdim=True)
        spread = torch.sqrt(var + eps) if how == "inside" else torch.sqrt(var) + eps
        return gamma * (x - mean) / spread + beta
    return forward


def _compact(dy, x, gamma, eps, ddof=0, how="inside", means=True):
    """The compact form, with the forward's mistakes or sums where means belong."""
    x, dy = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    m = x.shape[0]
    var = x.var(0, ddof=ddof)
    std = np.sqrt(var + eps) if how == "inside" else np.sqrt(var) + eps
    x_hat = (x - x.mean(0)) / std
    dbeta, dgamma = dy.sum(0), (dy * x_hat).sum(0)
    k = m if means else 1
    return gamma / std * (dy - dbeta / k - x_hat * dgamma / k), dgamma, dbeta


def _node_mistakes():
    """The mistakes of the staged backward, each as a function returning the nodes."""
    def nodes(**kw):
        return lambda dy, x, g, eps: _staged(dy, x, g, eps, **kw)

    def with_params(dgamma=None, dbeta=None):
        def variant(dy, x, g, eps):
            out = _staged(dy, x, g, eps)
            x_hat = (x - x.mean(0)) / np.sqrt(x.var(0) + eps)
            if dgamma is not None:
                out["dgamma"] = dgamma(dy, x_hat)
            if dbeta is not None:
                out["dbeta"] = dbeta(dy)
            return out
        return variant

    def final_only(backward):  # a forward mistake: only the outputs are compared
        def variant(dy, x, g, eps):
            dx, dgamma, dbeta = backward(dy, x, g, eps)
            return {"dx_hat": None, "dvar": None, "dmu": None, "dx": dx,
                    "dgamma": dgamma, "dbeta": dbeta}
        return variant

    return [
        ("statistics_constant", [nodes(drop=("mu_path", "var_path"))]),
        ("missing_dmu_term", [nodes(drop=("dmu_direct",)), nodes(drop=("mu_path",))]),
        ("missing_dvar_term", [nodes(drop=("var_path",))]),
        ("missing_gamma", [nodes(drop=("gamma",))]),
        ("dgamma_not_summed", [with_params(dgamma=lambda dy, xh: dy * xh),
                               with_params(dgamma=lambda dy, xh: dy * xh,
                                           dbeta=lambda dy: dy)]),
        ("dbeta_not_summed", [with_params(dbeta=lambda dy: dy)]),
        ("averaged_not_summed", [with_params(dgamma=lambda dy, xh: (dy * xh).mean(0),
                                             dbeta=lambda dy: dy.mean(0)),
                                 with_params(dgamma=lambda dy, xh: (dy * xh).mean(0)),
                                 with_params(dbeta=lambda dy: dy.mean(0))]),
        ("dgamma_uses_x", [nodes(dgamma_of=lambda dy, x, xh: (dy * x).sum(0))]),
        ("unbiased_variance", [nodes(ddof=1),
                               lambda dy, x, g, eps: _staged(dy, x, g, eps, ddof=1,
                                                             m_var=len(x) - 1),
                               final_only(_autograd_of(_torch_norm((0,), ddof=1))),
                               final_only(lambda *a: _compact(*a, ddof=1))]),
        ("eps_outside_sqrt", [nodes(how="outside"),
                              final_only(_autograd_of(_torch_norm((0,), how="outside"))),
                              final_only(lambda *a: _compact(*a, how="outside"))]),
        ("feature_axis", [final_only(_autograd_of(_torch_norm((1,))))]),
        ("sums_for_means", [final_only(lambda *a: _compact(*a, means=False))]),
    ]


def _backward_cases(seed):
    rng = _rng(seed)
    cases = []
    for name, shape, eps, loc in [("small batch, N=4, D=3", (4, 3), 1e-5, 0.0),
                                  ("large batch, N=512, D=8", (512, 8), 1e-5, 0.0),
                                  ("square, N=D=5", (5, 5), 1e-5, 0.0),
                                  ("epsilon matters (eps=0.5)", (16, 4), 0.5, 0.0),
                                  ("mean 1e4, N=64", (64, 3), 1e-5, 1e4)]:
        x = loc + _features(rng, shape)
        dy = rng.normal(0.5, 1.0, shape)  # a non-zero mean: dbeta and the mean path matter
        cases.append(_Case(name, (dy, x, _params(rng, shape[1])[0], eps)))
    return cases


def batchnorm_backward_staged(fn):
    """Check the paper's staged backward, node by node, for ``x: (N, D)``.

    ``fn(dy, x, gamma, eps)`` recomputes what it needs from ``x`` and returns a dict
    with ``dx_hat: (N, D)``, ``dvar: (D,)``, ``dmu: (D,)``, ``dx: (N, D)``,
    ``dgamma: (D,)`` and ``dbeta: (D,)``: dl/dx_hat, dl/dsigma_B^2, dl/dmu_B, dl/dx,
    dl/dgamma, dl/dbeta. The verdict names the first wrong node, in the order of the
    graph. Returns a ``Result``.
    """
    return _run("batchnorm_backward_staged", fn, _backward_cases(3), _staged_reference,
                _node_mistakes(), dict(_NODES))


def batchnorm_backward(fn):
    """Check ``fn(dy, x, gamma, eps) -> (dx, dgamma, dbeta)``, BN's backward pass.

    ``dy, x: (N, D)``, ``gamma: (D,)``; the function recomputes what it needs (the
    statistics, x_hat) from ``x``. Any correct form passes; chapter 3 asks for the
    compact one. The cases: N from 4 to 512, a square batch, an epsilon that matters,
    a mean of 1e4, gamma != 1 and a ``dy`` with a non-zero mean. Returns a ``Result``.
    """
    outputs = ("dx", "dgamma", "dbeta")

    def as_tuple(variant):
        return lambda *a: tuple(variant(*a)[k] for k in outputs)

    mistakes = [(key, [as_tuple(v) for v in variants])
                for key, variants in _node_mistakes()]
    return _run("batchnorm_backward", fn, _backward_cases(3), _compact_reference, mistakes,
                outputs)


# --- Chapter 4: running statistics, eval mode, folding --------------------------------


def _torch_bn(d, momentum=0.1, eps=1e-5, gamma=None, beta=None, mean=None, var=None):
    layer = layers.BatchNorm1d(d, eps=eps, momentum=momentum).double()
    with torch.no_grad():
        for param, value in ((layer.weight, gamma), (layer.bias, beta),
                             (layer.running_mean, mean), (layer.running_var, var)):
            if value is not None:
                param.copy_(_t(value))
    return layer


def _running_reference(x, running_mean, running_var, momentum):
    layer = _torch_bn(x.shape[1], momentum, mean=running_mean, var=running_var).train()
    with torch.no_grad():
        layer(_t(x))
    return layer.running_mean.numpy(), layer.running_var.numpy()


def _running(axis=0, ddof=1, keras=False, average=True):
    def update(x, running_mean, running_var, momentum):
        new = (x.mean(axis), x.var(axis, ddof=ddof))
        old = (running_mean, running_var)
        if not average:
            return new
        w_old = momentum if keras else 1.0 - momentum
        return tuple(w_old * o + (1.0 - w_old) * n for o, n in zip(old, new, strict=True))
    return update


def running_stats_update(fn):
    """Check ``fn(x, running_mean, running_var, momentum) -> (running_mean, running_var)``.

    One training step's update of BN's running statistics, PyTorch's convention:
    ``(1 - momentum) * running + momentum * batch``, the variance unbiased.
    ``x: (N, D)``, the statistics ``(D,)``. Compared with ``bnutils.layers.BatchNorm1d``;
    the cases start from other values than 0 and 1 and include ``momentum=1``.
    Returns a ``Result``.
    """
    rng = _rng(4)
    cases = []
    for name, shape, momentum in [("small batch, N=4, D=3, momentum=0.1", (4, 3), 0.1),
                                  ("N=64, D=5, momentum=0.01", (64, 5), 0.01),
                                  ("square, N=D=6, momentum=0.3", (6, 6), 0.3),
                                  ("N=8, D=4, momentum=1", (8, 4), 1.0)]:
        d = shape[1]
        mean, var = rng.normal(0.0, 1.0, d), rng.uniform(0.5, 2.0, d)
        cases.append(_Case(name, (_features(rng, shape), mean, var, momentum)))
    mistakes = [
        ("keras_momentum", [_running(keras=True), _running(keras=True, ddof=0)]),
        ("biased_running_var", [_running(ddof=0)]),
        ("running_replaced", [_running(average=False), _running(average=False, ddof=0)]),
        ("feature_axis", [_running(axis=1)]),
    ]
    return _run("running_stats_update", fn, cases, _running_reference, mistakes,
                ("running_mean", "running_var"))


def _eval_reference(x, gamma, beta, running_mean, running_var, eps):
    layer = _torch_bn(x.shape[1], eps=eps, gamma=gamma, beta=beta, mean=running_mean,
                      var=running_var).eval()
    with torch.no_grad():
        return layer(_t(x)).numpy()


def _eval_with(how="inside"):
    def forward(x, gamma, beta, running_mean, running_var, eps):
        spread = {"inside": lambda: np.sqrt(running_var + eps),
                  "outside": lambda: np.sqrt(running_var) + eps,
                  "missing": lambda: np.sqrt(running_var),
                  "no_sqrt": lambda: running_var + eps}[how]()
        return gamma * (x - running_mean) / spread + beta
    return forward


def batchnorm_eval(fn):
    """Check ``fn(x, gamma, beta, running_mean, running_var, eps) -> y``, BN in eval mode.

    ``x: (N, D)``; the rest ``(D,)``. The running statistics differ from the batch's,
    and one case is a batch of one example. Compared with ``bnutils.layers.BatchNorm1d``
    in eval mode. Returns a ``Result``.
    """
    rng = _rng(5)
    cases = []
    for name, shape, eps in [("small batch, N=4, D=3", (4, 3), 1e-5),
                             ("batch of one, D=5", (1, 5), 1e-5),
                             ("large batch, N=256, D=8", (256, 8), 1e-5),
                             ("epsilon matters (eps=0.1)", (8, 4), 0.1)]:
        d = shape[1]
        running = rng.normal(0.0, 2.0, d), rng.uniform(0.5, 3.0, d)
        if eps > 1e-3:
            running = running[0], np.full(d, 1e-3)
        cases.append(_Case(name, (_features(rng, shape), *_params(rng, d), *running, eps)))

    def batch_statistics(ddof):
        return lambda x, g, b, mean, var, eps: g * _normalize(x, (0,), eps, ddof) + b

    mistakes = [
        ("batch_statistics_in_eval", [batch_statistics(0), batch_statistics(1)]),
        ("eps_outside_sqrt", [_eval_with("outside")]),
        ("eps_missing", [_eval_with("missing")]),
        ("no_sqrt", [_eval_with("no_sqrt")]),
        ("affine_missing",
         [lambda x, g, b, mean, var, eps: _eval_with()(x, 1.0, 0.0, mean, var, eps)]),
    ]
    return _run("batchnorm_eval", fn, cases, _eval_reference, mistakes, ("y",))


def _module_run(make):
    """The function a module checker compares: build a layer with ``make(d, eps,
    momentum)``, set gamma and beta, run the training batches, then the eval batch.
    Returns (output of the last training batch, running_mean, running_var, eval output)."""
    def run(batches, x_eval, gamma, beta, eps, momentum):
        layer = make(gamma.shape[0], eps, momentum)
        if not isinstance(layer, nn.Module):
            raise TypeError(f"the class made a {type(layer).__name__}, not an nn.Module")
        for name in ("weight", "bias", "running_mean", "running_var"):
            if not isinstance(getattr(layer, name, None), torch.Tensor):
                raise TypeError(f"the layer has no tensor {name!r} (PyTorch's names: weight "
                                "for gamma, bias for beta, running_mean, running_var)")
        layer = layer.double()
        with torch.no_grad():
            layer.weight.copy_(_t(gamma))
            layer.bias.copy_(_t(beta))
        layer.train()
        for xb in batches:
            y_train = layer(_t(xb))
        layer.eval()
        y_eval = layer(_t(x_eval))
        return tuple(v.detach().numpy().copy() for v in
                     (y_train, layer.running_mean, layer.running_var, y_eval))
    return run


def _module_variant(normalize_ddof=0, update=None, eval_batch=False):
    """A mistaken layer, in NumPy: training-mode normalization with ``normalize_ddof``,
    running statistics updated by ``update`` (``_running`` variants; ``None``: never),
    eval mode with the batch's statistics when ``eval_batch``."""
    def run(batches, x_eval, gamma, beta, eps, momentum):
        mean, var = np.zeros(gamma.shape), np.ones(gamma.shape)
        for xb in batches:
            y_train = gamma * _normalize(xb, (0,), eps, normalize_ddof) + beta
            if update is not None:
                mean, var = update(xb, mean, var, momentum)
        if eval_batch:
            y_eval = gamma * _normalize(x_eval, (0,), eps) + beta
        else:
            y_eval = gamma * (x_eval - mean) / np.sqrt(var + eps) + beta
        return y_train, mean, var, y_eval
    return run


def batchnorm_module(cls):
    """Check a BN module class ``cls(num_features, eps=..., momentum=...)`` for ``x: (N, D)``.

    The layer must have PyTorch's names (``weight``, ``bias``, ``running_mean``,
    ``running_var``), normalize with the batch's statistics and update the running
    ones in training mode, and normalize with the running ones in eval mode. Each case
    runs a few training batches, then an eval batch (one has a single example), in
    float64, and compares the last training output, the running statistics and the
    eval output with ``bnutils.layers.BatchNorm1d`` (ch. 4). Returns a ``Result``.
    """
    if not isinstance(cls, type):
        raise TypeError(f"check.batchnorm_module expects your class, got {type(cls).__name__}")

    def make(d, eps, momentum):
        return cls(d, eps=eps, momentum=momentum)

    rng = _rng(8)
    cases = []
    for name, (n, d), steps, momentum, eps, n_eval in [
            ("N=8, D=3, 3 steps, momentum=0.1", (8, 3), 3, 0.1, 1e-5, 5),
            ("N=32, D=5, 5 steps, momentum=0.3", (32, 5), 5, 0.3, 1e-5, 8),
            ("N=4, D=2, 2 steps, momentum=0.5, eval batch of one", (4, 2), 2, 0.5, 1e-5, 1),
            ("epsilon matters (eps=0.5), N=6, D=4, 2 steps", (6, 4), 2, 0.1, 0.5, 6)]:
        batches = [_features(rng, (n, d)) for _ in range(steps)]
        cases.append(_Case(name, (batches, _features(rng, (n_eval, d)), *_params(rng, d),
                                  eps, momentum)))
    mistakes = [
        ("keras_momentum", [_module_variant(update=_running(keras=True))]),
        ("biased_running_var", [_module_variant(update=_running(ddof=0))]),
        ("running_replaced", [_module_variant(update=_running(average=False))]),
        ("running_not_updated", [_module_variant(update=None)]),
        ("batch_statistics_in_eval", [_module_variant(update=_running(), eval_batch=True),
                                      _module_variant(update=None, eval_batch=True)]),
        ("unbiased_variance", [_module_variant(normalize_ddof=1, update=_running())]),
    ]
    fn = _module_run(make)
    fn.__name__ = cls.__name__
    return _run("batchnorm_module", fn, cases,
                _module_run(lambda d, eps, momentum: layers.BatchNorm1d(
                    d, eps=eps, momentum=momentum)),
                mistakes, ("y (training)", "running_mean", "running_var", "y (eval)"))


def _fold_reference(W, b, gamma, beta, running_mean, running_var, eps):
    # new layers draw random initial weights: leave the reader's random state as it was
    with torch.random.fork_rng(devices=[]):
        linear = nn.Linear(W.shape[1], W.shape[0], dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(_t(W))
            linear.bias.copy_(_t(b))
        bn_layer = _torch_bn(W.shape[0], eps=eps, gamma=gamma, beta=beta,
                             mean=running_mean, var=running_var).eval()
        folded = layers.fold_batchnorm(linear, bn_layer)
    return folded.weight.detach().numpy(), folded.bias.detach().numpy()


def _fold(how="inside", columns=False, bias="scaled"):
    def fold(W, b, gamma, beta, running_mean, running_var, eps):
        s = gamma / {"inside": lambda: np.sqrt(running_var + eps),
                     "outside": lambda: np.sqrt(running_var) + eps,
                     "missing": lambda: np.sqrt(running_var),
                     "no_sqrt": lambda: running_var + eps}[how]()
        W_new = W * s if columns else s[:, None] * W
        b_new = {"scaled": lambda: s * (b - running_mean) + beta,
                 "dropped": lambda: beta - s * running_mean,
                 "unscaled": lambda: b + beta - s * running_mean}[bias]()
        return W_new, b_new
    return fold


def fold_linear(fn):
    """Check ``fn(W, b, gamma, beta, running_mean, running_var, eps) -> (W_folded, b_folded)``.

    Folding an eval-mode BN into the linear layer before it, ``u -> W u + b`` with
    ``W: (D_out, D_in)``, ``b: (D_out,)`` as in ``nn.Linear``, the BN parameters and
    statistics ``(D_out,)``. Compared with ``bnutils.layers.fold_batchnorm``.
    Returns a ``Result``.
    """
    rng = _rng(7)
    cases = []
    for name, (d_out, d_in), eps, zero_bias in [("D_out=4, D_in=6", (4, 6), 1e-5, False),
                                                 ("square, D_out=D_in=5", (5, 5), 1e-5,
                                                  False),
                                                 ("no bias, D_out=3, D_in=7", (3, 7), 1e-5,
                                                  True),
                                                 ("epsilon matters (eps=0.1)", (4, 4), 0.1,
                                                  False)]:
        W, b = rng.standard_normal((d_out, d_in)), rng.normal(0.0, 2.0, d_out)
        if zero_bias:
            b = np.zeros(d_out)
        mean, var = rng.normal(0.0, 2.0, d_out), rng.uniform(0.5, 3.0, d_out)
        if eps > 1e-3:
            var = np.full(d_out, 1e-3)
        cases.append(_Case(name, (W, b, *_params(rng, d_out), mean, var, eps)))
    mistakes = [
        ("fold_scaled_columns", [_fold(columns=True)]),
        ("fold_bias_dropped", [_fold(bias="dropped")]),
        ("fold_bias_unscaled", [_fold(bias="unscaled")]),
        ("eps_outside_sqrt", [_fold("outside")]),
        ("eps_missing", [_fold("missing")]),
        ("no_sqrt", [_fold("no_sqrt")]),
    ]
    return _run("fold_linear", fn, cases, _fold_reference, mistakes,
                ("W_folded", "b_folded"))


# --- Chapter 9: Layer Norm and Group Norm ---------------------------------------------


def _torch_layer(layer, gamma, beta, x):
    layer = layer.double()
    with torch.no_grad():
        layer.gamma.copy_(_t(gamma))
        layer.beta.copy_(_t(beta))
        return layer(_t(x)).numpy()


def _layer_norm_reference(x, gamma, beta, eps):
    return _torch_layer(norms.LayerNorm(x.shape[1], eps=eps), gamma, beta, x)


def _row_affine(x_hat, gamma, beta):
    return gamma * x_hat + beta


def layer_norm(fn):
    """Check ``fn(x, gamma, beta, eps) -> y``, Layer Norm for ``x: (N, D)``.

    Statistics per example over its D features; ``gamma, beta: (D,)``. The cases
    include a batch of one, a square batch, an epsilon that matters and a mean of 1e4
    in float32. Compared with ``bnutils.norms.LayerNorm``. Returns a ``Result``.
    """
    rng = _rng(9)
    cases = []
    for name, shape in [("N=4, D=6", (4, 6)), ("batch of one, D=8", (1, 8)),
                        ("square, N=D=5", (5, 5))]:
        x = rng.normal(0.0, 3.0, (shape[0], 1)) + rng.uniform(0.5, 3.0, (shape[0], 1)) \
            * rng.standard_normal(shape)
        cases.append(_Case(name, (x, *_params(rng, shape[1]), 1e-5)))
    x = rng.standard_normal((3, 6))
    x[0] = 2.0 + 1e-3 * rng.standard_normal(6)
    x[1] = -1.0
    cases.append(_Case("epsilon matters (eps=0.1, a constant example)",
                       (x, *_params(rng, 6), 0.1)))
    cases.append(_Case("mean 1e4 in float32, N=8, D=64",
                       (_large_mean(rng, (8, 64)), *_params(rng, 64, np.float32), 1e-5),
                       rtol=1e-2, precision=True))
    mistakes = [
        *_norm_variants(lambda x: (1,), affine=_row_affine),
        ("batch_axis", [
            lambda x, g, b, eps: g * _normalize(x, (0,), eps) + b,
            lambda x, g, b, eps: g * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + b,
        ]),
    ]
    return _run("layer_norm", fn, cases, _layer_norm_reference, mistakes, ("y",))


def _group_norm_reference(x, gamma, beta, num_groups, eps):
    return _torch_layer(norms.GroupNorm(num_groups, x.shape[1], eps=eps), gamma, beta, x)


def _grouped(axes=(2, 3, 4), interleaved=False, **kw):
    """Group Norm with statistics over ``axes`` of the grouped (N, G, C // G, H, W) view."""
    def forward(x, gamma, beta, num_groups, eps):
        n, c, h, w = x.shape
        if interleaved:
            g = x.reshape(n, c // num_groups, num_groups, h, w).swapaxes(1, 2)
        else:
            g = x.reshape(n, num_groups, c // num_groups, h, w)
        x_hat = _normalize(g, axes, eps, **kw)
        if interleaved:
            x_hat = x_hat.swapaxes(1, 2)
        return _affine(x_hat.reshape(x.shape), gamma, beta)
    return forward


def group_norm(fn):
    """Check ``fn(x, gamma, beta, num_groups, eps) -> y``, Group Norm.

    ``x: (N, C, H, W)``, statistics per example and group of ``C // num_groups``
    consecutive channels, over the group's channels and all positions;
    ``gamma, beta: (C,)``, one per channel. The cases: G = 1 (Layer Norm), G = C
    (Instance Norm), groups in between, a batch of one, C = W, an epsilon that matters
    and a mean of 1e4 in float32. Compared with ``bnutils.norms.GroupNorm``.
    Returns a ``Result``.
    """
    rng = _rng(10)
    cases = []
    for name, shape, groups in [("(4, 6, 3, 3), G=3", (4, 6, 3, 3), 3),
                                ("(2, 4, 5, 5), G=1", (2, 4, 5, 5), 1),
                                ("(3, 6, 2, 2), G=6", (3, 6, 2, 2), 6),
                                ("one image, (1, 8, 3, 3), G=2", (1, 8, 3, 3), 2),
                                ("C = W, (2, 4, 3, 4), G=2", (2, 4, 3, 4), 2)]:
        cases.append(_Case(name, (_features(rng, shape), *_params(rng, shape[1]), groups,
                                  1e-5)))
    x = _features(rng, (2, 4, 3, 3))
    x[0, :2] = 1.0 + 1e-3 * rng.standard_normal((2, 3, 3))
    x[1, 2:] = 3.0
    cases.append(_Case("epsilon matters (eps=0.1, constant groups)",
                       (x, *_params(rng, 4), 2, 0.1)))
    cases.append(_Case("mean 1e4 in float32, (4, 4, 4, 4), G=2",
                       (_large_mean(rng, (4, 4, 4, 4)), *_params(rng, 4, np.float32), 2,
                        1e-5), rtol=1e-2, precision=True))

    def channels(axes):
        return lambda x, g, b, groups, eps: _affine(_normalize(x, axes, eps), g, b)

    def strided(x, gamma, beta, num_groups, eps):  # x.reshape(N, -1, G): every G-th value
        g = x.reshape(x.shape[0], -1, num_groups)
        return _affine(_normalize(g, (1,), eps).reshape(x.shape), gamma, beta)

    def unreshaped(x, gamma, beta, num_groups, eps):
        g = x.reshape(x.shape[0], num_groups, -1)
        return gamma * _normalize(g, (2,), eps).reshape(x.shape) + beta

    mistakes = [
        ("unbiased_variance", [_grouped(ddof=1)]),
        ("eps_outside_sqrt", [_grouped(how="outside")]),
        ("eps_missing", [_grouped(how="missing")]),
        ("no_sqrt", [_grouped(how="no_sqrt")]),
        ("interleaved_groups", [_grouped(interleaved=True), strided]),
        ("instance_norm", [channels((2, 3))]),
        ("layer_norm", [channels((1, 2, 3))]),
        ("batch_axis", [_grouped(axes=(0, 2, 3, 4)), channels((0, 2, 3))]),
        ("broadcast_last_axis", [unreshaped]),
        ("affine_missing", [lambda x, g, b, groups, eps: _grouped()(x, np.ones(x.shape[1]),
                                                                   np.zeros(x.shape[1]),
                                                                   groups, eps)]),
    ]
    return _run("group_norm", fn, cases, _group_norm_reference, mistakes, ("y",))
