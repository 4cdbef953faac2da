"""`ecoalign adapt` end to end on real Bryce Canyon relevés and plots, with DOFA-small on random weights."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import ecoalign
from ecoalign.aerial.align import AlignmentData, train_alignment

FAST = ["backbone.size=small", "trainer=quick", "data.augmentations=1", "data.block_size_m=3000"]


@pytest.fixture(scope="module")
def bryce_run(tmp_path_factory):
    """One adapt run shared by the tests of this module (the slow part is the embedding pass)."""
    import conftest

    conftest.need_shared()
    folder = tmp_path_factory.mktemp("bryce")
    old = os.environ.get("ECOALIGN_CACHE")
    os.environ["ECOALIGN_CACHE"] = str(folder / "cache")
    try:
        conftest.bryce_raster(folder)
        manifest = conftest.write_manifest(folder, {
            "name": "bryce-test", "licence": "GPL-2.0-or-later", "citation": "labdsv",
            "imagery": {"files": ["bryce_rgb.tif"], "wavelengths_um": [0.665, 0.56, 0.49], "nodata": 0},
            "plots": {"path": str(conftest.BRYCE / "labdsv_brycesite.csv"), "id_column": "row",
                      "x_column": "east", "y_column": "north", "crs": "EPSG:26912"},
            "releves": {"path": str(conftest.BRYCE / "labdsv_bryceveg.csv"), "format": "wide",
                        "plot_column": "row", "cover_scale": "bryce"},
        })
        run = ecoalign.adapt([f"data.manifest={manifest}", *FAST], out=str(folder / "run"))
        yield run, manifest, folder
    finally:
        if old is None:
            os.environ.pop("ECOALIGN_CACHE", None)
        else:
            os.environ["ECOALIGN_CACHE"] = old


@pytest.mark.slow
def test_run_directory_and_report(bryce_run):
    run, _, _ = bryce_run
    report = json.loads((run / "report.json").read_text())
    assert report["backbone"]["random_weights"] is True
    assert "RANDOM" in (run / "report.md").read_text()
    assert report["pairing"]["paired"] == 159  # 160 relevés, one plot (bcnp109) has no coordinates
    assert report["data"]["plots_without_coordinates"] == ["bcnp109"]
    names = [v["variant"] for v in report["variants"]]
    assert names == ["adapted", "frozen_dofa", "anchor_off", "botasp"]
    for v in report["variants"][:3]:
        for key in ("image_to_releve_R@1", "image_to_releve_R@10", "releve_to_image_R@10", "fidelity"):
            assert 0.0 <= v["test"][key] <= 1.0
    botasp = report["variants"][3]
    assert botasp["objective"] == "species" and "image_to_releve_R@1" not in botasp["test"]
    assert (run / "variants" / "botasp" / "encoder" / "species_head.pt").exists()
    assert ecoalign.load_encoder(run / "variants" / "botasp").embed_dim == 384
    frozen = report["variants"][1]["test"]["fidelity"]
    assert frozen == pytest.approx(1.0, abs=1e-6)  # adapter held at the identity keeps the geometry exactly
    split = report["split"]
    assert split["train"] + split["val"] + split["test"] == 159
    for name in names:
        assert (run / "variants" / name / "metrics.csv").exists()


@pytest.mark.slow
def test_load_encoder_embeds_like_training(bryce_run):
    """The saved encoder applied to a raw window equals the adapter applied to the cached frozen embedding."""
    import rasterio
    from rasterio.windows import from_bounds

    run, manifest, folder = bryce_run
    enc = ecoalign.load_encoder(run)
    assert enc.random_weights and enc.embed_dim == 384
    meta = json.loads((run / "encoder" / "encoder.json").read_text())
    assert meta["wavelengths_um"] == [0.665, 0.56, 0.49]
    x, y = 388220.9, 4144784.0  # plot bcnp__1
    with rasterio.open(folder / "bryce_rgb.tif") as src:
        win = from_bounds(x - 50, y - 50, x + 50, y + 50, transform=src.transform).round_offsets().round_lengths()
        window = src.read(window=win).astype("float32")
    emb = enc.embed(window[None])
    assert emb.shape == (1, 384) and np.isfinite(emb).all()
    frozen = ecoalign.load_encoder("dofa", size="small", wavelengths_um=meta["wavelengths_um"],
                                   band_mean=meta["band_mean"], band_std=meta["band_std"]).embed(window[None])
    with torch.no_grad():
        expected = enc.adapter(torch.from_numpy(frozen)).numpy()
    np.testing.assert_allclose(emb, expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(emb, frozen)  # training moved the adapter away from the identity


def _toy_data(n=120, d=16, s=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 4, generator=g)
    frozen = torch.cat([latent, torch.randn(n, d - 4, generator=g) * 0.5], dim=1)[:, None, :]
    cover = (torch.relu(latent @ torch.randn(4, s, generator=g)) * 20).clamp(max=100)
    split = np.array(["train"] * 80 + ["val"] * 20 + ["test"] * 20)
    return AlignmentData(frozen.repeat(1, 2, 1), cover, split)


MODEL = {"proj_dim": None, "adapter_mlp_hidden": 0, "releve_encoder": {"kind": "mlp", "hidden": 32, "layers": 2},
         "loss": {"name": "siglip"}}


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    data = _toy_data()
    kw = dict(model_kwargs=MODEL, anchor_weight=1.0, train_adapter=True, epochs=6, batch_size=32, lr=1e-2,
              weight_decay=0.0, patience=100, seed=3, progress=False, log=lambda m: None)
    straight = train_alignment("a", data, folder=tmp_path / "straight", **kw)

    def stop_after_three(row):
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_alignment("a", data, folder=tmp_path / "killed", on_epoch_end=stop_after_three, **kw)
    messages = []
    resumed = train_alignment("a", data, folder=tmp_path / "killed", **{**kw, "log": messages.append})
    assert any("resuming after epoch 3" in m for m in messages)
    assert resumed["epochs_run"] == straight["epochs_run"] == 6
    assert resumed["test"]["loss"] == pytest.approx(straight["test"]["loss"], rel=1e-6)
    a = (tmp_path / "straight" / "metrics.csv").read_text()
    b = (tmp_path / "killed" / "metrics.csv").read_text()
    assert a == b


def test_early_stopping_keeps_best_epoch(tmp_path):
    data = _toy_data()
    out = train_alignment("a", data, folder=tmp_path, model_kwargs=MODEL, anchor_weight=1.0, train_adapter=True,
                          epochs=200, batch_size=32, lr=5e-2, weight_decay=0.0, patience=3, seed=0, progress=False,
                          log=lambda m: None)
    assert out["epochs_run"] < 200
    assert out["epochs_run"] - out["best_epoch"] == 3


@pytest.mark.slow
def test_cli_kill_and_resume(bryce_run, tmp_path):
    """SIGKILL the real command during training, then `--resume` finishes with a complete report."""
    _, manifest, folder = bryce_run
    env = {**os.environ, "ECOALIGN_CACHE": str(folder / "cache")}  # embeddings cached by the module's run
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ecoalign.cli", "adapt", "--backbone", "dofa", "--manifest", str(manifest),
           "--out", str(out), *FAST, "trainer.epochs=150", "trainer.patience=150", "trainer.progress=false"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt = out / "variants" / "adapted" / "checkpoint.pt"
    while not ckpt.exists() and proc.poll() is None:  # no wall-clock deadline: a loaded machine is only slower
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists()
    done = subprocess.run([sys.executable, "-m", "ecoalign.cli", "adapt", "--resume", str(out)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming after epoch" in done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    assert [v["epochs_run"] for v in report["variants"]] == [150, 150, 150, 150]
