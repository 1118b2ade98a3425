"""Which samples train a probe and which test it: hold-out, cross-fitting, few-shot subsets.

- hold-out: the dataset's own train/test split when it has one (its `val`
  samples join the training pool; probes carve their own validation split),
  else a seeded stratified split.
- cross-fitting (`crossfit_folds`): k stratified folds, each sample predicted
  once by a probe trained on the other folds. On a small benchmark (EuroSAT
  here has 216 chips) this puts every sample in the test set instead of 30%,
  which narrows the confidence interval by about sqrt(1 / 0.3) ~ 1.8x.
- few-shot: n samples per class drawn (seeded) from a fold's training part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from spacenit.evaluation.errors import ProbeError

#: n_train value that means "every training sample".
ALL = -1


@dataclass(frozen=True)
class Fold:
    train: np.ndarray  # sample indices
    test: np.ndarray


def holdout_folds(targets: np.ndarray, splits: list[str | None], *, test_fraction: float, seed: int) -> list[Fold]:
    """One fold: the dataset's split if it names both train and test samples, else a stratified one."""
    split = np.array([s or "" for s in splits])
    train, test = np.isin(split, ["train", "val"]), split == "test"
    if train.any() and test.any():
        return [Fold(np.flatnonzero(train), np.flatnonzero(test))]
    idx = np.arange(len(targets))
    stratify = targets if targets.ndim == 1 else None
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    return [Fold(np.sort(tr), np.sort(te))]


def crossfit_folds(targets: np.ndarray, *, num_folds: int, seed: int) -> list[Fold]:
    """`num_folds` folds whose test parts partition the samples (stratified for single-label)."""
    idx = np.arange(len(targets))
    if targets.ndim == 1:
        smallest = np.bincount(targets)[np.bincount(targets) > 0].min()
        if smallest < num_folds:
            raise ProbeError(f"{num_folds}-fold cross-fitting needs {num_folds} samples of every class; the rarest has {smallest}")
        splitter = StratifiedKFold(num_folds, shuffle=True, random_state=seed).split(idx, targets)
    else:
        splitter = KFold(num_folds, shuffle=True, random_state=seed).split(idx)
    return [Fold(tr, te) for tr, te in splitter]


def few_shot_subset(train: np.ndarray, targets: np.ndarray, n_per_class: int, seed: int) -> np.ndarray:
    """`n_per_class` training samples of every class (all of a class when it has fewer).

    For multi-label truth, samples are added label by label (in a seeded
    order) until every label that occurs has `n_per_class` samples carrying it.
    """
    if n_per_class == ALL:
        return train
    rng = np.random.default_rng(seed)
    if targets.ndim == 1:
        picked = [rng.permutation(train[targets[train] == c])[:n_per_class] for c in np.unique(targets[train])]
        return np.sort(np.concatenate(picked))
    chosen: list[int] = []
    y = targets.astype(bool)
    for c in rng.permutation(y.shape[1]):
        have = int(y[chosen, c].sum()) if chosen else 0
        candidates = [i for i in rng.permutation(train[y[train, c]]) if i not in chosen]
        chosen.extend(candidates[: max(n_per_class - have, 0)])
    return np.sort(np.array(chosen, dtype=np.int64))
