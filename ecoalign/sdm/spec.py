"""Downstream model specs: one declarative YAML per ecological task (target, features, estimator, CV, metrics)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.paths import resolve_species_model

TASKS = {"presence_absence", "presence_only", "abundance"}
CV_SCHEMES = ("spatial_block", "random", "none")
BACKGROUNDS = ("target_group", "random")  # presence-only: other species' records as background too, or not
# target_group: the share of each species' background made of the other species' records (the landscape sample is
# thinned to fit; see sdm.sites.presence_background_points)
DEFAULT_TARGET_GROUP_SHARE = 0.5
PRESENCE_METRICS = {"auc", "tss", "f1", "sensitivity", "specificity", "boyce"}
ABUNDANCE_METRICS = {"mae", "rmse", "spearman"}


@dataclass
class ModelSpec:
    name: str
    task: str
    target: dict[str, Any]
    features: dict[str, Any]
    estimator: dict[str, Any]
    cv: dict[str, Any]
    metrics: list[str]
    bootstrap: int = 200
    source: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def estimator_task(self) -> str:
        return "abundance" if self.task == "abundance" else "presence"


def load_spec(name_or_path: str | Path) -> ModelSpec:
    """A spec by path, or by name in the spec folders (shipped ``species_models/`` and the user's)."""
    path = resolve_species_model(name_or_path)
    return spec_from_dict(yaml.safe_load(path.read_text()) or {}, path)


def as_spec(spec: ModelSpec | str | Path) -> ModelSpec:
    """A spec as given, or loaded by name or path (see :func:`load_spec`)."""
    return spec if isinstance(spec, ModelSpec) else load_spec(spec)


def spec_from_dict(raw: dict[str, Any], path: Path | str = "<spec>") -> ModelSpec:
    """Validate a spec given as a mapping (a bundle stores its spec this way)."""
    path = Path(path)
    task = raw.get("task")
    if task not in TASKS:
        raise EcoalignInputError(f"task is {task!r}", path=path, where="task", expected=f"one of {sorted(TASKS)}")
    metrics = list(raw.get("metrics") or [])
    allowed = ABUNDANCE_METRICS if task == "abundance" else PRESENCE_METRICS
    unknown = [m for m in metrics if m not in allowed]
    if unknown or not metrics:
        raise EcoalignInputError(f"metrics {unknown or metrics}", path=path, where="metrics",
                                 expected=f"a non-empty list from {sorted(allowed)} for a {task} task")
    target = dict(raw.get("target") or {})
    if "source" not in target and task != "presence_only":  # presence-only records may come with --background
        raise EcoalignInputError("target.source is missing", path=path, where="target",
                                 expected="'releves', 'extras.<name>' of the manifest, or a table path")
    if target.get("background", "target_group") not in BACKGROUNDS:
        raise EcoalignInputError(f"target.background is {target['background']!r}", path=path, where="target.background",
                                 expected=" or ".join(map(repr, BACKGROUNDS)))
    share = target.get("target_group_share", DEFAULT_TARGET_GROUP_SHARE)
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1):
        raise EcoalignInputError(f"target.target_group_share is {share!r}", path=path,
                                 where="target.target_group_share",
                                 expected="a number between 0 and 1 (exclusive), or null to keep every background point")
    features = {"embeddings": True, "covariates": [], "rasters": [], "categorical": [], **(raw.get("features") or {})}
    cov = features["covariates"]
    if not (cov == "all" or isinstance(cov, list)):
        raise EcoalignInputError(f"features.covariates is {cov!r}", path=path, where="features.covariates",
                                 expected="a list of column names, or 'all' (every column but ids, coordinates "
                                          "and targets)")
    cats = features["categorical"]
    if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
        raise EcoalignInputError(f"features.categorical is {cats!r}", path=path, where="features.categorical",
                                 expected="a list of covariate column names")
    if isinstance(cov, list) and [c for c in cats if c not in cov]:
        raise EcoalignInputError(f"categorical column(s) {[c for c in cats if c not in cov]} are not covariates",
                                 path=path, where="features.categorical",
                                 expected=f"names among features.covariates {cov}")
    if not features["embeddings"] and not cov and not features["rasters"]:
        raise EcoalignInputError("the spec selects no features", path=path, where="features",
                                 expected="embeddings: true and/or covariates: [...] and/or rasters: [...]")
    # block_size_m None: a tenth of the extent of the sites (spatial_cv.default_block_size), whatever their units
    cv = {"scheme": "spatial_block", "block_size_m": None, "buffer_m": 0.0, "folds": 5, "repeats": 1,
          **(raw.get("cv") or {})}
    block = cv["block_size_m"]
    if block is not None and (isinstance(block, bool) or not isinstance(block, (int, float)) or not block > 0):
        raise EcoalignInputError(f"cv.block_size_m is {block!r}", path=path, where="cv.block_size_m",
                                 expected="a positive block side in the sites' coordinate units, or leave it out "
                                          "for a tenth of the extent")
    if cv["scheme"] not in CV_SCHEMES:
        raise EcoalignInputError(f"cv.scheme is {cv['scheme']!r}", path=path, where="cv.scheme",
                                 expected=" or ".join(map(repr, CV_SCHEMES)) + " ('none' when you evaluate on "
                                          "independent data; thresholds then come from the model's own "
                                          "out-of-fold predictions if it has them)")
    estimator = {"name": "lightgbm", "params": {}, **(raw.get("estimator") or {})}
    _check_estimator(estimator, task, path)
    bootstrap = raw.get("bootstrap", 200)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise EcoalignInputError(f"bootstrap is {bootstrap!r}", path=path, where="bootstrap",
                                 expected="a number of resamples >= 0 (0: no intervals)")
    return ModelSpec(name=str(raw.get("name", path.stem)), task=task, target=target, features=features,
                     estimator=estimator, cv=cv, metrics=metrics, bootstrap=bootstrap, source=path, raw=raw)


def _check_estimator(estimator: dict, task: str, path: Path) -> None:
    """Unknown estimator names fail when the spec is read, not after the sites are built."""
    from ecoalign.sdm.estimators import (
        ESTIMATORS,
        MULTI_SPECIES_ESTIMATORS,
        PRESENCE_ONLY_ESTIMATORS,
    )

    name = estimator.get("name")
    known = ESTIMATORS + MULTI_SPECIES_ESTIMATORS
    if name not in known:
        raise EcoalignInputError(f"unknown estimator {name!r}", path=path, where="estimator.name",
                                 expected=" or ".join(map(repr, known)))
    if task == "abundance" and (name in PRESENCE_ONLY_ESTIMATORS or name in MULTI_SPECIES_ESTIMATORS):
        raise EcoalignInputError(f"estimator {name!r} models presences, not abundances", path=path,
                                 where="estimator.name", expected="'lightgbm', 'random_forest' or 'ridge'")
    if not isinstance(estimator.get("params") or {}, dict):
        raise EcoalignInputError(f"estimator.params is {estimator['params']!r}", path=path, where="estimator.params",
                                 expected="a mapping of parameter names to values")
    if estimator.get("weighting", "balanced") not in ("balanced", None, "none"):
        raise EcoalignInputError(f"estimator.weighting is {estimator['weighting']!r}", path=path,
                                 where="estimator.weighting", expected="'balanced' or 'none'")
