"""Rebuild ``mnist-subset.npz``: 500 training and 100 test images per class of real MNIST.

Run from the repository root with the full data set available:
``python -m bnutils.resources.make_subset``. The draw is seeded, so the output is the
same file every time; ``*_index`` records each image's position in the original split.
"""

import numpy as np

from bnutils.data import SUBSET_PATH, load_mnist

PER_CLASS = {"train": 500, "test": 100}


def main(seed=2015):
    rng = np.random.default_rng(seed)
    out = {}
    for split, per_class in PER_CLASS.items():
        x, y = load_mnist(split)
        picks = [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)]
        idx = np.sort(np.concatenate(picks))
        out[f"{split}_images"], out[f"{split}_labels"] = x[idx], y[idx]
        out[f"{split}_index"] = idx.astype(np.int32)
    np.savez_compressed(SUBSET_PATH, **out)


if __name__ == "__main__":
    main()
