"""Hierarchical metrics: hand-computed values, a per-sample reference, streaming equality."""

from __future__ import annotations

import math

import pytest
import torch

from hiercls.hierarchy import BUILTIN_HIERARCHIES, Hierarchy, cifar100_superclass_labels, load_hierarchy
from hiercls.metrics import MetricAccumulator, compute_metrics

TINY_EDGES = [("root", "A"), ("A", "a1"), ("A", "a2"), ("root", "B"), ("B", "B1"), ("B1", "b1"),
              ("B1", "b2"), ("root", "c")]
TINY = Hierarchy.from_edges(TINY_EDGES, ["a1", "a2", "b1", "b2", "c"])


def ranked_logits(rankings: list[list[int]], num_classes: int) -> torch.Tensor:
    """Logits whose ranking puts rankings[i][0] first, rankings[i][1] second, ..."""
    logits = torch.zeros(len(rankings), num_classes)
    for i, ranking in enumerate(rankings):
        for pos, cls in enumerate(ranking):
            logits[i, cls] = 10.0 - pos
    return logits


def test_tiny_tree_hand_values() -> None:
    # (true, predicted) = (a1, a2), (b1, a1), (c, c), (b2, b1)
    targets = torch.tensor([0, 2, 4, 3])
    logits = ranked_logits([[1], [0], [4], [2]], 5)
    m = compute_metrics(logits, targets, TINY, ks=(1,))
    assert m["top1_error"] == pytest.approx(0.75)
    assert m["mistake_severity"] == pytest.approx(5 / 3)
    assert m["hdist@1"] == pytest.approx(1.25)
    assert m["hdist_mistakes@1"] == pytest.approx(5 / 3)
    # similarities 1 - d/3: 2/3, 0, 1, 2/3
    assert m["hprecision@1"] == pytest.approx((2 / 3 + 0 + 1 + 2 / 3) / 4)
    assert m["mAHP@1"] == pytest.approx(m["hprecision@1"])


def test_tiny_tree_at_k() -> None:
    # true a1, ranking a2, b1, a1 -> distances 1, 3, 0
    logits = ranked_logits([[1, 2, 0, 3, 4]], 5)
    m = compute_metrics(logits, torch.tensor([0]), TINY, ks=(1, 2, 3), coarse_labels=TINY.coarse_labels(1))
    assert m["hdist@2"] == pytest.approx(2.0)
    assert m["hdist@3"] == pytest.approx(4 / 3)
    assert m["hdist_top@2"] == pytest.approx(1.0) and m["hdist_top@3"] == pytest.approx(0.0)
    assert m["top5_error"] == 0.0
    assert m["coarse_error"] == 0.0  # a2 is in a1's coarse group
    # best sums for a1: sims sorted 1, 2/3, 0 -> 1, 5/3, 5/3 ; got 2/3, 2/3, 5/3
    assert m["hprecision@2"] == pytest.approx((2 / 3) / (5 / 3))
    assert m["hprecision@3"] == pytest.approx(1.0)
    assert m["mAHP@3"] == pytest.approx(((2 / 3) + (2 / 5) + 1.0) / 3)


def test_no_mistakes_gives_zero_severity_not_nan() -> None:
    targets = torch.arange(5)
    m = compute_metrics(ranked_logits([[i] for i in range(5)], 5), targets, TINY, ks=(1, 2))
    assert m["top1_error"] == 0.0 and m["mistake_severity"] == 0.0 and m["hdist_mistakes@2"] == 0.0
    assert all(not math.isnan(v) for v in m.values())


def test_crm_rule_on_hand_example() -> None:
    # p = (0.4 a1, 0, 0.3 b1, 0.3 b2, 0): expected distance of a1 = 0.3*3+0.3*3 = 1.8; of b1 = 1.2+0.3 = 1.5;
    # of b2 = 1.2+0.3 = 1.5; CRM picks b1 or b2 although a1 is the most likely class.
    probs = torch.tensor([[0.4, 1e-9, 0.3, 0.3, 1e-9]])
    m = compute_metrics(probs.log(), torch.tensor([2]), TINY, ks=(1,))
    assert m["top1_error"] == 1.0 and m["mistake_severity"] == 3.0
    assert m["crm/hdist@1"] <= 1.0 and m["crm/mistake_severity"] in (0.0, 1.0)


def reference_metrics(logits, targets, h: Hierarchy, ks, coarse):
    """Straightforward per-sample Python loop over the definitions."""
    d = h.distances.tolist()
    dmax = h.max_distance
    n = len(targets)
    out = {"top1_error": 0.0, "top5_error": 0.0, "coarse_error": 0.0}
    names = ("hdist", "hdist_top", "hdist_mistakes", "hprecision", "mAHP")
    per = {f"{name}@{k}": 0.0 for k in ks for name in names}
    severity, mistakes = 0.0, 0
    for i in range(n):
        t = int(targets[i])
        order = sorted(range(h.num_classes), key=lambda c: -float(logits[i, c]))
        out["top1_error"] += order[0] != t
        out["top5_error"] += t not in order[:5]
        out["coarse_error"] += int(coarse[order[0]]) != int(coarse[t])
        wrong = order[0] != t
        if wrong:
            mistakes += 1
            severity += d[t][order[0]]
        best = sorted((1 - d[t][c] / dmax for c in range(h.num_classes)), reverse=True)
        precs = [sum(1 - d[t][c] / dmax for c in order[:j]) / sum(best[:j]) for j in range(1, max(ks) + 1)]
        for k in ks:
            dists = [d[t][c] for c in order[:k]]
            per[f"hdist@{k}"] += sum(dists) / k
            per[f"hdist_top@{k}"] += min(dists)
            if wrong:
                per[f"hdist_mistakes@{k}"] += sum(dists) / k
            per[f"hprecision@{k}"] += precs[k - 1]
            per[f"mAHP@{k}"] += sum(precs[:k]) / k
    result = {key: v / n for key, v in out.items()}
    result["mistake_severity"] = severity / mistakes if mistakes else 0.0
    for key, v in per.items():
        result[key] = v / mistakes if key.startswith("hdist_mistakes") else v / n
    return result


def random_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random logits [n, 100] and targets [n]."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 100, generator=gen), torch.randint(0, 100, (n,), generator=gen)


@pytest.mark.parametrize("name", BUILTIN_HIERARCHIES)
def test_matches_reference_loop(name: str) -> None:
    h = load_hierarchy(name)
    logits, targets = random_batch(64, seed=0)
    coarse = cifar100_superclass_labels()
    ks = (1, 5, 10, 20)
    got = compute_metrics(logits, targets, h, ks, coarse_labels=coarse)
    want = reference_metrics(logits, targets, h, ks, coarse)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    # CRM keys: the same definitions applied to the CRM ranking.
    scores = -(torch.softmax(logits, 1).double() @ h.distances.double())
    crm_want = reference_metrics(scores, targets, h, ks, coarse)
    for key, value in crm_want.items():
        assert got["crm/" + key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("name", BUILTIN_HIERARCHIES)
def test_hdist1_is_error_times_severity(name: str) -> None:
    h = load_hierarchy(name)
    logits, targets = random_batch(500, seed=1)
    m = compute_metrics(logits, targets, h)
    assert m["hdist@1"] == pytest.approx(m["top1_error"] * m["mistake_severity"], rel=1e-12)
    assert m["crm/hdist@1"] == pytest.approx(m["crm/top1_error"] * m["crm/mistake_severity"], rel=1e-12)


def test_streaming_equals_one_shot() -> None:
    h = load_hierarchy("cifar100-wordnet")
    logits, targets = random_batch(10, seed=2)
    coarse = cifar100_superclass_labels()
    one_shot = compute_metrics(logits, targets, h, coarse_labels=coarse)
    acc = MetricAccumulator(h, coarse_labels=coarse)
    for start in range(0, 10, 4):  # batches of 4, 4, 2
        acc.update(logits[start : start + 4], targets[start : start + 4])
    streamed = acc.compute()
    assert acc.num_samples == 10
    assert streamed.keys() == one_shot.keys()
    for key in one_shot:
        assert streamed[key] == pytest.approx(one_shot[key], abs=1e-12), key
    assert "coarse_error" in streamed and "crm/coarse_error" in streamed


def test_key_set_and_fractions() -> None:
    h = load_hierarchy("cifar100-l5")
    m = compute_metrics(torch.randn(8, 100), torch.randint(0, 100, (8,)), h)
    for k in (1, 5, 10, 20):
        for name in ("hdist", "hdist_top", "hdist_mistakes", "hprecision", "mAHP"):
            assert f"{name}@{k}" in m and f"crm/{name}@{k}" in m
    assert "coarse_error" not in m
    assert 0.0 <= m["top1_error"] <= 1.0 and 0.0 <= m["hprecision@5"] <= 1.0


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"every k must be in 1..5"):
        compute_metrics(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), TINY)
    with pytest.raises(ValueError, match=r"expected logits \[N, 5\]"):
        compute_metrics(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), TINY, ks=(1,))
    with pytest.raises(ValueError, match="no samples"):
        MetricAccumulator(TINY, ks=(1,)).compute()
    with pytest.raises(ValueError, match=r"coarse_labels has shape \(3,\)"):
        MetricAccumulator(TINY, ks=(1,), coarse_labels=torch.zeros(3, dtype=torch.long))
