"""Barz & Denzler class embeddings: a tiny tree by hand, every built-in tree's Gram matrix, refusals."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hiercls.embeddings import EmbeddingError, barzdenzler_embeddings, similarities
from hiercls.hierarchy import BUILTIN_HIERARCHIES, Hierarchy, load_hierarchy

TINY = Hierarchy(
    [("root", "A"), ("root", "B"), ("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2")],
    ["a1", "a2", "b1", "b2"], name="tiny",
)


def test_tiny_tree_by_hand():
    phi = barzdenzler_embeddings(TINY)
    assert phi.dtype == torch.float64 and phi.shape == (4, 4)
    # d = 1 inside A and B, 2 across (tree height 2): similarities 1 - d/2
    expected = torch.tensor([[1, .5, 0, 0], [.5, 1, 0, 0], [0, 0, 1, .5], [0, 0, .5, 1]], dtype=torch.float64)
    assert torch.allclose(phi @ phi.T, expected, rtol=0, atol=1e-12)
    assert torch.allclose(phi.norm(dim=1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
    # the incremental construction by hand: phi_0 = e_0, phi_1 = (1/2, sqrt(3)/2, 0, 0), phi_2 = e_2,
    # phi_3 = (0, 0, 1/2, sqrt(3)/2)
    r3 = 3**0.5 / 2
    by_hand = torch.tensor([[1, 0, 0, 0], [.5, r3, 0, 0], [0, 0, 1, 0], [0, 0, .5, r3]], dtype=torch.float64)
    assert torch.allclose(phi, by_hand, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", BUILTIN_HIERARCHIES)
def test_gram_matrix_of_every_builtin_tree(name):
    h = load_hierarchy(name)
    phi = barzdenzler_embeddings(h)
    assert phi.shape == (100, 100) and phi.dtype == torch.float64
    assert torch.equal(phi, phi.tril())  # class c uses the first c + 1 coordinates only
    expected = 1.0 - h.distances.double() / h.tree_height  # Barz & Denzler: divided by the tree's height
    assert torch.allclose(phi @ phi.T, expected, rtol=0, atol=1e-10)
    assert torch.allclose(similarities(h), expected, rtol=0, atol=0)
    assert (phi.diagonal() > 0).all()


@pytest.mark.parametrize("name", BUILTIN_HIERARCHIES)
def test_builtin_trees_keep_the_embeddings_of_the_old_largest_distance_formula(name):
    # Before issue 22 the similarities were 1 - D / (largest class distance); every built-in tree has a
    # root with several children, so that equals the tree's height and nothing changes for them.
    h = load_hierarchy(name)
    heights = {"cifar100-l5": 5, "cifar100-coarse": 2, "cifar100-wordnet": 8, "cifar100-wordnet-otter": 8}
    assert h.tree_height == int(h.distances.max()) == heights[name]
    old = 1.0 - h.distances.double() / int(h.distances.max())
    assert torch.equal(similarities(h), old)
    # the old embeddings, computed independently: the construction is the lower Cholesky factor of S
    assert torch.allclose(barzdenzler_embeddings(h), torch.linalg.cholesky(old), rtol=0, atol=1e-12)


# root -> R -> {A -> {a1, a2}, b}: the root has a single child, so the tree's height (3) exceeds the largest
# class distance (2), as in the original fork's pickled CIFAR-100 tree (height 9, largest distance 8).
SINGLE_CHILD_ROOT = [("root", "R"), ("R", "A"), ("R", "b"), ("A", "a1"), ("A", "a2")]


def test_single_child_root_divides_by_the_tree_height_by_hand():
    h = Hierarchy(SINGLE_CHILD_ROOT, ["a1", "a2", "b"], name="single-child-root")
    assert (h.tree_height, h.max_distance) == (3, 2)
    # d(a1, a2) = height(A) = 1, d(a*, b) = height(R) = 2: s = 1 - d/3 (the old 1 - d/2 gave 1/2 and 0)
    expected = torch.tensor([[1, 2 / 3, 1 / 3], [2 / 3, 1, 1 / 3], [1 / 3, 1 / 3, 1]], dtype=torch.float64)
    assert torch.allclose(similarities(h), expected, rtol=0, atol=1e-15)
    # phi_a1 = e0; phi_a2 = (2/3, sqrt(5)/3, 0); phi_b: x0 = 1/3, (2/3)(1/3) + (sqrt(5)/3) x1 = 1/3 gives
    # x1 = 1/(3 sqrt(5)), x2 = sqrt(1 - 1/9 - 1/45) = sqrt(13/15)
    r5 = 5**0.5
    by_hand = torch.tensor([[1, 0, 0], [2 / 3, r5 / 3, 0], [1 / 3, 1 / (3 * r5), (13 / 15) ** 0.5]],
                           dtype=torch.float64)
    phi = barzdenzler_embeddings(h)
    assert torch.allclose(phi, by_hand, rtol=0, atol=1e-15)
    # the old normaliser (largest distance 2) gave a2 = (1/2, sqrt(3)/2, 0) and b orthogonal to both
    old = torch.tensor([[1, 0, 0], [1 / 2, 3**0.5 / 2, 0], [0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(torch.linalg.cholesky(1 - h.distances.double() / 2), old, rtol=0, atol=1e-15)
    assert not torch.allclose(phi, old, atol=1e-3)
    # the same tree without the single-child root (height 2, same name, same distances): its own entry
    # in the cache, with the old numbers, which are the paper's for that tree
    flat = Hierarchy(SINGLE_CHILD_ROOT[1:], ["a1", "a2", "b"], name="single-child-root")
    assert torch.equal(flat.distances, h.distances) and flat.tree_height == 2
    assert torch.allclose(barzdenzler_embeddings(flat), old, rtol=0, atol=1e-15)
    assert torch.allclose(barzdenzler_embeddings(h), by_hand, rtol=0, atol=1e-15)


def test_deterministic_cached_and_copied():
    h = load_hierarchy("cifar100-wordnet")
    first = barzdenzler_embeddings(h)
    first.zero_()  # a caller's change never reaches the cache
    again = barzdenzler_embeddings(load_hierarchy("cifar100-wordnet"))
    assert torch.equal(again, barzdenzler_embeddings(h)) and again.abs().sum() > 0
    otter = barzdenzler_embeddings(load_hierarchy("cifar100-wordnet-otter"))
    assert not torch.equal(otter, again)  # cached per tree, not per name family
    i, j = h.classes.index("otter"), h.classes.index("seal")
    assert float(otter[i] @ otter[j]) == pytest.approx(1 - 2 / 8, abs=1e-12)
    assert float(again[i] @ again[j]) == pytest.approx(1 - 5 / 8, abs=1e-12)


def test_two_classes_at_distance_zero_are_refused():
    distances = torch.tensor([[0, 1, 2], [1, 0, 0], [2, 0, 0]])  # b and c at distance 0
    fake = SimpleNamespace(name="flat", classes=["a", "b", "c"], distances=distances, tree_height=2)
    with pytest.raises(EmbeddingError, match="classes 'b' and 'c' are at distance 0"):
        barzdenzler_embeddings(fake)
    not_a_tree = torch.tensor([[0, 2, 2], [2, 0, 2], [2, 2, 0]])  # all orthogonal: fine
    ok = SimpleNamespace(name="star", classes=["a", "b", "c"], distances=not_a_tree, tree_height=2)
    assert torch.allclose(barzdenzler_embeddings(ok), torch.eye(3, dtype=torch.float64))
    no_ultrametric = torch.tensor([[0, 1, 2], [1, 0, 1], [2, 1, 0]])  # s = [[1,.5,0],[.5,1,.5],[0,.5,1]]: PD
    fine = SimpleNamespace(name="path", classes=["a", "b", "c"], distances=no_ultrametric, tree_height=2)
    assert torch.allclose(barzdenzler_embeddings(fine) @ barzdenzler_embeddings(fine).T,
                          1 - no_ultrametric.double() / 2, atol=1e-12)
    indefinite = torch.tensor([[0, 0, 2], [0, 0, 0], [2, 0, 0]])
    bad = SimpleNamespace(name="bad", classes=["a", "b", "c"], distances=indefinite, tree_height=2)
    with pytest.raises(EmbeddingError, match="'a' and 'b' are at distance 0"):
        barzdenzler_embeddings(bad)
    path = torch.tensor([[0, 1, 4], [1, 0, 1], [4, 1, 0]])  # s = [[1,.75,0],[.75,1,.75],[0,.75,1]]
    worse = SimpleNamespace(name="path4", classes=["a", "b", "c"], distances=path, tree_height=4)
    with pytest.raises(EmbeddingError, match="not positive definite at class 'c'"):
        barzdenzler_embeddings(worse)
    flat = SimpleNamespace(name="no-edges", classes=["a"], distances=torch.zeros(1, 1), tree_height=0)
    with pytest.raises(EmbeddingError, match="'no-edges': the tree has height 0"):
        similarities(flat)
