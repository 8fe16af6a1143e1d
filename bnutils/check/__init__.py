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

The package has one module per family of checkers: ``forward`` (chapters 2 and 6),
``backward`` (chapter 3), ``inference`` (chapter 4) and ``norms`` (chapter 9); what
they share lives in ``_engine`` (running the function, comparing, naming a mistake)
and ``_pieces`` (reference pieces and cases).
"""

from ._engine import MISTAKES, WIDTH, Result
from .backward import batchnorm_backward, batchnorm_backward_staged
from .forward import batchnorm_forward, batchnorm_forward_conv
from .inference import batchnorm_eval, batchnorm_module, fold_linear, running_stats_update
from .norms import group_norm, layer_norm

__all__ = [
    "MISTAKES",
    "WIDTH",
    "Result",
    "batchnorm_forward",
    "batchnorm_forward_conv",
    "batchnorm_backward_staged",
    "batchnorm_backward",
    "running_stats_update",
    "batchnorm_eval",
    "batchnorm_module",
    "fold_linear",
    "layer_norm",
    "group_norm",
]
