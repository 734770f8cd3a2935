"""Tests for hiercls.losses: reference values, reference computations, stability, every loss x hierarchy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hiercls.hierarchy import BUILTIN_HIERARCHIES, Hierarchy, cifar100_superclass_labels, load_hierarchy
from hiercls.losses import (
    LOSSES,
    build_loss,
    cross_entropy,
    hxe_edge_weights,
    loss_params,
    ramp_weight,
    soft_label_targets,
)

TINY_EDGES = [
    ("root", "A"),
    ("A", "a1"),
    ("A", "a2"),
    ("root", "B"),
    ("B", "B1"),
    ("B1", "b1"),
    ("B1", "b2"),
    ("root", "c"),
]
TINY_CLASSES = ["a1", "a2", "b1", "b2", "c"]


@pytest.fixture(scope="module")
def tiny() -> Hierarchy:
    """root -> A -> {a1, a2}; root -> B -> B1 -> {b1, b2}; root -> c (unbalanced)."""
    return Hierarchy.from_edges(TINY_EDGES, TINY_CLASSES)


@pytest.fixture(scope="module", params=BUILTIN_HIERARCHIES)
def builtin(request) -> Hierarchy:
    return load_hierarchy(request.param)


def _params_for(name: str, hierarchy: Hierarchy) -> dict:
    """Non-default parameters that exercise each loss (and the ones a tree needs)."""
    if name == "hierarchical-cross-entropy":
        return {"alpha": 0.5}
    if name == "soft-labels":
        return {"beta": 5.0}
    if name == "simple-hierarchy":
        level = {"cifar100-wordnet": 3}.get(hierarchy.name)
        return {"lambda_coarse": 0.5, "coarse_loss_ramp_epochs": 2.0} | (
            {"coarse_level": level} if level else {}
        )
    return {}


# --------------------------------------------------------------------------------------------------------
# registry / factory
# --------------------------------------------------------------------------------------------------------


def test_registered_names():
    assert LOSSES.names() == [
        "cosine-distance",
        "cosine-plus-xent",
        "cross-entropy",
        "hierarchical-cross-entropy",
        "ranking-loss",
        "simple-hierarchy",
        "soft-labels",
        "yolo-v2",
    ]


def test_defaults():
    assert loss_params("cross-entropy") == {"label_smoothing": 0.0}
    assert loss_params("hierarchical-cross-entropy") == {"alpha": 0.1, "normalize": False}
    assert loss_params("yolo-v2") == {"alpha": 0.1, "normalize": False}
    assert loss_params("soft-labels") == {"beta": 10.0}
    assert loss_params("simple-hierarchy") == {
        "lambda_fine": 1.0,
        "lambda_coarse": 1.0,
        "fine_loss_start_epoch": 0.0,
        "fine_loss_ramp_epochs": 0.0,
        "coarse_loss_start_epoch": 0.0,
        "coarse_loss_ramp_epochs": 0.0,
        "coarse_level": None,
    }


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("nope", {}, "valid: cosine-distance, cosine-plus-xent, cross-entropy, hierarchical-cross-entropy, "
                     "ranking-loss, simple-hierarchy, soft-labels, yolo-v2"),
        ("hierarchical-cross-entropy", {"beta": 1.0}, r"'beta'.*valid: alpha, normalize"),
        ("cross-entropy", {"alpha": 1.0}, r"'alpha'.*valid: label_smoothing"),
        ("soft-labels", {"alpha": 1.0}, r"'alpha'.*valid: beta"),
        ("simple-hierarchy", {"lambda": 1.0}, r"'lambda'.*coarse_level"),
        ("hierarchical-cross-entropy", {"alpha": -0.1}, r"alpha=-0.1 .*\[0.0, inf\)"),
        ("hierarchical-cross-entropy", {"alpha": float("nan")}, "alpha=nan"),
        ("hierarchical-cross-entropy", {"normalize": "yes"}, "normalize='yes'"),
        ("yolo-v2", {"normalize": 1}, "normalize=1"),
        ("yolo-v2", {"beta": 1.0}, r"'beta'.*valid: alpha, normalize"),
        ("soft-labels", {"beta": 0}, r"beta=0 .*\(0.0, inf\)"),
        ("soft-labels", {"beta": -3.0}, "beta=-3.0"),
        ("simple-hierarchy", {"lambda_fine": -1}, "lambda_fine=-1"),
        ("simple-hierarchy", {"lambda_coarse": -0.5}, "lambda_coarse=-0.5"),
        ("simple-hierarchy", {"fine_loss_start_epoch": -1}, "fine_loss_start_epoch=-1"),
        ("simple-hierarchy", {"coarse_loss_start_epoch": -2}, "coarse_loss_start_epoch=-2"),
        ("simple-hierarchy", {"fine_loss_ramp_epochs": -1}, "fine_loss_ramp_epochs=-1"),
        ("simple-hierarchy", {"coarse_loss_ramp_epochs": -1}, "coarse_loss_ramp_epochs=-1"),
        ("simple-hierarchy", {"coarse_level": 0}, r"coarse_level=0 .*1\.\.3"),
        ("simple-hierarchy", {"coarse_level": 9}, r"coarse_level=9 .*1\.\.3"),
    ],
)
def test_bad_params(tiny, name, params, match):
    if name == "simple-hierarchy" and "coarse_level" not in params:
        params = {**params, "coarse_level": 1}
    with pytest.raises(ValueError, match=match):
        build_loss(name, tiny, **params)


def test_simple_hierarchy_needs_level_without_superclasses(tiny):
    with pytest.raises(ValueError, match="coarse_level"):
        build_loss("simple-hierarchy", tiny)


def test_simple_hierarchy_defaults_to_official_superclasses():
    official = cifar100_superclass_labels()
    for name in ("cifar100-l5", "cifar100-coarse", "cifar100-wordnet"):
        loss = build_loss("simple-hierarchy", load_hierarchy(name))
        assert torch.equal(loss.groups, official), name
    wordnet = load_hierarchy("cifar100-wordnet")
    level2 = build_loss("simple-hierarchy", wordnet, coarse_level=2)
    assert torch.equal(level2.groups, wordnet.coarse_labels(2))


def test_set_epoch_rejects_bad_values(tiny):
    loss = build_loss("cross-entropy", tiny)
    with pytest.raises(ValueError, match="epoch"):
        loss.set_epoch(-1)
    with pytest.raises(ValueError, match="epoch"):
        loss.set_epoch(float("inf"))


def test_shape_errors(tiny):
    loss = build_loss("hierarchical-cross-entropy", tiny)
    with pytest.raises(ValueError, match="classes"):
        loss(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="targets"):
        loss(torch.zeros(2, 5), torch.tensor([0, 1, 2]))


def test_state_dict_is_empty_and_buffers_follow_device(tiny):
    for name in LOSSES.names():
        params = {"coarse_level": 1} if name == "simple-hierarchy" else {}
        loss = build_loss(name, tiny, **params)
        assert len(loss.state_dict()) == 0
        loss.load_state_dict({})
        loss.set_epoch(3.5)
        assert loss.epoch == 3.5
        loss.double()  # buffers are cast/moved with the module; forward must still work
        assert torch.isfinite(loss(torch.randn(3, loss.num_outputs), torch.tensor([0, 2, 4])))


# --------------------------------------------------------------------------------------------------------
# cross-entropy
# --------------------------------------------------------------------------------------------------------


def test_cross_entropy_matches_torch(tiny):
    x, t = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    assert build_loss("cross-entropy", tiny)(x, t).item() == pytest.approx(F.cross_entropy(x, t).item())


# --------------------------------------------------------------------------------------------------------
# hierarchical cross-entropy
# --------------------------------------------------------------------------------------------------------


def test_hxe_alpha0_tiny_is_ln5(tiny):
    loss = build_loss("hierarchical-cross-entropy", tiny, alpha=0.0)
    value = loss(torch.zeros(1, 5, dtype=torch.float64), torch.tensor([0]))
    assert value.item() == pytest.approx(math.log(5), abs=1e-6)
    assert value.item() == pytest.approx(1.609438, abs=1e-6)


@pytest.mark.parametrize("name", BUILTIN_HIERARCHIES)
def test_hxe_alpha0_equals_cross_entropy(name):
    h = load_hierarchy(name)
    torch.manual_seed(0)
    x, t = torch.randn(32, 100, dtype=torch.float64) * 3, torch.randint(0, 100, (32,))
    got = build_loss("hierarchical-cross-entropy", h, alpha=0.0)(x, t)
    assert got.item() == pytest.approx(F.cross_entropy(x, t).item(), abs=1e-10)


def _hxe_reference(h: Hierarchy, logits: torch.Tensor, targets: torch.Tensor, alpha: float, normalize: bool):
    """Straightforward HXE: loop over samples and the edges of the path, probabilities in float64."""
    probs = torch.softmax(logits.double(), dim=1)
    lam = {n: math.exp(-alpha * h.node_depth(n)) for n in h.nodes}
    total = sum(lam.values()) if normalize else 1.0
    out = []
    for row, y in zip(probs, targets.tolist()):

        def mass(node: str, row=row) -> float:
            return float(row[h.membership[h.node_index(node)]].sum())

        node, value = h.classes[y], 0.0
        for parent in h.ancestors(h.classes[y]):
            value -= lam[node] / total * math.log(mass(node) / mass(parent))
            node = parent
        out.append(value)
    return sum(out) / len(out)


@pytest.mark.parametrize("normalize", [False, True])
def test_hxe_matches_reference_loop(tiny, normalize):
    torch.manual_seed(1)
    x, t = torch.randn(20, 5) * 2, torch.randint(0, 5, (20,))
    got = build_loss("hierarchical-cross-entropy", tiny, alpha=0.5, normalize=normalize)(x, t)
    assert got.item() == pytest.approx(_hxe_reference(tiny, x, t, 0.5, normalize), abs=1e-5)


def test_hxe_matches_reference_loop_on_wordnet():
    h = load_hierarchy("cifar100-wordnet")
    torch.manual_seed(2)
    x, t = torch.randn(6, 100, dtype=torch.float64), torch.randint(0, 100, (6,))
    got = build_loss("hierarchical-cross-entropy", h, alpha=0.3)(x, t)
    assert got.item() == pytest.approx(_hxe_reference(h, x, t, 0.3, False), abs=1e-10)


def test_hxe_weights_follow_reference_convention(tiny):
    w = hxe_edge_weights(tiny, 0.5)
    assert w[tiny.node_index("root")] == 1.0
    assert w[tiny.node_index("A")] == pytest.approx(math.exp(-0.5))
    assert w[tiny.node_index("b1")] == pytest.approx(math.exp(-1.5))
    wn = hxe_edge_weights(tiny, 0.5, normalize=True)
    assert wn.sum().item() == pytest.approx(1.0)
    # larger alpha puts relatively more weight on the coarse (top) edges
    loss_lo = build_loss("hierarchical-cross-entropy", tiny, alpha=0.1)
    loss_hi = build_loss("hierarchical-cross-entropy", tiny, alpha=2.0)
    ratio = lambda m: (m.path_weights[0, 1] / m.path_weights[0, 0]).item()  # noqa: E731  A edge / a1 edge
    assert ratio(loss_hi) > ratio(loss_lo) > 1.0


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_hxe_confidently_wrong_is_finite(tiny, alpha):
    x = torch.full((1, 5), -60.0)
    x[0, 3] = 60.0
    x.requires_grad_()
    value = build_loss("hierarchical-cross-entropy", tiny, alpha=alpha)(x, torch.tensor([0]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()
    if alpha == 0.0:
        assert value.item() == pytest.approx(120.0, abs=1e-3)
    else:
        assert value.item() > 10.0


def test_hxe_half_precision_input(tiny):
    x = torch.randn(4, 5)
    t = torch.tensor([0, 1, 2, 4])
    loss = build_loss("hierarchical-cross-entropy", tiny, alpha=0.2)
    assert loss(x.to(torch.bfloat16), t).item() == pytest.approx(loss(x.to(torch.bfloat16).float(), t).item())


# --------------------------------------------------------------------------------------------------------
# soft labels
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 5.0, 30.0, 1e4])
def test_soft_targets_rows_sum_to_one(builtin, beta):
    y = soft_label_targets(builtin, beta)
    assert y.shape == (100, 100)
    assert torch.allclose(y.sum(1), torch.ones(100, dtype=y.dtype), atol=1e-6)
    assert torch.allclose(y.float().sum(1), torch.ones(100), atol=1e-6)
    assert (y.argmax(1) == torch.arange(100)).all()


def test_soft_targets_formula(tiny):
    y = soft_label_targets(tiny, 2.0)
    d = tiny.distances[0].double()  # a1 vs a1, a2, b1, b2, c: 0, 1, 3, 3, 3
    expected = torch.exp(-2.0 * d / tiny.max_distance)
    assert torch.allclose(y[0], expected / expected.sum())


def test_soft_labels_large_beta_is_cross_entropy(builtin):
    torch.manual_seed(3)
    x, t = torch.randn(16, 100) * 4, torch.randint(0, 100, (16,))
    got = build_loss("soft-labels", builtin, beta=1e4)(x, t)
    assert got.item() == pytest.approx(F.cross_entropy(x, t).item(), abs=1e-5)


def test_soft_labels_one_hot_uniform_is_ln4():
    h = Hierarchy.from_edges(
        [("r", "g"), ("g", "w"), ("g", "x"), ("r", "y"), ("r", "z")], ["w", "x", "y", "z"]
    )
    value = build_loss("soft-labels", h, beta=1e4)(torch.zeros(3, 4), torch.tensor([0, 2, 3]))
    assert value.item() == pytest.approx(math.log(4), abs=1e-6)
    assert value.item() == pytest.approx(1.386294, abs=1e-6)


def test_soft_labels_is_batchmean_kl(tiny):
    torch.manual_seed(4)
    x, t = torch.randn(7, 5), torch.randint(0, 5, (7,))
    y = soft_label_targets(tiny, 3.0).float()[t]
    expected = F.kl_div(F.log_softmax(x, 1), y, reduction="batchmean")
    assert build_loss("soft-labels", tiny, beta=3.0)(x, t).item() == pytest.approx(expected.item(), abs=1e-6)


def test_soft_labels_underflow_and_neg_inf_logits_stay_finite(tiny):
    # beta large enough that every off-class target underflows to exactly 0 in float32
    loss = build_loss("soft-labels", tiny, beta=500.0)
    assert (loss.soft_targets.float()[0, 2:] == 0).all()
    x = torch.randn(2, 5)
    x[0, 3] = float("-inf")  # target entry 0 there: 0 * log 0 must count as 0
    x[1, 4] = float("-inf")
    x.requires_grad_()
    value = loss(x, torch.tensor([0, 1]))
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, 3] == 0 and x.grad[1, 4] == 0


# --------------------------------------------------------------------------------------------------------
# simple hierarchy
# --------------------------------------------------------------------------------------------------------


def test_ramp_weight():
    assert ramp_weight(0.0, 0.0, 0.0) == 1.0
    assert ramp_weight(4.999, 5.0, 0.0) == 0.0
    assert ramp_weight(5.0, 5.0, 0.0) == 1.0
    assert ramp_weight(5.0, 5.0, 10.0) == 0.0
    assert ramp_weight(7.5, 5.0, 10.0) == pytest.approx(0.25)
    assert ramp_weight(15.0, 5.0, 10.0) == 1.0
    assert ramp_weight(100.0, 5.0, 10.0) == 1.0


def test_simple_hierarchy_coarse_ce_by_hand(tiny):
    torch.manual_seed(5)
    x = torch.randn(4, 5, dtype=torch.float64)
    t = torch.tensor([0, 3, 4, 1])
    loss = build_loss("simple-hierarchy", tiny, coarse_level=1, lambda_fine=0.0)
    groups = [[0, 1], [2, 3], [4]]  # {a1, a2}, {b1, b2}, {c}
    p = torch.softmax(x, 1)
    by_hand = []
    for row, y in zip(p, t.tolist()):
        g = next(g for g in groups if y in g)
        by_hand.append(-math.log(float(row[g].sum())))
    assert loss(x, t).item() == pytest.approx(sum(by_hand) / 4, abs=1e-12)
    assert loss.groups.tolist() == [0, 0, 1, 1, 2]


def test_simple_hierarchy_superclasses_on_builtins():
    # default level = the 20 official superclasses; with that grouping the coarse CE is over 5-class groups
    for name, level in [("cifar100-l5", 4), ("cifar100-coarse", 1)]:
        loss = build_loss("simple-hierarchy", load_hierarchy(name))
        assert loss.coarse_level == level
        assert loss.groups.bincount().tolist() == [5] * 20
    from hiercls.hierarchy import cifar100_superclass_labels

    assert torch.equal(
        build_loss("simple-hierarchy", load_hierarchy("cifar100-l5")).groups, cifar100_superclass_labels()
    )


def test_simple_hierarchy_weights_over_epochs(tiny):
    kw = dict(
        coarse_level=1,
        lambda_fine=2.0,
        lambda_coarse=0.5,
        fine_loss_start_epoch=0,
        fine_loss_ramp_epochs=0,
        coarse_loss_start_epoch=4,
        coarse_loss_ramp_epochs=2,
    )
    loss = build_loss("simple-hierarchy", tiny, **kw)
    torch.manual_seed(6)
    x, t = torch.randn(5, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4])
    fine = F.cross_entropy(x, t).item()
    coarse = build_loss("simple-hierarchy", tiny, coarse_level=1, lambda_fine=0.0)(x, t).item()
    for e, wc in [(0.0, 0.0), (3.99, 0.0), (4.0, 0.0), (4.5, 0.25), (5.0, 0.5), (6.0, 1.0), (50.0, 1.0)]:
        loss.set_epoch(e)
        assert loss.weights() == pytest.approx((2.0, 0.5 * wc))
        assert loss(x, t).item() == pytest.approx(2.0 * fine + 0.5 * wc * coarse, abs=1e-12), e


def test_simple_hierarchy_before_start_is_exact_zero(tiny):
    loss = build_loss(
        "simple-hierarchy", tiny, coarse_level=1, fine_loss_start_epoch=3, coarse_loss_start_epoch=5
    )
    # logits that make both terms non-finite: target logit -inf
    x = torch.tensor([[float("-inf"), 0.0, 0.0, 0.0, 0.0], [float("-inf"), float("-inf"), 1.0, 2.0, 3.0]])
    x.requires_grad_()
    t = torch.tensor([0, 1])
    loss.set_epoch(2.9)
    value = loss(x, t)
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))

    # only the fine term active (coarse term before its start): coarse adds exactly 0 and no gradient
    y = torch.randn(2, 5, requires_grad=True)
    loss.set_epoch(4.0)
    v = loss(y, t)
    v.backward()
    y2 = y.detach().clone().requires_grad_()
    cross_entropy(y2, t).backward()
    assert v.item() == cross_entropy(y.detach(), t).item()
    assert torch.allclose(y.grad, y2.grad, atol=0, rtol=0)
    assert v.item() == pytest.approx(F.cross_entropy(y.detach(), t).item(), rel=1e-6)


def test_cross_entropy_equals_torch_without_the_nll_kernel():
    """The gather-based cross-entropy (deterministic on CUDA) equals F.cross_entropy in value and gradient."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(64, 100, generator=g) * 5).requires_grad_()
    t = torch.randint(0, 100, (64,), generator=g)
    x2 = x.detach().clone().requires_grad_()
    a, b = cross_entropy(x, t), F.cross_entropy(x2, t)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert torch.allclose(x.grad, x2.grad, atol=1e-7, rtol=1e-5)


def test_simple_hierarchy_ramped_term_before_start_has_zero_grad(tiny):
    loss = build_loss(
        "simple-hierarchy",
        tiny,
        coarse_level=1,
        lambda_fine=0.0,
        coarse_loss_start_epoch=1,
        coarse_loss_ramp_epochs=4,
    )
    x = torch.randn(3, 5, requires_grad=True)
    for e in (0.0, 0.5, 1.0):  # at the start of a ramp the weight is still 0
        x.grad = None
        loss.set_epoch(e)
        v = loss(x, torch.tensor([0, 2, 4]))
        v.backward()
        assert v.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    loss.set_epoch(2.0)
    assert loss(x, torch.tensor([0, 2, 4])).item() > 0.0


# --------------------------------------------------------------------------------------------------------
# every loss on every built-in hierarchy
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSSES.names()))
def test_every_loss_trains_on_every_builtin(builtin, name):
    torch.manual_seed(7)
    params = _params_for(name, builtin)
    loss = build_loss(name, builtin, **params)
    loss.set_epoch(3.0)
    features = torch.randn(64, 32)
    targets = torch.randint(0, 100, (64,))
    model = torch.nn.Linear(32, loss.num_outputs)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    values = []
    for _ in range(20):
        opt.zero_grad()
        value = loss(model(features), targets)
        value.backward()
        assert torch.isfinite(value), name
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()), name
        values.append(value.item())
        opt.step()
    assert values[-1] < values[0] * 0.95, (name, values[0], values[-1])
    assert sum(b < a for a, b in zip(values, values[1:])) >= 15, values


@pytest.mark.parametrize("name", sorted(LOSSES.names()))
def test_every_loss_is_finite_for_extreme_logits(builtin, name):
    loss = build_loss(name, builtin, **_params_for(name, builtin))
    loss.set_epoch(10.0)
    x = torch.full((4, loss.num_outputs), -60.0)
    x[:, 7] = 60.0
    x.requires_grad_()
    value = loss(x, torch.tensor([0, 50, 99, 7]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()
    assert torch.isfinite(loss.scores(x.detach())).all()
    if loss.probabilistic:  # three of four samples confidently wrong
        assert value.item() > 1.0


# --------------------------------------------------------------------------------------------------------
# embedding losses (Barz & Denzler; DeViSE) and yolo-v2, against hand computations
# --------------------------------------------------------------------------------------------------------

BD_EDGES = [("root", "A"), ("A", "a1"), ("A", "a2"), ("root", "B"), ("B", "b1"), ("B", "b2")]


@pytest.fixture(scope="module")
def two_by_two() -> Hierarchy:
    """root -> A -> {a1, a2}; root -> B -> {b1, b2} (d_max 2)."""
    return Hierarchy.from_edges(BD_EDGES, ["a1", "a2", "b1", "b2"])


R = math.sqrt(0.75)
# Barz & Denzler's embeddings of that tree by hand: phi_a1 = e0; phi_a2 . phi_a1 = 1/2 ...
BD_TINY = torch.tensor([[1.0, 0, 0, 0], [0.5, R, 0, 0], [0, 0, 1.0, 0], [0, 0, 0.5, R]], dtype=torch.float64)


def test_embedding_losses_use_barzdenzler_by_default(two_by_two):
    for name in ("cosine-distance", "cosine-plus-xent", "ranking-loss"):
        loss = build_loss(name, two_by_two)
        assert loss.num_outputs == 4 and not loss.probabilistic
        torch.testing.assert_close(loss.class_embeddings.double(), BD_TINY, atol=1e-7, rtol=0)


def test_cosine_distance_by_hand(two_by_two):
    loss = build_loss("cosine-distance", two_by_two)
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]], requires_grad=True)
    # cos((.6, .8, 0, 0), phi_a2) = .3 + .8 R; cos((0, 0, 0, 1), phi_b1) = 0
    value = loss(x, torch.tensor([1, 2]))
    assert value.item() == pytest.approx(1 - (0.3 + 0.8 * R + 0.0) / 2, abs=1e-6)
    value.backward()
    assert torch.isfinite(x.grad).all()
    # the scores are the cosines to every class
    torch.testing.assert_close(loss.scores(x.detach())[0], torch.tensor([0.6, 0.3 + 0.8 * R, 0, 0]))
    # scaling an output changes nothing (it is normalised)
    assert loss(10 * x.detach(), torch.tensor([1, 2])).item() == pytest.approx(value.item(), abs=1e-6)


def test_cosine_plus_xent_by_hand(two_by_two):
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    t = torch.tensor([1, 2])
    cosine = 1 - (0.3 + 0.8 * R) / 2
    for weight in (0.0, 0.1, 2.0):
        loss = build_loss("cosine-plus-xent", two_by_two, xent_weight=weight)
        expected = cosine + weight * F.cross_entropy(x, t).item()
        assert loss(x, t).item() == pytest.approx(expected, abs=1e-6)
    assert loss_params("cosine-plus-xent") == {"xent_weight": 0.1}


def test_cosine_plus_xent_refuses_embeddings_of_another_size(two_by_two):
    with pytest.raises(ValueError, match="the embedding has 3 dimensions"):
        build_loss("cosine-plus-xent", two_by_two, class_embeddings=torch.randn(4, 3))


def test_ranking_loss_by_hand(two_by_two):
    e = torch.eye(4, 3, dtype=torch.float64)
    e[3] = torch.tensor([1.0, 1.0, 0.0])
    loss = build_loss("ranking-loss", two_by_two, class_embeddings=e)
    assert loss.num_outputs == 3
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], requires_grad=True)
    # sample 0 (class 1): s = (1, 0, 0, 1/sqrt2); terms .1 - 0 + s_c for c = 0, 2, 3
    s3 = 1 / math.sqrt(2)
    first = (0.1 + 1) + 0.1 + (0.1 + s3)
    # sample 1 (class 1): s = (0, 1, 0, 1/sqrt2): terms .1 - 1 + s_c, all <= 0 but c = 3: max(0, s3 - .9) = 0
    value = loss(x, torch.tensor([1, 1]))
    assert value.item() == pytest.approx((first + 0.0) / 2, abs=1e-6)
    value.backward()
    assert torch.isfinite(x.grad).all()
    # the reference sums over every class, y included: its value is ours + margin
    s = loss.cosines(x.detach())
    reference = (0.1 - s.gather(1, torch.tensor([[1], [1]])) + s).clamp_min(0).sum(1).mean()
    assert reference.item() == pytest.approx(value.item() + 0.1, abs=1e-6)
    wide = build_loss("ranking-loss", two_by_two, class_embeddings=e, margin=0.5)
    assert wide(x.detach(), torch.tensor([1, 1])).item() == pytest.approx(
        ((0.5 + 1) + 0.5 + (0.5 + s3) + max(0.0, 0.5 - 1 + s3)) / 2, abs=1e-6)


def test_ranking_loss_single_negative_draws_one_violating_class(two_by_two):
    e = torch.eye(4, 3, dtype=torch.float64)
    e[3] = torch.tensor([1.0, 1.0, 0.0])
    loss = build_loss("ranking-loss", two_by_two, class_embeddings=e, devise_single_negative=True)
    x = torch.tensor([[1.0, 0.0, 0.0]]).repeat(400, 1)
    torch.manual_seed(3)
    values = loss.per_sample(x, torch.ones(400, dtype=torch.long))
    # the violating classes of class 1 here are 0, 2, 3 with terms 1.1, 0.1, 0.1 + 1/sqrt2
    terms = torch.tensor([1.1, 0.1, 0.1 + 1 / math.sqrt(2)])
    picked = (values.unsqueeze(1) - terms).abs().argmin(dim=1)
    torch.testing.assert_close(values, terms[picked])
    counts = torch.bincount(picked, minlength=3)
    assert counts.min() > 400 / 3 * 0.7, counts  # each drawn, about uniformly
    torch.manual_seed(3)
    assert torch.equal(loss.per_sample(x, torch.ones(400, dtype=torch.long)), values)  # seeded
    # no violating class: 0
    assert loss(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([1])).item() == 0.0


def test_single_negative_is_never_the_true_class(two_by_two):
    """Frome et al. (2013) draw the negative among the classes other than the true one; fiveai's mask
    (``margin + s_c - s_y > 0`` over all classes) always holds the true class, whose term is ``margin``."""
    margin = 3.0  # above any cosine gap (at most 2): every class violates, the true one too in fiveai's mask
    loss = build_loss("ranking-loss", two_by_two, margin=margin, devise_single_negative=True)
    torch.manual_seed(5)
    n = 2000
    x, t = torch.randn(n, 4, dtype=torch.float64), torch.randint(0, 4, (n,))
    s = loss.cosines(x)
    fiveai_mask = margin + s - s.gather(1, t.view(-1, 1)) > 0
    assert fiveai_mask.all()  # the reference code could draw y for every sample (1 time in 4 here)
    state = torch.get_rng_state()
    drawn = loss.draw_negatives(x, t)
    assert drawn.dtype == torch.long and drawn.shape == (n,)
    assert not (drawn == t).any() and (drawn >= 0).all()
    # uniform over the 3 other classes: each of (class, negative) 12 pairs about n / 12 times
    pairs = torch.bincount(t * 4 + drawn, minlength=16).view(4, 4)
    assert (pairs.diagonal() == 0).all()
    off = pairs[~torch.eye(4, dtype=torch.bool)]
    assert off.min() > n / 12 * 0.7, pairs
    # per_sample draws the same classes from the same generator state: its value is that class's term
    torch.set_rng_state(state)
    values = loss.per_sample(x, t)
    expected = margin - s.gather(1, t.view(-1, 1)).squeeze(1) + s.gather(1, drawn.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(values, expected.to(values.dtype))
    # only the true class "violates" (margin 0.1, y's cosine 1 above every other by > 0.1): fiveai draws y
    # and adds the constant margin; ours draws nothing (-1) and adds 0
    e = torch.eye(4, dtype=torch.float64)
    small = build_loss("ranking-loss", two_by_two, class_embeddings=e, devise_single_negative=True)
    alone = torch.eye(4, dtype=torch.float64)
    targets = torch.arange(4)
    assert torch.equal(small.draw_negatives(alone, targets), torch.full((4,), -1))
    assert small(alone, targets).item() == 0.0


def _yolo_reference(h: Hierarchy, x: torch.Tensor, target: int, alpha: float) -> float:
    """The path loss written out: a softmax over the children of each node on the path."""
    parent = h.parent_index.tolist()
    root = parent.index(-1)
    nodes = [n for n in range(len(parent)) if n != root]
    total, node = 0.0, target
    while parent[node] >= 0:
        siblings = [j for j, n in enumerate(nodes) if parent[n] == parent[node]]
        own = siblings.index(nodes.index(node))
        ce = F.cross_entropy(x[siblings].unsqueeze(0), torch.tensor([own])).item()
        total += math.exp(-alpha * int(h.depth[node])) * ce
        node = parent[node]
    return total


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_yolo_v2_is_the_weighted_path_cross_entropy(tiny, alpha):
    loss = build_loss("yolo-v2", tiny, alpha=alpha)
    assert loss.num_outputs == len(tiny.nodes) - 1 and loss.probabilistic
    torch.manual_seed(0)
    x = torch.randn(5, loss.num_outputs, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3, 4])
    expected = sum(_yolo_reference(tiny, x.detach()[i], int(t[i]), alpha) for i in range(5)) / 5
    value = loss(x, t)
    assert value.item() == pytest.approx(expected, abs=1e-9)
    value.backward()
    assert torch.isfinite(x.grad).all()


def _fiveai_weight_sum(h: Hierarchy, alpha: float) -> float:
    """The divisor of fiveai's ``get_exponential_weighting(hierarchy, alpha, normalize=True)`` (its
    ``get_weighting`` default, used by its yolo-v2 and HXE): ``exp(-alpha * len(p))`` for every tree
    position ``p`` of the nltk tree (the root and the leaves included), summed with ``math.fsum``."""
    return math.fsum(math.exp(-alpha * len(p)) for p in h.to_nltk().treepositions())


def test_yolo_v2_normalize_is_fiveais_scale_on_wordnet():
    h = load_hierarchy("cifar100-wordnet")
    # node depths of the tree: 1 root, 4, 16, 27, 26, 34, 30, 20, 5 nodes at depths 0..8 (163 nodes)
    by_depth = [1, 4, 16, 27, 26, 34, 30, 20, 5]
    z = sum(n * math.exp(-0.1 * d) for d, n in enumerate(by_depth))
    assert z == pytest.approx(104.41419728618918, rel=1e-14)  # the "about 104x" of issue 22
    assert _fiveai_weight_sum(h, 0.1) == pytest.approx(z, rel=1e-14)
    plain = build_loss("yolo-v2", h, alpha=0.1)
    normed = build_loss("yolo-v2", h, alpha=0.1, normalize=True)
    assert "normalize=True" in repr(normed) and "normalize=False" in repr(plain)
    # fiveai's weight of each output's node: exp(-0.1 * depth) / Z on every class's path
    depth = torch.tensor([int(h.depth[n]) for n in normed._nodes], dtype=torch.float64)
    torch.testing.assert_close(normed.weighted_path, normed.path * torch.exp(-0.1 * depth) / z)
    torch.manual_seed(4)
    x = torch.randn(8, normed.num_outputs, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 100, (8,))
    value = normed(x, t)
    expected = sum(_yolo_reference(h, x.detach()[i], int(t[i]), 0.1) for i in range(8)) / 8 / z
    assert value.item() == pytest.approx(expected, rel=1e-12)
    assert plain(x, t).item() == pytest.approx(z * value.item(), rel=1e-12)  # ours is Z times fiveai's
    # gradients scale the same way
    value.backward()
    grad = x.grad.clone()
    x.grad = None
    plain(x, t).backward()
    torch.testing.assert_close(x.grad, z * grad)
    # the scores (leaf probabilities) do not depend on the weights
    torch.testing.assert_close(normed.scores(x.detach()), plain.scores(x.detach()))


def test_yolo_v2_normalize_on_the_tiny_tree_by_hand(tiny):
    # depths: root 0; A, B, c 1; a1, a2, B1 2; b1, b2 3
    z = 1 + 3 * math.exp(-0.7) + 3 * math.exp(-1.4) + 2 * math.exp(-2.1)
    assert _fiveai_weight_sum(tiny, 0.7) == pytest.approx(z, rel=1e-14)
    loss = build_loss("yolo-v2", tiny, alpha=0.7, normalize=True)
    x = torch.zeros(1, loss.num_outputs, dtype=torch.float64)
    # all outputs 0: class b1's path has log 3 (3 children of root), 0 (B1 only child of B), log 2
    value = loss(x, torch.tensor([TINY_CLASSES.index("b1")]))
    by_hand = (math.exp(-0.7) * math.log(3) + math.exp(-1.4) * 0.0 + math.exp(-2.1) * math.log(2)) / z
    assert value.item() == pytest.approx(by_hand, rel=1e-12)
    # alpha changed in place keeps the normalisation (Z recomputed for the new alpha)
    loss.set_values(alpha=0.0)
    fresh = build_loss("yolo-v2", tiny, alpha=0.0, normalize=True)
    assert torch.equal(loss.weighted_path, fresh.weighted_path)
    # alpha 0: every weight 1 / 9 (9 nodes)
    assert loss(x, torch.tensor([2])).item() == pytest.approx((math.log(3) + math.log(2)) / 9, rel=1e-12)


def test_yolo_v2_leaf_probabilities(tiny):
    loss = build_loss("yolo-v2", tiny)
    torch.manual_seed(1)
    x = torch.randn(6, loss.num_outputs, dtype=torch.float64)
    p = loss.scores(x).exp()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(6, dtype=torch.float64))
    # class b1's probability by hand: p(B | root) * p(B1 | B) * p(b1 | B1); B has one child B1 (p = 1)
    nodes = [n for n in tiny.nodes if n != "root"]
    col = {n: j for j, n in enumerate(nodes)}
    top = torch.softmax(x[:, [col["A"], col["B"], col["c"]]], dim=1)[:, 1]
    leaf = torch.softmax(x[:, [col["b1"], col["b2"]]], dim=1)[:, 0]
    torch.testing.assert_close(p[:, tiny.classes.index("b1")], top * leaf)
    # alpha 0: the loss is -log p(y) (the path's conditional log-probabilities telescope)
    t = torch.tensor([2, 0, 4, 3, 1, 2])
    zero = build_loss("yolo-v2", tiny, alpha=0.0)
    assert zero(x, t).item() == pytest.approx(-p.log().gather(1, t.view(-1, 1)).mean().item(), abs=1e-9)


def test_class_embeddings_only_for_the_embedding_losses(two_by_two):
    with pytest.raises(ValueError, match="takes no class embeddings"):
        build_loss("soft-labels", two_by_two, class_embeddings=BD_TINY)
    with pytest.raises(ValueError, match=r"must be \[4, D\]"):
        build_loss("cosine-distance", two_by_two, class_embeddings=torch.randn(3, 4))
    with pytest.raises(ValueError, match="'b1' has a zero embedding"):
        build_loss("cosine-distance", two_by_two, class_embeddings=torch.eye(4, 3).roll(0) * torch.tensor(
            [[1.0], [1.0], [0.0], [1.0]]))
