"""Models shared by the chapters."""

from torch import nn

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}
PLACEMENTS = ("before", "after")


def mlp(in_features=784, hidden=(100, 100, 100), out_features=10, activation="sigmoid",
        norm=None, init_std=None, generator=None, placement="before"):
    """A fully connected net: ``[Linear -> (norm) -> activation] * len(hidden) -> Linear``.

    ``norm``: ``None`` or a callable ``num_features -> nn.Module`` such as
    ``nn.BatchNorm1d``, called once per hidden layer, in order. ``placement="before"``
    puts it before the nonlinearity (section 3.2 of the paper), and the linear layer
    before it has no bias because BN's ``beta`` subsumes it; ``"after"`` puts it after,
    ``[Linear -> activation -> norm]``, and the linear layer keeps its bias (nothing
    else could shift the nonlinearity's input; notebook 02 compares the two).
    ``init_std``: draw weights from N(0, init_std^2) and set biases to zero
    (the paper's "small random Gaussian values"); ``None`` keeps PyTorch's default.
    ``generator``: a ``torch.Generator`` for those draws, so that nets with and without
    ``norm`` built from equally seeded generators start from the same weights.
    Input ``x: (N, in_features)``, output logits ``(N, out_features)``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    before = norm is not None and placement == "before"
    layers, width = [], in_features
    for h in hidden:
        layers.append(nn.Linear(width, h, bias=not before))
        if before:
            layers.append(norm(h))
        layers.append(ACTIVATIONS[activation]())
        if norm is not None and not before:
            layers.append(norm(h))
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


def small_cnn(norm=None, activation="relu", dropout=0.0, widths=(8, 16, 32), in_channels=1,
              num_classes=10):
    """A small CNN for 28x28 images: ``[Conv3x3 -> (norm) -> activation -> MaxPool2] * 3``,
    then global average pooling, ``Dropout(dropout)`` and a linear classifier.

    ``norm``: ``None``, ``"bn"`` (``nn.BatchNorm2d``) or a callable
    ``num_channels -> nn.Module``. With a norm, the convolution has no bias: BN subtracts
    the per-channel mean, which removes any constant the bias adds (derived in notebook 06).
    The layout mirrors Inception's ending (pooling, dropout, one linear layer) at a size
    that trains on a CPU in a minute. Input ``x: (N, in_channels, 28, 28)``, output
    logits ``(N, num_classes)``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if norm == "bn":
        norm = nn.BatchNorm2d
    elif norm is not None and not callable(norm):
        raise ValueError(f"norm must be None, 'bn' or a callable, got {norm!r}")
    layers, channels = [], in_channels
    for width in widths:
        layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=norm is None))
        if norm is not None:
            layers.append(norm(width))
        layers += [ACTIVATIONS[activation](), nn.MaxPool2d(2)]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
               nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)
