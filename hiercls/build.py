"""Checks that need the real hierarchy: building the chosen loss and schedule once, before any work.

:meth:`hiercls.config.TrainConfig.validate` checks names, types and declared ranges without loading
anything; :func:`check_config` goes one step further (the hierarchy file, ``coarse_level`` within its
height, ``min_lr`` at most ``lr`` and at most every ``lr`` of the ``value_schedule``: every value of a
run-level parameter with role ``rate``, :data:`~hiercls.registry.TRAINING_PARAMS`, ...) by building the
loss on the hierarchy and evaluating the schedule.
"""

from __future__ import annotations

import dataclasses
import hashlib

from torch import nn

from hiercls.config import TrainConfig, invalid_config
from hiercls.hierarchy import Hierarchy, load_cifar100_hierarchy
from hiercls.losses import build_loss
from hiercls.registry import TRAINING_PARAMS
from hiercls.schedules import learning_rate
from hiercls.wordvectors import class_word_vectors

__all__ = ["Checked", "check_config", "class_embeddings"]


@dataclasses.dataclass(frozen=True)
class Checked:
    """What :func:`check_config` built while checking: the run reuses it (loaded and built once)."""

    hierarchy: Hierarchy
    criterion: nn.Module
    word_vectors_sha256: str | None = None


def class_embeddings(config: TrainConfig, hierarchy: Hierarchy) -> dict:
    """``{"class_embeddings": [C, D] float64}`` (DeViSE: the word vectors of ``config.word_vectors``) for
    :func:`~hiercls.losses.build_loss`, or ``{}`` (the embedding losses then use Barz & Denzler's).

    Raises:
        ValueError: the word-vectors file cannot give every class a vector (names the class and word).
    """
    if not config.devise or config.word_vectors is None:
        return {}
    return {"class_embeddings": class_word_vectors(hierarchy.classes, config.word_vectors)}


def check_config(config: TrainConfig) -> Checked:
    """Validate ``config`` fully: :meth:`~TrainConfig.validate`, then the hierarchy, the loss's and the
    schedule's own checks. Returns the loaded hierarchy and the built loss (on the CPU), which a run
    then uses instead of loading and building them again.

    Raises:
        ConfigError: every problem found, one per line.
    """
    config.validate()
    try:
        hierarchy = load_cifar100_hierarchy(config.hierarchy)
    except ValueError as err:
        raise invalid_config([f"hierarchy {config.hierarchy!r}: {err}"]) from err
    problems = []
    criterion = None
    try:
        embeddings = class_embeddings(config, hierarchy)
    except ValueError as err:  # the word-vectors file (WordVectorError names it)
        raise invalid_config([str(err)]) from err
    digest = None
    if embeddings:
        digest = hashlib.sha256(embeddings["class_embeddings"].contiguous().numpy().tobytes()).hexdigest()
        if config.word_vectors_sha256 is not None and config.word_vectors_sha256 != digest:
            problems.append(
                f"word vectors {config.word_vectors!r} give other class vectors (sha256 {digest[:12]}...) "
                f"than this run recorded ({config.word_vectors_sha256[:12]}...): the file changed since the "
                "run started; restore it, or start a new run without word_vectors_sha256"
            )
    try:
        criterion = build_loss(config.loss, hierarchy, **embeddings, **config.loss_kwargs())
    except ValueError as err:
        problems.append(f"loss {config.loss!r}: {err}")
    if criterion is not None and config.embedding_size is not None \
            and config.embedding_size != criterion.num_outputs:
        source = "word vectors" if config.devise else "Barz & Denzler embedding"
        problems.append(
            f"embedding_size={config.embedding_size} conflicts with the {source}'s {criterion.num_outputs} "
            "dimensions (the size is taken from the embedding: leave embedding_size unset)"
        )
    try:
        learning_rate(config.lr_schedule, 0.0, base_lr=config.lr, epochs=config.epochs,
                      **config.schedule_kwargs())
    except ValueError as err:
        problems.append(f"lr_schedule {config.lr_schedule!r}: {err}")
    rates = [k for k, p in TRAINING_PARAMS.items() if p.role == "rate"]
    for epoch, entry in (config.value_schedule or {}).items():  # each scheduled base rate, likewise
        for key in (k for k in rates if k in entry):
            try:
                learning_rate(config.lr_schedule, 0.0, base_lr=entry[key], epochs=config.epochs,
                              **config.schedule_kwargs())
            except ValueError as err:
                problems.append(f"value_schedule epoch {epoch}: {key}={entry[key]!r} with lr_schedule "
                                f"{config.lr_schedule!r}: {err}")
    if problems:
        raise invalid_config(problems)
    return Checked(hierarchy, criterion, digest)
