"""Rebuild the bundled subsets: 500 training and 100 test images per class of real MNIST
(``mnist-subset.npz``) and of real Fashion-MNIST (``fashion-mnist-subset.npz``).

Run from the repository root with the full data sets available:
``python -m bnutils.resources.make_subset``. The draw is seeded, so the output is the
same file every time; ``*_index`` records each image's position in the original split.
"""

import numpy as np

from bnutils.data import DATASETS, load_mnist, subset_path

PER_CLASS = {"train": 500, "test": 100}


def main(seed=2015):
    for dataset in DATASETS:
        rng = np.random.default_rng(seed)
        out = {}
        for split, per_class in PER_CLASS.items():
            x, y = load_mnist(split, dataset=dataset)
            picks = [rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                     for c in range(10)]
            idx = np.sort(np.concatenate(picks))
            out[f"{split}_images"], out[f"{split}_labels"] = x[idx], y[idx]
            out[f"{split}_index"] = idx.astype(np.int32)
        np.savez_compressed(subset_path(dataset), **out)


if __name__ == "__main__":
    main()
