"""A mosaic of 16 tiles vs the same area as one raster, measured side by side in one run.

The raster of ``bench_map.make_raster`` (4-band uint16, tiled, deflate) is cut into a 4 x 4 grid of GeoTIFFs at
uneven rows/columns, so that many windows cross tile edges (and, with ``--stride-m`` below the window, every
tile edge is crossed). ``map_raster`` runs on the single raster and on the glob of the tiles (read as one VRT
mosaic, ``ecoalign.data.mosaic``), each in a fresh process (peak RSS of that process, wall seconds of
``map_raster``), alternating the order ``--repeat`` times. Reported: equal output (bytes of the map and of the
presence map), windows/s of each, the throughput ratio tiles/single and peak RSS of each.

    python benchmarks/bench_map_tiles.py [--side 4] [--stride-m 112] [--batch-size 16] [--size small] [--repeat 1]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_map import LEFT, RES, TOP, WAVES, make_bundle, make_raster  # noqa: E402


def cut_tiles(raster: Path, folder: Path, n: int = 4) -> list[Path]:
    """n x n tiles of ``raster`` at uneven cut lines (tile sides differ; edges fall inside windows)."""
    import rasterio
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    tiles = []
    with rasterio.open(raster) as src:
        def cuts(size):
            inner = [round(size * k / n) + (37 if k % 2 else -53) for k in range(1, n)]
            return [0, *inner, size]

        rows, cols = cuts(src.height), cuts(src.width)
        for i in range(n):
            for j in range(n):
                win = Window(cols[j], rows[i], cols[j + 1] - cols[j], rows[i + 1] - rows[i])
                profile = {**src.profile, "width": int(win.width), "height": int(win.height),
                           "transform": src.window_transform(win)}
                path = folder / f"tile_{i}_{j}.tif"
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(src.read(window=win))
                tiles.append(path)
    return tiles


def child(raster: str, bundle: str, out: str, size: str, stride_m: float, batch_size: int, cache: str) -> None:
    """In a fresh process: map once, print seconds, windows and peak RSS."""
    import os

    os.environ["ECOALIGN_CACHE"] = cache
    import rasterio

    import ecoalign
    from ecoalign.mapping import map_raster

    enc = ecoalign.load_encoder("dofa", size=size, wavelengths_um=WAVES, band_mean=[4000.0] * 4,
                                band_std=[1500.0] * 4)
    t0 = time.perf_counter()
    map_raster(enc, bundle, raster, out, stride_m=stride_m, batch_size=batch_size, overwrite=True,
               quicklook=False, progress=False)
    seconds = time.perf_counter() - t0
    with rasterio.open(out) as src:
        windows = int((src.read(1) != src.nodata).sum())
    print(json.dumps({"seconds": seconds, "windows": windows,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(*args) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=4, help="area side in 224 m windows (default 4)")
    ap.add_argument("--stride-m", type=float, default=112.0, help="window stride (default 112: half a window)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", default="small", help="DOFA size (small | base), random weights")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        r, b, o, size, stride, batch, cache = args.child
        child(r, b, o, size, float(stride), int(batch), cache)
        return
    import rasterio

    import ecoalign
    from ecoalign.mapping.writer import presence_path

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raster = make_raster(tmp / "single.tif", args.side)
        tiles = cut_tiles(raster, tmp / "tiles")
        enc = ecoalign.load_encoder("dofa", size=args.size, wavelengths_um=WAVES, band_mean=[4000.0] * 4,
                                    band_std=[1500.0] * 4)
        bundle = make_bundle(tmp, raster, enc)
        inputs = {"single": str(raster), "tiles16": str(tmp / "tiles" / "tile_*.tif")}
        results: dict[str, list[dict]] = {k: [] for k in inputs}
        for rep in range(args.repeat):
            order = list(inputs) if rep % 2 == 0 else list(inputs)[::-1]
            for name in order:
                results[name].append(run_child(inputs[name], bundle, tmp / f"map_{name}.tif", args.size, args.stride_m,
                                               args.batch_size, tmp / "cache"))
        outs = {}
        for name in inputs:
            with rasterio.open(tmp / f"map_{name}.tif") as src, rasterio.open(presence_path(tmp / f"map_{name}.tif")) as p:
                outs[name] = (src.read().tobytes(), p.read().tobytes(), src.shape, src.count)
        best = {k: min(v, key=lambda r: r["seconds"]) for k, v in results.items()}
        wps = {k: v["windows"] / v["seconds"] for k, v in best.items()}
        with rasterio.open(raster) as src:
            size_px = (src.width, src.height)
        report = {
            "area_px": size_px, "area_m": [s * RES for s in size_px], "origin": [LEFT, TOP], "tiles": len(tiles),
            "dofa": args.size, "stride_m": args.stride_m, "map_px": list(outs["single"][2]),
            "equal_map": outs["single"][:2] == outs["tiles16"][:2],
            "windows_per_s": {k: round(v, 2) for k, v in wps.items()},
            "throughput_ratio_tiles_vs_single": round(wps["tiles16"] / wps["single"], 3),
            "seconds": {k: [round(r["seconds"], 2) for r in v] for k, v in results.items()},
            "peak_rss_mb": {k: round(max(r["maxrss_mb"] for r in v), 1) for k, v in results.items()},
        }
        print(json.dumps(report, indent=2))
        if not report["equal_map"]:
            sys.exit("the 16-tile map differs from the single-raster map")


if __name__ == "__main__":
    main()
