"""`ecoalign map`: values equal embed_points + predict at window centres, COG layout, nodata, resume, bad input.

DOFA-small with random weights keeps this fast; bundles are fitted on a few points with targets derived from
their embeddings (and a real bioclim raster for the Sentinel-2 case), so the maps have something to show.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import conftest
import numpy as np
import pandas as pd
import pytest

import ecoalign
from ecoalign.cli import main
from ecoalign.core.errors import EcoalignInputError
from ecoalign.mapping import blocks, run
from ecoalign.mapping import plan as planning

WAVES = [0.49, 0.56, 0.665, 0.842]
S2 = conftest.SHARED / "imagery" / "sentinel2_montpellier" / "torchgeo_sentinel2_test_sample.tif"
BIO1 = conftest.SHARED / "imagery" / "bioclim_montpellier" / "bio_1_crop_sample.tif"


def _fit(folder: Path, emb, env: list[dict] | None = None) -> Path:
    """A presence bundle (PCA + logistic) on embedding rows with two targets that depend on the embeddings."""
    from ecoalign.sdm.fitting import fit_bundle
    from ecoalign.sdm.sites import build_sites
    from ecoalign.sdm.spec import spec_from_dict

    score = emb["emb_000"] + emb["emb_005"]
    y = pd.DataFrame({"plot_id": emb["plot_id"], "sp_a": (score > score.median()).astype(int),
                      "sp_b": (emb["emb_002"] < emb["emb_002"].median()).astype(int)})
    y.to_csv(folder / "targets.csv", index=False)
    spec = spec_from_dict({"name": "t", "task": "presence_absence",
                           "target": {"source": str(folder / "targets.csv"), "id_column": "plot_id", "min_presences": 2},
                           "features": {"embeddings": True, "pca": 4, "rasters": env or []},
                           "estimator": {"name": "logistic"}, "cv": {"scheme": "random", "folds": 2},
                           "metrics": ["auc"], "bootstrap": 5})
    return fit_bundle(spec, build_sites(spec, embeddings=emb), folder / "bundle", n_jobs=1, progress=False)


def _points(xy, crs):
    import geopandas as gpd

    return gpd.GeoDataFrame({"plot_id": [f"p{i}" for i in range(len(xy))]},
                            geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=crs)


def _reference(plan, bundle, raster, encoder, rows, cols):
    """The same prediction the long way: embed_points at the window centres, env rasters sampled, bundle predict."""
    from ecoalign.sdm.fitting import load_bundle
    from ecoalign.sdm.sites import sample_rasters

    model, meta = load_bundle(bundle)
    pts = _points(planning.window_centres(plan, rows, cols), plan.crs)
    emb = ecoalign.embed_points(pts, [raster], encoder, patch_size_m=plan.window_m)
    assert len(emb) == len(pts)
    parts = [emb]
    if plan.env_rasters:
        parts.append(sample_rasters(emb, plan.env_rasters)[0])
    X = pd.concat(parts, axis=1)[meta["features"]]
    return blocks.predict_features(model, meta["task"], X)


# --------------------------------------------------------------------------------- generated 4-band raster

@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    """52x62 px at 20 m (6x5 windows of 200 m), a nodata corner (4 windows) and one 30%-nodata window."""
    from scipy.ndimage import gaussian_filter

    folder = tmp_path_factory.mktemp("map_gen")
    rng = np.random.default_rng(1)
    base = gaussian_filter(rng.normal(size=(4, 52, 62)), sigma=(0, 4, 4))
    arr = 20 + 200 * (base - base.min()) / (base.max() - base.min())
    arr[:, :20, :20] = 0  # windows (0,0) (0,1) (1,0) (1,1) entirely nodata
    arr[:, 20:23, 30:40] = 0  # window (2,3): 30% nodata, still embedded (<= 50%, as embed_points)
    raster = conftest.write_raster(folder / "ortho.tif", arr)
    enc = ecoalign.load_encoder("dofa", size="small", wavelengths_um=WAVES)
    xy = np.column_stack([387000 + rng.uniform(450, 1200, 16), 4173500 - rng.uniform(500, 1000, 16)])
    emb = ecoalign.embed_points(_points(xy, "EPSG:26912"), [raster], enc, patch_size_m=200.0)
    return {"folder": folder, "raster": raster, "enc": enc, "bundle": _fit(folder, emb)}


class _CountingFeatures:
    """Wraps DOFAFeatures to count batches and windows; the kernel generator is counted by a hook."""

    def __init__(self, inner):
        self.inner, self.batches, self.windows = inner, 0, 0

    def __call__(self, x):
        self.batches += 1
        self.windows += x.shape[0]
        return self.inner(x)


@pytest.fixture(scope="module")
def gen_map(gen):
    enc = gen["enc"]
    enc.features._kernel = None
    kernels = []
    hook = enc.model.patch_embed.weight_generator.register_forward_hook(lambda *a: kernels.append(1))
    counting = enc.features = _CountingFeatures(enc.features)
    try:
        out = run.map_raster(enc, gen["bundle"], gen["raster"], gen["folder"] / "map.tif", batch_size=4,
                                 block_px=2, progress=False)
    finally:
        enc.features = counting.inner
        hook.remove()
    return {"out": out, "kernels": len(kernels), "batches": counting.batches, "windows": counting.windows}


def test_generated_map_grid_nodata_and_values(gen, gen_map):
    import rasterio

    out = gen_map["out"]
    with rasterio.open(out) as src:
        vals = src.read()
        assert src.crs.to_epsg() == 26912 and src.count == 2 and src.descriptions == ("sp_a", "sp_b")
        assert tuple(src.transform)[:6] == (200.0, 0.0, 387000.0, 0.0, -200.0, 4173500.0)
        assert (src.width, src.height) == (6, 5) and src.nodata == -9999.0 and src.dtypes[0] == "float32"
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and src.compression.name == "deflate"
        assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
        meta = json.loads(src.tags()["ecoalign"])
    assert meta["random_weights"] is True and meta["window_m"] == 200.0
    nodata = vals[0] == -9999.0
    assert nodata[:2, :2].all() and nodata.sum() == 4 and ((vals[:, ~nodata] >= 0) & (vals[:, ~nodata] <= 1)).all()
    # all-nodata windows are never embedded; the DOFA kernel is generated once for the whole run, not per batch
    assert gen_map["windows"] == 26 and gen_map["batches"] > 5 and gen_map["kernels"] == 1
    assert Path(str(out).replace(".tif", "_quicklook.png")).stat().st_size > 2000
    assert not out.with_name(out.name + ".partial").exists()
    plan = planning.plan_map(gen["enc"], gen["bundle"], gen["raster"])
    rows, cols = np.array([2, 2, 4, 0, 3, 1]), np.array([3, 0, 5, 4, 2, 5])  # (2,3) is the 30%-nodata window
    ref = _reference(plan, gen["bundle"], gen["raster"], gen["enc"], rows, cols)
    np.testing.assert_allclose(vals[:, rows, cols].T, ref, atol=2e-4)


def test_resume_after_kill_is_byte_identical(gen, gen_map, tmp_path):
    """SIGKILL a mapping subprocess after some blocks; the resumed run skips them and yields the same bytes.

    The child kills itself with SIGKILL when its third block starts, so the kill lands mid-run however slow or
    loaded the machine is (no polling race, no wall-clock deadline)."""
    out = tmp_path / "map.tif"
    ledger = out.with_name("map.tif.partial") / "ledger.jsonl"
    code = ("import os, signal, ecoalign; from ecoalign.mapping import map_raster, run; "
            "real = run.predict_block; calls = []\n"
            "def dying(*a, **kw):\n"
            "    calls.append(1)\n"
            "    if len(calls) == 3:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return real(*a, **kw)\n"
            "run.predict_block = dying\n"
            f"enc = ecoalign.load_encoder('dofa', size='small', wavelengths_um={WAVES})\n"
            f"map_raster(enc, {str(gen['bundle'])!r}, {str(gen['raster'])!r}, {str(out)!r}, batch_size=4, "
            "block_px=2, progress=False)")
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not out.exists()  # nothing under the final name
    done = len(ledger.read_text().splitlines())
    calls = []
    real = run.predict_block

    def counting(plan, data, **kw):
        calls.append(data.block)
        return real(plan, data, **kw)

    run.predict_block = counting
    try:
        run.map_raster(gen["enc"], gen["bundle"], gen["raster"], out, batch_size=4, block_px=2, progress=False,
                           quicklook=False)
    finally:
        run.predict_block = real
    assert 0 < len(calls) == 9 - done  # 3x3 blocks of 2x2 output pixels; finished ones are not recomputed
    assert out.read_bytes() == gen_map["out"].read_bytes()


# --------------------------------------------------------------------------------- real Sentinel-2 crop

def test_sentinel2_map_with_bioclim_env_raster_via_cli(tmp_path, capsys):
    """Real S2 crop (1 band, EPSG:32631, 10 m) + real bioclim raster (EPSG:4326) as an environmental feature."""
    conftest.need_shared()
    import rasterio

    enc = ecoalign.load_encoder("dofa", size="small", wavelengths_um=[0.665])  # the crop's band, treated as red
    rng = np.random.default_rng(2)
    xy = np.column_stack([567260 + rng.uniform(800, 5200, 14), 4832070 - rng.uniform(800, 5200, 14)])
    emb = ecoalign.embed_points(_points(xy, "EPSG:32631"), [S2], enc, patch_size_m=1500.0)
    bundle = _fit(tmp_path, emb, env=[{"path": str(BIO1), "name": "bio1"}])
    out = tmp_path / "s2_map.tif"
    args = ["map", "--encoder", "dofa", "--model", str(bundle), "--raster", str(S2), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    with rasterio.open(out) as src:
        vals = src.read()
        assert src.crs.to_epsg() == 32631 and src.descriptions == ("sp_a", "sp_b") and (src.width, src.height) == (4, 4)
        assert tuple(src.transform)[:6] == (1500.0, 0.0, 567260.0, 0.0, -1500.0, 4832070.0)
    assert (vals != -9999.0).all()
    assert (tmp_path / "s2_map_quicklook.png").exists()
    plan = planning.plan_map(enc, bundle, S2)
    rows, cols = np.array([0, 3, 2, 1]), np.array([0, 3, 1, 2])
    np.testing.assert_allclose(vals[:, rows, cols].T, _reference(plan, bundle, S2, enc, rows, cols), atol=2e-4)
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err  # an existing map is never replaced silently


# --------------------------------------------------------------------------------- bad input

def test_bad_rasters_are_refused_before_any_output(gen, tmp_path):
    import rasterio

    with rasterio.open(gen["raster"]) as src:
        arr = src.read()
    enc, bundle, out = gen["enc"], gen["bundle"], tmp_path / "m.tif"

    def refused(raster, match, encoder=enc):
        with pytest.raises(EcoalignInputError, match=match):
            run.map_raster(encoder, bundle, raster, out, progress=False)
        assert not out.exists() and not (tmp_path / "m.tif.partial").exists()

    refused(conftest.write_raster(tmp_path / "nocrs.tif", arr, crs=None), "no CRS")
    refused(conftest.write_raster(tmp_path / "utm13.tif", arr, crs="EPSG:26913"), "fitted in EPSG:26912.*gdalwarp")
    refused(conftest.write_raster(tmp_path / "rgb.tif", arr[:3]), "3 bands but 4 wavelengths")
    tagged = conftest.write_raster(tmp_path / "tagged.tif", arr)
    with rasterio.open(tagged, "r+") as dst:
        for b, w in enumerate(reversed(WAVES), start=1):
            dst.update_tags(b, WAVELENGTH=str(w * 1000), WAVELENGTH_UNITS="nanometers")
    refused(tagged, "band 1 is at 0.842 µm but the encoder expects 0.49")
    other = ecoalign.load_encoder("dofa", size="small", wavelengths_um=[0.49, 0.56, 0.665, 0.705])
    refused(gen["raster"], "another encoder .*wavelengths_um", encoder=other)
    data = Path(gen["raster"]).read_bytes()
    (tmp_path / "trunc.tif").write_bytes(data[:len(data) // 2])
    refused(tmp_path / "trunc.tif", "truncated")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + os.urandom(3000))
    refused(tmp_path / "junk.tif", "cannot read the raster")
    out.write_bytes(b"old map")
    with pytest.raises(EcoalignInputError, match="--overwrite"):
        run.map_raster(enc, bundle, gen["raster"], out, progress=False)
    assert out.read_bytes() == b"old map"


def test_all_nodata_raster_gives_an_all_nodata_map_without_embedding(gen, tmp_path):
    import rasterio

    raster = conftest.write_raster(tmp_path / "empty.tif", np.zeros((4, 30, 30)))
    enc = gen["enc"]
    counting = enc.features = _CountingFeatures(enc.features)
    try:
        (tmp_path / "m.tif").write_bytes(b"old")
        out = run.map_raster(enc, gen["bundle"], raster, tmp_path / "m.tif", overwrite=True, progress=False,
                                 quicklook=False)
    finally:
        enc.features = counting.inner
    with rasterio.open(out) as src:
        assert (src.read() == -9999.0).all() and src.shape == (3, 3)
    assert counting.windows == 0
