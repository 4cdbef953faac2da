"""Shared fixtures: real field data from ../shared/data and small files in real formats built around it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BRYCE = SHARED / "releves" / "bryce"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test session gets its own ecoalign cache; the demo world is generated once per session."""
    cache = tmp_path_factory.getbasetemp() / "ecoalign-cache"
    monkeypatch.setenv("ECOALIGN_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-home"))
    yield


@pytest.fixture
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one torch thread is fastest and steadiest, and gives the same float
    sums in a command's run and a function's."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def need_shared():
    if not BRYCE.exists():
        pytest.skip(f"shared field data not found at {SHARED}")


def write_raster(path: Path, array: np.ndarray, *, crs="EPSG:26912", left=387000.0, top=4173500.0, res=20.0,
                 nodata=0, dtype="uint8"):
    import rasterio
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "height": array.shape[1], "width": array.shape[2], "count": array.shape[0],
               "dtype": dtype, "transform": from_origin(left, top, res, res), "nodata": nodata}
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array.astype(dtype))
    return path


def write_manifest(folder: Path, body: dict, name: str = "manifest.yaml") -> Path:
    """A manifest with sha256 filled in for every file it names (as a user would with manifest-hash)."""
    from ecoalign.core.io import sha256_file

    def fill(entry):
        if isinstance(entry, dict) and "path" in entry and "sha256" not in entry:
            p = Path(entry["path"])
            p = p if p.is_absolute() else folder / p
            if p.exists():
                entry["sha256"] = sha256_file(p)
        return entry

    body = dict(body)
    body["imagery"] = dict(body["imagery"])
    body["imagery"]["files"] = [fill(dict(f) if isinstance(f, dict) else {"path": f}) for f in body["imagery"]["files"]]
    for key in ("plots", "releves", "species"):
        if key in body:
            body[key] = fill(dict(body[key]))
    path = folder / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def bryce_raster(folder: Path, seed: int = 0) -> Path:
    """An RGB raster over Bryce Canyon's plots (UTM 12N), smooth texture: the relevés and plots are real."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    h, w = 1500, 850  # 20 m pixels: 17 km x 30 km
    base = gaussian_filter(rng.normal(size=(3, h, w)), sigma=(0, 8, 8))
    base = (base - base.min()) / (base.max() - base.min())
    arr = 20 + 220 * base
    return write_raster(folder / "bryce_rgb.tif", arr)


@pytest.fixture
def bryce_manifest(tmp_path):
    """A manifest over real Bryce Canyon relevés (wide table, cover classes) and plot sites (CSV, UTM 12N)."""
    need_shared()
    bryce_raster(tmp_path)
    body = {
        "name": "bryce-test", "licence": "GPL-2.0-or-later", "citation": "labdsv bryceveg/brycesite",
        "imagery": {"files": ["bryce_rgb.tif"], "wavelengths_um": [0.665, 0.56, 0.49], "nodata": 0},
        "plots": {"path": str(BRYCE / "labdsv_brycesite.csv"), "id_column": "row", "x_column": "east",
                  "y_column": "north", "crs": "EPSG:26912"},
        "releves": {"path": str(BRYCE / "labdsv_bryceveg.csv"), "format": "wide", "plot_column": "row",
                    "cover_scale": "bryce"},
    }
    return write_manifest(tmp_path, body)


def generated_world_manifest(folder: Path, name: str, *, extras: bool = False, **options) -> Path:
    """A manifest that generates a demo world of the given size into ``folder`` on first load."""
    body = {
        "name": name, "licence": "CC0-1.0", "root": str(folder / "world"), "generator": "demo",
        "generator_options": options, "checksums": "SHA256SUMS",
        "imagery": {"files": ["ortho.tif"], "wavelengths_um": [0.49, 0.56, 0.665, 0.842], "nodata": 0},
        "plots": {"path": "plots.gpkg", "layer": "plots", "id_column": "plot_id"},
        "releves": {"path": "releves.csv", "format": "long", "cover_scale": "braun_blanquet"},
    }
    if extras:
        body["extras"] = {"butterflies": {"path": "butterflies.csv"},
                          "soil_trophic_groups": {"path": "soil_trophic_groups.csv"}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path
