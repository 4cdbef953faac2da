"""Downstream model specs: one declarative YAML per ecological task (target, features, estimator, CV, metrics)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import EcoalignInputError
from ..paths import REPO_ROOT

TASKS = {"presence_absence", "presence_only", "abundance"}
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


def species_models_dir() -> Path:
    return REPO_ROOT / "species_models"


def load_spec(name_or_path: str | Path) -> ModelSpec:
    """A spec by path, or by name in ``species_models/`` (``plant_presence``)."""
    path = Path(name_or_path)
    if not path.exists():
        path = species_models_dir() / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in species_models_dir().glob("*.yaml"))
        raise EcoalignInputError("model spec not found", path=name_or_path, expected=f"a YAML path or one of {known}")
    return spec_from_dict(yaml.safe_load(path.read_text()) or {}, path)


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
    if "source" not in target:
        raise EcoalignInputError("target.source is missing", path=path, where="target",
                                 expected="'releves', 'extras.<name>' of the manifest, or a table path")
    features = {"embeddings": True, "covariates": [], "rasters": [], **(raw.get("features") or {})}
    if not features["embeddings"] and not features["covariates"] and not features["rasters"]:
        raise EcoalignInputError("the spec selects no features", path=path, where="features",
                                 expected="embeddings: true and/or covariates: [...] and/or rasters: [...]")
    cv = {"scheme": "spatial_block", "block_size_m": 500.0, "buffer_m": 0.0, "folds": 5, "repeats": 1,
          **(raw.get("cv") or {})}
    if cv["scheme"] not in ("spatial_block", "random"):
        raise EcoalignInputError(f"cv.scheme is {cv['scheme']!r}", path=path, expected="'spatial_block' or 'random'")
    estimator = {"name": "lightgbm", "params": {}, **(raw.get("estimator") or {})}
    return ModelSpec(name=str(raw.get("name", path.stem)), task=task, target=target, features=features,
                     estimator=estimator, cv=cv, metrics=metrics, bootstrap=int(raw.get("bootstrap", 200)),
                     source=path, raw=raw)
