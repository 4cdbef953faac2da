"""Presence-only data: background points, pseudo-absences away from presences, and a long fitting table.

Coordinates are in the units of their CRS; ``exclusion_buffer_m`` assumes a projected CRS in metres
(UTM, national grids), not longitude/latitude degrees.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ecoalign.core.errors import EcoalignInputError

_MAX_DRAWS = 5_000_000  # rejection sampling gives up after this many candidate points


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_n(n, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise EcoalignInputError(f"{what}={n!r}", where=what, expected="an integer >= 1")
    return int(n)


def _as_xy(xy, what: str, *, allow_empty: bool = False) -> np.ndarray:
    if isinstance(xy, pd.DataFrame):
        cols = [c for c in ("x", "y") if c in xy.columns]
        xy = xy[["x", "y"]] if len(cols) == 2 else xy
    try:
        arr = np.asarray(xy, dtype=float)
    except (TypeError, ValueError) as exc:
        raise EcoalignInputError(f"coordinates cannot be read as numbers ({exc})", where=what,
                                 expected="an (n, 2) array of x, y") from None
    if arr.size == 0 and allow_empty:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise EcoalignInputError(f"coordinates have shape {arr.shape}", where=what,
                                 expected="an (n, 2) array of x, y with n >= 1")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise EcoalignInputError(f"{int(bad.sum())} point(s) with NaN/infinite coordinates "
                                 f"(first at row {int(np.flatnonzero(bad)[0])})", where=what,
                                 expected="finite x, y: drop points without coordinates first")
    return arr


def _as_extent(extent) -> tuple[float, float, float, float]:
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in extent)
    except (TypeError, ValueError):
        raise EcoalignInputError(f"extent {extent!r}", where="extent",
                                 expected="(xmin, ymin, xmax, ymax) or a shapely (Multi)Polygon") from None
    if not (np.isfinite([xmin, ymin, xmax, ymax]).all() and xmax > xmin and ymax > ymin):
        raise EcoalignInputError(f"extent {extent!r} is empty or not finite", where="extent",
                                 expected="(xmin, ymin, xmax, ymax) with xmax > xmin and ymax > ymin")
    return xmin, ymin, xmax, ymax


class _Region:
    """Uniform sampler over an extent, a shapely geometry or a boolean raster mask."""

    def __init__(self, region, transform=None):
        self.geom = None
        self.mask_cells = None
        if hasattr(region, "geom_type"):  # shapely geometry
            if region.is_empty or region.area <= 0:
                raise EcoalignInputError(f"{region.geom_type} has no area", where="region",
                                         expected="a (Multi)Polygon with a positive area")
            self.geom = region
            self.bounds = _as_extent(region.bounds)
        elif isinstance(region, np.ndarray) and region.ndim == 2:
            if transform is None:
                raise EcoalignInputError("a raster mask needs its transform", where="transform",
                                         expected="an affine transform (rasterio dataset.transform) or the "
                                                  "6 numbers (a, b, c, d, e, f)")
            a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
            rows, cols = np.nonzero(np.asarray(region).astype(bool))
            if rows.size == 0:
                raise EcoalignInputError("the raster mask has no True/non-zero cell", where="region",
                                         expected="at least one cell to sample from")
            self.mask_cells = (rows, cols, (a, b, c, d, e, f))
            self.bounds = None
        else:
            self.bounds = _as_extent(region)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.mask_cells is not None:  # cells have equal area: pick a cell, then a point inside it
            rows, cols, (a, b, c, d, e, f) = self.mask_cells
            k = rng.integers(0, rows.size, size=n)
            col = cols[k] + rng.random(n)
            row = rows[k] + rng.random(n)
            return np.column_stack([a * col + b * row + c, d * col + e * row + f])
        xmin, ymin, xmax, ymax = self.bounds
        pts = np.column_stack([rng.uniform(xmin, xmax, n), rng.uniform(ymin, ymax, n)])
        if self.geom is None:
            return pts
        import shapely

        return pts[shapely.contains_xy(self.geom, pts[:, 0], pts[:, 1])]

    def sample(self, n: int, rng: np.random.Generator, accept=None) -> np.ndarray:
        """Up to n points (fewer only if rejection sampling runs out of draws), with an optional filter."""
        got: list[np.ndarray] = []
        have, drawn, batch = 0, 0, max(2 * n, 1024)
        while have < n and drawn < _MAX_DRAWS:
            pts = self.draw(batch, rng)
            drawn += batch
            if accept is not None and len(pts):
                pts = pts[accept(pts)]
            got.append(pts)
            have += len(pts)
            rate = have / drawn
            batch = int(min(_MAX_DRAWS - drawn, max(1024, 1.5 * (n - have) / rate if rate > 0 else 10 * batch)))
            if batch <= 0:
                break
        pts = np.concatenate(got) if got else np.empty((0, 2))
        return pts[:n]


def sample_background(n: int, region, seed=None, *, transform=None) -> np.ndarray:
    """``n`` random background points, uniform within ``region``; (n, 2) array of x, y.

    ``region``: an extent ``(xmin, ymin, xmax, ymax)``, a shapely (Multi)Polygon, or a 2-D boolean raster
    mask (True = sample here) together with its ``transform`` (rasterio/affine order a, b, c, d, e, f).
    ``seed``: an int (same seed, same points) or a ``numpy.random.Generator``.
    """
    n = _check_n(n)
    pts = _Region(region, transform).sample(n, _rng(seed))
    if len(pts) < n:
        raise EcoalignInputError(f"could only place {len(pts)} of {n} points in the region after "
                                 f"{_MAX_DRAWS} draws", where="region",
                                 expected="a geometry that covers a reasonable part of its bounding box")
    return pts


def _degrees_hint(*arrays: np.ndarray) -> str:
    pts = np.concatenate([a for a in arrays if a is not None and len(a)]) if any(
        a is not None and len(a) for a in arrays) else np.empty((0, 2))
    if len(pts) and np.abs(pts[:, 0]).max() <= 180 and np.abs(pts[:, 1]).max() <= 90:
        return (" (the coordinates look like longitude/latitude degrees; exclusion_buffer_m is in the "
                "coordinates' units: project to a metric CRS first)")
    return ""


def sample_pseudo_absences(presences_xy, n: int, candidates_xy=None, extent=None, exclusion_buffer_m: float = 0.0,
                           seed=None, *, transform=None, return_index: bool = False):
    """``n`` pseudo-absences at least ``exclusion_buffer_m`` from every presence; (k, 2) array of x, y.

    Drawn without replacement from ``candidates_xy`` (e.g. all survey plots) when given, else uniformly
    in ``extent`` (anything :func:`sample_background` takes as a region). If fewer than ``n`` points are
    possible, returns those with a warning (requested vs available); none possible is an error.
    ``return_index=True`` (candidates only) also returns the chosen candidate row indices (sorted).
    """
    from scipy.spatial import cKDTree

    n = _check_n(n)
    pres = _as_xy(presences_xy, "presences_xy", allow_empty=True)
    try:
        buffer = float(exclusion_buffer_m)
    except (TypeError, ValueError):
        buffer = float("nan")
    if not (np.isfinite(buffer) and buffer >= 0):
        raise EcoalignInputError(f"exclusion_buffer_m={exclusion_buffer_m!r}", where="exclusion_buffer_m",
                                 expected="a distance >= 0 in the coordinates' units (metres)")
    if (candidates_xy is None) == (extent is None):
        raise EcoalignInputError("give exactly one of candidates_xy and extent", where="sample_pseudo_absences",
                                 expected="candidates_xy=(m, 2) points or extent=(xmin, ymin, xmax, ymax)/polygon")
    if return_index and candidates_xy is None:
        raise EcoalignInputError("return_index needs candidates_xy", where="return_index",
                                 expected="candidates_xy, or return_index=False")
    tree = cKDTree(pres) if len(pres) else None

    def far_enough(pts: np.ndarray) -> np.ndarray:
        if tree is None or buffer == 0:
            return np.ones(len(pts), dtype=bool)
        dist, _ = tree.query(pts, k=1)
        return dist >= buffer

    rng = _rng(seed)
    if candidates_xy is not None:
        cand = _as_xy(candidates_xy, "candidates_xy")
        ok = np.flatnonzero(far_enough(cand))
        available = len(ok)
        if available == 0:
            raise EcoalignInputError(f"none of the {len(cand)} candidates lies >= {buffer:g} from every one of "
                                     f"the {len(pres)} presences{_degrees_hint(pres, cand)}",
                                     where="candidates_xy", expected="a smaller exclusion_buffer_m or more candidates")
        if available < n:
            warnings.warn(f"requested {n} pseudo-absences but only {available} of {len(cand)} candidates lie "
                          f">= {buffer:g} from every presence; returning {available}", UserWarning, stacklevel=2)
        idx = np.sort(rng.choice(ok, size=min(n, available), replace=False))
        return (cand[idx], idx) if return_index else cand[idx]

    region = _Region(extent, transform)
    pts = region.sample(n, rng, accept=far_enough)
    if len(pts) == 0:
        raise EcoalignInputError(f"no point of the extent lies >= {buffer:g} from every one of the {len(pres)} "
                                 f"presences{_degrees_hint(pres)}", where="extent",
                                 expected="a smaller exclusion_buffer_m or a larger extent")
    if len(pts) < n:
        warnings.warn(f"requested {n} pseudo-absences but only {len(pts)} could be placed >= {buffer:g} from "
                      f"every presence within the extent after {_MAX_DRAWS} draws; returning {len(pts)}",
                      UserWarning, stacklevel=2)
    return pts


def presence_background_table(presences: pd.DataFrame, species: Sequence[str] | None = None, background_xy=None,
                              per_species: bool = False, *, species_col: str = "species", x_col: str = "x",
                              y_col: str = "y", drop_duplicates: bool = True) -> pd.DataFrame:
    """Long table (x, y, species, presence 0/1) of presences plus background points, ready to fit per species.

    ``presences``: one row per record with ``species_col``, ``x_col``, ``y_col``. ``species``: which
    species (default all, sorted). ``background_xy``: with ``per_species=False`` one (m, 2) array shared by
    every species (each species gets all m points as presence 0); with ``per_species=True`` a mapping
    species -> (m_s, 2) array (e.g. pseudo-absences from :func:`sample_pseudo_absences`).
    Repeated records of a species at the same x, y are kept once unless ``drop_duplicates=False``.
    """
    if not isinstance(presences, pd.DataFrame):
        raise EcoalignInputError(f"presences is a {type(presences).__name__}", where="presences",
                                 expected=f"a DataFrame with columns {species_col!r}, {x_col!r}, {y_col!r}")
    missing = [c for c in (species_col, x_col, y_col) if c not in presences.columns]
    if missing:
        raise EcoalignInputError(f"missing column(s) {missing}; found {list(presences.columns)}",
                                 where="presences", expected=f"columns {species_col!r}, {x_col!r}, {y_col!r}")
    pres = presences[[species_col, x_col, y_col]].copy()
    pres.columns = ["species", "x", "y"]
    if pres["species"].isna().any():
        raise EcoalignInputError(f"{int(pres['species'].isna().sum())} record(s) without a species name",
                                 where=f"presences.{species_col}", expected="a species name on every record")
    pres["species"] = pres["species"].astype(str)
    _as_xy(pres[["x", "y"]], f"presences.{x_col}/{y_col}")
    if drop_duplicates:
        pres = pres.drop_duplicates()

    if species is None:
        species = sorted(pres["species"].unique())
    else:
        species = [str(s) for s in ([species] if isinstance(species, str) else species)]
    absent = [s for s in species if s not in set(pres["species"])]
    if absent:
        warnings.warn(f"{len(absent)} species have no presence record: {absent[:10]}; they get background "
                      f"rows only", UserWarning, stacklevel=2)

    if background_xy is None:
        raise EcoalignInputError("background_xy is required", where="background_xy",
                                 expected="an (m, 2) array, or with per_species=True a dict species -> array")
    if per_species:
        if not isinstance(background_xy, Mapping):
            raise EcoalignInputError(f"per_species=True but background_xy is a {type(background_xy).__name__}",
                                     where="background_xy", expected="a dict species -> (m, 2) array")
        lacking = [s for s in species if s not in background_xy]
        if lacking:
            raise EcoalignInputError(f"no background points for species {lacking[:10]}", where="background_xy",
                                     expected="one entry per species")
        bg = {s: _as_xy(background_xy[s], f"background_xy[{s!r}]") for s in species}
    else:
        if isinstance(background_xy, Mapping):
            raise EcoalignInputError("background_xy is a dict but per_species=False", where="background_xy",
                                     expected="per_species=True for per-species backgrounds, or one (m, 2) array")
        shared = _as_xy(background_xy, "background_xy")
        bg = {s: shared for s in species}

    parts: list[pd.DataFrame] = []
    for s in species:
        p = pres.loc[pres["species"] == s, ["x", "y"]]
        parts.append(pd.DataFrame({"x": p["x"].to_numpy(float), "y": p["y"].to_numpy(float), "species": s,
                                   "presence": 1}))
        b = bg[s]
        parts.append(pd.DataFrame({"x": b[:, 0], "y": b[:, 1], "species": s, "presence": 0}))
    out = pd.concat(parts, ignore_index=True)
    out["presence"] = out["presence"].astype(np.int8)
    return out[["x", "y", "species", "presence"]]
