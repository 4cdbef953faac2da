"""`ecoalign embed`: points + raster + encoder -> GeoParquet, one row per point, encoder identity in metadata."""
from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from conftest import write_raster
from shapely.geometry import Point

import ecoalign
from ecoalign.aerial.embed import (
    embed,
    embed_points,
    embedding_columns,
    read_embeddings,
)
from ecoalign.cli import main
from ecoalign.core.errors import EcoalignInputError

WL = [0.665, 0.56, 0.49]


@pytest.fixture
def scene(tmp_path):
    """A 3-band UTM raster (2 km at 10 m) and 8 points: 6 inside, 1 outside, 1 in a nodata hole."""
    rng = np.random.default_rng(0)
    arr = rng.integers(20, 250, size=(3, 200, 200)).astype("uint8")
    arr[:, 150:, 150:] = 0  # nodata corner
    raster = write_raster(tmp_path / "scene.tif", arr, crs="EPSG:32631", left=500000, top=4801000, res=10.0)
    xy = [(500300 + 200 * i, 4800700 - 150 * i) for i in range(6)] + [(490000, 4800500), (501800, 4799200)]
    pts = gpd.GeoDataFrame({"site": [f"s{i}" for i in range(8)]}, geometry=[Point(x, y) for x, y in xy],
                           crs="EPSG:32631")
    return raster, pts


@pytest.fixture
def encoder():
    return ecoalign.load_encoder("dofa", size="small", wavelengths_um=WL)


def test_embed_points_matches_encoder_on_windows(scene, encoder):
    import rasterio
    from rasterio.windows import from_bounds

    raster, pts = scene
    gdf = embed_points(pts, [raster], encoder, id_column="site", patch_size_m=100)
    assert list(gdf["site"]) == [f"s{i}" for i in range(6)]
    assert gdf.attrs["ecoalign"]["skipped"] == {"outside_raster": ["s6"], "mostly_nodata": ["s7"]}
    assert len(embedding_columns(gdf)) == 384 and gdf.crs == pts.crs
    x, y = pts.geometry[2].x, pts.geometry[2].y
    with rasterio.open(raster) as src:
        window = src.read(window=from_bounds(x - 50, y - 50, x + 50, y + 50, transform=src.transform)).astype("float32")
    # band standardisation comes from the raster for a frozen encoder without stored statistics
    from ecoalign.data.patches import band_stats, open_rasters

    mean, std = band_stats(open_rasters([raster], WL))
    encoder.band_mean, encoder.band_std = mean, std
    direct = encoder.embed(window[None])
    np.testing.assert_allclose(gdf[embedding_columns(gdf)].to_numpy()[2], direct[0], rtol=1e-4, atol=1e-4)


def test_points_in_another_crs_are_reprojected(scene, encoder):
    raster, pts = scene
    a = embed_points(pts, [raster], encoder, id_column="site")
    b = embed_points(pts.to_crs("EPSG:4326"), [raster], encoder, id_column="site")
    np.testing.assert_allclose(a[embedding_columns(a)].to_numpy(), b[embedding_columns(b)].to_numpy(), atol=1e-5)


def test_cli_writes_geoparquet_and_refuses_to_overwrite(scene, tmp_path, capsys):
    raster, pts = scene
    pts.to_file(tmp_path / "pts.gpkg", layer="pts")
    out = tmp_path / "emb.parquet"
    args = ["embed", "--encoder", "dofa", "--size", "small", "--wavelengths", "0.665,0.56,0.49", "--points",
            str(tmp_path / "pts.gpkg"), "--id-column", "site", "--raster", str(raster), "--out", str(out)]
    assert main(args) == 0
    assert "wrote 6 of 8 points" in capsys.readouterr().err  # the library's log, shown by the command
    gdf = read_embeddings(out)
    meta = gdf.attrs["ecoalign"]
    assert meta["encoder"]["backbone"]["size"] == "small" and meta["random_weights"] is True
    assert len(gdf) == 6 and gdf.crs.to_epsg() == 32631 and gdf.geometry.geom_type.eq("Point").all()
    assert main(args) == 2
    assert "output exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_all_points_outside_and_missing_crs(scene, encoder):
    raster, pts = scene
    far = pts.copy()
    far["geometry"] = far.geometry.translate(50_000, 0)
    with pytest.raises(EcoalignInputError, match="none of the 8 points has a usable window"):
        embed_points(far, [raster], encoder, id_column="site")
    with pytest.raises(EcoalignInputError, match="no CRS"):
        embed_points(pts.set_crs(None, allow_override=True), [raster], encoder, id_column="site")


def test_band_count_mismatch(scene):
    raster, pts = scene
    enc = ecoalign.load_encoder("dofa", size="small", wavelengths_um=[0.49, 0.56, 0.665, 0.842])
    with pytest.raises(EcoalignInputError, match="3 bands but 4 wavelengths are given"):
        embed_points(pts, [raster], enc, id_column="site")


def _same_table(a, b, id_column: str) -> None:
    """Same ids in the same order, geometry, embedding columns and values, CRS and metadata."""
    assert list(a.columns) == list(b.columns) == [id_column, *embedding_columns(a), "geometry"]
    assert list(a[id_column]) == list(b[id_column])
    assert a.crs == b.crs and a.geometry.geom_equals(b.geometry).all()
    np.testing.assert_array_equal(a[embedding_columns(a)].to_numpy(), b[embedding_columns(b)].to_numpy())
    assert a[embedding_columns(a)].dtypes.eq(np.float32).all() and b[embedding_columns(b)].dtypes.eq(np.float32).all()
    assert a.attrs["ecoalign"] == b.attrs["ecoalign"]


def test_python_embed_gives_the_cli_table(scene, tmp_path):
    """``embed(...)`` takes the verb's arguments and returns the table ``ecoalign embed`` writes."""
    raster, pts = scene
    pts.to_file(tmp_path / "pts.gpkg", layer="pts")
    out = tmp_path / "cli.parquet"
    assert main(["embed", "--encoder", "dofa", "--size", "small", "--wavelengths", "0.665,0.56,0.49", "--points",
                 str(tmp_path / "pts.gpkg"), "--id-column", "site", "--raster", str(raster), "--out", str(out)]) == 0
    cli = read_embeddings(out)
    cli = cli[["site", *embedding_columns(cli), "geometry"]]
    options = {"encoder": "dofa", "size": "small", "wavelengths_um": WL, "id_column": "site"}
    in_memory = embed(tmp_path / "pts.gpkg", raster, **options)  # one raster, or a list
    _same_table(in_memory, cli, "site")
    assert in_memory.attrs["ecoalign"]["skipped"] == {"outside_raster": ["s6"], "mostly_nodata": ["s7"]}
    written = embed(pts, [raster], out=tmp_path / "py.parquet", **options)  # a GeoDataFrame works as well
    _same_table(written, cli, "site")
    assert (tmp_path / "py.parquet").exists()
    with pytest.raises(EcoalignInputError, match="output exists"):
        embed(pts, [raster], out=tmp_path / "py.parquet", **options)
    assert len(embed(pts, [raster], out=tmp_path / "py.parquet", overwrite=True, **options)) == 6


def test_python_embed_and_cli_from_a_manifest(scene, tmp_path):
    """Points, rasters and wavelengths from a manifest, in Python and on the command line."""
    import conftest

    raster, pts = scene
    pts.assign(x=pts.geometry.x, y=pts.geometry.y).drop(columns="geometry").rename(columns={"site": "plot_id"}) \
        .to_csv(tmp_path / "plots.csv", index=False)
    (tmp_path / "rel.csv").write_text("plot_id,species,cover\ns0,Poa annua,5\n")
    manifest = conftest.write_manifest(tmp_path, {
        "imagery": {"files": [raster.name], "wavelengths_um": WL, "nodata": 0},
        "plots": {"path": "plots.csv", "crs": "EPSG:32631"}, "releves": {"path": "rel.csv"}})
    out = tmp_path / "cli.parquet"
    assert main(["embed", "--size", "small", "--manifest", str(manifest), "--out", str(out)]) == 0
    cli = read_embeddings(out)
    cli = cli[["plot_id", *embedding_columns(cli), "geometry"]]
    py = embed(manifest=manifest, size="small")
    _same_table(py, cli, "plot_id")
    assert list(py["plot_id"]) == [f"s{i}" for i in range(6)]
    with pytest.raises(EcoalignInputError, match="no points given"):
        embed(rasters=[raster], size="small", wavelengths_um=WL)


def test_embed_refuses_an_organism_encoder(scene):
    from ecoalign.encoders.base import Encoder, WindowEncoder

    raster, pts = scene
    organism = ecoalign.load_encoder("open_clip:ecoalign-tiny-vit")
    assert isinstance(organism, Encoder) and not isinstance(organism, WindowEncoder)
    assert isinstance(ecoalign.load_encoder("dofa", size="small", wavelengths_um=WL), WindowEncoder)
    with pytest.raises(EcoalignInputError, match="does not embed multispectral raster windows"):
        embed(pts, [raster], encoder=organism, id_column="site")
