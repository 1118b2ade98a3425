"""Which samples train a probe and which test it: hold-out, cross-fitting, few-shot subsets.

- split names: datasets name their parts in many ways (`validation`, `valid`,
  `dev`, `testing`, ...); `normalize_split` maps the usual names onto train /
  val / test and refuses any other name loudly, so no sample silently drops
  out of both sides.
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

#: The three split names probes use, and the names datasets give them (compared case-insensitively).
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training", "trn"),
    "val": ("val", "valid", "validation", "dev", "development"),
    "test": ("test", "testing", "tst"),
}
_CANONICAL = {alias: name for name, aliases in SPLIT_ALIASES.items() for alias in aliases}


def normalize_split(name: str | None, *, where: str = "") -> str | None:
    """"train", "val" or "test" for any usual split name (None or "" for a sample without one);
    an unknown name is a ProbeError naming it, `where` it comes from and the accepted names."""
    if name is None or not str(name).strip():
        return None
    canonical = _CANONICAL.get(str(name).strip().lower())
    if canonical is None:
        known = ", ".join(f"{k} ({'/'.join(v)})" for k, v in SPLIT_ALIASES.items())
        raise ProbeError(f"unknown split name {name!r}{f' in {where}' if where else ''}; probes know {known}. "
                         "Rename the split (or leave it empty to let the probe split the samples)")  # fmt: skip
    return canonical


def normalize_splits(names: list[str | None], *, where: str = "") -> list[str | None]:
    """`normalize_split` of every name (each distinct name checked once)."""
    table = {name: normalize_split(name, where=where) for name in set(names)}
    return [table[name] for name in names]


@dataclass(frozen=True)
class Fold:
    train: np.ndarray  # sample indices
    test: np.ndarray


def holdout_folds(targets: np.ndarray, splits: list[str | None], *, test_fraction: float, seed: int) -> list[Fold]:
    """One fold: the dataset's split if it names both train and test samples, else a stratified one."""
    split = np.array([s or "" for s in normalize_splits(splits)])
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
