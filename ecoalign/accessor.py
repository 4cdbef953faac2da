"""``import ecoalign.accessor``: an ``ecoalign`` accessor on rioxarray DataArrays and on (Geo)DataFrames.

``da.ecoalign.embed(encoder)`` gives a grid of window embeddings, ``da.ecoalign.embed(encoder, points=gdf)`` a
table of point embeddings, ``da.ecoalign.predict(bundle, encoder)`` a species map, ``gdf.ecoalign.embed(raster,
encoder)`` the point embeddings. An in-memory array is written once to a temporary GeoTIFF and then goes through
the very code the CLI runs (``embed_points``, ``ecoalign.mapping``), so a notebook gets the numbers
``ecoalign embed`` / ``ecoalign map`` would give.
"""
from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers da.rio, which the accessor builds on)
import rioxarray.exceptions
import xarray as xr

from ecoalign.core.errors import EcoalignInputError

WAVELENGTHS_ATTR = "wavelengths_um"  # a DataArray attribute that names its bands' centre wavelengths (µm)


def _encoder(encoder, wavelengths_um: Sequence[float] | None, bundle=None, **config):
    """An encoder object, an adapt run directory, or ``dofa[-small|-base|-large]`` (wavelengths needed unless a
    model ``bundle`` names them); ``config``: ``precision``, ``band_mean``, ``band_std`` (None keeps the encoder's)."""
    from ecoalign.mapping.loading import resolve_encoder

    if (isinstance(encoder, (str, Path)) and str(encoder).startswith("dofa") and wavelengths_um is None
            and bundle is None):
        raise EcoalignInputError(f"encoder '{encoder}' needs the band wavelengths",
                                 expected=f"wavelengths_um=[...] (µm, one per band) or a '{WAVELENGTHS_ATTR}' "
                                          "attribute on the DataArray")
    return resolve_encoder(encoder, wavelengths_um, bundle, **config)


def _progress(iterable, total: int, show: bool, what: str):
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=f"[ecoalign] {what}", unit="block")


@xr.register_dataarray_accessor("ecoalign")
class EcoalignDataArray:
    """Encoders and species models on a georeferenced (band, y, x) DataArray (``rioxarray.open_rasterio``)."""

    def __init__(self, da: xr.DataArray):
        self._da = da

    # ------------------------------------------------------------------ checks and the temporary GeoTIFF
    def _bands_first(self) -> xr.DataArray:
        da = self._da
        if da.rio.crs is None:
            raise EcoalignInputError("the DataArray has no CRS", where=f"DataArray {da.name or ''}".strip(),
                                     expected="a georeferenced array: rioxarray.open_rasterio(path), or "
                                              "da.rio.write_crs('EPSG:...')")
        try:
            y, x = da.rio.y_dim, da.rio.x_dim
        except rioxarray.exceptions.MissingSpatialDimensionError as exc:
            raise EcoalignInputError(f"the DataArray has no spatial dimensions ({exc})",
                                     expected="dims (band, y, x) as rioxarray.open_rasterio gives") from None
        if da.ndim == 2:
            da = da.expand_dims("band")
        other = [d for d in da.dims if d not in (y, x)]
        if da.ndim != 3 or len(other) != 1:
            raise EcoalignInputError(f"the DataArray has dims {da.dims}",
                                     expected=f"(band, {y}, {x}): one band dimension and two spatial ones")
        return da.transpose(other[0], y, x)

    def _checked(self, encoder) -> xr.DataArray:
        from ecoalign.encoders.base import WindowEncoder

        if not isinstance(encoder, WindowEncoder):
            raise EcoalignInputError(f"{encoder!r} does not embed multispectral raster windows",
                                     expected="an image-window encoder: 'dofa' or an `ecoalign adapt` run directory")
        da = self._bands_first()
        n = da.shape[0]
        if n != len(encoder.wavelengths_um):
            raise EcoalignInputError(f"the DataArray has {n} band(s) but the encoder expects "
                                     f"{len(encoder.wavelengths_um)} (wavelengths {encoder.wavelengths_um} µm)",
                                     where=f"dimension '{da.dims[0]}'",
                                     expected="one band per encoder wavelength, in the same order")
        return da

    @contextmanager
    def _geotiff(self, da: xr.DataArray, tmp_dir: str | Path | None) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="ecoalign-da-", dir=tmp_dir) as folder:
            path = Path(folder) / "array.tif"
            da.rio.to_raster(path, tiled=True)
            yield path

    def _resolve(self, encoder, wavelengths_um, bundle=None, **config):
        waves = wavelengths_um if wavelengths_um is not None else self._da.attrs.get(WAVELENGTHS_ATTR)
        return _encoder(encoder, waves, bundle, **config)

    # ------------------------------------------------------------------ embeddings
    def embed(self, encoder, points=None, *, window_m: float | None = None, stride_m: float | None = None,
              batch_size: int = 16, max_nodata_fraction: float = 0.5, wavelengths_um: Sequence[float] | None = None,
              id_column: str = "plot_id", progress: bool = True, tmp_dir: str | Path | None = None,
              precision: str | None = None, band_mean=None, band_std=None):
        """Window embeddings: at ``points`` (a GeoDataFrame, via ``ecoalign.embed_points``) or, without points,
        on a grid (``stride_m`` apart, default one window) as a DataArray (y, x, feature), NaN where the window
        is mostly nodata. ``window_m`` defaults to the encoder's patch size (100 m for frozen DOFA).
        ``precision`` (auto, fp32, bf16, int8) and fixed ``band_mean``/``band_std`` configure the encoder; frozen
        DOFA without statistics gets this array's, recorded in the result (as ``ecoalign embed`` does)."""
        enc = self._resolve(encoder, wavelengths_um, precision=precision, band_mean=band_mean, band_std=band_std)
        da = self._checked(enc)
        with self._geotiff(da, tmp_dir) as tif:
            if points is not None:
                from ecoalign.aerial.embed import embed_points

                return embed_points(points, [tif], enc, patch_size_m=window_m, batch_size=batch_size,
                                    max_nodata_fraction=max_nodata_fraction, id_column=id_column, progress=progress)
            return _embedding_grid(enc, tif, window_m=window_m, stride_m=stride_m, batch_size=batch_size,
                                   max_nodata_fraction=max_nodata_fraction, progress=progress)

    # ------------------------------------------------------------------ species maps
    def predict(self, model, encoder, *, env_rasters: Sequence = (), stride_m: float | None = None,
                batch_size: int = 32, wavelengths_um: Sequence[float] | None = None, scheduler: str | None = None,
                workers: int | None = None, progress: bool = True, tmp_dir: str | Path | None = None,
                precision: str | None = None, band_mean=None, band_std=None) -> xr.DataArray:
        """The species model (a bundle directory from ``ecoalign fit``) over the array: a DataArray (target, y, x)
        with the values ``ecoalign map`` writes (probability of presence, or abundance), NaN for nodata.
        ``scheduler``/``workers`` compute the blocks with Dask (``tmp_dir`` must then be visible to the workers).
        ``precision`` and ``band_mean``/``band_std`` as for ``ecoalign map`` (statistics default to the encoder's,
        else the bundle's: never this array's)."""
        from ecoalign.mapping.plan import plan_map
        from ecoalign.sdm.fitting import load_bundle

        enc = self._resolve(encoder, wavelengths_um, model, precision=precision, band_mean=band_mean,
                            band_std=band_std)
        da = self._checked(enc)
        model_obj = load_bundle(model)[0]
        with self._geotiff(da, tmp_dir) as tif:
            plan = plan_map(enc, model, tif, env_rasters=env_rasters, stride_m=stride_m,
                            encoder_spec=encoder if isinstance(encoder, (str, Path)) else None)
            return _plan_to_array(plan, enc, model_obj, {"bundle": str(Path(model).resolve())}, batch_size=batch_size,
                                  scheduler=scheduler, workers=workers, progress=progress)

    def zero_shot(self, encoder, *, species: Sequence[str] = (), releve: Sequence[str] | str = (),
                  raw_similarity: bool = False, stride_m: float | None = None, batch_size: int = 32,
                  scheduler: str | None = None, workers: int | None = None, progress: bool = True,
                  tmp_dir: str | Path | None = None, organism_encoder: str | None = None,
                  relatives_weight: float | None = None) -> xr.DataArray:
        """Zero-shot suitability of named species / relevés over the array (``ecoalign map`` without ``--model``):
        a DataArray (target, y, x), one target per ``releve`` string and per ``species`` name, NaN for nodata.
        ``encoder``: an ``adapt --releve-encoder organism_text`` run directory."""
        from ecoalign.mapping.run import zero_shot_plan

        enc = self._resolve(encoder, None)
        da = self._checked(enc)
        with self._geotiff(da, tmp_dir) as tif:
            plan, model, enc = zero_shot_plan(enc, tif, releve=releve, species=species, raw=raw_similarity,
                                              organism=organism_encoder, relatives_weight=relatives_weight,
                                              stride_m=stride_m)
            return _plan_to_array(plan, enc, model, {"zero_shot_run": str(enc.metadata.get("run_dir"))},
                                  batch_size=batch_size, scheduler=scheduler, workers=workers, progress=progress)


def _plan_to_array(plan, enc, model, attrs: dict, *, batch_size: int, scheduler, workers, progress: bool):
    """The plan's blocks (here or on Dask workers) as a georeferenced DataArray (target, y, x), NaN for nodata."""
    from rasterio.transform import Affine

    from ecoalign.mapping.blocks import compute_block

    out = np.full((len(plan.targets), plan.height, plan.width), np.nan, dtype=np.float32)
    if scheduler or workers:
        from ecoalign.mapping.distributed import compute_blocks

        results = compute_blocks(plan, plan.blocks, scheduler=scheduler, workers=workers, batch_size=batch_size)
    else:
        results = ((b, compute_block(plan, b, encoder=enc, model=model, batch_size=batch_size)) for b in plan.blocks)
    for block, values in _progress(results, len(plan.blocks), progress, "predict"):
        values = np.where(values == plan.nodata, np.nan, values)
        out[:, block.row_off:block.row_off + block.height, block.col_off:block.col_off + block.width] = values
    grid = _grid_coords(plan)
    result = xr.DataArray(out, dims=("target", "y", "x"), coords={"target": plan.targets, **grid}, name="prediction",
                          attrs={**attrs, "task": plan.task, "window_m": plan.window_m,
                                 "stride_m": plan.stride_px * abs(plan.in_transform[0])})
    return _georeferenced(result, plan.crs, Affine(*plan.transform))


# ---------------------------------------------------------------------------------------------------------------
# the grid of window embeddings

def _grid_coords(plan) -> dict:
    from ecoalign.mapping.plan import window_centres

    xs = window_centres(plan, np.zeros(plan.width), np.arange(plan.width))[:, 0]
    ys = window_centres(plan, np.arange(plan.height), np.zeros(plan.height))[:, 1]
    return {"y": ys, "x": xs}


def _georeferenced(da: xr.DataArray, crs, transform) -> xr.DataArray:
    return da.rio.write_crs(crs).rio.write_transform(transform).rio.write_nodata(np.nan, encoded=False)


def _embedding_grid(encoder, tif: Path, *, window_m, stride_m, batch_size: int, max_nodata_fraction: float,
                    progress: bool) -> xr.DataArray:
    from rasterio.transform import Affine

    from ecoalign.aerial.embed import EMBED_PREFIX
    from ecoalign.mapping.blocks import embed_windows, read_block
    from ecoalign.mapping.plan import plan_windows

    plan = plan_windows(encoder, tif, window_m=window_m, stride_m=stride_m, max_nodata_fraction=max_nodata_fraction)
    dim = encoder.embed_dim
    out = np.full((plan.height, plan.width, dim), np.nan, dtype=np.float32)
    for block in _progress(plan.blocks, len(plan.blocks), progress, "embed"):
        data = read_block(plan, block)
        rows, cols = np.nonzero(data.valid_windows)
        if len(rows):
            out[rows + block.row_off, cols + block.col_off] = embed_windows(plan, data.pixels, rows, cols, encoder,
                                                                            batch_size)
    res = abs(plan.in_transform[0])
    da = xr.DataArray(out, dims=("y", "x", "feature"),
                      coords={**_grid_coords(plan), "feature": [f"{EMBED_PREFIX}{j:03d}" for j in range(dim)]},
                      name="embedding",
                      attrs={"window_m": plan.window_m, "stride_m": plan.stride_px * res,
                             "random_weights": int(bool(encoder.random_weights)),
                             "encoder": json.dumps(encoder.identity())})
    return _georeferenced(da, plan.crs, Affine(*plan.transform))


# ---------------------------------------------------------------------------------------------------------------
# tables of points

@pd.api.extensions.register_dataframe_accessor("ecoalign")
class EcoalignFrame:
    """Encoders on a GeoDataFrame of points: ``gdf.ecoalign.embed(raster, encoder)``."""

    def __init__(self, df: pd.DataFrame):
        self._df = df

    def embed(self, raster, encoder, *, wavelengths_um: Sequence[float] | None = None, **kwargs):
        """``ecoalign.embed_points`` on these points: ``raster`` is a GeoTIFF path, a list of them, or a
        rioxarray DataArray; keyword arguments as for ``embed_points`` (``patch_size_m``, ``id_column``,
        ``precision``, ``band_mean``/``band_std``, ...)."""
        import geopandas as gpd

        if not isinstance(self._df, gpd.GeoDataFrame):
            raise EcoalignInputError(f"a {type(self._df).__name__} has no geometry",
                                     expected="a GeoDataFrame of points with a CRS (geopandas.points_from_xy)")
        if isinstance(raster, xr.DataArray):
            if "patch_size_m" in kwargs:
                kwargs["window_m"] = kwargs.pop("patch_size_m")
            return raster.ecoalign.embed(encoder, points=self._df, wavelengths_um=wavelengths_um, **kwargs)
        from ecoalign.aerial.embed import embed_points

        rasters = [raster] if isinstance(raster, (str, Path)) else list(raster)
        kwargs.setdefault("progress", False)
        return embed_points(self._df, rasters, _encoder(encoder, wavelengths_um), **kwargs)
