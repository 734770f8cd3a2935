"""Seeded stratified train / validation splits of CIFAR-100 (the official test set is the test split)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hiercls.data.loading import Cifar100

__all__ = ["Split", "Splits", "make_splits"]


@dataclass(frozen=True, eq=False)
class Split:
    """One split of images with labels.

    Attributes:
        images: uint8 [N, 3, 32, 32].
        labels: int64 [N].
        indices: int64 [N], positions of the images in the source set (official train set for
            train/val splits, official test set for the test split); None when unknown.
    """

    images: Tensor
    labels: Tensor
    indices: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class Splits:
    """Train / validation / test splits; ``val`` is None when ``val_size=0`` (final retraining)."""

    train: Split
    val: Split | None
    test: Split



def _stratified_pick(labels: Tensor, total: int, generator: torch.Generator) -> Tensor:
    """Sorted positions of a seeded stratified sample of ``total`` items of ``labels``.

    Class quotas are proportional to class frequency (largest-remainder rounding, exact integer
    arithmetic; ties between equal remainders broken by the generator), so balanced classes get
    ``total // C`` or ``total // C + 1`` items each.
    """
    classes, counts = torch.unique(labels, return_counts=True)
    n = int(labels.shape[0])
    numer = [total * int(c) for c in counts]
    quotas = [v // n for v in numer]
    short = total - sum(quotas)
    tie_break = torch.randperm(len(classes), generator=generator).tolist()
    order = sorted(range(len(classes)), key=lambda i: (-(numer[i] % n), tie_break[i]))
    for i in order[:short]:
        quotas[i] += 1
    picked = []
    for cls, quota in zip(classes.tolist(), quotas):
        members = torch.nonzero(labels == cls).squeeze(1)
        perm = torch.randperm(members.shape[0], generator=generator)
        picked.append(members[perm[:quota]])
    return torch.sort(torch.cat(picked)).values


def make_splits(
    data: Cifar100,
    *,
    val_size: int = 5000,
    seed: int = 0,
    max_train_samples: int | None = None,
) -> Splits:
    """Seeded stratified train/validation split of the official train set, plus the official test set.

    The validation split takes ``val_size`` images from the official training set, stratified by
    class: quotas are proportional to class frequency (CIFAR-100 is balanced, so 5,000 gives exactly
    50 per class; a ``val_size`` that is not a multiple of 100 gives ``val_size // 100`` or one more
    per class, the classes getting the extra image chosen by the seed). ``max_train_samples`` then
    takes a stratified subset of the remaining training images in the same way; it never changes the
    validation split. All randomness comes from one ``torch.Generator`` seeded with ``seed``; the same
    inputs always give the same splits. Images inside each split keep their source order.

    Args:
        data: the loaded data set.
        val_size: number of validation images; 0 gives ``val=None`` (train on all 50,000).
        seed: split seed.
        max_train_samples: optional size of a stratified subset of the training split.

    Returns:
        :class:`Splits`; ``Split.indices`` holds positions in the official train (train, val) or
        test (test) set.

    Raises:
        ValueError: ``val_size`` < 0 or >= the number of training images; ``max_train_samples``
            < 1 or larger than the training split.
    """
    n = int(data.train_labels.shape[0])
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 <= val_size < n:
        raise ValueError(
            f"val_size must be an integer in [0, {n}) (the training set has {n} images), got {val_size!r}"
        )
    generator = torch.Generator().manual_seed(int(seed))
    all_idx = torch.arange(n)
    if val_size > 0:
        val_idx = _stratified_pick(data.train_labels, val_size, generator)
        keep = torch.ones(n, dtype=torch.bool)
        keep[val_idx] = False
        train_idx = all_idx[keep]
    else:
        val_idx, train_idx = None, all_idx
    if max_train_samples is not None:
        available = int(train_idx.shape[0])
        if isinstance(max_train_samples, bool) or not isinstance(max_train_samples, int) or not (
            1 <= max_train_samples <= available
        ):
            raise ValueError(
                f"max_train_samples must be an integer in [1, {available}] (the training split after "
                f"removing {val_size} validation images), got {max_train_samples!r}"
            )
        if max_train_samples < available:
            sub = _stratified_pick(data.train_labels[train_idx], max_train_samples, generator)
            train_idx = train_idx[sub]

    def take(images: Tensor, labels: Tensor, idx: Tensor) -> Split:
        return Split(images=images[idx], labels=labels[idx], indices=idx)

    n_test = int(data.test_labels.shape[0])
    return Splits(
        train=take(data.train_images, data.train_labels, train_idx),
        val=None if val_idx is None else take(data.train_images, data.train_labels, val_idx),
        test=Split(images=data.test_images, labels=data.test_labels, indices=torch.arange(n_test)),
    )


