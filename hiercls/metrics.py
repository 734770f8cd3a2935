"""Hierarchical classification metrics, vectorised on the logits' device.

All values are fractions (not percent) or distances in LCA-height units (see :mod:`hiercls.hierarchy`).
Definitions:

* ``top1_error``, ``top5_error``: fraction of samples whose true class is not among the top 1 / 5.
* ``coarse_error``: fraction whose top-1 prediction is in another coarse group than the true class.
* ``mistake_severity``: mean LCA distance between true and predicted class over the top-1 mistakes
  only (Bertinetto et al., "Making Better Mistakes", CVPR 2020, Sec. 4); 0.0 when there is no mistake.
* ``hdist@k``: average hierarchical distance@k of Bertinetto et al.: mean over all samples of the mean
  distance between the true class and each of the k best-ranked classes.
* ``hdist_top@k``: mean over samples of the smallest distance among the top k.
* ``hdist_mistakes@k``: as ``hdist@k``, averaged over the top-1 mistakes only (0.0 without mistakes).
* ``hprecision@k``: hierarchical precision@k (after Deng et al., CVPR 2012; Karthik et al., ICLR 2021):
  per sample, the sum of similarities 1 - d/d_max of its top k classes divided by the largest sum any
  k classes reach for its true class; averaged over samples. (The making-better-mistakes code divides
  batch sums by a sum over all classes, which depends on the batch size; we do not.)
* ``mAHP@k``: mean of ``hprecision@j`` over j = 1..k. A class-ranking measure; not comparable with
  Barz & Denzler's image-retrieval mAHP@250.
* ``crm/<key>``: every key above with the classes ranked by the CRM rule of Karthik et al., "No Cost
  Likelihood Manipulation at Test Time for Making Better Mistakes in Deep Networks" (ICLR 2021, eq. 2):
  expected distance sum_j p(j|x) d(k, j), lowest first, with p the softmax of the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hiercls.hierarchy import Hierarchy

__all__ = ["DEFAULT_KS", "TEST_KS", "VAL_KS", "MetricAccumulator", "compute_metrics", "crm_scores"]

VAL_KS = (1, 5, 10, 20)
"""The k of hierarchical distance@k (and top-k) reported every epoch on the validation split."""
TEST_KS = (1, 5, 10, 20, 100)
"""The k on the test set (``final_test_results.json``): the original project's ``topK_to_consider``."""
DEFAULT_KS = VAL_KS


def crm_scores(logits: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Scores that rank classes by the CRM rule (Karthik et al., ICLR 2021, eq. 2).

    Args:
        logits: FloatTensor [N, C].
        distances: LongTensor or FloatTensor [C, C], symmetric LCA distances.

    Returns:
        FloatTensor [N, C]: minus the expected distance sum_j softmax(logits)_j d(k, j); the highest
        score is the CRM prediction. Computed in float32 at least.
    """
    probs = torch.softmax(logits.float(), dim=1)
    return -(probs @ distances.to(device=probs.device, dtype=probs.dtype))


class MetricAccumulator:
    """Streaming version of :func:`compute_metrics`: ``update`` per batch, ``compute`` at the end.

    The result over any split of the samples into batches equals the one-shot result (sums are kept
    per sample in float64), the last partial batch included.

    Args:
        hierarchy: the class hierarchy (C classes).
        ks: the k of every @k metric, each in 1..C.
        coarse_labels: optional LongTensor [C], coarse group of each class, for ``coarse_error``.
        crm: also compute the ``crm/`` keys.

    Raises:
        ValueError: a k outside 1..C, or coarse_labels of the wrong shape.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        ks: Sequence[int] = DEFAULT_KS,
        coarse_labels: torch.Tensor | None = None,
        *,
        crm: bool = True,
    ) -> None:
        c = hierarchy.num_classes
        self.ks = tuple(sorted(set(int(k) for k in ks)))
        bad = [k for k in self.ks if not 1 <= k <= c]
        if bad or not self.ks:
            raise ValueError(f"ks {tuple(ks)!r}: every k must be in 1..{c} (the number of classes)")
        if coarse_labels is not None and tuple(coarse_labels.shape) != (c,):
            raise ValueError(f"coarse_labels has shape {tuple(coarse_labels.shape)}, expected ({c},)")
        self.num_classes = c
        self.max_k = max(self.ks[-1], 5 if c >= 5 else 1)
        self.d_max = max(hierarchy.max_distance, 1)
        self.distances = hierarchy.distances
        self.coarse_labels = coarse_labels
        self.crm = crm
        # best_sum[t, k-1]: the largest sum of similarities 1 - d/d_max that any k classes reach for t.
        sims = 1.0 - hierarchy.distances.double().sort(dim=1).values / self.d_max
        self.best_sum = sims.cumsum(dim=1)
        self._device: torch.device | None = None
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._mistakes = {"": 0, "crm/": 0}

    def _to(self, device: torch.device) -> None:
        if self._device != device:
            self.distances = self.distances.to(device)
            self.best_sum = self.best_sum.to(device)
            if self.coarse_labels is not None:
                self.coarse_labels = self.coarse_labels.to(device)
            self._device = device

    def _add(self, key: str, value: torch.Tensor) -> None:
        # Kept as float64 tensors on the batch's device: no host sync per batch.
        value = value.double()
        self._sums[key] = self._sums[key] + value if key in self._sums else value

    def _update_ranking(self, prefix: str, ranked: torch.Tensor, targets: torch.Tensor) -> None:
        # ranked: LongTensor [N, max_k] of class indices, best first.
        dist = self.distances[targets.unsqueeze(1), ranked].double()  # [N, max_k]
        wrong = ranked[:, 0] != targets
        self._mistakes[prefix] = self._mistakes[prefix] + wrong.sum()
        self._add(prefix + "top1_error", wrong.sum())
        if self.num_classes >= 5:
            self._add(prefix + "top5_error", (ranked[:, :5] != targets.unsqueeze(1)).all(dim=1).sum())
        if self.coarse_labels is not None:
            coarse = self.coarse_labels
            self._add(prefix + "coarse_error", (coarse[ranked[:, 0]] != coarse[targets]).sum())
        self._add(prefix + "mistake_severity", dist[:, 0][wrong].sum())
        # Every @k quantity for k = 1..K at once from cumulative sums along the ranking; sums over the
        # samples are taken before dividing by k, and mAHP's mean over j <= k commutes with that sum.
        kmax = self.ks[-1]
        dist_k = dist[:, :kmax]
        steps = torch.arange(1, kmax + 1, device=dist.device, dtype=dist.dtype)
        cum_d = dist_k.cumsum(dim=1)  # [N, K]: summed distance of the top k
        hprec = (steps - cum_d / self.d_max) / self.best_sum[targets, :kmax]  # hprecision@k per sample
        hprec_total = hprec.sum(dim=0)
        totals = {
            "hdist": cum_d.sum(dim=0) / steps,
            "hdist_top": dist_k.cummin(dim=1).values.sum(dim=0),
            "hdist_mistakes": (wrong.to(dist.dtype) @ cum_d) / steps,
            "hprecision": hprec_total,
            "mAHP": hprec_total.cumsum(dim=0) / steps,
        }
        for name, values in totals.items():
            for k in self.ks:
                self._add(f"{prefix}{name}@{k}", values[k - 1])

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch.

        Args:
            logits: FloatTensor [N, C] (any float dtype; any device).
            targets: LongTensor [N] of class labels in 0..C-1, on the logits' device.

        Raises:
            ValueError: on shape mismatch.
        """
        if logits.ndim != 2 or logits.shape[1] != self.num_classes or targets.shape != logits.shape[:1]:
            raise ValueError(
                f"expected logits [N, {self.num_classes}] and targets [N], got {tuple(logits.shape)} "
                f"and {tuple(targets.shape)}"
            )
        if logits.shape[0] == 0:
            return
        self._to(logits.device)
        targets = targets.long()
        self._update_ranking("", logits.float().topk(self.max_k, dim=1).indices, targets)
        if self.crm:
            scores = crm_scores(logits, self.distances)
            self._update_ranking("crm/", scores.topk(self.max_k, dim=1).indices, targets)
        self._count += logits.shape[0]

    def compute(self) -> dict[str, float]:
        """Metrics over every sample seen since the last reset (see the module docstring).

        Raises:
            ValueError: if no sample was seen.
        """
        if self._count == 0:
            raise ValueError("no samples: call update() with at least one sample before compute()")
        out: dict[str, float] = {}
        mistakes = {prefix: int(n) for prefix, n in self._mistakes.items()}
        for key, total_tensor in self._sums.items():
            total = float(total_tensor)
            prefix = "crm/" if key.startswith("crm/") else ""
            name = key[len(prefix) :]
            if name == "mistake_severity" or name.startswith("hdist_mistakes@"):
                n = mistakes[prefix]
                out[key] = total / n if n else 0.0
            else:
                out[key] = total / self._count
        return out

    @property
    def num_samples(self) -> int:
        """Samples seen since the last reset."""
        return self._count

    @property
    def num_mistakes(self) -> int:
        """Top-1 mistakes seen since the last reset."""
        return int(self._mistakes[""])


def compute_metrics(
    logits: torch.Tensor,
    targets: torch.Tensor,
    hierarchy: Hierarchy,
    ks: Sequence[int] = DEFAULT_KS,
    coarse_labels: torch.Tensor | None = None,
    *,
    crm: bool = True,
) -> dict[str, float]:
    """Hierarchical metrics of a set of predictions (definitions in the module docstring).

    Args:
        logits: FloatTensor [N, C].
        targets: LongTensor [N], labels in 0..C-1.
        hierarchy: the class hierarchy giving the LCA distances.
        ks: the k of the @k metrics, each in 1..C.
        coarse_labels: optional LongTensor [C] of coarse group ids; adds ``coarse_error``.
        crm: also compute the ``crm/`` keys.

    Returns:
        dict of fractions / mean distances: ``top1_error``, ``top5_error`` (C >= 5), ``coarse_error``,
        ``mistake_severity``, ``hdist@k``, ``hdist_top@k``, ``hdist_mistakes@k``, ``hprecision@k``,
        ``mAHP@k`` and the ``crm/`` variants.

    Raises:
        ValueError: shape mismatch, k outside 1..C, or N = 0.
    """
    acc = MetricAccumulator(hierarchy, ks, coarse_labels, crm=crm)
    acc.update(logits, targets)
    return acc.compute()
