"""Statistics over validation images (binomial and bootstrap intervals, McNemar's test) and over seeds
(Student-t intervals, the number of seeds a comparison needs).

Every metric of :func:`hiercls.evidence.per_image` is a ratio ``sum(num) / sum(den)`` of two float64 [N]
arrays over the N validation images (``den`` = 1 for errors, the 0/1 mistakes for mistake severity), so the
image-level functions take ``(num, den)`` pairs. Error rates are fractions (0..1), never percent; mistake
severity and hierarchical distances are LCA heights. Only numpy here; scipy is imported where it is used, so
importing this module is cheap. Every bad argument raises ``ValueError`` naming the value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Floats = np.ndarray | Sequence[float]  # a float64 [N] array or what np.asarray makes one of

__all__ = ["bootstrap_ratio_ci", "bootstrap_ratios", "mcnemar_exact", "paired_bootstrap_diff_ci",
           "paired_t_interval", "percentile_interval", "ratio", "resolved", "seeds_needed", "t_interval",
           "wilson_interval"]

_CHUNK_CELLS = 1_000_000  # resampled image indices held at once (int64: 8 MB), whatever N is
_MAX_SEEDS = 10_000


def _check_level(level: float, name: str = "level") -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {level!r}")
    return float(level)


def _images(*arrays: Floats) -> list[np.ndarray]:
    """The arrays as float64 [N], all of one length N >= 1 and finite."""
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    shapes = [a.shape for a in out]
    if any(len(s) != 1 for s in shapes) or len(set(shapes)) != 1:
        raise ValueError(f"expected 1-D per-image arrays of one length, got shapes {shapes}")
    if shapes[0][0] == 0:
        raise ValueError("expected at least one image, got empty arrays")
    bad = sum(int((~np.isfinite(a)).sum()) for a in out)
    if bad:
        raise ValueError(f"{bad} non-finite per-image value(s)")
    return out


def _ratios(num_sums: np.ndarray, den_sums: np.ndarray) -> np.ndarray:
    """Element-wise ``num_sums / den_sums``, 0.0 where ``den_sums`` is 0 (see :func:`ratio`)."""
    out = np.zeros_like(num_sums)
    np.divide(num_sums, den_sums, out=out, where=den_sums != 0)
    return out


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` (fractions) of a binomial proportion ``k / n``.

    ``center ± half`` with ``z = Φ⁻¹((1 + level) / 2)``, ``p = k / n``,
    ``center = (p + z²/2n) / (1 + z²/n)`` and ``half = z / (1 + z²/n) · sqrt(p(1 - p)/n + z²/4n²)``
    (E. B. Wilson, JASA 22, 1927; recommended over the Wald interval by A. Agresti and B. A. Coull, The
    American Statistician 52, 1998). The bounds are clipped to [0, 1]; ``k = 0`` gives exactly 0.0 as low
    and ``k = n`` exactly 1.0 as high.

    Raises:
        ValueError: ``n <= 0``, ``k`` outside ``0..n``, ``level`` outside (0, 1).
    """
    if n <= 0:
        raise ValueError(f"wilson_interval needs n >= 1 trials, got n={n!r}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n={n}, got k={k!r}")
    from scipy.stats import norm

    z = float(norm.ppf((1.0 + _check_level(level)) / 2.0))
    p, z2 = k / n, z * z
    scale = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    low = 0.0 if k == 0 else max(0.0, center - half)
    high = 1.0 if k == n else min(1.0, center + half)
    return low, high


def ratio(num: Floats, den: Floats) -> float:
    """``sum(num) / sum(den)`` of float64 [N] per-image arrays; 0.0 when ``sum(den) == 0`` (e.g. mistake
    severity of a model without mistakes is defined as 0.0).

    Raises:
        ValueError: shapes differ or are not 1-D, empty arrays, non-finite values.
    """
    num, den = _images(num, den)
    return float(_ratios(np.array(num.sum()), np.array(den.sum())))


def bootstrap_ratios(pairs: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int, seed: int
                     ) -> list[np.ndarray]:
    """For each ``(num, den)`` in ``pairs`` (all [N]), float64 [n_boot] ratios over the same resamples of N
    image indices drawn with replacement (``np.random.default_rng(seed).integers``), in chunks of at most
    :data:`_CHUNK_CELLS` indices."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    n = len(pairs[0][0])
    out = [np.empty(n_boot) for _ in pairs]
    rows = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        for res, (num, den) in zip(out, pairs):
            res[start:stop] = _ratios(num[idx].sum(axis=1), den[idx].sum(axis=1))
    return out


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval: the (1 - level)/2 and (1 + level)/2 empirical quantiles (numpy's default
    linear interpolation: type 7 of R. J. Hyndman and Y. Fan, The American Statistician 50, 1996)."""
    low, high = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def bootstrap_ratio_ci(num: Floats, den: Floats, *, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval ``(low, high)`` of :func:`ratio` ``(num, den)`` (B. Efron and R. J.
    Tibshirani, An Introduction to the Bootstrap, 1993, ch. 13): ``n_boot`` resamples of the N images
    (rows) with replacement. Same inputs, ``n_boot`` and ``seed`` give the same interval.

    Args:
        num, den: float64 [N] per-image numerators and denominators (N >= 1).

    Raises:
        ValueError: ``n_boot < 1``, mismatched or non-1-D shapes, empty or non-finite arrays, bad level.
    """
    level = _check_level(level)
    num, den = _images(num, den)
    (boot,) = bootstrap_ratios([(num, den)], n_boot, seed)
    return percentile_interval(boot, level)


def paired_bootstrap_diff_ci(num_a: Floats, den_a: Floats, num_b: Floats, den_b: Floats, *,
                             n_boot: int = 2000, seed: int = 0,
                             level: float = 0.95) -> tuple[float, float, float]:
    """``(ratio_a - ratio_b, low, high)``: the difference of two models' :func:`ratio` on the same N images
    and its percentile bootstrap interval (Efron and Tibshirani 1993, ch. 13), each resample using the SAME
    image indices for both models (paired), so the variance shared by the two models cancels.

    Args:
        num_a, den_a, num_b, den_b: float64 [N] per-image arrays, image i the same in all four.

    Raises:
        ValueError: length mismatch, empty or non-finite arrays, ``n_boot < 1``, bad level.
    """
    level = _check_level(level)
    num_a, den_a, num_b, den_b = _images(num_a, den_a, num_b, den_b)
    point = ratio(num_a, den_a) - ratio(num_b, den_b)
    boot_a, boot_b = bootstrap_ratios([(num_a, den_a), (num_b, den_b)], n_boot, seed)
    low, high = percentile_interval(boot_a - boot_b, level)
    return point, low, high


def mcnemar_exact(wrong_a: np.ndarray | Sequence[int],
                  wrong_b: np.ndarray | Sequence[int]) -> tuple[int, int, float]:
    """McNemar's exact test of two models' per-image 0/1 (or bool) top-1 mistakes [N] on the same images.

    ``b`` = images A gets wrong and B right, ``c`` = A right and B wrong; under equal error rates ``b`` is
    Binomial(b + c, 1/2) given ``b + c``, and the two-sided p-value is
    ``min(1, 2 · BinomCDF(min(b, c); b + c, 1/2))`` (Q. McNemar, Psychometrika 12, 1947; the exact
    conditional binomial form, e.g. A. Agresti, Categorical Data Analysis, 2nd ed., 2002, ch. 10).
    ``p = 1.0`` when ``b + c == 0``.

    Returns:
        ``(b, c, p)``.

    Raises:
        ValueError: lengths differ, arrays empty or not 1-D, values other than 0 and 1.
    """
    a, b_arr = _images(wrong_a, wrong_b)
    for name, arr in (("wrong_a", a), ("wrong_b", b_arr)):
        bad = arr[(arr != 0) & (arr != 1)]
        if bad.size:
            raise ValueError(f"{name} must hold 0/1 mistakes, got value {float(bad[0])!r}")
    b = int(((a == 1) & (b_arr == 0)).sum())
    c = int(((a == 0) & (b_arr == 1)).sum())
    if b + c == 0:
        return b, c, 1.0
    from scipy.stats import binom

    return b, c, float(min(1.0, 2.0 * binom.cdf(min(b, c), b + c, 0.5)))


def t_interval(values: Floats, level: float = 0.95) -> tuple[float, float, float, float]:
    """``(mean, std, low, high)`` of float values [n] (e.g. one metric over seeds): the sample standard
    deviation (ddof=1) and the Student-t interval ``mean ± t_{(1+level)/2, n-1} · std / sqrt(n)`` ("Student",
    Biometrika 6, 1908). With n == 1 the mean is a point estimate: std, low and high are NaN.

    Raises:
        ValueError: no values, values not 1-D, non-finite values (their count is named), bad level.
    """
    level = _check_level(level)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"t_interval needs a non-empty 1-D sequence, got shape {x.shape}")
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise ValueError(f"t_interval got {bad} non-finite value(s) of {x.size}")
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan, math.nan, math.nan
    from scipy.stats import t

    std = float(x.std(ddof=1))
    half = float(t.ppf((1.0 + level) / 2.0, x.size - 1)) * std / math.sqrt(x.size)
    return mean, std, mean - half, mean + half


def paired_t_interval(a: Floats, b: Floats, level: float = 0.95) -> tuple[float, float, float, float]:
    """:func:`t_interval` of the paired differences ``a - b`` (float [n], paired by position, e.g. seed i
    of a candidate against seed i of the baseline).

    Raises:
        ValueError: lengths differ, or as :func:`t_interval`.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired_t_interval needs equal shapes, got {x.shape} and {y.shape}")
    return t_interval(x - y, level)


def seeds_needed(delta: float, sd: float, *, level: float = 0.95, power: float = 0.8) -> int:
    """The number n of seeds (pairs) a paired comparison needs to resolve a true mean difference ``delta``
    with probability about ``power``, given the standard deviation ``sd`` of the per-seed differences
    (``delta`` and ``sd`` in the metric's units, e.g. both fractions).

    Rule: the smallest n >= 2 with ``t_{1-α/2, n-1} + t_{power, n-1} <= |delta| · sqrt(n) / sd``
    (α = 1 - level; central t quantiles in place of the normal ones of ``n = ((z_{1-α/2} + z_power) sd /
    delta)²``, the usual iteration for a two-sided one-sample/paired t-test, e.g. G. W. Snedecor and W. G.
    Cochran, Statistical Methods, 8th ed., 1989; S.-C. Chow, J. Shao and H. Wang, Sample Size Calculations
    in Clinical Research, 2008), an approximation to the exact noncentral-t power. ``delta == sd`` gives 10
    (normal approximation 7.85; the exact power is 0.748 at n = 9 and 0.803 at n = 10, so it agrees).

    Raises:
        ValueError: ``delta`` zero or non-finite, ``sd`` not positive and finite, ``level`` or ``power``
            outside (0, 1), or more than 10 000 seeds needed.
    """
    if not math.isfinite(delta) or delta == 0:
        raise ValueError(f"seeds_needed needs a non-zero finite delta, got {delta!r}")
    if not (math.isfinite(sd) and sd > 0):
        raise ValueError(f"seeds_needed needs a positive finite sd, got {sd!r}")
    alpha = 1.0 - _check_level(level)
    _check_level(power, "power")
    from scipy.stats import t

    n = np.arange(2, _MAX_SEEDS + 1)
    ok = t.ppf(1.0 - alpha / 2.0, n - 1) + t.ppf(power, n - 1) <= abs(delta) * np.sqrt(n) / sd
    if not ok.any():
        raise ValueError(f"seeds_needed: more than {_MAX_SEEDS} seeds for delta={delta!r}, sd={sd!r}")
    return int(n[np.argmax(ok)])


def resolved(low: float, high: float) -> bool:
    """Whether an interval ``(low, high)`` of a difference excludes 0 (``low > 0`` or ``high < 0``); NaN
    bounds give False."""
    return bool(low > 0 or high < 0)
