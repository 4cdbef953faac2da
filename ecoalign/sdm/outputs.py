"""What a fitted bundle says beyond its probabilities: the spread of its ensemble and its presence thresholds.

Spread: only models that are ensembles have one, the standard deviation (population, ddof 0) of their members'
predictions on the model's own output scale: the spatial-fold committee (``SpatialEnsemble``: every selected
member fitted on every fold), down-sampled bagging (``rf_down``, ``lightgbm_down``: one model per balanced bag)
and the random forest (one tree per bootstrap). A model exposes it through ``spread_info()`` and
``predict_with_spread(X)``; single models (logistic, ridge, LightGBM, MaxEnt, one DeepMaxent network) have
none, and ``spread_info`` says so instead of inventing one.

Thresholds: ``bundle.json`` stores, per rule of ``ecoalign.sdm.metrics.THRESHOLD_RULES`` (max_tss,
equal_sens_spec, p10_presence), the threshold of every species chosen on out-of-fold predictions;
``presence_thresholds`` picks them (or a number the user gives) for a presence map, and refuses, naming the
file, the option and what would do, when the bundle has none for a species.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError
from ecoalign.sdm.metrics import THRESHOLD_RULES

DEFAULT_RULE = "max_tss"  # the rule `fit` stores as the bundle's ``thresholds`` (and ``predict`` uses)
SHOWN_NAMES = 50  # species names listed in an error at most


def final_step(model):
    """The species model of a bundle's pipeline (or the model itself)."""
    from sklearn.pipeline import Pipeline

    return model[-1] if isinstance(model, Pipeline) else model


def _transform(model, X):
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline) and len(model.steps) > 1:
        return model[:-1].transform(X)
    return X


def spread_info(model) -> dict:
    """``{"available": True, "statistic": "sd", "members": n, "over": ...}`` for ensembles, else
    ``{"available": False, "reason": ...}``."""
    final = final_step(model)
    describe = getattr(final, "spread_info", None)
    if describe is None:
        return {"available": False, "reason": f"{type(final).__name__} is a single model, not an ensemble, so "
                                              "there is no spread between members"}
    return describe()


def predict_with_spread(model, task: str, X, species: Sequence[str] | None = None,
                        spread: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(n, k) predictions of ``species`` (default all, in the model's order): presence probability, or the value
    for abundance models, bit for bit what ``predict_proba``/``predict`` give; and, when ``spread`` and the model
    is an ensemble, the (n, k) standard deviation between its members (else None)."""
    final = final_step(model)
    spread = bool(spread) and spread_info(model)["available"]
    own = getattr(final, "predict_with_spread", None)
    if own is not None and "species" in _parameters(own):  # per-species models predict only the species asked
        return own(_transform(model, X), species=species, spread=spread)
    if spread:
        values, sd = own(_transform(model, X))
    elif task == "abundance":
        values, sd = np.asarray(model.predict(X), dtype=np.float64).reshape(len(X), -1), None
    else:
        values, sd = np.asarray(model.predict_proba(X), dtype=np.float64), None
    if species is not None:
        names = list(final.species_)
        cols = [names.index(s) for s in species]
        values = values[:, cols]
        sd = None if sd is None else sd[:, cols]
    return values, sd


def _parameters(fn) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def select_species(meta: dict, names: Sequence[str] | str | None, bundle) -> list[str]:
    """The bundle's species to map: all (``names`` None) or those named, in the order given (repeats dropped);
    an unknown name is an error that lists the bundle's species."""
    known = [str(s) for s in meta.get("species", [])]
    if names is None:
        return known
    names = [names] if isinstance(names, str) else [str(n) for n in names]
    names = list(dict.fromkeys(names))
    where, path = "--species", Path(bundle) / "bundle.json"
    shown = ", ".join(known[:SHOWN_NAMES]) + (f", ... ({len(known)} in all)" if len(known) > SHOWN_NAMES else "")
    if not names:
        raise EcoalignInputError("no species named", path=path, where=where, expected=f"names among {shown}")
    unknown = [n for n in names if n not in known]
    if unknown:
        skipped = meta.get("skipped_species") or {}
        listed = ", ".join(f"{n!r} (not fitted: {skipped[n]})" if n in skipped else repr(n) for n in unknown)
        raise EcoalignInputError(f"the bundle has no fitted species {listed}", path=path, where=where,
                                 expected=f"names among the bundle's {len(known)} species: {shown}")
    return names


def _number(rule) -> float | None:
    if isinstance(rule, bool):
        return None
    if isinstance(rule, (int, float, np.number)):
        return float(rule)
    try:
        return float(str(rule))
    except ValueError:
        return None


def presence_thresholds(meta: dict, species: Sequence[str], rule=None, bundle=".") -> dict:
    """``{"rule", "source", "thresholds": {species: t}}`` for a presence map of ``species``: the bundle's
    out-of-fold thresholds of ``rule`` (default ``max_tss``), or one number in [0, 1] for every species.
    Refused for abundance models and for a bundle without a finite stored threshold for every species."""
    path, where = Path(bundle) / "bundle.json", "--threshold-rule"
    choices = f"one of {list(THRESHOLD_RULES)} or a number in [0, 1]"
    if meta.get("task") == "abundance":
        raise EcoalignInputError("the model predicts abundances; a presence map thresholds a probability of presence",
                                 path=path, where=where, expected="a presence model's bundle, or no presence map "
                                                                  "(--no-presence)")
    number = _number(rule) if rule is not None else None
    if number is not None:
        if not 0.0 <= number <= 1.0:
            raise EcoalignInputError(f"threshold {rule!r} is outside [0, 1]", where=where, expected=choices)
        return {"rule": "fixed", "source": "given by the user", "thresholds": {s: number for s in species}}
    rule = DEFAULT_RULE if rule is None else str(rule)
    if rule not in THRESHOLD_RULES:
        raise EcoalignInputError(f"unknown threshold rule {rule!r}", where=where, expected=choices)
    stored = (meta.get("threshold_rules") or {}).get(rule)
    if stored is None and rule == DEFAULT_RULE:  # bundles that stored only the max-TSS thresholds
        stored = meta.get("thresholds")
    stored = stored or {}

    def finite(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    missing = [s for s in species if not finite(stored.get(s))]
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise EcoalignInputError(
            f"the bundle stores no {rule} threshold for species {missing[:10]}{more} (thresholds are chosen on "
            "out-of-fold predictions: a bundle fitted with `cv: none`, or a species with a class missing "
            "out of fold, has none)", path=path, where=where,
            expected="a bundle fitted with cross-validation, another rule, a number in [0, 1], or --no-presence")
    return {"rule": rule, "source": f"bundle.json threshold_rules[{rule!r}] (out-of-fold)",
            "thresholds": {s: float(stored[s]) for s in species}}
