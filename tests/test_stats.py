"""analysis.stats: hand-computed values, edge cases, seeding, pairing and interval coverage by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.stats import (
    bootstrap_ratio_ci,
    mcnemar_exact,
    paired_bootstrap_diff_ci,
    paired_t_interval,
    ratio,
    resolved,
    seeds_needed,
    t_interval,
    wilson_interval,
)

Z95 = 1.959963984540054  # Φ⁻¹(0.975)
T975_3 = 3.182446305284263  # t quantile 0.975, 3 degrees of freedom


# --- Wilson -------------------------------------------------------------------------------------------------

def test_wilson_by_hand():
    k, n, z2 = 3, 10, Z95 * Z95
    # the same interval written as (k + z²/2) / (n + z²) ± z sqrt(n) / (n + z²) · sqrt(p q + z² / 4n)
    center = (k + z2 / 2) / (n + z2)
    half = Z95 * math.sqrt(n) / (n + z2) * math.sqrt(0.3 * 0.7 + z2 / (4 * n))
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(center - half, abs=1e-12)
    assert high == pytest.approx(center + half, abs=1e-12)
    assert (round(low, 7), round(high, 7)) == (0.1077913, 0.6032219)


def test_wilson_edges():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and 0.2 < high < 0.3
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and 0.7 < low < 0.8
    assert wilson_interval(0, 10)[1] == pytest.approx(1.0 - wilson_interval(10, 10)[0], abs=1e-15)
    narrow, wide = wilson_interval(3, 10, level=0.5), wilson_interval(3, 10, level=0.99)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]


@pytest.mark.parametrize(("args", "bad"), [((1, 0), "n=0"), ((-1, 10), "k=-1"), ((11, 10), "k=11"),
                                           ((3, 10, 1.0), "1.0"), ((3, 10, 0.0), "0.0")])
def test_wilson_bad_inputs(args, bad):
    with pytest.raises(ValueError, match=bad):
        wilson_interval(*args)


# --- ratio and bootstrap ------------------------------------------------------------------------------------

def test_ratio():
    assert ratio([1.0, 2.0, 3.0], [1.0, 1.0, 0.0]) == 3.0
    assert ratio([0.0, 0.0], [0.0, 0.0]) == 0.0  # mistake severity without mistakes
    assert bootstrap_ratio_ci([0.0, 0.0], [0.0, 0.0], n_boot=50) == (0.0, 0.0)


def test_bootstrap_two_images_by_hand():
    # resampled means of [0, 1]: 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4
    num, den = np.array([0.0, 1.0]), np.ones(2)
    assert bootstrap_ratio_ci(num, den, n_boot=20000, seed=3) == (0.0, 1.0)
    # the 0.3 and 0.7 quantiles both fall in the central mass 1/2 (cumulative 1/4 .. 3/4)
    assert bootstrap_ratio_ci(num, den, n_boot=20000, seed=3, level=0.4) == (0.5, 0.5)


def test_bootstrap_constant_is_zero_width():
    num, den = np.full(7, 0.1), np.ones(7)
    low, high = bootstrap_ratio_ci(num, den, n_boot=300)
    assert low == high == ratio(num, den)
    assert low == pytest.approx(0.1, abs=1e-15)


def test_bootstrap_seeded():
    rng = np.random.default_rng(5)
    num, den = (rng.random(300) < 0.4).astype(float), np.ones(300)
    first = bootstrap_ratio_ci(num, den, n_boot=400, seed=11)
    assert first == bootstrap_ratio_ci(num, den, n_boot=400, seed=11)
    assert first != bootstrap_ratio_ci(num, den, n_boot=400, seed=12)
    assert first[0] < ratio(num, den) < first[1]


def test_coverage_bootstrap_and_wilson():
    """Both intervals of an error with true p = 0.3 over N = 500 images cover p in 93..97 % of 1000 draws."""
    rng = np.random.default_rng(2024)
    p, n, reps = 0.3, 500, 1000
    den = np.ones(n)
    boot_hits = wilson_hits = 0
    for rep in range(reps):
        wrong = (rng.random(n) < p).astype(np.float64)
        low, high = bootstrap_ratio_ci(wrong, den, n_boot=500, seed=rep)
        boot_hits += low <= p <= high
        low, high = wilson_interval(int(wrong.sum()), n)
        wilson_hits += low <= p <= high
    assert 0.93 <= boot_hits / reps <= 0.97
    assert 0.93 <= wilson_hits / reps <= 0.97


@pytest.mark.parametrize(("kwargs", "bad"), [
    ({"num": [1.0], "den": [1.0], "n_boot": 0}, "n_boot must be an integer >= 1, got 0"),
    ({"num": [1.0, 2.0], "den": [1.0]}, r"\(2,\), \(1,\)"),
    ({"num": [], "den": []}, "empty"),
    ({"num": [1.0, math.nan], "den": [1.0, 1.0]}, "1 non-finite"),
    ({"num": [1.0], "den": [1.0], "level": 95}, "got 95"),
])
def test_bootstrap_bad_inputs(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        bootstrap_ratio_ci(kwargs.pop("num"), kwargs.pop("den"), **kwargs)


# --- paired bootstrap ---------------------------------------------------------------------------------------

def test_paired_identical_models():
    rng = np.random.default_rng(0)
    num, den = rng.random(100), (rng.random(100) < 0.5).astype(float)
    assert paired_bootstrap_diff_ci(num, den, num, den, n_boot=300) == (0.0, 0.0, 0.0)


def test_paired_constant_shift():
    num_a = np.random.default_rng(1).integers(0, 5, size=64).astype(float)
    point, low, high = paired_bootstrap_diff_ci(num_a, np.ones(64), num_a + 2.0, np.ones(64), n_boot=300)
    assert (point, low, high) == pytest.approx((-2.0, -2.0, -2.0), abs=1e-12)


def test_pairing_narrows_the_interval():
    """Models with large per-image variance, identical except one image: the shared variance cancels."""
    n, n_boot = 200, 1000
    a = np.random.default_rng(2).normal(0.0, 10.0, size=n)
    b = a.copy()
    b[0] += 1.0
    ones = np.ones(n)
    point, low, high = paired_bootstrap_diff_ci(a, ones, b, ones, n_boot=n_boot, seed=4)
    assert point == pytest.approx(-1.0 / n, abs=1e-12)
    assert -6.0 / n <= low <= point <= high <= 0.0
    # unpaired: each model resampled on its own images
    rng = np.random.default_rng(4)
    diffs = a[rng.integers(0, n, (n_boot, n))].mean(axis=1) - b[rng.integers(0, n, (n_boot, n))].mean(axis=1)
    unpaired_low, unpaired_high = np.quantile(diffs, [0.025, 0.975])
    assert unpaired_high - unpaired_low > 2.0  # ≈ 2 · 1.96 · 10 · sqrt(2 / 200) ≈ 3.9
    assert high - low < 0.01 * (unpaired_high - unpaired_low)
    assert not resolved(unpaired_low, unpaired_high)


def test_paired_bad_lengths():
    with pytest.raises(ValueError, match=r"\(3,\), \(3,\), \(2,\), \(3,\)"):
        paired_bootstrap_diff_ci(np.ones(3), np.ones(3), np.ones(2), np.ones(3))


# --- McNemar ------------------------------------------------------------------------------------------------

def _mistakes(b: int, c: int, both: int = 4, neither: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """0/1 mistakes of A and B with b discordant (A wrong, B right) and c (A right, B wrong) images."""
    wrong_a = np.array([1] * b + [0] * c + [1] * both + [0] * neither)
    wrong_b = np.array([0] * b + [1] * c + [1] * both + [0] * neither)
    return wrong_a, wrong_b


@pytest.mark.parametrize(("b", "c", "p"), [(0, 5, 2 * 0.5**5), (1, 9, 2 * (1 + 10) / 2**10), (3, 3, 1.0),
                                           (0, 0, 1.0), (9, 1, 2 * (1 + 10) / 2**10)])
def test_mcnemar_by_hand(b, c, p):
    # b = 1, c = 9: P(X <= 1), X ~ Binomial(10, 1/2), is (C(10, 0) + C(10, 1)) / 2^10 = 11 / 1024
    got_b, got_c, got_p = mcnemar_exact(*_mistakes(b, c))
    assert (got_b, got_c) == (b, c)
    assert got_p == pytest.approx(p, rel=1e-12)


def test_mcnemar_bool_and_bad_values():
    wrong_a, wrong_b = _mistakes(2, 5)
    assert mcnemar_exact(wrong_a.astype(bool), wrong_b.astype(bool)) == mcnemar_exact(wrong_a, wrong_b)
    with pytest.raises(ValueError, match="wrong_b must hold 0/1 mistakes, got value 2.0"):
        mcnemar_exact([0, 1], [0, 2])
    with pytest.raises(ValueError, match=r"\(2,\), \(3,\)"):
        mcnemar_exact([0, 1], [0, 1, 1])


# --- over seeds ---------------------------------------------------------------------------------------------

def test_t_interval_by_hand():
    mean, std, low, high = t_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3), rel=1e-14)
    half = T975_3 * math.sqrt(5 / 3) / 2
    assert (low, high) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-12)


def test_t_interval_single_value_and_zero_spread():
    mean, std, low, high = t_interval([0.25])
    assert mean == 0.25 and math.isnan(std) and math.isnan(low) and math.isnan(high)
    assert paired_t_interval([0.3, 0.2, 0.5], [0.3, 0.2, 0.5]) == (0.0, 0.0, 0.0, 0.0)
    assert paired_t_interval([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]) == t_interval([1.0, 2.0, 3.0, 4.0])


@pytest.mark.parametrize(("call", "bad"), [
    (lambda: t_interval([1.0, math.nan, math.inf]), "2 non-finite value"),
    (lambda: t_interval([]), r"shape \(0,\)"),
    (lambda: t_interval([1.0, 2.0], level=1.5), "1.5"),
    (lambda: paired_t_interval([1.0, 2.0], [1.0]), r"\(2,\) and \(1,\)"),
])
def test_t_interval_bad_inputs(call, bad):
    with pytest.raises(ValueError, match=bad):
        call()


def test_seeds_needed():
    # normal approximation (z_.975 + z_.8)² = (1.95996 + 0.84162)² ≈ 7.85; the t quantiles make it 10:
    # n = 9: t_.975,8 + t_.8,8 ≈ 2.306 + 0.889 = 3.195 > sqrt(9) = 3; n = 10: 2.262 + 0.883 = 3.145 <= 3.162
    assert seeds_needed(1.0, 1.0) == 10
    assert seeds_needed(-0.02, 0.02) == 10  # sign and units do not matter, only |delta| / sd
    assert seeds_needed(1.0, 1.0, power=0.9) > 10 and seeds_needed(1.0, 1.0, level=0.9) < 10
    # delta = 2 sd: n = 4: 3.182 + 0.978 = 4.16 > sqrt(4) · 2 = 4; n = 5: 2.776 + 0.941 = 3.72 <= 4.47
    assert seeds_needed(0.2, 0.1) == 5  # the normal approximation (7.85 / 4 ≈ 2) is far too low here
    n1, n2 = seeds_needed(0.2, 1.0), seeds_needed(0.1, 1.0)
    assert 3.5 < n2 / n1 < 4.5  # halving delta about quadruples n
    assert 785 <= n2 <= 789  # normal approximation 784.9, plus about two for the t quantiles


@pytest.mark.parametrize(("args", "kwargs", "bad"), [
    ((0.0, 1.0), {}, "delta, got 0.0"), ((1.0, 0.0), {}, "sd, got 0.0"), ((1.0, -1.0), {}, "sd, got -1.0"),
    ((math.nan, 1.0), {}, "nan"), ((1.0, 1.0), {"power": 1.0}, "power .* got 1.0"),
    ((1e-3, 1.0), {}, "more than 10000 seeds for delta=0.001"),
])
def test_seeds_needed_bad_inputs(args, kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        seeds_needed(*args, **kwargs)


def test_resolved():
    assert resolved(0.01, 0.2) and resolved(-0.2, -0.01)
    assert not resolved(-0.1, 0.1) and not resolved(0.0, 0.1) and not resolved(math.nan, math.nan)
