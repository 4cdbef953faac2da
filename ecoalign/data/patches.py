"""Pairing plots with imagery: a square window of fixed ground size around each plot, resampled for the backbone.

Plots outside every raster, or whose window is mostly nodata, are skipped with a reason, never a crash.
``preprocess_windows`` is the one preprocessing of raster windows for a backbone (here, in maps, in encoders).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError

if TYPE_CHECKING:
    import torch

SKIP_OUTSIDE = "outside_raster"
SKIP_NODATA = "mostly_nodata"

# The dihedral group of the square: geometric views that leave an aerial patch's content unchanged.
AUGMENTATIONS = ("identity", "rot90", "hflip", "rot180", "vflip", "rot270", "transpose", "antitranspose")


@dataclass
class RasterSource:
    path: Path
    crs: object
    bounds: tuple[float, float, float, float]
    res: tuple[float, float]
    count: int
    nodata: float | None


def open_rasters(paths: Sequence[Path], wavelengths_um: Sequence[float], nodata: float | None = None) -> list[RasterSource]:
    """Check every raster before any work: readable, georeferenced, one band per wavelength, one CRS."""
    import rasterio
    from rasterio.errors import RasterioIOError

    sources = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise EcoalignInputError("raster not found", path=p)
        try:
            with rasterio.open(p) as src:
                if src.crs is None:
                    raise EcoalignInputError("the raster has no CRS", path=p,
                                             expected="a georeferenced GeoTIFF in a projected CRS (assign one with gdal_edit.py -a_srs)")
                if src.count != len(wavelengths_um):
                    raise EcoalignInputError(
                        f"the raster has {src.count} bands but {len(wavelengths_um)} wavelengths are given "
                        f"{list(wavelengths_um)}", path=p, expected="one wavelength (µm) per band, in band order")
                if src.crs.is_geographic:
                    raise EcoalignInputError("the raster is in a geographic CRS (degrees)", path=p,
                                             expected="a projected CRS in metres, so windows have a true ground size")
                sources.append(RasterSource(p, src.crs, tuple(src.bounds), src.res, src.count,
                                            nodata if nodata is not None else src.nodata))
        except RasterioIOError as exc:
            raise EcoalignInputError(f"cannot read the raster: {exc}", path=p) from exc
    crs = {str(s.crs) for s in sources}
    if len(crs) > 1:
        raise EcoalignInputError(f"the imagery files use different CRSs {sorted(crs)}", path=sources[0].path,
                                 expected="one CRS for all imagery of a manifest")
    return sources


def band_stats(sources: Sequence[RasterSource], max_side: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of valid pixels from a decimated read: the standardisation DOFA expects per sensor.
    Computed once to fix an encoder's statistics (``adapt``: the manifest's imagery; ``embed``: its rasters),
    never for each raster a map reads."""
    import rasterio
    from rasterio.enums import Resampling

    samples = []
    for s in sources:
        with rasterio.open(s.path) as src:
            scale = max(1.0, max(src.width, src.height) / max_side)
            shape = (src.count, max(1, int(src.height / scale)), max(1, int(src.width / scale)))
            arr = src.read(out_shape=shape, resampling=Resampling.nearest).astype(np.float64)
        valid = valid_mask(arr, s.nodata)
        samples.append(arr[:, valid])
    data = np.concatenate(samples, axis=1)
    if data.shape[1] == 0:
        raise EcoalignInputError("the imagery holds no valid pixel (all nodata)", path=sources[0].path)
    std = data.std(axis=1)
    return data.mean(axis=1).astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def valid_mask(arr: np.ndarray, nodata: float | None) -> np.ndarray:
    """(h, w) True where a pixel is valid: finite on every band and not ``nodata`` on all bands."""
    valid = np.all(np.isfinite(arr), axis=0)
    if nodata is not None:
        valid &= ~np.all(arr == nodata, axis=0)
    return valid


def preprocess_windows(windows, mean: Sequence[float] | np.ndarray | None = None,
                       std: Sequence[float] | np.ndarray | None = None, *, input_px: int) -> "torch.Tensor":
    """(B, bands, input_px, input_px) float32 tensor from raw windows (B, bands, H, W) in the raster's units
    with NaN where a pixel is invalid: standardise each band (when ``mean``/``std`` are given), put invalid
    pixels at the band mean (0), and resize to the backbone's input (bilinear, antialiased when shrinking).

    The one preprocessing of raster windows: ``PatchReader`` (``embed_points``, ``adapt``), ``ecoalign map`` and
    the accessor, and ``DOFAEncoder.image_tensor``/``embed``.
    Numpy input is standardised in numpy, a tensor in torch on its device: both float32, so the same values."""
    import torch
    import torch.nn.functional as F

    if isinstance(windows, torch.Tensor):
        x = windows.float()
        if mean is not None:
            m = torch.as_tensor(np.asarray(mean, np.float32), device=x.device)[:, None, None]
            s = torch.as_tensor(np.asarray(std, np.float32), device=x.device)[:, None, None]
            x = (x - m) / s
        x = torch.nan_to_num(x, nan=0.0)
    else:
        x = np.asarray(windows, dtype=np.float32)
        if mean is not None:
            x = (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
        x = torch.from_numpy(np.nan_to_num(x, nan=0.0))
    if tuple(x.shape[-2:]) != (input_px, input_px):
        x = F.interpolate(x, size=(input_px, input_px), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > input_px)
    return x


class PatchReader:
    """Reads the window around each plot centre from whichever raster holds it, ready for the backbone."""

    def __init__(self, sources: Sequence[RasterSource], *, size_m: float = 100.0, out_px: int = 224,
                 max_nodata_fraction: float = 0.5, mean: np.ndarray, std: np.ndarray):
        import rasterio

        self.sources = list(sources)
        self.size_m = float(size_m)
        self.out_px = int(out_px)
        self.max_nodata_fraction = float(max_nodata_fraction)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self._handles = [rasterio.open(s.path) for s in self.sources]

    def close(self) -> None:
        for h in self._handles:
            h.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read_native(self, x: float, y: float) -> tuple[np.ndarray | None, str | None]:
        """(bands, h, w) float32 window in the raster's units with NaN where invalid, or (None, skip reason)."""
        from rasterio.windows import Window, from_bounds

        half = self.size_m / 2.0
        best_reason = SKIP_OUTSIDE
        for s, src in zip(self.sources, self._handles):
            left, bottom, right, top = s.bounds
            if not (left <= x <= right and bottom <= y <= top):
                continue
            win = from_bounds(x - half, y - half, x + half, y + half, transform=src.transform)
            win = Window(round(win.col_off), round(win.row_off), max(1, round(win.width)), max(1, round(win.height)))
            full = np.full((src.count, int(win.height), int(win.width)), np.nan, dtype=np.float32)
            inter = win.intersection(Window(0, 0, src.width, src.height))
            r0, c0 = int(inter.row_off - win.row_off), int(inter.col_off - win.col_off)
            part = src.read(window=inter).astype(np.float32)
            part[:, ~valid_mask(part, s.nodata)] = np.nan
            full[:, r0:r0 + part.shape[1], c0:c0 + part.shape[2]] = part
            invalid = np.isnan(full).any(axis=0).mean()
            if invalid > self.max_nodata_fraction:
                best_reason = SKIP_NODATA
                continue
            return full, None
        return None, best_reason

    def read_batch(self, centres: np.ndarray) -> tuple[np.ndarray, list[int], dict[int, str]]:
        """Windows for many plots, preprocessed for the backbone (``preprocess_windows``: standardised, invalid
        pixels at the band mean, resampled to (out_px, out_px)); returns patches, kept row indices, skips."""
        patches, kept, skipped = [], [], {}
        for i, (x, y) in enumerate(centres):
            arr, reason = self.read_native(float(x), float(y))
            if arr is None:
                skipped[i] = reason
                continue
            patches.append(preprocess_windows(arr[None], self.mean, self.std, input_px=self.out_px)[0].numpy())
            kept.append(i)
        out = np.stack(patches) if patches else np.zeros((0, self.sources[0].count, self.out_px, self.out_px), np.float32)
        return out, kept, skipped


def augment(batch, name: str):
    """Apply one dihedral view to a (B, C, H, W) tensor."""
    import torch

    if name == "identity":
        return batch
    if name.startswith("rot"):
        return torch.rot90(batch, k=int(name[3:]) // 90, dims=(-2, -1))
    if name == "hflip":
        return torch.flip(batch, dims=(-1,))
    if name == "vflip":
        return torch.flip(batch, dims=(-2,))
    if name == "transpose":
        return batch.transpose(-2, -1)
    if name == "antitranspose":
        return torch.rot90(batch, k=2, dims=(-2, -1)).transpose(-2, -1)
    raise ValueError(f"unknown augmentation {name!r}; expected one of {AUGMENTATIONS}")
