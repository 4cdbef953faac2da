"""The skill metrics ecologists publish for species distribution models, with bootstrap confidence intervals.

Presence tasks: ROC AUC, the max-TSS threshold (chosen on training data, applied to test data), TSS,
sensitivity, specificity, precision, F1, and the continuous Boyce index (Hirzel et al. 2006) for presence-only
evaluation. Abundance tasks: MAE, RMSE, Spearman's rho. ``evaluate_presence`` / ``evaluate_abundance`` return a
tidy long table (one row per species and metric, plus ``micro`` and ``macro`` rows) with percentile-bootstrap
intervals from resampling sites.

Undefined values (AUC with one class, sensitivity with no presences, Spearman on constant input...) are NaN,
never an exception; bad input (NaN scores, mismatched lengths, non-binary labels) raises ``EcoalignInputError``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage, special, stats

from ecoalign.core.errors import EcoalignInputError
from ecoalign.sdm.bootstrap import bias_corrected_table, check_bootstrap

__all__ = [
    "PRESENCE_METRICS", "ABUNDANCE_METRICS",
    "auc", "max_tss_threshold", "threshold_rules", "THRESHOLD_RULES", "confusion_metrics", "boyce_index", "mae", "rmse", "spearman",
    "evaluate_presence", "evaluate_abundance",
]

PRESENCE_METRICS = ("auc", "tss", "f1", "sensitivity", "specificity")
THRESHOLD_RULES = ("max_tss", "equal_sens_spec", "p10_presence")
MIN_TEST_PRESENCES = 5  # species with fewer presences are reported per species but left out of the macro mean
ABUNDANCE_METRICS = ("mae", "rmse", "spearman")
_NAN = float("nan")


# ------------------------------------------------------------------------------------------------ validation


def _vector(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise EcoalignInputError(f"{name} has shape {arr.shape}", expected="a 1-D array (one value per site)")
    return arr


def _finite(a, name: str) -> np.ndarray:
    arr = _vector(a, name)
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise EcoalignInputError(f"{name} is not numeric (dtype {arr.dtype})", expected="numbers") from None
    bad = ~np.isfinite(arr)
    if bad.any():
        raise EcoalignInputError(f"{name} has {int(bad.sum())} NaN/inf value(s), first at row {int(np.flatnonzero(bad)[0])}",
                                 expected="finite scores (drop or impute those sites first)")
    return arr


def _binary(a, name: str) -> np.ndarray:
    arr = _vector(a, name)
    if arr.dtype == bool:
        return arr
    try:
        f = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise EcoalignInputError(f"{name} is not numeric (dtype {arr.dtype})", expected="0/1 presence labels") from None
    bad = ~np.isin(f, (0.0, 1.0))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise EcoalignInputError(f"{name} has {int(bad.sum())} value(s) other than 0/1, e.g. {arr[first]!r} at row {first}",
                                 expected="0/1 (or boolean) presence labels with no NaN")
    return f == 1.0


def _same_length(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if len(a) != len(b):
        raise EcoalignInputError(f"{na} has {len(a)} rows but {nb} has {len(b)}", expected="one value per site in both")


# ------------------------------------------------------------------------------------- fast unchecked kernels


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return _NAN
    ranks = stats.rankdata(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _confusion(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    tp = float(np.count_nonzero(y & pred))
    fp = float(np.count_nonzero(~y & pred))
    fn = float(np.count_nonzero(y & ~pred))
    tn = float(y.size) - tp - fp - fn
    sens = tp / (tp + fn) if tp + fn else _NAN
    spec = tn / (tn + fp) if tn + fp else _NAN
    prec = tp / (tp + fp) if tp + fp else _NAN
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else _NAN
    return {"tss": sens + spec - 1.0, "sensitivity": sens, "specificity": spec, "f1": f1, "precision": prec,
            "accuracy": (tp + tn) / y.size if y.size else _NAN}


def _boyce(p: np.ndarray, b: np.ndarray, n_windows: int, window_width: float | None) -> float:
    """Continuous Boyce index as ecospat computes it (Hirzel et al. 2006; Di Cola et al. 2017): windows slide over
    the background's score range; windows without background are skipped; a run of equal P/E ratios (typically
    the many windows where presences are absent, P/E = 0) counts once, so ties do not swamp the rank
    correlation of P/E with the window midpoints."""
    if p.size == 0 or b.size == 0:
        return _NAN
    lo, hi = float(b.min()), float(b.max())
    span = hi - lo
    if span <= 0:
        return _NAN
    width = 0.1 * span if window_width is None else float(window_width)
    if width >= span:
        return _NAN
    starts = np.linspace(lo, hi - width, n_windows)
    ends = starts + width
    ends[-1] = max(ends[-1], hi)
    ps, bs = np.sort(p), np.sort(b)
    n_p = np.searchsorted(ps, ends, side="right") - np.searchsorted(ps, starts, side="left")
    n_b = np.searchsorted(bs, ends, side="right") - np.searchsorted(bs, starts, side="left")
    keep = n_b > 0
    if keep.sum() < 2:
        return _NAN
    ratio = np.round((n_p[keep] / p.size) / (n_b[keep] / b.size), 10)
    mids = (starts[keep] + ends[keep]) / 2.0
    last_of_run = np.r_[ratio[:-1] != ratio[1:], True]
    ratio, mids = ratio[last_of_run], mids[last_of_run]
    if ratio.size < 2 or np.ptp(ratio) == 0:
        return _NAN
    return float(stats.spearmanr(ratio, mids)[0])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return _NAN
    return float(stats.spearmanr(a, b)[0])


# ------------------------------------------------------------------------------------------ public metrics


def auc(y, score) -> float:
    """ROC AUC (rank/Mann-Whitney form, ties count half): the chance a presence outscores an absence; NaN if a class is missing."""
    y = _binary(y, "y")
    s = _finite(score, "score")
    _same_length(y, s, "y", "score")
    return _auc(y, s)


def _roc_sweep(y, score) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Checked (y, scores) and every distinct threshold (descending) with its sensitivity and specificity when
    predicting presence at ``score >= threshold``; None if a class is missing."""
    y = _binary(y, "y")
    s = _finite(score, "score")
    _same_length(y, s, "y", "score")
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # end of each run of equal scores
    sens = np.cumsum(y_sorted)[last] / n1
    spec = 1.0 - np.cumsum(~y_sorted)[last] / n0
    return y, s, s_sorted[last], np.c_[sens, spec]


def _lowest_best(candidates: np.ndarray, value: np.ndarray) -> float:
    """The lowest threshold among those with the highest value (candidates are in descending order)."""
    return float(candidates[np.flatnonzero(value >= value.max() - 1e-12)[-1]])


def max_tss_threshold(y, score) -> float:
    """Score threshold (a unique score value; predict presence when score >= it) maximising TSS; lowest wins ties,
    NaN if a class is missing. Choose it on out-of-fold predictions, not on a model's own training rows."""
    sweep = _roc_sweep(y, score)
    if sweep is None:
        return _NAN
    _, _, cand, ss = sweep
    return _lowest_best(cand, ss[:, 0] + ss[:, 1] - 1.0)


def confusion_metrics(y, score, threshold: float) -> dict[str, float]:
    """Binarise at ``score >= threshold`` and return tss, sensitivity, specificity, f1, precision, accuracy (all NaN if threshold is NaN)."""
    y = _binary(y, "y")
    s = _finite(score, "score")
    _same_length(y, s, "y", "score")
    threshold = float(threshold)
    if math.isnan(threshold):
        return dict.fromkeys(("tss", "sensitivity", "specificity", "f1", "precision", "accuracy"), _NAN)
    return _confusion(y, s >= threshold)


def _kernel_rates(y: np.ndarray, s: np.ndarray, bins: int = 1024) -> tuple[np.ndarray, np.ndarray] | None:
    """Kernel-smoothed ROC (Zou et al. 1997): candidate thresholds and their smoothed (sensitivity, specificity).

    Each class's scores are smoothed with a Gaussian kernel (Silverman's bandwidth) on the logit scale when the
    scores are probabilities, through a histogram of ``bins`` cells (linear in the number of sites). The
    empirical max-TSS of a few dozen presences jumps between the gaps of single records; the smoothed curve's
    maximum does not: much of that noise goes (the bias does not). None when either class has
    no spread to smooth."""
    probabilities = s.min() >= 0.0 and s.max() <= 1.0
    z = special.logit(np.clip(s, 1e-6, 1 - 1e-6)) if probabilities else s.astype(float)
    parts = [z[y], z[~y]]
    widths = []
    for v in parts:
        sd = min(float(np.std(v)), float(np.subtract(*np.percentile(v, [75, 25]))) / 1.349) or float(np.std(v))
        widths.append(1.06 * sd * len(v) ** -0.2)
    if not all(w > 0 for w in widths):
        return None
    edges = np.linspace(z.min() - 4 * max(widths), z.max() + 4 * max(widths), bins + 1)
    step = edges[1] - edges[0]
    cdfs = []
    for v, w in zip(parts, widths):
        hist = np.histogram(v, edges)[0].astype(float)
        dens = ndimage.gaussian_filter1d(hist, max(w / step, 0.5), mode="constant", truncate=5.0)
        cdfs.append(np.cumsum(dens) / max(dens.sum(), 1e-300))  # share of the class below each cell's right edge
    sens, spec = 1.0 - cdfs[0], cdfs[1]
    cand = edges[1:][::-1]  # descending, as _roc_sweep gives them
    if probabilities:
        cand = special.expit(cand)
    return cand, np.c_[sens[::-1], spec[::-1]]


def threshold_rules(y, score, smooth: bool = True) -> dict[str, float]:
    """The usual presence thresholds from (out-of-fold) predictions: ``max_tss`` (Allouche et al. 2006),
    ``equal_sens_spec`` (sensitivity closest to specificity; Liu et al. 2005) and ``p10_presence`` (the score
    90 % of the presences reach). NaN where a class is missing.

    ``smooth``: max-TSS and sensitivity = specificity are read from the kernel-smoothed ROC curve
    (``_kernel_rates``) rather than the step curve, which is what the few presences of most species make noisy
    (on the disdat training records, halves of the out-of-fold predictions scored each other's smoothed
    thresholds at TSS 0.491 vs 0.480 for the step curve). ``smooth=False``: the textbook empirical rules."""
    sweep = _roc_sweep(y, score)
    if sweep is None:
        return dict.fromkeys(THRESHOLD_RULES, _NAN)
    y, s, cand, ss = sweep
    smoothed = _kernel_rates(y, s) if smooth else None
    if smoothed is not None:
        cand, ss = smoothed
    return {"max_tss": _lowest_best(cand, ss[:, 0] + ss[:, 1] - 1.0),
            "equal_sens_spec": _lowest_best(cand, -np.abs(ss[:, 0] - ss[:, 1])),
            "p10_presence": float(np.quantile(s[y], 0.1, method="lower"))}


def boyce_index(score_at_presences, score_background, n_windows: int = 101, window_width: float | None = None) -> float:
    """Continuous Boyce index (Hirzel et al. 2006): Spearman rho between moving-window P/E ratios and window midpoints; NaN if undefined.

    Windows of ``window_width`` (default a tenth of the background's score range) slide in ``n_windows`` steps
    over the background's range; P is the share of presences and E the share of background scores in a window.
    As in ecospat's ``ecospat.boyce``: windows with no background are skipped and successive equal P/E ratios
    count once. The background is the landscape's reference sample (background points), not the presences.
    """
    p = _finite(score_at_presences, "score_at_presences")
    b = _finite(score_background, "score_background")
    if int(n_windows) != n_windows or n_windows < 2:
        raise EcoalignInputError(f"n_windows={n_windows!r}", expected="an integer >= 2")
    if window_width is not None and not (float(window_width) > 0):
        raise EcoalignInputError(f"window_width={window_width!r}", expected="a positive width in score units, or None")
    return _boyce(p, b, int(n_windows), window_width)


def mae(y, pred) -> float:
    """Mean absolute error, in the units of the abundance being predicted."""
    y, p = _finite(y, "y"), _finite(pred, "pred")
    _same_length(y, p, "y", "pred")
    return float(np.mean(np.abs(y - p))) if y.size else _NAN


def rmse(y, pred) -> float:
    """Root mean squared error: like MAE but punishing large misses more."""
    y, p = _finite(y, "y"), _finite(pred, "pred")
    _same_length(y, p, "y", "pred")
    return float(np.sqrt(np.mean((y - p) ** 2))) if y.size else _NAN


def spearman(y, pred) -> float:
    """Spearman rank correlation: does the model rank sites by abundance correctly? NaN for constant input."""
    y, p = _finite(y, "y"), _finite(pred, "pred")
    _same_length(y, p, "y", "pred")
    return _spearman(y, p)


def _matrix(a, name: str, names: list[str] | None) -> tuple[np.ndarray, list[str] | None]:
    """(n, S) float matrix plus the DataFrame's column names if ``a`` was one."""
    cols = [str(c) for c in a.columns] if isinstance(a, pd.DataFrame) else None
    arr = np.asarray(a)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise EcoalignInputError(f"{name} has shape {arr.shape}", expected="(n_sites,) or (n_sites, n_species)")
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise EcoalignInputError(f"{name} is not numeric (dtype {arr.dtype})", expected="numbers") from None
    return arr, cols


def _names(given, from_frames: Sequence[list[str] | None], k: int, what: str) -> list[str]:
    if given is None:
        given = next((c for c in from_frames if c is not None), None)
    if given is None:
        return [f"{what}_{j}" for j in range(k)]
    names = [str(s) for s in given]
    if len(names) != k:
        raise EcoalignInputError(f"{len(names)} {what} names for {k} column(s)", expected="one name per column")
    if len(set(names)) != k:
        dup = next(s for s in names if names.count(s) > 1)
        raise EcoalignInputError(f"{what} name {dup!r} appears more than once", expected="unique names")
    if {"micro", "macro"} & set(names):
        raise EcoalignInputError(f"a {what} is called 'micro' or 'macro'", expected="names other than the summary rows")
    return names


def _paired(y_true, pred, names, pred_name: str, what: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Truth and predictions as same-shaped (n, k) matrices with one name per column."""
    Y, ycols = _matrix(y_true, "y_true", None)
    P, pcols = _matrix(pred, pred_name, None)
    if Y.shape != P.shape:
        raise EcoalignInputError(f"y_true has shape {Y.shape} but {pred_name} has shape {P.shape}",
                                 expected=f"one value of {pred_name} per site and {what}")
    if Y.shape[0] == 0 or Y.shape[1] == 0:
        raise EcoalignInputError(f"no data to evaluate (shape {Y.shape})", expected=f"at least one site and {what}")
    return Y, P, _names(names, (ycols, pcols), Y.shape[1], what)


def _no_nan(arr: np.ndarray, name: str, names: list[str]) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        j = int(np.flatnonzero(bad.any(axis=0))[0])
        raise EcoalignInputError(f"{name} for {names[j]!r} has {int(bad[:, j].sum())} NaN/inf value(s), first at row "
                                 f"{int(np.flatnonzero(bad[:, j])[0])}", expected="finite values (drop or impute those sites)")


def _rows(names: list[str], metrics: Sequence[str], est, low, high, counts: dict[str, np.ndarray]) -> pd.DataFrame:
    labels = names + ["micro", "macro"]
    records = []
    for i, label in enumerate(labels):
        for m, metric in enumerate(metrics):
            row = {"species": label, "metric": metric, "value": est[i, m], "ci_low": low[i, m], "ci_high": high[i, m]}
            row.update({key: int(val[i]) for key, val in counts.items()})
            records.append(row)
    return pd.DataFrame.from_records(records)


def evaluate_presence(y_true, scores, thresholds, species_names: Sequence[str] | None = None, n_boot: int = 200,
                      seed: int | None = 0, *, alpha: float = 0.05, background_scores=None,
                      boyce: bool = True, min_presences: int = MIN_TEST_PRESENCES) -> pd.DataFrame:
    """Tidy table of auc, tss, f1, sensitivity, specificity (+ boyce) per species, micro (pooled) and macro (mean), with bootstrap CIs.

    ``y_true``/``scores``: (n_sites,) or (n_sites, n_species) 0/1 labels and model scores (DataFrames lend their
    column names). ``thresholds``: one per species (or a scalar), chosen on TRAINING data with
    ``max_tss_threshold``; NaN gives NaN threshold metrics for that species. Boyce compares scores at presences with
    ``background_scores`` ((m, n_species), resampled independently) when given, else with all of ``scores``
    (presence-only convention); ``boyce=False`` leaves it out. ``micro`` pools every (site, species) pair, each
    species binarised at its own threshold; ``macro`` is the mean over species with a defined value and at least
    ``min_presences`` presences (others keep their own row, with a ``note`` saying why they are not averaged).
    Columns: species, metric, value, ci_low, ci_high, n, n_presences, n_absences, note; bias-corrected bootstrap
    intervals resample sites (and the background independently); ``n_boot=0``: none.
    """
    Y, P, names = _paired(y_true, scores, species_names, "scores", "species")
    n, k = Y.shape
    bad = ~np.isin(Y, (0.0, 1.0)) & ~np.isnan(Y)  # NaN: site not evaluated for that species (presence-only)
    if bad.any():
        j = int(np.flatnonzero(bad.any(axis=0))[0])
        i = int(np.flatnonzero(bad[:, j])[0])
        raise EcoalignInputError(f"y_true for {names[j]!r} has value {Y[i, j]!r} at row {i}",
                                 expected="0/1 presence labels (NaN = not evaluated)")
    _no_nan(np.where(np.isnan(Y), 0.0, P), "scores", names)
    thr = np.asarray(thresholds, dtype=np.float64)
    thr = np.full(k, float(thr)) if thr.ndim == 0 else thr.ravel()
    if thr.size != k:
        raise EcoalignInputError(f"{thr.size} thresholds for {k} species", expected="one threshold per species")
    B = None
    if boyce and background_scores is not None:
        B, _ = _matrix(background_scores, "background_scores", None)
        if B.shape[1] != k or len(B) == 0:
            raise EcoalignInputError(f"background_scores has shape {B.shape}", expected=f"(n_background, {k})")
        _no_nan(B, "background_scores", names)
    check_bootstrap(n_boot, alpha)
    metrics = PRESENCE_METRICS + (("boyce",) if boyce else ())
    has_thr = np.isfinite(thr)

    def table(Yb: np.ndarray, Pb: np.ndarray, Bb: np.ndarray | None) -> np.ndarray:
        yb = Yb == 1.0
        ok = ~np.isnan(Yb)
        out = np.full((k + 2, len(metrics)), _NAN)
        pred = Pb >= np.where(has_thr, thr, np.inf)
        for j in range(k):
            m = ok[:, j]
            out[j, 0] = _auc(yb[m, j], Pb[m, j])
            if has_thr[j]:
                c = _confusion(yb[m, j], pred[m, j])
                out[j, 1:5] = (c["tss"], c["f1"], c["sensitivity"], c["specificity"])
            if boyce:
                out[j, 5] = _boyce(Pb[yb[:, j], j], Pb[m, j] if Bb is None else Bb[:, j], 101, None)
        out[k, 0] = _auc(yb[ok], Pb[ok])
        if has_thr.any():
            okt = ok[:, has_thr]
            c = _confusion(yb[:, has_thr][okt], pred[:, has_thr][okt])
            out[k, 1:5] = (c["tss"], c["f1"], c["sensitivity"], c["specificity"])
        if boyce:
            out[k, 5] = _boyce(Pb[yb], Pb[ok] if Bb is None else Bb.ravel(), 101, None)
        per = out[:k][enough]
        defined = np.isfinite(per).sum(axis=0)
        out[k + 1] = np.where(defined > 0, np.nansum(per, axis=0) / np.maximum(defined, 1), _NAN)
        return out

    used = ~np.isnan(Y)
    species_pres = np.nansum(Y, axis=0).astype(int)
    enough = species_pres >= int(min_presences)
    est, low, high = bias_corrected_table(table, (Y, P), B, n_boot, alpha, seed)
    n_pres = np.r_[species_pres, np.nansum(Y), np.nansum(Y)].astype(int)
    n_all = np.r_[used.sum(axis=0), used.sum(), used.sum()]
    rows = _rows(names, metrics, est, low, high, {"n": n_all, "n_presences": n_pres, "n_absences": n_all - n_pres})
    few = {names[j] for j in np.flatnonzero(~enough)}
    rows["note"] = np.where(rows["species"].isin(few),
                            f"fewer than {int(min_presences)} presences: not in the macro mean", "")
    return rows


def evaluate_abundance(y_true, pred, names: Sequence[str] | None = None, n_boot: int = 200, seed: int | None = 0, *,
                       alpha: float = 0.05) -> pd.DataFrame:
    """Tidy table of mae, rmse, spearman per abundance target (column) and their macro mean, with site-bootstrap CIs.

    ``y_true``/``pred``: (n_sites,) or (n_sites, n_targets). Same columns as ``evaluate_presence`` minus the
    presence counts (the ``species`` column holds the target name); the ``micro`` row pools all (site, target) pairs.
    """
    Y, P, labels = _paired(y_true, pred, names, "pred", "target")
    n, k = Y.shape
    _no_nan(Y, "y_true", labels)
    _no_nan(P, "pred", labels)
    check_bootstrap(n_boot, alpha)

    def table(Yb: np.ndarray, Pb: np.ndarray, _unused) -> np.ndarray:
        out = np.full((k + 2, len(ABUNDANCE_METRICS)), _NAN)
        err = Yb - Pb
        out[:k, 0] = np.abs(err).mean(axis=0)
        out[:k, 1] = np.sqrt((err ** 2).mean(axis=0))
        out[:k, 2] = [_spearman(Yb[:, j], Pb[:, j]) for j in range(k)]
        out[k] = (np.abs(err).mean(), np.sqrt((err ** 2).mean()), _spearman(Yb.ravel(), Pb.ravel()))
        per = out[:k]
        defined = np.isfinite(per).sum(axis=0)
        out[k + 1] = np.where(defined > 0, np.nansum(per, axis=0) / np.maximum(defined, 1), _NAN)
        return out

    est, low, high = bias_corrected_table(table, (Y, P), None, n_boot, alpha, seed)
    return _rows(labels, ABUNDANCE_METRICS, est, low, high, {"n": np.r_[np.full(k, n), n * k, n * k]})
