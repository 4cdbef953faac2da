"""Sites for a downstream model: where they are, their features (embeddings, covariates, raster values), their targets.

Every site that cannot be used (no target row, outside every environmental raster, no features) is dropped
and counted with a reason, never silently.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ecoalign.core.errors import EcoalignInputError
from ecoalign.sdm.categorical import level_names
from ecoalign.sdm.spec import DEFAULT_TARGET_GROUP_SHARE, ModelSpec

log = logging.getLogger(__name__)


@dataclass
class SiteTable:
    ids: np.ndarray
    xy: np.ndarray  # (n, 2) metres in a projected CRS
    crs: Any
    X: pd.DataFrame  # features
    Y: pd.DataFrame  # targets; NaN = site not used for that species (presence-only exclusion buffer)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    feature_source: dict[str, Any] = field(default_factory=dict)


def _centres(gdf) -> np.ndarray:
    c = gdf.geometry.centroid
    return np.column_stack([c.x.to_numpy(), c.y.to_numpy()])


def _projected(gdf):
    if gdf.crs is None:
        raise EcoalignInputError("the sites have no CRS", expected="a CRS on the points/embedding table")
    if gdf.crs.is_geographic:
        gdf = gdf.to_crs(gdf.estimate_utm_crs())  # block sizes and buffers are in metres
    return gdf


def sample_rasters(gdf, rasters: list[dict]) -> tuple[pd.DataFrame, np.ndarray]:
    """Values of each environmental raster (band 1, or `band:`) at the sites; NaN outside or on nodata."""
    import rasterio

    cols, valid = {}, np.ones(len(gdf), dtype=bool)
    for r in rasters:
        path = Path(r["path"])
        if not path.exists():
            raise EcoalignInputError("environmental raster not found", path=path)
        with rasterio.open(path) as src:
            if src.crs is None:
                raise EcoalignInputError("the environmental raster has no CRS", path=path)
            pts = gdf.to_crs(src.crs)
            coords = list(zip(pts.geometry.x, pts.geometry.y))
            band = int(r.get("band", 1))
            vals = np.array([v[0] for v in src.sample(coords, indexes=band, masked=True)], dtype=object)
            arr = np.array([np.nan if np.ma.is_masked(v) else float(v) for v in vals], dtype=np.float64)
            left, bottom, right, top = src.bounds
            xs, ys = np.array(coords).T if coords else (np.array([]), np.array([]))
            arr[(xs < left) | (xs > right) | (ys < bottom) | (ys > top)] = np.nan
        name = r.get("name", path.stem)
        cols[name] = arr
        valid &= ~np.isnan(arr)
    return pd.DataFrame(cols, index=gdf.index), valid


def _target_table(spec: ModelSpec, manifest, sites) -> pd.DataFrame:
    """Targets aligned on site ids (presence/absence or abundance), or built from records (presence-only)."""
    t = spec.target
    source = t["source"]
    if source == "releves":
        from ecoalign.data.releves import read_manifest_releves

        if manifest is None:
            raise EcoalignInputError("target.source 'releves' needs a manifest", expected="--manifest")
        rel = read_manifest_releves(manifest)
        table = pd.DataFrame(rel.cover, index=pd.Index(rel.plot_ids.astype(str)), columns=rel.species)
        return (table > 0).astype(float) if spec.task == "presence_absence" else table
    path = _table_path(source, manifest)
    df = pd.read_csv(path, sep=t.get("sep", ","))
    if spec.task == "presence_only":
        return _records_to_targets(df, t, sites, path)
    return wide_targets(df, spec.task, t.get("id_column", "plot_id"), t.get("columns"), path)


def wide_targets(df: pd.DataFrame, task: str, id_column: str, columns: list[str] | None, where) -> pd.DataFrame:
    """A wide target table (an id column + one column per species, ``columns`` or all others) on string site
    ids: 0/1 for presence/absence (any value > 0 is a presence), numbers for abundance."""
    if id_column not in df.columns:
        raise EcoalignInputError(f"column '{id_column}' not found", path=where, expected=f"one of {list(df.columns)}")
    cols = list(columns) if columns else [c for c in df.columns if c != id_column]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise EcoalignInputError(f"target columns {missing} not found", path=where,
                                 expected=f"columns of {list(df.columns)}")
    table = df.set_index(df[id_column].astype(str))[cols].apply(pd.to_numeric, errors="coerce")
    if task == "presence_absence":
        table = (table > 0).astype(float)
    return table


def _table_path(source: str, manifest) -> Path:
    if source.startswith("extras."):
        if manifest is None or source[7:] not in manifest.extras:
            known = sorted(manifest.extras) if manifest is not None else []
            raise EcoalignInputError(f"target.source '{source}' is not in the manifest's extras",
                                     expected=f"one of {['extras.' + k for k in known]}")
        return manifest.extras[source[7:]].path
    path = Path(source)
    if not path.exists():
        raise EcoalignInputError("target table not found", path=path)
    return path


def _records_to_targets(records: pd.DataFrame, t: dict, sites, path: Path) -> pd.DataFrame:
    """Presence at sites within `record_radius_m` of a record; pseudo-absence beyond `exclusion_buffer_m`; NaN between."""
    from scipy.spatial import cKDTree

    sp, xc, yc = t.get("species_column", "species"), t.get("x_column", "x"), t.get("y_column", "y")
    for c in (sp, xc, yc):
        if c not in records.columns:
            raise EcoalignInputError(f"column '{c}' not found in the records", path=path,
                                     expected=f"one of {list(records.columns)}")
    radius, buffer = float(t.get("record_radius_m", 50.0)), float(t.get("exclusion_buffer_m", 250.0))
    if buffer < radius:
        raise EcoalignInputError(f"exclusion_buffer_m {buffer} < record_radius_m {radius}",
                                 expected="an exclusion buffer at least as large as the record radius")
    tree = cKDTree(_centres(sites))
    out = {}
    for name, group in records.groupby(sp):
        rec = group[[xc, yc]].to_numpy(dtype=float)
        dist, _ = cKDTree(rec).query(tree.data, k=1)
        col = np.where(dist <= radius, 1.0, np.where(dist > buffer, 0.0, np.nan))
        out[str(name)] = col
    return pd.DataFrame(out, index=sites.index)


def _check_coordinates(gdf, what: str) -> None:
    """Coordinates that cannot be in the declared CRS (degrees beyond +-180/90, or metres under a geographic
    CRS; all values within +-180/90 under a projected one) are refused before anything is fitted."""
    if gdf.crs is None or not len(gdf):
        return
    xs, ys = gdf.geometry.x.to_numpy(), gdf.geometry.y.to_numpy()
    if gdf.crs.is_geographic and (np.abs(xs).max() > 180 or np.abs(ys).max() > 90):
        raise EcoalignInputError(f"{what}: coordinates up to x={np.abs(xs).max():.0f}, y={np.abs(ys).max():.0f} "
                                 f"cannot be longitude/latitude degrees in the declared {gdf.crs.to_string()}",
                                 expected="--crs naming the CRS the x/y columns are really in (e.g. a projected "
                                          "EPSG code in metres)")
    if not gdf.crs.is_geographic and np.abs(xs).max() <= 180 and np.abs(ys).max() <= 90 and len(gdf) > 1:
        raise EcoalignInputError(f"{what}: every coordinate lies within +-180/+-90, which looks like longitude/latitude "
                                 f"degrees, but the declared CRS {gdf.crs.to_string()} is projected",
                                 expected="--crs EPSG:4326 (or the CRS the x/y columns are really in)")


def presence_background_points(records, background, spec: ModelSpec):
    """Presence-only records + background points as one site table (MaxEnt-style data).

    Per species: its records are presences (1) and background points are 0. Other species' records are 0 too
    with ``target.background: target_group`` (the default: they sample the same observers' effort, the bias
    correction of Phillips et al. 2009), except where they share the species' own record location; with
    ``random`` they are NaN (not used for that species). Records outside the background's extent are dropped
    and counted. Both tables carry the same covariate columns (or get raster values later).

    With ``target_group``, ``target.target_group_share`` (default 0.5) is the share of each species' background
    made of the other records: the random background is thinned to about ``n_records * (1 - share) / share``
    points (never below ``MIN_LANDSCAPE_POINTS`` nor above what was given; seeded) and the rest are NaN for
    every species. Left whole, 10,000 random points outweigh a few thousand records, so the model learns the
    observers' bias as habitat; a pure target group would leave unsampled environments unconstrained on maps.
    The thinned points stay in the table as landscape reference (Boyce, the ensemble's common scale).
    Returns (sites GeoDataFrame, targets DataFrame, dropped {reason: ids}).
    """
    import geopandas as gpd

    sp = spec.target.get("species_column", "species")
    if sp not in records.columns:
        raise EcoalignInputError(f"column '{sp}' (species) not found in the presence records",
                                 expected=f"one of {list(records.columns)[:15]}")
    _check_coordinates(records, "presence records")
    _check_coordinates(background, "background points")
    if background.crs != records.crs:
        background = background.to_crs(records.crs)
    rec = records.reset_index(drop=True)
    if rec[sp].isna().any():
        raise EcoalignInputError(f"{int(rec[sp].isna().sum())} presence record(s) without a species "
                                 f"(first at row {int(np.flatnonzero(rec[sp].isna())[0])})", where=sp,
                                 expected="a species name on every record")
    bx, by = background.geometry.x.to_numpy(), background.geometry.y.to_numpy()
    rx, ry = rec.geometry.x.to_numpy(), rec.geometry.y.to_numpy()
    pad_x, pad_y = 0.01 * np.ptp(bx), 0.01 * np.ptp(by)
    outside = (rx < bx.min() - pad_x) | (rx > bx.max() + pad_x) | (ry < by.min() - pad_y) | (ry > by.max() + pad_y)
    dropped: dict[str, list[str]] = {}
    if outside.all():
        raise EcoalignInputError(f"none of the {len(rec)} presence records lies within the background's extent "
                                 f"(x {bx.min():.6g}..{bx.max():.6g}, y {by.min():.6g}..{by.max():.6g})",
                                 expected="records and background in the same region and CRS")
    if outside.any():
        dropped["outside_background_extent"] = [f"presence_{i}" for i in np.flatnonzero(outside)]
        log.warning("%d presence record(s) lie outside the background's extent and are dropped", int(outside.sum()))
    ids = [f"presence_{i}" for i in range(len(rec))] + [f"background_{i}" for i in range(len(background))]
    cols = [c for c in rec.columns if c in background.columns and c not in (sp, "geometry", "plot_id")]
    sites = gpd.GeoDataFrame(pd.concat([rec[cols], background.reset_index(drop=True)[cols]], ignore_index=True),
                             geometry=list(rec.geometry) + list(background.geometry), crs=records.crs)
    sites["plot_id"] = ids
    sites.attrs["presence_rows"] = len(rec)
    target_group = spec.target.get("background", "target_group") == "target_group"
    keys = pd.Series(list(zip(np.round(rx, 6), np.round(ry, 6))))
    targets = {}
    for name, idx in rec.groupby(sp).groups.items():
        idx = np.asarray(list(idx))
        col = np.full(len(ids), np.nan)
        if target_group:
            col[:len(rec)] = 0.0
            col[np.flatnonzero(keys.isin(set(keys.iloc[idx])).to_numpy())] = np.nan  # other records at its sites
        col[idx] = 1.0
        col[len(rec):] = 0.0
        col[np.flatnonzero(outside)] = np.nan
        targets[str(name)] = col
    thinned = _thinned_background(spec, len(targets), int((~outside).sum()), len(background)) if target_group \
        else np.array([], dtype=int)
    for col in targets.values():
        col[len(rec) + thinned] = np.nan
    return sites, pd.DataFrame(targets, index=pd.Index(ids)), dropped


# the smallest random background kept as the landscape sample when thinning it for the target group
MIN_LANDSCAPE_POINTS = 1000


def _thinned_background(spec: ModelSpec, n_species: int, n_records: int, n_background: int) -> np.ndarray:
    """Positions (within the background table) of the random points set aside so that the other species'
    records make up ``target.target_group_share`` of each species' background (none for a single species)."""
    share = spec.target.get("target_group_share", DEFAULT_TARGET_GROUP_SHARE)
    if share is None or n_species < 2:
        return np.array([], dtype=int)
    keep = min(n_background, max(MIN_LANDSCAPE_POINTS, round(n_records * (1 - share) / share)))
    if keep >= n_background:
        return np.array([], dtype=int)
    log.info("target-group background: %d of the %d random background points kept beside %d records "
             "(target.target_group_share %.2f); the rest serve as landscape reference only",
             keep, n_background, n_records, share)
    return np.sort(np.random.default_rng(0).permutation(n_background)[keep:])


def _all_covariates(table: pd.DataFrame, spec: ModelSpec, id_col: str, presence_rows: int | None) -> list[str]:
    """``covariates: all``: every column but ids, coordinates, geometry and targets; non-numeric columns that
    are not declared categorical are left out with a warning, and so are columns that separate presence
    records from background perfectly (an id or a label, e.g. ``occ`` or ``siteid``, not an environment)."""
    from ecoalign.data.plots import X_NAMES, Y_NAMES

    skip = {id_col, "geometry", "plot_id", spec.target.get("species_column", "species"),
            spec.target.get("x_column", "x"), spec.target.get("y_column", "y")}
    skip |= {c for c in table.columns if str(c).lower() in X_NAMES + Y_NAMES}
    cats = set(spec.features.get("categorical") or [])
    cols, left_out = [], {}
    n_pres = presence_rows  # presence-only sites: records first, then background
    for c in table.columns:
        if c in skip:
            continue
        if c not in cats and not pd.api.types.is_numeric_dtype(table[c]):
            left_out[c] = "not numeric and not declared in features.categorical"
            continue
        if n_pres:
            a, b = table[c].iloc[:n_pres].dropna(), table[c].iloc[n_pres:].dropna()
            if len(a) and len(b) and not set(a.unique()) & set(b.unique()) and (
                    a.max() < b.min() or b.max() < a.min() if pd.api.types.is_numeric_dtype(table[c]) else True):
                left_out[c] = "separates presence records from background perfectly (an id or label?)"
                continue
        cols.append(c)
    for c, why in left_out.items():
        log.warning("covariates: all leaves out column %r: %s", c, why)
    if not cols:
        raise EcoalignInputError(f"covariates: all found no usable column (left out: {left_out})",
                                 where="features.covariates", expected="numeric or declared categorical columns")
    log.info("covariates: all -> %s", cols)
    return cols


def build_sites(spec: ModelSpec, *, embeddings=None, points=None, covariates: pd.DataFrame | None = None,
                manifest=None, id_column: str = "plot_id", background=None,
                targets: pd.DataFrame | None = None) -> SiteTable:
    """Join sites, features and targets for a spec; `embeddings` is an `ecoalign embed` table (path or frame).

    With ``background`` (a points table), ``points`` are presence-only records and the two are combined
    into presence/background sites (see :func:`presence_background_points`). ``targets``, a table on string
    site ids (see :func:`wide_targets`), replaces the spec's ``target.source``.
    """
    from ecoalign.aerial.embed import embedding_columns, read_embeddings

    dropped: dict[str, list[str]] = {}
    if background is not None:
        if points is None:
            raise EcoalignInputError("background points need presence records", expected="--points RECORDS --background BG")
        if targets is not None:
            raise EcoalignInputError("both a target table and background points were given",
                                     expected="presence records with background points (their species are the "
                                              "targets), or a target table, not both")
        points, targets, dropped = presence_background_points(points, background, spec)
        id_column = "plot_id"
    elif spec.task == "presence_only" and "source" not in spec.target and targets is None:
        raise EcoalignInputError("a presence-only spec without target.source needs background points",
                                 expected="--background BG (with --points RECORDS), or target.source in the spec")
    feature_source: dict[str, Any] = {}
    if embeddings is not None:
        gdf = read_embeddings(embeddings) if isinstance(embeddings, (str, Path)) else embeddings
        feature_source = dict(gdf.attrs.get("ecoalign", {}))
        id_col = id_column if id_column in gdf.columns else gdf.columns[0]
    elif points is not None:
        gdf, id_col = points, id_column
    else:
        raise EcoalignInputError("no sites given", expected="an embedding table (ecoalign embed) or a points table")
    if id_col not in gdf.columns:
        raise EcoalignInputError(f"site id column '{id_col}' not found", expected=f"one of {list(gdf.columns)[:10]}")
    gdf = gdf.set_index(gdf[id_col].astype(str))
    if gdf.index.duplicated().any():
        raise EcoalignInputError(f"site '{gdf.index[gdf.index.duplicated()][0]}' appears more than once",
                                 expected="one row per site (aggregate duplicated sites first)")
    gdf = _projected(gdf)

    feats = []
    if spec.features["embeddings"]:
        cols = embedding_columns(gdf)
        if not cols:
            raise EcoalignInputError("the spec uses embeddings but the site table has no emb_* columns",
                                     expected="a table written by `ecoalign embed`, or features.embeddings: false")
        feats.append(gdf[cols])
    categorical = list(spec.features.get("categorical") or [])
    if spec.features["covariates"]:
        table = gdf if covariates is None else covariates.set_index(covariates[id_col].astype(str))
        names = spec.features["covariates"]
        if names == "all":
            names = _all_covariates(table, spec, id_col,
                                    None if covariates is not None else getattr(points, "attrs", {}).get("presence_rows"))
        missing = [c for c in names if c not in table.columns]
        if missing:
            where = "background points" if background is not None else "covariate table"
            raise EcoalignInputError(f"covariate columns {missing} not found in the {where}",
                                     expected=f"columns of the {where}: {list(table.columns)[:15]}")
        unknown_cats = [c for c in categorical if c not in names]
        if unknown_cats:
            raise EcoalignInputError(f"categorical column(s) {unknown_cats} are not covariates of the sites",
                                     where="features.categorical", expected=f"names among {list(names)[:15]}")
        cov = table.reindex(gdf.index)[list(names)].copy()
        for c in cov.columns:
            if c in categorical:
                cov[c] = pd.Series(level_names(cov[c].to_numpy()), index=cov.index, dtype=object)
            elif not pd.api.types.is_numeric_dtype(cov[c]):
                raise EcoalignInputError(f"covariate column {c!r} is not numeric (dtype {cov[c].dtype}, e.g. "
                                         f"{cov[c].dropna().iloc[0] if cov[c].notna().any() else None!r})",
                                         where="features", expected="numbers, or the column listed in "
                                                                    "features.categorical")
        no_row = cov.isna().all(axis=1)
        dropped.update({"no_covariates": list(gdf.index[no_row])} if no_row.any() else {})
        feats.append(cov)
    if spec.features["rasters"]:
        vals, valid = sample_rasters(gdf, spec.features["rasters"])
        if not valid.any():
            raise EcoalignInputError("every site is outside the environmental rasters or on nodata",
                                     expected="rasters covering the sites (any CRS: sites are reprojected)")
        if (~valid).any():
            dropped["outside_env_rasters"] = list(gdf.index[~valid])
        feats.append(vals)
    X = pd.concat(feats, axis=1)
    X.columns = [str(c) for c in X.columns]

    if targets is None:
        targets = _target_table(spec, manifest, gdf)
    no_target = ~gdf.index.isin(targets.index)
    if no_target.all():
        raise EcoalignInputError(f"no site id matches the target table (sites: {list(gdf.index[:3])}, "
                                 f"targets: {list(targets.index[:3])})", expected="the same ids in both tables")
    if no_target.any():
        dropped["no_target"] = list(gdf.index[no_target])
    numeric = X.drop(columns=[c for c in categorical if c in X.columns])  # a missing level is a level, not NaN
    nan_features = numeric.isna().any(axis=1).to_numpy() & ~no_target
    if nan_features.any():  # reported, never imputed behind the user's back
        dropped.setdefault("nan_features", [])
        dropped["nan_features"] += [i for i in gdf.index[nan_features] if i not in set(sum(dropped.values(), []))]
    keep = ~no_target & ~numeric.isna().any(axis=1).to_numpy()
    for reason, ids in list(dropped.items()):
        dropped[reason] = [i for i in ids if i in set(gdf.index)]
    Y = targets.reindex(gdf.index[keep]).astype(float)
    sites = gdf.loc[keep]
    return SiteTable(ids=np.asarray(sites.index), xy=_centres(sites),
                     crs=sites.crs, X=X.loc[keep], Y=Y, dropped=dropped, feature_source=feature_source)


def read_sites(spec, *, manifest=None, embeddings=None, points=None, covariates=None, background=None,
               id_column: str = "plot_id", crs=None, targets: pd.DataFrame | None = None) -> SiteTable:
    """The sites of ``ecoalign fit``, ``evaluate`` and ``compare``, from the same inputs as their flags.

    ``spec``: a :class:`ModelSpec`, a ``species_models/`` name or a spec YAML path; ``manifest``: a path or a
    loaded manifest (targets from its relevés or extras); ``embeddings``: an ``ecoalign embed`` table (path or
    GeoDataFrame); ``points``: a sites table without imagery (GeoPackage/GeoParquet, a CSV with x/y columns and
    ``crs``, or a (Geo)DataFrame), or with ``background`` the presence-only records (a species column; ids may
    repeat); ``covariates``: a table (CSV path or DataFrame) joined on ``id_column``; ``targets``: see
    :func:`build_sites`. Sites without coordinates are dropped and counted like every other unusable site.
    """
    from ecoalign.data.plots import read_plots
    from ecoalign.sdm.spec import as_spec

    spec = as_spec(spec)
    if isinstance(manifest, (str, Path)):
        from ecoalign.data.manifest import load_manifest

        manifest = load_manifest(manifest)
    if background is not None:
        if points is None:
            raise EcoalignInputError("background points need presence records",
                                     expected="points= (--points RECORDS) with background= (--background BG)")
        points = read_plots(points, crs=crs, unique_ids=False)
        background = read_plots(background, crs=crs, unique_ids=False)
        for what, table in (("presence record", points), ("background point", background)):
            rows = table.attrs.get("without_coordinates") or []
            if rows:
                log.warning("%d %s(s) without coordinates skipped: %s", len(rows), what, rows[:10])
    elif points is not None:
        points = read_plots(points, id_column=id_column, crs=crs)
    if isinstance(covariates, (str, Path)):
        path = Path(covariates)
        if not path.exists():
            raise EcoalignInputError("covariate table not found", path=path)
        covariates = pd.read_csv(path)
    sites = build_sites(spec, embeddings=embeddings, points=points, covariates=covariates, manifest=manifest,
                        id_column=id_column, background=background, targets=targets)
    no_coords = [] if embeddings is not None or background is not None or points is None \
        else list(points.attrs.get("without_coordinates") or [])
    if no_coords:
        sites.dropped["no_coordinates"] = no_coords
    dropped = {k: len(v) for k, v in sites.dropped.items()}
    log.info("%d sites, %d features, %d targets; dropped %s", len(sites.ids), sites.X.shape[1], sites.Y.shape[1],
             dropped or "none")
    return sites
