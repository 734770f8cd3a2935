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
        self._device_distances: torch.Tensor | None = None
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self._ranked: dict[str, list[torch.Tensor]] = {"": [], "crm/": []}
        self._targets: list[torch.Tensor] = []
        self._count = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: its classes ranked by score (top ``max_k``), kept on the logits' device until
        :meth:`compute` (no host synchronisation per batch).

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
        crm = None
        if self.crm:
            crm = crm_scores(logits, self._distances_on(logits.device)).topk(self.max_k, dim=1).indices
        self.update_ranked(logits.float().topk(self.max_k, dim=1).indices, targets, crm)

    def _distances_on(self, device: torch.device) -> torch.Tensor:
        """The LCA distances on ``device``, copied there once (not once per batch)."""
        if self._device_distances is None or self._device_distances.device != device:
            self._device_distances = self.distances.to(device)
        return self._device_distances

    def update_ranked(self, ranked: torch.Tensor, targets: torch.Tensor,
                      crm_ranked: torch.Tensor | None = None) -> None:
        """Add a batch given as rankings instead of scores (saved predictions,
        :mod:`hiercls.evidence`): ``ranked`` and ``crm_ranked`` integer [N, K] class indices best first
        with ``K >= max(ks)`` (and >= 5 for ``top5_error``); ``crm_ranked`` is needed when ``crm``.

        Raises:
            ValueError: on shape mismatch or too few ranked classes.
        """
        need = max(self.ks[-1], 5 if self.num_classes >= 5 else 1)
        for name, r in (("ranked", ranked), ("crm_ranked", crm_ranked if self.crm else ranked)):
            if r is None or r.ndim != 2 or r.shape[0] != targets.shape[0] or r.shape[1] < need:
                shape = None if r is None else tuple(r.shape)
                raise ValueError(f"{name} must be [{targets.shape[0]}, >= {need}] class indices, got {shape}")
        self._ranked[""].append(ranked[:, :need].long())
        if self.crm:
            self._ranked["crm/"].append(crm_ranked[:, :need].long())
        self._targets.append(targets.long())
        self._count += int(targets.shape[0])

    def rankings(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Every sample seen, on the CPU: (ranked LongTensor [N, K], the CRM ranking or None, targets
        LongTensor [N]), with ``K = max(max(ks), 5)`` (at most C)."""
        cat = (lambda parts: torch.cat(parts).cpu()) if self._count else (lambda parts: None)
        crm = cat(self._ranked["crm/"]) if self.crm else None
        return cat(self._ranked[""]), crm, cat(self._targets)

    def per_sample(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Each metric as per-sample terms: ``{key: (terms float64 [N], over)}`` on the CPU, where the
        metric is ``terms.sum() / over.sum()`` with ``over`` the 0/1 top-1 mistakes for
        ``mistake_severity`` and ``hdist_mistakes@k`` (0.0 without mistakes), and None (every sample,
        the metric is the mean of ``terms``) for the others. :meth:`compute` sums exactly these terms, so a
        metric recomputed from saved rankings equals the recorded one bit for bit.

        Raises:
            ValueError: if no sample was seen.
        """
        if self._count == 0:
            raise ValueError("no samples: call update() with at least one sample before compute()")
        ranked, crm, targets = self.rankings()
        out = self._terms("", ranked, targets)
        if crm is not None:
            out.update(self._terms("crm/", crm, targets))
        return out

    def _terms(self, prefix: str, ranked: torch.Tensor, targets: torch.Tensor
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        # ranked: LongTensor [N, K] of class indices, best first; everything in float64 on the CPU
        dist = self.distances.cpu()[targets.unsqueeze(1), ranked].double()  # [N, K]
        wrong = (ranked[:, 0] != targets).double()
        out: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {prefix + "top1_error": (wrong, None)}
        if self.num_classes >= 5:
            out[prefix + "top5_error"] = ((ranked[:, :5] != targets.unsqueeze(1)).all(dim=1).double(), None)
        if self.coarse_labels is not None:
            coarse = self.coarse_labels.cpu()
            out[prefix + "coarse_error"] = ((coarse[ranked[:, 0]] != coarse[targets]).double(), None)
        out[prefix + "mistake_severity"] = (dist[:, 0] * wrong, wrong)
        # every @k quantity for k = 1..K from cumulative sums along the ranking
        kmax = self.ks[-1]
        dist_k = dist[:, :kmax]
        steps = torch.arange(1, kmax + 1, dtype=torch.float64)
        cum_d = dist_k.cumsum(dim=1)  # [N, K]: summed distance of the top k
        hprec = (steps - cum_d / self.d_max) / self.best_sum.cpu()[targets, :kmax]  # hprecision@k
        mean_d = cum_d / steps
        terms = {
            "hdist": (mean_d, False),
            "hdist_top": (dist_k.cummin(dim=1).values, False),
            "hdist_mistakes": (mean_d * wrong.unsqueeze(1), True),
            "hprecision": (hprec, False),
            "mAHP": (hprec.cumsum(dim=1) / steps, False),
        }
        for name, (values, on_mistakes) in terms.items():
            for k in self.ks:
                out[f"{prefix}{name}@{k}"] = (values[:, k - 1], wrong if on_mistakes else None)
        return out

    def compute(self) -> dict[str, float]:
        """Metrics over every sample seen since the last reset (see the module docstring): each the sum
        of its :meth:`per_sample` terms (float64, on the CPU) over its count.

        Raises:
            ValueError: if no sample was seen.
        """
        out: dict[str, float] = {}
        for key, (terms, over) in self.per_sample().items():
            total = float(terms.sum())
            n = self._count if over is None else float(over.sum())
            out[key] = total / n if n else 0.0
        return out

    @property
    def num_samples(self) -> int:
        """Samples seen since the last reset."""
        return self._count

    @property
    def num_mistakes(self) -> int:
        """Top-1 mistakes seen since the last reset."""
        return int(sum(int((r[:, 0] != t).sum()) for r, t in zip(self._ranked[""], self._targets)))


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
