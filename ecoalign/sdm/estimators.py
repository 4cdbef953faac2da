"""Scikit-learn compatible species models: one estimator per species, fitted in parallel.

``make_estimator`` builds a single model for a presence (binary) or abundance (regression) task: LightGBM,
random forest, logistic, ridge, and for presence-background data the down-sampled forest (``rf_down``), its
LightGBM twin (``lightgbm_down``) and MaxEnt (``maxent``, elapid's ``MaxentModel``: linear, quadratic,
product, hinge and threshold features, L1 regularisation, cloglog output). ``MultiSpeciesModel`` fits one
clone per species column of ``Y``, skipping species with too few presences (recorded, with a warning, never
a crash), with presences and background/absences weighted to equal totals unless ``weighting=None``.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ecoalign.core.errors import EcoalignInputError
from ecoalign.sdm.downsampled import DownsampledBagging
from ecoalign.sdm.species_model import (
    SpeciesModelMixin,
    TrainingRowsNote,
    as_features,
    as_targets,
    resolve_n_jobs,
)

ESTIMATORS = ("lightgbm", "random_forest", "logistic", "ridge", "rf_down", "lightgbm_down", "maxent")
PRESENCE_ONLY_ESTIMATORS = ("rf_down", "lightgbm_down", "maxent")  # need presences vs background/absences
MULTI_SPECIES_ESTIMATORS = ("deep_maxent", "ensemble")  # one model for all species (see make_species_model)
TASKS = ("presence", "abundance")
WEIGHTINGS = ("balanced", None)
_MULTITHREADED = ("lightgbm", "random_forest")  # estimators with their own ``n_jobs``
# A down-sampled forest fits hundreds of trees on 2 x n_presences rows each; below about this many presences a
# tree is mostly Python overhead that holds the GIL, so a second thread only adds contention. On 2 cores, 52
# species of 40 presences took twice the CPU and 1.5x the wall time threaded; on the disdat records, running
# the species under this serially cut the forest's CPU by a fifth and its wall time by a sixth
# (benchmarks/bench_species_threads.py).
_MIN_PRESENCES_PER_THREAD = 50


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
                                 expected=" or ".join(map(repr, ESTIMATORS + MULTI_SPECIES_ESTIMATORS)))
    if name in PRESENCE_ONLY_ESTIMATORS and task != "presence":
        raise EcoalignInputError(f"{name!r} is a presence model, not an abundance model", where="estimator",
                                 expected="'lightgbm', 'random_forest' or 'ridge' for abundance")
    params = dict(params or {})
    count = params.pop("count", False)
    if count not in (True, False):
        raise EcoalignInputError(f"'count' must be true or false, got {count!r}", where="params.count")
    if count and task != "abundance":
        raise EcoalignInputError("'count: true' only applies to abundance models", where="params.count",
                                 expected="task='abundance' or no 'count'")

    if name in ("rf_down", "lightgbm_down"):
        from ecoalign.sdm.downsampled import DownsampledBagging

        params.pop("n_jobs", None)
        kw = {"base": "tree" if name == "rf_down" else "lightgbm",
              "n_estimators": 500 if name == "rf_down" else 10, "random_state": 0}
        kw.update(params)
        return DownsampledBagging(**_checked(DownsampledBagging, kw, name))

    if name == "maxent":
        from elapid import MaxentModel

        kw = {"feature_types": ["linear", "quadratic", "product", "hinge", "threshold"], "transform": "cloglog",
              "n_cpus": 1, "random_state": 0}
        if "n_jobs" in params:
            params["n_cpus"] = params.pop("n_jobs")
        kw.update(params)
        return MaxentModel(**_checked(MaxentModel, kw, name))

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


def _target(y: np.ndarray, task: str) -> np.ndarray:
    return y.astype(int) if task == "presence" else y


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Sample weights giving presences and background/absences equal totals (each summing to n/2), as MaxEnt's
    and down-weighted boosted trees' presence-background weighting does, so 10,000 background points do not
    swamp 20 presences."""
    y = np.asarray(y) > 0
    n1 = int(y.sum())
    n0 = y.size - n1
    return np.where(y, y.size / (2.0 * max(n1, 1)), y.size / (2.0 * max(n0, 1)))


def _fit_one(estimator, X: np.ndarray, y: np.ndarray, weighting, fit_kw: dict | None = None):
    fit_kw = dict(fit_kw or {})
    if weighting == "balanced":
        from sklearn.pipeline import Pipeline

        key = f"{estimator.steps[-1][0]}__sample_weight" if isinstance(estimator, Pipeline) else "sample_weight"
        try:
            return estimator.fit(X, y, **{key: balanced_weights(y)}, **fit_kw)
        except TypeError as exc:  # an estimator without sample_weight: say so rather than fit unweighted
            if "sample_weight" not in str(exc):
                raise
            raise EcoalignInputError(f"{type(estimator).__name__} does not accept sample_weight", where="weighting",
                                     expected="an estimator with fit(X, y, sample_weight=...), or weighting: none")
    return estimator.fit(X, y, **fit_kw)


def _proba_of_presence(estimator, X: np.ndarray) -> np.ndarray:
    proba = np.asarray(estimator.predict_proba(X))
    if proba.ndim == 1:
        return proba
    classes = list(getattr(estimator, "classes_", [0, 1]))
    return proba[:, classes.index(1)]


def _presence_only(self) -> bool:
    if self.task != "presence":
        raise AttributeError(f"predict_proba is only available for task='presence' (this model has "
                             f"task={self.task!r}); use predict for abundances")
    return True


class MultiSpeciesModel(SpeciesModelMixin, BaseEstimator):
    """One model per species (presence or abundance), scikit-learn compatible (``clone``, ``get_params``).

    Parameters
    ----------
    estimator : a name from ``ESTIMATORS`` (see :func:`make_estimator`), or an unfitted scikit-learn
        estimator that is cloned per species.
    params : parameters for :func:`make_estimator` (e.g. ``{"n_estimators": 200, "count": True}``).
    task : ``"presence"`` (Y > 0 is a presence) or ``"abundance"``.
    min_presences : species with fewer presences (non-zero values), or for presence tasks fewer
        absences, are not fitted; they are listed in ``skipped_species_`` with the reason.
    n_jobs : threads for the whole fit (-1 / None = the cores available to this process). With several
        species the species run in parallel and each estimator is single-threaded; one species gets all
        threads itself. Never both, so cores are never oversubscribed.
    weighting : ``"balanced"`` (presences and absences/background weigh the same in total; the default for
        presence tasks) or ``None``. Down-sampled and MaxEnt estimators balance by themselves.
    categorical_features : names of feature columns holding level codes (``CategoricalEncoder(encoding=
        "codes")``), split on natively by LightGBM (codes < 0 are its missing category).

    Attributes after ``fit``: ``species_`` (fitted species, the column order of ``predict``),
    ``estimators_`` (dict species -> fitted estimator), ``skipped_species_`` (dict species -> reason),
    ``species_in_`` (all species given), ``n_features_in_``, ``feature_names_in_`` (DataFrame X only),
    ``dropped_features_`` (constant feature columns: names, or indices for arrays), ``thresholds_``
    (None until :meth:`set_thresholds`).
    """

    def __init__(self, estimator="lightgbm", params=None, task="presence", min_presences=2, n_jobs=-1,
                 missing_targets="error", weighting="balanced", categorical_features=()):
        self.categorical_features = categorical_features
        self.missing_targets = missing_targets
        self.estimator = estimator
        self.params = params
        self.task = task
        self.min_presences = min_presences
        self.n_jobs = n_jobs
        self.weighting = weighting

    # ------------------------------------------------------------------ fit
    def _base_estimator(self, inner_n_jobs: int):
        if isinstance(self.estimator, str):
            params = dict(self.params or {})
            if self.estimator in _MULTITHREADED:
                params["n_jobs"] = inner_n_jobs
            return make_estimator(self.estimator, params, task=self.task)
        if not hasattr(self.estimator, "fit"):
            raise EcoalignInputError(f"estimator {self.estimator!r} is neither a known name nor a scikit-learn "
                                     f"estimator", where="estimator", expected=" or ".join(map(repr, ESTIMATORS)))
        if self.params:
            raise EcoalignInputError("'params' only apply to a named estimator", where="params",
                                     expected="params set on the estimator object itself")
        est = clone(self.estimator)
        if "n_jobs" in est.get_params():
            est.set_params(n_jobs=inner_n_jobs)
        return est

    def _weighting(self) -> str | None:
        if self.weighting not in WEIGHTINGS:
            raise EcoalignInputError(f"weighting={self.weighting!r}", where="weighting",
                                     expected="'balanced' or None")
        if self.task != "presence" or self.estimator in PRESENCE_ONLY_ESTIMATORS:
            return None  # abundances are not classes; down-sampling and MaxEnt balance by themselves
        return self.weighting

    def fit(self, X, Y, species: Sequence[str] | None = None):
        """Fit one model per species column of ``Y`` ((n,) or (n, S); DataFrame columns are the names)."""
        _check_task(self.task)
        if isinstance(self.min_presences, bool) or not isinstance(self.min_presences, (int, np.integer)) \
                or self.min_presences < 1:
            raise EcoalignInputError(f"min_presences={self.min_presences!r}", where="min_presences",
                                     expected="an integer >= 1")
        weighting = self._weighting()
        Xa, names = as_features(X)
        if self.missing_targets not in ("error", "ignore"):
            raise EcoalignInputError(f"missing_targets={self.missing_targets!r}", where="missing_targets",
                                     expected="'error', or 'ignore' (NaN = site not used for that species)")
        Ya, species_names, one_d = as_targets(Y, Xa.shape[0], species, allow_nan=self.missing_targets == "ignore")
        used = np.isfinite(Ya)  # per species: the rows that take part (presence-only exclusion buffers)

        self._set_feature_names(Xa, names)
        constant = np.flatnonzero(np.ptp(Xa, axis=0) == 0)
        self.dropped_features_ = [names[j] for j in constant] if names is not None else [int(j) for j in constant]
        if len(constant) == Xa.shape[1]:
            raise EcoalignInputError(f"all {Xa.shape[1]} feature column(s) are constant", where="X",
                                     expected="at least one feature that varies between rows")
        if len(constant):
            warnings.warn(f"dropping {len(constant)} constant feature column(s): {self.dropped_features_}",
                          TrainingRowsNote, stacklevel=2)
        self._keep = np.flatnonzero(np.ptp(Xa, axis=0) != 0)
        Xk = Xa[:, self._keep]

        if self.task == "presence":
            Ya = np.where(used, Ya > 0, np.nan)
        skipped = self._skip_reasons(Ya, species_names)
        todo = [j for j, name in enumerate(species_names) if name not in skipped]
        self._finish_species(species_names, skipped, todo, one_d)

        # One thread budget: species in parallel (single-threaded estimators), or one species with all threads.
        threads = resolve_n_jobs(self.n_jobs)
        threaded, serial = self._thread_plan(todo, Ya, used, threads)
        workers = min(threads, len(threaded))
        base = self._base_estimator(inner_n_jobs=1 if workers > 1 else threads)
        fit_kw = self._categorical_fit_kw(base, names)

        def jobs(columns):
            return (delayed(_fit_one)(clone(base), Xk[used[:, j]], _target(Ya[used[:, j], j], self.task), weighting,
                                      fit_kw) for j in columns)

        if workers < 2:  # nothing to share between threads: every species in this one
            threaded, serial = [], list(todo)
        fitted = dict(zip(threaded, Parallel(n_jobs=workers, prefer="threads")(jobs(threaded)))) if threaded else {}
        fitted.update(zip(serial, (f(*a, **k) for f, a, k in jobs(serial))))
        self.estimators_ = {s: fitted[j] for s, j in zip(self.species_, todo)}
        return self

    def _thread_plan(self, todo: list[int], Ya: np.ndarray, used: np.ndarray, threads: int
                     ) -> tuple[list[int], list[int]]:
        """(species columns fitted in parallel threads, columns fitted one after another in this thread): the
        down-sampled forest's small species run serially (``_MIN_PRESENCES_PER_THREAD``)."""
        if threads < 2 or self.estimator != "rf_down":
            return list(todo), []
        large = {j: int((Ya[used[:, j], j] > 0).sum()) >= _MIN_PRESENCES_PER_THREAD for j in todo}
        return [j for j in todo if large[j]], [j for j in todo if not large[j]]

    def _categorical_fit_kw(self, base, names: list[str] | None) -> dict:
        """LightGBM's ``categorical_feature`` (positions among the kept columns) for the declared code columns."""
        cats = list(self.categorical_features or ())
        if not cats:
            return {}
        if names is None or [c for c in cats if c not in names]:
            raise EcoalignInputError(f"categorical_features {cats} are not all columns of X", where="X",
                                     expected="a DataFrame holding the level-code columns")
        if type(base).__module__.split(".")[0] != "lightgbm":
            raise EcoalignInputError(f"categorical_features need LightGBM, not {type(base).__name__}",
                                     where="categorical_features", expected="one-hot encoded categories instead")
        kept = [names[j] for j in self._keep]
        return {"categorical_feature": [kept.index(c) for c in cats if c in kept]}

    # -------------------------------------------------------------- predict
    @available_if(_presence_only)
    def predict_proba(self, X) -> np.ndarray:
        """Probability of presence, shape (n, len(species_)) (2-D even for one species)."""
        Xk = self._features(X)
        return np.column_stack([_proba_of_presence(self.estimators_[s], Xk) for s in self.species_])

    @available_if(_presence_only)
    def predict_proba_species(self, X, name: str) -> np.ndarray:
        """Probability of presence of one species, shape (n,)."""
        self._species_index(name)
        return _proba_of_presence(self.estimators_[name], self._features(X))

    def _predict_values(self, X) -> np.ndarray:
        Xk = self._features(X)
        return np.column_stack([np.asarray(self.estimators_[s].predict(Xk), dtype=float) for s in self.species_])

    # ----------------------------------------------------------- uncertainty
    def spread_info(self) -> dict:
        """Whether the per-species estimators are ensembles whose members' spread can be reported."""
        check_is_fitted(self, "estimators_")
        est = next(iter(self.estimators_.values()))
        name = self.estimator if isinstance(self.estimator, str) else type(self.estimator).__name__
        n = len(getattr(est, "estimators_", ()))
        if isinstance(est, DownsampledBagging):
            return {"available": True, "statistic": "sd", "members": n,
                    "over": f"the {n} down-sampled bags of each species' {name} model"}
        if _is_forest(est):
            return {"available": True, "statistic": "sd", "members": n,
                    "over": f"the {n} bootstrap trees of each species' random forest"}
        return {"available": False,
                "reason": f"{name}: one model per species, not an ensemble, so there is no spread between members"}

    def predict_with_spread(self, X, species: Sequence[str] | None = None,
                            spread: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(n, k) probabilities of presence (abundances for task='abundance') of ``species`` (default all fitted
        species, in ``species_`` order) and, when ``spread`` and the estimators are ensembles (see
        :meth:`spread_info`), the standard deviation between their members; the values equal ``predict_proba``
        (``predict``) bit for bit."""
        names = list(self.species_) if species is None else [self.species_[self._species_index(s)] for s in species]
        Xk = self._features(X)
        spread = spread and self.spread_info()["available"]
        values, sds = [], []
        for s in names:
            v, sd = _value_and_spread(self.estimators_[s], Xk, self.task, spread)
            values.append(v)
            sds.append(sd)
        return np.column_stack(values), (np.column_stack(sds) if spread else None)


def _is_forest(est) -> bool:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    return isinstance(est, (RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier, ExtraTreesRegressor))


def _value_and_spread(est, X: np.ndarray, task: str, spread: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """One species' prediction as ``predict_proba``/``predict`` give it, and the sd between its ensemble's members."""
    if task == "presence" and spread and isinstance(est, DownsampledBagging):
        proba, sd = est.predict_proba_and_spread(X)
        return proba[:, 1], sd
    value = _proba_of_presence(est, X) if task == "presence" else np.asarray(est.predict(X), dtype=float)
    if not spread:
        return value, None
    if not _is_forest(est):
        raise EcoalignInputError(f"{type(est).__name__} has no members to take a spread over", where="spread",
                                 expected="a down-sampled bagging model or a random forest")
    idx = list(est.classes_).index(1) if task == "presence" else None
    m, sq = np.zeros(len(X)), np.zeros(len(X))
    for tree in est.estimators_:  # each tree's own prediction, as the forest averages them
        q = tree.predict_proba(X)[:, idx] if task == "presence" else tree.predict(X)
        m += q
        sq += q * q
    m /= len(est.estimators_)
    return value, np.sqrt(np.maximum(sq / len(est.estimators_) - m * m, 0.0))
