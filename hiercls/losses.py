"""Hierarchy-aware classification losses.

Every loss is a ``torch.nn.Module`` built by :func:`build_loss` from a name (the original project's
``--loss`` strings) and a :class:`~hiercls.hierarchy.Hierarchy`, and is called as
``loss(logits, targets)``:

* ``logits``: float tensor ``[N, C]`` (unnormalised class scores, ``C = hierarchy.num_classes``);
  float16/bfloat16 inputs are computed in float32.
* ``targets``: integer tensor ``[N]`` of class labels in ``0..C-1``.
* returns a 0-dim tensor: the mean over the batch.

Every loss has ``set_epoch(e)`` (``e`` the fractional epoch, completed optimiser steps / steps per
epoch, from 0), a no-op except for ``simple-hierarchy``. The only state is that epoch, which the engine
sets every step: the precomputed tensors are non-persistent buffers (they follow ``.to(device)`` but stay
out of ``state_dict()``, which is empty).

The parameters declared ``variable`` (``lambda_fine``, ``lambda_coarse``, ``alpha``, ``beta``) may change
between epochs (a config's ``value_schedule``): :meth:`HierarchyLoss.set_values` changes them in place,
recomputing the buffers that depend on them into the existing tensors (``copy_``), so the loss stays on
its device and equals a loss freshly built with the new values, bit for bit.

========================== =================================================== ============================
name                       formula                                             parameters (defaults)
========================== =================================================== ============================
cross-entropy              ``-log p(y)``, optionally label-smoothed             ``label_smoothing=0``
hierarchical-cross-entropy HXE, Bertinetto et al. (CVPR 2020) eq. 4             ``alpha=0.1``,
                                                                                ``normalize=False``
soft-labels                KL(soft target || softmax), Bertinetto et al. eq. 5  ``beta=10``
simple-hierarchy           weighted fine CE + coarse (superclass) CE,           ``lambda_fine=1``,
                           ramped in over epochs (the original project's)       ``lambda_coarse=1``,
                                                                                starts 0, ramps 0,
                                                                                ``coarse_level=None``
cosine-distance            ``1 - cos(out, phi_y)`` on class embeddings phi,     none
                           Barz & Denzler (WACV 2019)
cosine-plus-xent           cosine distance + weighted CE on the same output,   ``xent_weight=0.1``
                           Barz & Denzler Sec. 3.3
ranking-loss               DeViSE hinge rank loss on cosine scores,            ``margin=0.1``,
                           Frome et al. (NeurIPS 2013)                          ``devise_single_negative=
                                                                                False``
yolo-v2                    softmax cascade over each node's children,           ``alpha=0.1``,
                           HXE-weighted path CE (Redmon & Farhadi, CVPR 2017)   ``normalize=False``
========================== =================================================== ============================

The embedding losses (``cosine-distance``, ``cosine-plus-xent``, ``ranking-loss``) take outputs
``[N, D]`` in the embedding space (Barz & Denzler's ``D = C`` by default, word vectors for DeViSE) and
``yolo-v2`` one output per non-root node; each loss's ``num_outputs`` gives the model's output size and
``scores(outputs)`` the ``[N, C]`` class scores every metric ranks (cosines for the embedding losses, log
leaf probabilities for ``yolo-v2``).

Bertinetto, Mueller, Tertikas, Samangooei, Lord: "Making Better Mistakes: Leveraging Class Hierarchies
with Deep Networks", CVPR 2020.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hiercls.embeddings import barzdenzler_embeddings
from hiercls.hierarchy import CIFAR100_CLASSES, cifar100_superclass_labels
from hiercls.registry import LOSSES, Param

__all__ = [
    "LOSSES",
    "CosineDistanceLoss",
    "CosinePlusXentLoss",
    "CrossEntropyLoss",
    "EmbeddingLoss",
    "HierarchicalCrossEntropyLoss",
    "HierarchyLoss",
    "RankingLoss",
    "SimpleHierarchyLoss",
    "SoftLabelsLoss",
    "YoloV2Loss",
    "cross_entropy",
    "build_loss",
    "hxe_edge_weights",
    "is_embedding_loss",
    "loss_params",
    "ramp_weight",
    "soft_label_targets",
]



# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


def _compute_dtype(logits: torch.Tensor) -> torch.Tensor:
    if logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float()
    return logits


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy ``logsumexp(x) - x[y]`` over the batch: float ``[N, C]``, long ``[N]`` -> scalar.

    Equals ``F.cross_entropy`` (to float rounding) without its NLL kernel: the CUDA NLL loss is refused
    by ``torch.use_deterministic_algorithms(True)``, while ``gather``'s backward (a scatter-add) has a
    deterministic CUDA implementation under that flag (torch's documentation of the flag lists both).
    """
    x = _compute_dtype(logits)
    picked = x.gather(1, targets.view(-1, 1)).squeeze(1)
    return (x.logsumexp(dim=1) - picked).mean()


def _zero_with_graph(logits: torch.Tensor) -> torch.Tensor:
    """An exact 0 that is connected to ``logits`` with an exactly-zero gradient (even for inf/NaN logits)."""
    return logits.masked_fill(torch.ones_like(logits, dtype=torch.bool), 0.0).sum()


def ramp_weight(epoch: float, start: float, ramp: float) -> float:
    """Weight of a loss term that is switched on at ``start`` and ramped up linearly over ``ramp`` epochs.

    ``w(e) = clip((e - start) / ramp, 0, 1)``; with ``ramp = 0`` a step: ``w = 1`` for ``e >= start``
    and 0 before. This is the original project's ``SimpleHierarchyLoss._calculate_weight``.

    Args:
        epoch: fractional epoch ``e`` (epochs, float).
        start: first epoch of the term (epochs, ``>= 0``).
        ramp: ramp length in epochs (``>= 0``).

    Returns:
        A Python float in ``[0, 1]``.
    """
    if epoch < start:
        return 0.0
    if ramp == 0 or epoch >= start + ramp:
        return 1.0
    return (epoch - start) / ramp


_EPOCH = Param("epoch", "float", 0.0, "fractional epoch (completed optimiser steps / steps per epoch)",
               low=0.0, unit="epochs")


class HierarchyLoss(nn.Module):
    """Base class: holds the fractional epoch and checks input shapes.

    The model in front of a loss has ``num_outputs`` outputs: ``C`` class logits for the classification
    losses, the embedding's dimension for the embedding losses, one per non-root node for ``yolo-v2``.
    :meth:`scores` turns those outputs into ``[N, C]`` class scores, which every metric ranks (identity
    for logits); ``probabilistic`` says whether a softmax of those scores is a class distribution (the
    CRM metrics need one: they are NaN for the embedding losses).

    Raises (in ``forward``):
        ValueError: ``logits`` not ``[N, num_outputs]`` or ``targets`` not ``[N]``.
    """

    probabilistic: bool = True
    takes_class_embeddings: bool = False

    def __init__(self, num_classes: int | None, num_outputs: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_outputs = num_classes if num_outputs is None else num_outputs
        self.epoch = 0.0

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class scores float ``[N, C]`` from the model's outputs float ``[N, num_outputs]`` (higher = more
        likely; ranked by every metric). The identity for losses on class logits."""
        return outputs

    def set_epoch(self, epoch: float) -> None:
        """Set the fractional epoch (completed optimiser steps / steps per epoch) used by the loss.

        Raises:
            ValueError: a non-finite or negative epoch.
        """
        self.epoch = _EPOCH.check(epoch)

    def variable_params(self) -> dict[str, Param]:
        """The parameters of this loss that may change between epochs (declared ``variable`` in its
        registry entry), in declaration order; empty for a loss without any (or an unregistered class)."""
        entry = LOSSES.entry_of(type(self))
        return {} if entry is None else {k: p for k, p in entry.params.items() if p.variable}

    def current_values(self) -> dict[str, float]:
        """The values of :meth:`variable_params` in use now, by name (Python floats)."""
        return {k: float(getattr(self, k)) for k in self.variable_params()}

    def set_values(self, **values: float) -> None:
        """Change variable parameters in place (e.g. ``set_values(alpha=0.4)`` at the start of an epoch).

        The buffers that depend on them are recomputed on the CPU exactly as the constructor computes
        them and copied into the existing tensors (same device, same storage), so the loss then equals
        :func:`build_loss` with the new values, bit for bit, and a ``torch.compile``'d caller reads the new
        buffer contents at its next call (a plain float such as ``lambda_fine`` is a guarded attribute:
        a compiled caller recompiles for a new value).

        Raises:
            ValueError: a name that is not one of :meth:`variable_params` (the message lists them) or a
                value out of its declared range; nothing is changed then.
        """
        declared = self.variable_params()
        unknown = [k for k in values if k not in declared]
        if unknown:
            entry = LOSSES.entry_of(type(self))
            name = entry.name if entry is not None else type(self).__name__
            raise ValueError(f"loss {name!r} has no variable parameter {unknown[0]!r}; valid: "
                             f"{', '.join(declared) or 'none'}")
        checked = {k: declared[k].check(v) for k, v in values.items()}
        changed = {k for k, v in checked.items() if v != getattr(self, k)}
        for key, value in checked.items():
            setattr(self, key, value)
        if changed:
            self._values_changed(changed)

    def _values_changed(self, names: set[str]) -> None:
        """Recompute what depends on the variable parameters ``names`` (just set); a no-op here."""

    def _check(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        if logits.dim() != 2:
            raise ValueError(f"logits must be [N, C], got shape {tuple(logits.shape)}")
        if self.num_outputs is not None and logits.shape[1] != self.num_outputs:
            what = "classes but the hierarchy has" if self.num_outputs == self.num_classes else \
                "outputs but the loss needs"
            raise ValueError(f"logits have {logits.shape[1]} {what} {self.num_outputs}")
        if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
            raise ValueError(
                f"targets must be [N] with N = {logits.shape[0]}, got shape {tuple(targets.shape)}"
            )


# --------------------------------------------------------------------------------------------------------
# cross-entropy
# --------------------------------------------------------------------------------------------------------


_LABEL_SMOOTHING = Param(
    "label_smoothing", "float", 0.0,
    "weight of the uniform distribution mixed into the one-hot target", low=0.0, high=1.0,
    high_open=True, unit="fraction",
    source="off: the plain cross-entropy; Szegedy et al. (CVPR 2016, sec. 7) use 0.1, airbench (Jordan "
           "2024) 0.2",
)


@LOSSES.register("cross-entropy", params=(_LABEL_SMOOTHING,))
class CrossEntropyLoss(HierarchyLoss):
    """Flat cross-entropy ``-log softmax(logits)[y]``, mean over the batch, optionally label-smoothed.

    :func:`cross_entropy`, with label smoothing as Szegedy et al. ("Rethinking the Inception
    Architecture", CVPR 2016, sec. 7) define it.

    With ``label_smoothing = eps`` the target is ``(1 - eps) * onehot(y) + eps / C`` and the loss is
    ``(1 - eps) * CE + eps * mean_c(-log softmax(logits)[c])``, which equals ``F.cross_entropy(...,
    label_smoothing=eps)``. Label smoothing is the soft-labels loss (Bertinetto et al. eq. 5) on a flat
    hierarchy, where every other class is equally far: the soft-labels loss replaces the uniform share
    with one that decays with the LCA distance, so the two are alternatives, not a combination
    (``soft-labels`` does not take ``label_smoothing``; the value differs from soft-labels' KL by the
    target's entropy, a constant).

    Args:
        hierarchy: only used for the class count check; may be None.
        label_smoothing: ``eps`` in ``[0, 1)``, a fraction; 0 is the plain cross-entropy.

    Call: ``logits`` float ``[N, C]``, ``targets`` long ``[N]`` -> scalar.
    """

    def __init__(self, hierarchy=None, *, label_smoothing: float) -> None:
        super().__init__(None if hierarchy is None else hierarchy.num_classes)
        self.label_smoothing = float(_LABEL_SMOOTHING.check(label_smoothing))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._check(logits, targets)
        loss = cross_entropy(logits, targets)
        if self.label_smoothing == 0.0:
            return loss
        uniform = -F.log_softmax(_compute_dtype(logits), dim=1).mean(dim=1).mean()
        return (1.0 - self.label_smoothing) * loss + self.label_smoothing * uniform

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}" if self.label_smoothing else ""


# --------------------------------------------------------------------------------------------------------
# hierarchical cross-entropy
# --------------------------------------------------------------------------------------------------------


def hxe_edge_weights(hierarchy, alpha: float, normalize: bool = False) -> torch.Tensor:
    """HXE weight ``lambda(n) = exp(-alpha * depth(n))`` of the edge above every node ``n``.

    ``depth`` counts edges from the root (root 0), as the reference code's
    ``get_exponential_weighting`` does (``exp(-value * len(treeposition))``). With ``normalize`` the
    weights are divided by their sum over *all* N nodes, the root included, as the reference does.

    Args:
        hierarchy: a :class:`~hiercls.hierarchy.Hierarchy`.
        alpha: decay, ``>= 0``.
        normalize: divide by the sum over all nodes.

    Returns:
        float64 tensor ``[N]`` (the root's entry is unused by the loss).
    """
    w = torch.exp(-float(alpha) * hierarchy.depth.to(torch.float64))
    if normalize:
        w = w / w.sum()
    return w


_ALPHA = Param("alpha", "float", 0.1, "edge weights exp(-alpha * depth), larger = coarser", low=0.0,
               source="the original project's --alpha default", variable=True)
# One declaration for both losses that weigh the path's edges (as _ALPHA is), so the flag, the config key
# and the docs say the same thing for each.
_NORMALIZE = Param(
    "normalize", "bool", False,
    "divide the edge weights by their sum over all nodes, as the reference code does by default",
    source="the papers' formulas, unnormalised (Bertinetto et al. eq. 4; Redmon & Farhadi 2017); the "
           "reference code's get_exponential_weighting(normalize=True) divides by about 104 on "
           "cifar100-wordnet at alpha 0.1",
)


@LOSSES.register("hierarchical-cross-entropy", params=(_ALPHA, _NORMALIZE))
class HierarchicalCrossEntropyLoss(HierarchyLoss):
    """Hierarchical cross-entropy (HXE), Bertinetto et al., "Making Better Mistakes", CVPR 2020, eq. 4.

    For a sample of class ``y`` with leaf-to-root path ``y = C_0, C_1, ..., C_h = root``::

        L = - sum_{l=0}^{h-1} lambda(C_l) * log p(C_l | C_{l+1}),
        p(C_l | C_{l+1}) = p(C_l) / p(C_{l+1}),   p(node) = sum of softmax(logits) over the leaves below,
        lambda(C) = exp(-alpha * depth(C))         (depth in edges from the root).

    Information is discounted down the hierarchy, so a larger ``alpha`` weighs the coarse decisions more.
    Unnormalised (the default) and ``alpha = 0`` the sum telescopes to ``-log p(y)``: plain
    cross-entropy. ``normalize=True`` divides every lambda by the sum of lambda over all nodes (root
    included) -- what the reference code (``get_exponential_weighting(normalize=True)``, its default)
    does; it rescales the loss by a constant for a given tree and alpha.

    Computed in log space: ``log p(node) - log p(parent)`` with ``log p(node) = logsumexp`` of the
    logits of the leaves below the node (the softmax normaliser cancels), so the loss stays finite and
    exact for confidently wrong predictions. Vectorised: the path of every class is precomputed as
    padded ``[C, K]`` index/weight tensors (K = deepest leaf depth); the forward is one masked
    logsumexp ``[N, internal nodes, C]`` and two gathers. Works on unbalanced trees.

    Args:
        hierarchy: the class hierarchy (``membership``, ``parent_index``, ``depth``).
        alpha: decay, ``>= 0`` (default 0.1, the original project's ``--alpha`` default).
        normalize: see above (default False).

    Call: ``logits`` float ``[N, C]``, ``targets`` long ``[N]`` -> scalar mean over the batch.

    Raises:
        ValueError: ``alpha < 0`` or not finite, ``normalize`` not a bool; bad input shapes in forward.
    """

    def __init__(self, hierarchy, *, alpha: float, normalize: bool) -> None:
        super().__init__(hierarchy.num_classes)
        self.alpha = float(alpha)
        self.normalize = bool(normalize)
        self._hierarchy = hierarchy  # the CPU source of the weights when alpha changes (set_values)

        c = hierarchy.num_classes
        parent = hierarchy.parent_index.tolist()
        root = parent.index(-1)
        paths = []
        for leaf in range(c):
            path, node = [], leaf
            while parent[node] >= 0:
                path.append(node)
                node = parent[node]
            paths.append(path)
        self._paths = paths
        k = max(1, max(len(p) for p in paths))
        nodes = torch.full((c, k), root, dtype=torch.long)
        parents = torch.full((c, k), root, dtype=torch.long)
        for leaf, path in enumerate(paths):
            for j, node in enumerate(path):
                nodes[leaf, j] = node
                parents[leaf, j] = parent[node]
        self.register_buffer("path_nodes", nodes, persistent=False)
        self.register_buffer("path_parents", parents, persistent=False)
        self.register_buffer("path_weights", self._path_weight_table(k), persistent=False)
        # internal nodes follow the C leaves in hierarchy.nodes; a leaf's log-mass is its own logit
        self.register_buffer("internal_membership", hierarchy.membership[c:].clone(), persistent=False)

    def _path_weight_table(self, k: int) -> torch.Tensor:
        """float64 ``[C, K]`` (on the CPU): the weight of every edge on each class's path for the current
        ``alpha`` and ``normalize``, 0 in the padding."""
        weights = hxe_edge_weights(self._hierarchy, self.alpha, self.normalize).tolist()
        lam = torch.zeros(len(self._paths), k, dtype=torch.float64)
        for leaf, path in enumerate(self._paths):
            for j, node in enumerate(path):
                lam[leaf, j] = weights[node]
        return lam

    def _values_changed(self, names: set[str]) -> None:
        self.path_weights.copy_(self._path_weight_table(self.path_weights.shape[1]))

    def node_log_mass(self, logits: torch.Tensor) -> torch.Tensor:
        """``log sum_{c under n} exp(logits[:, c])`` for every node ``n``: float ``[N_batch, N_nodes]``.

        Equals ``log p(n)`` up to the per-sample constant ``logsumexp(logits)``.
        """
        mask = self.internal_membership.to(logits.device)
        masked = logits.unsqueeze(1).masked_fill(~mask.unsqueeze(0), float("-inf"))
        return torch.cat([logits, masked.logsumexp(dim=2)], dim=1)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of every sample, float ``[N]`` (``forward`` is its mean)."""
        self._check(logits, targets)
        x = _compute_dtype(logits)
        mass = self.node_log_mass(x)
        t = targets.to(self.path_nodes.device)
        nodes = self.path_nodes[t].to(x.device)
        parents = self.path_parents[t].to(x.device)
        lam = self.path_weights[t].to(device=x.device, dtype=x.dtype)
        log_cond = mass.gather(1, nodes) - mass.gather(1, parents)
        return -(lam * log_cond).sum(dim=1)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, targets).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, normalize={self.normalize}"


# --------------------------------------------------------------------------------------------------------
# soft labels
# --------------------------------------------------------------------------------------------------------


_BETA = Param("beta", "float", 10.0, "target sharpness exp(-beta * d / d_max)", low=0.0, low_open=True,
              source="inside the range Bertinetto et al. swept (4..30); the original project's 0 is invalid",
              variable=True)


def soft_label_targets(hierarchy, beta: float) -> torch.Tensor:
    """Soft-label target distributions, Bertinetto et al. (CVPR 2020) eq. 5.

    Row ``y`` is ``softmax_C(-beta * d(C, y) / d_max)``: ``y(C)`` proportional to
    ``exp(-beta * d(C, y) / d_max)`` with ``d`` the LCA-height distance and ``d_max`` its maximum.
    Entries may underflow to exactly 0 for large ``beta``; rows sum to 1.

    Args:
        hierarchy: the class hierarchy (``distances``, ``max_distance``).
        beta: hardness, ``> 0`` (larger: closer to one-hot).

    Returns:
        float64 tensor ``[C, C]``, row = true class.

    Raises:
        ValueError: ``beta <= 0`` or not finite.
    """
    beta = _BETA.check(beta)
    d = hierarchy.distances.to(torch.float64)
    d_max = max(int(hierarchy.max_distance), 1)
    return torch.softmax(-beta * d / d_max, dim=1)


@LOSSES.register("soft-labels", params=(_BETA,))
class SoftLabelsLoss(HierarchyLoss):
    """Soft-label loss, Bertinetto et al., "Making Better Mistakes", CVPR 2020, eq. 5.

    ``L = KL(y || q) = sum_C y(C) * (log y(C) - log q(C))`` with ``q = softmax(logits)`` and ``y`` the
    soft target of the true class (:func:`soft_label_targets`), averaged over the batch: this is
    ``nn.KLDivLoss(reduction="batchmean")``, the true per-sample KL the original project used. (The
    reference code of the paper used ``KLDivLoss()``'s default ``mean``, which also divides by C, so
    its values are C times smaller.) ``0 * log 0`` counts as 0, also where the logit is ``-inf``: the
    value and the gradient stay finite when target entries underflow. With one-hot targets (very large
    ``beta``) the loss is the cross-entropy.

    Args:
        hierarchy: the class hierarchy.
        beta: hardness, ``> 0``; default 10, in the range the paper swept (4..30). The original
            project's ``--beta`` default 0 (uniform targets) is out of range here.

    Call: ``logits`` float ``[N, C]``, ``targets`` long ``[N]`` -> scalar.

    Raises:
        ValueError: ``beta <= 0`` or not finite; bad input shapes in forward.
    """

    def __init__(self, hierarchy, *, beta: float) -> None:
        super().__init__(hierarchy.num_classes)
        self.beta = float(beta)
        self._hierarchy = hierarchy  # the CPU source of the targets when beta changes (set_values)
        self.register_buffer("soft_targets", soft_label_targets(hierarchy, self.beta), persistent=False)

    def _values_changed(self, names: set[str]) -> None:
        self.soft_targets.copy_(soft_label_targets(self._hierarchy, self.beta))

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """KL divergence of every sample, float ``[N]``."""
        self._check(logits, targets)
        x = _compute_dtype(logits)
        y = self.soft_targets[targets.to(self.soft_targets.device)].to(device=x.device, dtype=x.dtype)
        log_q = F.log_softmax(x, dim=1)
        zero = y == 0
        # mask before multiplying: 0 * (-inf) would be NaN in the value and the gradient
        cross = (y * log_q.masked_fill(zero, 0.0)).sum(dim=1)
        neg_entropy = torch.xlogy(y, y).sum(dim=1)
        return neg_entropy - cross

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, targets).mean()

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


# --------------------------------------------------------------------------------------------------------
# simple hierarchy (fine + coarse cross-entropy)
# --------------------------------------------------------------------------------------------------------


_ORIGINAL = "the original project's default"


@LOSSES.register("simple-hierarchy", params=(
    Param("lambda_fine", "float", 1.0, "weight of the fine cross-entropy", low=0.0, source=_ORIGINAL,
          term="fine", role="weight", variable=True),
    Param("lambda_coarse", "float", 1.0, "weight of the coarse cross-entropy", low=0.0, source=_ORIGINAL,
          term="coarse", role="weight", variable=True),
    Param("fine_loss_start_epoch", "float", 0.0, "epoch the fine term starts", low=0.0, unit="epochs",
          source=_ORIGINAL, term="fine", role="start"),
    Param("fine_loss_ramp_epochs", "float", 0.0, "epochs of the fine term's linear ramp", low=0.0,
          unit="epochs", source=_ORIGINAL, term="fine"),
    Param("coarse_loss_start_epoch", "float", 0.0, "epoch the coarse term starts", low=0.0, unit="epochs",
          source=_ORIGINAL, term="coarse", role="start"),
    Param("coarse_loss_ramp_epochs", "float", 0.0, "epochs of the coarse term's linear ramp", low=0.0,
          unit="epochs", source=_ORIGINAL, term="coarse"),
    Param("coarse_level", "int", None,
          "depth of the coarse groups, 1..the tree's height; unset: the 20 official superclasses",
          nullable=True, source="CIFAR-100's 20 official superclasses"),
))
class SimpleHierarchyLoss(HierarchyLoss):
    """The original project's combined fine + coarse cross-entropy, with epoch-dependent ramps.

    ``L(e) = lambda_fine * w_f(e) * CE_fine + lambda_coarse * w_c(e) * CE_coarse`` with
    ``w(e) = clip((e - start) / ramp, 0, 1)`` (:func:`ramp_weight`; ramp 0 is a step at ``start``) and
    ``e`` the fractional epoch from :meth:`set_epoch`. ``CE_fine = -log softmax(logits)[y]``;
    ``CE_coarse = -log P(g(y))`` with ``P(g) = sum over the classes c of group g of softmax(logits)[c]``,
    computed as the logsumexp of the fine log-probabilities over the group (not a sum of logits, as the
    original code did, and without assuming ``label // 5``). Groups are
    ``hierarchy.coarse_labels(coarse_level)``. A term whose weight is 0 (before its start, or lambda 0)
    is skipped: it adds exactly 0 and no gradient, even where it would be non-finite.

    Args:
        hierarchy: the class hierarchy.
        lambda_fine, lambda_coarse: term weights, ``>= 0`` (original defaults 1, 1).
        fine_loss_start_epoch, coarse_loss_start_epoch: epochs, ``>= 0`` (defaults 0).
        fine_loss_ramp_epochs, coarse_loss_ramp_epochs: epochs, ``>= 0`` (defaults 0).
        coarse_level: depth (edges from the root, ``>= 1``) of the coarse groups; None: the 20 official
            CIFAR-100 superclasses, i.e. ``hierarchy.default_coarse_level`` (4 on ``cifar100-l5``, 1 on
            ``cifar100-coarse``), or the official superclass table for a CIFAR-100 tree without such a
            level (``cifar100-wordnet``).

    Call: ``logits`` float ``[N, C]``, ``targets`` long ``[N]`` -> scalar.

    Raises:
        ValueError: a negative or non-finite lambda/start/ramp; ``coarse_level`` None on a non-CIFAR-100
            hierarchy without official superclasses, or outside ``1..tree height``.
    """

    def __init__(
        self,
        hierarchy,
        *,
        lambda_fine: float,
        lambda_coarse: float,
        fine_loss_start_epoch: float,
        fine_loss_ramp_epochs: float,
        coarse_loss_start_epoch: float,
        coarse_loss_ramp_epochs: float,
        coarse_level: int | None,
    ) -> None:
        super().__init__(hierarchy.num_classes)
        self.lambda_fine, self.lambda_coarse = float(lambda_fine), float(lambda_coarse)
        self.fine_loss_start_epoch = float(fine_loss_start_epoch)
        self.fine_loss_ramp_epochs = float(fine_loss_ramp_epochs)
        self.coarse_loss_start_epoch = float(coarse_loss_start_epoch)
        self.coarse_loss_ramp_epochs = float(coarse_loss_ramp_epochs)
        height = getattr(hierarchy, "tree_height", None)
        valid = f"1..{height}" if height is not None else "1..tree height"
        if coarse_level is None:
            coarse_level = getattr(hierarchy, "default_coarse_level", None)
        if coarse_level is None:
            # A tree without a superclass level (cifar100-wordnet): the 20 official superclasses,
            # which only exist when the classes are CIFAR-100's in the official order.
            if list(getattr(hierarchy, "classes", [])) != list(CIFAR100_CLASSES):
                raise ValueError(
                    f"hierarchy {getattr(hierarchy, 'name', '')!r} has no official superclass level; "
                    f"pass coarse_level (a depth in {valid})"
                )
            groups = cifar100_superclass_labels()
        elif (
            isinstance(coarse_level, bool)
            or not isinstance(coarse_level, int)
            or coarse_level < 1
            or (height is not None and coarse_level > height)
        ):
            raise ValueError(f"coarse_level={coarse_level!r} is out of range; valid range {valid}")
        else:
            groups = hierarchy.coarse_labels(coarse_level)
        self.coarse_level = coarse_level
        self.register_buffer("groups", groups.clone(), persistent=False)

    def weights(self, epoch: float | None = None) -> tuple[float, float]:
        """``(lambda_fine * w_f(e), lambda_coarse * w_c(e))`` at ``epoch`` (default: the current epoch)."""
        e = self.epoch if epoch is None else epoch
        wf = ramp_weight(e, self.fine_loss_start_epoch, self.fine_loss_ramp_epochs)
        wc = ramp_weight(e, self.coarse_loss_start_epoch, self.coarse_loss_ramp_epochs)
        return self.lambda_fine * wf, self.lambda_coarse * wc

    def coarse_log_prob(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``log P(group of the target)`` for every sample, float ``[N]``."""
        x = _compute_dtype(logits)
        log_p = F.log_softmax(x, dim=1)
        groups = self.groups.to(x.device)
        same = groups.unsqueeze(0) == groups[targets.to(x.device)].unsqueeze(1)
        return log_p.masked_fill(~same, float("-inf")).logsumexp(dim=1)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._check(logits, targets)
        x = _compute_dtype(logits)
        wf, wc = self.weights()
        total = None
        if wf > 0:
            term = wf * cross_entropy(x, targets)
            total = term
        if wc > 0:
            term = wc * -self.coarse_log_prob(x, targets).mean()
            total = term if total is None else total + term
        return _zero_with_graph(x) if total is None else total

    def extra_repr(self) -> str:
        return (
            f"lambda_fine={self.lambda_fine}, lambda_coarse={self.lambda_coarse}, "
            f"fine_start={self.fine_loss_start_epoch}, fine_ramp={self.fine_loss_ramp_epochs}, "
            f"coarse_start={self.coarse_loss_start_epoch}, coarse_ramp={self.coarse_loss_ramp_epochs}, "
            f"coarse_level={self.coarse_level}"
        )


# --------------------------------------------------------------------------------------------------------
# embedding losses: Barz & Denzler (WACV 2019), DeViSE (Frome et al., NeurIPS 2013)
# --------------------------------------------------------------------------------------------------------

EMBEDDING_SOURCE = "Barz & Denzler (WACV 2019) class embeddings unless built with word vectors (DeViSE)"


class EmbeddingLoss(HierarchyLoss):
    """Base class of the losses on a class embedding: the model outputs a vector in the embedding space.

    ``class_embeddings`` (float ``[C, D]``, one row per class) default to Barz & Denzler's hierarchy
    embeddings (:func:`hiercls.embeddings.barzdenzler_embeddings`, ``D = C``); DeViSE passes word vectors
    (:func:`hiercls.wordvectors.class_word_vectors`). Rows are L2-normalised here and kept in float32 as a
    non-persistent buffer. The class scores of an output are its cosine similarities to every class
    embedding, ``normalize(out) @ E^T`` (``[N, C]``, in [-1, 1]); they are not log-probabilities, so the
    CRM metrics (which softmax the scores) are NaN for these losses (``probabilistic = False``).

    Raises:
        ValueError: ``class_embeddings`` not ``[C, D]`` with ``C = hierarchy.num_classes``, or a zero row.
    """

    probabilistic = False
    takes_class_embeddings = True

    def __init__(self, hierarchy, class_embeddings: torch.Tensor | None) -> None:
        if class_embeddings is None:
            class_embeddings = barzdenzler_embeddings(hierarchy)
        e = torch.as_tensor(class_embeddings).detach().to(torch.float64)
        c = hierarchy.num_classes
        if e.dim() != 2 or e.shape[0] != c:
            raise ValueError(f"class embeddings must be [{c}, D] (one row per class), got {tuple(e.shape)}")
        norms = e.norm(dim=1)
        if bool((norms == 0).any()):
            bad = int((norms == 0).nonzero()[0])
            raise ValueError(f"class {hierarchy.classes[bad]!r} has a zero embedding")
        super().__init__(c, num_outputs=int(e.shape[1]))
        self.register_buffer("class_embeddings", (e / norms.unsqueeze(1)).float(), persistent=False)

    @property
    def embedding_size(self) -> int:
        """``D``, the embedding's dimension (the model's number of outputs)."""
        return int(self.class_embeddings.shape[1])

    def cosines(self, outputs: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every output to every class embedding: float ``[N, D]`` -> ``[N, C]``."""
        x = F.normalize(_compute_dtype(outputs), dim=1)
        return x @ self.class_embeddings.to(device=x.device, dtype=x.dtype).T

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.cosines(outputs)

    def target_cosine(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``cos(out_i, phi_{y_i})`` for every sample, float ``[N]``."""
        x = F.normalize(_compute_dtype(outputs), dim=1)
        phi = self.class_embeddings.to(x.device)[targets.to(x.device)].to(x.dtype)
        return (x * phi).sum(dim=1)


@LOSSES.register("cosine-distance")
class CosineDistanceLoss(EmbeddingLoss):
    """Cosine distance to the true class's embedding, Barz & Denzler (WACV 2019), Sec. 3.2.

    ``L = 1 - mean_i cos(out_i, phi_{y_i})`` with ``phi`` the class embeddings (Barz & Denzler's by default,
    DeViSE word vectors when built with them); the output is L2-normalised inside the cosine. The reference
    code's ``--loss cosine-distance``.

    Args:
        hierarchy: the class hierarchy (C classes).
        class_embeddings: float ``[C, D]`` or None (Barz & Denzler's, ``D = C``).

    Call: ``outputs`` float ``[N, D]``, ``targets`` long ``[N]`` -> scalar in [0, 2].
    """

    def __init__(self, hierarchy, class_embeddings: torch.Tensor | None = None) -> None:
        super().__init__(hierarchy, class_embeddings)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._check(outputs, targets)
        return 1.0 - self.target_cosine(outputs, targets).mean()


@LOSSES.register("cosine-plus-xent", params=(
    Param("xent_weight", "float", 0.1, "weight of the cross-entropy on the embedding output", low=0.0,
          source="Barz & Denzler (WACV 2019), Sec. 3.3, and the reference code's default"),
))
class CosinePlusXentLoss(EmbeddingLoss):
    """Cosine distance plus weighted cross-entropy, Barz & Denzler (WACV 2019), Sec. 3.3.

    ``L = (1 - mean_i cos(out_i, phi_{y_i})) + xent_weight * CE(out, y)``, the cross-entropy taken on the same
    output read as class logits (so the embedding's dimension must equal the number of classes: Barz &
    Denzler's embeddings have ``D = C``; word vectors do not). The scores for the metrics are the cosines.

    Args:
        hierarchy: the class hierarchy (C classes).
        xent_weight: weight of the cross-entropy, ``>= 0`` (default 0.1).
        class_embeddings: float ``[C, C]`` or None (Barz & Denzler's).

    Call: ``outputs`` float ``[N, C]``, ``targets`` long ``[N]`` -> scalar.

    Raises:
        ValueError: embeddings of another dimension than C.
    """

    def __init__(
        self, hierarchy, *, xent_weight: float, class_embeddings: torch.Tensor | None = None
    ) -> None:
        super().__init__(hierarchy, class_embeddings)
        if self.embedding_size != self.num_classes:
            raise ValueError(
                f"cosine-plus-xent reads its output as {self.num_classes} class logits too, but the "
                f"embedding has {self.embedding_size} dimensions; use Barz & Denzler's embeddings or "
                "cosine-distance"
            )
        self.xent_weight = float(xent_weight)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._check(outputs, targets)
        cosine = 1.0 - self.target_cosine(outputs, targets).mean()
        if self.xent_weight == 0:
            return cosine
        return cosine + self.xent_weight * cross_entropy(outputs, targets)

    def extra_repr(self) -> str:
        return f"xent_weight={self.xent_weight}"


@LOSSES.register("ranking-loss", params=(
    Param("margin", "float", 0.1, "hinge margin on the cosine scores", low=0.0,
          source="Frome et al. (NeurIPS 2013), Sec. 3.2, and the reference code's default"),
    Param("devise_single_negative", "bool", False,
          "one random margin-violating class per sample instead of the sum over all classes",
          source="Frome et al. (NeurIPS 2013), Sec. 3.2 (the first violating negative)"),
))
class RankingLoss(EmbeddingLoss):
    """DeViSE's hinge rank loss, Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model", NeurIPS 2013,
    Sec. 3.2, on cosine scores ``s_c = cos(out, phi_c)``.

    ``L_i = sum_{c != y_i} max(0, margin - s_{y_i} + s_c)``, mean over the batch. With
    ``devise_single_negative`` each sample takes one class drawn uniformly among those that violate the
    margin (``margin - s_y + s_c > 0``, ``c != y``; :meth:`draw_negatives`): ``L_i = margin - s_y + s_c``
    for that class, 0 when none violates (the paper stops at the first violating class of a random order,
    which draws that class uniformly too). The draw uses torch's global generator on the outputs' device,
    which the engine seeds and checkpoints, so a run and its resume draw the same classes.

    The reference code sums over every class including ``y`` itself, whose term is always ``margin``: its
    values are ours plus ``margin`` per sample (the same gradient). Its single negative differs too, and
    here we keep the paper's rule: its mask of violating classes, ``margin + s_c - s_y > 0`` over *all*
    classes, always holds the true class (its term is ``margin > 0``), so with ``k`` other violating classes
    it draws ``y`` itself with probability ``1 / (k + 1)`` and always when none violates; such a sample
    then adds the constant ``margin`` and no gradient. Ours never draws ``y``: the same sample gives a
    violating negative's gradient, or 0 when there is none.

    Args:
        hierarchy: the class hierarchy (C classes).
        margin: hinge margin, ``>= 0`` (default 0.1).
        devise_single_negative: see above (default False).
        class_embeddings: float ``[C, D]`` or None (Barz & Denzler's).

    Call: ``outputs`` float ``[N, D]``, ``targets`` long ``[N]`` -> scalar.
    """

    def __init__(
        self, hierarchy, *, margin: float, devise_single_negative: bool,
        class_embeddings: torch.Tensor | None = None,
    ) -> None:
        super().__init__(hierarchy, class_embeddings)
        self.margin = float(margin)
        self.devise_single_negative = bool(devise_single_negative)

    def _hinge(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``max(0, margin - s_y + s_c)`` for every class ``c``, 0 at ``c = y``: float ``[N, C]``."""
        self._check(outputs, targets)
        s = self.cosines(outputs)
        t = targets.to(s.device)
        hinge = (self.margin - s.gather(1, t.view(-1, 1)) + s).clamp_min(0.0)
        others = torch.ones_like(hinge, dtype=torch.bool).scatter_(1, t.view(-1, 1), False)
        return hinge * others

    @staticmethod
    def _draw(hinge: torch.Tensor) -> torch.Tensor:
        """One column per row of ``hinge`` ``[N, C]``, uniform among its positive entries: long ``[N, 1]``
        (a row without any gives an arbitrary column, whose entry is 0). Takes ``N x C`` uniform numbers
        from torch's global generator."""
        keys = torch.rand(hinge.shape, device=hinge.device, dtype=hinge.dtype)
        keys = keys.masked_fill(~(hinge > 0), -1.0)
        return keys.argmax(dim=1, keepdim=True)

    def draw_negatives(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The negative class ``devise_single_negative`` draws for every sample: long ``[N]``, a class other
        than ``targets[i]`` drawn uniformly among the margin-violating ones (Frome et al. 2013, Sec. 3.2),
        -1 where none violates. Draws as :meth:`per_sample` does: with the same generator state both
        pick the same classes.

        Args:
            outputs: float ``[N, D]``; targets: long ``[N]``.
        """
        hinge = self._hinge(outputs, targets)
        pick = self._draw(hinge)
        found = hinge.gather(1, pick).squeeze(1) > 0
        return torch.where(found, pick.squeeze(1), torch.full_like(pick.squeeze(1), -1))

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The hinge loss of every sample, float ``[N]``."""
        hinge = self._hinge(outputs, targets)
        if not self.devise_single_negative:
            return hinge.sum(dim=1)
        return hinge.gather(1, self._draw(hinge)).squeeze(1)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample(outputs, targets).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, devise_single_negative={self.devise_single_negative}"


# --------------------------------------------------------------------------------------------------------
# YOLO-v2 softmax cascade
# --------------------------------------------------------------------------------------------------------


@LOSSES.register("yolo-v2", params=(_ALPHA, _NORMALIZE))
class YoloV2Loss(HierarchyLoss):
    """YOLO-v2's hierarchical softmax (Redmon & Farhadi, "YOLO9000: Better, Faster, Stronger", CVPR 2017,
    Sec. 4 "Hierarchical classification"), as the reference code's softmax cascade.

    The model has one output per non-root node (``num_outputs = nodes - 1``); a softmax over the children of
    every internal node gives ``p(n | parent(n))``. For a sample of class ``y`` with path
    ``y = C_0, ..., C_h = root``::

        L = - sum_{l=0}^{h-1} lambda(C_l) * log p(C_l | C_{l+1}),    lambda(C) = exp(-alpha * depth(C))

    (HXE's weights, :func:`hxe_edge_weights`; ``alpha = 0`` is the sum of the per-level cross-entropies along
    the path). The class scores are the log leaf probabilities ``log p(c) = sum along c's path of
    log p(node | parent)`` (``[N, C]``, a distribution over the leaves), so every metric, CRM included, is
    computed on them. A node with one child has ``p = 1``.

    ``normalize=True`` divides every lambda by ``Z = sum over all N nodes (root included) of
    exp(-alpha * depth)``, as HXE's ``normalize`` does. The reference code (fiveai's making-better-mistakes,
    ``YOLOLoss`` with ``get_weighting(hierarchy, "exponential", value=alpha)``, whose ``normalize`` defaults
    to True) always does this, so its yolo-v2 loss and gradients are ours divided by ``Z``: about 104 on
    ``cifar100-wordnet`` at ``alpha = 0.1`` (86 on ``cifar100-l5``, 101 on ``cifar100-coarse``). The default
    here stays unnormalised: it is the paper's cascade (Redmon & Farhadi weigh the path's cross-entropies
    equally; ``alpha = 0`` is then exactly ``-log p(y)``, the same scale as cross-entropy and HXE), and
    existing runs and searches keep their meaning. ``Z`` is a constant for a given tree and ``alpha``, so
    the two differ only in scale; but a learning rate tuned for one does not carry over to the other (SGD's
    steps shrink ``Z``-fold with normalisation; Adam's barely change), so set ``normalize`` to reproduce
    the reference code's runs.

    Args:
        hierarchy: the class hierarchy (``parent_index``, ``depth``); any tree.
        alpha: decay, ``>= 0`` (default 0.1).
        normalize: see above (default False).

    Call: ``outputs`` float ``[N, nodes - 1]``, ``targets`` long ``[N]`` -> scalar.
    """

    def __init__(self, hierarchy, *, alpha: float, normalize: bool) -> None:
        parent = hierarchy.parent_index.tolist()
        root = parent.index(-1)
        nodes = [n for n in range(len(parent)) if n != root]  # output j <-> node nodes[j]
        super().__init__(hierarchy.num_classes, num_outputs=len(nodes))
        self.alpha = float(alpha)
        self.normalize = bool(normalize)
        self._hierarchy, self._nodes = hierarchy, nodes  # the CPU source of the weights (set_values)
        column = {node: j for j, node in enumerate(nodes)}
        internal = sorted({parent[n] for n in nodes})
        group = {p: g for g, p in enumerate(internal)}
        siblings = torch.zeros(len(internal), len(nodes), dtype=torch.bool)  # [G, O]: children of group g
        for j, node in enumerate(nodes):
            siblings[group[parent[node]], j] = True
        path = torch.zeros(hierarchy.num_classes, len(nodes), dtype=torch.float64)  # [C, O]: 1 on the path
        for leaf in range(hierarchy.num_classes):
            node = leaf
            while parent[node] >= 0:
                path[leaf, column[node]] = 1.0
                node = parent[node]
        self.register_buffer("siblings", siblings, persistent=False)
        output_group = torch.tensor([group[parent[n]] for n in nodes])  # [O]: the group of each output
        self.register_buffer("output_group", output_group, persistent=False)
        # float64 (small: [C, O]); cast to the outputs' dtype in use
        self.register_buffer("path", path, persistent=False)
        self.register_buffer("weighted_path", self._weighted_path(path), persistent=False)

    def _weighted_path(self, path: torch.Tensor) -> torch.Tensor:
        """float64 ``[C, O]`` on the CPU: ``path`` (1 on each class's path) times the HXE weight of each
        output's node for the current ``alpha`` and ``normalize``."""
        weights = hxe_edge_weights(self._hierarchy, self.alpha, self.normalize).tolist()
        lam = torch.tensor([weights[n] for n in self._nodes], dtype=torch.float64)
        return path.cpu() * lam

    def _values_changed(self, names: set[str]) -> None:
        self.weighted_path.copy_(self._weighted_path(self.path))

    def conditional_log_probs(self, outputs: torch.Tensor) -> torch.Tensor:
        """``log p(node | parent)`` for every non-root node: float ``[N, O]`` -> float ``[N, O]`` (a
        log-softmax over each internal node's children)."""
        x = _compute_dtype(outputs)
        mask = self.siblings.to(x.device)
        masked = x.unsqueeze(1).masked_fill(~mask.unsqueeze(0), float("-inf"))  # [N, G, O]
        lse = masked.logsumexp(dim=2)  # [N, G]
        return x - lse.gather(1, self.output_group.to(x.device).expand(x.shape[0], -1))

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """``log p(c)`` of every class, the product of the conditional probabilities along its path:
        float ``[N, O]`` -> float ``[N, C]`` (``exp`` sums to 1 over the classes)."""
        log_cond = self.conditional_log_probs(outputs)
        return log_cond @ self.path.to(device=log_cond.device, dtype=log_cond.dtype).T

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of every sample, float ``[N]``."""
        self._check(outputs, targets)
        log_cond = self.conditional_log_probs(outputs)
        w = self.weighted_path.to(log_cond.device)[targets.to(log_cond.device)].to(log_cond.dtype)
        return -(w * log_cond).sum(dim=1)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample(outputs, targets).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, normalize={self.normalize}"


# --------------------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------------------


def loss_params(name: str) -> dict[str, Any]:
    """The parameters of loss ``name`` and their defaults (its registry declaration).

    Raises:
        ValueError: unknown loss name (the message lists the valid ones).
    """
    return LOSSES.defaults(name)


def is_embedding_loss(name: str) -> bool:
    """Whether loss ``name`` works on a class embedding (``cosine-distance``, ``cosine-plus-xent``,
    ``ranking-loss``). ValueError for an unknown name."""
    return bool(getattr(LOSSES.get(name), "takes_class_embeddings", False))


def build_loss(
    name: str, hierarchy, *, class_embeddings: torch.Tensor | None = None, **params: Any
) -> HierarchyLoss:
    """Build loss ``name`` for ``hierarchy``.

    Args:
        name: a registered loss (see the module table).
        hierarchy: a :class:`~hiercls.hierarchy.Hierarchy` (ignored by ``cross-entropy`` apart from the
            class count check; may be None there).
        class_embeddings: for the embedding losses, float ``[C, D]`` (e.g. DeViSE word vectors); None:
            Barz & Denzler's embeddings of ``hierarchy``. Refused for the other losses.
        **params: the loss's parameters (see the module table); omitted ones take their defaults.

    Returns:
        A :class:`HierarchyLoss` called as ``loss(outputs [N, num_outputs] float, targets [N] long) ->
        scalar`` (batch mean), with ``set_epoch(e: float)``, ``num_outputs`` and ``scores(outputs)``.

    Raises:
        ValueError: unknown loss name (lists the valid ones), unknown parameter (names it and the valid
            ones), an out-of-range value (names it and the valid range), class embeddings given to a loss
            that takes none, or embeddings that do not fit.
    """
    full = LOSSES.check(name, params)
    canonical = LOSSES.canonical(name)
    if hierarchy is None and canonical != "cross-entropy":
        raise ValueError(f"loss {canonical!r} needs a hierarchy")
    if is_embedding_loss(canonical):
        return LOSSES.get(name)(hierarchy, class_embeddings=class_embeddings, **full)
    if class_embeddings is not None:
        raise ValueError(f"loss {canonical!r} takes no class embeddings (only the embedding losses do)")
    return LOSSES.get(name)(hierarchy, **full)
