"""Compare settings of the default species model on the disdat TRAINING records only (no test file is read).

How the ensemble's settings are chosen without tuning on the test sites that ``bench_sdm_disdat.py`` reports:
the presence records and background points of each region are split into spatial blocks (a sixth of the extent
across, 4 folds, seed 123: coarser than, and drawn apart from, the ensemble's own folds); each variant is fitted
on three folds as ``ecoalign fit`` would fit it (same spec, sites and pipeline) and scored on the fourth: AUC of
the held-out presences of each species against the held-out rows it treats as background. Printed: mean AUC per
variant and region, the paired difference to the first variant with its standard error over species x folds,
CPU seconds, and held-out TSS at the max-TSS threshold of the out-of-fold scores, carried to the committee's
scale as a bundle stores it and as is.

    python benchmarks/select_sdm_on_training.py            # the default against no refit and a refit of both
    python benchmarks/select_sdm_on_training.py --variant 'deep=member_params: {deep_maxent: {hidden: [128, 128]}}'

Measured (2 cores; AWT, NZ, SA; 454 species x folds), when the forest's refit on all rows was chosen:

    variant                                   AUC      minus no refit (s.e.)   CPU s
    no refit (100 trees per fold)             0.7100                           173
    refit rf_down (75 per model, default)     0.7112   +0.0011 (0.0010)        170
    refit rf_down and deep_maxent             0.7117   +0.0017 (0.0009)        213

When thresholds were carried to the committee's scale (``SpatialEnsemble.committee_thresholds``; ``python
benchmarks/select_sdm_on_training.py --variant 'default={}'``): held-out TSS 0.2837 carried, 0.2762 as is
(+0.0074, s.e. 0.0034).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sdm_disdat import CRS, DATA, spec_of, tasks  # noqa: E402  (the same regions and protocol)

VARIANTS = {
    "no_refit": {"refit": [], "member_params": {"rf_down": {"n_estimators": 100}}},
    "default": {},
    "refit_both": {"refit": ["rf_down", "deep_maxent"]},
}


def heldout_aucs(name: str, params: dict, region: str, group: str, po: pd.DataFrame, bg: pd.DataFrame,
                 folder: Path, outer_folds: int) -> tuple[list[dict], float]:
    """Per species and held-out block fold: AUC of the variant fitted on the other folds; and its CPU seconds."""
    from sklearn.base import clone

    from ecoalign.sdm.fitting import _oof_thresholds, make_model
    from ecoalign.sdm.metrics import auc, confusion_metrics
    from ecoalign.sdm.sites import read_sites
    from ecoalign.sdm.spatial_cv import SpatialBlockKFold
    from ecoalign.sdm.spec import as_spec

    tag = f"{region}_{group}"
    po.to_csv(folder / f"{tag}_po.csv", index=False)
    bg.to_csv(folder / f"{tag}_bg.csv", index=False)
    raw = spec_of(tag, region, {"name": "ensemble", "params": params})
    (folder / f"{tag}.yaml").write_text(yaml.safe_dump(raw))
    spec = as_spec(folder / f"{tag}.yaml")
    sites = read_sites(spec, points=folder / f"{tag}_po.csv", background=folder / f"{tag}_bg.csv", crs=CRS[region])
    template = make_model(spec, n_jobs=-1, seed=0)
    species, _ = template[-1].fittable_species(sites.Y)
    Y = sites.Y[species].to_numpy(dtype=float)
    xy = np.asarray(sites.xy)
    blocks = SpatialBlockKFold(outer_folds, block_size=float(np.ptp(xy, axis=0).max()) / 6.0, random_state=123)
    rows, t0 = [], time.process_time()
    for k, (train, held) in enumerate(blocks.split(coords=xy)):
        model = clone(template).fit(sites.X.iloc[train], sites.Y[species].iloc[train], species__coords=xy[train])
        pred = pd.DataFrame(model.predict_proba(sites.X.iloc[held]), columns=model[-1].species_)
        ens = model[-1]
        as_is = _oof_thresholds(sites.Y[species].iloc[train][ens.species_],
                                pd.DataFrame(ens.oof_, columns=ens.species_))["max_tss"]
        carried = ens.committee_thresholds(as_is)
        for s in ens.species_:
            y = Y[held, species.index(s)]
            ok = np.isfinite(y)
            if (y[ok] > 0).any() and (y[ok] == 0).any():
                yes, score = y[ok] > 0, pred[s].to_numpy()[ok]
                rows.append({"variant": name, "region": tag, "fold": k, "species": s,
                             "auc": auc(yes.astype(int), score), "tss_carried": confusion_metrics(yes, score, carried[s])["tss"],
                             "tss_as_is": confusion_metrics(yes, score, as_is[s])["tss"]})
    return rows, time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--regions", default="AWT,NZ,SA")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=YAML",
                    help="ensemble params as a YAML mapping (replaces the built-in variants; the first is the base)")
    ap.add_argument("--outer-folds", type=int, default=4)
    a = ap.parse_args()
    variants = {n: yaml.safe_load(p) or {} for n, _, p in (v.partition("=") for v in a.variant)} or VARIANTS
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")  # the verbs' notes about dropped columns and skipped species, per fold
    rows, cpu = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for region, group, po, bg, _test in tasks(a.data, a.regions.split(",")):  # the test table is never used
            for name, params in variants.items():
                got, seconds = heldout_aucs(name, params, region, group, po, bg, Path(tmp), a.outer_folds)
                rows += got
                cpu[name] = cpu.get(name, 0.0) + seconds
                print(f"{name:12s} {region}/{group}: mean held-out AUC {np.mean([r['auc'] for r in got]):.4f}, "
                      f"CPU {seconds:.1f} s", flush=True)
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index=["region", "fold", "species"], columns="variant", values="auc").dropna()
    base = next(iter(variants))
    print(f"\n{len(wide)} species x held-out folds; paired against {base!r}")
    for name in variants:
        diff = wide[name] - wide[base]
        per_region = ", ".join(f"{r} {v:.4f}" for r, v in wide[name].groupby(level=0).mean().items())
        print(f"{name:12s} AUC {wide[name].mean():.4f} ({per_region}); minus {base}: {diff.mean():+.4f} "
              f"(s.e. {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}); CPU {cpu[name]:.0f} s")
    # thresholds: max-TSS on the out-of-fold scores, applied to the committee as is or carried to its scale (the
    # bundle's); TSS of held-out presences against held-out background (the same threshold maximises it as TSS
    # against true absences when the background samples the landscape; Liu et al. 2013)
    for name, got in table.groupby("variant", sort=False):
        diff = (got["tss_carried"] - got["tss_as_is"]).dropna()
        print(f"{name:12s} held-out TSS at the stored threshold {got['tss_carried'].mean():.4f} (as is "
              f"{got['tss_as_is'].mean():.4f}; carried minus as is {diff.mean():+.4f}, s.e. "
              f"{diff.std(ddof=1) / np.sqrt(len(diff)):.4f})")


if __name__ == "__main__":
    main()
