"""A plain training loop and evaluation, shared by the experiment chapters."""

import torch
from torch.nn import functional as F

from .config import progress as progress_bar
from .data import batches


@torch.no_grad()
def accuracy(model, x, y, batch_size=10_000):
    """Fraction of ``x`` that ``model`` (in eval mode) classifies as ``y``."""
    was_training = model.training
    model.eval()
    correct = sum(
        (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
        for i in range(0, len(x), batch_size)
    )
    model.train(was_training)
    return correct / len(x)


def train(model, optimizer, x, y, steps, batch_size=60, seed=0, log_every=None,
          on_log=None, progress=True, desc="training", scheduler=None, max_loss=None):
    """Train with cross-entropy on shuffled mini-batches of ``(x, y)`` for ``steps`` steps.

    Every ``log_every`` steps (and after the last), ``on_log(step, model)`` is called
    with the model in training mode; what it returns is collected. Returns the list of
    those values and the per-step training losses as a tensor.

    ``scheduler``: a learning-rate scheduler stepped after every optimizer step.
    ``max_loss``: stop early, before updating, at the first mini-batch loss that is not
    finite or exceeds it (a diverged run); the returned losses then end with that loss.
    """
    model.train()
    stream = batches(x, y, batch_size, seed=seed)
    losses = torch.empty(steps)
    logs, step = [], 0
    for step in progress_bar(range(1, steps + 1), desc=desc, disable=not progress, mininterval=1):
        xb, yb = next(stream)
        loss = F.cross_entropy(model(xb), yb)
        losses[step - 1] = loss.detach()
        if max_loss is not None and not loss.item() <= max_loss:  # also catches NaN
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if on_log is not None and log_every and (step % log_every == 0 or step == steps):
            logs.append(on_log(step, model))
            model.train()
    return logs, losses[:step]
