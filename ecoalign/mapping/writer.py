"""The map on disk: finished blocks go to an uncompressed tiled GeoTIFF whose tiles are allocated up front
(in-place writes) and are listed in a ledger, so a killed run resumes without recomputing them; the finished map
is converted to a COG under a temporary name and renamed into place, with a PNG quicklook beside it."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ecoalign.core.io import atomic_path, write_json
from ecoalign.mapping.plan import GDAL_CACHE_MB, Block, MapPlan

log = logging.getLogger(__name__)


class PartialMap:
    """``<out>.partial/``: an uncompressed tiled GeoTIFF with all tiles allocated (blocks are written in place)
    and a ledger of finished blocks, valid only for the plan fingerprint stored beside it."""

    def __init__(self, out: Path, plan: MapPlan):
        self.dir = out.with_name(out.name + ".partial")
        self.tif = self.dir / "map.tif"
        self.ledger = self.dir / "ledger.jsonl"
        self.plan = plan

    def open(self) -> set[str]:
        """Keys of finished blocks (empty for a fresh start)."""
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
            dst.update_tags(ecoalign=json.dumps(map_metadata(p)))

    def write(self, block: Block, values: np.ndarray) -> None:
        import rasterio
        from rasterio.windows import Window

        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(self.tif, "r+") as dst:
            dst.write(values, window=Window(block.col_off, block.row_off, block.width, block.height))
        with open(self.ledger, "a") as f:  # recorded only once the block is on disk
            f.write(json.dumps({"block": block.key}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finalise(self, out: Path) -> None:
        """Partial GeoTIFF -> tiled, DEFLATE-compressed COG with overviews, renamed into place atomically."""
        import rasterio
        import rasterio.shutil

        with atomic_path(out) as tmp, rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            rasterio.shutil.copy(self.tif, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=256,
                                 OVERVIEW_RESAMPLING="AVERAGE", BIGTIFF="IF_SAFER", NUM_THREADS=1)

    def remove(self) -> None:
        shutil.rmtree(self.dir)


def map_metadata(plan: MapPlan) -> dict:
    """What the map's GeoTIFF says about itself (tag ``ecoalign``): model, grid and encoder identity."""
    identity = plan.encoder_identity or {}
    return {"bundle": plan.bundle, "targets": plan.targets, "task": plan.task, "window_m": plan.window_m,
            "stride_m": plan.stride_px * abs(plan.in_transform[0]), "raster": plan.raster,
            "max_nodata_fraction": plan.max_nodata_fraction, "encoder": identity,
            "random_weights": bool(identity.get("backbone", {}).get("random_weights", False))}


def write_quicklook(path: str | Path, out_png: str | Path | None = None, max_side: int = 512) -> Path:
    """A PNG mosaic with one panel and colour bar per band, from a decimated read (overviews) of the map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio

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
