"""Species models (ecoalign.sdm.estimators) on real releves (Bryce Canyon) and soil fauna (oribatid mites)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline

from ecoalign.core.errors import EcoalignInputError
from ecoalign.sdm.estimators import MultiSpeciesModel, make_estimator

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BRYCE = SHARED / "releves" / "bryce"
MITES = SHARED / "soil_fauna" / "oribatid_mites"
COVARIATES = ["elev", "slope", "av", "annrad", "grorad", "east", "north"]
LGB_SMALL = {"n_estimators": 100, "learning_rate": 0.05, "num_leaves": 8, "min_child_samples": 5}


@pytest.fixture(scope="module")
def bryce():
    """Covariates and presence (cover class > 0) of the 160 Bryce plots, minus the one without coordinates."""
    if not BRYCE.exists():
        pytest.skip(f"shared field data not found at {BRYCE}")
    veg = pd.read_csv(BRYCE / "labdsv_bryceveg.csv")
    site = pd.read_csv(BRYCE / "labdsv_brycesite.csv")
    assert list(veg["row"]) == list(site["row"]), "plots of bryceveg and brycesite are not in the same order"
    ok = site[COVARIATES].notna().all(axis=1)
    assert (~ok).sum() == 1  # one plot has a blank east/north
    X = site.loc[ok, COVARIATES].reset_index(drop=True)
    Y = (veg.loc[ok].drop(columns="row").reset_index(drop=True) > 0).astype(int)
    assert X.shape == (159, 7) and Y.shape[0] == 159 and Y.shape[1] > 150
    return X, Y


@pytest.fixture(scope="module")
def bryce_split(bryce):
    X, Y = bryce
    idx = np.random.default_rng(0).permutation(len(X))
    tr, te = idx[: int(0.7 * len(X))], idx[int(0.7 * len(X)):]
    return X.iloc[tr], Y.iloc[tr], X.iloc[te], Y.iloc[te]


@pytest.fixture(scope="module")
def mites():
    if not MITES.exists():
        pytest.skip(f"shared field data not found at {MITES}")
    counts = pd.read_csv(MITES / "vegan_mite.csv")
    env = pd.read_csv(MITES / "vegan_mite.env.csv")
    xy = pd.read_csv(MITES / "vegan_mite.xy.csv")
    # vegan_mite.xy.csv numbers its rows 0..69, the other two 1..70: align by position, not by 'row'.
    assert len(counts) == len(env) == len(xy) == 70
    assert list(counts["row"]) == list(env["row"]) == list(range(1, 71))
    assert list(xy["row"]) == list(range(70))
    X = pd.concat([env[["SubsDens", "WatrCont"]].reset_index(drop=True),
                   pd.get_dummies(env[["Substrate", "Shrub", "Topo"]], dtype=float).reset_index(drop=True),
                   xy[["x", "y"]].reset_index(drop=True)], axis=1)
    Y = counts.drop(columns="row")
    assert Y.shape == (70, 35) and X.notna().all().all()
    return X, Y


def macro_auc(model, X_te, Y_te):
    P = model.predict_proba(X_te)
    aucs = [roc_auc_score(Y_te[s], P[:, k]) for k, s in enumerate(model.species_) if 0 < Y_te[s].sum() < len(Y_te)]
    return float(np.mean(aucs)), len(aucs)


# ------------------------------------------------------------------------------------------ sklearn API
def test_get_params_round_trip_and_clone_then_fit(bryce):
    X, Y = bryce
    params = {"n_estimators": 20, "min_child_samples": 5}
    m = MultiSpeciesModel("lightgbm", params, task="presence", min_presences=5, n_jobs=1)
    got = m.get_params()
    assert got == {"estimator": "lightgbm", "params": params, "task": "presence", "min_presences": 5, "n_jobs": 1,
                   "missing_targets": "error", "weighting": "balanced", "categorical_features": ()}
    assert got["params"] is params  # stored verbatim
    assert MultiSpeciesModel(**got).get_params() == got
    c = clone(m)
    assert c.get_params() == got and c is not m
    assert m.set_params(min_presences=10) is m and m.min_presences == 10
    with pytest.warns(UserWarning, match="skipped"):
        c.fit(X, Y.iloc[:, :20])
    assert not hasattr(m, "estimators_")  # the original is untouched
    assert set(c.species_) | set(c.skipped_species_) == set(Y.columns[:20])
    assert c.predict_proba(X).shape == (len(X), len(c.species_))


def test_cross_val_score_single_species(bryce):
    X, Y = bryce
    species = "arcpat"  # Arctostaphylos patula: 74 of 159 plots, tied to elevation
    y = Y[species]
    assert 20 < y.sum() < len(y) - 20
    model = MultiSpeciesModel(params={"n_estimators": 50, "min_child_samples": 5}, n_jobs=1)  # LightGBM
    scores = cross_val_score(model, X, y, cv=StratifiedKFold(3, shuffle=True, random_state=0))
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert scores.mean() > 0.7, scores  # default score = held-out ROC AUC
    acc = cross_val_score(MultiSpeciesModel("logistic", n_jobs=1), X, y, cv=3, scoring="accuracy")
    assert np.isfinite(acc).all()
    fitted = MultiSpeciesModel("logistic", n_jobs=1).fit(X, y)
    assert fitted.species_ == [species]
    assert fitted.predict(X).shape == (len(X),)  # 1-D Y in, 1-D predictions out
    assert fitted.predict_proba(X).shape == (len(X), 1)  # probabilities stay 2-D


# ------------------------------------------------------------------------------------------ real data
def test_bryce_lightgbm_presence_beats_chance(bryce_split):
    X_tr, Y_tr, X_te, Y_te = bryce_split
    model = MultiSpeciesModel("lightgbm", LGB_SMALL, min_presences=10, n_jobs=2)
    with pytest.warns(UserWarning, match="skipped"):
        model.fit(X_tr, Y_tr)
    n_pres = Y_tr.sum()
    expected = [s for s in Y_tr.columns if 10 <= n_pres[s] <= len(Y_tr) - 10]
    assert model.species_ == expected and len(expected) > 30
    for s, reason in model.skipped_species_.items():
        if n_pres[s] < 10:
            assert reason == f"{n_pres[s]} presences < min 10"
        else:
            assert reason == f"{len(Y_tr) - n_pres[s]} absences < min 10"
    assert set(model.skipped_species_) == set(Y_tr.columns) - set(expected)
    assert list(model.feature_names_in_) == COVARIATES and model.n_features_in_ == 7
    est = model.estimators_[expected[0]]
    assert est.get_params()["n_jobs"] == 1 and est.get_params()["verbose"] == -1  # no oversubscription

    auc, n_scored = macro_auc(model, X_te, Y_te)
    print(f"\nBryce LightGBM presence: macro held-out AUC {auc:.3f} over {n_scored} species")
    assert n_scored > 30 and auc > 0.7

    P = model.predict_proba(X_te)
    assert P.shape == (len(X_te), len(model.species_)) and ((P >= 0) & (P <= 1)).all()
    s = model.species_[3]
    np.testing.assert_allclose(model.predict_proba_species(X_te, s), P[:, 3])
    pred = model.predict(X_te)
    assert set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (P >= 0.5).astype(int))
    model.set_thresholds({s: 0.05})
    assert model.predict(X_te)[:, 3].sum() >= pred[:, 3].sum()
    np.testing.assert_array_equal(model.predict(X_te)[:, 3], (P[:, 3] >= 0.05).astype(int))
    skipped = next(iter(model.skipped_species_))
    with pytest.raises(EcoalignInputError, match=f"{skipped}.*not fitted"):
        model.predict_proba_species(X_te, skipped)

    # parallel and sequential fits agree (deterministic per species)
    seq = MultiSpeciesModel("lightgbm", LGB_SMALL, min_presences=10, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seq.fit(X_tr, Y_tr[expected[:5]])
    np.testing.assert_allclose(seq.predict_proba(X_te), P[:, :5])


@pytest.mark.parametrize("name, params", [("logistic", {"C": 1.0}),
                                          ("random_forest", {"n_estimators": 50, "min_samples_leaf": 2})])
def test_bryce_other_estimators(bryce_split, name, params):
    X_tr, Y_tr, X_te, Y_te = bryce_split
    common = Y_tr.sum().sort_values(ascending=False).index[5:20]  # 15 common species keep this fast
    model = MultiSpeciesModel(name, params, min_presences=10, n_jobs=2).fit(X_tr, Y_tr[common])
    assert len(model.species_) == 15
    auc, n_scored = macro_auc(model, X_te, Y_te)
    print(f"\nBryce {name} presence: macro held-out AUC {auc:.3f} over {n_scored} species")
    assert auc > 0.65
    if name == "logistic":
        assert isinstance(model.estimators_[model.species_[0]], Pipeline)


@pytest.mark.parametrize("name, params", [
    ("lightgbm", {"count": True, "n_estimators": 200, "learning_rate": 0.05, "num_leaves": 4,
                  "min_child_samples": 5}),
    ("ridge", {"alpha": 10.0}),
])
def test_mite_abundance_spearman(mites, name, params):
    X, Y = mites
    idx = np.random.default_rng(0).permutation(len(X))
    tr, te = idx[:49], idx[49:]
    model = MultiSpeciesModel(name, params, task="abundance", min_presences=5, n_jobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one rare taxon is skipped
        model.fit(X.iloc[tr], Y.iloc[tr])
    assert not hasattr(model, "predict_proba")
    if name == "lightgbm":
        assert model.estimators_[model.species_[0]].get_params()["objective"] == "poisson"
    pred = pd.DataFrame(model.predict(X.iloc[te]), columns=model.species_)
    common = Y.sum().sort_values(ascending=False).index[:10]
    rho = np.array([spearmanr(Y.iloc[te][s], pred[s]).statistic for s in common])
    print(f"\nmites {name} abundance: held-out Spearman, 10 commonest taxa: mean {rho.mean():.3f}, "
          f"min {rho.min():.2f}")
    assert rho.mean() > 0.4 and (rho > 0).sum() >= 8
    assert np.isfinite(model.score(X.iloc[te], Y.iloc[te]))


# ------------------------------------------------------------------------------------------ bad input
def test_nan_feature_names_column_and_rows(bryce):
    X, Y = bryce
    Xn = X.copy()
    Xn.loc[[3, 7], "slope"] = np.nan
    with pytest.raises(EcoalignInputError, match=r"'slope' has 2 row\(s\) with NaN") as exc:
        MultiSpeciesModel(n_jobs=1).fit(Xn, Y.iloc[:, :5])
    assert "first at row 3" in str(exc.value)
    with pytest.raises(EcoalignInputError, match="column 2"):
        MultiSpeciesModel(n_jobs=1).fit(np.where(np.arange(7) == 2, np.nan, X.to_numpy()), Y.iloc[:, :5])


def test_constant_feature_dropped_and_wrong_columns_rejected(bryce):
    X, Y = bryce
    Xc = X.assign(const=1.0)
    y = Y[Y.sum().sort_values(ascending=False).index[:3]]
    model = MultiSpeciesModel("logistic", n_jobs=1)
    with pytest.warns(UserWarning, match="constant"):
        model.fit(Xc, y)
    assert model.dropped_features_ == ["const"] and model.n_features_in_ == 8
    assert model.predict_proba(Xc).shape == (len(X), 3)
    # same columns in another order: realigned by name
    np.testing.assert_allclose(model.predict_proba(Xc[Xc.columns[::-1]]), model.predict_proba(Xc))
    with pytest.raises(EcoalignInputError, match=r"missing \['const'\]"):
        model.predict(X)
    with pytest.raises(EcoalignInputError, match=r"unexpected \['extra'\]"):
        model.predict(Xc.assign(extra=0.0))
    arr_model = MultiSpeciesModel("logistic", n_jobs=1).fit(X.to_numpy(), y.to_numpy())
    assert arr_model.species_ == ["species_0", "species_1", "species_2"]
    with pytest.raises(EcoalignInputError, match="6 feature column.*fitted on 7"):
        arr_model.predict(X.to_numpy()[:, :6])
    with pytest.raises(EcoalignInputError, match="not numeric"):
        model.fit(Xc.assign(pos="ridge"), y)


def test_rare_species_skipped_and_all_skipped_is_an_error(bryce):
    X, Y = bryce
    common = Y.sum().idxmax()
    Yr = pd.DataFrame({"none": 0, "single": 0, "common": Y[common]}, index=Y.index)
    Yr.loc[5, "single"] = 1
    model = MultiSpeciesModel("logistic", min_presences=2, n_jobs=1)
    with pytest.warns(UserWarning, match="skipped 2 of 3 species"):
        model.fit(X, Yr)
    assert model.species_ == ["common"]
    assert model.skipped_species_ == {"none": "0 presences < min 2", "single": "1 presences < min 2"}
    with pytest.raises(EcoalignInputError, match="no species can be fitted.*none: 0 presences"):
        MultiSpeciesModel("logistic", n_jobs=1).fit(X, Yr[["none", "single"]])
    with pytest.raises(EcoalignInputError, match="'single'.*NaN"):
        MultiSpeciesModel(n_jobs=1).fit(X, Yr.assign(single=np.nan))
    with pytest.raises(EcoalignInputError, match="Y has 10 rows but X has 159"):
        MultiSpeciesModel(n_jobs=1).fit(X, Yr.iloc[:10])


def test_make_estimator_choices():
    import lightgbm as lgb
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    clf = make_estimator("lightgbm", {"n_jobs": 3}, task="presence")
    assert isinstance(clf, lgb.LGBMClassifier)
    assert clf.get_params()["verbose"] == -1 and clf.get_params()["n_jobs"] == 3
    assert clf.get_params()["random_state"] is not None
    reg = make_estimator("lightgbm", {"count": True}, task="abundance")
    assert isinstance(reg, lgb.LGBMRegressor) and reg.get_params()["objective"] == "poisson"
    assert isinstance(make_estimator("random_forest", task="presence"), RandomForestClassifier)
    assert isinstance(make_estimator("random_forest", task="abundance"), RandomForestRegressor)
    logit = make_estimator("logistic", {"max_iter": 50}, task="presence")
    assert [type(s).__name__ for _, s in logit.steps] == ["StandardScaler", "LogisticRegression"]
    assert logit.steps[-1][1].max_iter == 50
    ridge = make_estimator("ridge", {"alpha": 3.0}, task="abundance")
    assert [type(s).__name__ for _, s in ridge.steps] == ["StandardScaler", "Ridge"]
    with pytest.raises(EcoalignInputError, match="'logistic' is a presence"):
        make_estimator("logistic", task="abundance")
    with pytest.raises(EcoalignInputError, match="'ridge' is an abundance"):
        make_estimator("ridge", task="presence")
    with pytest.raises(EcoalignInputError, match="unknown estimator 'xgboost'"):
        make_estimator("xgboost", task="presence")
    with pytest.raises(EcoalignInputError, match="unknown task"):
        make_estimator("lightgbm", task="counts")
    with pytest.raises(EcoalignInputError, match="unknown parameter.*'alhpa'"):
        make_estimator("ridge", {"alhpa": 1.0}, task="abundance")
    with pytest.raises(EcoalignInputError, match="only applies to abundance"):
        make_estimator("lightgbm", {"count": True}, task="presence")
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(0)
    Xr, yr = rng.normal(size=(40, 2)), np.arange(40) % 2
    own = MultiSpeciesModel(LogisticRegression(C=0.5), n_jobs=1).fit(Xr, yr)  # any sklearn estimator, cloned
    assert own.estimators_["species"].C == 0.5 and own.estimators_["species"] is not own.estimator
    with pytest.raises(EcoalignInputError, match="unknown estimator"):
        MultiSpeciesModel("xgboost", n_jobs=1).fit(np.random.default_rng(0).normal(size=(20, 2)), np.arange(20) % 2)


def test_missing_targets_ignore_fits_each_species_on_its_own_rows():
    """Presence-only data: NaN marks sites inside a species' exclusion buffer; they are left out of its fit."""
    from ecoalign.sdm.estimators import MultiSpeciesModel

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] > 0).astype(float)
    Y = np.column_stack([y, y])
    Y[:100, 1] = np.nan  # second species: only the last 100 sites count
    with pytest.raises(EcoalignInputError, match="NaN"):
        MultiSpeciesModel(estimator="logistic", n_jobs=1).fit(X, Y)
    m = MultiSpeciesModel(estimator="logistic", n_jobs=1, missing_targets="ignore").fit(X, Y, species=["a", "b"])
    ref = MultiSpeciesModel(estimator="logistic", n_jobs=1).fit(X[100:], y[100:], species=["b"])
    np.testing.assert_allclose(m.predict_proba_species(X, "b"), ref.predict_proba_species(X, "b"))


def test_downsampled_forest_saves_as_a_few_arrays_and_reloads_equal():
    """A fitted down-sampled forest's skops file holds a few concatenated arrays, not members per tree (which made
    saving a many-species committee take minutes); reloaded by skops or pickle it predicts the same."""
    import pickle
    import zipfile
    from io import BytesIO

    import skops.io as sio

    from ecoalign.sdm.downsampled import DownsampledBagging

    rng = np.random.default_rng(3)
    X = rng.normal(size=(800, 6))
    y = (X[:, 0] + rng.normal(size=800) > 2).astype(int)
    model = DownsampledBagging(n_estimators=60, random_state=1).fit(X, y)
    blob = sio.dumps(model)
    assert len(zipfile.ZipFile(BytesIO(blob)).namelist()) < 10
    assert sio.get_untrusted_types(data=blob) == ["ecoalign.sdm.downsampled.DownsampledBagging"]
    for again in (sio.loads(blob, trusted=["ecoalign.sdm.downsampled.DownsampledBagging"]),
                  pickle.loads(pickle.dumps(model))):
        assert len(again.estimators_) == 60
        assert np.array_equal(again.predict_proba_and_spread(X)[1], model.predict_proba_and_spread(X)[1])
        assert np.array_equal(again.estimators_[5].predict(X), model.estimators_[5].predict(X))


def test_downsampled_trees_are_0_1_regressions_that_split_as_gini_trees():
    """The forest grows regression trees on the 0/1 target (cheaper to fit than classifiers): with the same random
    draws they make the same splits as Gini classification trees, and their leaf means are presence fractions."""
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=300) > 0.5).astype(int)
    test = rng.normal(size=(2000, 8)).astype(np.float32)
    for seed in range(5):
        gini = DecisionTreeClassifier(max_features="sqrt", random_state=seed).fit(X, y)
        squared = DecisionTreeRegressor(max_features="sqrt", random_state=seed).fit(X, y.astype(float))
        assert squared.tree_.node_count == gini.tree_.node_count
        np.testing.assert_array_equal(squared.apply(test), gini.apply(test))
        np.testing.assert_allclose(squared.predict(test), gini.predict_proba(test)[:, 1], atol=1e-12)


def test_downsampled_forest_of_classification_trees_from_older_bundles_reloads_equal():
    """Bundles written before the switch to regression trees hold two class counts per node: they still load."""
    import pickle

    from sklearn.tree import DecisionTreeClassifier

    from ecoalign.sdm.downsampled import DownsampledBagging

    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 5))
    y = (X[:, 0] + rng.normal(size=400) > 1).astype(int)
    model = DownsampledBagging(n_estimators=10, random_state=0).fit(X, y)
    bags = [rng.choice(len(X), 120) for _ in range(10)]
    model.estimators_ = [DecisionTreeClassifier(max_features="sqrt", random_state=i).fit(X[b], y[b])
                         for i, b in enumerate(bags)]
    model.leaf_presence_ = [model._leaf_fraction(est.tree_) for est in model.estimators_]
    expected = np.mean([est.predict_proba(X)[:, 1] for est in model.estimators_], axis=0)
    np.testing.assert_allclose(model.predict_proba(X)[:, 1], expected)
    again = pickle.loads(pickle.dumps(model))
    assert isinstance(again.estimators_[0], DecisionTreeClassifier)
    np.testing.assert_allclose(again.predict_proba(X)[:, 1], expected)
