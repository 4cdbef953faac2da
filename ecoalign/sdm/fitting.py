"""``ecoalign fit`` / ``evaluate``: cross-validated species models on site tables, saved as bundles.

Cross-validation predicts every site from a model that never saw its block. Thresholds (max-TSS, equal
sensitivity and specificity, 10th-percentile presence) are chosen on those out-of-fold predictions, never on
predictions of the rows a model was fitted on, and stored in the bundle. The final model is refitted on all
sites (the ensemble is its own committee of fold models and needs no refit) and saved with its spec,
features, encoder identity, CV metrics and its scores at a sample of the background, the landscape reference
for the Boyce index when the bundle is evaluated on independent sites.
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import atomic_path
from ecoalign.sdm.bundle_io import FORMAT_VERSION as BUNDLE_VERSION
from ecoalign.sdm.bundle_io import (
    LEGACY_MODEL_FILE,
    MODEL_FILE,
    load,
    read_meta,
    save_model,
    seal,
)
from ecoalign.sdm.metrics import (
    THRESHOLD_RULES,
    evaluate_abundance,
    evaluate_presence,
    threshold_rules,
)
from ecoalign.sdm.sites import SiteTable
from ecoalign.sdm.spec import ModelSpec
from ecoalign.sdm.species_model import (
    CONSTANT_COLUMNS_NOTE,
    SKIPPED_SPECIES_NOTE,
    notes_silenced,
)

REFERENCE_ROWS = 5000  # background (landscape) rows whose scores a bundle keeps for Boyce at evaluate time

log = logging.getLogger(__name__)


def _species_step(spec: ModelSpec, n_jobs, seed: int):
    """The spec's species model: per-species estimators, DeepMaxent, or the spatial ensemble."""
    name = spec.estimator["name"]
    params = dict(spec.estimator.get("params") or {})
    min_presences = int(spec.target.get("min_presences", 2))
    if name == "ensemble":
        from ecoalign.sdm.ensemble import SpatialEnsemble

        cv = spec.cv
        spatial = cv["scheme"] == "spatial_block"
        return SpatialEnsemble(members=params.pop("members", ("rf_down", "deep_maxent")),
                               member_params=params.pop("member_params", None),
                               folds=int(cv["folds"]) if cv["scheme"] != "none" else 3,
                               block_size=float(cv["block_size_m"]) if spatial and cv.get("block_size_m") else None,
                               spatial=cv["scheme"] != "random", min_presences=min_presences, n_jobs=n_jobs,
                               random_state=seed, **params)
    if name == "deep_maxent":
        from ecoalign.sdm.deep_maxent import DeepMaxent

        return DeepMaxent(min_presences=min_presences, n_jobs=None if n_jobs in (None, -1) else n_jobs,
                          random_state=seed, **params)
    from ecoalign.sdm.estimators import MultiSpeciesModel

    if spec.task == "abundance" and spec.target.get("count"):
        params["count"] = True
    weighting = spec.estimator.get("weighting", "balanced")
    return MultiSpeciesModel(estimator=name, params=params, task=spec.estimator_task, min_presences=min_presences,
                             n_jobs=n_jobs, missing_targets="ignore" if spec.task == "presence_only" else "error",
                             weighting=None if weighting in (None, "none") else weighting)


def make_model(spec: ModelSpec, n_jobs=-1, embedding_columns: list[str] | None = None, seed: int = 0):
    """The spec's model as a scikit-learn Pipeline (it clones, fits inside CV folds and pickles whole):
    categorical covariates encoded (level codes with native categorical splits for LightGBM, one-hot
    otherwise), optional PCA of the embedding columns (fitted on training rows
    only), then the species model."""
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline

    from ecoalign.sdm.categorical import CategoricalEncoder

    steps = []
    cats = list(spec.features.get("categorical") or [])
    species = _species_step(spec, n_jobs, seed)
    if cats:
        native = spec.estimator["name"] == "lightgbm"  # LightGBM splits on categories itself
        steps.append(("categorical", CategoricalEncoder(cats, encoding="codes" if native else "onehot")))
        if native:
            species.set_params(categorical_features=cats)
    n_pca = spec.features.get("pca")
    if n_pca and embedding_columns:
        steps.append(("features", ColumnTransformer(
            [("pca", PCA(n_components=int(n_pca), random_state=0), list(embedding_columns))],
            remainder="passthrough", verbose_feature_names_out=False).set_output(transform="pandas")))
    steps.append(("species", species))
    return Pipeline(steps)


def _fit_params(model, xy: np.ndarray) -> dict:
    """Site coordinates for species models that fold in space themselves (the ensemble)."""
    return {"species__coords": xy} if "coords" in inspect.signature(model[-1].fit).parameters else {}


def _cv_as_run(spec: ModelSpec, xy: np.ndarray) -> dict:
    """The spec's cv block with the block side that was used when the spec left it to the extent."""
    from ecoalign.sdm.spatial_cv import default_block_size

    cv = dict(spec.cv)
    if cv["scheme"] == "spatial_block" and cv.get("block_size_m") is None and len(xy):
        cv["block_size_m"] = default_block_size(xy)
    return cv


def make_splitter(spec: ModelSpec, seed: int, xy: np.ndarray | None = None):
    from ecoalign.sdm.spatial_cv import make_cv

    cv = spec.cv if xy is None else _cv_as_run(spec, xy)
    block = cv.get("block_size_m")
    if block != spec.cv.get("block_size_m"):
        log.info("spatial CV blocks of %.6g (a tenth of the extent; set cv.block_size_m to choose)", block)
    return make_cv(cv["scheme"], n_splits=int(cv["folds"]), n_repeats=int(cv.get("repeats", 1)), random_state=seed,
                   block_size=float(block) if block is not None else None, buffer=float(cv.get("buffer_m", 0.0)))


@dataclass
class CVResult:
    species: list[str]
    oof: pd.DataFrame | None  # out-of-fold scores (presence) or predictions (abundance); None without CV
    y: pd.DataFrame
    thresholds: dict[str, float]
    metrics: pd.DataFrame
    skipped: dict[str, str]
    seconds: float
    threshold_rules: dict[str, dict[str, float]] = field(default_factory=dict)
    model: object | None = None  # the fitted model when CV came from its own committee (the ensemble)


def _background_rows(spec: ModelSpec, Y: pd.DataFrame) -> np.ndarray:
    """Rows that sample the landscape: background points (presence-only: rows with no presence of any species),
    or every site of a presence/absence survey."""
    if spec.task != "presence_only":
        return np.arange(len(Y))
    return np.flatnonzero(~(Y.to_numpy(dtype=float) > 0).any(axis=1))


def species_threshold_rules(Y: pd.DataFrame, oof: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Every threshold rule per species (``{rule: {species: threshold}}``), from out-of-fold predictions only,
    never in-sample."""
    rules: dict[str, dict[str, float]] = {rule: {} for rule in THRESHOLD_RULES}
    for s in Y.columns:
        y = Y[s].to_numpy(dtype=float)
        p = oof[s].to_numpy(dtype=float)
        ok = np.isfinite(y) & np.isfinite(p)
        for rule, t in threshold_rules(y[ok] > 0, p[ok]).items():
            rules[rule][s] = t
    return rules


def cross_validate(spec: ModelSpec, sites: SiteTable, *, seed: int = 0, n_jobs=-1,
                   progress: bool = False) -> CVResult:
    """Out-of-fold predictions for every site and species under the spec's CV scheme, with metrics and the
    thresholds chosen on them. A model that folds in space itself (the ensemble) is fitted once and its
    committee's out-of-fold predictions are used (and the fitted model returned); ``cv: none`` skips CV."""
    from sklearn.base import clone

    t0 = time.perf_counter()
    template = make_model(spec, n_jobs, _embedding_columns(sites), seed=seed)
    constant = [c for c in sites.X.columns if sites.X[c].nunique(dropna=False) <= 1]
    if len(constant) == sites.X.shape[1]:
        raise EcoalignInputError(f"all {len(constant)} feature column(s) are constant over the sites: {constant[:5]}",
                                 expected="features that vary between sites")
    if constant:
        log.warning("%d feature column(s) constant over all %d sites, not used by the model: %s", len(constant),
                    len(sites.X), constant[:10])
    species, skipped = template[-1].fittable_species(sites.Y)
    Y = sites.Y[species]
    if _fit_params(template, sites.xy):  # the model folds in space itself: its committee's out-of-fold predictions
        model = clone(template).fit(sites.X, Y, **_fit_params(template, sites.xy))
        oof = pd.DataFrame(model[-1].oof_, index=Y.index, columns=model[-1].species_)
        return _result(spec, Y[model[-1].species_], oof, {**skipped, **model[-1].skipped_species_}, seed, t0,
                       model=model)
    if spec.cv["scheme"] == "none":
        return CVResult(species, None, Y, {s: float("nan") for s in species}, pd.DataFrame(), skipped,
                        time.perf_counter() - t0)
    n, S = Y.shape
    splitter = make_splitter(spec, seed, sites.xy)
    sums, counts = np.zeros((n, S)), np.zeros((n, S))
    folds = list(splitter.split(sites.X, coords=sites.xy)) if spec.cv["scheme"] == "spatial_block" \
        else list(splitter.split(sites.X))
    failed: list[str] = []
    for k, (train, test) in enumerate(folds):
        with notes_silenced(SKIPPED_SPECIES_NOTE, CONSTANT_COLUMNS_NOTE):  # about this fold's training rows only
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
        sums[np.ix_(test, cols)] += pred
        counts[np.ix_(test, cols)] += 1
        if progress:
            log.info("fold %d/%d done", k + 1, len(folds))
    if len(failed) == len(folds):
        raise EcoalignInputError("no cross-validation fold could be fitted: " + "; ".join(failed[:3]),
                                 expected="more sites or presences per fold (fewer folds, larger blocks)")
    for msg in failed:
        log.warning("%s", msg)
    with np.errstate(invalid="ignore"):
        oof = pd.DataFrame(sums / counts, index=Y.index, columns=species)
    return _result(spec, Y, oof, skipped, seed, t0)


def _result(spec, Y, oof, skipped, seed, t0, model=None) -> CVResult:
    if spec.task == "abundance":
        rules: dict[str, dict[str, float]] = {}
        thresholds = {s: float("nan") for s in Y.columns}
    else:
        rules = species_threshold_rules(Y, oof)
        thresholds = dict(rules["max_tss"])
    background = _background_rows(spec, Y) if spec.task == "presence_only" else None
    metrics = score_predictions(spec, Y, oof, thresholds, seed=seed, background_rows=background)
    return CVResult(list(Y.columns), oof, Y, thresholds, metrics, skipped, time.perf_counter() - t0, rules, model)


def _embedding_columns(sites: SiteTable) -> list[str]:
    from ecoalign.aerial.embed import EMBED_PREFIX

    return [c for c in sites.X.columns if c.startswith(EMBED_PREFIX)]


def score_predictions(spec: ModelSpec, Y: pd.DataFrame, pred: pd.DataFrame, thresholds: dict[str, float],
                      seed: int = 0, background_rows: np.ndarray | None = None,
                      background_scores: np.ndarray | None = None) -> pd.DataFrame:
    """The spec's metrics for predictions: sites with no prediction for a species are left out for it.

    Boyce compares the presences with the landscape: ``background_scores`` ((m, S) scores at background
    points, e.g. stored in a bundle), or the predictions at ``background_rows`` of ``pred`` (presence-only
    CV), or else every site (a presence/absence survey samples the landscape)."""
    y = Y.to_numpy(dtype=float).copy()
    p = pred.to_numpy(dtype=float)
    missing = ~np.isfinite(p)
    if spec.task == "abundance":
        keep = ~missing.any(axis=1)
        table = evaluate_abundance(y[keep], p[keep], names=list(Y.columns), n_boot=spec.bootstrap, seed=seed)
    else:
        B = background_scores
        if B is None and background_rows is not None and len(background_rows):
            B = np.nan_to_num(p[background_rows], nan=0.0)
        y[missing] = np.nan
        p = np.where(missing, 0.0, p)
        table = evaluate_presence(y, p, [thresholds[s] for s in Y.columns], species_names=list(Y.columns),
                                  n_boot=spec.bootstrap, seed=seed, boyce="boyce" in spec.metrics,
                                  background_scores=B)
    return table[table["metric"].isin(spec.metrics)].reset_index(drop=True)


def fit_bundle(spec: ModelSpec, sites: SiteTable, out: str | Path, *, seed: int = 0, n_jobs=-1,
               overwrite: bool = False, progress: bool = True) -> Path:
    """Cross-validate, refit on all sites, and save the bundle `ecoalign evaluate` and `ecoalign map` load."""
    return fit_and_save(spec, sites, out, seed=seed, n_jobs=n_jobs, overwrite=overwrite, progress=progress)[0]


# presences at which a species' own threshold and the median species' weigh the same (committee scale)
THRESHOLD_PRIOR_PRESENCES = 5


def committee_bundle_thresholds(committee, thresholds: dict[str, float], n_presences: dict[str, int]
                                ) -> tuple[dict[str, float], list[str]]:
    """Out-of-fold thresholds as a bundle stores them for a committee (the ensemble), and the species that had none.

    Carried to the committee's scale (``committee_thresholds``), where a threshold is a share of the landscape and
    means the same for every species; then pulled toward the median species' by ``k / (n + k)`` for ``n``
    presences (k = ``THRESHOLD_PRIOR_PRESENCES``): the max-TSS of a few presences scored by spatial-fold models
    is noisy. A species with no out-of-fold score at any presence (all its presences in one spatial fold) takes
    the median; NaN would leave ``predict`` at 0.5, half the landscape suitable for no reason. Chosen on held-out
    blocks of the disdat training records (select_sdm_on_training.py): held-out TSS +0.007 per block (s.e. 0.004),
    +0.012 pooled per species (s.e. 0.005), against the carried thresholds alone."""
    carried = committee.committee_thresholds(thresholds)
    finite = [t for t in carried.values() if np.isfinite(t)]
    if not finite:
        return carried, []
    middle, k = float(np.median(finite)), THRESHOLD_PRIOR_PRESENCES
    undefined = [s for s, t in carried.items() if not np.isfinite(t)]
    weights = {s: n_presences.get(s, 0) / (n_presences.get(s, 0) + k) for s in carried}
    return {s: middle if s in undefined else weights[s] * t + (1 - weights[s]) * middle
            for s, t in carried.items()}, undefined


def fit_and_save(spec: ModelSpec, sites: SiteTable, out: str | Path, *, seed: int = 0, n_jobs=-1,
                 overwrite: bool = False, progress: bool = True) -> tuple[Path, object]:
    """``fit_bundle``, also returning the fitted model: the caller that wants it need not load it back from disk
    (for a many-species committee, reading the bundle again costs seconds)."""
    out = Path(out)
    if (out / "bundle.json").exists() and not overwrite:
        raise EcoalignInputError("a model bundle already exists here", path=out, expected="another --out, or --overwrite")
    cv = cross_validate(spec, sites, seed=seed, n_jobs=n_jobs, progress=progress)
    model = cv.model
    if model is None:
        model = make_model(spec, n_jobs, _embedding_columns(sites), seed=seed)
        with notes_silenced(CONSTANT_COLUMNS_NOTE):  # cross_validate has named them
            model.fit(sites.X, sites.Y[cv.species], **_fit_params(model, sites.xy))
    species = list(model[-1].species_)
    thresholds, rules, rule_text = cv.thresholds, cv.threshold_rules, "max_tss (out-of-fold, kernel-smoothed ROC)"
    undefined: list[str] = []
    if hasattr(model[-1], "committee_thresholds") and spec.task != "abundance":  # the ensemble's own scale
        n_presences = {sp: int((cv.y[sp] > 0).sum()) for sp in cv.y.columns}
        stored = {rule: committee_bundle_thresholds(model[-1], t, n_presences) for rule, t in rules.items()}
        rules = {rule: t for rule, (t, _) in stored.items()}
        thresholds, undefined = stored["max_tss"]  # the committee's cross-validation always yields every rule
        rule_text += (f"; carried to the committee's scale at the same share of the landscape above it, and pulled "
                      f"toward the median species' by {THRESHOLD_PRIOR_PRESENCES} / (presences + "
                      f"{THRESHOLD_PRIOR_PRESENCES})")
        if undefined:
            log.warning("%d species have no out-of-fold score at any presence (all their presences lie in one "
                        "spatial fold), so their threshold is the median of the other species' (the same share of "
                        "the landscape): %s", len(undefined), undefined[:10])
    reference = None
    if spec.task != "abundance":
        model[-1].set_thresholds({s: t for s, t in thresholds.items() if s in species and np.isfinite(t)})
        # presence-only: the ensemble scored background rows (its landscape reference) while fitting
        reference = getattr(model[-1], "reference_scores_", None) if spec.task == "presence_only" else None
        if reference is None:
            rows = _background_rows(spec, sites.Y[cv.species])
            if len(rows) > REFERENCE_ROWS:
                rows = np.sort(np.random.default_rng(seed).choice(rows, REFERENCE_ROWS, replace=False))
            reference = model.predict_proba(sites.X.iloc[rows])
        reference = np.asarray(reference, dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (LEGACY_MODEL_FILE, MODEL_FILE):  # an overwritten bundle: none of the old model stays
        (out / stale).unlink(missing_ok=True)
    save_model(out, model)  # skops: loads without running code (ecoalign.sdm.bundle_io)
    if reference is not None:
        with atomic_path(out / "reference_scores.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, reference, allow_pickle=False)
    with atomic_path(out / "cv_metrics.csv") as tmp:
        cv.metrics.to_csv(tmp, index=False)
    final = model[-1]
    meta = seal(out, {
        "format_version": BUNDLE_VERSION, "spec": spec.raw, "spec_name": spec.name, "task": spec.task,
        "features": list(sites.X.columns), "categorical": list(spec.features.get("categorical") or []),
        "species": species, "skipped_species": {**cv.skipped, **final.skipped_species_},
        "thresholds": {s: thresholds.get(s, float("nan")) for s in species},
        "threshold_rule": rule_text, "threshold_rules": rules,
        "thresholds_from_other_species": undefined,
        # the values on the out-of-fold scale, with which cv_metrics.csv scored TSS, F1, sensitivity, specificity
        "out_of_fold_thresholds": {s: cv.thresholds.get(s, float("nan")) for s in species},
        "estimator": spec.estimator["name"],
        "ensemble": ({"members": list(final.members), "selected": list(final.selected_),
                      "member_cv_auc": final.member_cv_auc_, "components": len(final.components_),
                      "refit_on_all_rows": list(final.refit_)}
                     if hasattr(final, "selected_") else None),
        "reference_scores": "reference_scores.npy" if reference is not None else None,
        "encoder": sites.feature_source.get("encoder"),
        "random_weights": sites.feature_source.get("random_weights"),
        "patch_size_m": sites.feature_source.get("patch_size_m"), "crs": sites.crs.to_string(),
        "n_sites": int(len(sites.ids)), "dropped_sites": {k: len(v) for k, v in sites.dropped.items()},
        "cv": _cv_as_run(spec, sites.xy), "cv_seconds": cv.seconds, "seed": seed,
        "summary": summary(cv.metrics),
    })
    log.info("bundle written to %s (%d species, thresholds from out-of-fold predictions; sha256 %s)", out,
             len(species), meta["content_sha256"])
    return out, model


def summary(metrics: pd.DataFrame) -> dict:
    if metrics.empty:
        return {}
    rows = metrics[metrics["species"].isin(["micro", "macro"])]
    return {f"{r.species}_{r.metric}": [r.value, r.ci_low, r.ci_high] for r in rows.itertuples()}


def read_bundle_meta(path: str | Path) -> dict:
    """A bundle's ``bundle.json``, without loading its model (a bundle of a newer format is refused)."""
    return read_meta(path)


def load_bundle(path: str | Path, trusted=()):
    """(fitted model, ``bundle.json`` as a dict) of a bundle folder, checked against its hashes and loaded
    without running code (``ecoalign.sdm.bundle_io``); ``trusted``: type names to accept beyond ecoalign's list."""
    model, meta, _ = load(path, trusted=trusted)
    return model, meta


def reference_scores(bundle: str | Path, meta: dict) -> np.ndarray | None:
    """The bundle's scores at its background sample (the landscape reference for Boyce), if it has them."""
    name = meta.get("reference_scores")
    if not name:
        return None
    path = Path(bundle) / name
    if not path.exists():
        raise EcoalignInputError("the bundle names reference scores that are missing", path=path,
                                 expected="the file written by `ecoalign fit` (refit the bundle)")
    return np.load(path, allow_pickle=False)


def evaluate_bundle(bundle, sites: SiteTable, *, seed: int = 0, metrics: list[str] | None = None,
                    n_boot: int | None = None, trusted=()) -> pd.DataFrame:
    """Metrics of a fitted bundle on an independent test table (e.g. presence/absence survey sites).

    ``bundle``: a bundle folder, or a loaded :class:`ecoalign.sdm.fit.Bundle`. The thresholds are the bundle's
    own (out-of-fold max-TSS); the Boyce index compares the test presences with the bundle's scores at its
    background sample (Hirzel et al. 2006: the landscape, not the test sites).
    """
    from dataclasses import replace

    from ecoalign.sdm.spec import spec_from_dict

    if hasattr(bundle, "model") and hasattr(bundle, "meta"):  # already loaded
        model, meta, bundle = bundle.model, bundle.meta, bundle.path
    else:
        model, meta = load_bundle(bundle, trusted=trusted)
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
        log.warning("%d test species unknown to the model are not evaluated, e.g. %s", len(unknown), unknown[:5])
    spec = spec_from_dict(meta["spec"], Path(bundle) / "bundle.json")
    if metrics is not None:
        spec = replace(spec, metrics=list(metrics))
    if n_boot is not None:
        spec = replace(spec, bootstrap=int(n_boot))
    X = sites.X[meta["features"]]
    species = list(model[-1].species_)
    if spec.task == "abundance":
        pred = pd.DataFrame(np.asarray(model.predict(X)).reshape(len(X), -1), index=X.index, columns=species)[known]
        return score_predictions(spec, sites.Y[known], pred, meta["thresholds"], seed=seed)
    pred = pd.DataFrame(model.predict_proba(X), index=X.index, columns=species)[known]
    ref = reference_scores(bundle, meta)
    if ref is not None:
        ref = ref[:, [species.index(s) for s in known]]
    elif "boyce" in spec.metrics:
        log.warning("bundle %s has no background reference scores (an older bundle): Boyce uses the test sites "
                    "as the landscape", bundle)
    thresholds = {s: meta["thresholds"].get(s, float("nan")) for s in known}
    return score_predictions(spec, sites.Y[known], pred, thresholds, seed=seed, background_scores=ref)
