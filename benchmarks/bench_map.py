"""Mapping speed and memory, measured side by side in one run.

* ecoalign: `map_raster` (one read per block of windows, reads prefetched in a thread while the encoder runs,
  all-nodata windows never embedded, the DOFA kernel computed once, streaming to a tiled GeoTIFF, COG at the end);
* encoder only: DOFA forward on random batches, the ceiling of any pipeline on a fully valid raster;
* naive: torchgeo `RasterDataset` + `GridGeoSampler` + `DataLoader` (per-window reads, `num_workers` processes,
  the same batch size), the same encoder (same cached kernel), the same standardisation and species model,
  predictions kept in memory and written as a GeoTIFF. Nodata windows are embedded and masked afterwards.
Both run on a fully valid raster and on the same raster with a nodata footprint (a scene edge), and the maps
are compared. ecoalign runs at every backbone precision of ``--precision`` (fp32, bf16, int8: its scheme,
``ecoalign.encoders.int8.int8_scheme()``, is printed; the baseline is fp32): tiles/s side by side, ratios to the baseline and to ecoalign fp32, and the
fraction of valid pixels (pixel x species values) whose probability is within 0.02 of the fp32 map's. With
``--repeat``, tiles/s are the fastest run's; the median run's and the least CPU time's ratios to the baseline
follow (CPU time of this process and the DataLoader workers: on a shared machine wall-clock ratios move with the
load). Every
pipeline standardises bands with the same fixed statistics (the encoder's). Peak RSS of `map_raster` is measured
in fresh subprocesses for a raster and one 4x larger (``--skip-rss`` skips it). On CUDA (untested here: no GPU on
the development machine) it also reports bf16 tiles/s and the fraction of encoder-only throughput the full
pipeline reaches.

    python benchmarks/bench_map.py [--side 8] [--batch-size 32] [--num-workers 2] [--rss-side 6]
                                   [--precision fp32,bf16,int8] [--skip-rss] [--repeat 1]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WAVES = [0.49, 0.56, 0.665, 0.842]
RES = 1.0  # metres
WINDOW = 224  # px = m: one DOFA input per window, no resampling
LEFT, TOP = 500000.0, 4800000.0
CRS = "EPSG:32631"


def make_raster(path: Path, side_windows: int, *, footprint: bool = False, seed: int = 0) -> Path:
    """A 4-band uint16 orthophoto-like raster (tiled, deflate), written in strips so the writer stays small."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window
    from scipy.ndimage import gaussian_filter

    side = side_windows * WINDOW
    rng = np.random.default_rng(seed)
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 4, "dtype": "uint16", "crs": CRS,
               "transform": from_origin(LEFT, TOP, RES, RES), "nodata": 0, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, side, 512):
            h = min(512, side - r0)
            tex = gaussian_filter(rng.normal(size=(4, h, side)), sigma=(0, 6, 6))
            arr = (2000 + 4000 * np.tanh(tex * 3)).clip(1, 65535).astype("uint16")
            if footprint:  # a diagonal scene edge: about 45% of the raster is outside the swath
                rows = np.arange(r0, r0 + h)[:, None]
                cols = np.arange(side)[None, :]
                arr[:, (rows + cols) < 0.9 * side] = 0
            dst.write(arr, window=Window(0, r0, side, h))
    return path


def make_bundle(folder: Path, raster: Path, encoder) -> Path:
    import geopandas as gpd
    import pandas as pd

    import ecoalign
    from ecoalign.sdm.fitting import fit_bundle
    from ecoalign.sdm.sites import build_sites
    from ecoalign.sdm.spec import spec_from_dict

    rng = np.random.default_rng(1)
    with __import__("rasterio").open(raster) as src:
        side = src.width * RES
    xy = np.column_stack([LEFT + rng.uniform(WINDOW, side - WINDOW, 24), TOP - rng.uniform(WINDOW, side - WINDOW, 24)])
    pts = gpd.GeoDataFrame({"plot_id": [f"p{i}" for i in range(len(xy))]},
                           geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=CRS)
    emb = ecoalign.embed_points(pts, [raster], encoder, patch_size_m=WINDOW * RES)
    y = pd.DataFrame({"plot_id": emb["plot_id"]})
    for j, name in enumerate(["sp_a", "sp_b", "sp_c"]):
        y[name] = (emb[f"emb_{j:03d}"] > emb[f"emb_{j:03d}"].median()).astype(int)
    y.to_csv(folder / "targets.csv", index=False)
    spec = spec_from_dict({"name": "bench", "task": "presence_absence",
                           "target": {"source": str(folder / "targets.csv"), "id_column": "plot_id", "min_presences": 4},
                           "features": {"embeddings": True, "pca": 8}, "estimator": {"name": "logistic"},
                           "cv": {"scheme": "random", "folds": 2}, "metrics": ["auc"], "bootstrap": 5})
    return fit_bundle(spec, build_sites(spec, embeddings=emb), folder / "bundle", n_jobs=1, progress=False)


def run_ecoalign(encoder, bundle, raster, out, batch_size) -> tuple[float, np.ndarray]:
    import rasterio

    from ecoalign.mapping import map_raster

    t0 = time.perf_counter()
    map_raster(encoder, bundle, raster, out, batch_size=batch_size, overwrite=True, quicklook=False, progress=False)
    seconds = time.perf_counter() - t0
    with rasterio.open(out) as src:
        return seconds, src.read()


def run_naive(encoder, bundle, raster, out, batch_size, num_workers) -> tuple[float, np.ndarray]:
    """The torchgeo way: a grid sampler over a RasterDataset, batches from a DataLoader, predictions in memory."""
    import pandas as pd
    import rasterio
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    from ecoalign.aerial.embed import EMBED_PREFIX
    from ecoalign.sdm.fitting import load_bundle

    t0 = time.perf_counter()

    class Scene(RasterDataset):
        filename_glob = Path(raster).name

    model, meta = load_bundle(bundle)
    mean, std = encoder.band_mean, encoder.band_std  # the encoder's fixed statistics, as ecoalign map uses
    mean_t, std_t = torch.from_numpy(mean)[None, :, None, None], torch.from_numpy(std)[None, :, None, None]
    ds = Scene(paths=[str(Path(raster).parent)])
    sampler = GridGeoSampler(ds, size=WINDOW, stride=WINDOW)
    loader = DataLoader(ds, sampler=sampler, batch_size=batch_size, num_workers=num_workers, collate_fn=stack_samples)
    with rasterio.open(raster) as src:
        width, height, transform, crs = src.width // WINDOW, src.height // WINDOW, src.transform, src.crs
    targets = list(model[-1].species_)
    result = np.full((len(targets), height, width), -9999.0, np.float32)
    for batch in loader:
        img = batch["image"].float()
        invalid = (img == 0).all(dim=1)  # nodata = 0 on every band
        keep = (invalid.float().mean(dim=(1, 2)) <= 0.5).numpy()
        x = (img - mean_t) / std_t
        x = x.masked_fill(invalid[:, None], 0.0)
        if x.shape[-1] != encoder.info.input_px:
            x = F.interpolate(x, size=(encoder.info.input_px,) * 2, mode="bilinear", align_corners=False)
        emb = encoder.head(encoder.features(x).numpy())
        X = pd.DataFrame(emb, columns=[f"{EMBED_PREFIX}{j:03d}" for j in range(emb.shape[1])])[meta["features"]]
        pred = model.predict_proba(X)
        for i, q in enumerate(batch["bounds"]):
            xs = q[0] if isinstance(q, tuple) else q.minx
            ys = q[1] if isinstance(q, tuple) else q.maxy
            col = round((xs.start - transform.c) / (WINDOW * RES))
            row = round((transform.f - ys.stop) / (WINDOW * RES))
            if keep[i]:
                result[:, row, col] = pred[i]
    profile = {"driver": "GTiff", "width": width, "height": height, "count": len(targets), "dtype": "float32",
               "crs": crs, "transform": transform * transform.scale(WINDOW), "nodata": -9999.0}
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(result)
    return time.perf_counter() - t0, result


def embedding_agreement(encoders, raster, k) -> dict:
    """Per precision, its embeddings of the raster's first k x k windows against fp32's: the minimum cosine, and
    the error's norm as a share of the spread between the windows (what a species model tells apart; a cosine
    near 1 can hide an error that is large beside it, when the embeddings share a large common part)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(raster) as src:
        raw = src.read(window=Window(0, 0, k * WINDOW, k * WINDOW), out_dtype="float32")
    wins = np.stack([raw[:, i * WINDOW:(i + 1) * WINDOW, j * WINDOW:(j + 1) * WINDOW]
                     for i in range(k) for j in range(k)])
    x = encoders["fp32"].image_tensor(wins)
    emb = {p: e.features(x).numpy() for p, e in encoders.items()}
    ref = emb["fp32"]
    out = {}
    for p, got in emb.items():
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        share = np.linalg.norm(got - ref) / np.linalg.norm(ref - ref.mean(0))
        out[p] = "" if p == "fp32" else f"; vs fp32 on {k * k} raster windows: min cosine {cos.min():.5f}, " \
                                        f"error / spread between windows {share:.3f}"
    return out


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the baseline's DataLoader workers): on a shared
    machine, wall-clock ratios move with the load and favour the multi-process baseline, CPU time much less."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def rss_child(raster: str, bundle: str, out: str) -> None:
    """Runs in a fresh process: map one raster and print peak RSS."""
    from ecoalign.mapping import map_raster

    t0 = time.perf_counter()
    map_raster("dofa", bundle, raster, out, overwrite=True, quicklook=False, progress=False)
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": time.perf_counter() - t0}))


def gpu_figures(encoder, bundle, raster, folder, batch_size) -> None:
    """bf16 tiles/s of the full pipeline vs encoder-only forward throughput on CUDA (not run without a GPU)."""
    import torch

    from ecoalign.mapping import map_raster

    if not torch.cuda.is_available():
        print("gpu: no CUDA device here; the bf16 path is written but not measured")
        return
    encoder = encoder.with_precision("bf16")
    encoder.model.to("cuda")
    x = torch.randn(batch_size, 4, 224, 224, device="cuda")
    encoder.features(x)
    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 10:
        encoder.features(x)
        n += batch_size
    torch.cuda.synchronize()
    enc_rate = n / (time.perf_counter() - t0)
    with __import__("rasterio").open(raster) as src:
        tiles = (src.width // WINDOW) * (src.height // WINDOW)
    t0 = time.perf_counter()
    map_raster(encoder, bundle, raster, folder / "gpu.tif", batch_size=batch_size, overwrite=True, quicklook=False,
               progress=False, device="cuda")
    rate = tiles / (time.perf_counter() - t0)
    print(f"gpu bf16: pipeline {rate:.1f} tiles/s, encoder-only {enc_rate:.1f} tiles/s, fraction {rate / enc_rate:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=8, help="throughput raster: side in 224 m windows (default 8)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=2, help="DataLoader workers for the torchgeo baseline")
    ap.add_argument("--rss-side", type=int, default=6, help="memory: small raster side in windows (large = 2x side)")
    ap.add_argument("--precision", default="fp32,bf16,int8",
                    help="backbone precisions of ecoalign map to compare, comma separated (default fp32,bf16,int8; "
                         "fp32 is always run: it is the reference map)")
    ap.add_argument("--skip-rss", action="store_true", help="skip the peak-RSS measurement")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every pipeline this many times, interleaved, and keep the fastest (shared machines)")
    ap.add_argument("--rss-child", nargs=3, metavar=("RASTER", "BUNDLE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(*args.rss_child)

    import torch

    import ecoalign
    from ecoalign.data.patches import band_stats, open_rasters
    from ecoalign.encoders.dofa import resolve_precision

    precisions = ["fp32"] + [p for p in dict.fromkeys(resolve_precision(v, where="--precision")
                                                       for v in args.precision.split(",")) if p != "fp32"]
    print(f"[bench_map] torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}; DOFA-small random weights, {WINDOW} m windows at {RES:g} m; "
          f"precisions {precisions}")
    if "int8" in precisions:
        from ecoalign.encoders.int8 import int8_scheme

        print(f"[bench_map] int8 here: {int8_scheme()}")
    with tempfile.TemporaryDirectory(prefix="bench_map_") as tmp:
        folder = Path(tmp)
        (folder / "valid").mkdir()
        (folder / "edge").mkdir()
        valid = make_raster(folder / "valid" / "scene.tif", args.side)
        edge = make_raster(folder / "edge" / "scene.tif", args.side, footprint=True)
        # fixed band statistics, part of the encoder: the same for the plots, both rasters and every pipeline
        mean, std = band_stats(open_rasters([valid], WAVES))
        enc = ecoalign.load_encoder("dofa", size="small", wavelengths_um=WAVES, band_mean=mean, band_std=std,
                                    precision="fp32")
        bundle = make_bundle(folder, valid, enc)
        x = torch.zeros(1, 4, 224, 224)
        encoders = {}
        for p in precisions:  # warm-up outside the timings: kernel, and the int8 quantised copy (once per encoder)
            encoders[p] = enc.with_precision(p)
            t0 = time.perf_counter()
            encoders[p].features(x)
            if p != "fp32":
                print(f"[bench_map] {p}: first call (preparation included) {time.perf_counter() - t0:.2f} s")
        t0 = time.perf_counter()
        for _ in range(20):
            enc.features._kernel = None
            enc.features._patch_kernel(x.device)
        kernel_ms = (time.perf_counter() - t0) / 20 * 1000
        tiles = args.side ** 2
        km2 = (args.side * WINDOW * RES / 1000) ** 2
        print(f"[bench_map] DOFA kernel generation {kernel_ms:.1f} ms (done once per run by both pipelines)")
        xb = torch.randn(16, 4, 224, 224)
        n_batches = max(1, args.side ** 2 // 16)
        emb = embedding_agreement(encoders, valid, min(args.side, 4))
        timed = dict(encoders)
        if "int8" in precisions:  # the scheme oneDNN replaces, side by side (encoder only, not a pipeline)
            from ecoalign.encoders import int8 as int8_module

            if int8_module.onednn_int8_available():
                real, int8_module.onednn_int8_available = int8_module.onednn_int8_available, lambda: False
                try:
                    timed["int8 dynamic"] = enc.with_precision("int8")  # a fresh encoder, blocks not yet made
                    timed["int8 dynamic"].features(x)  # prepared now, while the fallback is what int8 means
                    emb["int8 dynamic"] = embedding_agreement({"fp32": enc, "int8": timed["int8 dynamic"]}, valid,
                                                              min(args.side, 4))["int8"]
                finally:
                    int8_module.onednn_int8_available = real
        seconds = {p: [] for p in timed}
        for _ in range(max(1, args.repeat)):  # interleaved, so a change of load hits every precision alike
            for p, e in timed.items():
                t0 = time.perf_counter()
                for _ in range(n_batches):
                    e.features(xb)
                seconds[p].append(time.perf_counter() - t0)
        for p in timed:
            enc_rate = n_batches * 16 / min(seconds[p])
            ratio = np.median(np.array(seconds["fp32"]) / np.array(seconds[p]))
            print(f"[bench_map] encoder-only forward {p} (batches of 16, no I/O, no model): {enc_rate:.2f} tiles/s "
                  f"(median of runs {ratio:.2f}x fp32's) = the ceiling for any {p} pipeline on fully valid rasters "
                  f"here{emb[p]}")
        print(f"{'raster':<18}{'pipeline':<18}{'seconds':>9}{'tiles/s':>9}{'km2/min':>9}{'x naive':>9}"
              f"{'x fp32':>8}{'within 0.02':>13}{'max |diff|':>12}{'median x naive':>16}{'cpu x naive':>13}"
              f"   (vs the ecoalign fp32 map)")
        for name, raster, first in (("fully valid", valid, "naive"), ("45% nodata edge", edge, "ecoalign")):
            res, walls, cpus = {}, {}, {}
            runs = [f"ecoalign {p}" for p in precisions]
            for _ in range(max(1, args.repeat)):
                for which in (["naive"] + runs) if first == "naive" else (runs + ["naive"]):
                    out = raster.parent / f"{which.replace(' ', '_')}.tif"
                    cpu0 = _cpu_seconds()
                    if which == "naive":
                        got = run_naive(enc, bundle, raster, out, args.batch_size, args.num_workers)
                    else:
                        got = run_ecoalign(encoders[which.split()[1]], bundle, raster, out, args.batch_size)
                    cpus[which] = min(cpus.get(which, float("inf")), _cpu_seconds() - cpu0)
                    walls.setdefault(which, []).append(got[0])
                    res[which] = min(res.get(which, got), got, key=lambda r: r[0])
            ref = res["ecoalign fp32"][1]
            valid_px = ref != -9999.0
            for which in ["naive"] + runs:  # side by side, once every pipeline has run
                sec, values = res[which]
                diff = np.abs(values - ref)[valid_px]  # valid (pixel, species) values of the fp32 map
                within = float((diff <= 0.02).mean()) if diff.size else float("nan")
                print(f"{name:<18}{which + (' (fp32)' if which == 'naive' else ''):<18}{sec:9.1f}{tiles / sec:9.2f}"
                      f"{km2 / sec * 60:9.3f}{res['naive'][0] / sec:8.2f}x{res['ecoalign fp32'][0] / sec:7.2f}x"
                      f"{within:13.4f}{float(diff.max()) if diff.size else 0.0:12.4f}"
                      f"{np.median(walls['naive']) / np.median(walls[which]):15.2f}x"
                      f"{cpus['naive'] / cpus[which]:12.2f}x", flush=True)
            a, b = ref, res["naive"][1]
            diff = float(np.abs(a - b)[valid_px].max()) if valid_px.any() else 0.0
            print(f"{name:<18}ecoalign fp32 vs naive: same nodata {bool(((a == -9999.0) == (b == -9999.0)).all())}, "
                  f"max |diff| {diff:.2e}", flush=True)

        if args.skip_rss:
            gpu_figures(enc, bundle, valid, folder, args.batch_size)
            return
        rss = {}
        for label, side in (("small", args.rss_side), ("4x pixels", 2 * args.rss_side)):
            (folder / label).mkdir()
            raster = make_raster(folder / label / "scene.tif", side, seed=3)
            proc = subprocess.run([sys.executable, __file__, "--rss-child", str(raster), str(bundle),
                                   str(folder / label / "map.tif")], capture_output=True, text=True, check=True)
            rss[label] = json.loads(proc.stdout.strip().splitlines()[-1])
            mpx = (side * WINDOW) ** 2 / 1e6
            print(f"[bench_map] peak RSS {label:<10} ({mpx:.1f} Mpx, {side ** 2} tiles): "
                  f"{rss[label]['maxrss_mb']:.0f} MB in {rss[label]['seconds']:.0f} s", flush=True)
        ratio = rss["4x pixels"]["maxrss_mb"] / rss["small"]["maxrss_mb"]
        print(f"[bench_map] peak RSS 4x pixels / small = {ratio:.3f} (target <= 1.10)")
        gpu_figures(enc, bundle, valid, folder, args.batch_size)


if __name__ == "__main__":
    main()
