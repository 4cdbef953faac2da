"""``fit``: cross-validate and fit a species model from a spec and its sites -> a model bundle on disk.

The Python face of ``ecoalign fit``, with the same arguments: ``fit("plant_presence", manifest=...,
embeddings=..., out="bundle")`` writes the same bundle as the command and returns it as a :class:`Bundle`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ecoalign.sdm.fitting import fit_and_save, load_bundle, read_bundle_meta
from ecoalign.sdm.sites import read_sites
from ecoalign.sdm.spec import ModelSpec, as_spec


@dataclass
class Bundle:
    """A fitted species model bundle (``ecoalign fit --out``): its folder, the fitted scikit-learn pipeline
    (``predict_proba`` on the bundle's ``features``) and ``bundle.json`` as a dict."""

    path: Path
    model: Any
    meta: dict = field(repr=False)

    @classmethod
    def load(cls, path: str | Path, trusted=()) -> Bundle:
        """Open a bundle without running code from it: its files are checked against the hashes in
        ``bundle.json`` and its estimators built only from ecoalign's trusted types (``trusted``: type names to
        accept beyond them, for a bundle whose author you trust). See ``ecoalign.sdm.bundle_io``."""
        model, meta = load_bundle(path, trusted=trusted)
        return cls(Path(path), model, meta)

    @property
    def sha256(self) -> str:
        """The bundle's content hash (``bundle.json``'s ``content_sha256``; an older bundle: its pickle's)."""
        from ecoalign.sdm.bundle_io import bundle_hash

        return bundle_hash(self.path, self.meta)

    @property
    def species(self) -> list[str]:
        return list(self.meta["species"])

    @property
    def features(self) -> list[str]:
        return list(self.meta["features"])

    @property
    def summary(self) -> dict[str, list[float]]:
        """Cross-validated micro/macro metrics: ``{"macro_auc": [value, ci_low, ci_high], ...}``."""
        return dict(self.meta["summary"])

    @property
    def cv_metrics(self) -> pd.DataFrame:
        """Cross-validated metrics per species (and micro/macro), with bootstrap intervals."""
        return pd.read_csv(self.path / "cv_metrics.csv")

    def describe(self) -> str:
        """A few lines: targets modelled and skipped, CV scheme, the summary metrics with intervals."""
        meta = self.meta
        lines = [f"[ecoalign] bundle {self.path}: {len(meta['species'])} targets modelled, "
                 f"{len(meta['skipped_species'])} skipped; {meta['cv']['scheme']} CV"]
        for k, (v, lo, hi) in meta["summary"].items():
            lines.append(f"  {k:<22} {v:.3f}  [{lo:.3f}, {hi:.3f}]")
        return "\n".join(lines)


def fit(spec: ModelSpec | str | Path, *, manifest=None, embeddings=None, points=None, covariates=None,
        background=None, id_column: str = "plot_id", crs=None, out: str | Path, seed: int = 0, n_jobs: int = -1,
        overwrite: bool = False) -> Bundle:
    """Cross-validate the spec's model on its sites, refit on all of them and save the bundle in ``out``.

    ``spec``: a :class:`ModelSpec`, a ``species_models/`` name or a YAML path. The sites come from the same
    inputs as :func:`ecoalign.sdm.sites.read_sites` (paths or tables in memory). ``n_jobs``: threads for the
    whole fit (-1: the cores available). An existing bundle in ``out`` is kept unless ``overwrite``.
    """
    spec = as_spec(spec)
    sites = read_sites(spec, manifest=manifest, embeddings=embeddings, points=points, covariates=covariates,
                       background=background, id_column=id_column, crs=crs)
    path, model = fit_and_save(spec, sites, out, seed=seed, n_jobs=n_jobs, overwrite=overwrite)
    return Bundle(Path(path), model, read_bundle_meta(path))

