"""Planning a map: the window grid over a raster, cut into blocks, checked against the encoder and the model.

A window of the model's ground patch size slides over the raster with a stride that sets the output resolution;
one output pixel holds the prediction of the window centred on it. The raster is cut into blocks of output pixels.
A ``MapPlan`` holds paths, grids and where the encoder and model come from, never arrays: any process (a Dask
worker) computes any block from it.

CRS policy: the raster must be in the CRS the model was fitted in (``bundle.json`` ``crs``). Windows are not
reprojected: resampling imagery changes the embeddings, so a mismatch is refused with the ``gdalwarp`` command to run.

Band standardisation belongs to the encoder, never to the raster mapped: a map uses the encoder's fixed statistics
(an adapted encoder's, or those given for frozen DOFA), else those recorded in the bundle's encoder identity (the
ones ``embed`` fixed for the table the model was fitted on). Only ``plan_windows`` on its own (window embeddings,
the accessor's grid) fixes missing statistics once from the raster it embeds, as ``embed`` does, and records them.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ecoalign.aerial.embed import EMBED_PREFIX
from ecoalign.core.errors import EcoalignInputError
from ecoalign.data.mosaic import resolve_raster
from ecoalign.data.patches import band_stats, open_rasters
from ecoalign.encoders.base import WindowEncoder

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

    raster: str  # a GeoTIFF or VRT (for several tiles, the mosaic VRT ``ecoalign.data.mosaic`` wrote)
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
    tiles: list[str] = field(default_factory=list)  # the tiles of a mosaic (empty for one raster)
    extra: dict = field(default_factory=dict)

    def fingerprint(self) -> dict:
        """What makes two runs produce the same map (the resume ledger is only reused when it matches)."""
        from ecoalign.sdm.bundle_io import bundle_hash

        d = asdict(self)
        d.pop("blocks")
        if self.tiles:  # the mosaic VRT may be rewritten (cache cleared): its tiles say whether the input changed
            d.pop("raster")
            d["raster_size_mtime"] = [[os.stat(t).st_size, os.stat(t).st_mtime_ns] for t in self.tiles]
        else:
            raster = os.stat(self.raster)
            d["raster_size_mtime"] = [raster.st_size, raster.st_mtime_ns]
        d["bundle_sha256"] = bundle_hash(self.bundle) if self.bundle else None  # a zero-shot map has none
        return json.loads(json.dumps(d, default=str))


def _encoder_source(encoder, spec) -> dict | None:
    """How a worker rebuilds the same encoder (``ecoalign.mapping.loading.encoder_from_plan``); None when it
    cannot (then pass the encoder object itself)."""
    adapter, metadata = getattr(encoder, "adapter", None), getattr(encoder, "metadata", None) or {}
    precision = getattr(encoder, "precision", None)
    if isinstance(spec, (str, Path)) and (Path(str(spec)) / "encoder" / "encoder.json").exists():
        return {"run_dir": str(Path(str(spec)).resolve()), "precision": precision}
    if adapter is not None and metadata.get("run_dir"):
        return {"run_dir": metadata["run_dir"], "precision": precision}
    weights = encoder.info.weights
    if adapter is None and (weights == "none" or weights.startswith("DOFA")):
        return {"name": "dofa", "size": encoder.info.size, "weights": weights.rsplit(".", 1)[-1],
                "wavelengths_um": encoder.wavelengths_um, "precision": precision,
                "band_mean": None if encoder.band_mean is None else encoder.band_mean.tolist(),
                "band_std": None if encoder.band_std is None else encoder.band_std.tolist()}
    return None


def _check_window_encoder(encoder) -> None:
    if not isinstance(encoder, WindowEncoder):
        raise EcoalignInputError(f"{encoder!r} does not embed multispectral raster windows",
                                 expected="an image-window encoder: 'dofa' or an `ecoalign adapt` run directory")


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
    for key in ("band_mean", "band_std"):
        theirs, ours = trained.get(key), mine.get(key)
        if theirs is not None and ours is not None and not np.allclose(theirs, ours, rtol=1e-5, atol=0):
            raise EcoalignInputError(
                f"the model was fitted on embeddings standardised with other band statistics ({key}: "
                f"{_short(theirs)} in the bundle vs {_short(ours)} of this encoder)", path=bundle / "bundle.json",
                expected="the statistics `embed` used (leave --band-mean/--band-std unset to take the bundle's)")
    if trained.get("precision") and mine.get("precision") and trained["precision"] != mine["precision"]:
        log.info("the model was fitted on %s embeddings; this map embeds at %s", trained["precision"],
                 mine["precision"])


def _short(values) -> str:
    return "[" + ", ".join(f"{float(v):.6g}" for v in values) + "]"


def _standardised_for_bundle(encoder, meta: dict, bundle: Path, uses_embeddings: bool):
    """The encoder with fixed band statistics for this map: its own, else the bundle's (those `embed` fixed).
    Never the mapped raster's: the same ground gets the same values in any raster (no seams between tiles)."""
    if encoder.band_mean is not None:
        return encoder
    trained = meta.get("encoder") or {}
    if trained.get("band_mean") is not None and trained.get("band_std") is not None:
        log.info("band statistics from the model bundle (those `embed` fixed): mean %s, std %s",
                 _short(trained["band_mean"]), _short(trained["band_std"]))
        return encoder.with_band_stats(trained["band_mean"], trained["band_std"])
    if not uses_embeddings:  # an environmental-raster model: no window is embedded
        return encoder.with_band_stats(np.zeros(len(encoder.wavelengths_um)), np.ones(len(encoder.wavelengths_um)))
    raise EcoalignInputError(
        "frozen DOFA has no band statistics and the bundle records none (fitted on embeddings made before "
        "ecoalign stored them); a map never standardises with the statistics of the raster it maps",
        path=bundle / "bundle.json",
        expected="the statistics the embeddings were made with (an older `embed` used those of all its --raster "
                 "files: ecoalign.data.patches.band_stats): --band-mean M1,M2,... --band-std S1,S2,... "
                 "(Python: band_mean=, band_std=), or re-run `ecoalign embed` and `ecoalign fit`")


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
    centred on it, cut into blocks. Checks the raster (readable, complete, georeferenced, the encoder's bands).

    ``raster``: a GeoTIFF, a GDAL VRT, a glob (``"tiles/*.tif"``) or a list of tiles; several tiles are checked
    (one CRS, bands, resolution and grid) and read as one mosaic VRT (``ecoalign.data.mosaic``)."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.transform import Affine

    _check_window_encoder(encoder)
    raster, tiles = resolve_raster(raster)
    for tile in [Path(t) for t in tiles]:  # every tile complete, with the encoder's bands, before any work
        open_rasters([tile], encoder.wavelengths_um)
        with rasterio.open(tile) as src:
            _check_complete(tile, src)
            _check_band_wavelengths(tile, src, encoder.wavelengths_um)
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
    if encoder.band_mean is None:  # fixed once from the raster being embedded and recorded, as `embed` does
        try:
            mean, std = band_stats([source])
            log.info("frozen DOFA has no band statistics: fixed from %s (mean %s, std %s) and recorded in the "
                     "encoder identity; pass band_mean/band_std to choose them", raster.name, _short(mean), _short(std))
        except EcoalignInputError:  # no valid pixel at all: every window is nodata, nothing is embedded
            mean, std = np.zeros(source.count, np.float32), np.ones(source.count, np.float32)
        encoder = encoder.with_band_stats(mean, std)
    mean, std = encoder.band_mean, encoder.band_std
    return MapPlan(
        raster=str(raster.resolve()), env_rasters=[], window_px=int(window_px), stride_px=int(stride_px),
        window_m=window_m, max_nodata_fraction=float(max_nodata_fraction), input_nodata=source.nodata,
        band_mean=[float(v) for v in mean], band_std=[float(v) for v in std], crs=source.crs.to_wkt(),
        in_transform=tuple(in_transform)[:6], transform=tuple(out_transform)[:6], width=int(width), height=int(height),
        targets=[], task="embedding", features=[], nodata=NODATA, block_px=block_px, blocks=blocks, bundle="",
        encoder_source=_encoder_source(encoder, encoder_spec), encoder_identity=encoder.identity(),
        input_px=int(encoder.input_px), tiles=list(tiles))


def plan_map(encoder, model, raster, *, env_rasters: Sequence = (), stride_m: float | None = None,
             window_m: float | None = None, block_px: int | None = None, max_nodata_fraction: float = 0.5,
             encoder_spec=None, trusted: Sequence[str] = (), loaded: tuple | None = None) -> MapPlan:
    """``plan_windows`` checked against the model bundle: same encoder as for fitting, the model's CRS and
    patch size, its environmental rasters; the targets become the output bands.

    ``encoder`` is an encoder object (``ecoalign.load_encoder``); ``model`` a bundle directory, opened without
    running code from it (``trusted``: type names its estimator file may build beyond ecoalign's list), or
    ``loaded``, the (model, meta) of ``load_bundle`` when the caller has opened it (a second load costs a
    tenth of a small map).
    """
    import dataclasses

    import rasterio

    from ecoalign.sdm.fitting import load_bundle

    bundle = Path(model)
    model_obj, meta = loaded if loaded is not None else load_bundle(bundle, trusted=trusted)
    _check_window_encoder(encoder)
    _check_encoder_matches_bundle(encoder, meta, bundle)
    features = list(meta["features"])
    uses_embeddings = any(f.startswith(EMBED_PREFIX) for f in features)
    encoder = _standardised_for_bundle(encoder, meta, bundle, uses_embeddings)
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
        encoder_identity=plan.encoder_identity if uses_embeddings else None,
        extra={"uses_embeddings": uses_embeddings, "trusted": sorted(map(str, trusted or ()))})


def window_centres(plan: MapPlan, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n, 2) map coordinates of the centres of the windows at output pixels (rows, cols)."""
    a, b, c, d, e, f = plan.transform
    x = c + a * (cols + 0.5) + b * (rows + 0.5)
    y = f + d * (cols + 0.5) + e * (rows + 0.5)
    return np.column_stack([x, y])

