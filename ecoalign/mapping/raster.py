"""``ecoalign map``: a fitted species model over a whole raster, streamed block by block into a Cloud-Optimized GeoTIFF.

A window of the model's ground patch size slides over the raster with a stride that sets the output resolution;
one output pixel holds the prediction of the window centred on it. The raster is cut into blocks of output pixels:
each block reads one input window block (not one read per window), embeds its valid windows in batches (the DOFA
patch-embedding kernel is computed once per run by the encoder's ``DOFAFeatures``) and predicts every target.
Windows whose invalid fraction exceeds ``max_nodata_fraction`` (the rule of ``embed_points``) are never embedded
and are written as nodata. Finished blocks go to an uncompressed tiled GeoTIFF whose tiles are allocated up front
(in-place writes) and are listed in a ledger, so a killed run resumes without recomputing them; the finished map is
converted to a COG under a temporary name and renamed into place.

CRS policy: the raster must be in the CRS the model was fitted in (``bundle.json`` ``crs``). Windows are not
reprojected: resampling imagery changes the embeddings, so a mismatch is refused with the ``gdalwarp`` command to run.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError

log = logging.getLogger(__name__)

NODATA = -9999.0
MAX_INPUT_SIDE_PX = 1024  # input pixels per block side: a block holds bands x side^2 float32 (16 MB for 4 bands)
GDAL_CACHE_MB = 64  # GDAL's block cache grows with the raster otherwise


@dataclass(frozen=True)
class Block:
    """A rectangle of output pixels."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def key(self) -> str:
        return f"{self.row_off}_{self.col_off}"


@dataclass
class MapPlan:
    """Everything a worker needs to compute any block: paths, grids and model/encoder sources, never arrays."""

    raster: str
    env_rasters: list[dict]  # [{path, name, band}] in the model's feature order
    window_px: int
    stride_px: int
    window_m: float
    max_nodata_fraction: float
    input_nodata: float | None
    band_mean: list[float]
    band_std: list[float]
    crs: str  # WKT of the raster (and output) CRS
    in_transform: tuple
    transform: tuple  # output grid (affine coefficients a, b, c, d, e, f)
    width: int
    height: int
    targets: list[str]
    task: str
    features: list[str]
    nodata: float
    block_px: int
    blocks: list[Block]
    bundle: str
    encoder_source: dict | None
    encoder_identity: dict | None
    input_px: int = 224
    extra: dict = field(default_factory=dict)

    def fingerprint(self) -> dict:
        """What makes two runs produce the same map (the resume ledger is only reused when it matches)."""
        from ecoalign.core.io import sha256_file

        raster = os.stat(self.raster)
        d = asdict(self)
        d.pop("blocks")
        d["raster_size_mtime"] = [raster.st_size, raster.st_mtime_ns]
        d["bundle_sha256"] = sha256_file(Path(self.bundle) / "model.joblib")
        return json.loads(json.dumps(d, default=str))


# --------------------------------------------------------------------------------------------------------------
# loading the encoder and the model (in the main process or, from the plan's sources, in a worker)

_PROCESS_CACHE: dict[str, object] = {}


def _encoder_source(encoder, spec) -> dict | None:
    """How a worker rebuilds the same encoder; None when it cannot (then pass the encoder object itself)."""
    if isinstance(spec, (str, Path)):
        path = Path(str(spec))
        if (path / "encoder" / "encoder.json").exists():
            return {"run_dir": str(path.resolve())}
    if encoder.adapter is not None and encoder.metadata.get("run_dir"):
        return {"run_dir": encoder.metadata["run_dir"]}
    weights = encoder.info.weights
    if encoder.adapter is None and (weights == "none" or weights.startswith("DOFA")):
        return {"name": "dofa", "size": encoder.info.size, "weights": weights.rsplit(".", 1)[-1],
                "wavelengths_um": encoder.wavelengths_um,
                "band_mean": None if encoder.band_mean is None else encoder.band_mean.tolist(),
                "band_std": None if encoder.band_std is None else encoder.band_std.tolist()}
    return None


def resolve_encoder(encoder, wavelengths_um: Sequence[float] | None = None, bundle=None, weights: str | None = None):
    """An encoder object from an object, an adapt run directory, or ``dofa``/``dofa-small``/``dofa-base``; frozen
    DOFA takes its size, weights and wavelengths from the bundle's encoder unless given."""
    from ecoalign.encoders.registry import load_encoder

    if not isinstance(encoder, (str, Path)):
        return encoder
    name = str(encoder)
    if not name.startswith("dofa") or Path(name).exists():
        return load_encoder(encoder)
    trained = {}
    if bundle is not None:
        from ecoalign.sdm.fitting import load_bundle

        trained = load_bundle(bundle)[1].get("encoder") or {}
    backbone = trained.get("backbone", {})
    size = name.partition("-")[2] or backbone.get("size") or "base"
    if weights is None:
        label = str(backbone.get("weights") or "none")
        if label != "none" and not label.startswith("DOFA"):
            raise EcoalignInputError(f"the model's embeddings came from DOFA with the checkpoint file '{label}'",
                                     path=bundle, expected="--weights /path/to/that checkpoint")
        weights = label.rsplit(".", 1)[-1]
    wavelengths_um = wavelengths_um or trained.get("wavelengths_um")
    return load_encoder("dofa", size=size, weights=weights, wavelengths_um=wavelengths_um)


def _cached(key: str, build):
    if key not in _PROCESS_CACHE:
        _PROCESS_CACHE[key] = build()
    return _PROCESS_CACHE[key]


def _encoder_from_plan(plan: MapPlan):
    from ecoalign.encoders.registry import load_encoder

    src = plan.encoder_source
    if src is None:
        raise EcoalignInputError("this encoder cannot be rebuilt in a worker process (loaded from a checkpoint file)",
                                 expected="an adapt run directory or 'dofa' with torchgeo weights, or the single-process path")

    def build():
        if "run_dir" in src:
            enc = load_encoder(src["run_dir"])
        else:
            enc = load_encoder("dofa", size=src["size"], weights=src["weights"], wavelengths_um=src["wavelengths_um"],
                               band_mean=src["band_mean"], band_std=src["band_std"])
        if plan.encoder_identity is not None and enc.identity() != plan.encoder_identity:
            raise EcoalignInputError("the encoder rebuilt in this worker differs from the one planned",
                                     expected=json.dumps(plan.encoder_identity)[:200])
        return enc

    return _cached("encoder:" + json.dumps(src, sort_keys=True), build)


def _model_from_plan(plan: MapPlan):
    from ecoalign.sdm.fitting import load_bundle

    from ecoalign.core.io import sha256_file

    # keyed on the model's content: a long-lived worker must not serve a bundle re-fitted into the same folder
    model_sha = sha256_file(Path(plan.bundle) / "model.joblib")
    return _cached(f"model:{Path(plan.bundle).resolve()}:{model_sha}", lambda: load_bundle(plan.bundle)[0])


# --------------------------------------------------------------------------------------------------------------
# planning

def _check_encoder_matches_bundle(encoder, meta: dict, bundle: Path) -> None:
    trained = meta.get("encoder")
    if not trained:
        return
    mine = encoder.identity()
    for key in ("kind", "embed_dim", "wavelengths_um", "adapter_sha256"):
        if key in trained and trained.get(key) != mine.get(key):
            raise EcoalignInputError(f"the model was fitted on embeddings of another encoder ({key}: "
                                     f"{trained.get(key)} vs this encoder's {mine.get(key)})", path=bundle,
                                     expected="the encoder (and band wavelengths) used for `ecoalign embed` before `fit`")
    tb, mb = trained.get("backbone", {}), mine.get("backbone", {})
    for key in ("size", "weights", "weights_sha256"):
        if tb.get(key) != mb.get(key):
            raise EcoalignInputError(f"the model was fitted on embeddings of another backbone ({key}: {tb.get(key)} "
                                     f"vs {mb.get(key)})", path=bundle, expected="the same DOFA size and weights")


def _check_band_wavelengths(path: Path, src, wavelengths_um: Sequence[float]) -> None:
    """Bands that declare a wavelength (GDAL band metadata) must match the encoder's, band by band."""
    for b, expected in enumerate(wavelengths_um, start=1):
        tags = {k.lower(): v for k, v in {**src.tags(b), **src.tags(b, ns="IMAGERY")}.items()}
        value = tags.get("central_wavelength_um") or tags.get("wavelength_um")
        if value is None and "wavelength" in tags:
            unit = tags.get("wavelength_units", "micrometers").lower()
            value = float(tags["wavelength"]) / (1000.0 if unit.startswith("nano") else 1.0)
        if value is not None and abs(float(value) - expected) > 0.01:
            raise EcoalignInputError(f"band {b} is at {float(value):g} µm but the encoder expects {expected:g} µm",
                                     path=path, where=f"band {b}",
                                     expected=f"bands in the encoder's order {list(wavelengths_um)} µm")


def _check_complete(path: Path, src) -> None:
    """A truncated GeoTIFF opens fine and fails mid-run; its last block's end beyond the file size shows it up front."""
    if src.driver != "GTiff":
        return
    rows, cols = src.block_shapes[0]
    last_col, last_row = -(-src.width // cols) - 1, -(-src.height // rows) - 1
    size = os.path.getsize(path)
    for b in range(1, src.count + 1):
        off = src.get_tag_item(f"BLOCK_OFFSET_{last_col}_{last_row}", "TIFF", bidx=b)
        length = src.get_tag_item(f"BLOCK_SIZE_{last_col}_{last_row}", "TIFF", bidx=b)
        if off and length and int(off) + int(length) > size:
            raise EcoalignInputError(f"the GeoTIFF is truncated: band {b}'s last block ends at byte "
                                     f"{int(off) + int(length)} but the file has {size} bytes", path=path,
                                     expected="a complete file (copy or download it again)")


def _env_rasters(meta: dict, env_rasters: Sequence) -> list[dict]:
    """The model's environmental rasters, with paths replaced by the user's (by ``name=path`` or by order)."""
    specs = [dict(r) for r in (meta.get("spec", {}).get("features", {}).get("rasters") or [])]
    for r in specs:
        r.setdefault("name", Path(r["path"]).stem)
    given = list(env_rasters or [])
    if given and len(given) != len(specs):
        raise EcoalignInputError(f"{len(given)} environmental raster(s) given but the model uses {len(specs)} "
                                 f"({[r['name'] for r in specs]})", expected="one --env-rasters entry per model raster")
    for i, g in enumerate(given):
        name, sep, path = str(g).partition("=")
        if sep:
            match = [r for r in specs if r["name"] == name]
            if not match:
                raise EcoalignInputError(f"the model has no environmental raster named '{name}'",
                                         expected=f"one of {[r['name'] for r in specs]}")
            match[0]["path"] = path
        else:
            specs[i]["path"] = str(g)
    for r in specs:
        if not Path(r["path"]).exists():
            raise EcoalignInputError(f"environmental raster '{r['name']}' not found", path=r["path"],
                                     expected="--env-rasters NAME=PATH for rasters that moved")
    return specs


def _block_px(window_px: int, stride_px: int) -> int:
    fit = (MAX_INPUT_SIDE_PX - window_px) // stride_px + 1
    return int(min(64, max(1, fit)))


def plan_windows(encoder, raster, *, window_m: float | None = None, stride_m: float | None = None,
                 block_px: int | None = None, max_nodata_fraction: float = 0.5, encoder_spec=None) -> MapPlan:
    """The window grid over a raster without a species model (``targets`` empty): one output pixel per window,
    centred on it, cut into blocks. Checks the raster (readable, complete, georeferenced, the encoder's bands)."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.transform import Affine

    from ecoalign.data.patches import band_stats, open_rasters

    raster = Path(raster)
    source = open_rasters([raster], encoder.wavelengths_um)[0]
    try:
        with rasterio.open(raster) as src:
            _check_complete(raster, src)
            _check_band_wavelengths(raster, src, encoder.wavelengths_um)
            in_transform, width_px, height_px = src.transform, src.width, src.height
    except RasterioIOError as exc:
        raise EcoalignInputError(f"cannot read the raster: {exc}", path=raster) from exc
    res = abs(in_transform.a)
    if in_transform.b or in_transform.d or abs(res - abs(in_transform.e)) > 1e-6 * res:
        raise EcoalignInputError("the raster is rotated or has non-square pixels", path=raster,
                                 expected="a north-up raster with square pixels")
    window_px = max(1, round(float(window_m or encoder.patch_size_m or 100.0) / res))
    window_m = window_px * res  # the ground size actually read
    stride_px = window_px if stride_m is None else max(1, round(float(stride_m) / res))
    if window_px > min(width_px, height_px):
        raise EcoalignInputError(f"the raster ({width_px}x{height_px} px) is smaller than one {window_m:g} m window "
                                 f"({window_px} px)", path=raster, expected="a raster larger than one window")
    width = (width_px - window_px) // stride_px + 1
    height = (height_px - window_px) // stride_px + 1
    offset = (window_px - stride_px) / 2.0  # output pixel centred on its window
    out_transform = in_transform @ Affine.translation(offset, offset) @ Affine.scale(stride_px)
    block_px = int(block_px or _block_px(window_px, stride_px))
    blocks = [Block(r, c, min(block_px, height - r), min(block_px, width - c))
              for r in range(0, height, block_px) for c in range(0, width, block_px)]
    if encoder.band_mean is not None:
        mean, std = encoder.band_mean, encoder.band_std
    else:
        try:
            mean, std = band_stats([source])  # the same standardisation embed_points applies
        except EcoalignInputError:  # no valid pixel at all: every window is nodata, nothing is embedded
            mean, std = np.zeros(source.count, np.float32), np.ones(source.count, np.float32)
    return MapPlan(
        raster=str(raster.resolve()), env_rasters=[], window_px=int(window_px), stride_px=int(stride_px),
        window_m=window_m, max_nodata_fraction=float(max_nodata_fraction), input_nodata=source.nodata,
        band_mean=[float(v) for v in mean], band_std=[float(v) for v in std], crs=source.crs.to_wkt(),
        in_transform=tuple(in_transform)[:6], transform=tuple(out_transform)[:6], width=int(width), height=int(height),
        targets=[], task="embedding", features=[], nodata=NODATA, block_px=block_px, blocks=blocks, bundle="",
        encoder_source=_encoder_source(encoder, encoder_spec), encoder_identity=encoder.identity(),
        input_px=int(encoder.info.input_px))


def plan_map(encoder, model, raster, *, env_rasters: Sequence = (), stride_m: float | None = None,
             window_m: float | None = None, block_px: int | None = None, max_nodata_fraction: float = 0.5,
             encoder_spec=None) -> MapPlan:
    """``plan_windows`` checked against the model bundle: same encoder as for fitting, the model's CRS and
    patch size, its environmental rasters; the targets become the output bands.

    ``encoder`` is an encoder object (``ecoalign.load_encoder``); ``model`` a bundle directory.
    """
    import dataclasses

    import rasterio

    from ecoalign.sdm.fitting import load_bundle
    from ecoalign.aerial.embed import EMBED_PREFIX

    bundle = Path(model)
    model_obj, meta = load_bundle(bundle)
    _check_encoder_matches_bundle(encoder, meta, bundle)
    trained_window = meta.get("patch_size_m")
    plan = plan_windows(encoder, raster, window_m=window_m or trained_window, stride_m=stride_m, block_px=block_px,
                        max_nodata_fraction=max_nodata_fraction, encoder_spec=encoder_spec)
    res = abs(plan.in_transform[0])
    if window_m is not None and trained_window and abs(window_m - trained_window) > res:
        raise EcoalignInputError(f"window of {window_m} m but the model was fitted on {trained_window} m patches",
                                 expected="the model's patch size (leave the window unset)")
    crs = rasterio.crs.CRS.from_wkt(plan.crs)
    if meta.get("crs") and rasterio.crs.CRS.from_user_input(meta["crs"]) != crs:
        epsg = rasterio.crs.CRS.from_user_input(meta["crs"]).to_string()
        raise EcoalignInputError(
            f"the raster is in {crs.to_string()} but the model was fitted in {epsg}; windows are not "
            f"reprojected because resampled imagery gives other embeddings", path=raster,
            expected=f"a raster in {epsg} (e.g. gdalwarp -t_srs {epsg} -r bilinear in.tif out.tif)")
    features = list(meta["features"])
    uses_embeddings = any(f.startswith(EMBED_PREFIX) for f in features)
    envs = _env_rasters(meta, env_rasters)
    known = {f"{EMBED_PREFIX}{j:03d}" for j in range(encoder.embed_dim)} | {r["name"] for r in envs}
    unknown = [f for f in features if f not in known]
    if unknown:
        raise EcoalignInputError(f"the model uses features that cannot be mapped from rasters: {unknown[:5]}",
                                 path=bundle, expected="a model on embeddings and environmental rasters only")
    return dataclasses.replace(
        plan, env_rasters=envs, targets=[str(s) for s in model_obj[-1].species_],
        task=str(meta.get("task", "presence_absence")), features=features, bundle=str(bundle.resolve()),
        encoder_source=plan.encoder_source if uses_embeddings else None,
        encoder_identity=plan.encoder_identity if uses_embeddings else None, extra={"uses_embeddings": uses_embeddings})


# --------------------------------------------------------------------------------------------------------------
# one block

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

    from ecoalign.data.patches import _valid_mask

    s, k = plan.stride_px, plan.window_px
    win = Window(block.col_off * s, block.row_off * s, (block.width - 1) * s + k, (block.height - 1) * s + k)
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(plan.raster) as src:
            arr = src.read(window=win, out_dtype="float32")
    except rasterio.errors.RasterioIOError as exc:
        raise EcoalignInputError(f"cannot read the raster (truncated or corrupt?): {exc}", path=plan.raster,
                                 where=f"pixels {win}") from exc
    valid_px = _valid_mask(arr, plan.input_nodata)
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


def window_centres(plan: MapPlan, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n, 2) map coordinates of the centres of the windows at output pixels (rows, cols)."""
    a, b, c, d, e, f = plan.transform
    x = c + a * (cols + 0.5) + b * (rows + 0.5)
    y = f + d * (cols + 0.5) + e * (rows + 0.5)
    return np.column_stack([x, y])


def embed_windows(plan: MapPlan, pixels: np.ndarray, rows: np.ndarray, cols: np.ndarray, encoder,
                  batch_size: int = 32, device=None, autocast: bool = False) -> np.ndarray:
    """Embeddings of the windows at block-relative output pixels, exactly as ``embed_points`` builds them:
    standardise, invalid pixels at the band mean, resample to the backbone's input size, features, head."""
    import torch
    import torch.nn.functional as F

    s, k = plan.stride_px, plan.window_px
    mean = np.asarray(plan.band_mean, np.float32)[:, None, None]
    std = np.asarray(plan.band_std, np.float32)[:, None, None]
    out = []
    for start in range(0, len(rows), batch_size):
        r, c = rows[start:start + batch_size], cols[start:start + batch_size]
        wins = np.stack([pixels[:, i * s:i * s + k, j * s:j * s + k] for i, j in zip(r, c)])
        x = torch.from_numpy(np.nan_to_num((wins - mean) / std, nan=0.0))
        if x.shape[-1] != plan.input_px:
            x = F.interpolate(x, size=(plan.input_px, plan.input_px), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > plan.input_px)
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


def predict_block(plan: MapPlan, data: BlockInput, *, encoder=None, model=None, batch_size: int = 32,
                  device=None, autocast: bool = False) -> np.ndarray:
    """(targets, h, w) float32 of one block from its input; nodata for invalid windows or env-raster gaps."""
    import geopandas as gpd
    import pandas as pd

    from ecoalign.sdm.sites import sample_rasters
    from ecoalign.aerial.embed import EMBED_PREFIX

    block = data.block
    out = np.full((len(plan.targets), block.height, block.width), plan.nodata, dtype=np.float32)
    rows, cols = np.nonzero(data.valid_windows)
    if len(rows) == 0:
        return out
    model = model if model is not None else _model_from_plan(plan)
    parts = []
    if plan.extra.get("uses_embeddings", True):
        encoder = encoder if encoder is not None else _encoder_from_plan(plan)
        emb = embed_windows(plan, data.pixels, rows, cols, encoder, batch_size, device, autocast)
        parts.append(pd.DataFrame(emb, columns=[f"{EMBED_PREFIX}{j:03d}" for j in range(emb.shape[1])]))
    keep = np.ones(len(rows), dtype=bool)
    if plan.env_rasters:
        xy = window_centres(plan, rows + block.row_off, cols + block.col_off)
        pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=plan.crs)
        env, keep = sample_rasters(pts, plan.env_rasters)
        parts.append(env.reset_index(drop=True))
    X = pd.concat(parts, axis=1)[plan.features]
    if keep.any():
        pred = predict_features(model, plan.task, X[keep])
        out[:, rows[keep], cols[keep]] = pred.T.astype(np.float32)
    return out


def compute_block(plan: MapPlan, block: Block, *, encoder=None, model=None, batch_size: int = 32) -> np.ndarray:
    """(targets, h, w) float32 for one block; loads encoder/model from the plan (cached per process) when not given."""
    return predict_block(plan, read_block(plan, block), encoder=encoder, model=model, batch_size=batch_size)


# --------------------------------------------------------------------------------------------------------------
# the whole map: resumable partial file, then an atomic COG

class _Partial:
    """``<out>.partial/``: an uncompressed tiled GeoTIFF with all tiles allocated (blocks are written in place)
    and a ledger of finished blocks, valid only for the plan fingerprint stored beside it."""

    def __init__(self, out: Path, plan: MapPlan):
        self.dir = out.with_name(out.name + ".partial")
        self.tif = self.dir / "map.tif"
        self.ledger = self.dir / "ledger.jsonl"
        self.plan = plan

    def open(self) -> set[str]:
        """Keys of finished blocks (empty for a fresh start)."""
        import shutil

        from ecoalign.core.io import write_json

        fingerprint = self.plan.fingerprint()
        stored = self.dir / "plan.json"
        if stored.exists() and self.tif.exists() and json.loads(stored.read_text()) == fingerprint:
            done = set()
            for line in self.ledger.read_text().splitlines() if self.ledger.exists() else []:
                try:
                    done.add(json.loads(line)["block"])
                except (ValueError, KeyError):  # a line torn by a kill: that block is recomputed
                    pass
            return done
        if self.dir.exists():
            log.warning("discarding a partial map made with other inputs: %s", self.dir)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self._create()
        write_json(stored, fingerprint)  # last: a partial without plan.json is discarded and recreated
        return set()

    def _create(self) -> None:
        import rasterio
        from rasterio.transform import Affine

        p = self.plan
        tile = int(min(512, 16 * -(-p.block_px // 16)))
        profile = {"driver": "GTiff", "width": p.width, "height": p.height, "count": len(p.targets),
                   "dtype": "float32", "crs": p.crs, "transform": Affine(*p.transform), "nodata": p.nodata,
                   "tiled": True, "blockxsize": tile, "blockysize": tile, "compress": "none", "sparse_ok": False,
                   "interleave": "band", "bigtiff": "if_safer"}
        with rasterio.open(self.tif, "w", **profile) as dst:
            for i, name in enumerate(p.targets, start=1):
                dst.set_band_description(i, name)
            dst.update_tags(ecoalign=json.dumps(_map_metadata(p)))

    def write(self, block: Block, values: np.ndarray) -> None:
        import rasterio
        from rasterio.windows import Window

        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(self.tif, "r+") as dst:
            dst.write(values, window=Window(block.col_off, block.row_off, block.width, block.height))
        with open(self.ledger, "a") as f:  # recorded only once the block is on disk
            f.write(json.dumps({"block": block.key}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _map_metadata(plan: MapPlan) -> dict:
    identity = plan.encoder_identity or {}
    return {"bundle": plan.bundle, "targets": plan.targets, "task": plan.task, "window_m": plan.window_m,
            "stride_m": plan.stride_px * abs(plan.in_transform[0]), "raster": plan.raster,
            "max_nodata_fraction": plan.max_nodata_fraction, "encoder": identity,
            "random_weights": bool(identity.get("backbone", {}).get("random_weights", False))}


def _finalise(partial: _Partial, out: Path) -> None:
    """Partial GeoTIFF -> tiled, DEFLATE-compressed COG with overviews, renamed into place atomically."""
    import rasterio
    import rasterio.shutil

    from ecoalign.core.io import atomic_path

    with atomic_path(out) as tmp, rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        rasterio.shutil.copy(partial.tif, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=256,
                             OVERVIEW_RESAMPLING="AVERAGE", BIGTIFF="IF_SAFER", NUM_THREADS=1)


def write_quicklook(path: str | Path, out_png: str | Path | None = None, max_side: int = 512) -> Path:
    """A PNG mosaic with one panel and colour bar per band, from a decimated read (overviews) of the map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio

    from ecoalign.core.io import atomic_path

    path = Path(path)
    out_png = Path(out_png) if out_png else path.with_name(path.stem + "_quicklook.png")
    with rasterio.open(path) as src:
        scale = max(1.0, max(src.width, src.height) / max_side)
        shape = (src.count, max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        arr = src.read(out_shape=shape, masked=True)
        names = [d or f"band {i + 1}" for i, d in enumerate(src.descriptions)]
    n = len(names)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, band, name in zip(axes.flat, arr, names):
        im = ax.imshow(band, cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, shrink=0.8)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_png


def _prefetched(plan: MapPlan, blocks: Sequence[Block], depth: int = 2) -> Iterator[BlockInput]:
    """Read the next blocks in a background thread while the current one is embedded (rasterio releases the GIL)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecoalign-read") as pool:
        pending = deque()
        it = iter(blocks)
        for b in it:
            pending.append(pool.submit(read_block, plan, b))
            if len(pending) > depth:
                break
        while pending:
            data = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(read_block, plan, nxt))
            yield data


def _device_setup(encoder, device):
    """CUDA when available (bf16 autocast there; untested in CI, which has no GPU); CPU float32 otherwise."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type != "cpu":
        encoder.model.to(device)
    return (None if device.type == "cpu" else device), device.type == "cuda"


def map_raster(encoder, model, raster, out, *, env_rasters: Sequence = (), stride_m: float | None = None,
               batch_size: int = 32, overwrite: bool = False, scheduler: str | None = None, workers: int | None = None,
               quicklook: bool = True, progress: bool = True, max_nodata_fraction: float = 0.5,
               block_px: int | None = None, wavelengths_um: Sequence[float] | None = None, weights: str | None = None,
               device=None) -> Path:
    """Map a species-model bundle over a raster into a COG (one band per target); resumes a killed run.

    ``encoder``: an encoder object, an adapt run directory, or ``dofa``/``dofa-small``/``dofa-base`` (size, weights
    and wavelengths default to the bundle's encoder; ``weights`` is a torchgeo enum name or a checkpoint path).
    ``scheduler`` (a dask address) or ``workers=N`` computes blocks with ``ecoalign.mapping.distributed``; this process
    always writes, so the output is the same file as the single-process one.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists() and not overwrite:
        raise EcoalignInputError("the output exists", path=out, expected="another --out, or --overwrite to replace it")
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise EcoalignInputError("the output must be a GeoTIFF", path=out, expected="a path ending in .tif")
    spec = encoder
    encoder = resolve_encoder(encoder, wavelengths_um, model, weights)
    plan = plan_map(encoder, model, raster, env_rasters=env_rasters, stride_m=stride_m, block_px=block_px,
                    max_nodata_fraction=max_nodata_fraction, encoder_spec=spec)
    partial = _Partial(out, plan)
    done = partial.open()
    todo = [b for b in plan.blocks if b.key not in done]
    log.info("map %dx%d px (%d target(s), window %g m = %d px, stride %d px) in %d block(s); %d already done%s",
             plan.width, plan.height, len(plan.targets), plan.window_m, plan.window_px, plan.stride_px,
             len(plan.blocks), len(done), f", resuming from {partial.dir}" if done else "")
    bar = tqdm(total=len(plan.blocks), initial=len(plan.blocks) - len(todo), unit="block", disable=not progress,
               desc="ecoalign map")
    if scheduler is not None or workers:
        from ecoalign.mapping.distributed import compute_blocks

        results = compute_blocks(plan, todo, scheduler=scheduler, workers=workers, batch_size=batch_size)
    else:
        from ecoalign.sdm.fitting import load_bundle

        fitted = load_bundle(plan.bundle)[0]
        dev, autocast = _device_setup(encoder, device)
        results = ((d.block, predict_block(plan, d, encoder=encoder, model=fitted, batch_size=batch_size,
                                           device=dev, autocast=autocast)) for d in _prefetched(plan, todo))
    for block, values in results:
        partial.write(block, values)
        bar.update(1)
    bar.close()
    _finalise(partial, out)
    if quicklook:
        png = write_quicklook(out)
        log.info("quicklook: %s", png)
    import shutil

    shutil.rmtree(partial.dir)
    log.info("wrote %s", out)
    return out
