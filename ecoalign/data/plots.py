"""Plot locations from GeoPackage, GeoParquet or a CSV with x/y columns and a CRS."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ecoalign.core.errors import EcoalignInputError


X_NAMES = ("x", "easting", "east", "lon", "longitude")
Y_NAMES = ("y", "northing", "north", "lat", "latitude")


def read_plots(path: str | Path, *, id_column: str = "plot_id", layer: str | None = None,
               x_column: str | None = None, y_column: str | None = None, crs: Any = None,
               sep: str | None = None):
    """Return a GeoDataFrame indexed by string plot id with point or polygon geometry and a CRS."""
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise EcoalignInputError("plots file not found", path=path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt", ".tsv"):
        df = pd.read_csv(path, sep=sep, engine="python" if sep is None else "c", dtype={id_column: str})
        x_column = x_column or guess_column(df, X_NAMES, path, "x")
        y_column = y_column or guess_column(df, Y_NAMES, path, "y")
        if crs is None:
            raise EcoalignInputError("a CSV of plots needs its CRS", path=path,
                                     expected="'crs:' in the manifest's plots entry (e.g. EPSG:32631)")
        if id_column in df.columns:
            _check_unique(df[id_column].astype(str).str.strip(), path)  # before blank rows are dropped
        blank = np.zeros(len(df), dtype=bool)
        for c in (x_column, y_column):
            if c not in df.columns:
                raise EcoalignInputError(f"column '{c}' not found", path=path, expected=f"one of {list(df.columns)}")
            bad = pd.to_numeric(df[c], errors="coerce").isna() & df[c].notna()
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise EcoalignInputError(f"coordinate {df[c].iloc[i]!r} is not a number", path=path,
                                         where=f"row {i + 2}, column '{c}'")
            blank |= df[c].isna().to_numpy()
        no_coords = df.loc[blank, id_column].astype(str).tolist() if id_column in df.columns else []
        df = df.loc[~blank]
        gdf = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df[x_column].astype(float), df[y_column].astype(float)),
                               crs=crs)
        gdf.attrs["without_coordinates"] = no_coords
    elif suffix in (".parquet", ".geoparquet", ".pq"):
        gdf = gpd.read_parquet(path)
    else:
        try:
            gdf = gpd.read_file(path, layer=layer) if layer else gpd.read_file(path)
        except Exception as exc:  # pyogrio raises several types for unreadable files
            raise EcoalignInputError(f"cannot read the plots file: {exc}", path=path) from exc
    if gdf.crs is None:
        raise EcoalignInputError("the plots have no CRS", path=path, expected="a CRS in the file, or 'crs:' in the manifest")
    if id_column not in gdf.columns:
        raise EcoalignInputError(f"column '{id_column}' (plot id) not found", path=path,
                                 expected=f"one of {[c for c in gdf.columns if c != 'geometry']}")
    ids = gdf[id_column].astype(str).str.strip()
    _check_unique(ids, path)
    empty = gdf.geometry.is_empty | gdf.geometry.isna()
    if empty.any():
        raise EcoalignInputError(f"plot '{ids[empty].iloc[0]}' has no geometry", path=path)
    attrs = dict(gdf.attrs)
    gdf = gdf.assign(plot_id=ids.to_numpy()).set_index("plot_id", drop=False)
    gdf.attrs = {"without_coordinates": [], **attrs}
    return gdf


def _check_unique(ids: pd.Series, path: Path) -> None:
    dup = ids.duplicated()
    if dup.any():
        raise EcoalignInputError(f"plot id '{ids[dup].iloc[0]}' appears more than once", path=path,
                                 where=f"row {int(np.flatnonzero(dup.to_numpy())[0]) + 2}", expected="unique plot ids")


def guess_column(df: pd.DataFrame, names: tuple[str, ...], path: Path, role: str) -> str:
    lower = {c.lower(): c for c in df.columns}
    for n in names:
        if n in lower:
            return lower[n]
    raise EcoalignInputError(f"no {role} coordinate column", path=path,
                             expected=f"one of {list(names)} or '{role}_column:' in the manifest")


def read_manifest_plots(manifest):
    ref = manifest.plots
    return read_plots(ref.path, id_column=ref.get("id_column", "plot_id"), layer=ref.get("layer"),
                      x_column=ref.get("x_column"), y_column=ref.get("y_column"), crs=ref.get("crs"), sep=ref.get("sep"))


def plot_centres(plots, crs) -> np.ndarray:
    """Plot centres (x, y) in ``crs``: polygons by their centroid computed in that (projected) CRS."""
    reprojected = plots.to_crs(crs) if plots.crs != crs else plots
    centroids = reprojected.geometry.centroid
    return np.column_stack([centroids.x.to_numpy(), centroids.y.to_numpy()])
