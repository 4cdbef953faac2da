"""The data layer on real files: relevé tables (sPlotOpen long, Bryce wide), plot files, raster windows, splits.

Every file is written in its real format (CSV, GeoPackage, GeoParquet, GeoTIFF) under tmp_path, or read from the
shared real data (../shared/data), skipping with a reason when that folder is absent.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BRYCE, SHARED, need_shared, write_manifest, write_raster

from ecoalign.core.errors import EcoalignInputError
from ecoalign.data.manifest import load_manifest
from ecoalign.data.patches import (
    SKIP_NODATA,
    SKIP_OUTSIDE,
    PatchReader,
    band_stats,
    open_rasters,
)
from ecoalign.data.plots import plot_centres, read_plots
from ecoalign.data.releves import read_releves
from ecoalign.data.splits import block_ids, spatial_block_split

GREECE = SHARED / "releves" / "splotopen_greece" / "greece_DT.csv"

# labdsv's bryceveg classes -> percent, written out here independently of the package's table.
BRYCE_PERCENT = {0.0: 0.0, 0.2: 0.1, 0.5: 0.5, 1.0: 3.0, 2.0: 15.0, 3.0: 37.5, 4.0: 62.5, 5.0: 85.0, 6.0: 97.5}


# --------------------------------------------------------------------------------------------- relevé tables


def test_splotopen_greece_long_table_loads_every_plot():
    if not GREECE.exists():
        pytest.skip(f"shared sPlotOpen data not found at {GREECE}")
    raw = pd.read_csv(GREECE, dtype=str)
    table = read_releves(GREECE, format="long", plot_column="PlotObservationID", species_column="Species",
                         cover_column="Relative_cover", cover_scale="percent")
    assert len(table.plot_ids) == 17 == raw["PlotObservationID"].nunique()
    assert table.report["plots"] == 17
    assert table.report["duplicate_species_rows"] == 0
    assert table.report["empty_releves_skipped"] == 0
    assert len(table.species) == raw["Species"].str.strip().nunique()
    assert table.cover.shape == (17, len(table.species))
    # plot ids stay the file's text (no float round trip), and every cell is the file's value
    assert "790150.0" in list(table.plot_ids)
    row = list(table.plot_ids).index("790150.0")
    col = table.species.index("Cardamine bulbifera")
    assert table.cover[row, col] == pytest.approx(0.11345705388686413, rel=1e-6)
    # Relative_cover sums to 1 per relevé in sPlotOpen: nothing was lost or double counted
    np.testing.assert_allclose(table.cover.sum(axis=1), 1.0, rtol=1e-5)
    assert table.cover.sum() == pytest.approx(raw["Relative_cover"].astype(float).sum(), rel=1e-5)


def test_bryce_wide_table_with_bryce_cover_classes_matches_the_class_midpoints():
    need_shared()
    path = BRYCE / "labdsv_bryceveg.csv"
    table = read_releves(path, format="wide", plot_column="row", cover_scale="bryce")
    raw = pd.read_csv(path).set_index("row")
    assert len(table.plot_ids) == 160 and table.report["plots"] == 160
    assert table.report["empty_releves_skipped"] == 0
    expected = raw.apply(lambda col: col.map(lambda v: BRYCE_PERCENT[round(float(v), 1)]))
    expected = expected.loc[list(table.plot_ids), table.species]
    np.testing.assert_allclose(table.cover, expected.to_numpy(dtype=np.float32), rtol=0, atol=1e-6)
    # species never present are dropped; every kept species occurs somewhere
    assert set(table.species) <= set(raw.columns)
    assert (table.cover.sum(axis=0) > 0).all()
    # a trace class (0.2) in the file maps to 0.1 %
    plot, species = next((p, s) for p in raw.index for s in raw.columns if raw.at[p, s] == 0.2)
    assert table.cover[list(table.plot_ids).index(plot), table.species.index(species)] == pytest.approx(0.1)
    assert set(np.unique(table.cover)) <= set(np.float32(list(BRYCE_PERCENT.values())))


def test_bryce_scale_on_a_small_wide_table(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("plot,sp_a,sp_b,sp_c\n"
                    "p1,0.2,6,0\n"
                    "p2,0.5,1.0,6.0\n"
                    "p3,5,0.0,2\n")
    table = read_releves(path, format="wide", plot_column="plot", cover_scale="bryce")
    assert list(table.plot_ids) == ["p1", "p2", "p3"]
    assert table.species == ["sp_a", "sp_b", "sp_c"]
    np.testing.assert_allclose(table.cover, [[0.1, 97.5, 0.0], [0.5, 3.0, 97.5], [85.0, 0.0, 15.0]])


def test_custom_cover_scale_mapping_and_braun_blanquet(tmp_path):
    path = tmp_path / "bb.csv"
    path.write_text("plot_id,species,cover\nA,Fagus sylvatica,5\nA,Oxalis acetosella,+\nB,Fagus sylvatica,r\n"
                    "B,Abies alba,2.0\n")
    bb = read_releves(path, cover_scale="braun_blanquet")
    assert bb.species == ["Abies alba", "Fagus sylvatica", "Oxalis acetosella"]
    np.testing.assert_allclose(bb.cover, [[0.0, 87.5, 0.5], [15.0, 0.1, 0.0]])
    own = read_releves(path, cover_scale={"r": 1, "+": 2, "2": 20, "5": 90})
    np.testing.assert_allclose(own.cover, [[0.0, 90.0, 2.0], [20.0, 1.0, 0.0]])


# ------------------------------------------------------------------------------------------------ plot files


def _squares_4326(tmp_path, centres, ids, side=40.0):
    import geopandas as gpd
    from shapely.geometry import box

    polys = [box(x - side / 2, y - side / 2, x + side / 2, y + side / 2) for x, y in centres]
    gdf = gpd.GeoDataFrame({"plot_id": ids, "elev": np.arange(len(ids))}, geometry=polys, crs="EPSG:26912")
    return gdf.to_crs("EPSG:4326")


def test_geopackage_polygons_give_centroids_in_the_raster_crs(tmp_path):
    centres = np.array([[388220.9, 4144784.0], [395000.0, 4160000.0], [402500.5, 4171999.5]])
    ids = ["bcnp__1", "q2", "q3"]
    path = tmp_path / "plots.gpkg"
    _squares_4326(tmp_path, centres, ids).to_file(path, layer="plots", driver="GPKG")

    raster = write_raster(tmp_path / "r.tif", np.full((3, 20, 20), 100))
    src = open_rasters([raster], [0.665, 0.56, 0.49])[0]

    gdf = read_plots(path, layer="plots")
    assert gdf.crs.to_epsg() == 4326
    assert list(gdf.index) == ids and (gdf.geom_type == "Polygon").all()
    assert gdf.attrs["without_coordinates"] == []
    # stored in degrees; centres come back in the raster's metres (UTM 12N), polygons by their centroid
    assert (gdf.geometry.bounds.abs() < 180).all().all()
    got = plot_centres(gdf, src.crs)
    np.testing.assert_allclose(got, centres, atol=0.01)
    np.testing.assert_allclose(plot_centres(gdf.loc[["q3", "bcnp__1"]], src.crs), centres[[2, 0]], atol=0.01)


def test_geoparquet_points_and_same_crs_centres(tmp_path):
    import geopandas as gpd

    pts = gpd.GeoDataFrame({"site": ["a", "b"]}, geometry=gpd.points_from_xy([1000.0, 2000.0], [5.0, 6.0]),
                           crs="EPSG:26912")
    path = tmp_path / "plots.parquet"
    pts.to_parquet(path)
    gdf = read_plots(path, id_column="site")
    assert list(gdf.index) == ["a", "b"]
    np.testing.assert_allclose(plot_centres(gdf, gdf.crs), [[1000.0, 5.0], [2000.0, 6.0]])


def test_real_bryce_sites_csv_skips_the_plot_without_coordinates():
    need_shared()
    gdf = read_plots(BRYCE / "labdsv_brycesite.csv", id_column="row", x_column="east", y_column="north",
                     crs="EPSG:26912")
    assert len(gdf) == 159
    assert gdf.attrs["without_coordinates"] == ["bcnp109"]
    assert "bcnp109" not in gdf.index
    assert gdf.crs.to_epsg() == 26912
    assert gdf.loc["bcnp__1"].geometry.x == pytest.approx(388220.9)
    assert gdf.loc["bcnp__1"].geometry.y == pytest.approx(4144784.0)


def test_csv_plots_guess_lon_lat_columns(tmp_path):
    path = tmp_path / "plots.csv"
    path.write_text("plot_id,Longitude,Latitude\np1,-112.2,37.5\np2,-112.1,37.6\n")
    gdf = read_plots(path, crs="EPSG:4326")
    assert list(gdf.index) == ["p1", "p2"]
    np.testing.assert_allclose(gdf.geometry.x, [-112.2, -112.1])


# ---------------------------------------------------------------------------------------------- raster windows


def _reader_raster(tmp_path):
    """100 x 100 px at 10 m (1 km square), values 50/100/150 per band, nodata (0) in the top-left 30 x 30 px."""
    arr = np.stack([np.full((100, 100), v) for v in (50, 100, 150)])
    arr[:, :30, :30] = 0
    path = write_raster(tmp_path / "w.tif", arr, left=500000.0, top=4100000.0, res=10.0)
    return path, open_rasters([path], [0.665, 0.56, 0.49])


def test_band_stats_ignore_nodata(tmp_path):
    _, sources = _reader_raster(tmp_path)
    mean, std = band_stats(sources)
    np.testing.assert_allclose(mean, [50, 100, 150])
    np.testing.assert_allclose(std, [1, 1, 1])  # constant bands: std replaced by 1, never a division by 0


def test_patch_reader_keeps_inside_and_counts_outside_and_nodata(tmp_path):
    _, sources = _reader_raster(tmp_path)
    left, top = 500000.0, 4100000.0
    centres = np.array([
        [left + 700, top - 700],        # 0: inside, all valid
        [left + 5000, top - 500],       # 1: east of the raster
        [left + 150, top - 150],        # 2: inside the nodata corner
        [left + 500, top + 10],         # 3: just north of the raster
        [left + 0.0, top - 600],        # 4: on the west edge: half the window off the raster (not > 0.5)
        [left + 1000 - 10, top - 1000 + 10],  # 5: inside, at the south-east corner: ~3/4 of the window off
    ])
    mean = np.array([50, 100, 150], np.float32)
    with PatchReader(sources, size_m=100, out_px=16, max_nodata_fraction=0.5, mean=mean, std=np.ones(3)) as reader:
        patches, kept, skipped = reader.read_batch(centres)
        native, reason = reader.read_native(*centres[0])
    assert kept == [0, 4]
    assert skipped == {1: SKIP_OUTSIDE, 2: SKIP_NODATA, 3: SKIP_OUTSIDE, 5: SKIP_NODATA}
    assert patches.shape == (2, 3, 16, 16) and np.isfinite(patches).all()
    # standardised by the band mean: a constant raster gives zeros
    np.testing.assert_allclose(patches[0], 0.0, atol=1e-5)
    assert reason is None and native.shape == (3, 10, 10)


def test_patch_reader_nothing_paired_returns_an_empty_batch(tmp_path):
    _, sources = _reader_raster(tmp_path)
    with PatchReader(sources, size_m=100, out_px=8, mean=np.zeros(3), std=np.ones(3)) as reader:
        patches, kept, skipped = reader.read_batch(np.array([[0.0, 0.0], [1e7, 1e7]]))
    assert patches.shape == (0, 3, 8, 8) and kept == []
    assert skipped == {0: SKIP_OUTSIDE, 1: SKIP_OUTSIDE}


# ---------------------------------------------------------------------------------------------- spatial split


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_spatial_block_split_never_splits_a_block(seed):
    rng = np.random.default_rng(seed)
    centres = rng.uniform([380000, 4140000], [404000, 4174000], size=(300, 2))
    labels = spatial_block_split(centres, block_size_m=3000, val_fraction=0.15, test_fraction=0.2, seed=seed)
    assert labels.shape == (300,) and set(labels) == {"train", "val", "test"}
    cells = np.floor(centres / 3000).astype(int)
    per_block: dict[tuple, set] = {}
    for cell, label in zip(map(tuple, cells), labels):
        per_block.setdefault(cell, set()).add(label)
    assert len(per_block) > 10
    assert all(len(v) == 1 for v in per_block.values()), {k: v for k, v in per_block.items() if len(v) > 1}
    # the held-out shares are near their targets (whole blocks, so not exact)
    assert 0.1 <= (labels == "test").mean() <= 0.35 and 0.05 <= (labels == "val").mean() <= 0.3
    # same seed, same split
    again = spatial_block_split(centres, block_size_m=3000, val_fraction=0.15, test_fraction=0.2, seed=seed)
    assert (again == labels).all()


def test_block_ids_group_by_square_cell_including_negative_coordinates():
    centres = np.array([[-1.0, 5.0], [-499.0, 499.0], [1.0, 5.0], [499.0, 1.0], [500.0, 1.0]])
    ids = block_ids(centres, 500)
    assert ids[0] == ids[1] and ids[2] == ids[3]
    assert len({ids[0], ids[2], ids[4]}) == 3


def test_spatial_block_split_too_few_blocks_is_a_clear_error():
    centres = np.array([[10.0, 10.0], [20.0, 30.0], [400.0, 400.0], [1100.0, 10.0]])
    with pytest.raises(EcoalignInputError) as err:
        spatial_block_split(centres, block_size_m=1000, val_fraction=0.15, test_fraction=0.2, seed=0)
    msg = str(err.value)
    assert "all 4 plots fall into 2 spatial block(s) of 1000 m" in msg
    assert "smaller data.block_size_m" in msg


def test_spatial_block_split_too_few_plots():
    with pytest.raises(EcoalignInputError, match="only 2 usable plots"):
        spatial_block_split(np.array([[0.0, 0.0], [5000.0, 0.0]]), block_size_m=100, val_fraction=0.1,
                            test_fraction=0.1, seed=0)


def test_spatial_block_split_names_the_empty_split():
    centres = np.array([[0.0, 0.0], [5000.0, 0.0], [10000.0, 0.0], [15000.0, 0.0]])
    with pytest.raises(EcoalignInputError) as err:
        spatial_block_split(centres, block_size_m=1000, val_fraction=0.0, test_fraction=0.25, seed=0)
    assert "left 'val' empty (4 plots in 4 blocks)" in str(err.value)


# -------------------------------------------------------------------------------------------------- manifests


def test_manifest_with_a_checksums_file(tmp_path):
    from ecoalign.core.io import sha256_file

    write_raster(tmp_path / "img.tif", np.full((3, 4, 4), 9))
    (tmp_path / "plots.csv").write_text("plot_id,x,y\np1,1,2\n")
    (tmp_path / "rel.csv").write_text("plot_id,species,cover\np1,Poa annua,5\n")
    sums = "".join(f"{sha256_file(tmp_path / n)}  {n}\n" for n in ("img.tif", "plots.csv", "rel.csv"))
    (tmp_path / "SHA256SUMS").write_text(sums)
    (tmp_path / "m.yaml").write_text(
        "name: sums\nchecksums: SHA256SUMS\nimagery: {files: [img.tif], wavelengths_um: [0.665, 0.56, 0.49]}\n"
        "plots: {path: plots.csv, crs: 'EPSG:26912'}\nreleves: rel.csv\n")
    m = load_manifest(tmp_path / "m.yaml")
    assert m.name == "sums" and m.wavelengths_um == (0.665, 0.56, 0.49)
    assert m.imagery[0].sha256 == sha256_file(tmp_path / "img.tif")
    assert m.plots.get("crs") == "EPSG:26912"
    assert set(m.identity()["files"]) == {"img.tif", "plots.csv", "rel.csv"}


def test_manifest_round_trip_through_write_manifest(tmp_path):
    write_raster(tmp_path / "img.tif", np.full((3, 4, 4), 9))
    (tmp_path / "plots.csv").write_text("plot_id,x,y\np1,1,2\n")
    (tmp_path / "rel.csv").write_text("plot_id,species,cover\np1,Poa annua,5\n")
    path = write_manifest(tmp_path, {"imagery": {"files": ["img.tif"], "wavelengths_um": [0.49, 0.56, 0.665],
                                                 "nodata": 0},
                                     "plots": {"path": "plots.csv", "crs": "EPSG:26912"},
                                     "releves": {"path": "rel.csv"}})
    m = load_manifest(path)
    assert m.name == "manifest" and m.nodata == 0
    assert m.plots.path == Path(tmp_path / "plots.csv")
