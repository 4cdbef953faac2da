"""The default presence-only model: spatial-fold committees of several SDMs, members chosen by spatial CV.

Each member (e.g. the down-sampled forest and DeepMaxent) is fitted once per spatial-block fold on the other
folds. That one pass gives three things at the cost of a single cross-validation:

- honest out-of-fold predictions for every site (``oof_``), from which the thresholds are chosen and on
  which members are compared (``member_cv_auc_``); with a ``selection_margin``, a member whose mean
  out-of-fold AUC is more than that below the best is dropped (``selected_``), per task, on the training data
  only. By default every member stays: on held-out spatial blocks of the disdat training records (no test
  site) a margin of 0.02 fired in 3 of 16 task x fold fits, each time dropping a member the held-out blocks
  would have kept (mean AUC -0.0028, s.e. 0.0009; a member 0.12 below the best on the out-of-fold scores
  still improved the held-out mean), because a member's mean out-of-fold AUC over a few dozen species
  is noisy, and the mean on the suitability scale gains from a weaker member that errs differently;
- the final prediction, the mean over the committee of every selected member (a bagging ensemble);
- its spread between committee members (``predict_spread``), an honest uncertainty for maps.

Fold models never see a third of the records, which costs most where a species has few. The members in
``refit`` (default the down-sampled forest, whose trees are split between four models so that the cost stays
that of three) are fitted once more on all rows, one more committee member each. Chosen on held-out spatial
blocks of the disdat training records (no test site): AUC +0.0011 (standard error 0.0010) at the same CPU;
refitting DeepMaxent as well gave +0.0017 (0.0009) for a fifth more CPU.

Members speak different scales (cloglog, balanced-sample probability), so each model's score is put on
one scale first: the share of the reference background (the landscape sample) it scores lower, read from
1,001 stored quantiles. An output of 0.9 means "more suitable than 90 % of the landscape"; presence-only data
identify no absolute probability of presence, so this relative suitability is what can be said honestly,
and the stored thresholds live on the same scale.
"""
from __future__ import annotations

import logging
import warnings
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ecoalign.core.errors import EcoalignInputError
from ecoalign.sdm.species_model import (
    CONSTANT_COLUMNS_NOTE,
    SKIPPED_SPECIES_NOTE,
    SpeciesModelMixin,
    as_features,
    as_targets,
    notes_silenced,
    resolve_n_jobs,
)

log = logging.getLogger(__name__)

MEMBERS = ("rf_down", "deep_maxent", "maxent", "lightgbm_down", "lightgbm")
# per model: 3 fold models and the refit on all rows hold 300 down-sampled trees per species
MEMBER_DEFAULTS = {"rf_down": {"n_estimators": 75}}
REFIT = ("rf_down",)  # the members refitted on all rows unless ``refit`` says otherwise
_LEVELS = np.linspace(0.0, 1.0, 1001)
# numpy's words for a nanmean / nanstd over nothing but NaN (the only RuntimeWarnings the ensemble silences)
_EMPTY_MEAN = "Mean of empty slice"
_EMPTY_STD = "Degrees of freedom <= 0 for slice"


def _make_member(name: str, params: dict, n_jobs: int):
    if name == "deep_maxent":
        from ecoalign.sdm.deep_maxent import DeepMaxent

        return DeepMaxent(min_presences=1, n_jobs=n_jobs, **params)
    from ecoalign.sdm.estimators import MultiSpeciesModel

    return MultiSpeciesModel(estimator=name, params=params or None, task="presence", min_presences=1,
                             n_jobs=n_jobs, missing_targets="ignore")


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from ecoalign.sdm.metrics import _auc as fast_auc

    return fast_auc(y.astype(bool), s)


class SpatialEnsemble(SpeciesModelMixin, BaseEstimator):
    """Multi-species presence-only ensemble (see the module docstring); scikit-learn style.

    Parameters
    ----------
    members : member model names from ``MEMBERS`` (default the down-sampled forest and DeepMaxent).
    member_params : ``{member: {param: value}}`` for the members (e.g. ``{"rf_down": {"n_estimators": 300}}``).
    folds : spatial-block folds (each member is fitted this many times).
    block_size : block side in the coordinates' units (default a tenth of the larger side of the extent).
    selection_margin : members whose mean out-of-fold AUC is further than this below the best are dropped
        (default None: every member stays; the module docstring says why).
    reference_size : background rows whose scores define the common scale (a seeded sample).
    refit : members also fitted once on all rows after the folds, one more committee member each (default
        ``REFIT``, those of them that are members; ``[]`` for none). Out-of-fold scores, thresholds and member
        selection do not depend on it.
    min_presences, n_jobs, random_state : as for the other species models.
    spatial : False for random folds (a spec's ``cv: {scheme: random}``), even when coordinates are given.

    ``fit(X, Y, coords=(n, 2))``: ``Y`` as for :class:`~ecoalign.sdm.deep_maxent.DeepMaxent`. Without
    ``coords`` the folds are random (a warning says so): spatial folds need the sites' coordinates.
    """

    def __init__(self, members: Sequence[str] = ("rf_down", "deep_maxent"), member_params: dict | None = None,
                 folds: int = 3, block_size: float | None = None, selection_margin: float | None = None,
                 reference_size: int = 2000, refit: Sequence[str] | None = None, min_presences: int = 2, n_jobs=-1,
                 random_state: int = 0, spatial: bool = True):
        self.spatial = spatial
        self.refit = refit
        self.members = members
        self.member_params = member_params
        self.folds = folds
        self.block_size = block_size
        self.selection_margin = selection_margin
        self.reference_size = reference_size
        self.min_presences = min_presences
        self.n_jobs = n_jobs
        self.random_state = random_state

    def __setstate__(self, state):
        # committees saved before ``refit`` existed refitted nothing: keep get_params / clone working on them
        state = dict(state)
        state.setdefault("refit", [])
        super().__setstate__(state)

    # ------------------------------------------------------------------ fit
    def _check(self) -> tuple[list[str], list[str]]:
        """The members and the members to refit on all rows, validated."""
        members = [self.members] if isinstance(self.members, str) else list(self.members)
        unknown = [m for m in members if m not in MEMBERS]
        if unknown or not members:
            raise EcoalignInputError(f"ensemble members {unknown or members}", where="members",
                                     expected=f"a non-empty list from {list(MEMBERS)}")
        extra = sorted(set(self.member_params or {}) - set(members))
        if extra:
            raise EcoalignInputError(f"member_params for {extra}, which are not members", where="member_params",
                                     expected=f"keys among the members {members}")
        if isinstance(self.folds, bool) or not isinstance(self.folds, (int, np.integer)) or self.folds < 2:
            raise EcoalignInputError(f"folds={self.folds!r}", where="folds", expected="an integer >= 2")
        margin = self.selection_margin
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float, np.number))
                                   or not margin >= 0):
            raise EcoalignInputError(f"selection_margin={margin!r}", where="selection_margin",
                                     expected="None (keep every member) or an AUC difference >= 0")
        if self.refit is None:
            return members, [m for m in REFIT if m in members]
        refit = [self.refit] if isinstance(self.refit, str) else list(self.refit)
        if [m for m in refit if m not in members]:
            raise EcoalignInputError(f"refit {refit}", where="refit", expected=f"members among {members}")
        return members, refit

    def _member(self, name: str, threads: int):
        """An unfitted member with its defaults and the user's ``member_params``."""
        params = {**MEMBER_DEFAULTS.get(name, {}), **(self.member_params or {}).get(name, {})}
        return _make_member(name, params, threads)

    def _splits(self, n: int, coords) -> list[tuple[np.ndarray, np.ndarray]]:
        if coords is None or not self.spatial:
            from sklearn.model_selection import KFold

            if self.spatial:
                warnings.warn("SpatialEnsemble got no coords: its folds are random, so out-of-fold skill and "
                              "thresholds ignore spatial autocorrelation; pass coords=(n, 2)", UserWarning,
                              stacklevel=3)
            return list(KFold(self.folds, shuffle=True, random_state=self.random_state).split(np.zeros(n)))
        from ecoalign.sdm.spatial_cv import SpatialBlockKFold, default_block_size

        xy = np.asarray(coords, dtype=float)
        if xy.shape != (n, 2) or not np.isfinite(xy).all():
            raise EcoalignInputError(f"coords have shape {xy.shape} (or NaN values)", where="coords",
                                     expected=f"({n}, 2) finite x, y, one per row of X")
        if not np.ptp(xy, axis=0).max() > 0:
            raise EcoalignInputError("all sites share one location", where="coords", expected="sites spread in space")
        block = self.block_size or default_block_size(xy)
        log.info("ensemble folds: spatial blocks of %.6g", block)
        return list(SpatialBlockKFold(self.folds, block_size=block, random_state=self.random_state).split(coords=xy))

    def fit(self, X, Y, coords=None, species: Sequence[str] | None = None):
        members, refit = self._check()
        Xa, names = as_features(X)
        Ya, species_names, one_d = as_targets(Y, Xa.shape[0], species, allow_nan=True)
        self._set_feature_names(Xa, names)
        skipped = self._skip_reasons(Ya, species_names)
        keep = [j for j, s in enumerate(species_names) if s not in skipped]
        self._finish_species(species_names, skipped, keep, one_d)
        Yk = Ya[:, keep]
        used = np.isfinite(Yk)
        pres = used & (np.nan_to_num(Yk) > 0)
        S = len(keep)

        # reference rows: the landscape, sites that are no species' presence (as sdm.fitting's background rows;
        # they include background points a species model does not use, e.g. thinned for the target group)
        rng = np.random.default_rng(self.random_state)
        pure = np.flatnonzero(~pres.any(axis=1))
        ref = pure if len(pure) >= 50 else np.arange(len(Xa))
        self.reference_rows_ = np.sort(rng.choice(ref, min(len(ref), int(self.reference_size)), replace=False))

        threads = resolve_n_jobs(self.n_jobs)
        splits = self._splits(len(Xa), coords)
        self.components_: list[tuple[str, object, np.ndarray]] = []  # (member, fitted fold model, quantiles)
        ref_scores: list[np.ndarray] = []  # each component's scores at the reference rows
        oof = {m: np.full((len(Xa), S), np.nan) for m in members}
        for k, (train, test) in enumerate(splits):
            for m in members:
                with notes_silenced(SKIPPED_SPECIES_NOTE, CONSTANT_COLUMNS_NOTE):  # about this fold's rows only
                    try:
                        model = self._member(m, threads).fit(Xa[train], Yk[train], species=self.species_)
                    except EcoalignInputError as exc:  # e.g. no species has presences in this fold
                        log.warning("fold %d, member %s not fitted: %s", k + 1, m, exc)
                        continue
                quant, at_reference = self._quantiles(model, Xa[self.reference_rows_])
                self.components_.append((m, model, quant))
                ref_scores.append(at_reference)
                scored = test[used[test].any(axis=1)]  # rows no species uses (thinned background) need no score
                oof[m][scored] = self._component_scores(model, quant, Xa[scored])
            log.info("ensemble fold %d/%d fitted (%s)", k + 1, len(splits), ", ".join(members))
        if not self.components_:
            raise EcoalignInputError("no ensemble member could be fitted in any fold", where="Y",
                                     expected="more presences per fold (fewer folds or larger data)")

        # members compared on out-of-fold AUC (presences vs background/absences), mean over species
        self.member_cv_auc_ = {}
        for m in members:
            aucs = []
            for j in range(S):
                ok = used[:, j] & np.isfinite(oof[m][:, j])
                if pres[ok, j].any() and (~pres[ok, j]).any():
                    aucs.append(_auc(pres[ok, j], oof[m][ok, j]))
            self.member_cv_auc_[m] = float(np.mean(aucs)) if aucs else float("nan")
        scored = {m: a for m, a in self.member_cv_auc_.items() if np.isfinite(a)}
        best = max(scored.values()) if scored else np.nan
        margin = np.inf if self.selection_margin is None else float(self.selection_margin)
        self.selected_ = [m for m in members if m in scored and scored[m] >= best - margin] or members
        self.refit_ = [m for m in self.selected_ if m in refit]
        for m in self.refit_:  # one more committee member on all rows
            with notes_silenced(SKIPPED_SPECIES_NOTE, CONSTANT_COLUMNS_NOTE):
                model = self._member(m, threads).fit(Xa, Yk, species=self.species_)
            quant, at_reference = self._quantiles(model, Xa[self.reference_rows_])
            self.components_.append((m, model, quant))
            ref_scores.append(at_reference)
        stacked = np.stack([oof[m] for m in self.selected_])
        with warnings.catch_warnings():  # all-NaN rows: site not used for that species
            warnings.filterwarnings("ignore", message=_EMPTY_MEAN, category=RuntimeWarning)
            self.oof_ = np.nanmean(stacked, axis=0)
        self.oof_[~used] = np.nan
        # the final model's scores at the reference (landscape) rows, free from the quantile pass: the bundle keeps
        # them for Boyce instead of predicting the committee again
        self.reference_scores_ = self._mean(np.stack([r for (m, _, _), r in zip(self.components_, ref_scores)
                                                      if m in self.selected_]))
        log.info("ensemble members (out-of-fold AUC): %s; selected %s",
                 {m: round(a, 4) for m, a in self.member_cv_auc_.items()}, self.selected_)
        return self

    def _quantiles(self, model, X_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1001, S) quantiles of the fold model's scores on the reference rows (NaN for species it lacks), and
        its component scores there (``_component_scores`` from the same single prediction)."""
        q = np.full((len(_LEVELS), len(self.species_)), np.nan)
        proba = model.predict_proba(X_ref)
        for i, s in enumerate(model.species_):
            q[:, self.species_.index(s)] = np.quantile(proba[:, i], _LEVELS)
        return q, self._component_scores(model, q, X_ref, proba)

    def _component_scores(self, model, quant: np.ndarray, X: np.ndarray, proba: np.ndarray | None = None
                          ) -> np.ndarray:
        """(n, S) share of the reference scored lower (ties count half), NaN for species the model lacks."""
        out = np.full((len(X), len(self.species_)), np.nan)
        proba = model.predict_proba(X) if proba is None else proba
        for i, s in enumerate(model.species_):
            j = self.species_.index(s)
            q = quant[:, j]
            lo = np.searchsorted(q, proba[:, i], side="left")
            hi = np.searchsorted(q, proba[:, i], side="right")
            out[:, j] = np.clip((lo + hi) / 2.0 / (len(q) - 1), 0.0, 1.0)
        return out

    def _components(self, X) -> np.ndarray:
        check_is_fitted(self, "components_")
        Xa = self._features(X)
        return np.stack([self._component_scores(model, quant, Xa)
                         for m, model, quant in self.components_ if m in self.selected_])

    def committee_thresholds(self, thresholds: dict[str, float]) -> dict[str, float]:
        """Thresholds chosen on ``oof_`` carried onto the scale of the fitted committee: the value that leaves the
        same share of the landscape (the reference rows) above it.

        An out-of-fold score comes from one fold model per member; ``predict_proba`` averages every fold model and
        refit, whose mean spreads less, so an out-of-fold threshold applied to it as is would call a different share
        of the landscape suitable. On held-out spatial blocks of the disdat training records (no test site), TSS
        at the carried thresholds was 0.284 against 0.276 as is (+0.007, s.e. 0.003, 454 species x folds)."""
        check_is_fitted(self, "reference_scores_")
        out = {}
        for s, t in thresholds.items():
            j = self.species_.index(s) if s in self.species_ else None
            at_ref = self.oof_[self.reference_rows_, j] if j is not None else np.array([])
            at_ref = at_ref[np.isfinite(at_ref)]
            if not np.isfinite(t) or not len(at_ref):
                out[s] = t
                continue
            below = float(np.mean(at_ref < t))  # share of the landscape the out-of-fold threshold leaves out
            out[s] = float(np.quantile(self.reference_scores_[:, j], below))
        return out

    # -------------------------------------------------------------- predict
    @staticmethod
    def _mean(components: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # species no selected fold model has: 0 below
            warnings.filterwarnings("ignore", message=_EMPTY_MEAN, category=RuntimeWarning)
            out = np.nanmean(components, axis=0)
        return np.nan_to_num(out, nan=0.0)

    @staticmethod
    def _sd(components: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # one or no fold model for a species: spread 0
            warnings.filterwarnings("ignore", message=_EMPTY_STD, category=RuntimeWarning)
            return np.nan_to_num(np.nanstd(components, axis=0), nan=0.0)

    def predict_proba(self, X) -> np.ndarray:
        """Relative suitability in [0, 1] (share of the landscape sample scored lower), (n, len(species_))."""
        return self._mean(self._components(X))

    def predict_spread(self, X) -> np.ndarray:
        """Standard deviation of the committee's scores, (n, len(species_)): the ensemble's uncertainty."""
        return self._sd(self._components(X))

    def predict_with_spread(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(``predict_proba``, ``predict_spread``) from one pass over the committee (each fold model predicts once)."""
        components = self._components(X)
        return self._mean(components), self._sd(components)

    def spread_info(self) -> dict:
        """What ``predict_spread`` is the spread of (``ecoalign.sdm.outputs.spread_info``)."""
        check_is_fitted(self, "components_")
        n = sum(1 for m, _, _ in self.components_ if m in self.selected_)
        refits = getattr(self, "refit_", [])  # committees fitted before refit existed have none
        also = f", and refits on all rows of {', '.join(refits)}" if refits else ""
        return {"available": True, "statistic": "sd", "members": int(n),
                "over": f"the spatial-fold committee ({n} models of {', '.join(self.selected_)}: fold models{also}), "
                        "on the suitability scale"}
