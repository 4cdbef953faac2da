"""Presence-only SDM, ecoalign vs a default MaxEnt (elapid), on the same covariates and the same test sites.

Input in the usual benchmark layout (e.g. the NCEAS/Elith et al. 2006 "disdat" data):
  --po  presence-only records: species, x, y, covariates...
  --bg  background points:      x, y, covariates...
  --pa  independent presence/absence sites: x, y, covariates..., one 0/1 column per species
Both tools fit one model per species on PO + BG and are scored by AUC on the PA sites.
`--bryce` builds such files from the real Bryce Canyon plots in ../shared/data (PO = presence plots of the
southern 70 %, BG = all southern plots, PA = the northern 30 %), for a run on this machine.

    (elapid, the MaxEnt reference, is an ecoalign dependency)
    python benchmarks/bench_vs_maxent.py --bryce
    python benchmarks/bench_vs_maxent.py --po po.csv --bg bg.csv --pa pa.csv --crs EPSG:xxxx --covariates a,b,c
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

BRYCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "releves" / "bryce"
BRYCE_COVARIATES = ["elev", "slope", "av", "annrad", "grorad"]


def bryce_files(folder: Path, min_presences: int = 15):
    site = pd.read_csv(BRYCE / "labdsv_brycesite.csv").dropna(subset=["east", "north"])
    veg = pd.read_csv(BRYCE / "labdsv_bryceveg.csv")
    table = site.merge((veg.set_index("row") > 0).astype(int).reset_index(), on="row")
    table = table.rename(columns={"east": "x", "north": "y"})
    test = table["y"] > table["y"].quantile(0.7)
    train = table[~test]
    species = [s for s in veg.columns[1:] if train[s].sum() >= min_presences and table.loc[test, s].sum() >= 3
               and (table.loc[test, s] == 0).sum() >= 3]
    po = pd.concat([train.loc[train[s] == 1, ["x", "y", *BRYCE_COVARIATES]].assign(species=s) for s in species])
    bg = train[["x", "y", *BRYCE_COVARIATES]]
    pa = table.loc[test, ["row", "x", "y", *BRYCE_COVARIATES, *species]]
    for name, df in (("po", po), ("bg", bg), ("pa", pa)):
        df.to_csv(folder / f"{name}.csv", index=False)
    return folder / "po.csv", folder / "bg.csv", folder / "pa.csv", "EPSG:26912", BRYCE_COVARIATES


def run_ecoalign(po, bg, pa, crs, covariates, folder: Path) -> tuple[pd.Series, float]:
    spec = folder / "po_spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "presence_background", "task": "presence_only",
        "target": {"source": "points", "species_column": "species", "min_presences": 5},
        "features": {"embeddings": False, "covariates": covariates},
        "estimator": {"name": "lightgbm", "params": {"n_estimators": 200, "learning_rate": 0.03, "num_leaves": 7,
                                                     "min_child_samples": 5, "subsample": 0.8, "subsample_freq": 1}},
        "cv": {"scheme": "random", "folds": 3}, "metrics": ["auc"], "bootstrap": 0}))
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "ecoalign.cli.main"]
    subprocess.run(cmd + ["fit", str(spec), "--points", str(po), "--background", str(bg), "--crs", crs,
                          "--out", str(folder / "bundle")], check=True, capture_output=True, text=True)
    subprocess.run(cmd + ["evaluate", str(folder / "bundle"), "--points", str(pa), "--crs", crs, "--id-column", "row",
                          "--out", str(folder / "eval.csv")], check=True, capture_output=True, text=True)
    table = pd.read_csv(folder / "eval.csv")
    auc = table[table["metric"] == "auc"].set_index("species")["value"]
    return auc.drop(["micro", "macro"]), time.perf_counter() - t0


def run_maxent(po, bg, pa, covariates) -> tuple[pd.Series, float]:
    from elapid import MaxentModel
    from sklearn.metrics import roc_auc_score

    po, bg, pa = pd.read_csv(po), pd.read_csv(bg), pd.read_csv(pa)
    t0 = time.perf_counter()
    aucs = {}
    for s, group in po.groupby("species"):
        if s not in pa.columns:
            continue
        X = pd.concat([group[covariates], bg[covariates]], ignore_index=True)
        y = np.r_[np.ones(len(group)), np.zeros(len(bg))]
        model = MaxentModel()  # elapid's defaults
        model.fit(X, y)
        aucs[s] = roc_auc_score(pa[s], model.predict(pa[covariates]))
    return pd.Series(aucs), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bryce", action="store_true")
    ap.add_argument("--po"), ap.add_argument("--bg"), ap.add_argument("--pa"), ap.add_argument("--crs")
    ap.add_argument("--covariates", help="comma-separated covariate columns")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if a.bryce:
            po, bg, pa, crs, cov = bryce_files(folder)
        else:
            po, bg, pa, crs, cov = Path(a.po), Path(a.bg), Path(a.pa), a.crs, a.covariates.split(",")
        eco, t_eco = run_ecoalign(po, bg, pa, crs, cov, folder)
        mx, t_mx = run_maxent(po, bg, pa, cov)
    both = pd.DataFrame({"ecoalign_lightgbm": eco, "maxent_elapid": mx}).dropna()
    print(f"{len(both)} species, independent presence/absence test sites; AUC per species:")
    print(both.round(3).to_string())
    print(f"macro AUC  ecoalign {both.ecoalign_lightgbm.mean():.3f}   MaxEnt {both.maxent_elapid.mean():.3f}   "
          f"difference {both.ecoalign_lightgbm.mean() - both.maxent_elapid.mean():+.3f}")
    print(f"species where ecoalign >= MaxEnt: {(both.ecoalign_lightgbm >= both.maxent_elapid).sum()} of {len(both)}")
    print(f"wall time  ecoalign fit+evaluate (incl. 3-fold CV, process start) {t_eco:.1f} s   MaxEnt fit+predict {t_mx:.1f} s")


if __name__ == "__main__":
    main()
