"""Bad input gives a specific EcoalignInputError (file, row, column, what was expected) or a skip that is counted.

Unit-level tests write small files in their real formats (GeoTIFF, GeoPackage, CSV) under tmp_path. Three
end-to-end runs of ``ecoalign.adapt`` (DOFA-small, random weights, CPU) cover what only the orchestrator does;
only one of them embeds any window.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BRYCE, bryce_raster, need_shared, write_manifest, write_raster

import ecoalign
from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import sha256_file
from ecoalign.data.manifest import load_manifest
from ecoalign.data.patches import open_rasters
from ecoalign.data.plots import read_plots
from ecoalign.data.releves import read_releves

RGB = [0.665, 0.56, 0.49]
FAST = ["backbone.size=small", "trainer=quick", "data.augmentations=1", "data.block_size_m=3000",
        "trainer.baselines=false"]


def _error(excinfo) -> str:
    return str(excinfo.value)


def _small_dataset(folder: Path) -> dict:
    """A valid tiny data set (3-band GeoTIFF in UTM 12N, plots CSV, long relevé CSV) and its manifest body."""
    folder.mkdir(parents=True, exist_ok=True)
    write_raster(folder / "img.tif", np.full((3, 10, 10), 7))
    (folder / "plots.csv").write_text("plot_id,x,y\np1,387050,4173450\np2,387100,4173400\n")
    (folder / "releves.csv").write_text("plot_id,species,cover\np1,Poa annua,5\np2,Poa annua,10\n")
    return {"name": "tiny", "imagery": {"files": ["img.tif"], "wavelengths_um": RGB, "nodata": 0},
            "plots": {"path": "plots.csv", "crs": "EPSG:26912"}, "releves": {"path": "releves.csv"}}


# ------------------------------------------------------------------------------------- 1. missing files


@pytest.mark.parametrize("missing", ["img.tif", "plots.csv", "releves.csv"])
def test_manifest_pointing_at_a_missing_file(tmp_path, missing):
    manifest = write_manifest(tmp_path, _small_dataset(tmp_path))
    assert load_manifest(manifest).name == "tiny"  # valid before the file goes away
    (tmp_path / missing).unlink()
    with pytest.raises(EcoalignInputError) as err:
        load_manifest(manifest)
    msg = _error(err)
    assert "file listed in the manifest does not exist" in msg
    assert str(manifest) in msg and str(tmp_path / missing) in msg


def test_manifest_name_that_does_not_exist(tmp_path):
    with pytest.raises(EcoalignInputError) as err:
        load_manifest("no_such_dataset")
    msg = _error(err)
    assert "no_such_dataset" in msg and "manifest not found" in msg
    assert "'demo'" in msg  # the named manifests that do exist
    with pytest.raises(EcoalignInputError, match="manifest not found"):
        load_manifest(tmp_path / "nowhere.yaml")


def test_readers_name_the_missing_file(tmp_path):
    with pytest.raises(EcoalignInputError) as err:
        read_plots(tmp_path / "sites.gpkg")
    assert "plots file not found" in _error(err) and "sites.gpkg" in _error(err)
    with pytest.raises(EcoalignInputError) as err:
        read_releves(tmp_path / "veg.csv")
    assert "relevé table not found" in _error(err) and "veg.csv" in _error(err)
    with pytest.raises(EcoalignInputError) as err:
        open_rasters([tmp_path / "ortho.tif"], RGB)
    assert "raster not found" in _error(err) and "ortho.tif" in _error(err)


def test_manifest_missing_section_and_bad_wavelengths(tmp_path):
    body = _small_dataset(tmp_path)
    del body["releves"]
    with pytest.raises(EcoalignInputError) as err:
        load_manifest(write_manifest(tmp_path, body))
    assert "missing key 'releves'" in _error(err) and "manifest.yaml" in _error(err)
    body = _small_dataset(tmp_path)
    body["imagery"]["wavelengths_um"] = [665, 560, 490]  # nanometres by mistake
    with pytest.raises(EcoalignInputError) as err:
        load_manifest(write_manifest(tmp_path, body))
    assert "imagery.wavelengths_um" in _error(err) and "micrometres" in _error(err)


def test_manifest_with_no_imagery_file(tmp_path):
    body = _small_dataset(tmp_path)
    body["imagery"]["files"] = []
    manifest = write_manifest(tmp_path, body)
    with pytest.raises(EcoalignInputError) as err:
        m = load_manifest(manifest)
        open_rasters([f.path for f in m.imagery], m.wavelengths_um, m.nodata)
    assert "imagery" in _error(err)


# ----------------------------------------------------------------------------- 2, 3. rasters


def test_raster_without_crs(tmp_path):
    path = write_raster(tmp_path / "nocrs.tif", np.full((3, 8, 8), 5), crs=None)
    with pytest.raises(EcoalignInputError) as err:
        open_rasters([path], RGB)
    msg = _error(err)
    assert "nocrs.tif" in msg and "the raster has no CRS" in msg and "gdal_edit.py -a_srs" in msg


def test_raster_band_count_not_matching_wavelengths(tmp_path):
    path = write_raster(tmp_path / "rgb.tif", np.full((3, 8, 8), 5))
    with pytest.raises(EcoalignInputError) as err:
        open_rasters([path], [0.49, 0.56, 0.665, 0.842])
    msg = _error(err)
    assert "rgb.tif" in msg
    assert "the raster has 3 bands but 4 wavelengths are given [0.49, 0.56, 0.665, 0.842]" in msg
    assert "one wavelength (µm) per band" in msg


def test_raster_in_degrees_and_rasters_with_different_crs(tmp_path):
    geo = write_raster(tmp_path / "geo.tif", np.full((3, 8, 8), 5), crs="EPSG:4326", left=-112.0, top=37.6,
                       res=0.001)
    with pytest.raises(EcoalignInputError) as err:
        open_rasters([geo], RGB)
    assert "geo.tif" in _error(err) and "geographic CRS" in _error(err)
    a = write_raster(tmp_path / "a.tif", np.full((3, 8, 8), 5), crs="EPSG:26912")
    b = write_raster(tmp_path / "b.tif", np.full((3, 8, 8), 5), crs="EPSG:32612")
    with pytest.raises(EcoalignInputError) as err:
        open_rasters([a, b], RGB)
    assert "different CRSs" in _error(err) and "EPSG:26912" in _error(err) and "EPSG:32612" in _error(err)


def test_unreadable_raster(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"this is not a GeoTIFF")
    with pytest.raises(EcoalignInputError) as err:
        open_rasters([path], RGB)
    assert "broken.tif" in _error(err) and "cannot read the raster" in _error(err)


# ----------------------------------------------------------------------------- 10. checksums


def test_manifest_with_a_wrong_sha256(tmp_path):
    body = _small_dataset(tmp_path)
    wrong = "ab" * 32
    body["plots"]["sha256"] = wrong
    manifest = write_manifest(tmp_path, body)
    actual = sha256_file(tmp_path / "plots.csv")
    with pytest.raises(EcoalignInputError) as err:
        load_manifest(manifest)
    msg = _error(err)
    assert "sha256 mismatch" in msg and str(tmp_path / "plots.csv") in msg and str(manifest) in msg
    assert f"manifest says {wrong}" in msg and f"file has {actual}" in msg
    assert load_manifest(manifest, verify=False).plots.sha256 == wrong  # verification is what catches it


def test_file_edited_after_hashing_is_caught(tmp_path):
    manifest = write_manifest(tmp_path, _small_dataset(tmp_path))
    with open(tmp_path / "releves.csv", "a") as f:
        f.write("p2,Festuca ovina,3\n")
    with pytest.raises(EcoalignInputError) as err:
        load_manifest(manifest)
    assert "sha256 mismatch" in _error(err) and "releves.csv" in _error(err)


def test_manifest_without_sha256_and_malformed_checksum_file(tmp_path):
    import yaml

    body = _small_dataset(tmp_path)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(body))
    with pytest.raises(EcoalignInputError) as err:
        load_manifest(tmp_path / "m.yaml")
    assert "no sha256 given for img.tif" in _error(err) and "manifest-hash" in _error(err)
    (tmp_path / "SHA256SUMS").write_text(f"{sha256_file(tmp_path / 'img.tif')}  img.tif\nnot-a-hash plots.csv\n")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({**body, "checksums": "SHA256SUMS"}))
    with pytest.raises(EcoalignInputError) as err:
        load_manifest(tmp_path / "m.yaml")
    assert "SHA256SUMS" in _error(err) and "line 2" in _error(err) and "malformed checksum line" in _error(err)


# ----------------------------------------------------------------------------- 5. empty relevés


def test_empty_releve_is_skipped_and_counted(tmp_path):
    path = tmp_path / "veg.csv"
    path.write_text("plot_id,species,cover\n"
                    "A,Poa annua,10\n"
                    "A,Festuca ovina,20\n"
                    "B,Poa annua,0\n"
                    "B,Carex nigra,0\n"
                    "C,Festuca ovina,5\n")
    table = read_releves(path)
    assert list(table.plot_ids) == ["A", "C"]
    assert table.report["empty_releves_skipped"] == 1
    assert table.report["empty_releve_examples"] == ["B"]
    assert table.report["plots"] == 2
    assert "Carex nigra" not in table.species  # present only in the empty relevé
    np.testing.assert_allclose(table.cover, [[20.0, 10.0], [5.0, 0.0]])


def test_empty_rows_of_a_wide_table_are_skipped_and_counted(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("plot,sp_a,sp_b\np1,1,0\np2,0,0\np3,0,0.0\np4,0.5,2\n")
    table = read_releves(path, format="wide", plot_column="plot", cover_scale="bryce")
    assert list(table.plot_ids) == ["p1", "p4"]
    assert table.report["empty_releves_skipped"] == 2 and table.report["empty_releve_examples"] == ["p2", "p3"]


def test_all_releves_empty_is_an_error(tmp_path):
    path = tmp_path / "veg.csv"
    path.write_text("plot_id,species,cover\nA,Poa annua,0\nB,Carex nigra,0.0\n")
    with pytest.raises(EcoalignInputError) as err:
        read_releves(path)
    assert "veg.csv" in _error(err) and "every relevé is empty" in _error(err)
    (tmp_path / "header_only.csv").write_text("plot_id,species,cover\n")
    with pytest.raises(EcoalignInputError) as err:
        read_releves(tmp_path / "header_only.csv")
    assert "header_only.csv" in _error(err) and "no rows" in _error(err)


# ----------------------------------------------------------------------------- 6. NaN / negative covers


def test_nan_cover_names_row_and_column(tmp_path):
    path = tmp_path / "veg.csv"
    path.write_text("plot_id,species,cover\nA,Poa annua,10\nA,Festuca ovina,\nB,Poa annua,3\n")
    with pytest.raises(EcoalignInputError) as err:
        read_releves(path)
    msg = _error(err)
    assert "veg.csv" in msg and "row 3, column 'cover'" in msg and "cover is missing (NaN)" in msg
    # same with a cover scale, and in a wide table (the species column is named)
    classes = tmp_path / "classes.csv"
    classes.write_text("plot_id,species,cover\nA,Poa annua,+\nA,Festuca ovina,2\nB,Poa annua,\n")
    with pytest.raises(EcoalignInputError) as err:
        read_releves(classes, cover_scale="braun_blanquet")
    assert "classes.csv" in _error(err) and "row 4, column 'cover'" in _error(err) and "NaN" in _error(err)
    wide = tmp_path / "wide.csv"
    wide.write_text("plot,sp_a,sp_b\np1,1,0\np2,0,NA\n")
    with pytest.raises(EcoalignInputError) as err:
        read_releves(wide, format="wide", plot_column="plot")
    assert "wide.csv" in _error(err) and "row 3, column 'sp_b'" in _error(err) and "NaN" in _error(err)


def test_negative_cover_names_row_and_column(tmp_path):
    path = tmp_path / "veg.csv"
    path.write_text("plot_id,species,pct\nA,Poa annua,10\nA,Festuca ovina,2\nB,Poa annua,-5\n")
    with pytest.raises(EcoalignInputError) as err:
        read_releves(path, cover_column="pct")
    msg = _error(err)
    assert "veg.csv" in msg and "negative cover -5.0" in msg and "row 4, column 'pct'" in msg
    assert "cover >= 0" in msg


def test_text_cover_without_a_scale(tmp_path):
    path = tmp_path / "veg.csv"
    path.write_text("plot_id,species,cover\nA,Poa annua,10\nA,Festuca ovina,2a\n")
    with pytest.raises(EcoalignInputError) as err:
        read_releves(path)
    msg = _error(err)
    assert "cover '2a' is not a number" in msg and "row 3, column 'cover'" in msg and "cover_scale" in msg


# ----------------------------------------------------------------------------- 7. duplicated species rows


def test_duplicated_species_rows_are_summed_and_reported(tmp_path):
    path = tmp_path / "veg.csv"
    path.write_text("plot_id,species,cover\n"
                    "A,Poa annua,10\n"
                    "A,Festuca ovina,20\n"
                    "A,Poa  annua ,5\n"  # same species with odd spacing, as in real exports
                    "B,Poa annua,3\n")
    table = read_releves(path)
    assert table.species == ["Festuca ovina", "Poa annua"]
    np.testing.assert_allclose(table.cover, [[20.0, 15.0], [0.0, 3.0]])
    assert table.report["duplicate_species_rows"] == 2
    assert table.report["duplicate_examples"] == [["A", "Poa annua"], ["A", "Poa annua"]]


def test_no_duplicates_reports_zero(tmp_path):
    path = tmp_path / "veg.csv"
    path.write_text("plot_id,species,cover\nA,Poa annua,10\nB,Poa annua,3\n")
    table = read_releves(path)
    assert table.report["duplicate_species_rows"] == 0 and "duplicate_examples" not in table.report


def test_wide_table_with_duplicated_plot_rows(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("plot,sp_a,sp_b\np1,1,0\np2,0,2\np2,1,1\n")
    with pytest.raises(EcoalignInputError) as err:
        read_releves(path, format="wide", plot_column="plot")
    msg = _error(err)
    assert "wide.csv" in msg and "plot id 'p2' appears on more than one row" in msg and "row 4" in msg
    assert "one row per plot" in msg


# ----------------------------------------------------------------------------- 8. unknown cover classes


def test_unknown_cover_class_names_value_row_and_known_classes(tmp_path):
    path = tmp_path / "bb.csv"
    path.write_text("plot_id,species,cover\nA,Fagus sylvatica,5\nA,Oxalis acetosella,+\nB,Abies alba,6\n")
    with pytest.raises(EcoalignInputError) as err:
        read_releves(path, cover_scale="braun_blanquet")
    msg = _error(err)
    assert "bb.csv" in msg and "unknown cover class '6'" in msg and "row 4, column 'cover'" in msg
    assert "one of ['+', '1', '2', '3', '4', '5', 'r']" in msg


def test_unknown_bryce_class_in_a_wide_table(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("plot,sp_a,sp_b\np1,0.2,0\np2,0.5,0.3\n")
    with pytest.raises(EcoalignInputError) as err:
        read_releves(path, format="wide", plot_column="plot", cover_scale="bryce")
    msg = _error(err)
    assert "unknown cover class '0.3'" in msg and "row 3, column 'sp_b'" in msg and "'0.2'" in msg and "'6'" in msg


def test_unknown_scale_format_and_column(tmp_path):
    path = tmp_path / "veg.csv"
    path.write_text("plot_id,species,cover\nA,Poa annua,10\n")
    with pytest.raises(EcoalignInputError) as err:
        read_releves(path, cover_scale="domin")
    assert "unknown cover scale 'domin'" in _error(err) and "braun_blanquet" in _error(err)
    with pytest.raises(EcoalignInputError) as err:
        read_releves(path, format="tall")
    assert "unknown relevé format 'tall'" in _error(err) and "'long' or 'wide'" in _error(err)
    with pytest.raises(EcoalignInputError) as err:
        read_releves(path, cover_column="Relative_cover")
    assert "column 'Relative_cover' (cover) not found" in _error(err) and "'plot_id'" in _error(err)


# ----------------------------------------------------------------------------- plot files


def test_plots_csv_blank_coordinate_is_skipped_and_listed(tmp_path):
    path = tmp_path / "sites.csv"
    path.write_text("plot_id,x,y\np1,387050,4173450\np2,,4173400\np3,387150,4173350\n")
    gdf = read_plots(path, crs="EPSG:26912")
    assert list(gdf.index) == ["p1", "p3"]
    assert gdf.attrs["without_coordinates"] == ["p2"]


def test_plots_csv_non_numeric_coordinate_names_row_and_column(tmp_path):
    path = tmp_path / "sites.csv"
    path.write_text("plot_id,x,y\np1,387050,4173450\np2,387O50,4173400\n")  # letter O typed for a zero
    with pytest.raises(EcoalignInputError) as err:
        read_plots(path, crs="EPSG:26912")
    msg = _error(err)
    assert "sites.csv" in msg and "coordinate '387O50' is not a number" in msg and "row 3, column 'x'" in msg


def test_plots_csv_without_crs(tmp_path):
    path = tmp_path / "sites.csv"
    path.write_text("plot_id,east,north\np1,387050,4173450\n")
    with pytest.raises(EcoalignInputError) as err:
        read_plots(path)
    msg = _error(err)
    assert "sites.csv" in msg and "a CSV of plots needs its CRS" in msg and "'crs:' in the manifest" in msg


def test_plots_csv_without_coordinate_columns(tmp_path):
    path = tmp_path / "sites.csv"
    path.write_text("plot_id,elev\np1,2500\n")
    with pytest.raises(EcoalignInputError) as err:
        read_plots(path, crs="EPSG:26912")
    assert "sites.csv" in _error(err) and "no x coordinate column" in _error(err) and "x_column" in _error(err)


def test_duplicated_plot_ids(tmp_path):
    path = tmp_path / "sites.csv"
    path.write_text("plot_id,x,y\np1,387050,4173450\np2,387100,4173400\np2 ,387150,4173350\n")
    with pytest.raises(EcoalignInputError) as err:
        read_plots(path, crs="EPSG:26912")
    msg = _error(err)
    assert "sites.csv" in msg and "plot id 'p2' appears more than once" in msg and "row 4" in msg
    assert "unique plot ids" in msg


def test_duplicated_plot_id_row_after_a_plot_without_coordinates(tmp_path):
    path = tmp_path / "sites.csv"
    path.write_text("plot_id,x,y\np0,,4173450\np1,387100,4173400\np1,387150,4173350\n")
    with pytest.raises(EcoalignInputError) as err:
        read_plots(path, crs="EPSG:26912")
    assert "plot id 'p1' appears more than once" in _error(err)
    assert "row 4" in _error(err)  # the second p1 is on line 4 of the file


def test_duplicated_plot_id_where_one_copy_lacks_coordinates(tmp_path):
    path = tmp_path / "sites.csv"
    path.write_text("plot_id,x,y\np1,,4173450\np1,387100,4173400\n")
    with pytest.raises(EcoalignInputError) as err:
        read_plots(path, crs="EPSG:26912")
    assert "plot id 'p1' appears more than once" in _error(err)


def test_geopackage_without_crs_and_without_id_column(tmp_path):
    import geopandas as gpd

    gdf = gpd.GeoDataFrame({"plot_id": ["a", "b"]}, geometry=gpd.points_from_xy([1.0, 2.0], [3.0, 4.0]))
    gdf.to_file(tmp_path / "nocrs.gpkg", driver="GPKG")
    with pytest.raises(EcoalignInputError) as err:
        read_plots(tmp_path / "nocrs.gpkg")
    assert "nocrs.gpkg" in _error(err) and "the plots have no CRS" in _error(err)
    gdf.set_crs("EPSG:26912").to_file(tmp_path / "ok.gpkg", driver="GPKG")
    with pytest.raises(EcoalignInputError) as err:
        read_plots(tmp_path / "ok.gpkg", id_column="releve")
    assert "ok.gpkg" in _error(err) and "column 'releve' (plot id) not found" in _error(err)
    assert "'plot_id'" in _error(err)


def test_unreadable_geopackage(tmp_path):
    (tmp_path / "broken.gpkg").write_bytes(b"not a database")
    with pytest.raises(EcoalignInputError) as err:
        read_plots(tmp_path / "broken.gpkg")
    assert "broken.gpkg" in _error(err) and "cannot read the plots file" in _error(err)


# ----------------------------------------------------------------------------- end to end (orchestrator)


def _bryce_subset(folder: Path) -> dict:
    """Real Bryce relevés and sites, edited so every skip path of `adapt` is taken a known number of times.

    - the plots file keeps every other site (80 rows, incl. bcnp109 which has no coordinates): the other 80
      relevés have no plot;
    - one kept plot's relevé is all zeros (an empty relevé);
    - 3 kept plots are moved 50 km east (outside the raster);
    - 2 kept plots, far from any other, sit in a nodata hole (mostly nodata).
    """
    site = pd.read_csv(BRYCE / "labdsv_brycesite.csv", dtype={"row": str})
    veg = pd.read_csv(BRYCE / "labdsv_bryceveg.csv", dtype=str)
    kept = site.iloc[::2].copy()
    dropped = site.iloc[1::2]["row"].tolist()
    with_xy = kept.dropna(subset=["east", "north"])
    assert "bcnp109" in set(kept["row"]) and len(with_xy) == 79

    xy = with_xy[["east", "north"]].to_numpy(float)
    dist = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1)) + np.eye(len(xy)) * 1e9
    isolated = with_xy["row"].to_numpy()[dist.min(axis=1) > 600]
    holes = list(isolated[:2])
    others = [p for p in with_xy["row"] if p not in holes]
    empty, outside = others[0], others[1:4]
    assert len(holes) == 2

    kept.loc[kept["row"].isin(outside), "east"] += 50_000
    kept.to_csv(folder / "sites.csv", index=False)
    veg.loc[veg["row"] == empty, veg.columns[1:]] = "0"
    veg.to_csv(folder / "veg.csv", index=False)

    import rasterio

    raster = bryce_raster(folder)
    with rasterio.open(raster, "r+") as dst:
        arr = dst.read()
        for p in holes:
            x, y = with_xy.loc[with_xy["row"] == p, ["east", "north"]].to_numpy(float)[0]
            r, c = dst.index(x, y)
            arr[:, r - 10:r + 11, c - 10:c + 11] = 0  # 420 m of nodata around the plot
        dst.write(arr)
    manifest = write_manifest(folder, {
        "name": "bryce-skips", "licence": "GPL-2.0-or-later",
        "imagery": {"files": ["bryce_rgb.tif"], "wavelengths_um": RGB, "nodata": 0},
        "plots": {"path": "sites.csv", "id_column": "row", "x_column": "east", "y_column": "north",
                  "crs": "EPSG:26912"},
        "releves": {"path": "veg.csv", "format": "wide", "plot_column": "row", "cover_scale": "bryce"},
    })
    return {"manifest": manifest, "dropped": dropped, "empty": empty, "outside": outside, "holes": holes}


@pytest.fixture(scope="module")
def skips_run(tmp_path_factory):
    need_shared()
    folder = tmp_path_factory.mktemp("bryce_skips")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECOALIGN_CACHE", str(folder / "cache"))
        mp.setenv("TORCH_HOME", str(folder / "torch-home"))
        info = _bryce_subset(folder)
        run = ecoalign.adapt([f"data.manifest={info['manifest']}", *FAST], out=str(folder / "run"))
    return json.loads((run / "report.json").read_text()), info


@pytest.mark.slow
def test_adapt_counts_releves_without_plot(skips_run):
    report, info = skips_run
    data = report["data"]
    assert data["releves_in_file"] == 159  # 160 relevés, one empty
    assert data["plots_in_file"] == 79  # 80 rows, one without coordinates
    assert data["plots_without_coordinates"] == ["bcnp109"]
    assert data["releves_without_plot"]["count"] == 80
    assert set(data["releves_without_plot"]["examples"]) <= set(info["dropped"])
    assert len(data["releves_without_plot"]["examples"]) == 10


@pytest.mark.slow
def test_adapt_counts_empty_releves(skips_run):
    report, info = skips_run
    table = report["data"]["releve_table"]
    assert table["empty_releves_skipped"] == 1
    assert table["empty_releve_examples"] == [info["empty"]]
    assert table["duplicate_species_rows"] == 0


@pytest.mark.slow
def test_adapt_counts_plots_outside_and_mostly_nodata(skips_run):
    report, info = skips_run
    pairing = report["pairing"]
    assert pairing["skipped"] == {"outside_raster": 3, "mostly_nodata": 2}
    assert sorted(pairing["skipped_examples"]["outside_raster"]) == sorted(info["outside"])
    assert sorted(pairing["skipped_examples"]["mostly_nodata"]) == sorted(info["holes"])
    assert pairing["paired"] == 79 - 1 - 3 - 2
    split = report["split"]
    assert split["train"] + split["val"] + split["test"] == pairing["paired"]
    assert [v["variant"] for v in report["variants"]] == ["adapted"]  # trainer.baselines=false


@pytest.mark.slow
def test_adapt_errors_when_no_releve_plot_id_is_in_the_plots_file(tmp_path, monkeypatch):
    """A realistic mistake: the plots' id column is set to 'plotcode' (50001...) instead of 'row' (bcnp__1...)."""
    need_shared()
    write_raster(tmp_path / "tiny.tif", np.full((3, 10, 10), 9))
    manifest = write_manifest(tmp_path, {
        "imagery": {"files": ["tiny.tif"], "wavelengths_um": RGB, "nodata": 0},
        "plots": {"path": str(BRYCE / "labdsv_brycesite.csv"), "id_column": "plotcode", "x_column": "east",
                  "y_column": "north", "crs": "EPSG:26912"},
        "releves": {"path": str(BRYCE / "labdsv_bryceveg.csv"), "format": "wide", "plot_column": "row",
                    "cover_scale": "bryce"},
    })
    with pytest.raises(EcoalignInputError) as err:
        ecoalign.adapt([f"data.manifest={manifest}", *FAST], out=str(tmp_path / "run"))
    msg = _error(err)
    assert "none of the 160 relevé plot ids is in the plots file" in msg
    assert "labdsv_bryceveg.csv" in msg and "labdsv_brycesite.csv" in msg
    assert "relevés: ['bcnp" in msg and "plots: ['50001', '50002', '50003']" in msg  # both files' ids
    assert "1 plot(s) lack coordinates" in msg
    assert "column 'plotcode'" in msg
    assert not (tmp_path / "run").exists()  # a run that failed before its first step leaves nothing behind
    with pytest.raises(EcoalignInputError, match="none of the 160"):  # so the same command runs again, not refused
        ecoalign.adapt([f"data.manifest={manifest}", *FAST], out=str(tmp_path / "run"))


@pytest.mark.slow
def test_adapt_errors_when_every_plot_is_outside_the_raster(tmp_path):
    need_shared()
    # a 3-band raster 290 km west of Bryce Canyon, in the right CRS
    write_raster(tmp_path / "elsewhere.tif", np.full((3, 20, 20), 9), left=100000.0)
    manifest = write_manifest(tmp_path, {
        "imagery": {"files": ["elsewhere.tif"], "wavelengths_um": RGB, "nodata": 0},
        "plots": {"path": str(BRYCE / "labdsv_brycesite.csv"), "id_column": "row", "x_column": "east",
                  "y_column": "north", "crs": "EPSG:26912"},
        "releves": {"path": str(BRYCE / "labdsv_bryceveg.csv"), "format": "wide", "plot_column": "row",
                    "cover_scale": "bryce"},
    })
    with pytest.raises(EcoalignInputError) as err:
        ecoalign.adapt([f"data.manifest={manifest}", *FAST], out=str(tmp_path / "run"))
    msg = _error(err)
    assert str(manifest) in msg
    assert "no plot could be paired with the imagery (skipped: {'outside_raster': 159})" in msg
    assert "inside the raster footprint" in msg
    assert not (tmp_path / "run" / "report.json").exists()


def test_manifest_with_a_misspelt_key_is_refused(tmp_path):
    write_raster(tmp_path / "tiny.tif", np.full((3, 10, 10), 9))
    (tmp_path / "plots.csv").write_text("plot_id,x,y\na,1,2\n")
    (tmp_path / "rel.csv").write_text("plot_id,species,cover\na,X y,1\n")
    body = {"imagery": {"files": ["tiny.tif"], "wavelength_um": RGB}, "plots": {"path": "plots.csv"},
            "releves": {"path": "rel.csv"}}
    with pytest.raises(EcoalignInputError, match=r"imagery: unknown key 'wavelength_um' \(did you mean 'wavelengths_um'"):
        load_manifest(write_manifest(tmp_path, body))
    body = {**body, "imagery": {"files": ["tiny.tif"], "wavelengths_um": RGB}, "relevés": {"path": "rel.csv"}}
    with pytest.raises(EcoalignInputError, match="top level: unknown key 'relevés'"):
        load_manifest(write_manifest(tmp_path, body))
