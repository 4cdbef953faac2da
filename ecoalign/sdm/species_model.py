"""What every multi-species model shares: input checks, the fitted-species bookkeeping and the prediction API.

``MultiSpeciesModel`` (one estimator per species), ``DeepMaxent`` (one network for all) and ``SpatialEnsemble``
(committees of both) expose the same face to ``fit``/``evaluate``/``map``: ``species_``, ``skipped_species_``,
``predict_proba`` (n, S), ``predict`` at per-species ``thresholds_``, ``predict_proba_species``, ``score``.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from ecoalign.core.errors import EcoalignInputError


class TrainingRowsNote(UserWarning):
    """A species model's note about the rows it was fitted on: species skipped (too few presences or absences),
    constant feature columns dropped. Fitted on all sites it is news for the user; fitted on one
    cross-validation fold's training part it describes that part only (see :func:`notes_silenced`)."""


# the notes' messages as the models word them (``warnings`` filters match them from the start)
SKIPPED_SPECIES_NOTE = r"skipped \d+ of \d+ species: "
CONSTANT_COLUMNS_NOTE = r"dropping \d+ constant feature column\(s\): "


@contextmanager
def notes_silenced(*messages: str) -> Iterator[None]:
    """Silence the :class:`TrainingRowsNote` warnings whose message matches one of ``messages`` (e.g.
    :data:`SKIPPED_SPECIES_NOTE`) inside the block; every other warning still reaches the user."""
    with warnings.catch_warnings():
        for message in messages:
            warnings.filterwarnings("ignore", message=message, category=TrainingRowsNote)
        yield


def available_cores() -> int:
    """Cores this process may use (its CPU affinity, e.g. a container's or a batch job's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_n_jobs(n_jobs) -> int:
    """``None``/-1: all available cores; -k: all but k-1 (joblib's convention); k > 0: k, capped at the cores."""
    cores = available_cores()
    if n_jobs is None:
        return cores
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
        raise EcoalignInputError(f"n_jobs={n_jobs!r}", where="n_jobs",
                                 expected="a positive number of threads, or -1 for all available cores")
    return max(1, min(int(n_jobs), cores)) if n_jobs > 0 else max(1, cores + 1 + int(n_jobs))


def as_features(X, *, what: str = "X") -> tuple[np.ndarray, list[str] | None]:
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


def as_targets(Y, n_rows: int, species: Sequence[str] | None,
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


class SpeciesModelMixin:
    """Prediction API shared by the multi-species models (see the module docstring).

    A subclass's ``fit`` calls ``_set_feature_names`` and ``_finish_species`` and implements
    ``predict_proba(X)`` with ``self._features(X)``; ``task`` is ``"presence"`` or ``"abundance"``.
    """

    task = "presence"

    def _set_feature_names(self, Xa: np.ndarray, names: list[str] | None) -> None:
        self.n_features_in_ = Xa.shape[1]
        if names is not None:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def _finish_species(self, names: Sequence[str], skipped: dict[str, str], keep: Sequence[int],
                        one_d: bool) -> None:
        self.species_in_ = list(names)
        self.skipped_species_ = dict(skipped)
        if not keep:
            shown = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:10])
            more = f" (and {len(skipped) - 10} more)" if len(skipped) > 10 else ""
            raise EcoalignInputError(f"no species can be fitted: {shown}{more}", where="Y",
                                     expected="at least one species with enough presences and absences/background "
                                              "(or a lower min_presences)")
        if skipped:
            shown = ", ".join(f"{k} ({v})" for k, v in list(skipped.items())[:10])
            more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
            warnings.warn(f"skipped {len(skipped)} of {len(names)} species: {shown}{more}; see skipped_species_",
                          TrainingRowsNote, stacklevel=3)
        self.species_ = [names[j] for j in keep]
        self._y_1d = one_d
        self.thresholds_ = None

    def _features(self, X) -> np.ndarray:
        check_is_fitted(self, "species_")
        Xa, names = as_features(X)
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
        keep = getattr(self, "_keep", None)
        return Xa if keep is None else Xa[:, keep]

    def fittable_species(self, Y) -> tuple[list[str], dict[str, str]]:
        """Which species ``fit`` would model, and why the others are left out, without fitting anything."""
        Ya, names, _ = as_targets(Y, len(Y), None, allow_nan=True)
        skipped = self._skip_reasons(Ya, names)
        return [n for n in names if n not in skipped], skipped

    def _skip_reasons(self, Ya: np.ndarray, names: Sequence[str]) -> dict[str, str]:
        used = np.isfinite(Ya)
        skipped: dict[str, str] = {}
        minimum = int(getattr(self, "min_presences", 2))
        presence = self.task == "presence"
        for j, name in enumerate(names):
            n_pres = int((Ya[used[:, j], j] > 0).sum())
            n_abs = int(used[:, j].sum()) - n_pres
            if n_pres < minimum:
                skipped[name] = f"{n_pres} {'presences' if presence else 'non-zero values'} < min {minimum}"
            elif presence and n_abs < minimum:
                skipped[name] = f"{n_abs} absences < min {minimum}"
        return skipped

    def _species_index(self, name: str) -> int:
        check_is_fitted(self, "species_")
        if name in self.species_:
            return self.species_.index(name)
        if name in self.skipped_species_:
            raise EcoalignInputError(f"species {name!r} was not fitted: {self.skipped_species_[name]}",
                                     where="species", expected=f"one of the fitted species_ ({len(self.species_)})")
        raise EcoalignInputError(f"unknown species {name!r}", where="species",
                                 expected=f"one of the fitted species_: {self.species_[:10]}"
                                          + (" ..." if len(self.species_) > 10 else ""))

    def predict_proba_species(self, X, name: str) -> np.ndarray:
        """Probability (suitability) of one species, shape (n,)."""
        return self.predict_proba(X)[:, self._species_index(name)]

    def set_thresholds(self, thresholds: Mapping[str, float]):
        """Per-species presence thresholds for :meth:`predict` (species not given keep 0.5)."""
        check_is_fitted(self, "species_")
        if self.task != "presence":
            raise EcoalignInputError("thresholds only apply to presence models", where="thresholds",
                                     expected="task='presence'")
        out = {s: 0.5 for s in self.species_}
        for name, t in dict(thresholds).items():
            self._species_index(name)
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

    def _predict_values(self, X) -> np.ndarray:
        raise AttributeError("predict of abundances is not implemented by this model")

    def predict(self, X) -> np.ndarray:
        """Presence 0/1 (at 0.5 or ``thresholds_``) or abundances; (n, S) or (n,) when fitted on 1-D Y."""
        if self.task == "presence":
            proba = self.predict_proba(X)
            th = np.array([(self.thresholds_ or {}).get(s, 0.5) for s in self.species_])
            out = (proba >= th[None, :]).astype(int)
        else:
            out = self._predict_values(X)
        return out[:, 0] if self._y_1d and out.shape[1] == 1 else out

    def score(self, X, Y, species: Sequence[str] | None = None) -> float:
        """Macro ROC AUC over fitted species (presence; species with one class in Y are left out)
        or mean R^2 (abundance). Lets ``cross_val_score`` work with the default scoring."""
        from sklearn.metrics import r2_score, roc_auc_score

        check_is_fitted(self, "species_")
        if species is None and not (isinstance(Y, pd.DataFrame) or (isinstance(Y, pd.Series) and Y.name is not None)):
            species = self.species_in_  # unnamed Y: same columns, same order as at fit
        Ya, names, _ = as_targets(Y, len(X), species)
        pred = self.predict_proba(X) if self.task == "presence" else self._predict_values(X)
        scores = []
        for j, s in enumerate(self.species_):
            if s not in names:
                continue
            y = Ya[:, names.index(s)]
            if self.task == "presence":
                y = (y > 0).astype(int)
                if y.min() == y.max():
                    continue
                scores.append(roc_auc_score(y, pred[:, j]))
            else:
                scores.append(r2_score(y, pred[:, j]))
        if not scores:
            warnings.warn("no fitted species could be scored (none in Y, or only one class each)", UserWarning,
                          stacklevel=2)
            return float("nan")
        return float(np.mean(scores))
