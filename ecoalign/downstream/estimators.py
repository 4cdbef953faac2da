"""Scikit-learn compatible species models: one estimator per species, fitted in parallel.

``make_estimator`` builds a single model (LightGBM, random forest, logistic or ridge) for a presence
(binary) or abundance (regression) task; ``MultiSpeciesModel`` fits one clone of it per species column
of ``Y``, skipping species with too few presences (recorded, with a warning, never a crash).
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import BaseEstimator, clone
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ..errors import EcoalignInputError

ESTIMATORS = ("lightgbm", "random_forest", "logistic", "ridge")
TASKS = ("presence", "abundance")
_MULTITHREADED = ("lightgbm", "random_forest")  # estimators with their own ``n_jobs``


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise EcoalignInputError(f"unknown task {task!r}", where="task", expected=" or ".join(map(repr, TASKS)))
    return task


def make_estimator(name: str = "lightgbm", params: Mapping[str, Any] | None = None, task: str = "presence"):
    """One unfitted scikit-learn estimator for one species.

    ``name``: ``"lightgbm"`` (default), ``"random_forest"``, ``"logistic"`` (presence only) or ``"ridge"``
    (abundance only). ``task``: ``"presence"`` (binary classification) or ``"abundance"`` (regression).
    ``params`` go to the underlying model (for ``logistic``/``ridge`` to the final step of the
    ``StandardScaler`` pipeline), except ``count`` (abundance only): ``True`` for count data gives
    LightGBM ``objective="poisson"``, a random forest ``criterion="poisson"`` and ridge a
    ``log1p``-transformed target. LightGBM is quiet (``verbose=-1``) and, like the random forest,
    deterministic (``random_state=0`` unless given).
    """
    _check_task(task)
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise EcoalignInputError(f"unknown estimator {name!r}", where="estimator",
                                 expected=" or ".join(map(repr, ESTIMATORS)))
    params = dict(params or {})
    count = params.pop("count", False)
    if count not in (True, False):
        raise EcoalignInputError(f"'count' must be true or false, got {count!r}", where="params.count")
    if count and task != "abundance":
        raise EcoalignInputError("'count: true' only applies to abundance models", where="params.count",
                                 expected="task='abundance' or no 'count'")

    if name == "lightgbm":
        import lightgbm as lgb

        kw = {"random_state": 0, "verbose": -1}
        if count:
            kw["objective"] = "poisson"
        kw.update(params)
        return lgb.LGBMClassifier(**kw) if task == "presence" else lgb.LGBMRegressor(**kw)

    if name == "random_forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cls = RandomForestClassifier if task == "presence" else RandomForestRegressor
        kw = {"random_state": 0}
        if count:
            kw["criterion"] = "poisson"
        kw.update(params)
        return cls(**_checked(cls, kw, name))

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logistic":
        if task != "presence":
            raise EcoalignInputError("'logistic' is a presence (binary) model, not an abundance model",
                                     where="estimator", expected="'ridge', 'lightgbm' or 'random_forest' for abundance")
        from sklearn.linear_model import LogisticRegression

        kw = {"max_iter": 1000}
        kw.update(params)
        return make_pipeline(StandardScaler(), LogisticRegression(**_checked(LogisticRegression, kw, name)))

    # ridge
    if task != "abundance":
        raise EcoalignInputError("'ridge' is an abundance (regression) model, not a presence model",
                                 where="estimator", expected="'logistic', 'lightgbm' or 'random_forest' for presence")
    from sklearn.linear_model import Ridge

    model = make_pipeline(StandardScaler(), Ridge(**_checked(Ridge, params, name)))
    if count:
        from sklearn.compose import TransformedTargetRegressor

        return TransformedTargetRegressor(regressor=model, func=np.log1p, inverse_func=np.expm1)
    return model


def _checked(cls, kw: dict, name: str) -> dict:
    """Unknown parameters for a scikit-learn model: a clear error instead of a TypeError."""
    known = set(cls().get_params())
    unknown = sorted(set(kw) - known)
    if unknown:
        raise EcoalignInputError(f"unknown parameter(s) {unknown} for {name!r}", where="params",
                                 expected=f"some of {sorted(known)}")
    return kw


def _as_2d_features(X, *, what: str = "X") -> tuple[np.ndarray, list[str] | None]:
    """Features as a float array, plus column names when X is a DataFrame."""
    names = None
    if isinstance(X, pd.DataFrame):
        bad = [c for c in X.columns if not (pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c]))]
        if bad:
            raise EcoalignInputError(f"feature column {bad[0]!r} is not numeric (dtype {X[bad[0]].dtype})",
                                     where=what, expected="numeric features; one-hot encode categorical columns "
                                                          "(e.g. pandas.get_dummies)")
        names = [str(c) for c in X.columns]
        arr = X.to_numpy(dtype=float)
    else:
        try:
            arr = np.asarray(X, dtype=float)
        except (TypeError, ValueError) as exc:
            raise EcoalignInputError(f"features cannot be read as numbers ({exc})", where=what,
                                     expected="a numeric array or DataFrame") from None
        if arr.ndim == 1:
            raise EcoalignInputError(f"features are 1-D (shape {arr.shape})", where=what,
                                     expected="a 2-D array (n_samples, n_features); use X.reshape(-1, 1) "
                                              "for a single feature")
    if arr.ndim != 2:
        raise EcoalignInputError(f"features have shape {arr.shape}", where=what,
                                 expected="a 2-D array (n_samples, n_features)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise EcoalignInputError(f"features have shape {arr.shape}", where=what,
                                 expected="at least one row and one column")
    bad_mask = ~np.isfinite(arr)
    if bad_mask.any():
        j = int(np.flatnonzero(bad_mask.any(axis=0))[0])
        col = names[j] if names is not None else f"column {j}"
        rows = np.flatnonzero(bad_mask[:, j])
        kind = "NaN" if np.isnan(arr[rows[0], j]) else "infinite"
        raise EcoalignInputError(
            f"feature {col!r} has {len(rows)} row(s) with NaN/infinite values (first at row {int(rows[0])}, {kind})",
            where=what, expected="finite numbers: drop or impute those rows first")
    return arr, names


def _as_targets(Y, n_rows: int, species: Sequence[str] | None,
                allow_nan: bool = False) -> tuple[np.ndarray, list[str], bool]:
    """Targets as a float (n, S) array, the species names, and whether Y was 1-D."""
    names = None
    if isinstance(Y, pd.DataFrame):
        names = [str(c) for c in Y.columns]
        bad = [c for c in Y.columns if not (pd.api.types.is_numeric_dtype(Y[c]) or pd.api.types.is_bool_dtype(Y[c]))]
        if bad:
            raise EcoalignInputError(f"species column {bad[0]!r} is not numeric (dtype {Y[bad[0]].dtype})",
                                     where="Y", expected="numbers: 0/1 presence, cover or counts")
        arr = Y.to_numpy(dtype=float)
    elif isinstance(Y, pd.Series):
        names = [str(Y.name)] if Y.name is not None else None
        arr = pd.to_numeric(Y, errors="coerce").to_numpy(dtype=float)
        if np.isnan(arr).sum() > Y.isna().sum():
            raise EcoalignInputError(f"species {Y.name!r} has non-numeric values", where="Y",
                                     expected="numbers: 0/1 presence, cover or counts")
    else:
        try:
            arr = np.asarray(Y, dtype=float)
        except (TypeError, ValueError) as exc:
            raise EcoalignInputError(f"targets cannot be read as numbers ({exc})", where="Y",
                                     expected="numbers: 0/1 presence, cover or counts") from None
    one_d = arr.ndim == 1
    if one_d:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise EcoalignInputError(f"targets have shape {arr.shape}", where="Y", expected="(n,) or (n, n_species)")
    if arr.shape[0] != n_rows:
        raise EcoalignInputError(f"Y has {arr.shape[0]} rows but X has {n_rows}", where="Y",
                                 expected="one row of Y per row of X, in the same order")
    if species is not None:
        species = [str(s) for s in ([species] if isinstance(species, str) else species)]
        if len(species) != arr.shape[1]:
            raise EcoalignInputError(f"{len(species)} species names given for {arr.shape[1]} column(s) of Y",
                                     where="species", expected="one name per column of Y")
        names = species
    if names is None:
        names = ["species"] if arr.shape[1] == 1 else [f"species_{j}" for j in range(arr.shape[1])]
    dup = pd.Index(names)[pd.Index(names).duplicated()].unique().tolist()
    if dup:
        raise EcoalignInputError(f"duplicate species name(s) {dup}", where="Y", expected="one column per species")
    for j, name in enumerate(names):
        col = arr[:, j]
        bad_values = np.isinf(col) if allow_nan else ~np.isfinite(col)
        if bad_values.any():
            rows = np.flatnonzero(bad_values)
            raise EcoalignInputError(f"species {name!r} has {len(rows)} NaN/infinite value(s) "
                                     f"(first at row {int(rows[0])})", where="Y",
                                     expected="0 for absence, not a missing value")
        if (col[np.isfinite(col)] < 0).any():
            raise EcoalignInputError(f"species {name!r} has negative value(s) (min {col.min():g})", where="Y",
                                     expected="presence 0/1, cover or counts >= 0")
    return arr, names, one_d


def _target(y: np.ndarray, task: str) -> np.ndarray:
    return y.astype(int) if task == "presence" else y


def _fit_one(estimator, X: np.ndarray, y: np.ndarray):
    return estimator.fit(X, y)


def _proba_of_presence(estimator, X: np.ndarray) -> np.ndarray:
    proba = estimator.predict_proba(X)
    classes = list(getattr(estimator, "classes_", [0, 1]))
    return proba[:, classes.index(1)]


def _presence_only(self) -> bool:
    if self.task != "presence":
        raise AttributeError(f"predict_proba is only available for task='presence' (this model has "
                             f"task={self.task!r}); use predict for abundances")
    return True


SPECIES_PARALLEL_MAX_ROWS = 5000


class MultiSpeciesModel(BaseEstimator):
    """One model per species (presence or abundance), scikit-learn compatible (``clone``, ``get_params``).

    Parameters
    ----------
    estimator : ``"lightgbm"`` (default), ``"random_forest"``, ``"logistic"``, ``"ridge"`` (see
        :func:`make_estimator`), or an unfitted scikit-learn estimator that is cloned per species.
    params : parameters for :func:`make_estimator` (e.g. ``{"n_estimators": 200, "count": True}``).
    task : ``"presence"`` (Y > 0 is a presence) or ``"abundance"``.
    min_presences : species with fewer presences (non-zero values), or for presence tasks fewer
        absences, are not fitted; they are listed in ``skipped_species_`` with the reason.
    n_jobs : parallel jobs over species (joblib; -1 = all cores). When several species are fitted at
        once each LightGBM / random forest runs single-threaded, so cores are not oversubscribed.

    Attributes after ``fit``: ``species_`` (fitted species, the column order of ``predict``),
    ``estimators_`` (dict species -> fitted estimator), ``skipped_species_`` (dict species -> reason),
    ``species_in_`` (all species given), ``n_features_in_``, ``feature_names_in_`` (DataFrame X only),
    ``dropped_features_`` (constant feature columns: names, or indices for arrays), ``thresholds_``
    (None until :meth:`set_thresholds`).
    """

    def __init__(self, estimator="lightgbm", params=None, task="presence", min_presences=2, n_jobs=-1,
                 missing_targets="error"):
        self.missing_targets = missing_targets
        self.estimator = estimator
        self.params = params
        self.task = task
        self.min_presences = min_presences
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------ fit
    def _base_estimator(self, inner_n_jobs: int | None):
        if isinstance(self.estimator, str):
            params = dict(self.params or {})
            if self.estimator in _MULTITHREADED and inner_n_jobs is not None:
                params["n_jobs"] = inner_n_jobs
            return make_estimator(self.estimator, params, task=self.task)
        if not hasattr(self.estimator, "fit"):
            raise EcoalignInputError(f"estimator {self.estimator!r} is neither a known name nor a scikit-learn "
                                     f"estimator", where="estimator", expected=" or ".join(map(repr, ESTIMATORS)))
        if self.params:
            raise EcoalignInputError("'params' only apply to a named estimator", where="params",
                                     expected="params set on the estimator object itself")
        est = clone(self.estimator)
        if inner_n_jobs is not None and "n_jobs" in est.get_params():
            est.set_params(n_jobs=inner_n_jobs)
        return est

    def fit(self, X, Y, species: Sequence[str] | None = None):
        """Fit one model per species column of ``Y`` ((n,) or (n, S); DataFrame columns are the names)."""
        _check_task(self.task)
        if isinstance(self.min_presences, bool) or not isinstance(self.min_presences, (int, np.integer)) \
                or self.min_presences < 1:
            raise EcoalignInputError(f"min_presences={self.min_presences!r}", where="min_presences",
                                     expected="an integer >= 1")
        Xa, names = _as_2d_features(X)
        if self.missing_targets not in ("error", "ignore"):
            raise EcoalignInputError(f"missing_targets={self.missing_targets!r}", where="missing_targets",
                                     expected="'error', or 'ignore' (NaN = site not used for that species)")
        Ya, species_names, one_d = _as_targets(Y, Xa.shape[0], species, allow_nan=self.missing_targets == "ignore")
        used = np.isfinite(Ya)  # per species: the rows that take part (presence-only exclusion buffers)

        self.n_features_in_ = Xa.shape[1]
        if names is not None:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        constant = np.flatnonzero(np.ptp(Xa, axis=0) == 0)
        self.dropped_features_ = [names[j] for j in constant] if names is not None else [int(j) for j in constant]
        if len(constant) == Xa.shape[1]:
            raise EcoalignInputError(f"all {Xa.shape[1]} feature column(s) are constant", where="X",
                                     expected="at least one feature that varies between rows")
        if len(constant):
            warnings.warn(f"dropping {len(constant)} constant feature column(s): {self.dropped_features_}",
                          UserWarning, stacklevel=2)
        self._keep = np.flatnonzero(np.ptp(Xa, axis=0) != 0)
        Xk = Xa[:, self._keep]

        if self.task == "presence":
            Ya = np.where(used, Ya > 0, np.nan)
        skipped = self._skip_reasons(Ya, used, species_names)
        todo = [j for j, name in enumerate(species_names) if name not in skipped]
        self.species_in_ = list(species_names)
        self.skipped_species_ = skipped
        if not todo:
            shown = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:10])
            more = f" (and {len(skipped) - 10} more)" if len(skipped) > 10 else ""
            raise EcoalignInputError(f"no species can be fitted: {shown}{more}", where="Y",
                                     expected=f"at least one species with >= {self.min_presences} presences"
                                              + (" and absences" if self.task == "presence" else "")
                                              + " (or a lower min_presences)")
        if skipped:
            shown = ", ".join(f"{k} ({v})" for k, v in list(skipped.items())[:10])
            more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
            warnings.warn(f"skipped {len(skipped)} of {len(species_names)} species: {shown}{more}; "
                          f"see skipped_species_", UserWarning, stacklevel=2)

        # Many small fits: parallel over species. Few large ones: each estimator threads itself, which
        # measured faster from ~5,000 rows on (benchmarks/bench_downstream.py).
        workers = min(effective_n_jobs(self.n_jobs), len(todo)) if Xk.shape[0] < SPECIES_PARALLEL_MAX_ROWS else 1
        if workers > 1:
            base = self._base_estimator(inner_n_jobs=1)
            fitted = Parallel(n_jobs=workers, prefer="threads")(
                delayed(_fit_one)(clone(base), Xk[used[:, j]], _target(Ya[used[:, j], j], self.task)) for j in todo)
        else:
            inner = (self.params or {}).get("n_jobs", self.n_jobs) if isinstance(self.estimator, str) else None
            base = self._base_estimator(inner_n_jobs=inner)
            fitted = [_fit_one(clone(base), Xk[used[:, j]], _target(Ya[used[:, j], j], self.task)) for j in todo]
        self.species_ = [species_names[j] for j in todo]
        self.estimators_ = dict(zip(self.species_, fitted))
        self._y_1d = one_d
        self.thresholds_ = None
        return self

    def _skip_reasons(self, Ya: np.ndarray, used: np.ndarray, names: Sequence[str]) -> dict[str, str]:
        skipped: dict[str, str] = {}
        for j, name in enumerate(names):
            n_pres = int((Ya[used[:, j], j] > 0).sum())
            n_abs = int(used[:, j].sum()) - n_pres
            if n_pres < self.min_presences:
                noun = "presences" if self.task == "presence" else "non-zero values"
                skipped[name] = f"{n_pres} {noun} < min {self.min_presences}"
            elif self.task == "presence" and n_abs < self.min_presences:
                skipped[name] = f"{n_abs} absences < min {self.min_presences}"
        return skipped

    def fittable_species(self, Y) -> tuple[list[str], dict[str, str]]:
        """Which species ``fit`` would model, and why the others are left out, without fitting anything."""
        Ya, names, _ = _as_targets(Y, len(Y), None, allow_nan=self.missing_targets == "ignore")
        used = np.isfinite(Ya)
        skipped = self._skip_reasons(Ya, used, names)
        return [n for n in names if n not in skipped], skipped

    # -------------------------------------------------------------- predict
    def _features(self, X) -> np.ndarray:
        check_is_fitted(self, "estimators_")
        Xa, names = _as_2d_features(X)
        fit_names = getattr(self, "feature_names_in_", None)
        if names is not None and fit_names is not None:
            fit_list = list(fit_names)
            missing = [c for c in fit_list if c not in names]
            extra = [c for c in names if c not in fit_list]
            if missing or extra:
                raise EcoalignInputError(
                    f"feature columns differ from fit: missing {missing}, unexpected {extra}", where="X",
                    expected=f"the {len(fit_list)} columns seen at fit: {fit_list}")
            if names != fit_list:
                Xa = Xa[:, [names.index(c) for c in fit_list]]
        elif Xa.shape[1] != self.n_features_in_:
            raise EcoalignInputError(f"X has {Xa.shape[1]} feature column(s), the model was fitted on "
                                     f"{self.n_features_in_}", where="X",
                                     expected=f"{self.n_features_in_} columns in the order used at fit")
        return Xa[:, self._keep]

    @available_if(_presence_only)
    def predict_proba(self, X) -> np.ndarray:
        """Probability of presence, shape (n, len(species_)) (2-D even for one species)."""
        Xk = self._features(X)
        return np.column_stack([_proba_of_presence(self.estimators_[s], Xk) for s in self.species_])

    @available_if(_presence_only)
    def predict_proba_species(self, X, name: str) -> np.ndarray:
        """Probability of presence of one species, shape (n,)."""
        check_is_fitted(self, "estimators_")
        est = self._estimator_for(name)
        return _proba_of_presence(est, self._features(X))

    def _estimator_for(self, name: str):
        if name in self.estimators_:
            return self.estimators_[name]
        if name in self.skipped_species_:
            raise EcoalignInputError(f"species {name!r} was not fitted: {self.skipped_species_[name]}",
                                     where="species", expected=f"one of the fitted species_ ({len(self.species_)})")
        raise EcoalignInputError(f"unknown species {name!r}", where="species",
                                 expected=f"one of the fitted species_: {self.species_[:10]}"
                                          + (" ..." if len(self.species_) > 10 else ""))

    def set_thresholds(self, thresholds: Mapping[str, float]) -> "MultiSpeciesModel":
        """Per-species presence thresholds for :meth:`predict` (species not given keep 0.5)."""
        check_is_fitted(self, "estimators_")
        if self.task != "presence":
            raise EcoalignInputError("thresholds only apply to presence models", where="thresholds",
                                     expected="task='presence'")
        out = {s: 0.5 for s in self.species_}
        for name, t in dict(thresholds).items():
            self._estimator_for(name)
            try:
                t = float(t)
            except (TypeError, ValueError):
                t = float("nan")
            if not 0.0 <= t <= 1.0:
                raise EcoalignInputError(f"threshold {thresholds[name]!r} for species {name!r}",
                                         where="thresholds", expected="a probability in [0, 1]")
            out[name] = t
        self.thresholds_ = out
        return self

    def predict(self, X) -> np.ndarray:
        """Presence 0/1 (at 0.5 or ``thresholds_``) or abundances; (n, S) or (n,) when fitted on 1-D Y."""
        if self.task == "presence":
            proba = self.predict_proba(X)
            th = np.array([(self.thresholds_ or {}).get(s, 0.5) for s in self.species_])
            out = (proba >= th[None, :]).astype(int)
        else:
            Xk = self._features(X)
            out = np.column_stack([np.asarray(self.estimators_[s].predict(Xk), dtype=float) for s in self.species_])
        return out[:, 0] if self._y_1d and out.shape[1] == 1 else out

    def score(self, X, Y, species: Sequence[str] | None = None) -> float:
        """Macro ROC AUC over fitted species (presence; species with one class in Y are left out)
        or mean R^2 (abundance). Lets ``cross_val_score`` work with the default scoring."""
        from sklearn.metrics import r2_score, roc_auc_score

        check_is_fitted(self, "estimators_")
        Xa = self._features(X)
        if species is None and not (isinstance(Y, pd.DataFrame) or (isinstance(Y, pd.Series) and Y.name is not None)):
            species = self.species_in_  # unnamed Y: same columns, same order as at fit
        Ya, names, _ = _as_targets(Y, Xa.shape[0], species)
        scores = []
        for s in self.species_:
            if s not in names:
                continue
            y = Ya[:, names.index(s)]
            est = self.estimators_[s]
            if self.task == "presence":
                y = (y > 0).astype(int)
                if y.min() == y.max():
                    continue
                scores.append(roc_auc_score(y, _proba_of_presence(est, Xa)))
            else:
                scores.append(r2_score(y, est.predict(Xa)))
        if not scores:
            warnings.warn("no fitted species could be scored (none in Y, or only one class each)", UserWarning,
                          stacklevel=2)
            return float("nan")
        return float(np.mean(scores))
