"""The two-sample tests the distribution checks use (no SciPy in the environment)."""

import numpy as np

# Upper 0.1% points of the chi-square distribution, by degrees of freedom (statistics tables).
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 10: 29.59, 11: 31.26, 23: 49.73}


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def ks_critical(n: int, m: int) -> float:
    """The KS statistic's critical value at alpha = 0.001 for samples of n and m."""
    return 1.95 * np.sqrt((n + m) / (n * m))


def chi_square(a: list[int], b: list[int]) -> float:
    """Pearson's statistic for two samples of counts over the same cells (homogeneity)."""
    total_a, total_b = sum(a), sum(b)
    stat = 0.0
    for x, y in zip(a, b, strict=True):
        pooled = (x + y) / (total_a + total_b)
        for observed, total in ((x, total_a), (y, total_b)):
            expected = pooled * total
            stat += (observed - expected) ** 2 / expected
    return stat
