"""``evaluate``: metrics of a fitted bundle on independent test sites (the Python face of ``ecoalign evaluate``).

The test table is wide: an id column and one 0/1 (or abundance) column per species. Its columns named like
the bundle's species are evaluated; other 0/1 (abundance bundles: numeric) columns look like species the
model does not know and are reported, never scored.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ecoalign.core.delimited import read_delimited
from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import atomic_path
from ecoalign.sdm.fit import Bundle
from ecoalign.sdm.fitting import evaluate_bundle
from ecoalign.sdm.sites import read_sites, wide_targets
from ecoalign.sdm.spec import ModelSpec, spec_from_dict

log = logging.getLogger(__name__)

IN_MEMORY = "<test table in memory>"  # what messages name for a DataFrame given instead of a file


def evaluate(bundle: Bundle | str | Path, *, targets=None, manifest=None, embeddings=None, points=None,
             covariates=None, background=None, id_column: str = "plot_id", crs=None, out: str | Path | None = None,
             seed: int = 0, trusted=()) -> pd.DataFrame:
    """Metrics (per species, micro and macro, with bootstrap intervals) of ``bundle`` on independent sites.

    ``targets``: the wide test table (a CSV/GeoPackage/GeoParquet path or a DataFrame; default: ``points``
    itself). The sites and their features come from the same inputs as :func:`ecoalign.sdm.sites.read_sites`;
    with ``background``, ``points`` are presence-only records whose species are the test targets. ``out``: a
    CSV of the table. The test columns that look like species unknown to the model are listed in
    ``table.attrs["not_evaluated"]``. ``trusted``: type names a bundle's estimator file may build beyond ecoalign's
    trusted types (``ecoalign.sdm.bundle_io``); the bundle's hash is logged.
    """
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle, trusted=trusted)
    log.info("evaluating bundle %s (sha256 %s)", bundle.path, bundle.sha256)
    meta = bundle.meta
    unknown: list[str] = []
    if background is not None:  # presence records + background points: the records' species are the targets
        spec, target_table = _test_spec(meta), None
    else:
        source = targets if targets is not None else points
        if source is None:
            raise EcoalignInputError("no test targets", expected="--targets TABLE (targets=), or a --points table "
                                                                 "(points=) with one column per species")
        table, where = _read_table(source)
        if id_column not in table.columns:
            raise EcoalignInputError(f"site id column '{id_column}' not found in the test table", path=where,
                                     expected=f"--id-column (id_column=) naming one of {list(table.columns)[:15]}")
        known, unknown = species_columns(table, meta, id_column)
        if not known:
            raise EcoalignInputError(f"none of the test table's columns is a species of the model "
                                     f"(columns: {[c for c in table.columns if c != id_column][:10]})", path=where,
                                     expected=f"columns named like the modelled species, e.g. {meta['species'][:5]}")
        if unknown:
            log.warning("%d test column(s) look like species the model does not know; not evaluated: %s",
                        len(unknown), unknown[:8])
        spec = _test_spec(meta, where, id_column, known)
        target_table = wide_targets(table, spec.task, id_column, known, where)
    sites = read_sites(spec, manifest=manifest, embeddings=embeddings, points=points, covariates=covariates,
                       background=background, id_column=id_column, crs=crs, targets=target_table)
    result = evaluate_bundle(bundle, sites, seed=seed)
    if out is not None:
        with atomic_path(out) as tmp:
            result.to_csv(tmp, index=False)
    result.attrs["not_evaluated"] = unknown
    return result


def species_columns(table: pd.DataFrame, meta: dict, id_column: str) -> tuple[list[str], list[str]]:
    """(columns that are species of the bundle, other columns that look like species: 0/1, or any number for
    an abundance bundle; not the id, the model's features or the species it skipped when fitting)."""
    known = [c for c in table.columns if c in meta["species"]]
    others = table.drop(columns=[c for c in table.columns if c in meta["species"] or c in meta["features"]])
    numeric = others.select_dtypes("number")
    unknown = [c for c in numeric.columns if meta["task"] == "abundance" or numeric[c].dropna().isin([0, 1]).all()]
    return known, [c for c in unknown if c != id_column and c not in meta["skipped_species"]]


def _read_table(source) -> tuple[pd.DataFrame, object]:
    """The test table and what messages call it: a CSV (any separator), a GeoPackage/GeoParquet, or a frame."""
    if isinstance(source, pd.DataFrame):
        return pd.DataFrame(source.drop(columns="geometry", errors="ignore")), IN_MEMORY
    path = Path(source)
    if not path.exists():
        raise EcoalignInputError("test table not found", path=path)
    if path.suffix.lower() in (".csv", ".txt", ".tsv"):
        return read_delimited(path), path
    import geopandas as gpd

    try:
        gdf = gpd.read_parquet(path) if path.suffix.lower() in (".parquet", ".geoparquet", ".pq") \
            else gpd.read_file(path)
    except Exception as exc:  # pyogrio / pyarrow raise several types for unreadable files
        raise EcoalignInputError(f"cannot read the test table: {exc}", path=path) from exc
    return pd.DataFrame(gdf.drop(columns="geometry", errors="ignore")), path


def _test_spec(meta: dict, where=None, id_column: str | None = None, known: list[str] | None = None) -> ModelSpec:
    """The bundle's spec for reading test sites: the features it was fitted on (``covariates: all`` resolved to
    the fitted columns, not a new guess) and, given a test table, its presence/absence (or abundance) columns."""
    raw = dict(meta["spec"])
    if known is not None:
        task = "abundance" if raw["task"] == "abundance" else "presence_absence"
        raw.update(task=task, target={"source": str(where), "id_column": id_column, "columns": list(known)})
    features = dict(raw.get("features") or {})
    if features.get("covariates") == "all":
        from ecoalign.aerial.embed import EMBED_PREFIX

        rasters = {r.get("name", Path(r["path"]).stem) for r in features.get("rasters") or []}
        features["covariates"] = [c for c in meta["features"] if not c.startswith(EMBED_PREFIX)
                                and c not in rasters]
    raw["features"] = features
    return spec_from_dict(raw, str(where) if where is not None else "<bundle spec>")
