"""The notebook face: the example notebook runs end to end, and the xarray / GeoDataFrame accessors give what
`embed_points` and `map_raster` give."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import small_map_world

import ecoalign
import ecoalign.accessor  # noqa: F401  (registers the accessors)
from ecoalign.core.errors import EcoalignInputError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOK = EXAMPLES / "ecoalign_in_a_notebook.ipynb"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return small_map_world.build(tmp_path_factory.getbasetemp() / "small-map-world")


@pytest.fixture(scope="module")
def crop(world):
    import rioxarray

    return rioxarray.open_rasterio(world["raster"])


@pytest.fixture(scope="module")
def prediction(world, crop):
    return crop.ecoalign.predict(world["bundle"], world["encoder"], progress=False)


def test_notebook_is_generated_from_its_script():
    import sys

    import nbformat

    sys.path.insert(0, str(EXAMPLES))
    try:
        import make_notebook
    finally:
        sys.path.remove(str(EXAMPLES))
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in stored.cells] == [c.source for c in make_notebook.build().cells]
    assert all(not c.get("outputs") for c in stored.cells if c.cell_type == "code")  # committed without outputs


def test_notebook_runs(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    summary = json.loads(text.split("ECOALIGN_SUMMARY ", 1)[1].splitlines()[0])
    assert summary["encoder_random_weights"] is True and summary["crs"] == "EPSG:32631"
    assert summary["plots_embedded"] == 28 and summary["targets"] == ["wetland", "grassland"]
    assert summary["map_shape"] == [2, 3, 3] and summary["embedding_grid"] == [3, 3, 384]
    assert 0 < summary["nodata_windows"] < 9  # the corner holds part of the nodata strip
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert (tmp_path / "ecoalign-notebook" / "corner_map.tif").exists()


def test_predict_equals_map_raster(world, prediction, tmp_path):
    import rioxarray

    pred = prediction
    out = ecoalign.map_raster(world["encoder"], world["bundle"], world["raster"], tmp_path / "map.tif",
                              quicklook=False, progress=False)
    mapped = rioxarray.open_rasterio(out, masked=True)
    assert pred.dims == ("target", "y", "x") and list(pred.target.values) == list(small_map_world.TARGETS)
    np.testing.assert_array_equal(pred.values, mapped.values)
    assert np.isnan(pred.values).any() and (pred.values[~np.isnan(pred.values)] > 0).all()
    np.testing.assert_array_equal(pred.x, mapped.x)
    np.testing.assert_array_equal(pred.y, mapped.y)
    assert pred.rio.crs == mapped.rio.crs and pred.rio.transform() == mapped.rio.transform()


def test_predict_through_a_dask_scheduler(world, crop, prediction):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        parallel = crop.ecoalign.predict(world["bundle"], world["encoder"], scheduler=cluster.scheduler_address,
                                         progress=False)
    # a Dask worker thread runs torch/BLAS with its own thread pools: equal up to float32 rounding (bit-identity
    # holds between processes that are single-threaded from the start, see test_mapping_dask.py)
    np.testing.assert_allclose(parallel.values, prediction.values, rtol=0, atol=1e-6)


def test_embedding_grid_matches_embed_points_at_window_centres(world, crop):
    import geopandas as gpd

    grid = crop.ecoalign.embed(world["encoder"], progress=False)
    assert grid.dims == ("y", "x", "feature") and grid.shape == (3, 3, 384)
    assert grid.rio.crs == crop.rio.crs and json.loads(grid.attrs["encoder"])["backbone"]["size"] == "small"
    valid = ~np.isnan(grid.values).any(axis=-1)
    assert valid.any() and not valid.all() and (np.isnan(grid.values).all(axis=-1) == ~valid).all()
    rows, cols = np.nonzero(valid)
    pts = gpd.GeoDataFrame({"plot_id": [f"w{r}{c}" for r, c in zip(rows, cols)]},
                           geometry=gpd.points_from_xy(grid.x.values[cols], grid.y.values[rows]), crs=crop.rio.crs)
    at_points = crop.ecoalign.embed(world["encoder"], points=pts, progress=False)
    assert list(at_points.plot_id) == list(pts.plot_id)
    np.testing.assert_allclose(at_points.filter(like="emb_").to_numpy(), grid.values[rows, cols], atol=1e-4)
    corner = crop.isel(x=slice(0, 40), y=slice(0, 40))  # 160 m: two 100 m windows 60 m apart each way
    dense = corner.ecoalign.embed(world["encoder"], stride_m=60, progress=False)
    assert dense.shape == (2, 2, 384) and dense.attrs["stride_m"] == 60
    assert float(dense.x[0]) == float(grid.x[0]) and float(dense.x[1]) == float(grid.x[0]) + 60
    np.testing.assert_allclose(dense.values[0, 0], grid.values[0, 0], atol=1e-4)  # same encoder band statistics


def test_geodataframe_accessor_on_a_file_and_on_a_dataarray(world):
    import rioxarray

    plots = world["plots"].head(4)
    expected = world["embeddings"].set_index("plot_id").loc[plots.plot_id].filter(like="emb_").to_numpy()
    from_file = plots.ecoalign.embed(world["world"] / "ortho.tif", world["encoder"])
    np.testing.assert_allclose(from_file.filter(like="emb_").to_numpy(), expected, atol=1e-5)
    ortho = rioxarray.open_rasterio(world["world"] / "ortho.tif")
    ortho.attrs["wavelengths_um"] = small_map_world.WAVELENGTHS
    from_array = plots.ecoalign.embed(ortho, "dofa-small", progress=False)  # encoder by name, bands from attrs
    np.testing.assert_allclose(from_array.filter(like="emb_").to_numpy(), expected, atol=1e-4)


def test_clear_errors(world, crop):
    import pandas as pd
    import xarray as xr

    enc = world["encoder"]
    with pytest.raises(EcoalignInputError, match="the DataArray has no CRS"):
        xr.DataArray(crop.values, dims=crop.dims).ecoalign.embed(enc)
    with pytest.raises(EcoalignInputError, match=r"has 3 band\(s\) but the encoder expects 4"):
        crop.isel(band=[0, 1, 2]).ecoalign.predict(world["bundle"], enc)
    with pytest.raises(EcoalignInputError, match="needs the band wavelengths"):
        crop.ecoalign.embed("dofa-small")
    with pytest.raises(EcoalignInputError, match="has no geometry"):
        pd.DataFrame({"x": [1.0]}).ecoalign.embed(world["raster"], enc)
    with pytest.raises(EcoalignInputError, match="smaller than one 400 m window"):
        crop.ecoalign.embed(enc, window_m=400)
