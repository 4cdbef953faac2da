"""One block of a map: one read for all its windows, their embeddings in batches, the model's predictions.

Windows whose invalid fraction exceeds ``max_nodata_fraction`` (the rule of ``embed_points``) are never embedded
and are nodata in the output. The DOFA patch-embedding kernel is computed once per run by the encoder's features.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecoalign.aerial.embed import EMBED_PREFIX
from ecoalign.core.errors import EcoalignInputError
from ecoalign.data.patches import preprocess_windows, valid_mask
from ecoalign.encoders.base import WindowEncoder
from ecoalign.mapping.loading import encoder_from_plan, model_from_plan
from ecoalign.mapping.plan import GDAL_CACHE_MB, Block, MapPlan, window_centres


@dataclass
class BlockInput:
    """The valid windows of a block: raw pixels of their union and where each window sits."""

    block: Block
    pixels: np.ndarray | None  # (bands, in_h, in_w) float32, NaN where invalid; None when no window is valid
    valid_windows: np.ndarray  # (h, w) bool


def read_block(plan: MapPlan, block: Block) -> BlockInput:
    """One read for all windows of a block; windows above the nodata fraction are marked invalid."""
    import rasterio
    from rasterio.windows import Window

    s, k = plan.stride_px, plan.window_px
    win = Window(block.col_off * s, block.row_off * s, (block.width - 1) * s + k, (block.height - 1) * s + k)
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(plan.raster) as src:
            arr = src.read(window=win, out_dtype="float32")
    except rasterio.errors.RasterioIOError as exc:
        raise EcoalignInputError(f"cannot read the raster (truncated or corrupt?): {exc}", path=plan.raster,
                                 where=f"pixels {win}") from exc
    valid_px = valid_mask(arr, plan.input_nodata)
    ok = _invalid_fraction(~valid_px, k, s, block.height, block.width) <= plan.max_nodata_fraction
    if not ok.any():
        return BlockInput(block, None, ok)
    arr[:, ~valid_px] = np.nan
    return BlockInput(block, arr, ok)


def _invalid_fraction(invalid: np.ndarray, k: int, s: int, h: int, w: int) -> np.ndarray:
    """(h, w) fraction of invalid pixels in each k x k window at stride s, from an integral image (O(pixels))."""
    ii = np.zeros((invalid.shape[0] + 1, invalid.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(invalid, axis=0), axis=1, out=ii[1:, 1:])
    r, c = np.arange(h)[:, None] * s, np.arange(w)[None, :] * s
    return (ii[r + k, c + k] - ii[r, c + k] - ii[r + k, c] + ii[r, c]) / float(k * k)


def embed_windows(plan: MapPlan, pixels: np.ndarray, rows: np.ndarray, cols: np.ndarray, encoder: WindowEncoder,
                  batch_size: int = 32, device=None, autocast: bool = False) -> np.ndarray:
    """Embeddings of the windows at block-relative output pixels, exactly as ``embed_points`` builds them:
    ``preprocess_windows`` with the plan's band standardisation, then the encoder's features and head."""
    import torch

    s, k = plan.stride_px, plan.window_px
    out = []
    for start in range(0, len(rows), batch_size):
        r, c = rows[start:start + batch_size], cols[start:start + batch_size]
        wins = np.stack([pixels[:, i * s:i * s + k, j * s:j * s + k] for i, j in zip(r, c)])
        x = preprocess_windows(wins, plan.band_mean, plan.band_std, input_px=plan.input_px)
        if device is not None:
            x = x.to(device, non_blocking=True)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=autocast):
            feats = encoder.features(x)
        out.append(np.asarray(encoder.head(feats.float().cpu().numpy()), dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict_features(model, task: str, X) -> np.ndarray:
    """(n, targets): presence probability for presence tasks, the predicted value for abundance."""
    if task == "abundance":
        return np.asarray(model.predict(X), dtype=np.float64).reshape(len(X), -1)
    return np.asarray(model.predict_proba(X), dtype=np.float64)


def output_bands(plan: MapPlan) -> list[tuple[str, str]]:
    """(species, kind) of each band a block holds: the prediction of every target (kind ``probability``, or
    ``value`` for abundance models and raw zero-shot similarity, ``suitability`` for zero-shot maps), then, when ``plan.extra["spread"]``, the
    ensemble's standard deviation of every target (kind ``sd``)."""
    kind = {"abundance": "value", "similarity": "value", "suitability": "suitability"}.get(plan.task, "probability")
    bands = [(t, kind) for t in plan.targets]
    if plan.extra.get("spread"):
        bands += [(t, "sd") for t in plan.targets]
    return bands


def predict_outputs(model, plan: MapPlan, X) -> np.ndarray:
    """(n, bands) in the order of ``output_bands``: ``predict_features`` of the plan's targets, then their spread.
    Plans without ``extra["outputs"]`` (``plan_map`` alone, e.g. the xarray accessor) give every model target."""
    if not plan.extra.get("outputs"):
        return predict_features(model, plan.task, X)
    from ecoalign.sdm.outputs import predict_with_spread

    values, sd = predict_with_spread(model, plan.task, X, species=plan.targets, spread=plan.extra.get("spread"))
    if plan.extra.get("spread"):
        if sd is None:
            raise EcoalignInputError("the plan asks for the ensemble's spread but the model gives none",
                                     path=plan.bundle, expected="a plan made by map_raster for this bundle")
        values = np.concatenate([values, sd], axis=1)
    return values


def predict_block(plan: MapPlan, data: BlockInput, *, encoder=None, model=None, batch_size: int = 32,
                  device=None, autocast: bool = False) -> np.ndarray:
    """(bands, h, w) float32 of one block from its input (``output_bands``: one per target, plus the ensemble's
    spread when the plan asks); nodata for invalid windows or env-raster gaps."""
    import pandas as pd

    block = data.block
    out = np.full((len(output_bands(plan)), block.height, block.width), plan.nodata, dtype=np.float32)
    rows, cols = np.nonzero(data.valid_windows)
    if len(rows) == 0:
        return out
    model = model if model is not None else model_from_plan(plan)
    parts = []
    if plan.extra.get("uses_embeddings", True):
        encoder = encoder if encoder is not None else encoder_from_plan(plan)
        emb = embed_windows(plan, data.pixels, rows, cols, encoder, batch_size, device, autocast)
        parts.append(pd.DataFrame(emb, columns=[f"{EMBED_PREFIX}{j:03d}" for j in range(emb.shape[1])]))
    keep = np.ones(len(rows), dtype=bool)
    if plan.env_rasters:
        xy = window_centres(plan, rows + block.row_off, cols + block.col_off)
        env, keep = env_values(plan, xy)
        parts.append(env)
    X = pd.concat(parts, axis=1)[plan.features]
    if keep.any():
        pred = predict_outputs(model, plan, X[keep])
        out[:, rows[keep], cols[keep]] = pred.T.astype(np.float32)
    return out


def env_values(plan: MapPlan, xy: np.ndarray):
    """(DataFrame, valid) of the plan's environmental rasters at window centres ``xy`` (plan CRS), read by window:
    per raster, the centres are transformed to its CRS in one call (pyproj, as ``GeoDataFrame.to_crs``) and one window
    covering them is read (masked); each centre takes the pixel that holds it (nearest). These are the values
    ``ecoalign.sdm.sites.sample_rasters`` gives at the same points (the fit's sampling): the same floor(row, col)
    of the same transform, NaN outside the raster or on nodata. Not warped to the map grid (WarpedVRT): GDAL's
    approximate transformer may move a centre across a pixel edge, and the values would differ from the fit's."""
    import pandas as pd
    import rasterio
    from pyproj import CRS, Transformer
    from rasterio.transform import rowcol
    from rasterio.windows import Window

    cols_out, valid = {}, np.ones(len(xy), dtype=bool)
    for r in plan.env_rasters:
        path = r["path"]
        try:
            with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(path) as src:
                if src.crs is None:
                    raise EcoalignInputError("the environmental raster has no CRS", path=path)
                xs, ys = xy[:, 0], xy[:, 1]
                if rasterio.crs.CRS.from_wkt(plan.crs) != src.crs and len(xs):  # as GeoDataFrame.to_crs does
                    tr = Transformer.from_crs(CRS.from_user_input(plan.crs), CRS.from_user_input(src.crs.to_wkt()),
                                              always_xy=True)
                    xs, ys = (np.asarray(v, dtype=np.float64) for v in tr.transform(xs, ys))
                rr, cc = (np.asarray(v, dtype=np.int64) for v in rowcol(src.transform, xs, ys)) if len(xs) else \
                    (np.zeros(0, np.int64), np.zeros(0, np.int64))
                left, bottom, right, top = src.bounds
                inside = (rr >= 0) & (rr < src.height) & (cc >= 0) & (cc < src.width) & np.isfinite(xs) & \
                    (xs >= left) & (xs <= right) & (ys >= bottom) & (ys <= top)
                arr = np.full(len(xy), np.nan, dtype=np.float64)
                if inside.any():
                    r0, r1, c0, c1 = rr[inside].min(), rr[inside].max(), cc[inside].min(), cc[inside].max()
                    win = Window(int(c0), int(r0), int(c1 - c0 + 1), int(r1 - r0 + 1))
                    data = src.read(int(r.get("band", 1)), window=win, masked=True)
                    picked = data[rr[inside] - r0, cc[inside] - c0]
                    vals = np.ma.filled(picked.astype(np.float64), np.nan)
                    arr[inside] = vals
        except rasterio.errors.RasterioIOError as exc:
            raise EcoalignInputError(f"cannot read the environmental raster: {exc}", path=path,
                                     where=f"'{r.get('name')}'") from exc
        cols_out[r.get("name", Path(path).stem)] = arr
        valid &= ~np.isnan(arr)
    return pd.DataFrame(cols_out), valid


def compute_block(plan: MapPlan, block: Block, *, encoder=None, model=None, batch_size: int = 32) -> np.ndarray:
    """(bands, h, w) float32 for one block (``output_bands``); loads encoder/model from the plan (cached per
    process) when not given."""
    return predict_block(plan, read_block(plan, block), encoder=encoder, model=model, batch_size=batch_size)
