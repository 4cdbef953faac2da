"""Backbone precision (fp32, bf16, int8): close to fp32, part of the encoder identity,
of cache keys and of map plans, prepared once per encoder, and bad values refused clearly."""
from __future__ import annotations

import json

import conftest
import numpy as np
import pytest
import torch

import ecoalign
from ecoalign.aerial.embed import embedding_columns, read_embeddings
from ecoalign.cli import main
from ecoalign.core.errors import EcoalignInputError
from ecoalign.encoders import int8 as int8_module
from ecoalign.encoders.dofa import PRECISIONS, DOFAFeatures, resolve_precision

WAVES = [0.49, 0.56, 0.665, 0.842]
MEAN, STD = [2000.0, 2100.0, 1900.0, 2500.0], [900.0, 950.0, 1000.0, 1200.0]


def _windows(n: int = 6, side: int = 64, seed: int = 0) -> np.ndarray:
    """Raw orthophoto-like windows (uint16 range, smooth texture, a few nodata pixels)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    tex = gaussian_filter(rng.normal(size=(n, 4, side, side)), sigma=(0, 0, 3, 3))
    arr = (2000 + 4000 * np.tanh(3 * tex)).clip(1, 65535).astype(np.float32)
    arr[0, :, :3, :5] = np.nan
    return arr


@pytest.fixture(scope="module")
def encoders():
    fp32 = ecoalign.load_encoder("dofa", size="small", wavelengths_um=WAVES, band_mean=MEAN, band_std=STD,
                                 precision="fp32")
    return {"fp32": fp32, "bf16": fp32.with_precision("bf16"), "int8": fp32.with_precision("int8")}


@pytest.fixture(scope="module")
def embeddings(encoders):
    x = _windows()
    return {p: e.embed(x, batch_size=4) for p, e in encoders.items()}


def _cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_is_close_to_fp32(embeddings, precision):
    ref, got = embeddings["fp32"], embeddings[precision]
    assert got.dtype == np.float32 and got.shape == ref.shape == (6, 384)
    assert _cosine(ref, got).min() > 0.99
    assert not np.array_equal(ref, got)  # it does compute differently


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_error_is_small_beside_the_spread_between_windows(embeddings, precision):
    """What a species model sees is how windows differ; a cosine near 1 hides an error that is large beside that
    (the embeddings share a large common part). int8 of all four linears gave 0.061 here (on bench_map's raster
    15% of the map's probabilities moved by more than 0.02)."""
    ref, got = embeddings["fp32"], embeddings[precision]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref - ref.mean(0)) < 0.035


def test_precision_is_in_the_identity_and_shares_the_model(encoders):
    ids = {p: e.identity() for p, e in encoders.items()}
    assert {i["precision"] for i in ids.values()} == {"fp32", "bf16", "int8"}
    strip = [{k: v for k, v in i.items() if k not in ("precision", "int8_scheme")} for i in ids.values()]
    assert strip[0] == strip[1] == strip[2]
    assert encoders["int8"].model is encoders["fp32"].model  # one model, loaded once
    assert encoders["fp32"].with_precision("fp32") is encoders["fp32"]
    assert "int8" in repr(encoders["int8"])


def _prepared_once(enc, monkeypatch):
    """Run ``enc`` (int8) on two batches, counting how often int8 blocks are made; return the blocks."""
    calls = []
    real = int8_module.int8_blocks

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(int8_module, "int8_blocks", counting)
    x = enc.image_tensor(_windows(3, seed=1))
    first = enc.features(x[:2])
    blocks = enc.features._int8_blocks
    second = enc.features(x[2:])
    assert first.dtype == second.dtype == torch.float32
    assert len(calls) == 1 and enc.features._int8_blocks is blocks  # per encoder, not per batch
    return blocks


needs_onednn_int8 = pytest.mark.skipif(not int8_module.onednn_int8_available(),
                                       reason="this PyTorch/CPU has no oneDNN int8 + bfloat16")


@needs_onednn_int8
def test_int8_runs_the_mlp_as_onednn_int8_matmuls_prepared_once(encoders, monkeypatch):
    """Where oneDNN runs int8 matmuls: the MLP linears int8 (GELU fused into fc1), all else a bfloat16 copy."""
    blocks = _prepared_once(encoders["fp32"].with_precision("int8"), monkeypatch)
    for block in blocks:
        assert [type(m) for m in (block.mlp.fc1, block.mlp.fc2)] == [int8_module.OneDNNInt8Linear] * 2
        assert block.mlp.fc1.post[0] == "gelu" and type(block.mlp.act) is torch.nn.Identity
        assert block.mlp.fc2.post[0] == "none" and block.mlp.fc1.packed.dtype == torch.int8
        assert [type(m) for m in (block.attn.qkv, block.attn.proj)] == [torch.nn.Linear] * 2
        assert block.attn.qkv.weight.dtype == block.norm1.weight.dtype == torch.bfloat16
    assert encoders["int8"].identity()["int8_scheme"] == int8_module.int8_scheme()
    assert "oneDNN" in int8_module.int8_scheme() and "int8_scheme" not in encoders["bf16"].identity()
    mlp = encoders["fp32"].model.blocks[0].mlp  # the fp32 model is untouched
    assert type(mlp.fc1) is torch.nn.Linear and type(mlp.act) is torch.nn.GELU
    assert mlp.fc1.weight.dtype == torch.float32


_ONEDNN_MATMUL = """
import torch
from ecoalign.encoders.int8 import OneDNNInt8Linear
torch.manual_seed(0)
linear = torch.nn.Linear(64, 96)
x = torch.randn(8, 64)
want = linear(x)
got = OneDNNInt8Linear(linear)(x.to(torch.bfloat16)).float()
print("max_error", float((got - want).abs().max()), "max_value", float(want.abs().max()))
"""


@needs_onednn_int8
def test_int8_matmul_runs_a_vnni_or_amx_kernel_not_onednn_reference_one():
    """oneDNN picks its int8 matmul by the operands' types: signed activations on a CPU without AMX (Zen 4) get its
    reference kernel, hundreds of times slower than float32. The implementation oneDNN reports (ONEDNN_VERBOSE)
    must be a JIT kernel, and the result must match float32."""
    import os
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _ONEDNN_MATMUL], capture_output=True, text=True, check=True,
                         env={**os.environ, "ONEDNN_VERBOSE": "1"})
    matmuls = [line.split(",") for line in run.stdout.splitlines() if ",exec,cpu,matmul," in line]
    assert matmuls, run.stdout[-2000:]
    implementations = {fields[fields.index("matmul") + 1] for fields in matmuls}
    assert not any(impl.startswith("ref") for impl in implementations), implementations
    words = run.stdout.split()
    error, value = (float(words[words.index(k) + 1]) for k in ("max_error", "max_value"))
    assert error < 0.03 * value


def test_int8_elsewhere_is_torch_dynamic_quantisation_of_the_mlp(encoders, monkeypatch):
    """Without oneDNN int8 (another build or CPU): torch dynamic quantisation of the MLP linears, the rest
    float32, under its own scheme name (caches and identities of the two schemes never mix)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    here = int8_module.int8_scheme()
    monkeypatch.setattr(int8_module, "onednn_int8_available", lambda: False)
    enc = encoders["fp32"].with_precision("int8")
    blocks = _prepared_once(enc, monkeypatch)
    for block in blocks:  # the attention's linears (their error moved maps) float32
        assert [type(m) for m in (block.mlp.fc1, block.mlp.fc2)] == [DynamicLinear] * 2
        assert [type(m) for m in (block.attn.qkv, block.attn.proj)] == [torch.nn.Linear] * 2
        assert block.attn.qkv.weight.dtype == torch.float32
    scheme = enc.identity()["int8_scheme"]
    assert scheme.startswith("dynamic qint8") and (scheme != here or not int8_module.onednn_int8_available())
    x = enc.image_tensor(_windows(3, seed=1))
    ref, got = encoders["fp32"].features(x).numpy(), enc.features(x).numpy()
    assert _cosine(ref, got).min() > 0.99 and not np.array_equal(ref, got)


def test_bf16_casts_the_transformer_weights_once(encoders):
    """bf16 runs a bfloat16 copy of the blocks made on the first call (autocast would cast every call)."""
    enc = encoders["fp32"].with_precision("bf16")
    x = enc.image_tensor(_windows(3, seed=1))
    enc.features(x[:2])
    device, blocks = enc.features._bf16_blocks
    enc.features(x[2:])
    assert enc.features._bf16_blocks[1] is blocks and device == torch.device("cpu")
    assert {p.dtype for p in blocks.parameters()} == {torch.bfloat16}
    assert encoders["fp32"].model.blocks[0].attn.qkv.weight.dtype == torch.float32  # the fp32 model is untouched


def test_precision_decides_whatever_autocast_the_caller_opened(encoders):
    """`map` on CUDA opens a bf16 autocast around the features: an fp32 encoder still computes in fp32."""
    enc = encoders["fp32"]
    x = enc.image_tensor(_windows(2, seed=2))
    plain = enc.features(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = enc.features(x)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


def test_auto_and_bad_values():
    assert resolve_precision("auto", device="cpu") == "fp32" and resolve_precision(None, device="cpu") == "fp32"
    assert resolve_precision("auto", device="cuda") == "bf16" and resolve_precision("INT8") == "int8"
    assert PRECISIONS == ("auto", "fp32", "bf16", "int8")
    with pytest.raises(EcoalignInputError, match=r"backbone\.precision: unknown precision 'fp16' \(expected one of "
                                                 r"auto, fp32, bf16, int8\)"):
        resolve_precision("fp16", where="backbone.precision")
    with pytest.raises(EcoalignInputError, match="unknown precision 'half'"):
        ecoalign.load_encoder("dofa", size="small", wavelengths_um=WAVES, precision="half")
    feats = DOFAFeatures(ecoalign.load_encoder("dofa", size="small", wavelengths_um=WAVES).model, WAVES, "int8")
    with pytest.raises(EcoalignInputError, match="int8 runs on CPU only"):
        feats._blocks(torch.device("cuda"))
    with pytest.raises(EcoalignInputError, match="precision and band statistics apply to DOFA window encoders"):
        ecoalign.load_encoder("open_clip:ecoalign-tiny-vit", precision="int8")


def test_cli_refuses_a_bad_precision(capsys):
    assert main(["map", "--encoder", "dofa", "--model", "m", "--raster", "r.tif", "--out", "o.tif",
                 "--precision", "fp16"]) == 2
    assert "argument --precision: invalid choice: 'fp16'" in capsys.readouterr().err
    assert main(["embed", "--points", "p.gpkg", "--raster", "r.tif", "--out", "o.parquet", "--precision", "fp16"]) == 2
    assert "argument --precision: invalid choice: 'fp16'" in capsys.readouterr().err
    assert main(["adapt", "--precision", "fp16"]) == 2
    assert "argument --precision: invalid choice: 'fp16'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 4-band raster of 3x3 windows of 200 m, points inside, and a bundle fitted on fp32 embeddings."""
    from scipy.ndimage import gaussian_filter

    from ecoalign.sdm.fitting import fit_bundle
    from ecoalign.sdm.sites import build_sites
    from ecoalign.sdm.spec import spec_from_dict

    folder = tmp_path_factory.mktemp("precision")
    rng = np.random.default_rng(3)
    tex = gaussian_filter(rng.normal(size=(4, 30, 30)), sigma=(0, 3, 3))
    raster = conftest.write_raster(folder / "scene.tif", 20 + 220 * (tex - tex.min()) / (tex.max() - tex.min()))
    import geopandas as gpd

    xy = np.column_stack([387000 + rng.uniform(100, 500, 12), 4173500 - rng.uniform(100, 500, 12)])
    pts = gpd.GeoDataFrame({"plot_id": [f"p{i}" for i in range(12)]},
                           geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs="EPSG:26912")
    pts.to_file(folder / "pts.gpkg", layer="pts")
    enc = ecoalign.load_encoder("dofa", size="small", wavelengths_um=WAVES, precision="fp32")
    emb = ecoalign.embed_points(pts, [raster], enc, patch_size_m=200.0)
    import pandas as pd

    y = pd.DataFrame({"plot_id": emb["plot_id"], "sp_a": (emb["emb_000"] > emb["emb_000"].median()).astype(int)})
    y.to_csv(folder / "targets.csv", index=False)
    spec = spec_from_dict({"name": "t", "task": "presence_absence",
                           "target": {"source": str(folder / "targets.csv"), "id_column": "plot_id",
                                      "min_presences": 2},
                           "features": {"embeddings": True, "pca": 3}, "estimator": {"name": "logistic"},
                           "cv": {"scheme": "random", "folds": 2}, "metrics": ["auc"], "bootstrap": 5})
    bundle = fit_bundle(spec, build_sites(spec, embeddings=emb), folder / "bundle", n_jobs=1, progress=False)
    return {"folder": folder, "raster": raster, "pts": pts, "emb": emb, "bundle": bundle, "enc": enc}


def test_embed_cache_is_keyed_on_precision(scene, tmp_path):
    from ecoalign.core.paths import cache_dir

    def entries():
        folder = cache_dir() / "embeddings"
        return set(folder.iterdir()) if folder.exists() else set()

    def embed(precision):
        out = tmp_path / f"{precision}.parquet"
        assert main(["embed", "--encoder", "dofa", "--size", "small", "--wavelengths", ",".join(map(str, WAVES)),
                     "--points", str(scene["folder"] / "pts.gpkg"), "--raster", str(scene["raster"]),
                     "--patch-size-m", "200", "--precision", precision, "--out", str(out), "--overwrite"]) == 0
        return read_embeddings(out)

    start = entries()
    fp32 = embed("fp32")
    made = entries()
    assert len(made - start) == 1 and embed("fp32").attrs == fp32.attrs and entries() == made  # reused
    int8 = embed("int8")
    assert len(entries() - made) == 1  # not the fp32 cache entry
    assert int8.attrs["ecoalign"]["encoder"]["precision"] == "int8"
    assert fp32.attrs["ecoalign"]["encoder"]["precision"] == "fp32"
    a = fp32.set_index("plot_id")[embedding_columns(fp32)].to_numpy()
    b = int8.set_index("plot_id").loc[fp32["plot_id"], embedding_columns(fp32)].to_numpy()
    assert not np.array_equal(a, b) and _cosine(a, b).min() > 0.99


def test_map_precision_is_in_the_plan_and_close_to_fp32(scene, tmp_path):
    import rasterio

    from ecoalign.mapping.loading import encoder_from_plan, resolve_encoder
    from ecoalign.mapping.plan import plan_map

    plans = {p: plan_map(resolve_encoder("dofa", bundle=scene["bundle"], precision=p), scene["bundle"],
                         scene["raster"], encoder_spec="dofa") for p in ("fp32", "int8")}
    assert plans["fp32"].encoder_identity != plans["int8"].encoder_identity
    assert plans["int8"].encoder_source["precision"] == "int8"
    assert json.dumps(plans["fp32"].fingerprint()) != json.dumps(plans["int8"].fingerprint())  # no resume across
    assert encoder_from_plan(plans["int8"]).precision == "int8"  # what a Dask worker rebuilds
    maps = {}
    for p in ("fp32", "bf16", "int8"):
        out = tmp_path / f"{p}.tif"
        assert main(["map", "--encoder", "dofa", "--model", str(scene["bundle"]), "--raster", str(scene["raster"]),
                     "--precision", p, "--no-progress", "--no-quicklook", "--out", str(out)]) == 0
        with rasterio.open(out) as src:
            maps[p] = src.read(1)
            assert json.loads(src.tags()["ecoalign"])["encoder"]["precision"] == p
    assert (maps["fp32"] != -9999.0).all()
    for p in ("bf16", "int8"):
        assert np.abs(maps[p] - maps["fp32"]).max() < 0.05


def test_adapt_embedding_pass_precision(bryce_manifest, tmp_path):
    """`adapt --precision int8` (backbone.precision): the frozen-backbone pass runs int8, the report and the
    encoder say so, and a bad value names the config key before any work."""
    fast = [f"data.manifest={bryce_manifest}", "backbone.size=small", "trainer=quick", "trainer.baselines=false",
            "data.augmentations=1", "data.block_size_m=3000"]
    with pytest.raises(EcoalignInputError, match=r"backbone\.precision: unknown precision 'fp16'"):
        ecoalign.adapt(fast, precision="fp16", out=str(tmp_path / "bad"))
    run = ecoalign.adapt(fast, precision="int8", out=str(tmp_path / "run"))
    report = json.loads((run / "report.json").read_text())
    assert report["embedding_pass"]["precision"] == "int8"
    assert json.loads((run / "encoder" / "encoder.json").read_text())["embedding_precision"] == "int8"
    enc = ecoalign.load_encoder(run, precision="int8")
    assert enc.precision == "int8" and enc.identity()["band_mean"] is not None
    assert ecoalign.load_encoder(run).precision == "fp32"  # auto on a CPU machine
