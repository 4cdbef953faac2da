"""``ecoalign fit`` / ``evaluate``: cross-validated species models on site tables, saved as bundles.

Cross-validation predicts every site from a model that never saw its block; the max-TSS threshold of each
species is chosen on the training folds only (mean over folds) and then applied to the held-out predictions.
The final model is refitted on all sites and saved with its spec, features, encoder identity and CV metrics.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import EcoalignInputError
from ..io import atomic_path, write_json
from .metrics import evaluate_abundance, evaluate_presence, max_tss_threshold
from .sites import SiteTable
from .spec import ModelSpec

BUNDLE_VERSION = 1


def make_model(spec: ModelSpec, n_jobs: int = -1, embedding_columns: list[str] | None = None):
    """The spec's model: optional PCA of the embedding columns (fitted on training rows only), then one
    estimator per species. A scikit-learn Pipeline, so it clones, fits inside CV folds, and pickles whole."""
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline

    from .estimators import MultiSpeciesModel

    params = dict(spec.estimator.get("params") or {})
    if spec.task == "abundance" and spec.target.get("count"):
        params["count"] = True
    species = MultiSpeciesModel(estimator=spec.estimator["name"], params=params, task=spec.estimator_task,
                                min_presences=int(spec.target.get("min_presences", 2)), n_jobs=n_jobs,
                                missing_targets="ignore" if spec.task == "presence_only" else "error")
    n_pca = spec.features.get("pca")
    if not n_pca or not embedding_columns:
        return Pipeline([("species", species)])
    reduce = ColumnTransformer([("pca", PCA(n_components=int(n_pca), random_state=0), list(embedding_columns))],
                               remainder="passthrough", verbose_feature_names_out=False).set_output(transform="pandas")
    return Pipeline([("features", reduce), ("species", species)])


def make_splitter(spec: ModelSpec, seed: int):
    from .spatial_cv import make_cv

    cv = spec.cv
    return make_cv(cv["scheme"], n_splits=int(cv["folds"]), n_repeats=int(cv.get("repeats", 1)), random_state=seed,
                   block_size=float(cv.get("block_size_m", 500.0)), buffer=float(cv.get("buffer_m", 0.0)))


@dataclass
class CVResult:
    species: list[str]
    oof: pd.DataFrame  # out-of-fold scores (presence) or predictions (abundance), averaged over repeats
    y: pd.DataFrame
    thresholds: dict[str, float]
    metrics: pd.DataFrame
    skipped: dict[str, str]
    seconds: float


def cross_validate(spec: ModelSpec, sites: SiteTable, *, seed: int = 0, n_jobs: int = -1,
                   progress: bool = False) -> CVResult:
    """Out-of-fold predictions for every site and species under the spec's CV scheme, with metrics."""
    import warnings

    from sklearn.base import clone

    t0 = time.perf_counter()
    template = make_model(spec, n_jobs, _embedding_columns(sites))
    constant = [c for c in sites.X.columns if sites.X[c].nunique(dropna=False) <= 1]
    if len(constant) == sites.X.shape[1]:
        raise EcoalignInputError(f"all {len(constant)} feature column(s) are constant over the sites: {constant[:5]}",
                                 expected="features that vary between sites")
    species, skipped = template[-1].fittable_species(sites.Y)
    Y = sites.Y[species]
    n, S = Y.shape
    splitter = make_splitter(spec, seed)
    sums, counts = np.zeros((n, S)), np.zeros((n, S))
    thr = {s: [] for s in species}
    folds = list(splitter.split(sites.X, coords=sites.xy)) if spec.cv["scheme"] == "spatial_block" \
        else list(splitter.split(sites.X))
    failed: list[str] = []
    for k, (train, test) in enumerate(folds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                model = clone(template).fit(sites.X.iloc[train], Y.iloc[train])
            except EcoalignInputError as exc:  # e.g. no species has enough presences in this fold's training part
                failed.append(f"fold {k + 1}: {exc}")
                continue
        fitted = list(model[-1].species_)
        cols = [species.index(s) for s in fitted]
        if spec.task == "abundance":
            pred = np.asarray(model.predict(sites.X.iloc[test])).reshape(len(test), -1)
        else:
            pred = model.predict_proba(sites.X.iloc[test])
            train_scores = model.predict_proba(sites.X.iloc[train])
            for i, s in enumerate(fitted):
                ytr = Y[s].to_numpy()[train]
                ok = np.isfinite(ytr)
                t = max_tss_threshold(ytr[ok], train_scores[ok, i])
                if np.isfinite(t):
                    thr[s].append(t)
        sums[np.ix_(test, cols)] += pred
        counts[np.ix_(test, cols)] += 1
        if progress:
            print(f"[ecoalign] fold {k + 1}/{len(folds)} done", flush=True)
    if len(failed) == len(folds):
        raise EcoalignInputError("no cross-validation fold could be fitted: " + "; ".join(failed[:3]),
                                 expected="more sites or presences per fold (fewer folds, larger blocks)")
    for msg in failed:
        print(f"[ecoalign] warning: {msg}", flush=True)
    with np.errstate(invalid="ignore"):
        oof = pd.DataFrame(sums / counts, index=Y.index, columns=species)
    thresholds = {s: float(np.mean(v)) if v else float("nan") for s, v in thr.items()}
    metrics = score_predictions(spec, Y, oof, thresholds, seed=seed)
    return CVResult(species, oof, Y, thresholds, metrics, skipped, time.perf_counter() - t0)


def _embedding_columns(sites: SiteTable) -> list[str]:
    from ..embedding import EMBED_PREFIX

    return [c for c in sites.X.columns if c.startswith(EMBED_PREFIX)]


def score_predictions(spec: ModelSpec, Y: pd.DataFrame, pred: pd.DataFrame, thresholds: dict[str, float],
                      seed: int = 0) -> pd.DataFrame:
    """The spec's metrics for predictions: sites with no prediction for a species are left out for it."""
    y = Y.to_numpy(dtype=float).copy()
    p = pred.to_numpy(dtype=float)
    missing = ~np.isfinite(p)
    if spec.task == "abundance":
        keep = ~missing.any(axis=1)
        table = evaluate_abundance(y[keep], p[keep], names=list(Y.columns), n_boot=spec.bootstrap, seed=seed)
    else:
        y[missing] = np.nan
        p = np.where(missing, 0.0, p)
        table = evaluate_presence(y, p, [thresholds[s] for s in Y.columns], species_names=list(Y.columns),
                                  n_boot=spec.bootstrap, seed=seed, boyce="boyce" in spec.metrics)
    return table[table["metric"].isin(spec.metrics)].reset_index(drop=True)


def fit_bundle(spec: ModelSpec, sites: SiteTable, out: str | Path, *, seed: int = 0, n_jobs: int = -1,
               overwrite: bool = False, progress: bool = True) -> Path:
    """Cross-validate, refit on all sites, and save the bundle `ecoalign evaluate` and `ecoalign map` load."""
    import joblib

    out = Path(out)
    if (out / "bundle.json").exists() and not overwrite:
        raise EcoalignInputError("a model bundle already exists here", path=out, expected="another --out, or --overwrite")
    cv = cross_validate(spec, sites, seed=seed, n_jobs=n_jobs, progress=progress)
    model = make_model(spec, n_jobs, _embedding_columns(sites))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.fit(sites.X, sites.Y[cv.species])
    if spec.task != "abundance":
        model[-1].set_thresholds({s: t for s, t in cv.thresholds.items() if np.isfinite(t)})
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.joblib") as tmp:
        joblib.dump(model, tmp)
    with atomic_path(out / "cv_metrics.csv") as tmp:
        cv.metrics.to_csv(tmp, index=False)
    write_json(out / "bundle.json", {
        "format_version": BUNDLE_VERSION, "spec": spec.raw, "spec_name": spec.name, "task": spec.task,
        "features": list(sites.X.columns), "species": cv.species, "skipped_species": cv.skipped,
        "thresholds": cv.thresholds, "encoder": sites.feature_source.get("encoder"),
        "random_weights": sites.feature_source.get("random_weights"),
        "patch_size_m": sites.feature_source.get("patch_size_m"), "crs": sites.crs.to_string(),
        "n_sites": int(len(sites.ids)), "dropped_sites": {k: len(v) for k, v in sites.dropped.items()},
        "cv": spec.cv, "cv_seconds": cv.seconds, "seed": seed,
        "summary": summary(cv.metrics),
    })
    return out


def summary(metrics: pd.DataFrame) -> dict:
    rows = metrics[metrics["species"].isin(["micro", "macro"])]
    return {f"{r.species}_{r.metric}": [r.value, r.ci_low, r.ci_high] for r in rows.itertuples()}


def load_bundle(path: str | Path):
    import joblib

    path = Path(path)
    meta_path = path / "bundle.json"
    if not meta_path.exists():
        raise EcoalignInputError("not a model bundle (no bundle.json)", path=path, expected="an `ecoalign fit --out` directory")
    meta = json.loads(meta_path.read_text())
    return joblib.load(path / "model.joblib"), meta


def evaluate_bundle(bundle: str | Path, sites: SiteTable, *, seed: int = 0) -> pd.DataFrame:
    """Metrics of a fitted bundle on an independent test table (e.g. presence/absence survey sites)."""
    from .spec import spec_from_dict

    model, meta = load_bundle(bundle)
    missing = [c for c in meta["features"] if c not in sites.X.columns]
    if missing:
        raise EcoalignInputError(f"the test sites lack the model's features {missing[:5]}",
                                 expected=f"the {len(meta['features'])} features the model was fitted on")
    unknown = [s for s in sites.Y.columns if s not in meta["species"]]
    known = [s for s in sites.Y.columns if s in meta["species"]]
    if not known:
        raise EcoalignInputError(f"none of the test species {list(sites.Y.columns)[:5]} was modelled",
                                 expected=f"species among {meta['species'][:10]}")
    if unknown:
        print(f"[ecoalign] {len(unknown)} test species unknown to the model are not evaluated, e.g. {unknown[:5]}")
    spec = spec_from_dict(meta["spec"], Path(bundle) / "bundle.json")
    X = sites.X[meta["features"]]
    if spec.task == "abundance":
        pred = pd.DataFrame(np.asarray(model.predict(X)).reshape(len(X), -1), index=X.index,
                            columns=model[-1].species_)[known]
    else:
        pred = pd.DataFrame(model.predict_proba(X), index=X.index, columns=model[-1].species_)[known]
    return score_predictions(spec, sites.Y[known], pred, meta["thresholds"], seed=seed)
