"""Class embeddings from a hierarchy: Barz & Denzler's hierarchy-based image embeddings.

Barz & Denzler, "Hierarchy-based Image Embeddings for Semantic Image Retrieval" (WACV 2019), Sec. 3.1
and their ``compute_class_embedding.py``: every class c gets a unit vector phi_c in R^C (C = number of
classes) whose dot products are the hierarchy's similarities,

    phi_i . phi_j = s(i, j) = 1 - d(i, j) / H,

with d the LCA height (:attr:`hiercls.hierarchy.Hierarchy.distances`) and H the height of the tree (its
root's height, :attr:`~hiercls.hierarchy.Hierarchy.tree_height`): the paper's "height(lcs(u, v)) / max
height of the hierarchy", and their code's ``ClassHierarchy.lcs_height`` (``heights[lcs] / max_height``).
H equals the largest class distance d_max unless the root has a single child: then d_max = H - 1 (the
original making-better-mistakes fork's pickled CIFAR-100 tree has H = 9, d_max = 8), every similarity is at
least 1/H rather than 0, and no two classes are orthogonal. Every built-in hierarchy has H = d_max. They are
built one class at a time: phi_0 = e_0; for c = 1 .. C-1 the first c coordinates x = phi_c[:c] solve the
lower-triangular system Phi[:c, :c] x = S[c, :c] (rows of earlier embeddings: phi_i has nonzeros only in
its first i + 1 coordinates), and phi_c[c] = sqrt(1 - |x|^2), phi_c[c+1:] = 0. The LCA height of a tree is
an ultrametric, so S is positive definite when no two classes are at distance 0, and every square root is
of a positive number; two classes at distance 0 make the system singular (refused with a clear error).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from hiercls.hierarchy import Hierarchy

__all__ = ["EmbeddingError", "barzdenzler_embeddings", "similarities"]


class EmbeddingError(ValueError):
    """The hierarchy admits no class embedding (two classes at distance 0, or a similarity matrix that is
    not positive definite); the message names the classes."""


_CACHE: dict[tuple[str, int, bytes], Tensor] = {}
_LOCK = threading.Lock()
# phi_c[c]^2 = 1 - |x|^2 must stay clearly positive: below this the classes are (numerically) equal
_MIN_SQUARE = 1e-12


def similarities(hierarchy: Hierarchy) -> Tensor:
    """Barz & Denzler's class similarities (WACV 2019, Sec. 3.1, Eq. 1): ``S = 1 - D / H``, float64
    ``[C, C]``, with ``D`` the LCA heights (:attr:`~hiercls.hierarchy.Hierarchy.distances`, long ``[C, C]``)
    and ``H`` the tree's height (:attr:`~hiercls.hierarchy.Hierarchy.tree_height`), not the largest
    class distance (the two differ when the root has a single child; see the module docstring). Ones on the
    diagonal, values in ``[0, 1]``.

    Args:
        hierarchy: a :class:`~hiercls.hierarchy.Hierarchy` (``distances``, ``tree_height``, ``name``).

    Raises:
        EmbeddingError: a tree of height 0 (no edges).
    """
    height = int(hierarchy.tree_height)
    if height <= 0:
        raise EmbeddingError(f"hierarchy {hierarchy.name!r}: the tree has height 0")
    return 1.0 - hierarchy.distances.to(torch.float64) / height


def barzdenzler_embeddings(hierarchy: Hierarchy) -> Tensor:
    """The class embeddings of Barz & Denzler (WACV 2019) for ``hierarchy`` (see the module docstring).

    Deterministic (no random numbers) and computed in float64; cached per hierarchy (its name, distance
    matrix and height), each call returning a new copy.

    Args:
        hierarchy: any hierarchy with C classes.

    Returns:
        float64 [C, C]: row c is phi_c, a unit vector, lower-triangular as a matrix, with
        ``phi @ phi.T == similarities(hierarchy) == 1 - D / H`` (to about 1e-12 for C = 100).

    Raises:
        EmbeddingError: two classes at distance 0 (the message names both), or a similarity matrix that is
            not positive definite.
    """
    key = (str(hierarchy.name), int(hierarchy.tree_height),
           hierarchy.distances.to(torch.int64).contiguous().numpy().tobytes())
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            cached = _build(hierarchy)
            _CACHE[key] = cached
    return cached.clone()


def _build(hierarchy: Hierarchy) -> Tensor:
    s = similarities(hierarchy)
    n = s.shape[0]
    phi = torch.zeros((n, n), dtype=torch.float64)
    phi[0, 0] = 1.0
    for c in range(1, n):
        x = torch.linalg.solve_triangular(phi[:c, :c], s[c, :c].unsqueeze(1), upper=False).squeeze(1)
        square = 1.0 - float(x @ x)
        if square < _MIN_SQUARE:
            same = [i for i in range(c) if int(hierarchy.distances[c, i]) == 0]
            if same:
                raise EmbeddingError(
                    f"hierarchy {hierarchy.name!r}: classes {hierarchy.classes[same[0]]!r} and "
                    f"{hierarchy.classes[c]!r} are at distance 0, so they would get the same embedding; "
                    "give every class its own leaf"
                )
            raise EmbeddingError(
                f"hierarchy {hierarchy.name!r}: the similarities 1 - d/H are not positive definite at "
                f"class {hierarchy.classes[c]!r} (1 - |x|^2 = {square:.3g}): these distances are not a "
                "tree's LCA heights"
            )
        phi[c, :c] = x
        phi[c, c] = square**0.5
    return phi
