"""Bootstrap intervals for skill metrics: percentile intervals for one metric, and bias-corrected intervals for
whole metric tables (resampling sites), which always contain their own estimate."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import stats

from ecoalign.core.errors import EcoalignInputError

_NAN = float("nan")


def check_bootstrap(n_boot, alpha) -> None:
    if int(n_boot) != n_boot or n_boot < 0:
        raise EcoalignInputError(f"n_boot={n_boot!r}", expected="a non-negative integer (0 = no interval)")
    if not 0 < alpha < 1:
        raise EcoalignInputError(f"alpha={alpha!r}", expected="a number between 0 and 1, e.g. 0.05 for a 95% interval")


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return _NAN, _NAN
    lo, hi = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def bootstrap_ci(metric_fn: Callable[..., float], *arrays, n_boot: int = 200, alpha: float = 0.05,
                 seed: int | None = 0) -> tuple[float, float, float]:
    """Percentile bootstrap: (estimate on all rows, low, high), resampling rows of all arrays jointly; NaN resamples are dropped."""
    if not arrays:
        raise EcoalignInputError("bootstrap_ci got no data arrays", expected="metric_fn followed by at least one array")
    check_bootstrap(n_boot, alpha)
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    for i, a in enumerate(arrays[1:], start=1):
        if a.ndim == 0 or len(a) != n:
            raise EcoalignInputError(f"array {i} has {0 if a.ndim == 0 else len(a)} rows but array 0 has {n}",
                                     expected="arrays with the same number of rows (resampled jointly)")
    if n == 0:
        raise EcoalignInputError("bootstrap_ci got empty arrays", expected="at least one row")
    estimate = float(metric_fn(*arrays))
    rng = np.random.default_rng(seed)
    boots = np.array([float(metric_fn(*(a[idx] for a in arrays)))
                      for idx in rng.integers(0, n, size=(int(n_boot), n))], dtype=np.float64)
    return (estimate, *_percentiles(boots, alpha))


def bias_corrected_table(table_fn: Callable[..., np.ndarray], arrays: Sequence[np.ndarray], extra: np.ndarray | None,
                     n_boot: int, alpha: float, seed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimate and percentile interval for every cell of ``table_fn``'s output; rows of ``arrays`` are resampled jointly
    and rows of ``extra`` (a background set of another length) independently."""
    estimate = table_fn(*arrays, extra)
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    boots = np.empty((int(n_boot),) + estimate.shape)
    for i in range(int(n_boot)):
        idx = rng.integers(0, n, size=n)
        ext = None if extra is None else extra[rng.integers(0, len(extra), size=len(extra))]
        boots[i] = table_fn(*(a[idx] for a in arrays), ext)
    low = np.full(estimate.shape, _NAN)
    high = np.full(estimate.shape, _NAN)
    for cell in np.ndindex(estimate.shape):
        low[cell], high[cell] = _bias_corrected(boots[(slice(None),) + cell], estimate[cell], alpha)
    return estimate, low, high


def _bias_corrected(values: np.ndarray, estimate: float, alpha: float) -> tuple[float, float]:
    """Bias-corrected percentile interval (Efron 1982): the percentiles shift by how far the bootstrap
    distribution's median sits from the estimate. Resampled sites duplicate scores, which biases rank metrics
    such as Boyce downwards; a plain percentile interval can then miss its own estimate. In the rare case the
    whole bootstrap distribution lies on one side, the interval is widened to reach the estimate."""
    values = values[np.isfinite(values)]
    if values.size == 0 or not np.isfinite(estimate):
        return _NAN, _NAN
    below = (np.count_nonzero(values < estimate) + 0.5 * np.count_nonzero(values == estimate)) / values.size
    below = min(max(below, 0.5 / values.size), 1.0 - 0.5 / values.size)
    z0 = stats.norm.ppf(below)
    za = stats.norm.ppf(alpha / 2.0)
    q_lo, q_hi = stats.norm.cdf(2 * z0 + za), stats.norm.cdf(2 * z0 - za)
    lo, hi = np.quantile(values, [q_lo, q_hi])
    return float(min(lo, estimate)), float(max(hi, estimate))


# ------------------------------------------------------------------------------------------ tidy evaluation
