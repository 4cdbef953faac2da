"""`ecoalign embed`: points + raster + encoder -> GeoParquet, one row per point, encoder identity in metadata."""
from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import Point

import ecoalign
from ecoalign.cli import main
from ecoalign.aerial.embed import embed_points, embedding_columns, read_embeddings
from ecoalign.core.errors import EcoalignInputError

from conftest import write_raster

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
    assert "wrote 6 of 8 points" in capsys.readouterr().out
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
