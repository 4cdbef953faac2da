"""Speed of `ecoalign adapt`'s two phases, measured in one run and printed as figures and ratios.

1. the one-time embedding pass: raster windows -> frozen DOFA embeddings (plots/s), with the
   wavelength kernel cached (ecoalign) vs recomputed per batch (torchgeo's forward_features);
2. adapter training on cached embeddings: seconds per epoch over N plots (target: 10,000 plots < 5 s on CPU).

    python benchmarks/bench_adapt.py [--plots 10000] [--size base] [--embed-plots 48]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def bench_embedding(size: str, n: int, batch: int) -> dict:
    import rasterio
    from rasterio.transform import from_origin

    from ecoalign.data.patches import PatchReader, band_stats, open_rasters
    from ecoalign.encoders.dofa import DOFAFeatures, build_dofa

    wl = [0.49, 0.56, 0.665, 0.842]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.tif"
        rng = np.random.default_rng(0)
        arr = rng.integers(100, 4000, size=(4, 1000, 1000), dtype=np.uint16)
        with rasterio.open(path, "w", driver="GTiff", width=1000, height=1000, count=4, dtype="uint16",
                           crs="EPSG:32631", transform=from_origin(500000, 4800000, 2, 2), nodata=0) as dst:
            dst.write(arr)
        sources = open_rasters([path], wl)
        mean, std = band_stats(sources)
        centres = np.column_stack([rng.uniform(500100, 501900, n), rng.uniform(4798100, 4799900, n)])
        model, _ = build_dofa(size, "none")
        feats = DOFAFeatures(model, wl)
        with PatchReader(sources, mean=mean, std=std) as reader:
            t = time.perf_counter()
            patches, kept, _ = reader.read_batch(centres)
            read_s = time.perf_counter() - t
        x = torch.from_numpy(patches)
        feats(x[:2])  # warm-up
        t = time.perf_counter()
        for s in range(0, n, batch):
            feats(x[s:s + batch])
        cached_s = time.perf_counter() - t
        t = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, n, batch):
                model.forward_features(x[s:s + batch], wl)
        plain_s = time.perf_counter() - t
    return {"plots": n, "window_read_plots_per_s": n / read_s, "embed_plots_per_s": n / cached_s,
            "torchgeo_forward_plots_per_s": n / plain_s, "speedup_cached_kernel": plain_s / cached_s,
            "end_to_end_plots_per_s": n / (read_s + cached_s)}


def bench_training(n: int, dim: int, species: int, batch_size: int) -> dict:
    from ecoalign.aerial.align import AlignmentData, train_alignment

    g = torch.Generator().manual_seed(0)
    frozen = torch.randn(n, 2, dim, generator=g)
    cover = torch.relu(torch.randn(n, species, generator=g) * 20)
    split = np.where(np.arange(n) < int(n * 0.9), "train", "val")
    split[-max(2, n // 20):] = "test"
    data = AlignmentData(frozen, cover, split)
    model = {"proj_dim": None, "adapter_mlp_hidden": 0, "releve_encoder": {"kind": "mlp", "hidden": 512, "layers": 2},
             "loss": {"name": "siglip"}}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        out = train_alignment("bench", data, folder=Path(tmp), model_kwargs=model, anchor_weight=1.0,
                              train_adapter=True, epochs=3, batch_size=batch_size, lr=1e-3, weight_decay=1e-4, patience=10,
                              seed=0, progress=False, log=lambda m: None)
        wall = time.perf_counter() - t
    train_rows = int((split == "train").sum())
    return {"plots": n, "train_plots": train_rows, "train_plots_per_s": out["train_plots_per_second"],
            "seconds_per_epoch_10k": 10_000 / out["train_plots_per_second"],
            "wall_seconds_3_epochs_with_val_and_checkpoints": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plots", type=int, default=10_000)
    ap.add_argument("--size", default="base")
    ap.add_argument("--embed-plots", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16, help="windows per DOFA forward")
    ap.add_argument("--train-batch", type=int, default=None, help="adapter batch (default: configs/trainer/default.yaml)")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    e = bench_embedding(a.size, a.embed_plots, a.batch)
    print(f"embedding pass (DOFA-{a.size}, 224 px, batch {a.batch}, {e['plots']} windows):")
    print(f"  window reading      {e['window_read_plots_per_s']:8.1f} plots/s")
    print(f"  ecoalign embedding  {e['embed_plots_per_s']:8.2f} plots/s")
    print(f"  torchgeo forward    {e['torchgeo_forward_plots_per_s']:8.2f} plots/s")
    print(f"  ratio cached-kernel / torchgeo: {e['speedup_cached_kernel']:.2f}x")
    print(f"  read+embed          {e['end_to_end_plots_per_s']:8.2f} plots/s")
    dim = {"small": 384, "base": 768, "large": 1024}[a.size]
    if a.train_batch is None:
        from ecoalign.core.config import compose

        a.train_batch = int(compose("adapt").trainer.batch_size)
    t = bench_training(a.plots, dim, 400, a.train_batch)
    print(f"adapter training on cached embeddings ({a.plots} plots, {dim}-d, 400 species, batch {a.train_batch}):")
    print(f"  {t['train_plots_per_s']:.0f} plots/s; one epoch over 10,000 plots: {t['seconds_per_epoch_10k']:.2f} s "
          f"(target < 5 s: {'met' if t['seconds_per_epoch_10k'] < 5 else 'MISSED'})")
    print(f"  3 epochs incl. validation and checkpoints: {t['wall_seconds_3_epochs_with_val_and_checkpoints']:.2f} s")


if __name__ == "__main__":
    main()
