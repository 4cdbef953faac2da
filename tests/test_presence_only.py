"""Presence-only species models: weighting, down-sampled bagging, MaxEnt, DeepMaxent, the spatial ensemble,
out-of-fold thresholds, Boyce against the background, categorical predictors, threads, and bad input.

Real data: a subset of the NCEAS/disdat South America region (../shared/data/occurrences/disdat_dev).
Generated data: a landscape whose species niches are known, for checks that need the truth.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import SHARED
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from ecoalign.cli import main
from ecoalign.core.errors import EcoalignInputError
from ecoalign.sdm.deep_maxent import DeepMaxent
from ecoalign.sdm.downsampled import DownsampledBagging
from ecoalign.sdm.ensemble import SpatialEnsemble
from ecoalign.sdm.estimators import MultiSpeciesModel, balanced_weights, make_estimator
from ecoalign.sdm.fitting import cross_validate, load_bundle
from ecoalign.sdm.metrics import (
    boyce_index,
    evaluate_presence,
    max_tss_threshold,
    threshold_rules,
)
from ecoalign.sdm.sites import build_sites
from ecoalign.sdm.spec import spec_from_dict
from ecoalign.sdm.species_model import available_cores, resolve_n_jobs

DISDAT = SHARED / "occurrences" / "disdat_dev"
FAST_ENSEMBLE = {"member_params": {"rf_down": {"n_estimators": 30}, "deep_maxent": {"epochs": 60}}}


# ------------------------------------------------------------------------------------------ generated landscape


def landscape(seed: int = 0, n_bg: int = 3000, n_species: int = 4, rare: int = 8):
    """Background points and biased presence records in a 100 km square (metres, EPSG:32631).

    Covariates: temp (west-east), rain (south-north), soil (three integer-coded classes by region). Species k
    prefers temp near a different optimum and soil class k % 3; the last species is rare (``rare`` records).
    Records are denser in the south (observer bias) than the landscape. Returns background, records, and a
    function giving the true suitability at any table."""
    rng = np.random.default_rng(seed)

    def env(x, y):
        return pd.DataFrame({"temp": 25 - x / 5000 + rng.normal(0, 0.5, len(x)),
                             "rain": 500 + y / 100 + rng.normal(0, 20, len(x)),
                             "soil": (np.floor(x / 34000) + np.floor(y / 50000)).astype(int) % 3 + 1})

    def truth(table, k):
        opt = 8 + 4 * k
        return np.exp(-((table["temp"] - opt) ** 2) / 8) * np.where(table["soil"] == k % 3 + 1, 1.0, 0.35)

    bx, by = rng.uniform(0, 100_000, n_bg), rng.uniform(0, 100_000, n_bg)
    bg = pd.concat([pd.DataFrame({"x": bx, "y": by}), env(bx, by)], axis=1)
    recs = []
    for k in range(n_species):
        n = rare if k == n_species - 1 else 120
        cx, cy = rng.uniform(0, 100_000, 40 * n), 100_000 * rng.beta(1.0, 2.0, 40 * n)  # biased to the south
        cand = pd.concat([pd.DataFrame({"x": cx, "y": cy}), env(cx, cy)], axis=1)
        p = truth(cand, k)
        pick = rng.choice(len(cand), n, replace=False, p=p / p.sum())
        recs.append(cand.iloc[pick].assign(species=f"sp{k}"))
    records = pd.concat(recs, ignore_index=True)[["species", "x", "y", "temp", "rain", "soil"]]
    return bg, records, truth


def survey(truth, seed: int = 1, n: int = 600, n_species: int = 4):
    """Independent presence/absence survey sites drawn from the true suitabilities."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 100_000, n), rng.uniform(0, 100_000, n)
    sites = pd.DataFrame({"site": [f"s{i}" for i in range(n)], "x": x, "y": y,
                          "temp": 25 - x / 5000 + rng.normal(0, 0.5, n), "rain": 500 + y / 100 + rng.normal(0, 20, n),
                          "soil": (np.floor(x / 34000) + np.floor(y / 50000)).astype(int) % 3 + 1})
    for k in range(n_species):
        sites[f"sp{k}"] = (rng.random(n) < 0.8 * truth(sites, k)).astype(int)
    return sites


def po_spec(tmp_path, estimator=None, name="po", **features):
    raw = {"name": name, "task": "presence_only", "target": {"species_column": "species", "min_presences": 2},
           "features": {"embeddings": False, "covariates": "all", **features},
           "estimator": estimator or {"name": "ensemble", "params": FAST_ENSEMBLE},
           "cv": {"scheme": "spatial_block", "folds": 3}, "metrics": ["auc", "boyce", "tss"], "bootstrap": 0}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def po_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("po")
    bg, records, truth = landscape()
    bg.to_csv(folder / "bg.csv", index=False)
    records.to_csv(folder / "records.csv", index=False)
    survey(truth).to_csv(folder / "survey.csv", index=False)
    return folder


def fit_cli(tmp_path, spec, folder, out="bundle", records="records.csv", bg="bg.csv", crs="EPSG:32631"):
    return main(["fit", str(spec), "--points", str(folder / records), "--background", str(folder / bg), "--crs", crs,
                 "--out", str(tmp_path / out), "--n-jobs", "1"])


# ----------------------------------------------------------------------------------------------- estimators


def test_balanced_weights_give_presences_and_background_equal_totals():
    y = np.r_[np.ones(20), np.zeros(10_000)]
    w = balanced_weights(y)
    assert w[y == 1].sum() == pytest.approx(w[y == 0].sum()) and w.sum() == pytest.approx(len(y))


def test_downsampled_forest_trees_see_balanced_bags_and_beat_the_unbalanced_forest():
    from sklearn.ensemble import RandomForestClassifier

    bg, records, truth = landscape(seed=2, n_species=1, rare=40)
    X = pd.concat([records[["temp", "rain"]], bg[["temp", "rain"]]]).to_numpy()
    y = np.r_[np.ones(len(records)), np.zeros(len(bg))]
    model = DownsampledBagging(n_estimators=60, random_state=0).fit(X, y)
    for tree in model.estimators_:
        assert tree.tree_.n_node_samples[0] == 2 * len(records)  # n_pres presences + n_pres background rows
        assert tree.tree_.weighted_n_node_samples[0] == 2 * len(records)
    test = survey(truth, n_species=1, n=800)
    down = roc_auc_score(test["sp0"], model.predict_proba(test[["temp", "rain"]].to_numpy())[:, 1])
    plain = RandomForestClassifier(60, random_state=0).fit(X, y)
    unbalanced = roc_auc_score(test["sp0"], plain.predict_proba(test[["temp", "rain"]].to_numpy())[:, 1])
    assert down > 0.75 and down > unbalanced


def test_maxent_is_elapid_with_every_feature_class_and_cloglog_output():
    from elapid import MaxentModel

    est = make_estimator("maxent")
    assert isinstance(est, MaxentModel) and est.transform == "cloglog"
    assert set(est.feature_types) == {"linear", "quadratic", "product", "hinge", "threshold"}
    bg, records, truth = landscape(seed=3, n_species=1, rare=60, n_bg=1500)
    X = pd.concat([records[["temp", "rain"]], bg[["temp", "rain"]]]).to_numpy()
    est.fit(X, np.r_[np.ones(len(records)), np.zeros(len(bg))])
    test = survey(truth, n_species=1, n=500)
    p = est.predict(test[["temp", "rain"]].to_numpy())
    assert ((p >= 0) & (p <= 1)).all() and roc_auc_score(test["sp0"], p) > 0.75
    with pytest.raises(EcoalignInputError, match="presence model"):
        make_estimator("maxent", task="abundance")


def test_deep_maxent_shares_one_network_and_helps_the_rare_species():
    bg, records, truth = landscape(seed=4, rare=8)
    names = sorted(records["species"].unique())
    X = pd.concat([records[["temp", "rain"]], bg[["temp", "rain"]]], ignore_index=True)
    Y = np.zeros((len(X), len(names)))
    for j, s in enumerate(names):
        Y[np.flatnonzero(records["species"] == s), j] = 1
    Y[:len(records)][Y[:len(records)] == 0] = 0  # other species' records: target-group background
    model = DeepMaxent(epochs=150, random_state=0).fit(X, Y, species=names)
    assert model.species_ == names and len(model.weights_) == 3  # two hidden layers + one output per species
    test = survey(truth, n=800)
    P = model.predict_proba(test[["temp", "rain"]])
    assert ((P >= 0) & (P <= 1)).all()
    aucs = [roc_auc_score(test[s], P[:, j]) for j, s in enumerate(names)]
    assert min(aucs[:-1]) > 0.75 and aucs[-1] > 0.65, aucs  # the 8-record species borrows the shared trunk
    # rows marked NaN are not used for that species; a species with one record is skipped with the reason
    Y2 = np.c_[Y, np.r_[1, np.zeros(len(X) - 1)]]
    with pytest.warns(UserWarning, match="skipped 1 of 5"):
        m2 = DeepMaxent(epochs=5).fit(X, Y2, species=names + ["single"])
    assert m2.skipped_species_ == {"single": "1 presences < min 2"}


def test_deep_maxent_clamps_covariates_to_the_training_range_as_maxent_does():
    """Beyond the range of the rows it was fitted on, the network's linear pieces would extrapolate without bound;
    like MaxEnt's default clamping, a covariate outside the range predicts as at the nearest edge."""
    bg, records, _ = landscape(seed=5)
    names = sorted(records["species"].unique())
    X = pd.concat([records[["temp", "rain"]], bg[["temp", "rain"]]], ignore_index=True)
    Y = np.zeros((len(X), len(names)))
    for j, s in enumerate(names):
        Y[np.flatnonzero(records["species"] == s), j] = 1
    far = pd.DataFrame({"temp": [X["temp"].max() + 40, X["temp"].min() - 40], "rain": [800.0, -5000.0]})
    edge = far.clip(lower=X.min(), upper=X.max(), axis=1)
    clamped = DeepMaxent(epochs=30, random_state=0).fit(X, Y, species=names)
    np.testing.assert_allclose(clamped.predict_proba(far), clamped.predict_proba(edge))
    free = DeepMaxent(epochs=30, random_state=0, clamp=False).fit(X, Y, species=names)
    assert not np.allclose(free.predict_proba(far), free.predict_proba(edge))
    inside = X.iloc[::50]  # within the range clamping changes nothing
    np.testing.assert_array_equal(clamped.predict_proba(inside), free.predict_proba(inside))
    old = dict(free.__getstate__())  # a network saved before clamping existed: no such parameter, predicts as fitted
    del old["clamp"], old["x_min_"], old["x_max_"]
    loaded = DeepMaxent.__new__(DeepMaxent)
    loaded.__setstate__(old)
    assert clone(loaded).clamp is False
    np.testing.assert_array_equal(loaded.predict_proba(far), free.predict_proba(far))


def test_threads_never_oversubscribe():
    cores = available_cores()
    assert resolve_n_jobs(-1) == cores == resolve_n_jobs(None) and resolve_n_jobs(10_000) == cores
    assert resolve_n_jobs(1) == 1
    with pytest.raises(EcoalignInputError):
        resolve_n_jobs(0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    Y = (rng.random((300, 3)) < 0.3).astype(int)
    many = MultiSpeciesModel("lightgbm", {"n_estimators": 5}, n_jobs=-1).fit(X, Y)
    one = MultiSpeciesModel("lightgbm", {"n_estimators": 5}, n_jobs=-1).fit(X, Y[:, 0])
    inner = {e.get_params()["n_jobs"] for e in many.estimators_.values()}
    assert inner == ({1} if cores > 1 else {cores})  # species in parallel: each LightGBM single-threaded
    assert one.estimators_["species"].get_params()["n_jobs"] == cores  # one species: its own threads


def test_small_forest_species_fit_serially_with_the_same_result():
    """Down-sampled forests of species with few presences are fitted one after another (a second thread only
    costs them CPU, benchmarks/bench_species_threads.py), the rest in threads; the fitted models do not depend
    on the plan, and each species keeps its own forest."""
    from ecoalign.sdm import estimators

    few, many = estimators._MIN_PRESENCES_PER_THREAD // 5, estimators._MIN_PRESENCES_PER_THREAD + 10
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 4))
    Y = np.zeros((800, 3))
    Y[:many, 0] = Y[200:200 + few, 1] = Y[400:400 + many, 2] = 1
    X[400:400 + many] += 2.0  # species 2 sits apart from the others
    model = MultiSpeciesModel("rf_down", {"n_estimators": 5}, min_presences=2, n_jobs=2)
    assert model._thread_plan([0, 1, 2], Y, np.isfinite(Y), threads=2) == ([0, 2], [1])
    assert model._thread_plan([0, 1, 2], Y, np.isfinite(Y), threads=1) == ([0, 1, 2], [])
    assert MultiSpeciesModel("lightgbm")._thread_plan([0, 1, 2], Y, np.isfinite(Y), threads=2) == ([0, 1, 2], [])
    planned = clone(model).fit(X, Y)
    serial = clone(model).set_params(n_jobs=1).fit(X, Y)
    assert list(planned.estimators_) == list(serial.estimators_) == planned.species_
    np.testing.assert_array_equal(planned.predict_proba(X), serial.predict_proba(X))
    assert roc_auc_score(Y[:, 2], planned.predict_proba(X)[:, 2]) > 0.9  # species 2's forest, not another's


# -------------------------------------------------------------------------------------------------- metrics


def test_threshold_rules_by_hand():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.2, 0.1, 0.05])
    rules = threshold_rules(y, s, smooth=False)
    assert rules["max_tss"] == max_tss_threshold(y, s) == 0.3  # sens 1, spec 4/6: TSS 0.667 (0.583 at 0.6)
    assert rules["p10_presence"] == 0.3  # 90 % of presences score at least this
    assert rules["equal_sens_spec"] == 0.4  # gap 0.083 at 0.6 (0.75 vs 0.833) and at 0.4 (0.75 vs 0.667): lower wins


def test_smoothed_thresholds_land_nearer_the_true_optimum_than_the_step_curve():
    # binormal scores on the logit scale (presences N(1, 1), background N(-1, 1)): the population max-TSS
    # threshold is the midpoint, logit 0 -> 0.5. With 15 presences the step curve's maximum wanders.
    rng = np.random.default_rng(0)
    err = {True: [], False: []}
    for _ in range(150):
        z = np.r_[rng.normal(1, 1, 15), rng.normal(-1, 1, 600)]
        y = np.r_[np.ones(15), np.zeros(600)]
        s = 1 / (1 + np.exp(-z))
        for smooth in (True, False):
            t = threshold_rules(y, s, smooth=smooth)["max_tss"]
            err[smooth].append(np.log(t / (1 - t)) ** 2)
    assert np.mean(err[True]) < 0.7 * np.mean(err[False])
    rules = threshold_rules(y, s)
    assert 0.2 < rules["max_tss"] < 0.8 and 0.2 < rules["equal_sens_spec"] < 0.8
    assert rules["p10_presence"] == threshold_rules(y, s, smooth=False)["p10_presence"]


def test_intervals_contain_their_estimate_and_few_presence_species_stay_out_of_the_macro():
    rng = np.random.default_rng(5)
    n = 400
    y = np.c_[rng.random(n) < 0.3, rng.random(n) < 0.2, np.r_[np.ones(3), np.zeros(n - 3)]].astype(float)
    s = np.clip(y * 0.3 + rng.random((n, 3)), 0, None)
    bg = rng.random((2000, 3)) * 1.1
    table = evaluate_presence(y, s, [0.5, 0.5, 0.5], ["a", "b", "rare"], n_boot=100, background_scores=bg)
    ok = table.dropna(subset=["value", "ci_low"])
    assert len(ok) > 10 and ((ok.ci_low <= ok.value + 1e-12) & (ok.value <= ok.ci_high + 1e-12)).all()
    rare = table[table.species == "rare"]
    assert (rare["note"].str.contains("fewer than 5 presences")).all()
    macro = table.query("species == 'macro' and metric == 'auc'")["value"].iloc[0]
    per = table.query("species in ['a', 'b'] and metric == 'auc'")["value"].mean()
    assert macro == pytest.approx(per)
    b = table.query("species == 'a' and metric == 'boyce'")["value"].iloc[0]
    assert b == pytest.approx(boyce_index(s[y[:, 0] == 1, 0], bg[:, 0]))  # against the background given


# ------------------------------------------------------------------------------- fit and evaluate end to end


def test_default_ensemble_end_to_end_on_records_and_background(po_files, tmp_path):
    spec = po_spec(tmp_path, categorical=["soil"])
    assert fit_cli(tmp_path, spec, po_files) == 0
    model, meta = load_bundle(tmp_path / "bundle")
    final = model[-1]
    assert isinstance(final, SpatialEnsemble) and meta["ensemble"]["selected"]
    assert set(meta["ensemble"]["member_cv_auc"]) == {"rf_down", "deep_maxent"}
    assert meta["features"] == ["temp", "rain", "soil"]  # raw columns; ids and coordinates left out
    assert set(meta["threshold_rules"]) == {"max_tss", "equal_sens_spec", "p10_presence"}
    for s, t in meta["thresholds"].items():  # out-of-fold max-TSS on the committee's scale, the value predict() uses
        assert 0.05 < t < 0.95 and final.thresholds_[s] == pytest.approx(t)
    carried = final.committee_thresholds(meta["out_of_fold_thresholds"])  # the same share of the landscape
    middle = float(np.median(list(carried.values())))
    records = pd.read_csv(po_files / "records.csv")
    for s, t in meta["thresholds"].items():  # pulled toward the median species' by 5 / (presences + 5)
        n = int((records["species"] == s).sum())
        assert t == pytest.approx((n * carried[s] + 5 * middle) / (n + 5))
    # not vacuous: some species moves by far more than approx's tolerance (one rare species' carried threshold can
    # lie next to the median by chance: on a CPU without AVX-512 sp3's moved 0.0008)
    assert max(abs(meta["thresholds"][s] - carried[s]) for s in carried) > 1e-4
    assert meta["threshold_rules"]["max_tss"] == meta["thresholds"] and "carried" in meta["threshold_rule"]
    ref = np.load(tmp_path / "bundle" / "reference_scores.npy")
    assert ref.shape[1] == len(meta["species"]) and 1000 < len(ref) <= 3000  # the background sample
    # independent survey: skill, thresholds that transfer, Boyce against the background reference
    out = tmp_path / "eval.csv"
    assert main(["evaluate", str(tmp_path / "bundle"), "--points", str(po_files / "survey.csv"), "--crs",
                 "EPSG:32631", "--id-column", "site", "--out", str(out)]) == 0
    ev = pd.read_csv(out)
    test = pd.read_csv(po_files / "survey.csv")
    P = model.predict_proba(test[meta["features"]])
    for j, s in enumerate(meta["species"]):
        got = ev.query("species == @s")
        auc = got.query("metric == 'auc'")["value"].iloc[0]
        assert auc > (0.7 if s != "sp3" else 0.6), (s, auc)
        boyce = got.query("metric == 'boyce'")["value"].iloc[0]
        assert boyce == pytest.approx(boyce_index(P[test[s] == 1, j], ref[:, j]), abs=1e-6)
        tss = got.query("metric == 'tss'")["value"].iloc[0]
        assert tss > 0.3, (s, tss)
    spread = final.predict_spread(model[:-1].transform(test[meta["features"]]))
    assert spread.shape == P.shape and (spread >= 0).all() and spread.mean() > 0


def test_thresholds_come_from_out_of_fold_predictions_not_the_training_rows(po_files, tmp_path):
    spec = spec_from_dict(yaml.safe_load(po_spec(tmp_path, {"name": "lightgbm", "params": {"n_estimators": 60}},
                                                 categorical=["soil"]).read_text()))
    records = pd.read_csv(po_files / "records.csv")
    bg = pd.read_csv(po_files / "bg.csv")
    import geopandas as gpd

    pts = gpd.GeoDataFrame(records, geometry=gpd.points_from_xy(records.x, records.y), crs="EPSG:32631")
    bgp = gpd.GeoDataFrame(bg, geometry=gpd.points_from_xy(bg.x, bg.y), crs="EPSG:32631")
    sites = build_sites(spec, points=pts, background=bgp)
    res = cross_validate(spec, sites, n_jobs=1)
    for s in res.species:
        y = res.y[s].to_numpy()
        ok = np.isfinite(y) & np.isfinite(res.oof[s].to_numpy())
        assert res.thresholds[s] == threshold_rules(y[ok] > 0, res.oof[s].to_numpy()[ok])["max_tss"]
        assert res.thresholds[s] < 0.9  # in-sample LightGBM scores put it near 1 (the bug this replaces)


def test_a_species_all_in_one_spatial_fold_gets_the_other_species_median_threshold(po_files, tmp_path, capsys):
    """Six records in one 2 km patch lie in one block of a tenth of the extent, hence one fold: no fold model scores
    any of them, so out-of-fold scores define no threshold. The committee's thresholds are shares of the landscape,
    comparable between species: the patch species gets the others' median, with a warning, not predict's 0.5."""
    records = pd.read_csv(po_files / "records.csv")
    rng = np.random.default_rng(4)
    patch = records.iloc[:6].copy().assign(species="patchy", x=55_000 + rng.uniform(0, 2000, 6),
                                           y=55_000 + rng.uniform(0, 2000, 6))
    pd.concat([records, patch], ignore_index=True).to_csv(tmp_path / "records.csv", index=False)
    (tmp_path / "bg.csv").write_text((po_files / "bg.csv").read_text())
    assert fit_cli(tmp_path, po_spec(tmp_path), tmp_path) == 0
    err = capsys.readouterr().err
    model, meta = load_bundle(tmp_path / "bundle")
    assert np.isnan(meta["out_of_fold_thresholds"]["patchy"])
    carried = model[-1].committee_thresholds(meta["out_of_fold_thresholds"])
    others = [t for s, t in carried.items() if s != "patchy"]
    assert meta["thresholds"]["patchy"] == pytest.approx(float(np.median(others)))
    assert meta["thresholds_from_other_species"] == ["patchy"]
    assert "warning: 1 species have no out-of-fold score" in err and "median of the other species" in err
    assert "['patchy']" in err
    assert meta["cv"]["block_size_m"] == pytest.approx(np.ptp(pd.concat([records, pd.read_csv(tmp_path / "bg.csv")])
                                                              [["x", "y"]].to_numpy(), axis=0).max() / 10)


def test_target_group_share_thins_the_random_background_and_keeps_it_as_landscape_reference(tmp_path):
    import geopandas as gpd

    bg, records, _ = landscape(n_bg=6000)
    pts = gpd.GeoDataFrame(records, geometry=gpd.points_from_xy(records.x, records.y), crs="EPSG:32631")
    bgp = gpd.GeoDataFrame(bg, geometry=gpd.points_from_xy(bg.x, bg.y), crs="EPSG:32631")
    raw = yaml.safe_load(po_spec(tmp_path).read_text())

    def sites_with(**target):
        return build_sites(spec_from_dict({**raw, "target": {**raw["target"], **target}}), points=pts, background=bgp)

    def background_in_use(sites):  # per species: random background points it takes as 0
        Y = sites.Y.to_numpy()[len(records):]
        return (Y == 0).sum(axis=0)

    n_rec = len(records)  # 368: half the background would be 368 points, so the 1,000-point floor holds
    default = sites_with()
    assert len(default.Y) == n_rec + 6000  # thinned points stay in the table
    assert (background_in_use(default) == 1000).all()
    thinned = ~np.isfinite(default.Y.to_numpy()[n_rec:]).any(axis=1)
    assert thinned.sum() == 5000
    # the same points for every species, so the ensemble's landscape reference may draw on them
    ens = SpatialEnsemble(members=["deep_maxent"], member_params={"deep_maxent": {"epochs": 5}}, n_jobs=1)
    ens.fit(default.X.to_numpy(), default.Y, coords=default.xy)
    assert (ens.reference_rows_ >= n_rec).all() and thinned[ens.reference_rows_ - n_rec].any()
    # a smaller share keeps more; null or a random background keeps them all; one species has no target group
    assert (background_in_use(sites_with(target_group_share=0.1)) == round(n_rec * 9)).all()
    assert (background_in_use(sites_with(target_group_share=None)) == 6000).all()
    rand = sites_with(background="random")
    assert (background_in_use(rand) == 6000).all() and np.isnan(rand.Y.to_numpy()[:n_rec]).any()
    one = records[records.species == "sp0"]
    one_pts = gpd.GeoDataFrame(one, geometry=gpd.points_from_xy(one.x, one.y), crs="EPSG:32631")
    alone = build_sites(spec_from_dict(raw), points=one_pts, background=bgp)
    assert (alone.Y.to_numpy()[len(one):] == 0).all()
    for bad in (0, 1, 1.5, "half", True):
        with pytest.raises(EcoalignInputError, match="target_group_share"):
            spec_from_dict({**raw, "target": {**raw["target"], "target_group_share": bad}})


def test_cv_none_bootstrap_zero_and_no_target_source_with_background(po_files, tmp_path):
    raw = yaml.safe_load(po_spec(tmp_path).read_text())
    raw["cv"] = {"scheme": "none"}
    spec = tmp_path / "none.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert fit_cli(tmp_path, spec, po_files, out="b_none") == 0
    meta = json.loads((tmp_path / "b_none" / "bundle.json").read_text())
    assert all(np.isfinite(t) for t in meta["thresholds"].values())  # from the ensemble's own folds
    lgb = {"name": "lightgbm", "params": {"n_estimators": 20}}
    raw.update(estimator=lgb)
    spec.write_text(yaml.safe_dump(raw))
    assert fit_cli(tmp_path, spec, po_files, out="b_lgb") == 0
    meta = json.loads((tmp_path / "b_lgb" / "bundle.json").read_text())
    assert all(t is None or np.isnan(t) for t in meta["thresholds"].values()) and meta["summary"] == {}


# ----------------------------------------------------------------------------------------------- categorical


def test_categorical_levels_declared_unseen_and_missing(po_files, tmp_path):
    spec = po_spec(tmp_path, {"name": "lightgbm", "params": {"n_estimators": 30}}, categorical=["soil"])
    assert fit_cli(tmp_path, spec, po_files) == 0
    model, meta = load_bundle(tmp_path / "bundle")
    assert model.named_steps["categorical"].levels_ == {"soil": ["1", "2", "3"]}  # integer codes as levels
    test = pd.read_csv(po_files / "survey.csv")
    test.loc[:9, "soil"] = 7          # a level never seen in training
    test.loc[10:14, "soil"] = np.nan  # missing values
    test = test[test["soil"] != 3]    # and one training level absent from the test table
    path = tmp_path / "survey_odd.csv"
    test.to_csv(path, index=False)
    with pytest.warns(UserWarning, match=r"'soil'.*\['7', 'None'\]|'soil'.*\['None', '7'\]"):
        rc = main(["evaluate", str(tmp_path / "bundle"), "--points", str(path), "--crs", "EPSG:32631",
                   "--id-column", "site", "--out", str(tmp_path / "e.csv")])
    assert rc == 0 and pd.read_csv(tmp_path / "e.csv").query("metric == 'auc'")["value"].notna().all()
    # declared integer codes are categories, not numbers: LightGBM splits on them natively ...
    booster = next(iter(model[-1].estimators_.values())).booster_
    infos = booster.dump_model()["feature_infos"]
    assert set(infos["Column_2"]["values"]) >= {0, 1, 2} and not infos["Column_0"]["values"], infos  # categories
    # ... and estimators without native categories see one indicator per level
    spec2 = po_spec(tmp_path, {"name": "logistic"}, name="onehot", categorical=["soil"])
    assert fit_cli(tmp_path, spec2, po_files, out="b_onehot") == 0
    model2, meta2 = load_bundle(tmp_path / "b_onehot")
    names = list(model2[:-1].transform(test.head(3)[meta2["features"]]).columns)
    assert names == ["temp", "rain", "soil=1", "soil=2", "soil=3"]


# ---------------------------------------------------------------------------------------------- bad input


def test_presence_only_bad_input(po_files, tmp_path):
    records = pd.read_csv(po_files / "records.csv")
    bg = pd.read_csv(po_files / "bg.csv")
    lgb = {"name": "lightgbm", "params": {"n_estimators": 10}}
    spec = po_spec(tmp_path, lgb, categorical=["soil"])

    # a species with one record (and one with none in this table): skipped with the reason, counted
    odd = pd.concat([records, records.head(1).assign(species="single")])
    odd.to_csv(tmp_path / "r1.csv", index=False)
    assert fit_cli(tmp_path, spec, tmp_path, out="b1", records="r1.csv", bg=str(po_files / "bg.csv")) == 0
    meta = json.loads((tmp_path / "b1" / "bundle.json").read_text())
    assert meta["skipped_species"]["single"] == "1 presences < min 2"

    # background without one of the predictors
    bg.drop(columns=["rain"]).to_csv(tmp_path / "bg_norain.csv", index=False)
    spec_list = po_spec(tmp_path, lgb, name="listed", covariates=["temp", "rain", "soil"], categorical=["soil"])
    assert fit_cli(tmp_path, spec_list, po_files, out="b2", bg=str(tmp_path / "bg_norain.csv")) == 2

    # NaN predictors in presences and background: dropped and counted, never imputed
    r = records.copy()
    r.loc[:4, "temp"] = np.nan
    b = bg.copy()
    b.loc[:9, "rain"] = np.nan
    r.to_csv(tmp_path / "r_nan.csv", index=False)
    b.to_csv(tmp_path / "b_nan.csv", index=False)
    assert fit_cli(tmp_path, spec, tmp_path, out="b3", records="r_nan.csv", bg="b_nan.csv") == 0
    meta = json.loads((tmp_path / "b3" / "bundle.json").read_text())
    assert meta["dropped_sites"]["nan_features"] == 15

    # presences outside the background's extent: dropped and counted
    far = pd.concat([records, records.head(3).assign(x=records.x.head(3) + 500_000)])
    far.to_csv(tmp_path / "r_far.csv", index=False)
    assert fit_cli(tmp_path, spec, tmp_path, out="b4", records="r_far.csv", bg=str(po_files / "bg.csv")) == 0
    meta = json.loads((tmp_path / "b4" / "bundle.json").read_text())
    assert meta["dropped_sites"]["outside_background_extent"] == 3

    # coordinates in another CRS than declared
    assert fit_cli(tmp_path, spec, po_files, out="b5", crs="EPSG:4326") == 2

    # a spec naming an unknown estimator, or a categorical column that is not a covariate
    bad = yaml.safe_load(spec.read_text())
    bad["estimator"] = {"name": "maxnet"}
    with pytest.raises(EcoalignInputError, match="unknown estimator 'maxnet'"):
        spec_from_dict(bad)
    bad = yaml.safe_load(spec.read_text())
    bad["features"]["categorical"] = ["geology"]
    (tmp_path / "badcat.yaml").write_text(yaml.safe_dump(bad))
    assert fit_cli(tmp_path, tmp_path / "badcat.yaml", po_files, out="b6") == 2
    bad["features"]["covariates"] = ["temp", "soil"]
    with pytest.raises(EcoalignInputError, match="geology"):
        spec_from_dict(bad)
    # an undeclared text covariate is refused with the column named
    records.assign(habitat="forest").to_csv(tmp_path / "r_txt.csv", index=False)
    bg.assign(habitat="open").to_csv(tmp_path / "b_txt.csv", index=False)
    listed = po_spec(tmp_path, lgb, name="txt", covariates=["temp", "habitat"])
    assert fit_cli(tmp_path, listed, tmp_path, out="b7", records="r_txt.csv", bg="b_txt.csv") == 2


# ------------------------------------------------------------------------------------------- real disdat data


@pytest.mark.slow
def test_disdat_south_america_subset_beats_chance_with_transferable_thresholds(tmp_path):
    if not DISDAT.exists():
        pytest.skip(f"disdat_dev not found at {DISDAT}")
    po = pd.read_csv(DISDAT / "SAtrain_po.csv")
    top = po["spid"].value_counts().index[:5]
    po[po["spid"].isin(top)].to_csv(tmp_path / "po.csv", index=False)
    pd.read_csv(DISDAT / "SAtrain_bg.csv").sample(3000, random_state=0).to_csv(tmp_path / "bg.csv", index=False)
    env, pa = pd.read_csv(DISDAT / "SAtest_env.csv"), pd.read_csv(DISDAT / "SAtest_pa.csv")
    env.merge(pa.drop(columns=["group", "x", "y"]), on="siteid").to_csv(tmp_path / "test.csv", index=False)
    raw = yaml.safe_load(po_spec(tmp_path).read_text())
    raw["target"]["species_column"] = "spid"
    (tmp_path / "sa.yaml").write_text(yaml.safe_dump(raw))
    assert main(["fit", str(tmp_path / "sa.yaml"), "--points", str(tmp_path / "po.csv"), "--background",
                 str(tmp_path / "bg.csv"), "--crs", "EPSG:4326", "--out", str(tmp_path / "b"), "--n-jobs", "1"]) == 0
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert {"siteid", "occ", "group", "spid"}.isdisjoint(meta["features"])  # ids and labels are not predictors
    assert main(["evaluate", str(tmp_path / "b"), "--points", str(tmp_path / "test.csv"), "--crs", "EPSG:4326",
                 "--id-column", "siteid", "--out", str(tmp_path / "e.csv")]) == 0
    ev = pd.read_csv(tmp_path / "e.csv")
    assert ev.query("species == 'macro' and metric == 'auc'")["value"].iloc[0] > 0.7
    assert ev.query("species == 'macro' and metric == 'tss'")["value"].iloc[0] > 0.25


FAST_MEMBERS = {"rf_down": {"n_estimators": 10}, "deep_maxent": {"epochs": 20}}  # small committees for unit tests


def stacked_landscape(seed: int, n_bg: int = 800):
    """``landscape``'s records over its background as one site table: features (temp, rain), coordinates, a 0/1
    presence matrix (records' rows) and the species names, as the ensemble takes them."""
    bg, records, _ = landscape(seed=seed, n_bg=n_bg)
    names = sorted(records["species"].unique())
    X = pd.concat([records[["temp", "rain"]], bg[["temp", "rain"]]], ignore_index=True)
    xy = pd.concat([records[["x", "y"]], bg[["x", "y"]]], ignore_index=True).to_numpy()
    Y = np.zeros((len(X), len(names)))
    for j, s in enumerate(names):
        Y[np.flatnonzero(records["species"] == s), j] = 1
    return X, xy, Y, names


def test_ensemble_random_folds_on_request_and_spatial_folds_by_default():
    X, xy, Y, names = stacked_landscape(seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # coords given: no "folds are random" warning
        rand = SpatialEnsemble(member_params=FAST_MEMBERS, spatial=False, n_jobs=1).fit(X, Y, coords=xy, species=names)
        spatial = SpatialEnsemble(member_params=FAST_MEMBERS, n_jobs=1).fit(X, Y, coords=xy, species=names)
    with pytest.warns(UserWarning, match="folds are random"):
        no_coords = SpatialEnsemble(member_params=FAST_MEMBERS, n_jobs=1).fit(X, Y, species=names)
    np.testing.assert_array_equal(rand.oof_, no_coords.oof_)  # the same random folds
    assert not np.array_equal(np.isnan(spatial.oof_), np.isnan(rand.oof_)) or \
        not np.allclose(spatial.oof_, rand.oof_, equal_nan=True)


def test_ensemble_refits_the_forest_on_all_rows_without_changing_out_of_fold_scores():
    """The default committee adds one down-sampled forest fitted on every row to the fold models; out-of-fold
    scores (thresholds, member selection) are those of the fold models alone, and the refit sees all presences."""
    X, xy, Y, names = stacked_landscape(seed=7)
    X = X.to_numpy()
    default = SpatialEnsemble(member_params=FAST_MEMBERS, n_jobs=1).fit(X, Y, coords=xy, species=names)
    none = SpatialEnsemble(member_params=FAST_MEMBERS, refit=[], n_jobs=1).fit(X, Y, coords=xy, species=names)
    both = SpatialEnsemble(member_params=FAST_MEMBERS, refit=["rf_down", "deep_maxent"], n_jobs=1).fit(
        X, Y, coords=xy, species=names)
    assert default.refit_ == ["rf_down"] and none.refit_ == []
    np.testing.assert_array_equal(default.oof_, none.oof_)
    np.testing.assert_array_equal(both.oof_, none.oof_)
    folds = len(none.components_)
    assert len(default.components_) == folds + 1 and len(both.components_) == folds + 2
    member, forest, _ = default.components_[-1]
    assert member == "rf_down"
    for j, s in enumerate(names):  # every tree of the refit draws its presences from all of the species' records
        n_pres = int(Y[:, j].sum())
        assert forest.estimators_[s].estimators_[0].tree_.n_node_samples[0] == 2 * n_pres
    assert not np.allclose(default.predict_proba(X), none.predict_proba(X))
    assert "refits on all rows" in default.spread_info()["over"]
    old = none.__getstate__()  # a committee saved before refit existed: no such attribute
    del old["refit"]
    loaded = SpatialEnsemble.__new__(SpatialEnsemble)
    loaded.__setstate__(old)
    assert loaded.get_params()["refit"] == [] and clone(loaded).refit == []
    np.testing.assert_array_equal(loaded.predict_proba(X), none.predict_proba(X))
    only_dm = SpatialEnsemble(members=["deep_maxent"], member_params={"deep_maxent": {"epochs": 5}}, n_jobs=1)
    assert only_dm.fit(X, Y, coords=xy, species=names).refit_ == []  # the default refits only what is a member
    with pytest.raises(EcoalignInputError, match="refit"):
        SpatialEnsemble(members=["deep_maxent"], refit=["rf_down"], n_jobs=1).fit(X, Y, coords=xy, species=names)


def test_ensemble_keeps_every_member_unless_a_selection_margin_is_given():
    """Members are scored on out-of-fold AUC either way; by default none is dropped (a weaker member still helps
    the mean, see the module docstring), and a margin drops those further below the best."""
    X, xy, Y, names = stacked_landscape(seed=9)
    weak = {"rf_down": {"n_estimators": 10}, "deep_maxent": {"epochs": 1, "learning_rate": 1e-6}}  # an untrained net
    kept = SpatialEnsemble(member_params=weak, n_jobs=1).fit(X, Y, coords=xy, species=names)
    cv_auc = kept.member_cv_auc_
    assert cv_auc["rf_down"] > cv_auc["deep_maxent"] + 0.05, cv_auc  # the premise: one member is clearly worse
    assert kept.selected_ == ["rf_down", "deep_maxent"]
    assert {m for m, _, _ in kept.components_} == {"rf_down", "deep_maxent"}
    dropped = SpatialEnsemble(member_params=weak, selection_margin=0.02, n_jobs=1).fit(X, Y, coords=xy, species=names)
    assert dropped.selected_ == ["rf_down"] and dropped.member_cv_auc_ == pytest.approx(cv_auc)
    assert not np.allclose(dropped.predict_proba(X), kept.predict_proba(X))
    for bad in (-0.1, "0.02", True):
        with pytest.raises(EcoalignInputError, match="selection_margin"):
            SpatialEnsemble(member_params=weak, selection_margin=bad, n_jobs=1).fit(X, Y, coords=xy, species=names)


def test_ensemble_thresholds_carried_to_the_committee_keep_the_landscape_share_above_them():
    """A threshold chosen on out-of-fold scores (one fold model per member) marks the same share of the landscape
    as suitable once carried to the committee's averaged scores, whose spread is narrower."""
    X, xy, Y, names = stacked_landscape(seed=8)
    ens = SpatialEnsemble(member_params=FAST_MEMBERS, n_jobs=1).fit(X.to_numpy(), Y, coords=xy, species=names)
    oof_ref = ens.oof_[ens.reference_rows_]
    assert oof_ref.std(axis=0).mean() > ens.reference_scores_.std(axis=0).mean()  # the committee spreads less
    raw = {s: threshold_rules(Y[:, j] > 0, ens.oof_[:, j])["max_tss"] for j, s in enumerate(names)}
    carried = ens.committee_thresholds({**raw, "not a species": 0.5, names[0]: float("nan")})
    assert carried["not a species"] == 0.5 and np.isnan(carried[names[0]])
    n = len(ens.reference_rows_)
    for j, s in enumerate(names[1:], start=1):
        before = np.mean(oof_ref[:, j] >= raw[s])
        after = np.mean(ens.reference_scores_[:, j] >= carried[s])
        assert abs(after - before) <= 2.0 / n, (s, before, after)
    assert any(abs(carried[s] - raw[s]) > 0.01 for s in names[1:])  # carrying moves them
