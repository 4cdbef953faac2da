"""Maps (and embeddings) from many tiles: a glob, a list or a VRT read as one mosaic gives the map of the same area
as one raster, byte for byte (probabilities, ensemble spread and presence bands); bad tiles are refused before any
work; environmental rasters read by window equal the fit's point sampling.

The area: 52 x 62 px at 20 m with a nodata corner, 200 m windows at a 100 m stride, cut into 4 tiles at rows/cols
that windows cross. DOFA-small with random weights: a few seconds a map.
"""
from __future__ import annotations

from pathlib import Path

import conftest
import numpy as np
import pandas as pd
import pytest
import small_map_world

import ecoalign
from ecoalign.cli import main
from ecoalign.core.errors import EcoalignInputError
from ecoalign.mapping import blocks, run
from ecoalign.mapping import plan as planning
from ecoalign.mapping.writer import presence_path

WAVES = [0.49, 0.56, 0.665, 0.842]
LEFT, TOP, RES = 387000.0, 4173500.0, 20.0
CUT_ROW, CUT_COL = 27, 33  # tile edges inside windows (10 px wide, 5 px apart)


def _points(xy, crs):
    import geopandas as gpd

    return gpd.GeoDataFrame({"plot_id": [f"p{i}" for i in range(len(xy))]},
                            geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=crs)


def _env_raster(path: Path) -> Path:
    """A coarse covariate in geographic coordinates (another CRS than the imagery), with a nodata hole."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    w, s, e, n = transform_bounds("EPSG:26912", "EPSG:4326", LEFT - 500, TOP - 52 * RES - 500,
                                  LEFT + 62 * RES + 500, TOP + 500)
    nx, ny = 23, 17
    arr = np.arange(nx * ny, dtype=np.float32).reshape(ny, nx) * 0.37 + 3.0
    arr[8, 11] = -1.0  # nodata inside the map
    with rasterio.open(path, "w", driver="GTiff", width=nx, height=ny, count=1, dtype="float32", crs="EPSG:4326",
                       transform=from_origin(w, n, (e - w) / nx, (n - s) / ny), nodata=-1.0) as dst:
        dst.write(arr[None])
    return path


def _tiles(arr: np.ndarray, folder: Path, **kw) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (r0, r1) in enumerate([(0, CUT_ROW), (CUT_ROW, arr.shape[1])]):
        for j, (c0, c1) in enumerate([(0, CUT_COL), (CUT_COL, arr.shape[2])]):
            out.append(conftest.write_raster(folder / f"tile_{i}{j}.tif", arr[:, r0:r1, c0:c1],
                                             left=LEFT + c0 * RES, top=TOP - r0 * RES, **kw))
    return out


@pytest.fixture(scope="module")
def area(tmp_path_factory):
    from scipy.ndimage import gaussian_filter

    from ecoalign.sdm.fitting import fit_bundle
    from ecoalign.sdm.sites import build_sites
    from ecoalign.sdm.spec import spec_from_dict

    folder = tmp_path_factory.mktemp("tiles_area")
    rng = np.random.default_rng(3)
    base = gaussian_filter(rng.normal(size=(4, 52, 62)), sigma=(0, 4, 4))
    arr = 20 + 200 * (base - base.min()) / (base.max() - base.min())
    arr[:, :15, :15] = 0  # a nodata corner (in tile 00)
    raster = conftest.write_raster(folder / "whole.tif", arr)
    tiles = _tiles(arr, folder / "tiles")
    env = _env_raster(folder / "env.tif")
    enc = ecoalign.load_encoder("dofa", size="small", wavelengths_um=WAVES, band_mean=[100.0] * 4,
                                band_std=[50.0] * 4)
    xy = np.column_stack([LEFT + rng.uniform(150, 1100, 24), TOP - rng.uniform(350, 900, 24)])
    emb = ecoalign.embed_points(_points(xy, "EPSG:26912"), [raster], enc, patch_size_m=200.0)
    score = emb["emb_000"] + emb["emb_005"]
    pd.DataFrame({"plot_id": emb["plot_id"], "sp_a": (score > score.median()).astype(int),
                  "sp_b": (emb["emb_002"] < emb["emb_002"].median()).astype(int)}).to_csv(folder / "y.csv",
                                                                                         index=False)
    spec = spec_from_dict({"name": "t", "task": "presence_absence",
                           "target": {"source": str(folder / "y.csv"), "min_presences": 2},
                           "features": {"embeddings": True, "rasters": [{"path": str(env), "name": "env"}]},
                           "estimator": {"name": "rf_down", "params": {"n_estimators": 8}},
                           "cv": {"scheme": "random", "folds": 2}, "metrics": ["auc"], "bootstrap": 5})
    bundle = fit_bundle(spec, build_sites(spec, embeddings=emb), folder / "bundle", n_jobs=1, progress=False)
    single = run.map_raster(enc, bundle, raster, folder / "single.tif", stride_m=100.0, block_px=4,
                            progress=False, quicklook=False)
    return {"folder": folder, "arr": arr, "raster": raster, "tiles": tiles, "env": env, "enc": enc,
            "bundle": bundle, "single": single}


def _same_outputs(a: Path, b: Path) -> None:
    import rasterio

    small_map_world.assert_same_map(a, b)
    small_map_world.assert_same_map(presence_path(a), presence_path(b))
    with rasterio.open(a) as src:  # probabilities and the ensemble's sd bands, with the nodata corner
        assert src.descriptions == ("sp_a", "sp_b", "sp_a: sd", "sp_b: sd")
        vals = src.read()
        assert (vals == -9999.0).any() and (vals != -9999.0).sum() > 100


def test_glob_of_tiles_maps_as_the_single_raster(area, tmp_path):
    out = run.map_raster(area["enc"], area["bundle"], str(area["folder"] / "tiles" / "tile_*.tif"),
                         tmp_path / "glob.tif", stride_m=100.0, block_px=4, progress=False, quicklook=False)
    _same_outputs(area["single"], out)


def test_list_via_cli_and_a_vrt_map_as_the_single_raster(area, tmp_path):
    from ecoalign.data.mosaic import check_tiles, mosaic_vrt_xml

    out = tmp_path / "list.tif"
    args = ["map", "--encoder", "dofa-small", "--model", str(area["bundle"]), "--out", str(out), "--stride-m", "100",
            "--band-mean", "100,100,100,100", "--band-std", "50,50,50,50", "--no-progress", "--no-quicklook",
            "--raster", *map(str, area["tiles"][::-1])]  # any order
    assert main(args) == 0
    _same_outputs(area["single"], out)
    vrt = tmp_path / "mosaic.vrt"  # a VRT the user built (as gdalbuildvrt would)
    vrt.write_text(mosaic_vrt_xml(check_tiles(area["tiles"])))
    out_vrt = run.map_raster(area["enc"], area["bundle"], vrt, tmp_path / "vrt.tif", stride_m=100.0, block_px=3,
                             progress=False, quicklook=False)
    _same_outputs(area["single"], out_vrt)


def test_resume_ledger_is_keyed_on_the_tiles_not_on_the_mosaic_file(area):
    import os

    plan = planning.plan_map(area["enc"], area["bundle"], area["tiles"], stride_m=100.0)
    assert plan.tiles == [str(t.resolve()) for t in area["tiles"]] and plan.raster.endswith(".vrt")
    before = plan.fingerprint()
    os.remove(plan.raster)  # the cached mosaic is gone (cache cleared): written again, same fingerprint
    again = planning.plan_map(area["enc"], area["bundle"], area["tiles"], stride_m=100.0)
    assert again.raster == plan.raster and again.fingerprint() == before


def test_gaps_between_tiles_are_nodata(area, tmp_path):
    import rasterio

    from ecoalign.data.mosaic import resolve_raster

    vrt, tiles = resolve_raster([area["tiles"][0], area["tiles"][3]])  # two diagonal tiles: the others are gaps
    assert len(tiles) == 2
    with rasterio.open(vrt) as src:
        assert (src.width, src.height) == (62, 52) and src.nodata == 0
        arr = src.read()
        assert (arr[:, CUT_ROW:, :CUT_COL] == 0).all() and (arr[:, :CUT_ROW, CUT_COL:] == 0).all()
        np.testing.assert_array_equal(arr[:, CUT_ROW:, CUT_COL:], area["arr"][:, CUT_ROW:, CUT_COL:].astype(np.uint8))
    plain = _tiles(area["arr"], tmp_path / "plain", nodata=None)  # tiles without nodata: the gaps are NaN
    vrt, _ = resolve_raster([plain[0], plain[3]])
    with rasterio.open(vrt) as src:
        arr = src.read()
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
        assert np.isnan(arr[:, CUT_ROW:, :CUT_COL]).all() and not np.isnan(arr[:, CUT_ROW:, CUT_COL:]).any()


def _assert_refused(area, tmp_path, raster, *needles):
    out = tmp_path / "bad.tif"
    with pytest.raises(EcoalignInputError) as err:
        run.map_raster(area["enc"], area["bundle"], raster, out, stride_m=100.0, progress=False)
    msg = str(err.value)
    for n in needles:
        assert n in msg, msg
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    assert not presence_path(out).exists()
    return msg


def test_bad_tiles_are_refused_before_any_work(area, tmp_path):
    good = area["tiles"]
    _assert_refused(area, tmp_path, str(tmp_path / "nothing" / "*.tif"), "matches no file", "nothing")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00garbage" * 50)
    _assert_refused(area, tmp_path, [*good, broken], "broken.tif", "cannot read")
    (tmp_path / "crs").mkdir()
    other = _tiles(area["arr"], tmp_path / "crs")
    conftest.write_raster(other[3], area["arr"][:, CUT_ROW:, CUT_COL:], crs="EPSG:32612",
                          left=LEFT + CUT_COL * RES, top=TOP - CUT_ROW * RES)
    _assert_refused(area, tmp_path, str(tmp_path / "crs" / "*.tif"), "tile_11.tif", "gdalwarp -t_srs EPSG:26912")
    bands = _tiles(area["arr"], tmp_path / "bands")
    conftest.write_raster(bands[1], area["arr"][:3, :CUT_ROW, CUT_COL:], left=LEFT + CUT_COL * RES)
    _assert_refused(area, tmp_path, bands, "tile_01.tif", "3 bands", "4")
    res = _tiles(area["arr"], tmp_path / "res")
    conftest.write_raster(res[2], area["arr"][:, CUT_ROW::2, :CUT_COL:2], top=TOP - CUT_ROW * RES, res=40.0)
    _assert_refused(area, tmp_path, res, "tile_10.tif", "40 x 40", "gdalwarp -tr 20 20")
    shifted = _tiles(area["arr"], tmp_path / "grid")
    conftest.write_raster(shifted[3], area["arr"][:, CUT_ROW:, CUT_COL:], left=LEFT + CUT_COL * RES + 7,
                          top=TOP - CUT_ROW * RES)
    _assert_refused(area, tmp_path, shifted, "tile_11.tif", "pixel grid", "-tap")
    vrt = tmp_path / "missing.vrt"
    from ecoalign.data.mosaic import check_tiles, mosaic_vrt_xml

    vrt.write_text(mosaic_vrt_xml(check_tiles(good)).replace(str(good[2].resolve()), str(tmp_path / "gone.tif")))
    _assert_refused(area, tmp_path, vrt, "gone.tif", "does not exist")


def test_env_rasters_by_window_equal_the_point_sampling_of_the_fit(area):
    import geopandas as gpd

    from ecoalign.sdm.sites import sample_rasters

    plan = planning.plan_map(area["enc"], area["bundle"], area["raster"], stride_m=100.0)
    rows, cols = np.meshgrid(np.arange(plan.height), np.arange(plan.width), indexing="ij")
    xy = planning.window_centres(plan, rows.ravel(), cols.ravel())
    xy = np.vstack([xy, [[LEFT - 1e5, TOP]]])  # and one point outside the env raster
    mine, keep = blocks.env_values(plan, xy)
    pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=plan.crs)
    ref, ref_keep = sample_rasters(pts, plan.env_rasters)
    np.testing.assert_array_equal(mine["env"].to_numpy(), ref["env"].to_numpy())
    np.testing.assert_array_equal(keep, ref_keep)
    assert np.isnan(mine["env"].iloc[-1]) and (~keep).sum() >= 2 and keep.sum() > 50  # outside and the nodata hole
    same_crs = dict(plan.env_rasters[0], path=str(area["raster"]), band=2, name="b2")  # the same-CRS path too
    plan.env_rasters = [same_crs]
    mine, keep = blocks.env_values(plan, xy)
    ref, ref_keep = sample_rasters(pts, [same_crs])
    np.testing.assert_array_equal(mine["b2"].to_numpy(), ref["b2"].to_numpy())
    np.testing.assert_array_equal(keep, ref_keep)


def test_embed_glob_of_tiles_equals_the_single_raster_across_tile_edges(area, tmp_path):
    xy = np.array([[LEFT + CUT_COL * RES + 3, TOP - CUT_ROW * RES - 5],  # on the corner of all 4 tiles
                   [LEFT + CUT_COL * RES - 30, TOP - 300.0], [LEFT + 400.0, TOP - CUT_ROW * RES + 15]])
    pts = _points(xy, "EPSG:26912")
    one = ecoalign.embed_points(pts, [area["raster"]], area["enc"], patch_size_m=200.0)
    many = ecoalign.embed_points(pts, str(area["folder"] / "tiles" / "*.tif"), area["enc"], patch_size_m=200.0)
    cols = [c for c in one.columns if c.startswith("emb_")]
    assert len(one) == len(many) == 3
    np.testing.assert_array_equal(one[cols].to_numpy(), many[cols].to_numpy())


def test_overlapping_tiles_keep_valid_pixels_under_a_later_tiles_nodata(tmp_path):
    import rasterio

    from ecoalign.data.mosaic import resolve_raster

    a = np.full((2, 10, 10), 7, dtype=np.uint8)
    b = np.full((2, 10, 10), 9, dtype=np.uint8)
    b[:, :, :5] = 0  # nodata over the overlap
    ta = conftest.write_raster(tmp_path / "a.tif", a)
    tb = conftest.write_raster(tmp_path / "b.tif", b, left=LEFT + 5 * RES)  # overlaps a's east half
    vrt, _ = resolve_raster([ta, tb])
    with rasterio.open(vrt) as src:
        arr = src.read()
    assert arr.shape == (2, 10, 15)
    assert (arr[:, :, :10] == 7).all() and (arr[:, :, 10:] == 9).all()


def test_tiles_through_dask_workers_give_the_single_raster_map(area, tmp_path):
    import rasterio

    out = run.map_raster(area["enc"], area["bundle"], area["tiles"], tmp_path / "dask.tif", stride_m=100.0,
                         block_px=4, progress=False, quicklook=False, workers=1)
    with rasterio.open(out) as x, rasterio.open(area["single"]) as y:  # workers are single-threaded: rounding
        assert (x.transform, x.shape, x.count) == (y.transform, y.shape, y.count)
        a, b = x.read(), y.read()
        assert ((a == -9999.0) == (b == -9999.0)).all()
        np.testing.assert_allclose(a, b, atol=1e-5)
