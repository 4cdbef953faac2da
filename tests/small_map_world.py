"""A small generated landscape, a species-model bundle fitted on DOFA-small embeddings of its plots, and a crop
of its orthophoto (with part of the nodata strip) to map: shared by the accessor and Dask mapping tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

WAVELENGTHS = [0.49, 0.56, 0.665, 0.842]  # ortho.tif of the demo world: blue, green, red, nir
TARGETS = ("wetland", "grassland")  # land covers of the plots, as presence/absence targets


def build(folder: Path) -> dict:
    """Build into ``folder`` once (a session-wide folder lets several test modules share it), then reuse."""
    import geopandas as gpd
    import rasterio
    from rasterio.windows import Window

    import ecoalign
    from ecoalign.data.patches import band_stats, open_rasters
    from ecoalign.demo.aerial_world import generate_demo_world
    from ecoalign.sdm.fitting import fit_bundle
    from ecoalign.sdm.sites import build_sites
    from ecoalign.sdm.spec import spec_from_dict

    world = generate_demo_world(folder / "world", n_plots=28, size_m=800.0, resolution_m=4.0, seed=2)
    # one band standardisation (the whole orthophoto's) for plots, crops and maps
    mean, std = band_stats(open_rasters([world / "ortho.tif"], WAVELENGTHS))
    encoder = ecoalign.load_encoder("dofa", size="small", wavelengths_um=WAVELENGTHS, band_mean=mean, band_std=std)
    plots = gpd.read_file(world / "plots.gpkg", layer="plots")
    out = {"world": world, "encoder": encoder, "bundle": folder / "bundle", "raster": folder / "crop.tif",
           "plots": plots}
    if (folder / "DONE").exists():
        return {**out, "embeddings": gpd.read_parquet(folder / "embeddings.parquet")}
    emb = ecoalign.embed_points(plots, [world / "ortho.tif"], encoder)
    emb.to_parquet(folder / "embeddings.parquet")
    table = plots[["plot_id"]].copy()
    for t in TARGETS:
        table[t] = (plots["landcover"] == t).astype(int)
    table.to_csv(folder / "landcover.csv", index=False)
    spec = spec_from_dict({
        "name": "landcover_presence", "task": "presence_absence",
        "target": {"source": str(folder / "landcover.csv"), "min_presences": 3},
        "features": {"embeddings": True}, "estimator": {"name": "logistic", "params": {"C": 0.1}},
        "cv": {"scheme": "random", "folds": 2}, "metrics": ["auc"], "bootstrap": 10})
    fit_bundle(spec, build_sites(spec, embeddings=emb), out["bundle"], n_jobs=1, overwrite=True, progress=False)
    crop = out["raster"]  # 300 m x 300 m at 4 m (3 x 3 windows of 100 m); its east third is the nodata strip
    with rasterio.open(world / "ortho.tif") as src:
        win = Window(110, 0, 75, 75)
        profile = {**src.profile, "width": 75, "height": 75, "transform": src.window_transform(win)}
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(window=win))
    (folder / "DONE").touch()
    return {**out, "embeddings": emb}


def assert_same_map(a: Path, b: Path) -> None:
    """Two map GeoTIFFs hold the same grid, band names, nodata and bytes of band data."""
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert (x.crs, x.transform, x.shape, x.count, x.nodata) == (y.crs, y.transform, y.shape, y.count, y.nodata)
        assert x.descriptions == y.descriptions
        assert x.read().tobytes() == y.read().tobytes()
        assert np.isfinite(x.read()).all()


def map_in_single_threaded_process(world_folder: Path, bundle: Path, out: Path) -> None:
    """The reference for Dask equality: the map made in a fresh process that is single-threaded (torch and BLAS)
    from its start, as Dask worker processes are."""
    import os
    import subprocess
    import sys

    here = Path(__file__).resolve().parent
    script = (f"import sys; sys.path.insert(0, {str(here)!r})\n"
              "import torch; torch.set_num_threads(1)\n"
              "import pathlib, small_map_world\n"
              "from ecoalign.mapping import map_raster\n"
              f"w = small_map_world.build(pathlib.Path({str(world_folder)!r}))\n"
              f"map_raster(w['encoder'], {str(bundle)!r}, w['raster'], {str(out)!r}, block_px=2, quicklook=False, "
              "progress=False)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env)
