"""Plot locations (or point records) from GeoPackage, GeoParquet, a CSV with x/y columns and a CRS, or a table in memory."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ecoalign.core.delimited import read_delimited
from ecoalign.core.errors import EcoalignInputError

X_NAMES = ("x", "easting", "east", "lon", "longitude")
Y_NAMES = ("y", "northing", "north", "lat", "latitude")
IN_MEMORY = "<points table in memory>"  # what messages name for a (Geo)DataFrame given instead of a file


def read_plots(path, *, id_column: str = "plot_id", layer: str | None = None,
               x_column: str | None = None, y_column: str | None = None, crs: Any = None,
               sep: str | None = None, unique_ids: bool = True):
    """Return a GeoDataFrame of point or polygon geometry with a CRS.

    ``path`` is a file (GeoPackage or any OGR format, GeoParquet, or CSV/TSV with x/y columns and ``crs``) or a
    table in memory: a GeoDataFrame (``crs`` fills in a missing CRS) or a DataFrame with x/y columns and ``crs``.

    Plots (``unique_ids=True``): indexed by the stripped string plot id, which must be unique; CSV rows without
    coordinates are skipped and listed in ``attrs["without_coordinates"]``.
    Records (``unique_ids=False``; presence records, background points): rows need no id and ids may repeat;
    the rows keep their order under a fresh 0..n-1 index, and rows without coordinates are skipped and listed
    as ``"row N"`` (the file's line, or the table's position) in ``attrs["without_coordinates"]``.
    """
    import geopandas as gpd

    noun = "plots" if unique_ids else "points"
    if isinstance(path, pd.DataFrame):
        where, first_row = IN_MEMORY, 0
        if isinstance(path, gpd.GeoDataFrame):
            gdf = path.copy()
            if gdf.crs is None and crs is not None:
                gdf = gdf.set_crs(crs)
        else:
            gdf = _points_from_xy(path.copy(), where, first_row, x_column, y_column, crs, id_column, unique_ids,
                                  noun, crs_hint="crs= (--crs) naming the CRS of the x/y columns")
    else:
        where, first_row = Path(path), 2  # a CSV's first data row is line 2 of the file
        if not where.exists():
            raise EcoalignInputError(f"{noun} file not found", path=where)
        suffix = where.suffix.lower()
        if suffix in (".csv", ".txt", ".tsv"):
            df = read_delimited(where, sep=sep, dtype={id_column: str} if unique_ids else None)
            gdf = _points_from_xy(df, where, first_row, x_column, y_column, crs, id_column, unique_ids, noun,
                                  crs_hint="'crs:' in the manifest's plots entry, or crs= (--crs), e.g. EPSG:32631")
        elif suffix in (".parquet", ".geoparquet", ".pq"):
            gdf = gpd.read_parquet(where)
        else:
            try:
                gdf = gpd.read_file(where, layer=layer) if layer else gpd.read_file(where)
            except Exception as exc:  # pyogrio raises several types for unreadable files
                raise EcoalignInputError(f"cannot read the {noun} file: {exc}", path=where) from exc
    if gdf.crs is None:
        raise EcoalignInputError(f"the {noun} have no CRS", path=where,
                                 expected="a CRS in the file, or 'crs:' in the manifest (crs= / --crs for a table)")
    attrs = {"without_coordinates": [], **gdf.attrs}
    if not unique_ids:
        empty = (gdf.geometry.is_empty | gdf.geometry.isna()).to_numpy()
        if empty.any():
            raise EcoalignInputError("a point has no geometry", path=where,
                                     where=f"row {int(np.flatnonzero(empty)[0]) + first_row}")
        gdf = gdf.reset_index(drop=True)
        gdf.attrs = attrs
        return gdf
    if id_column not in gdf.columns:
        raise EcoalignInputError(f"column '{id_column}' (plot id) not found", path=where,
                                 expected=f"one of {[c for c in gdf.columns if c != 'geometry']}")
    ids = gdf[id_column].astype(str).str.strip()
    _check_unique(ids, where, first_row)
    empty = gdf.geometry.is_empty | gdf.geometry.isna()
    if empty.any():
        raise EcoalignInputError(f"plot '{ids[empty].iloc[0]}' has no geometry", path=where)
    gdf = gdf.assign(plot_id=ids.to_numpy()).set_index("plot_id", drop=False)
    gdf.attrs = attrs
    return gdf


def _points_from_xy(df: pd.DataFrame, where, first_row: int, x_column, y_column, crs, id_column: str,
                    unique_ids: bool, noun: str, crs_hint: str):
    """Point geometry from x/y columns: coordinates must be numbers; rows without them are skipped and listed."""
    import geopandas as gpd

    x_column = x_column or guess_column(df, X_NAMES, where, "x")
    y_column = y_column or guess_column(df, Y_NAMES, where, "y")
    if crs is None:
        raise EcoalignInputError(f"a CSV of {noun} needs its CRS", path=where, expected=crs_hint)
    if unique_ids and id_column in df.columns:
        _check_unique(df[id_column].astype(str).str.strip(), where, first_row)  # before blank rows are dropped
    blank = np.zeros(len(df), dtype=bool)
    for c in (x_column, y_column):
        if c not in df.columns:
            raise EcoalignInputError(f"column '{c}' not found", path=where, expected=f"one of {list(df.columns)}")
        bad = pd.to_numeric(df[c], errors="coerce").isna() & df[c].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise EcoalignInputError(f"coordinate {df[c].iloc[i]!r} is not a number", path=where,
                                     where=f"row {i + first_row}, column '{c}'")
        blank |= df[c].isna().to_numpy()
    if unique_ids:
        no_coords = df.loc[blank, id_column].astype(str).tolist() if id_column in df.columns else []
    else:
        no_coords = [f"row {i + first_row}" for i in np.flatnonzero(blank)]
    df = df.loc[~blank]
    gdf = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(pd.to_numeric(df[x_column]).astype(float),
                                                           pd.to_numeric(df[y_column]).astype(float)), crs=crs)
    gdf.attrs["without_coordinates"] = no_coords
    return gdf


def _check_unique(ids: pd.Series, path, first_row: int = 2) -> None:
    dup = ids.duplicated()
    if dup.any():
        raise EcoalignInputError(f"plot id '{ids[dup].iloc[0]}' appears more than once", path=path,
                                 where=f"row {int(np.flatnonzero(dup.to_numpy())[0]) + first_row}",
                                 expected="unique plot ids")


def guess_column(df: pd.DataFrame, names: tuple[str, ...], path, role: str) -> str:
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
