"""The map on disk: finished blocks go to an uncompressed tiled GeoTIFF whose tiles are allocated up front
(in-place writes) and are listed in a ledger, so a killed run resumes without recomputing them; the finished map
is converted to a COG under a temporary name and renamed into place, with a PNG quicklook beside it.

Layout (a GeoTIFF has one data type for all its bands, so presence/absence gets a file of its own):

``<out>.tif`` (float32, nodata -9999)
    bands 1..S: the prediction of each species (presence probability / suitability; the value for abundance
    models), described by the species name; then, for ensembles, bands S+1..2S: the standard deviation between
    the ensemble's members, described ``"<species>: sd"``. Tag ``ecoalign`` (JSON): bundle, grid, encoder,
    ``bands`` (band -> species, kind), ``uncertainty`` (what the spread is over, or why there is none) and
    ``presence`` (rule and thresholds, or why no presence map was written).
``<out stem>_presence.tif`` (uint8, nodata 255)
    band i: 1 where band i of the map >= the species' threshold (the stored float32 value, compared in float64),
    0 below, 255 where the map is nodata; described ``"<species>: presence"``, band tags ``threshold``, ``rule``.
``<out stem>_quicklook.png``
    one row per species: probability, spread and presence side by side, colour bars and a scale bar.

The presence file is written from each block as it is written to the map (same ledger, same resume), and
finalised before the map: the map under its final name marks a finished run.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ecoalign.core.io import atomic_path, write_json
from ecoalign.mapping.blocks import output_bands
from ecoalign.mapping.plan import GDAL_CACHE_MB, Block, MapPlan

log = logging.getLogger(__name__)

PRESENCE_NODATA = 255
MAX_QUICKLOOK_SPECIES = 24  # rows of the quicklook; more species: map a --species subset to see them


def presence_path(out: str | Path) -> Path:
    """``<stem>_presence.tif`` beside the map ``out``."""
    out = Path(out)
    return out.with_name(out.stem + "_presence.tif")


def quicklook_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + "_quicklook.png")


def presence_spec(plan: MapPlan) -> dict | None:
    """The plan's presence map (rule and per-target thresholds), None when it writes none."""
    spec = plan.extra.get("presence") or {}
    return spec if spec.get("written") else None


def presence_values(plan: MapPlan, values: np.ndarray) -> np.ndarray:
    """(targets, h, w) uint8 of a block: 1 where the prediction >= its target's threshold, 0 below, 255 at nodata."""
    spec = presence_spec(plan)
    n = len(plan.targets)
    thresholds = np.array([spec["thresholds"][t] for t in plan.targets], dtype=np.float64)[:, None, None]
    pred = values[:n]
    out = (pred.astype(np.float64) >= thresholds).astype(np.uint8)
    out[pred == plan.nodata] = PRESENCE_NODATA
    return out


class PartialMap:
    """``<out>.partial/``: an uncompressed tiled GeoTIFF with all tiles allocated (blocks are written in place)
    and a ledger of finished blocks, valid only for the plan fingerprint stored beside it."""

    def __init__(self, out: Path, plan: MapPlan):
        self.dir = out.with_name(out.name + ".partial")
        self.tif = self.dir / "map.tif"
        self.ledger = self.dir / "ledger.jsonl"
        self.plan = plan
        self.presence = self.dir / "presence.tif" if presence_spec(plan) else None

    def open(self) -> set[str]:
        """Keys of finished blocks (empty for a fresh start)."""
        fingerprint = self.plan.fingerprint()
        stored = self.dir / "plan.json"
        if stored.exists() and self.tif.exists() and (self.presence is None or self.presence.exists()) \
                and json.loads(stored.read_text()) == fingerprint:
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
        bands = output_bands(p)
        profile = {"driver": "GTiff", "width": p.width, "height": p.height, "count": len(bands),
                   "dtype": "float32", "crs": p.crs, "transform": Affine(*p.transform), "nodata": p.nodata,
                   "tiled": True, "blockxsize": tile, "blockysize": tile, "compress": "none", "sparse_ok": False,
                   "interleave": "band", "bigtiff": "if_safer"}
        with rasterio.open(self.tif, "w", **profile) as dst:
            for i, (name, kind) in enumerate(bands, start=1):
                dst.set_band_description(i, name if kind != "sd" else f"{name}: sd")
                dst.update_tags(i, species=name, kind=kind)
            dst.update_tags(ecoalign=json.dumps(map_metadata(p)))
        spec = presence_spec(p)
        if spec is None:
            return
        profile.update(count=len(p.targets), dtype="uint8", nodata=PRESENCE_NODATA)
        with rasterio.open(self.presence, "w", **profile) as dst:
            for i, name in enumerate(p.targets, start=1):
                dst.set_band_description(i, f"{name}: presence")
                dst.update_tags(i, species=name, kind="presence", threshold=repr(spec["thresholds"][name]),
                                rule=spec["rule"])
            dst.update_tags(ecoalign=json.dumps(map_metadata(p)))

    def write(self, block: Block, values: np.ndarray) -> None:
        import rasterio
        from rasterio.windows import Window

        window = Window(block.col_off, block.row_off, block.width, block.height)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            with rasterio.open(self.tif, "r+") as dst:
                dst.write(values, window=window)
            if self.presence is not None:
                with rasterio.open(self.presence, "r+") as dst:
                    dst.write(presence_values(self.plan, values), window=window)
        with open(self.ledger, "a") as f:  # recorded only once the block is on disk
            f.write(json.dumps({"block": block.key}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finalise(self, out: Path) -> None:
        """Partial GeoTIFFs -> tiled, DEFLATE-compressed COGs with overviews, renamed into place atomically: the
        presence map first, the map last (its final name marks a finished run)."""
        if self.presence is not None:
            _to_cog(self.presence, presence_path(out), resampling="MODE")
        _to_cog(self.tif, out, resampling="AVERAGE")

    def remove(self) -> None:
        shutil.rmtree(self.dir)


def _to_cog(src_path: Path, out: Path, resampling: str) -> None:
    import rasterio
    import rasterio.shutil

    with atomic_path(out) as tmp, rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        rasterio.shutil.copy(src_path, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=256,
                             OVERVIEW_RESAMPLING=resampling, BIGTIFF="IF_SAFER", NUM_THREADS=1)


def map_metadata(plan: MapPlan) -> dict:
    """What the map's GeoTIFF says about itself (tag ``ecoalign``): model, grid, encoder identity, the bands,
    the uncertainty (or why there is none) and the presence map (or why there is none)."""
    identity = plan.encoder_identity or {}
    meta = {"bundle": plan.bundle, "targets": plan.targets, "task": plan.task, "window_m": plan.window_m,
            "stride_m": plan.stride_px * abs(plan.in_transform[0]), "raster": plan.raster,
            "max_nodata_fraction": plan.max_nodata_fraction, "encoder": identity,
            "random_weights": bool(identity.get("backbone", {}).get("random_weights", False))}
    if plan.extra.get("outputs"):
        meta["bands"] = [{"band": i, "species": name, "kind": kind}
                         for i, (name, kind) in enumerate(output_bands(plan), start=1)]
        meta["uncertainty"] = plan.extra.get("uncertainty")
        meta["presence"] = plan.extra.get("presence")
    if plan.extra.get("zero_shot_info"):  # a zero-shot map: the run, the named compositions, the calibration
        meta["zero_shot"] = plan.extra["zero_shot_info"]
    return meta


def _read_decimated(path: Path, max_side: int):
    """(masked bands, descriptions, tags, metres-or-units per displayed pixel, unit name) of a decimated read."""
    import rasterio

    with rasterio.open(path) as src:
        scale = max(1.0, max(src.width, src.height) / max_side)
        shape = (src.count, max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        arr = src.read(out_shape=shape, masked=True)
        names = [d or f"band {i + 1}" for i, d in enumerate(src.descriptions)]
        meta = json.loads(src.tags().get("ecoalign", "{}") or "{}")
        pixel = abs(src.transform.a) * src.width / shape[2]
        crs = src.crs
        if crs is None:
            unit = "px"
        elif crs.is_geographic:
            unit = "°"
        else:
            factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
            pixel, unit = pixel * factor, "m"
    return arr, names, meta, pixel, unit


def _scale_bar(ax, pixel: float, unit: str, width_px: int) -> None:
    """A bar of a round length (1, 2 or 5 x 10^k) about a quarter of the panel's width, lower left."""
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    target = pixel * width_px / 4.0
    if not target > 0:
        return
    k = 10.0 ** np.floor(np.log10(target))
    length = max(m * k for m in (1.0, 2.0, 5.0) if m * k <= target)
    if unit == "m" and length >= 1000:
        label = f"{length / 1000:g} km"
    else:
        label = f"{length:g} {unit}" if unit != "°" else f"{length:g}°"
    ax.add_artist(AnchoredSizeBar(ax.transData, length / pixel, label, "lower left", pad=0.3, color="black",
                                  frameon=True, size_vertical=width_px / 60.0,
                                  fontproperties=FontProperties(size=7)))


def quicklook_figure(path: str | Path, max_side: int = 512, max_species: int = MAX_QUICKLOOK_SPECIES):
    """The quicklook as a matplotlib Figure: for a map written by ``map_raster``, one row per species with its
    probability, its ensemble spread (when the map has one) and its presence/absence (when ``<stem>_presence.tif``
    exists), each with a colour bar and a scale bar; for any other GeoTIFF, one panel per band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap

    path = Path(path)
    arr, names, meta, pixel, unit = _read_decimated(path, max_side)
    bands = meta.get("bands")
    presence = (meta.get("presence") or {}) if bands else {}
    pres_arr = None
    pres_file = path.with_name(presence["file"]) if presence.get("written") and presence.get("file") else None
    if pres_file is not None and pres_file.exists():
        pres_arr = _read_decimated(pres_file, max_side)[0]
    if bands:
        species = list(dict.fromkeys(b["species"] for b in bands))
        if len(species) > max_species:
            log.warning("the quicklook shows %d of the map's %d species (map a --species subset to see others)",
                        max_species, len(species))
            species = species[:max_species]
        by_kind = {(b["species"], b["kind"]): b["band"] - 1 for b in bands}
        rows = []
        for i, sp in enumerate(species):
            row = [(sp, kind, arr[by_kind[(sp, kind)]]) for kind in ("probability", "suitability", "value", "sd")
                   if (sp, kind) in by_kind]
            if (sp, "sd") not in by_kind and meta.get("uncertainty"):  # say why, rather than leave a gap
                row.append((sp, "no sd", meta["uncertainty"].get("reason", "no spread")))
            if pres_arr is not None:
                row.append((sp, "presence", pres_arr[i]))
            rows.append(row)
    else:
        rows = [[(name, "band", band)] for name, band in zip(names, arr)]
    ncols = max(len(r) for r in rows)
    if not bands:  # a plain GeoTIFF: bands in a grid of up to 3 columns
        flat = [r[0] for r in rows]
        ncols = min(len(flat), 3)
        rows = [flat[i:i + ncols] for i in range(0, len(flat), ncols)]
    fig, axes = plt.subplots(len(rows), ncols, figsize=(4.2 * ncols, 3.6 * len(rows)), squeeze=False)
    thresholds = presence.get("thresholds") or {}
    for r, row in enumerate(rows):
        for c, (name, kind, band) in enumerate(row):
            ax = axes[r, c]
            if kind == "no sd":  # ``band`` holds the reason
                import textwrap

                ax.text(0.5, 0.5, "no uncertainty band:\n" + textwrap.fill(str(band), 40), ha="center",
                        va="center", fontsize=8, transform=ax.transAxes, wrap=True)
                ax.set_title(f"{name}: sd", fontsize=9)
                ax.set_axis_off()
                continue
            if kind == "presence":
                cmap = ListedColormap(["#e8dcc0", "#1b7837"]).with_extremes(bad="#bdbdbd")
                im = ax.imshow(band, cmap=cmap, norm=BoundaryNorm([-0.5, 0.5, 1.5], 2), interpolation="nearest")
                cb = fig.colorbar(im, ax=ax, shrink=0.8, ticks=[0, 1])
                cb.ax.set_yticklabels(["absent", "present"])
                t = thresholds.get(name)
                title = f"{name}: presence" + (f" (≥ {t:.3g}, {presence.get('rule')})" if t is not None else "")
            else:
                cmap = matplotlib.colormaps["magma" if kind == "sd" else "viridis"].with_extremes(bad="#bdbdbd")
                limits = {"vmin": 0.0, "vmax": 1.0} if kind in ("probability", "suitability") else {}
                if kind == "sd":
                    limits = {"vmin": 0.0, "vmax": float(band.max()) if band.count() and band.max() > 0 else 1.0}
                im = ax.imshow(band, cmap=cmap, interpolation="nearest", **limits)
                fig.colorbar(im, ax=ax, shrink=0.8)
                title = {"probability": f"{name}: probability", "value": f"{name}: predicted value",
                         "suitability": f"{name}: zero-shot suitability",
                         "sd": f"{name}: sd (ensemble spread)", "band": name}[kind]
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
            _scale_bar(ax, pixel, unit, band.shape[-1])
        for ax in axes[r, len(row):]:
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def write_quicklook(path: str | Path, out_png: str | Path | None = None, max_side: int = 512,
                    max_species: int = MAX_QUICKLOOK_SPECIES) -> Path:
    """A PNG beside the map (``<stem>_quicklook.png``), from a decimated read (overviews): see
    ``quicklook_figure``."""
    out_png = Path(out_png) if out_png else quicklook_path(path)
    fig = quicklook_figure(path, max_side=max_side, max_species=max_species)
    import matplotlib.pyplot as plt
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_png
