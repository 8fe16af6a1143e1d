"""Many small networks trained as one: stacked weights, one forward and backward pass.

The one way the book trains several networks at once (notebooks 02, 05, 07, 08, 09;
``bnutils.train.train`` stays the plain loop for one). A sweep over learning rates,
initial scales, seeds or normalizations trains dozens of networks of one architecture.
Trained one after another, a step of a Figure 1 MLP at batch 60 spends about half its
time outside its matrix products (Python, the optimizer, small kernels); stacked, the
``k`` networks share every one of those calls, and their products become one large
product (``torch.bmm``) that more threads can split. ``benchmarks/batched.py`` measures
the gain: about 2x on one thread for the MLPs of Figure 1, less for the CNN, whose time
goes to convolutions either way.

Each network stays exactly what it would be alone: network ``i`` of a ``StackedMLP``
starts from the weights of ``bnutils.models.mlp`` built with seed ``seeds[i]``, its
normalization layer (any of them: BN, BN taken apart, ghost, noisy, Batch Renorm, Layer
or Group Norm, before or after the nonlinearity) sees only its own activations,
``StackedSGD`` applies its own learning rate as ``torch.optim.SGD`` would, and
``train_stacked`` feeds it the mini-batches that ``bnutils.train.train`` would draw.
Batched and one-by-one training agree to float32 rounding (``tests/test_batched.py``).
Shapes: ``k`` networks, mini-batch ``B``; stacked parameters have ``k`` as their first
dimension.
"""

import copy
import math
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from .config import generator as make_generator
from .config import progress as progress_bar
from .models import ACTIVATIONS, PLACEMENTS, mlp, small_cnn
from .norms import (
    BatchRenorm,
    GhostBatchNorm,
    GroupNorm,
    LayerNorm,
    NoisyBatchNorm1d,
    PartialBatchNorm,
)

_ACTIVATION_FNS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}


def _per_net(value, k, name, dtype=torch.float64):
    """``value`` (a number or ``k`` numbers) as a float64 CPU tensor ``(k,)``."""
    t = torch.as_tensor(value, dtype=dtype).detach().cpu().flatten()
    if t.numel() == 1:
        return t.expand(k).clone()
    if t.numel() != k:
        raise ValueError(f"{name} must be one number or k={k} numbers, got {t.numel()}")
    return t


def _seeds(seeds, k):
    seeds = list(range(k)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != k:
        raise ValueError(f"seeds must have k={k} entries, got {len(seeds)}")
    return seeds


def _check_k(k):
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k (the number of networks) must be a positive integer, got {k!r}")
    return int(k)


class StackedMLP(nn.Module):
    """``k`` independent MLPs of one architecture, stored and run as one.

    Net ``i`` is ``bnutils.models.mlp(in_features, hidden, out_features, activation,
    norm, placement=placement)``: ``[Linear -> (norm) -> activation] * len(hidden) ->
    Linear``, or ``[Linear -> activation -> norm]`` per hidden layer with
    ``placement="after"``.

    ``norm``: what normalizes each hidden layer, the one argument in which the
    chapters' variants differ. ``False`` (or ``None``): nothing; ``True``:
    ``nn.BatchNorm1d(eps=eps, momentum=momentum)``; or any callable ``num_features ->
    nn.Module`` that ``models.mlp`` takes (``nn.BatchNorm1d``, ``norms.LayerNorm``,
    ``lambda d: norms.GroupNorm(10, d)``, ``partial(norms.PartialBatchNorm,
    center=False)``, ``norms.NoisyBatchNorm1d``, ...). It is called for net 0's layers,
    then net 1's, and so on, as if the nets were built one after another. Plain
    ``nn.BatchNorm1d`` layers run as one ``F.batch_norm`` for all nets; the layers of
    ``bnutils.norms`` run side by side, as one layer ``k`` times as wide; any other
    layer runs once per net, as net ``i``'s own module on net ``i``'s activations. Net
    ``i``'s layers keep what is theirs (a noisy layer its generator); their parameters
    and buffers are stacked in ``norms``.

    ``init_std``: a float or ``k`` floats. Net ``i`` starts from exactly the weights of
    ``mlp(..., init_std=init_std[i], generator=bnutils.generator(seeds[i]))``;
    ``init_std=None`` keeps PyTorch's default init, drawn after
    ``torch.manual_seed(seeds[i])``. The global generator is left as it was.
    ``eps``, ``momentum``: of ``norm=True``, as in ``nn.BatchNorm1d`` (running
    statistics ``(1 - momentum) * running + momentum * batch``, the batch variance
    unbiased).

    Parameters: ``weights[j]: (k, out_j, in_j)``, ``biases[j]: (k, out_j)`` (the layers
    that have one). Plain BN: ``gamma[j]``, ``beta[j]: (k, h_j)`` and buffers
    ``running_mean_j``, ``running_var_j: (k, h_j)``, ``num_batches_tracked: (k,)``.
    Any other norm: ``norms[j]`` holds layer ``j``'s parameters and buffers under their
    names in the single layer, stacked: ``norms[j].gamma: (k, h_j)`` and so on.
    """

    def __init__(self, k, in_features=784, hidden=(100, 100, 100), out_features=10,
                 activation="sigmoid", norm=False, init_std=0.05, seeds=None, eps=1e-5,
                 momentum=0.1, placement="before"):
        super().__init__()
        self.k = _check_k(k)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {activation!r}")
        if not (norm is None or isinstance(norm, bool) or callable(norm)):
            raise ValueError(f"norm must be True, False or a callable num_features -> "
                             f"module, got {norm!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.in_features, self.hidden = in_features, tuple(hidden)
        self.out_features, self.activation = out_features, activation
        self.norm, self.placement = norm or False, placement
        self._factory = (partial(nn.BatchNorm1d, eps=eps, momentum=momentum) if norm is True
                         else norm or None)
        self.eps, self.momentum = eps, momentum
        self.seeds = _seeds(seeds, self.k)
        self.init_std = None if init_std is None else _per_net(init_std, self.k, "init_std")

        nets = [self._make_net(i) for i in range(self.k)]
        linears = [m for m in nets[0] if isinstance(m, nn.Linear)]
        self.weights = _stack(nets, nn.Linear, "weight")
        self.biases = _stack(nets, nn.Linear, "bias")
        self._has_bias = [m.bias is not None for m in linears]
        # layer j of every net: (net 0's, net 1's, ...)
        layers = list(zip(*[[m for m in net if _is_norm(m)] for net in nets], strict=True))
        for same in layers:
            if any(_tensors(m) != _tensors(same[0]) for m in same):
                raise ValueError(f"norm must build layers with the same parameters and "
                                 f"buffers for every net, got {list(map(_tensors, same))}")
        self._batch_norm_all = bool(layers) and all(map(_plain_batch_norm, layers))
        if self._batch_norm_all:
            self.eps, self.momentum = layers[0][0].eps, layers[0][0].momentum
        self.norms = nn.ModuleList(() if self._batch_norm_all else map(_StackedLayer, layers))
        bn = nets if self._batch_norm_all else []
        self.gamma = _stack(bn, nn.BatchNorm1d, "weight")
        self.beta = _stack(bn, nn.BatchNorm1d, "bias")
        for j, same in enumerate(layers if self._batch_norm_all else ()):
            self.register_buffer(f"running_mean_{j}", torch.stack([m.running_mean for m in same]))
            self.register_buffer(f"running_var_{j}", torch.stack([m.running_var for m in same]))
        if self._batch_norm_all:
            self.register_buffer("num_batches_tracked", torch.zeros(self.k, dtype=torch.long))

    def _make_net(self, i, norm=None):
        """Net ``i`` as ``models.mlp`` builds it, with its initial weights (and
        ``norm`` in place of the factory, if given)."""
        build = partial(mlp, self.in_features, self.hidden, self.out_features,
                        self.activation, norm or self._factory, placement=self.placement)
        # nn.Linear draws a default init from the global generator even when init_std
        # then overwrites it: fork it, so that building k nets leaves it as it was
        with torch.random.fork_rng(devices=[]):
            if self.init_std is not None:
                return build(init_std=float(self.init_std[i]),
                             generator=make_generator(self.seeds[i]))
            torch.manual_seed(self.seeds[i])
            return build()

    def forward(self, x, return_hidden=False):
        """Logits ``(k, B, out_features)`` of every net.

        ``x``: ``(B, in_features)``, the same mini-batch for all nets, or
        ``(k, B, in_features)``, one per net. With ``return_hidden=True`` also returns a
        list with the input of each hidden layer's activation, ``(k, B, h_j)`` (after
        the norm when it comes before the activation).
        """
        shared = _check_input(x, self.k, (self.in_features,))
        if self.training and self._batch_norm_all:
            self.num_batches_tracked += 1
        # Inside, activations are transposed, h: (k, width, B), so that a layer is
        # W @ h and BN's statistics are over the last axis of a contiguous tensor.
        n = x.shape[-2]
        hidden, bias, h = [], iter(self.biases), x.transpose(-1, -2)
        act = _ACTIVATION_FNS[self.activation]
        before = self.placement == "before"
        for j, weight in enumerate(self.weights):
            b = next(bias) if self._has_bias[j] else None
            if shared:  # one matrix product for all nets: (k * out, in) @ (in, B)
                w = weight.reshape(-1, weight.shape[2])
                h = w @ h if b is None else torch.addmm(b.reshape(-1, 1), w, h)
                h = h.view(self.k, -1, n)
            else:  # (k, out, in) @ (k, in, B)
                h = torch.bmm(weight, h) if b is None else torch.baddbmm(b.unsqueeze(2), weight, h)
            if j == len(self.weights) - 1:
                break
            if before:
                h = self._normalize(h, j)
            hidden.append(h.transpose(1, 2))
            h, shared = act(h), False
            if not before:
                h = self._normalize(h, j)
        logits = h.transpose(1, 2)
        return (logits, hidden) if return_hidden else logits

    def _normalize(self, h, j):
        """Hidden layer ``j``'s norm (if any) of the transposed ``h: (k, w, B)``."""
        if self._batch_norm_all:
            return self._batch_norm_t(h, j)
        return self.norms[j](h) if self.norms else h

    def _running(self, j):
        """Layer ``j``'s running mean and variance, ``(k, h_j)`` each (plain BN)."""
        return _running(self, j)

    def _batch_norm(self, h, j):
        """BN (layer ``j``) of ``h: (k, B, w)``, per net and unit over the batch axis;
        for subclasses that write their own forward pass."""
        return self._batch_norm_t(h.transpose(1, 2), j).transpose(1, 2)

    def _batch_norm_t(self, h, j):
        """BN of the transposed ``h: (k, w, B)`` per net and unit over the batch axis:
        ``F.batch_norm`` of ``(1, k * w, B)``, whose statistics are per channel over the
        last axis."""
        running_mean, running_var = _running(self, j)
        y = F.batch_norm(h.reshape(1, -1, h.shape[2]), running_mean.view(-1),
                         running_var.view(-1), self.gamma[j].reshape(-1),
                         self.beta[j].reshape(-1), self.training, self.momentum, self.eps)
        return y.view(h.shape)

    @torch.no_grad()
    def net(self, i):
        """Net ``i`` as a new ``models.mlp`` ``nn.Sequential`` (a copy, on this device
        and in this dtype), with its current parameters, buffers and norm layers and
        this stack's train/eval mode."""
        copies = iter([copy.deepcopy(layer.layers[i]) for layer in self.norms])
        net = self._make_net(i, (lambda d: next(copies)) if self.norms else None)
        net = net.to(self.weights[0].device, self.weights[0].dtype)
        linears = [m for m in net if isinstance(m, nn.Linear)]
        biases = iter(self.biases)
        for layer, weight in zip(linears, self.weights, strict=True):
            layer.weight.copy_(weight[i])
            if layer.bias is not None:
                layer.bias.copy_(next(biases)[i])
        norms = [m for m in net if _is_norm(m)]
        if self._batch_norm_all:
            _copy_norms(self, norms, i)
        for layer, stacked in zip(norms, self.norms, strict=False):
            stacked.copy_into(layer, i)
        return net.train(self.training)

    def extra_repr(self):
        return (f"k={self.k}, sizes={(self.in_features, *self.hidden, self.out_features)}, "
                f"activation={self.activation!r}, norm={self.norm}, "
                f"placement={self.placement!r}")


def _is_norm(module):
    """Whether a layer of ``models.mlp`` is its norm (not a linear layer or activation)."""
    return not isinstance(module, (nn.Linear, *ACTIVATIONS.values()))


def _plain_batch_norm(layers):
    """Whether ``layers`` (one per net) are ``nn.BatchNorm1d`` with running statistics
    and one ``eps`` and ``momentum``: then one ``F.batch_norm`` computes them all."""
    return all(type(m) is nn.BatchNorm1d and m.affine and m.track_running_stats
               and m.momentum is not None for m in layers) and len(
        {(m.eps, m.momentum) for m in layers}) == 1


class _StackedLayer(nn.Module):
    """One layer of ``k`` nets, net ``i``'s own module being ``layers[i]``, with the
    parameters and buffers of all ``k`` stacked here, ``(k, ...)``, under the module's
    own names ("." becomes "_"): ``StackedSGD`` updates them with the rest and
    ``train_stacked`` restores a frozen net's.

    The layers of ``bnutils.norms`` whose statistics are per feature over the batch, or
    per example within one net's features, run side by side: one call of a layer
    ``k`` times as wide (``_side_by_side``) on ``(B, k * w)``, net ``i``'s features in
    block ``i``. Any other layer runs once per net, on that net's activations.
    """

    def __init__(self, layers):
        super().__init__()
        self.layers = tuple(layers)  # not submodules: their tensors are the stacked ones
        first = self.layers[0]
        self.names = [name for name, _ in first.named_parameters()]
        self.names += [name for name, _ in first.named_buffers()]
        for name, p in first.named_parameters():
            stacked = torch.stack([m.get_parameter(name).detach() for m in self.layers])
            self.register_parameter(_key(name), nn.Parameter(stacked, p.requires_grad))
        for name, _ in first.named_buffers():
            self.register_buffer(_key(name), torch.stack([m.get_buffer(name) for m in self.layers]))
        self.__dict__["wide"] = _side_by_side(self.layers)  # not a submodule either

    def forward(self, h):
        """``h: (k, w, B)``, net ``i``'s activations in ``h[i]`` (``StackedMLP``'s
        layout) -> the same layout."""
        k, w, n = h.shape
        if self.wide is None:
            return torch.stack([functional_call(layer, self._state(i), (h[i].T,)).T
                                for i, layer in enumerate(self.layers)])
        # a one-number buffer of each net (a step counter) is one number for the wide
        # layer: the nets that still train count alike (train_stacked restores the
        # frozen nets' buffers after each step)
        stacked = {name: getattr(self, _key(name)) for name in self.names}
        state = {name: t.max() if t.dim() == 1 else t.view(-1)
                 for name, t in stacked.items()}
        y = functional_call(self.wide, state, (h.reshape(k * w, n).T,))
        for name, t in stacked.items():
            if t.dim() == 1:
                t.fill_(state[name])
        return y.T.reshape(k, w, n)

    def _state(self, i):
        return {name: getattr(self, _key(name))[i] for name in self.names}

    def copy_into(self, layer, i):
        """Copy net ``i``'s parameters and buffers into ``layer``, a module like
        ``layers[i]``."""
        tensors = dict(layer.named_parameters()) | dict(layer.named_buffers())
        for name, value in self._state(i).items():
            tensors[name].copy_(value)

    def train(self, mode=True):
        for layer in (*self.layers, self.wide):
            if layer is not None:
                layer.train(mode)
        return super().train(mode)

    def extra_repr(self):
        return (f"k={len(self.layers)}, layer={self.layers[0]!r}, "
                f"side_by_side={self.wide is not None}")


def _tensors(layer):
    """The names, shapes and ``requires_grad`` of a layer's parameters and buffers."""
    return [(name, tuple(t.shape), t.requires_grad)
            for name, t in (*layer.named_parameters(), *layer.named_buffers())]


def _settings(layer):
    """What a layer is besides its tensors: the class and the plain attributes (sizes,
    ``eps``, switches) of it and its submodules."""
    return [(name, type(m), {k: v for k, v in vars(m).items()
                             if isinstance(v, (bool, int, float, str, tuple))})
            for name, m in layer.named_modules()]


def _side_by_side(layers):
    """One module that computes the ``k`` layers side by side on ``(B, k * w)``, net
    ``i``'s features in block ``i``, with their parameters and buffers concatenated;
    ``None`` for a layer it does not know, or when the nets' layers differ in a
    setting. Per-feature layers are the same layer made ``k`` times as wide; Group
    Norm gets ``k`` times the groups, and Layer Norm becomes Group Norm with one
    group per net."""
    first, k = layers[0], len(layers)
    if any(_settings(m) != _settings(first) for m in layers):
        return None
    kind = type(first)
    if kind is LayerNorm and len(first.normalized_shape) == 1:
        return GroupNorm(k, k * first.normalized_shape[0], first.eps)
    if kind is NoisyBatchNorm1d:
        return _NoisySideBySide(layers)
    if kind not in (BatchRenorm, GhostBatchNorm, GroupNorm, PartialBatchNorm):
        return None
    wide = copy.deepcopy(first)
    if kind is GroupNorm:
        wide.num_groups, wide.num_channels = k * first.num_groups, k * first.num_channels
    elif kind is not PartialBatchNorm:
        wide.num_features = k * first.num_features
    return wide


class _NoisySideBySide(NoisyBatchNorm1d):
    """``k`` nets' ``NoisyBatchNorm1d`` side by side: BN as one layer, each net's noise
    drawn by its own layer (from its own generator)."""

    def __init__(self, layers):
        first = layers[0]
        super().__init__(len(layers) * first.bn.num_features, first.a, first.v,
                         first.per_example)
        self.bn.eps, self.bn.momentum = first.bn.eps, first.bn.momentum
        self.layers = tuple(layers)

    def draw(self, shape):
        n, w = shape[0], shape[1] // len(self.layers)
        u, v, xi = zip(*[layer.draw((n, w)) for layer in self.layers], strict=True)
        return torch.cat(u), torch.cat(v), torch.cat(xi, 1) if self.per_example else xi[0]


def _key(name):
    return name.replace(".", "_")


def _stack(nets, kind, name):
    """The parameter ``name`` of every ``kind`` layer of ``nets``, stacked: one
    ``(k, ...)`` parameter per layer (layers without it are skipped)."""
    layers = zip(*[[m for m in net if isinstance(m, kind)] for net in nets], strict=True)
    return nn.ParameterList(torch.stack([getattr(m, name).detach() for m in same])
                            for same in layers if getattr(same[0], name) is not None)


def _check_input(x, k, feature_shape):
    """True if ``x`` is one batch ``(B, *feature_shape)`` for all nets, False if it is
    ``(k, B, *feature_shape)``; a ``ValueError`` naming both shapes otherwise.
    A name (a string) in ``feature_shape`` matches any size."""
    def fits(shape):
        return len(shape) == len(feature_shape) and all(
            isinstance(f, str) or s == f for s, f in zip(shape, feature_shape, strict=True))

    if fits(x.shape[1:]):
        return True
    if x.dim() > 0 and x.shape[0] == k and fits(x.shape[2:]):
        return False
    dims = ", ".join(map(str, feature_shape))
    raise ValueError(f"x must be (B, {dims}) or (k={k}, B, {dims}), got {tuple(x.shape)}")


class StackedCNN(nn.Module):
    """``k`` copies of ``bnutils.models.small_cnn``, run as grouped convolutions.

    Net ``i`` is ``small_cnn(norm, activation, dropout, widths, in_channels,
    num_classes)`` built after ``torch.manual_seed(seeds[i])`` (PyTorch's default init,
    as ``figure3`` builds it after ``set_seed``; the global generator is restored after).
    Its channels are the ``i``-th block of every layer's ``k * width`` channels: a
    convolution with ``groups=k`` keeps the blocks apart, ``F.batch_norm`` over
    ``k * width`` channels computes each channel's statistics over its own net's batch,
    and the last layer is a batched product. ``norm``: ``None``, ``"bn"`` or ``"gn"``
    (Group Norm with ``groups`` groups per layer: net ``i``'s channels are a contiguous
    block, so ``F.group_norm`` with ``k * groups`` groups normalizes each net's groups
    alone; ``groups=1`` is Layer Norm over channels and positions).

    Dropout draws each net's mask from a generator that continues the global
    generator's state after that net's init, so on the CPU net ``i`` sees the masks
    ``small_cnn`` would draw after ``torch.manual_seed(seeds[i])``.

    Parameters: ``conv_weights[j]: (k, out_j, in_j, 3, 3)``, ``conv_biases[j]: (k, out_j)``
    (without norm), ``gamma[j]``, ``beta[j]: (k, out_j)`` and buffers
    ``running_mean_j``, ``running_var_j: (k, out_j)``, ``num_batches_tracked: (k,)``
    (with norm), ``weights[0]: (k, num_classes, widths[-1])``, ``biases[0]:
    (k, num_classes)``.
    """

    def __init__(self, k, norm=None, activation="relu", dropout=0.0, widths=(8, 16, 32),
                 in_channels=1, num_classes=10, seeds=None, eps=1e-5, momentum=0.1,
                 groups=4):
        super().__init__()
        self.k = _check_k(k)
        if norm not in (None, "bn", "gn"):
            raise ValueError(f"norm must be None, 'bn' or 'gn', got {norm!r}")
        if norm == "gn" and any(w % groups for w in widths):
            raise ValueError(f"every width must be a multiple of groups={groups}, "
                             f"got widths {tuple(widths)}")
        self.groups = int(groups)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.norm, self.activation, self.dropout = norm, activation, float(dropout)
        self.widths, self.in_channels, self.num_classes = tuple(widths), in_channels, num_classes
        self.eps, self.momentum = eps, momentum
        self.seeds = _seeds(seeds, self.k)

        nets, self._dropout_generators = [], []
        for i in range(self.k):
            with torch.random.fork_rng(devices=[]):
                nets.append(self._make_net(i))
                g = torch.Generator()
                g.set_state(torch.get_rng_state())
            self._dropout_generators.append(g)
        self.conv_weights = _stack(nets, nn.Conv2d, "weight")
        self.conv_biases = _stack(nets, nn.Conv2d, "bias")
        layer = nn.GroupNorm if norm == "gn" else nn.BatchNorm2d
        self.gamma = _stack(nets, layer, "weight")
        self.beta = _stack(nets, layer, "bias")
        self.weights = _stack(nets, nn.Linear, "weight")
        self.biases = _stack(nets, nn.Linear, "bias")
        for j, w in enumerate(self.widths if norm == "bn" else ()):
            self.register_buffer(f"running_mean_{j}", torch.zeros(self.k, w))
            self.register_buffer(f"running_var_{j}", torch.ones(self.k, w))
        if norm == "bn":
            self.register_buffer("num_batches_tracked", torch.zeros(self.k, dtype=torch.long))

    def _make_net(self, i):
        """Net ``i`` as ``small_cnn`` builds it after ``torch.manual_seed(seeds[i])``;
        call it inside ``fork_rng``: it reseeds the global generator."""
        norm = {None: None,
                "bn": partial(nn.BatchNorm2d, eps=self.eps, momentum=self.momentum),
                "gn": lambda c: nn.GroupNorm(self.groups, c, eps=self.eps)}[self.norm]
        torch.manual_seed(self.seeds[i])
        return small_cnn(norm, self.activation, self.dropout, self.widths, self.in_channels,
                         self.num_classes)

    def forward(self, x, return_hidden=False):
        """Logits ``(k, B, num_classes)`` of every net.

        ``x``: ``(B, in_channels, H, W)``, the same images for all nets, or
        ``(k, B, in_channels, H, W)``, one batch per net. With ``return_hidden=True``
        also returns a list with the input of each convolutional layer's activation,
        ``(k, B, width_j, H_j, W_j)`` (after the norm when ``norm``).
        """
        shared = _check_input(x, self.k, (self.in_channels, "H", "W"))
        if not shared:  # net i's channels become block i of k * in_channels channels
            x = x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])
        if self.training and self.norm == "bn":
            self.num_batches_tracked += 1
        act = _ACTIVATION_FNS[self.activation]
        hidden, biases, h = [], iter(self.conv_biases), x
        for j, weight in enumerate(self.conv_weights):
            # the first layer of nets that share their input is one ordinary convolution
            groups = 1 if (shared and j == 0) else self.k
            h = F.conv2d(h, weight.reshape(-1, *weight.shape[2:]),
                         None if self.norm else next(biases).reshape(-1),
                         padding=1, groups=groups)
            if j == 0:  # channels last (later layers follow): pooling and BN over k * width
                h = h.contiguous(memory_format=torch.channels_last)  # channels vectorise
            if self.norm == "gn":
                h = F.group_norm(h, self.k * self.groups, self.gamma[j].reshape(-1),
                                 self.beta[j].reshape(-1), self.eps)
            elif self.norm:
                running_mean, running_var = _running(self, j)
                h = F.batch_norm(h, running_mean.view(-1), running_var.view(-1),
                                 self.gamma[j].reshape(-1), self.beta[j].reshape(-1),
                                 self.training, self.momentum, self.eps)
            hidden.append(h.view(h.shape[0], self.k, -1, *h.shape[2:]).transpose(0, 1))
            h = F.max_pool2d(act(h), 2)
        h = F.adaptive_avg_pool2d(h, 1).view(h.shape[0], self.k, -1).transpose(0, 1)
        if self.training and self.dropout > 0:
            h = h * self._dropout_noise(h)
        logits = torch.baddbmm(self.biases[0].unsqueeze(1), h, self.weights[0].transpose(1, 2))
        return (logits, hidden) if return_hidden else logits

    def _dropout_noise(self, h):
        """Dropout's scaled mask for ``h: (k, B, C)``: net ``i``'s drawn as ``F.dropout``
        draws it on the CPU (``bernoulli_(1 - p)`` on a ``(B, C)`` tensor), from its own
        generator."""
        keep = 1.0 - self.dropout
        noise = torch.stack([torch.empty(h.shape[1:], dtype=h.dtype).bernoulli_(keep, generator=g)
                             for g in self._dropout_generators])
        return noise.div_(keep).to(h.device)

    @torch.no_grad()
    def net(self, i):
        """Net ``i`` as a new ``small_cnn`` ``nn.Sequential`` (a copy, on this device
        and in this dtype), with its parameters, buffers and this stack's mode."""
        with torch.random.fork_rng(devices=[]):
            net = self._make_net(i)
        net.to(self.weights[0].device, self.weights[0].dtype)
        convs = [m for m in net if isinstance(m, nn.Conv2d)]
        biases = iter(self.conv_biases)
        for conv, weight in zip(convs, self.conv_weights, strict=True):
            conv.weight.copy_(weight[i])
            if conv.bias is not None:
                conv.bias.copy_(next(biases)[i])
        if self.norm == "gn":
            for j, gn in enumerate(m for m in net if isinstance(m, nn.GroupNorm)):
                gn.weight.copy_(self.gamma[j][i])
                gn.bias.copy_(self.beta[j][i])
        _copy_norms(self, [m for m in net if isinstance(m, nn.BatchNorm2d)], i)
        net[-1].weight.copy_(self.weights[0][i])
        net[-1].bias.copy_(self.biases[0][i])
        return net.train(self.training)

    def extra_repr(self):
        groups = f", groups={self.groups}" if self.norm == "gn" else ""
        return (f"k={self.k}, widths={self.widths}, norm={self.norm!r}{groups}, "
                f"activation={self.activation!r}, dropout={self.dropout}")


def _running(model, j):
    return getattr(model, f"running_mean_{j}"), getattr(model, f"running_var_{j}")


def _copy_norms(model, norms, i):
    """Copy net ``i``'s BN parameters and statistics from the stack into ``norms``."""
    for j, bn in enumerate(norms):
        bn.weight.copy_(model.gamma[j][i])
        bn.bias.copy_(model.beta[j][i])
        running_mean, running_var = _running(model, j)
        bn.running_mean.copy_(running_mean[i])
        bn.running_var.copy_(running_var[i])
        bn.num_batches_tracked.copy_(model.num_batches_tracked[i])


class StackedSGD:
    """SGD for stacked parameters, with a learning rate, momentum and weight decay per net.

    ``params``: tensors whose first dimension is ``k`` (e.g. ``model.parameters()`` of a
    ``StackedMLP``). ``lr``, ``momentum``, ``weight_decay``: a number or ``k`` numbers.
    Net ``i`` is updated as ``torch.optim.SGD`` (no dampening, no Nesterov) updates it
    alone: ``d = grad + weight_decay * p``; ``buf = momentum * buf + d`` (``buf = d`` on
    the first step); ``p -= lr * buf``.

    ``freeze(nets)`` stops updating some nets for good (a diverged net); their parameters
    keep their values even when their gradients are not finite.
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError("StackedSGD got no parameters")
        ks = {p.shape[0] if p.dim() else None for p in self.params}
        if len(ks) != 1 or None in ks:
            raise ValueError(f"every parameter must have the number of nets k as its first "
                             f"dimension, got first dimensions {sorted(map(str, ks))}")
        self.k = ks.pop()
        self.device = self.params[0].device
        self.momentum = _per_net(momentum, self.k, "momentum")
        self.weight_decay = _per_net(weight_decay, self.k, "weight_decay")
        if (self.momentum < 0).any() or (self.weight_decay < 0).any():
            raise ValueError("momentum and weight_decay must be >= 0")
        self.dtype = self.params[0].dtype
        self._momentum = self.momentum.to(self.device, self.dtype)
        self._weight_decay = self.weight_decay.to(self.device, self.dtype)
        self._decay = bool((self.weight_decay > 0).any())  # else skip that term
        self.buffers = ([torch.zeros_like(p) for p in self.params]
                        if (self.momentum > 0).any() else None)
        self.active = torch.ones(self.k, dtype=torch.bool, device=self.device)
        self._any_frozen = False
        self.set_lr(lr)

    def set_lr(self, lr):
        """Set the learning rates: a number or ``k`` numbers (for schedules)."""
        self.lr = _per_net(lr, self.k, "lr")
        if (self.lr < 0).any() or not torch.isfinite(self.lr).all():
            raise ValueError(f"learning rates must be finite and >= 0, got {self.lr.tolist()}")
        # in the parameters' precision, like the lr that torch.optim.SGD passes its kernels
        self._lr = self.lr.to(self.device, self.dtype)

    def freeze(self, nets):
        """Stop updating ``nets`` (a boolean mask ``(k,)`` or indices) from now on."""
        mask = torch.zeros(self.k, dtype=torch.bool, device=self.device)
        mask[torch.as_tensor(nets, device=self.device)] = True
        self.active &= ~mask
        self._any_frozen = not bool(self.active.all())

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        for j, p in enumerate(self.params):
            if p.grad is None:
                continue
            shape = (self.k,) + (1,) * (p.dim() - 1)  # broadcast a (k,) vector over p
            d = p.grad
            if self._decay:
                d = d.addcmul(self._weight_decay.view(shape), p)
            if self.buffers is not None:
                buf, momentum = self.buffers[j], self._momentum.view(shape)
                if self._any_frozen:
                    buf.copy_(torch.where(self.active.view(shape), buf * momentum + d, buf))
                else:
                    buf.mul_(momentum).add_(d)
                d = buf
            if self._any_frozen:  # where, not lr=0: 0 * nan would still be nan
                p.sub_(torch.where(self.active.view(shape), self._lr.view(shape) * d, 0.0))
            else:
                p.addcmul_(self._lr.view(shape), d, value=-1.0)


class _IndexStream:
    """The mini-batch indices that ``bnutils.data.batches`` draws, for several seeds.

    ``next()`` returns ``(len(seeds), batch_size)`` indices into the data: row ``j`` is
    the batch that ``batches(x, y, batch_size, seed=seeds[j])`` yields at this step
    (a new permutation from the seed's generator each epoch, the last partial batch
    dropped).
    """

    def __init__(self, n, batch_size, seeds, device):
        if batch_size < 1 or batch_size > n:
            raise ValueError(f"batch_size must be between 1 and {n}, got {batch_size}")
        self.n, self.batch_size, self.device = n, batch_size, device
        self.generators = [make_generator(s) for s in seeds]
        self.per_epoch = n // batch_size
        self.position = self.per_epoch  # start with a fresh epoch

    def __next__(self):
        if self.position == self.per_epoch:
            perms = [torch.randperm(self.n, generator=g) for g in self.generators]
            stop = self.per_epoch * self.batch_size
            self.epoch = torch.stack(perms)[:, :stop].reshape(
                len(perms), self.per_epoch, self.batch_size).to(self.device)
            self.position = 0
        self.position += 1
        return self.epoch[:, self.position - 1]


def _data_seeds(data_seeds, model):
    if data_seeds is None:
        return list(model.seeds)
    if isinstance(data_seeds, int | np.integer):
        return [int(data_seeds)] * model.k
    seeds = [int(s) for s in data_seeds]
    if len(seeds) != model.k:
        raise ValueError(f"data_seeds must be None, one int or k={model.k} ints, "
                         f"got {len(seeds)}")
    return seeds


def per_net_loss(logits, y):
    """Mean cross-entropy of each net: ``logits (k, B, C)``, ``y (B,)`` or ``(k, B)`` ->
    ``(k,)``."""
    k, n, _ = logits.shape
    # cross_entropy's (N, C, d) form: class scores along dim 1, no copy of the logits
    return F.cross_entropy(logits.transpose(1, 2), y.expand(k, n), reduction="none").mean(1)


def train_stacked(model, x, y, steps, lr, batch_size=60, data_seeds=None, momentum=0.0,
                  weight_decay=0.0, schedule=None, log_every=None, callback=None,
                  progress=True, max_loss=None, desc="training"):
    """Train the ``k`` nets of ``model`` with cross-entropy and SGD for ``steps`` steps.

    ``x: (N, ...)``, ``y: (N,)``: the training set, on the model's device.
    ``lr``, ``momentum``, ``weight_decay``: a number or ``k`` numbers (``StackedSGD``).
    ``data_seeds``: net ``i`` sees the mini-batches that
    ``bnutils.train.train(..., batch_size=batch_size, seed=data_seeds[i])`` draws;
    ``None`` uses the nets' init ``seeds`` (as ``figure1`` seeds both with one number),
    one int gives every net the same batches. Nets with equal data seeds share one
    batch (faster).
    ``schedule``: ``t -> factor`` (a number or ``k`` numbers); update ``t = 1, 2, ...``
    uses ``lr * schedule(t - 1)``, as ``torch.optim.lr_scheduler.LambdaLR(opt,
    schedule)`` stepped after every update does.
    ``max_loss``: a loss above it counts as diverged too (``None``: only non-finite).

    A net whose mini-batch loss is not finite (or exceeds ``max_loss``) is flagged and
    frozen before that step's update, as ``train.train(..., max_loss=...)`` stops:
    its parameters and running statistics stay as they were from then on, and its loss
    is masked out of the summed loss that is backpropagated, which stays finite. The
    other nets train on unchanged: each net's gradient depends on its own loss only.

    Every ``log_every`` steps and after the last (only after the last if ``None``),
    ``callback(step, model)`` is called with the model in training mode. Returns a dict
    of NumPy arrays, ``n`` logs: ``step (n,)``; ``loss (n, k)``, the mean mini-batch loss
    since the previous log (``nan`` once a net is frozen); ``losses (steps, k)``, every
    mini-batch loss; ``diverged (k,)`` bool; ``diverged_step (k,)``, the step whose loss
    diverged (``-1``: never). If ``callback`` returns a dict, each of its keys becomes an
    array ``(n, ...)`` of the returned values; anything else is collected in a list under
    ``"callback"``.

    A replay of the first steps (``bnutils.config.step_limit``) stops the loop early; the
    run then trains on to its next log (its last step, or the cut where it logs only at
    the end), so that its logs are the first ones of the whole run, and ``losses`` holds
    the steps it took.
    """
    k = model.k
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if len(x) != len(y):
        raise ValueError(f"x and y must hold as many examples, got {len(x)} and {len(y)}")
    seeds = _data_seeds(data_seeds, model)
    unique = sorted(set(seeds))
    stream = _IndexStream(len(x), batch_size, unique, x.device)
    # the row of the stream's output that each net uses; None: all nets share one batch
    rows = (None if len(unique) == 1
            else torch.tensor([unique.index(s) for s in seeds], device=x.device))
    optimizer = StackedSGD(model.parameters(), lr, momentum, weight_decay)
    base_lr = optimizer.lr.clone()
    state = [b for b in model.buffers() if b.dim() and b.shape[0] == k]  # BN statistics

    losses = torch.full((steps, k), math.nan, device=x.device)
    diverged_step = torch.full((k,), -1, dtype=torch.long)
    logged, returned = [], []

    def update(step):
        if schedule is not None:
            optimizer.set_lr(base_lr * _per_net(schedule(step - 1), k, "schedule"))
        idx = next(stream)
        idx = idx[0] if rows is None else idx[rows]
        frozen = ~optimizer.active if optimizer._any_frozen else None
        saved = [b.clone() for b in state] if frozen is not None else None

        loss = per_net_loss(model(x[idx]), y[idx])
        losses[step - 1] = torch.where(optimizer.active, loss.detach(), math.nan)
        ok = torch.isfinite(loss)
        if max_loss is not None:
            ok &= loss <= max_loss
        bad = optimizer.active & ~ok
        if bad.any():
            diverged_step[bad.cpu()] = step
            optimizer.freeze(bad)

        optimizer.zero_grad()
        # each net's gradient depends on its own loss only; masking the frozen ones keeps
        # the sum finite (nan + x = nan) for anything that reads it
        torch.where(optimizer.active, loss, 0.0).sum().backward()
        optimizer.step()
        if saved is not None:  # frozen nets keep their statistics (after backward: it uses them)
            for b, old in zip(state, saved, strict=True):
                b.copy_(torch.where(frozen.view((k,) + (1,) * (b.dim() - 1)), old, b))

    def log(step):
        logged.append(step)
        if callback is not None:
            returned.append(callback(step, model))
            model.train()

    def logs_at(step):
        return step == steps or bool(log_every and step % log_every == 0)

    model.train()
    done = 0
    for done in progress_bar(range(1, steps + 1), desc=desc, disable=not progress,
                             mininterval=1):
        update(done)
        if logs_at(done):
            log(done)
    if done < steps and done not in logged:  # cut by a replay, between two logs
        while log_every and (done == 0 or not logs_at(done)):  # on to the next log
            done += 1
            update(done)
        log(done)  # (the cut itself where the run logs only at its end)

    losses = losses[:done].cpu().numpy()
    edges = [0, *logged]
    out = {
        "step": np.array(logged, dtype=np.int64),
        "loss": np.stack([losses[a:b].mean(0) for a, b in zip(edges[:-1], edges[1:],
                                                                strict=True)]),
        "losses": losses,
        "diverged": diverged_step.numpy() >= 0,
        "diverged_step": diverged_step.numpy(),
    }
    if returned and all(isinstance(r, dict) for r in returned):
        for key in returned[0]:
            if key in out:
                raise ValueError(f"the callback returned the key {key!r}, which "
                                 f"train_stacked's own logs use; rename it")
            out[key] = np.stack([_numpy(r[key]) for r in returned])
    elif callback is not None:
        out["callback"] = returned
    return out


def _numpy(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


@torch.no_grad()
def accuracy(model, x, y, batch_size=10_000):
    """Fraction of ``x`` that each net (in eval mode) classifies as ``y``: ``(k,)`` NumPy.

    ``x: (N, ...)`` shared by all nets, ``y: (N,)``. The model's mode is restored.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros(model.k, dtype=torch.long, device=x.device)
    for i in range(0, len(x), batch_size):
        correct += (model(x[i:i + batch_size]).argmax(2) == y[i:i + batch_size]).sum(1)
    model.train(was_training)
    return correct.cpu().numpy() / len(x)


__all__ = ["StackedCNN", "StackedMLP", "StackedSGD", "accuracy", "per_net_loss", "train_stacked"]
