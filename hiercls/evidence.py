"""Per-image evidence of a run's validation epochs: the identity of the validation set and the saved
predictions every reported metric can be recomputed from.

* :func:`split_sha256`: ``val_split_sha256``, the SHA-256 of the validation images' sorted positions in
  the official training set (int64 little-endian): two runs validated on the same images have the same
  hash, whatever their seeds.
* ``<run>/val_predictions/epoch_NNNN.npz`` (:func:`save_predictions`, read with :func:`load_predictions`,
  never unpickled): for an epoch, the classes ranked best first for every validation image (``topk``
  uint8 ``[N, K]``, ``K`` = 20, the largest k of :data:`~hiercls.metrics.VAL_KS`), the CRM ranking
  (``crm_topk``, absent for the embedding losses, whose scores are no class distribution), the labels
  (uint8 ``[N]``), the images' positions (int32 ``[N]``), ``val_split_sha256`` and ``epoch``. About 200 KB
  per epoch for 5,000 images. A run keeps the files of its last epoch and of its best epoch by each
  objective it was given (:func:`kept_epochs`); the others are deleted as the run goes.
* :func:`recompute_metrics` gives every ``val_*`` metric of the epoch back from the file exactly (the
  engine computes them from the same rankings, :meth:`~hiercls.metrics.MetricAccumulator.per_sample`);
  :func:`per_image` gives the per-image terms the analysis bootstraps (:mod:`analysis.stats`).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiercls.hierarchy import Hierarchy, cifar100_superclass_labels
from hiercls.metrics import VAL_KS, MetricAccumulator
from hiercls.storage import atomic_write_bytes

__all__ = ["EVIDENCE_DIR", "EvidenceError", "Predictions", "kept_epochs", "load_predictions", "per_image",
           "predictions_path", "prune_predictions", "recompute_metrics", "save_predictions", "saved_epochs",
           "split_sha256"]

EVIDENCE_DIR = "val_predictions"
"""The folder in a run's output folder that holds its saved validation predictions."""
_NAME = re.compile(r"^epoch_(\d{4,})\.npz$")


class EvidenceError(ValueError):
    """A predictions file that is missing, unreadable or not what a run writes (the message names it)."""


def split_sha256(indices: torch.Tensor | np.ndarray | None) -> str | None:
    """``val_split_sha256``: hex SHA-256 of the sorted positions ``indices`` (integer ``[N]``) as int64
    little-endian bytes; None for no validation split."""
    if indices is None:
        return None
    array = np.sort(np.asarray(indices, dtype=np.int64).reshape(-1)).astype("<i8")
    return hashlib.sha256(array.tobytes()).hexdigest()


@dataclass(frozen=True)
class Predictions:
    """One epoch's saved validation predictions (see the module docstring for the shapes)."""

    topk: np.ndarray
    crm_topk: np.ndarray | None
    labels: np.ndarray
    indices: np.ndarray
    val_split_sha256: str
    epoch: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def predictions_path(out_folder: str | Path, epoch: int) -> Path:
    """``<out_folder>/val_predictions/epoch_NNNN.npz`` of ``epoch`` (1-based)."""
    return Path(out_folder) / EVIDENCE_DIR / f"epoch_{int(epoch):04d}.npz"


def save_predictions(out_folder: str | Path, epoch: int, rankings: tuple[torch.Tensor, torch.Tensor | None,
                     torch.Tensor], indices: torch.Tensor, sha256: str) -> Path:
    """Write one epoch's predictions atomically (:func:`hiercls.storage.atomic_write_bytes`).

    Args:
        out_folder: the run's output folder.
        epoch: the epoch (1-based).
        rankings: :meth:`hiercls.metrics.MetricAccumulator.rankings` of the epoch's validation: ranked
            LongTensor ``[N, K]``, the CRM ranking or None, labels LongTensor ``[N]`` (K and the class
            indices below 256).
        indices: the validation images' positions in the official training set, integer ``[N]``, in the
            order they were scored.
        sha256: the split's :func:`split_sha256`.

    Returns:
        the file written.

    Raises:
        StorageError: the write failed (nothing half-written is left).
    """
    ranked, crm, labels = rankings
    arrays: dict[str, Any] = {
        "topk": ranked.numpy().astype(np.uint8), "labels": labels.numpy().astype(np.uint8),
        "indices": np.asarray(indices, dtype=np.int32), "val_split_sha256": np.array(sha256),
        "epoch": np.array(int(epoch), dtype=np.int64),
    }
    if crm is not None:
        arrays["crm_topk"] = crm.numpy().astype(np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = predictions_path(out_folder, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_predictions(path: str | Path) -> Predictions:
    """Read a file :func:`save_predictions` wrote (``allow_pickle=False``: never unpickled).

    Raises:
        EvidenceError: missing, unreadable, or arrays missing or of the wrong shape (one line naming it).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise EvidenceError(f"{str(path)!r} is not a readable predictions file ({err})") from err
    missing = [k for k in ("topk", "labels", "indices", "val_split_sha256", "epoch") if k not in arrays]
    if missing:
        raise EvidenceError(f"{str(path)!r} lacks {', '.join(missing)}: not a predictions file hiercls wrote")
    n = arrays["labels"].shape[0]
    crm = arrays.get("crm_topk")
    shapes_ok = (arrays["topk"].ndim == 2 and arrays["topk"].shape[0] == n and arrays["indices"].shape == (n,)
                 and (crm is None or crm.shape == arrays["topk"].shape))
    if not shapes_ok:
        raise EvidenceError(f"{str(path)!r} holds arrays of inconsistent shapes")
    return Predictions(topk=arrays["topk"], crm_topk=crm, labels=arrays["labels"], indices=arrays["indices"],
                       val_split_sha256=str(arrays["val_split_sha256"]), epoch=int(arrays["epoch"]))


def _accumulator(pred: Predictions, hierarchy: Hierarchy, ks: Sequence[int]) -> MetricAccumulator:
    coarse = cifar100_superclass_labels() if hierarchy.num_classes == 100 else None
    acc = MetricAccumulator(hierarchy, ks, coarse, crm=pred.crm_topk is not None)
    crm = None if pred.crm_topk is None else torch.from_numpy(pred.crm_topk.astype(np.int64))
    labels = torch.from_numpy(pred.labels.astype(np.int64))
    acc.update_ranked(torch.from_numpy(pred.topk.astype(np.int64)), labels, crm)
    return acc


def recompute_metrics(pred: Predictions, hierarchy: Hierarchy, ks: Sequence[int] = VAL_KS
                      ) -> dict[str, float]:
    """Every metric of :func:`hiercls.engine.evaluate` but the loss, from saved predictions, with the
    ``val_`` prefix of an epoch record: equal bit for bit to the record of that epoch. The ``val_crm/``
    keys are NaN when the file has no CRM ranking (as the engine records them for the embedding losses).

    Raises:
        ValueError: a k above the saved ranking's length.
    """
    values = _accumulator(pred, hierarchy, ks).compute()
    if pred.crm_topk is None:
        values.update({f"crm/{k}": math.nan for k in list(values)})
    return {f"val_{k}": v for k, v in values.items()}


def per_image(pred: Predictions, hierarchy: Hierarchy, ks: Sequence[int] = VAL_KS
              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The per-image terms of every metric (``val_`` keys): ``{key: (num, den)}``, float64 ``[N]`` each,
    the metric being ``num.sum() / den.sum()`` (0.0 when ``den`` sums to 0): ``den`` is 1 for every image,
    or the 0/1 top-1 mistakes for ``mistake_severity`` and ``hdist_mistakes@k`` (their mean is over the
    mistakes only; Bertinetto et al. 2020, Sec. 4). What :mod:`analysis.stats` resamples."""
    out = {}
    for key, (terms, over) in _accumulator(pred, hierarchy, ks).per_sample().items():
        den = torch.ones_like(terms) if over is None else over
        out[f"val_{key}"] = (terms.numpy(), den.numpy())
    return out


def kept_epochs(history: Sequence[Mapping[str, Any]],
                objectives: Sequence[Callable[[Mapping[str, Any]], float]]) -> set[int]:
    """The epochs whose predictions a run keeps: its last epoch and, for each objective (a function of a
    record, lower is better), the earliest epoch with the lowest finite value; epochs that went NaN
    never count."""
    ok = [r for r in history if r.get("status") == "ok"]
    keep = {int(ok[-1]["epoch"])} if ok else set()
    for objective in objectives:
        scored = [(float(objective(r)), int(r["epoch"])) for r in ok]
        scored = [(v, e) for v, e in scored if math.isfinite(v)]
        if scored:
            keep.add(min(scored)[1])
    return keep


def prune_predictions(out_folder: str | Path, keep: set[int]) -> None:
    """Delete the saved predictions of every epoch not in ``keep`` (files of another name are left)."""
    folder = Path(out_folder) / EVIDENCE_DIR
    for path in folder.glob("epoch_*.npz") if folder.is_dir() else ():
        match = _NAME.match(path.name)
        if match and int(match.group(1)) not in keep:
            path.unlink(missing_ok=True)


def saved_epochs(out_folder: str | Path) -> list[int]:
    """The epochs with saved predictions in a run folder, ascending."""
    folder = Path(out_folder) / EVIDENCE_DIR
    found = (_NAME.match(p.name) for p in folder.glob("epoch_*.npz")) if folder.is_dir() else ()
    return sorted(int(m.group(1)) for m in found if m)
