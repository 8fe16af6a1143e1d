"""The engine of every checker: the mistakes it can name, running the reader's function
on each case, comparing, diagnosing and printing the verdict."""

import contextlib
import textwrap
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

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
