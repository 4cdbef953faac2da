"""Downstream scale, measured in one run: spatially cross-validating many species on many sites.

* ecoalign: `cross_validate` (species fitted in parallel across cores, one LightGBM thread each), vs
* naive: a loop over species and folds fitting LightGBM one model at a time (LightGBM's own threading).
Both fit the same models on the same folds; the script prints wall times, the ratio, CPU use and AUCs.
With --embed-memory it also measures peak memory of `ecoalign embed` as the number of points grows.

    python benchmarks/bench_downstream.py [--species 200] [--sites 10000] [--features 32] [--embed-memory]
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

import numpy as np
import pandas as pd
import yaml


def synthetic_sites(n_sites: int, n_species: int, n_features: int, seed: int = 0):
    from ecoalign.sdm.sites import SiteTable

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 20_000, size=(n_sites, 2))
    X = rng.normal(size=(n_sites, n_features)) + np.sin(xy[:, :1] / 3000.0)
    W = rng.normal(size=(n_features, n_species)) / np.sqrt(n_features)
    logits = X @ W * 2.0 + rng.normal(-1.0, 0.5, size=n_species)
    Y = (rng.random((n_sites, n_species)) < 1 / (1 + np.exp(-logits))).astype(float)
    ids = np.array([f"s{i}" for i in range(n_sites)])
    return SiteTable(ids=ids, xy=xy, crs=None, X=pd.DataFrame(X, columns=[f"f{j}" for j in range(n_features)], index=ids),
                     Y=pd.DataFrame(Y, columns=[f"sp{j:03d}" for j in range(n_species)], index=ids))


def spec_for(tmp: Path):
    from ecoalign.sdm.spec import load_spec

    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bench", "task": "presence_absence", "target": {"source": "bench", "min_presences": 10},
        "features": {"embeddings": False, "covariates": ["x"]},
        "estimator": {"name": "lightgbm", "params": {"n_estimators": 100, "num_leaves": 15, "learning_rate": 0.1}},
        "cv": {"scheme": "spatial_block", "block_size_m": 2000, "folds": 5}, "metrics": ["auc"], "bootstrap": 0}))
    return load_spec(path)


def naive(spec, sites, seed=0):
    """One species and one fold at a time, as a script written per species would do it."""
    import lightgbm as lgb

    from ecoalign.sdm.fitting import make_splitter
    from ecoalign.sdm.metrics import auc

    folds = list(make_splitter(spec, seed).split(sites.X, coords=sites.xy))
    aucs = []
    for s in sites.Y.columns:
        y = sites.Y[s].to_numpy().astype(int)
        oof = np.zeros(len(y))
        for train, test in folds:
            m = lgb.LGBMClassifier(verbose=-1, random_state=0, **spec.estimator["params"])
            m.fit(sites.X.iloc[train], y[train])
            oof[test] = m.predict_proba(sites.X.iloc[test])[:, 1]
        aucs.append(auc(y, oof))
    return float(np.nanmean(aucs))


def timed(fn):
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return out, wall, cpu / wall


EMBED_CHILD = r"""
import json, resource, sys, numpy as np, geopandas as gpd, rasterio
from rasterio.transform import from_origin
from shapely.geometry import Point
import ecoalign
from ecoalign.aerial.embed import write_embeddings
n, folder = int(sys.argv[1]), sys.argv[2]
raster = f"{folder}/r.tif"
rng = np.random.default_rng(0)
with rasterio.open(raster, "w", driver="GTiff", width=2000, height=2000, count=4, dtype="uint16", crs="EPSG:32631",
                   transform=from_origin(500000, 4804000, 2, 2), nodata=0) as dst:
    dst.write(rng.integers(100, 4000, size=(4, 2000, 2000), dtype=np.uint16))
xy = rng.uniform([500100, 4800100], [503900, 4803900], size=(n, 2))
pts = gpd.GeoDataFrame({"plot_id": [f"p{i}" for i in range(n)]}, geometry=[Point(*p) for p in xy], crs="EPSG:32631")
enc = ecoalign.load_encoder("dofa", size="small", wavelengths_um=[0.49, 0.56, 0.665, 0.842])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
write_embeddings(pts, [raster], enc, f"{folder}/e.parquet", progress=False)
print(json.dumps({"n": n, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_mb": base / 1024}))
"""


def embed_memory(sizes=(100, 400)):
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            env_cache = {"ECOALIGN_CACHE": tmp + "/cache"}
            import os

            out = subprocess.run([sys.executable, "-c", EMBED_CHILD, str(n), tmp], capture_output=True, text=True,
                                 env={**os.environ, **env_cache}, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--species", type=int, default=200)
    ap.add_argument("--sites", type=int, default=10_000)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--embed-memory", action="store_true")
    a = ap.parse_args()
    from ecoalign.sdm.fitting import cross_validate

    sites = synthetic_sites(a.sites, a.species, a.features)
    with tempfile.TemporaryDirectory() as tmp:
        spec = spec_for(Path(tmp))
        res, wall_e, cores_e = timed(lambda: cross_validate(spec, sites, n_jobs=-1))
        auc_e = res.metrics.query("species == 'macro' and metric == 'auc'")["value"].iloc[0]
        auc_n, wall_n, cores_n = timed(lambda: naive(spec, sites))
    print(f"{a.species} species x {a.sites} sites x {a.features} features, LightGBM 100 trees, 5-fold spatial block CV")
    print(f"  ecoalign cross_validate: {wall_e:7.1f} s wall, {cores_e:.2f} cores busy on average, macro AUC {auc_e:.3f}")
    print(f"  naive per-species loop : {wall_n:7.1f} s wall, {cores_n:.2f} cores busy on average, macro AUC {auc_n:.3f}")
    print(f"  speed-up: {wall_n / wall_e:.2f}x")
    if a.embed_memory:
        rows = embed_memory()
        for r in rows:
            print(f"  embed {r['n']:5d} points: peak RSS {r['maxrss_mb']:.0f} MB")
        print(f"  peak-memory ratio {rows[-1]['n']} vs {rows[0]['n']} points: {rows[-1]['maxrss_mb'] / rows[0]['maxrss_mb']:.3f}")


if __name__ == "__main__":
    main()
