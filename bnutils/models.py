"""Models shared by the chapters."""

from torch import nn

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(in_features=784, hidden=(100, 100, 100), out_features=10, activation="sigmoid",
        norm=None, init_std=None, generator=None):
    """A fully connected net: ``[Linear -> (norm) -> activation] * len(hidden) -> Linear``.

    ``norm``: ``None`` or a callable ``num_features -> nn.Module`` such as
    ``nn.BatchNorm1d``; it goes before the nonlinearity (section 3.2 of the paper), and
    the linear layer before it has no bias because BN's ``beta`` subsumes it.
    ``init_std``: draw weights from N(0, init_std^2) and set biases to zero
    (the paper's "small random Gaussian values"); ``None`` keeps PyTorch's default.
    ``generator``: a ``torch.Generator`` for those draws, so that nets with and without
    ``norm`` built from equally seeded generators start from the same weights.
    Input ``x: (N, in_features)``, output logits ``(N, out_features)``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers, width = [], in_features
    for h in hidden:
        layers.append(nn.Linear(width, h, bias=norm is None))
        if norm is not None:
            layers.append(norm(h))
        layers.append(ACTIVATIONS[activation]())
        width = h
    layers.append(nn.Linear(width, out_features))
    net = nn.Sequential(*layers)
    if init_std is not None:
        for m in net.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=init_std, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return net
