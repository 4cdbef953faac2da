"""SDM skill metrics: checked against scikit-learn, hand-computed examples and synthetic models of known quality."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from ecoalign.core.errors import EcoalignInputError
from ecoalign.sdm.bootstrap import bootstrap_ci
from ecoalign.sdm.metrics import (
    auc,
    boyce_index,
    confusion_metrics,
    evaluate_abundance,
    evaluate_presence,
    mae,
    max_tss_threshold,
    rmse,
    spearman,
)


def _value(table: pd.DataFrame, species: str, metric: str, column: str = "value") -> float:
    row = table[(table["species"] == species) & (table["metric"] == metric)]
    assert len(row) == 1, (species, metric)
    return float(row[column].iloc[0])


# ------------------------------------------------------------------------------------------------- AUC


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    score = np.round(y * 0.5 + rng.normal(size=300), 1)  # rounding makes many ties
    assert auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert auc(y.astype(bool), -score) == pytest.approx(1 - roc_auc_score(y, score), abs=1e-12)


def test_auc_is_nan_not_an_error_when_a_class_is_missing():
    assert np.isnan(auc(np.ones(5), np.arange(5.0)))
    assert np.isnan(auc(np.zeros(5), np.arange(5.0)))


def test_auc_rejects_bad_input_with_a_message():
    with pytest.raises(EcoalignInputError, match="rows"):
        auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(EcoalignInputError, match="NaN"):
        auc([0, 1], [0.1, np.nan])
    with pytest.raises(EcoalignInputError, match="0/1"):
        auc([0, 2], [0.1, 0.2])


# ------------------------------------------------------------------------------------------- TSS threshold


def test_max_tss_threshold_on_a_hand_made_example():
    # score 0.1..1.0; presences at 0.3, 0.6, 0.7, 0.9, 1.0. At t=0.6: TP=4, FP=1 -> sens 0.8, spec 0.8, TSS 0.6;
    # every other unique threshold gives TSS <= 0.4 (worked out by hand).
    score = np.round(np.arange(1, 11) / 10, 1)
    y = np.array([0, 0, 1, 0, 0, 1, 1, 0, 1, 1])
    thr = max_tss_threshold(y, score)
    assert thr == pytest.approx(0.6)
    m = confusion_metrics(y, score, thr)
    assert m["tss"] == pytest.approx(0.6)
    assert m["sensitivity"] == pytest.approx(0.8)
    assert m["specificity"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx(0.8)
    assert m["f1"] == pytest.approx(0.8)
    assert m["accuracy"] == pytest.approx(0.8)
    # the threshold is transferred as is: on other data the same cut gives other numbers
    m2 = confusion_metrics([1, 1, 0, 0], [0.65, 0.55, 0.2, 0.7], thr)
    assert (m2["sensitivity"], m2["specificity"], m2["tss"]) == pytest.approx((0.5, 0.5, 0.0))


@pytest.mark.parametrize("seed", [3, 4])
def test_max_tss_threshold_reaches_the_roc_maximum(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    score = np.round(y + rng.normal(scale=1.2, size=200), 1)
    thr = max_tss_threshold(y, score)
    assert thr in set(score)
    fpr, tpr, _ = roc_curve(y, score)
    assert confusion_metrics(y, score, thr)["tss"] == pytest.approx(np.max(tpr - fpr), abs=1e-12)


def test_threshold_and_confusion_metrics_undefined_cases_are_nan():
    assert np.isnan(max_tss_threshold([1, 1, 1], [0.2, 0.5, 0.9]))
    m = confusion_metrics([0, 0, 0], [0.2, 0.5, 0.9], 0.4)
    assert np.isnan(m["sensitivity"]) and np.isnan(m["tss"]) and m["specificity"] == pytest.approx(1 / 3)
    assert all(np.isnan(v) for v in confusion_metrics([0, 1], [0.2, 0.5], float("nan")).values())


# --------------------------------------------------------------------------------------------------- Boyce


def _presence_only_sample(rng, weight_fn, n_background=3000, n_presences=400):
    background = rng.uniform(0, 1, n_background)
    weights = weight_fn(background)
    presences = rng.choice(background, size=n_presences, p=weights / weights.sum())
    return presences, background


def test_boyce_index_is_near_one_for_a_good_model_and_negative_for_an_inverted_one():
    rng = np.random.default_rng(0)
    good_p, good_b = _presence_only_sample(rng, lambda s: s ** 2)
    bad_p, bad_b = _presence_only_sample(rng, lambda s: (1 - s) ** 2)
    flat_p, flat_b = _presence_only_sample(rng, lambda s: np.ones_like(s))
    good, bad, flat = boyce_index(good_p, good_b), boyce_index(bad_p, bad_b), boyce_index(flat_p, flat_b)
    assert good > 0.9
    assert bad < -0.9
    assert abs(flat) < good - 0.3  # a model no better than chance sits well below a good one


def test_boyce_index_skips_windows_without_background_and_is_nan_when_undefined():
    rng = np.random.default_rng(1)
    # a gap in the background between 0.4 and 0.6: windows inside it are skipped, not divided by zero
    background = np.r_[rng.uniform(0, 0.4, 1000), rng.uniform(0.6, 1, 1000)]
    w = background ** 3
    presences = rng.choice(background, size=300, p=w / w.sum())
    assert boyce_index(presences, background) > 0.8
    assert np.isnan(boyce_index([0.5, 0.5], [0.5, 0.5, 0.5]))  # no score range
    assert np.isnan(boyce_index([], [0.1, 0.5]))
    with pytest.raises(EcoalignInputError, match="NaN"):
        boyce_index([0.1, np.nan], [0.1, 0.5])


# ---------------------------------------------------------------------------------------- abundance metrics


def test_abundance_metrics_against_direct_formulas():
    y = np.array([0.0, 2.0, 5.0, 1.0])
    p = np.array([1.0, 2.0, 3.0, 3.0])
    assert mae(y, p) == pytest.approx((1 + 0 + 2 + 2) / 4)
    assert rmse(y, p) == pytest.approx(np.sqrt((1 + 0 + 4 + 4) / 4))
    assert spearman(y, p) == pytest.approx(stats.spearmanr(y, p)[0])
    assert np.isnan(spearman(y, np.ones(4)))


# ----------------------------------------------------------------------------------------------- bootstrap


def _scored_sample(n, rng):
    y = rng.integers(0, 2, n)
    return y, y + rng.normal(scale=1.5, size=n)


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(5)
    y_small, s_small = _scored_sample(100, rng)
    y_big, s_big = _scored_sample(1600, rng)
    est_s, lo_s, hi_s = bootstrap_ci(auc, y_small, s_small, n_boot=200, seed=0)
    est_b, lo_b, hi_b = bootstrap_ci(auc, y_big, s_big, n_boot=200, seed=0)
    assert est_s == pytest.approx(roc_auc_score(y_small, s_small))
    assert lo_s < est_s < hi_s and lo_b < est_b < hi_b
    assert (hi_b - lo_b) < 0.5 * (hi_s - lo_s)  # ~1/sqrt(16) in theory
    # same seed, same interval
    assert bootstrap_ci(auc, y_small, s_small, n_boot=200, seed=0) == (est_s, lo_s, hi_s)


def test_bootstrap_ci_drops_resamples_where_the_metric_is_undefined():
    y = np.zeros(15, dtype=int)
    y[0] = 1  # one presence: about a third of resamples miss it and give NaN AUC
    score = np.linspace(0, 1, 15)[::-1]
    est, lo, hi = bootstrap_ci(auc, y, score, n_boot=100, seed=0)
    assert est == 1.0 and lo == 1.0 and hi == 1.0
    est, lo, hi = bootstrap_ci(auc, np.ones(10), score[:10], n_boot=20)
    assert np.isnan(est) and np.isnan(lo) and np.isnan(hi)
    with pytest.raises(EcoalignInputError, match="rows"):
        bootstrap_ci(auc, y, score[:5])


# ------------------------------------------------------------------------------------------- tidy tables


def test_micro_and_macro_differ_on_an_imbalanced_example_computed_by_hand():
    # species A: 2 presences / 8 absences, threshold 0.5, all correct -> sens 1, spec 1, TSS 1, F1 1
    # species B: 8 presences / 2 absences, scores on another scale, threshold 5: 4 of 8 presences found, no false
    #   positives -> sens 0.5, spec 1, TSS 0.5, F1 = 2*4/(2*4+0+4) = 2/3
    # macro: sens 0.75, TSS 0.75, F1 5/6. micro (pool 6 TP, 0 FP, 4 FN, 10 TN): sens 0.6, TSS 0.6, F1 0.75.
    # A common threshold would get B wrong: at 0.5 every B site is "present".
    y_a = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    s_a = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.4, 0.45])
    y_b = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    s_b = np.array([9.0, 8.0, 7.0, 6.0, 4.0, 3.0, 2.0, 1.0, 1.5, 0.5])
    table = evaluate_presence(np.c_[y_a, y_b], np.c_[s_a, s_b], [0.5, 5.0], ["A", "B"], n_boot=0, min_presences=1)
    expected = {("A", "sensitivity"): 1.0, ("A", "tss"): 1.0, ("A", "f1"): 1.0,
                ("B", "sensitivity"): 0.5, ("B", "tss"): 0.5, ("B", "f1"): 2 / 3, ("B", "specificity"): 1.0,
                ("macro", "sensitivity"): 0.75, ("macro", "tss"): 0.75, ("macro", "f1"): 5 / 6,
                ("micro", "sensitivity"): 0.6, ("micro", "tss"): 0.6, ("micro", "f1"): 0.75,
                ("micro", "specificity"): 1.0}
    for (sp, metric), val in expected.items():
        assert _value(table, sp, metric) == pytest.approx(val), (sp, metric)
    # micro AUC pools the (y, score) pairs; macro AUC averages the per-species ones
    pooled = roc_auc_score(np.r_[y_a, y_b], np.r_[s_a, s_b])
    assert _value(table, "micro", "auc") == pytest.approx(pooled)
    per = [roc_auc_score(y_a, s_a), roc_auc_score(y_b, s_b)]
    assert _value(table, "macro", "auc") == pytest.approx(np.mean(per))
    assert _value(table, "micro", "auc") != pytest.approx(_value(table, "macro", "auc"))
    assert _value(table, "micro", "auc", "n_presences") == 10 and _value(table, "micro", "auc", "n") == 20
    assert _value(table, "B", "tss", "n_absences") == 2
    assert set(table.columns) >= {"species", "metric", "value", "ci_low", "ci_high", "n"}
    assert set(table["metric"]) == {"auc", "tss", "f1", "sensitivity", "specificity", "boyce"}


def test_evaluate_presence_single_class_species_gives_nan_not_a_crash():
    rng = np.random.default_rng(2)
    n = 80
    y = np.c_[rng.integers(0, 2, n), np.zeros(n, dtype=int), rng.integers(0, 2, n)]
    scores = y + rng.normal(size=(n, 3))
    scores[:, 1] = rng.normal(size=n)
    thr = [max_tss_threshold(y[:, 0], scores[:, 0]), 0.0, max_tss_threshold(y[:, 2], scores[:, 2])]
    table = evaluate_presence(y, scores, thr, ["a", "never_seen", "c"], n_boot=30, seed=1)
    assert np.isnan(_value(table, "never_seen", "auc"))
    assert np.isnan(_value(table, "never_seen", "sensitivity"))
    assert np.isnan(_value(table, "never_seen", "boyce"))
    assert _value(table, "never_seen", "specificity") == pytest.approx(np.mean(scores[:, 1] < 0))
    # macro averages the species where AUC is defined
    assert _value(table, "macro", "auc") == pytest.approx(
        np.mean([roc_auc_score(y[:, 0], scores[:, 0]), roc_auc_score(y[:, 2], scores[:, 2])]))
    for sp in ("a", "c", "micro", "macro"):
        est, lo, hi = (_value(table, sp, "auc", c) for c in ("value", "ci_low", "ci_high"))
        assert lo <= est <= hi and hi - lo > 0.01


def test_evaluate_presence_takes_dataframes_and_a_background_set():
    rng = np.random.default_rng(3)
    y = pd.DataFrame({"Carex": rng.integers(0, 2, 60)})
    scores = pd.DataFrame({"Carex": y["Carex"] + rng.normal(scale=0.7, size=60)})
    background = rng.normal(size=(500, 1)) + 0.5
    table = evaluate_presence(y, scores, 0.5, n_boot=0, background_scores=background)
    assert set(table["species"]) == {"Carex", "micro", "macro"}
    p = scores["Carex"].to_numpy()[y["Carex"].to_numpy() == 1]
    assert _value(table, "Carex", "boyce") == pytest.approx(boyce_index(p, background[:, 0]))
    assert _value(table, "Carex", "boyce") != pytest.approx(boyce_index(p, scores["Carex"]))
    no_boyce = evaluate_presence(y, scores, 0.5, n_boot=0, boyce=False)
    assert "boyce" not in set(no_boyce["metric"])


def test_evaluate_presence_bad_input_names_the_species():
    y = np.c_[[0, 1, 1, 0], [1, 0, 1, 0]]
    scores = np.c_[[0.1, 0.9, 0.8, 0.3], [0.5, np.nan, 0.2, 0.1]]
    with pytest.raises(EcoalignInputError, match="'Poa'.*NaN"):
        evaluate_presence(y, scores, [0.5, 0.5], ["Festuca", "Poa"], n_boot=0)
    with pytest.raises(EcoalignInputError, match="shape"):
        evaluate_presence(y, scores[:3], [0.5, 0.5], ["Festuca", "Poa"], n_boot=0)
    with pytest.raises(EcoalignInputError, match="thresholds"):
        evaluate_presence(y, np.nan_to_num(scores), [0.5], ["Festuca", "Poa"], n_boot=0)
    y_bad = y.astype(float)
    y_bad[2, 0] = 3
    with pytest.raises(EcoalignInputError, match="'Festuca'.*3"):
        evaluate_presence(y_bad, np.nan_to_num(scores), [0.5, 0.5], ["Festuca", "Poa"], n_boot=0)


def test_evaluate_abundance_per_group_and_macro():
    rng = np.random.default_rng(4)
    y = rng.poisson(3.0, size=(50, 2)).astype(float)
    pred = np.c_[y[:, 0] + rng.normal(size=50), np.full(50, 3.0)]  # second target: constant prediction
    table = evaluate_abundance(y, pred, ["mites", "beetles"], n_boot=50, seed=0)
    assert _value(table, "mites", "mae") == pytest.approx(np.mean(np.abs(y[:, 0] - pred[:, 0])))
    assert _value(table, "beetles", "rmse") == pytest.approx(np.sqrt(np.mean((y[:, 1] - 3.0) ** 2)))
    assert _value(table, "mites", "spearman") == pytest.approx(stats.spearmanr(y[:, 0], pred[:, 0])[0])
    assert np.isnan(_value(table, "beetles", "spearman"))
    assert _value(table, "macro", "mae") == pytest.approx(np.mean(np.abs(y - pred).mean(axis=0)))
    assert _value(table, "macro", "spearman") == pytest.approx(_value(table, "mites", "spearman"))
    lo, hi = _value(table, "mites", "mae", "ci_low"), _value(table, "mites", "mae", "ci_high")
    assert lo < _value(table, "mites", "mae") < hi
    with pytest.raises(EcoalignInputError, match="'beetles'"):
        bad = pred.copy()
        bad[4, 1] = np.nan
        evaluate_abundance(y, bad, ["mites", "beetles"], n_boot=0)
