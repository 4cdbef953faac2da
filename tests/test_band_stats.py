"""Band standardisation belongs to the encoder, not to the raster being read: the same ground gets the same
embeddings and map values from a raster and from a 4x larger mosaic that contains it (real GeoTIFFs).

Frozen DOFA without statistics: `embed` fixes them once from the rasters it is given and records them in the
table's encoder identity; `fit` keeps that identity in the bundle and `map` (CLI, Python, accessor) reuses them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import conftest
import numpy as np
import pandas as pd
import pytest

import ecoalign
from ecoalign.aerial.embed import embedding_columns, read_embeddings
from ecoalign.cli import main
from ecoalign.core.errors import EcoalignInputError
from ecoalign.data.patches import band_stats, open_rasters
from ecoalign.sdm.bundle_io import seal

WAVES = [0.49, 0.56, 0.665, 0.842]
RES, WINDOW_M = 20.0, 200.0  # 10 px windows
LEFT, TOP = 387000.0, 4173500.0


def _points(xy, crs="EPSG:26912"):
    import geopandas as gpd

    return gpd.GeoDataFrame({"plot_id": [f"p{i}" for i in range(len(xy))]},
                            geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=crs)


def _fit(folder: Path, emb) -> Path:
    from ecoalign.sdm.fitting import fit_bundle
    from ecoalign.sdm.sites import build_sites
    from ecoalign.sdm.spec import spec_from_dict

    score = emb["emb_000"] + emb["emb_005"]
    y = pd.DataFrame({"plot_id": emb["plot_id"], "sp_a": (score > score.median()).astype(int),
                      "sp_b": (emb["emb_002"] < emb["emb_002"].median()).astype(int)})
    y.to_csv(folder / "targets.csv", index=False)
    spec = spec_from_dict({"name": "t", "task": "presence_absence",
                           "target": {"source": str(folder / "targets.csv"), "id_column": "plot_id",
                                      "min_presences": 2},
                           "features": {"embeddings": True, "pca": 4}, "estimator": {"name": "logistic"},
                           "cv": {"scheme": "random", "folds": 2}, "metrics": ["auc"], "bootstrap": 5})
    return fit_bundle(spec, build_sites(spec, embeddings=emb), folder / "bundle", n_jobs=1, progress=False)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """``small.tif``: 3x3 windows of 200 m; ``mosaic.tif``: 6x6 windows, its north-west quarter the very same
    pixels, the other quarters other ground (brighter, more contrast), so their statistics differ."""
    from scipy.ndimage import gaussian_filter

    folder = tmp_path_factory.mktemp("band_stats")
    rng = np.random.default_rng(4)
    tex = gaussian_filter(rng.normal(size=(4, 60, 60)), sigma=(0, 3, 3))
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    mosaic = 40 + 120 * tex
    mosaic[:, :30, 30:] = 150 + 100 * tex[:, :30, 30:]  # north-east: brighter, less contrast
    mosaic[:, 30:, :30] = 120 + 130 * tex[:, 30:, :30]  # south-west: brighter
    mosaic[:, 30:, 30:] = 5 + 245 * tex[:, 30:, 30:]  # south-east: more contrast
    small = conftest.write_raster(folder / "small.tif", mosaic[:, :30, :30], left=LEFT, top=TOP, res=RES)
    big = conftest.write_raster(folder / "mosaic.tif", mosaic, left=LEFT, top=TOP, res=RES)
    xy = np.column_stack([LEFT + rng.uniform(100, 500, 14), TOP - rng.uniform(100, 500, 14)])  # inside small.tif
    enc = ecoalign.load_encoder("dofa", size="small", wavelengths_um=WAVES)  # frozen, no statistics given
    emb = ecoalign.embed_points(_points(xy), [small], enc, patch_size_m=WINDOW_M)
    return {"folder": folder, "small": small, "big": big, "xy": xy, "enc": enc, "emb": emb,
            "bundle": _fit(folder, emb)}


def test_the_two_rasters_have_different_statistics(scene):
    small = band_stats(open_rasters([scene["small"]], WAVES))
    big = band_stats(open_rasters([scene["big"]], WAVES))
    assert (big[0] - small[0]).min() > 20 and np.abs(small[1] - big[1]).min() > 5  # per-raster would differ


def test_embed_fixes_frozen_statistics_once_and_records_them(scene):
    meta = scene["emb"].attrs["ecoalign"]
    mean, std = band_stats(open_rasters([scene["small"]], WAVES))
    assert meta["band_stats_from"] == [str(scene["small"])]
    np.testing.assert_array_equal(np.float32(meta["encoder"]["band_mean"]), mean)
    np.testing.assert_array_equal(np.float32(meta["encoder"]["band_std"]), std)
    assert scene["enc"].band_mean is None  # the user's encoder object is left as it was
    bundle_meta = json.loads((scene["bundle"] / "bundle.json").read_text())
    assert bundle_meta["encoder"]["band_mean"] == meta["encoder"]["band_mean"]  # `fit` keeps them


def test_embed_with_fixed_statistics_gives_the_same_embeddings_from_both_rasters(scene, tmp_path):
    mean, std = band_stats(open_rasters([scene["small"]], WAVES))
    pts = _points(scene["xy"])
    enc = scene["enc"].with_band_stats(mean, std)
    a = ecoalign.embed_points(pts, [scene["small"]], enc, patch_size_m=WINDOW_M)
    b = ecoalign.embed_points(pts, [scene["big"]], enc, patch_size_m=WINDOW_M)
    np.testing.assert_allclose(a[embedding_columns(a)].to_numpy(), b[embedding_columns(b)].to_numpy(), atol=1e-5)
    # the table the bundle was fitted on used the same statistics (fixed from small.tif by embed)
    np.testing.assert_allclose(a[embedding_columns(a)].to_numpy(),
                               scene["emb"][embedding_columns(scene["emb"])].to_numpy(), atol=1e-5)
    # the verb and its CLI flags, on the mosaic
    pts.to_file(tmp_path / "pts.gpkg", layer="pts")
    out = tmp_path / "big.parquet"
    assert main(["embed", "--encoder", "dofa", "--size", "small", "--wavelengths", ",".join(map(str, WAVES)),
                 "--points", str(tmp_path / "pts.gpkg"), "--raster", str(scene["big"]), "--patch-size-m",
                 str(WINDOW_M), "--band-mean", ",".join(map(str, mean.tolist())),
                 "--band-std", ",".join(map(str, std.tolist())), "--out", str(out)]) == 0
    cli = read_embeddings(out)
    assert "band_stats_from" not in cli.attrs["ecoalign"]  # given, not computed
    np.testing.assert_allclose(cli.set_index("plot_id").loc[a["plot_id"], embedding_columns(a)].to_numpy(),
                               a[embedding_columns(a)].to_numpy(), atol=1e-5)
    py = ecoalign.embed(pts, scene["big"], size="small", wavelengths_um=WAVES, patch_size_m=WINDOW_M,
                        band_mean=mean, band_std=std)
    np.testing.assert_allclose(py[embedding_columns(py)].to_numpy(), a[embedding_columns(a)].to_numpy(), atol=1e-5)


def test_statistics_are_part_of_the_identity_and_the_cache_key(scene):
    from ecoalign.core.paths import cache_dir

    enc = scene["enc"]
    one, two = enc.with_band_stats([50, 60, 70, 80], [10, 10, 10, 10]), enc.with_band_stats([50, 60, 70, 81],
                                                                                               [10, 10, 10, 10])
    assert one.identity() != two.identity() and one.identity()["band_mean"] == [50.0, 60.0, 70.0, 80.0]
    pts = _points(scene["xy"][:2])
    before = set((cache_dir() / "embeddings").iterdir())
    a = ecoalign.embed_points(pts, [scene["small"]], one, patch_size_m=WINDOW_M)
    mid = set((cache_dir() / "embeddings").iterdir())
    b = ecoalign.embed_points(pts, [scene["small"]], two, patch_size_m=WINDOW_M)
    after = set((cache_dir() / "embeddings").iterdir())
    assert len(mid - before) == 1 and len(after - mid) == 1  # a cache entry per set of statistics
    assert not np.array_equal(a[embedding_columns(a)].to_numpy(), b[embedding_columns(b)].to_numpy())


def _read(path):
    import rasterio

    with rasterio.open(path) as src:
        return src.read(), json.loads(src.tags()["ecoalign"])


def test_the_same_ground_maps_to_the_same_values_in_both_rasters(scene, tmp_path):
    """CLI (`--encoder dofa`: statistics from the bundle), Python with an encoder object without statistics, and
    the xarray accessor: a map of the mosaic equals the map of the raster on their common ground."""
    import rioxarray

    import ecoalign.accessor  # noqa: F401

    bundle = scene["bundle"]
    base = ["map", "--encoder", "dofa", "--model", str(bundle), "--no-progress", "--no-quicklook"]
    assert main(base + ["--raster", str(scene["small"]), "--out", str(tmp_path / "small.tif")]) == 0
    assert main(base + ["--raster", str(scene["big"]), "--out", str(tmp_path / "big.tif")]) == 0
    small, meta_small = _read(tmp_path / "small.tif")
    big, meta_big = _read(tmp_path / "big.tif")
    assert small.shape[1:] == (3, 3) and big.shape[1:] == (6, 6) and (small != -9999.0).all()
    n = len(["sp_a", "sp_b"])
    np.testing.assert_allclose(big[:n, :3, :3], small[:n], rtol=0, atol=1e-5)
    recorded = scene["emb"].attrs["ecoalign"]["encoder"]
    assert meta_small["encoder"]["band_mean"] == meta_big["encoder"]["band_mean"] == recorded["band_mean"]
    out = ecoalign.map_raster(scene["enc"], bundle, scene["big"], tmp_path / "py.tif", progress=False,
                              quicklook=False)
    np.testing.assert_allclose(_read(out)[0][:n], big[:n], rtol=0, atol=1e-5)
    da = rioxarray.open_rasterio(scene["small"])
    pred = da.ecoalign.predict(bundle, "dofa-small", wavelengths_um=WAVES, progress=False)
    np.testing.assert_allclose(pred.values, big[:n, :3, :3], rtol=0, atol=1e-5)


def test_map_refuses_other_statistics_and_bundles_without_them(scene, tmp_path):
    bundle, enc = scene["bundle"], scene["enc"]
    mean, std = band_stats(open_rasters([scene["big"]], WAVES))
    with pytest.raises(EcoalignInputError, match="other band statistics.*band_mean.*bundle"):
        ecoalign.map_raster(enc.with_band_stats(mean, std), bundle, scene["small"], tmp_path / "m.tif",
                            progress=False)
    assert not (tmp_path / "m.tif").exists()
    legacy = tmp_path / "legacy"
    shutil.copytree(bundle, legacy)
    meta = json.loads((legacy / "bundle.json").read_text())
    recorded = {k: meta["encoder"].pop(k) for k in ("band_mean", "band_std")}  # as bundles made before this
    seal(legacy, meta)  # re-hashed: an edited bundle.json is refused otherwise
    args = ["map", "--encoder", "dofa", "--model", str(legacy), "--raster", str(scene["small"]), "--no-progress",
            "--no-quicklook", "--out", str(tmp_path / "legacy.tif")]
    with pytest.raises(EcoalignInputError, match="never standardises with the statistics of the raster.*--band-mean"):
        ecoalign.map_raster("dofa", legacy, scene["small"], tmp_path / "legacy.tif", progress=False)
    flags = ["--band-mean", ",".join(map(str, recorded["band_mean"])),
             "--band-std", ",".join(map(str, recorded["band_std"]))]
    assert main(args + flags) == 0
    assert main(["map", "--encoder", "dofa", "--model", str(bundle), "--raster", str(scene["small"]),
                 "--no-progress", "--no-quicklook", "--out", str(tmp_path / "plain.tif")]) == 0
    np.testing.assert_array_equal(_read(tmp_path / "legacy.tif")[0][:2], _read(tmp_path / "plain.tif")[0][:2])


def test_bad_statistics_are_clear_errors(scene, tmp_path, capsys):
    import torch

    from ecoalign.encoders.registry import configure_encoder

    with pytest.raises(EcoalignInputError, match=r"band_mean \(--band-mean\): 3 value\(s\) for 4 band\(s\)"):
        ecoalign.load_encoder("dofa", size="small", wavelengths_um=WAVES, band_mean=[1, 2, 3], band_std=[1, 1, 1, 1])
    with pytest.raises(EcoalignInputError, match=r"band_std \(--band-std\) is missing"):
        scene["enc"].with_band_stats([1, 2, 3, 4], None)
    with pytest.raises(EcoalignInputError, match="positive values"):
        scene["enc"].with_band_stats([1, 2, 3, 4], [1, 0, 1, 1])
    adapted = scene["enc"].with_band_stats([1, 2, 3, 4], [1, 1, 1, 1])
    adapted.adapter = torch.nn.Identity()
    with pytest.raises(EcoalignInputError, match="adapted encoder standardises bands with the statistics of its"):
        configure_encoder(adapted, band_mean=[5, 5, 5, 5], band_std=[2, 2, 2, 2])
    assert main(["map", "--encoder", "dofa", "--model", str(scene["bundle"]), "--raster", str(scene["small"]),
                 "--band-mean", "1,2", "--band-std", "1,1", "--out", str(tmp_path / "x.tif")]) == 2
    err = capsys.readouterr().err
    assert "band_mean (--band-mean): 2 value(s) for 4 band(s)" in err and not (tmp_path / "x.tif").exists()
    assert main(["map", "--encoder", "dofa", "--model", "m", "--raster", "r.tif", "--out", "o.tif",
                 "--band-mean", "a,b"]) == 2
    assert "--band-mean: 'a,b' is not numbers" in capsys.readouterr().err
