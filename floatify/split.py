"""A seeded, stratified train/test split: the one the embedded digits and a single image folder are divided by.

The split is scikit-learn's ``train_test_split(..., stratify=labels, random_state=seed)``, the same indices in the
same order, computed with NumPy's legacy ``RandomState`` so that floatify does not need scikit-learn (and SciPy) to
read 1,797 images. Every digits number floatify has published (README, benchmarks/RESULTS.md) was measured on
scikit-learn's split, so reproducing it index for index keeps them valid; ``tests/test_split.py`` checks it against
the indices scikit-learn returned.

Example:
    >>> train, test = stratified_split([0, 0, 0, 0, 1, 1, 1, 1], test_fraction=0.25, seed=0)
    >>> sorted(train + test), len(test)
    ([0, 1, 2, 3, 4, 5, 6, 7], 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["stratified_split"]


def _allocate(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of ``n_draws`` each class gets: proportional shares rounded down, the rest handed out by largest
    remainder, ties broken at random (as scikit-learn's ``_approximate_mode``)."""
    exact = class_counts / class_counts.sum() * n_draws
    given = np.floor(exact)
    missing = int(n_draws - given.sum())
    remainder = exact - given
    for value in np.sort(np.unique(remainder))[::-1]:
        if missing <= 0:
            break
        (tied,) = np.where(remainder == value)
        chosen = rng.choice(tied, size=min(len(tied), missing), replace=False)
        given[chosen] += 1
        missing -= len(chosen)
    return given.astype(int)


def stratified_split(labels: Sequence[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train indices, test indices)`` of ``labels``: ``ceil(test_fraction * n)`` points held out, each class in
    proportion, shuffled with ``seed`` (an int in [0, 2**32 - 1]).

    Raises ValueError when the split is impossible: a class with fewer than 2 points, or fewer held-out (or
    remaining) points than classes.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32 - 1], got {seed!r}")
    classes, inverse = np.unique(np.asarray(labels), return_inverse=True)
    counts = np.bincount(inverse)
    n_test = math.ceil(test_fraction * len(inverse))
    n_train = len(inverse) - n_test
    if counts.min() < 2:
        raise ValueError(f"class {classes[counts.argmin()].item()!r} has {counts.min()} point; every class needs at "
                         f"least 2")
    if min(n_test, n_train) < len(classes):
        raise ValueError(f"holding out {n_test} of {len(inverse)} points leaves {min(n_test, n_train)} on one side, "
                         f"fewer than the {len(classes)} classes")
    by_class = np.split(np.argsort(inverse, kind="mergesort"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    train_counts = _allocate(counts, n_train, rng)
    test_counts = _allocate(counts - train_counts, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for members, n_tr, n_te in zip(by_class, train_counts, test_counts):
        shuffled = members[rng.permutation(len(members))]
        train.extend(shuffled[:n_tr])
        test.extend(shuffled[n_tr:n_tr + n_te])
    return [int(i) for i in rng.permutation(train)], [int(i) for i in rng.permutation(test)]
