"""Compare settings of the default species model on the disdat TRAINING records only (no test file is read).

How the ensemble's settings are chosen without tuning on the test sites that ``bench_sdm_disdat.py`` reports:
the presence records and background points of each region are split into spatial blocks (a sixth of the extent
across, 4 folds, seed 123: coarser than, and drawn apart from, the ensemble's own folds); each variant is fitted
on three folds as ``ecoalign fit`` would fit it (same spec, sites and pipeline) and scored on the fourth: AUC of
the held-out presences of each species against the held-out rows it treats as background. Printed: mean AUC per
variant and region, the paired difference to the first variant with its standard error over species x folds,
CPU seconds, and held-out TSS at each threshold rule a bundle stores (chosen on the out-of-fold scores and carried
to the committee's scale; max-TSS also as is), per block and pooled per species over the folds.

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

Every stored rule, the same command (held-out TSS per block / pooled per species over the four folds):

    max_tss (the bundle's)   0.2829 / 0.3138
    equal_sens_spec          0.2909 / 0.3173   (+0.008, s.e. 0.007 / +0.004, s.e. 0.007)
    p10_presence             0.2844 / 0.3127
    max_tss as is            0.2765 / 0.3031   (-0.006, s.e. 0.003 / -0.011, s.e. 0.004)
    pooled optimum (oracle: chosen on the held-out rows)  0.3935

No rule chosen on out-of-fold scores is distinguishable from max-TSS, and all stay 0.08 below the oracle on the
training records themselves, where presences and background come from one sampling scheme: the best threshold
moves between regions of the extent more than any rule on the training scores can follow. Also tried on the same
held-out folds (a scratch script, not kept, none adopted): the max-TSS threshold bagged over 40 bootstraps
(-0.001, s.e. 0.002 per block), a balanced logistic calibration's P/E = 1 point (+0.004, s.e. 0.006), the mean
TSS over the ensemble's own spatial folds (-0.005, s.e. 0.005), and each species' landscape share above its
threshold shrunk toward the region's mean by n / (n + k) presences (k = 10: +0.008, s.e. 0.005; pooled +0.005,
s.e. 0.004).

Nor does the reference the threshold is chosen against matter (a scratch script, 2026-12-02, not kept): max-TSS of
the out-of-fold presences against the other species' records only (the target group, where observers went), or
against the random background only, instead of the bundle's mix of both. Scored on held-out presences against
held-out target-group records, the stand-in for survey absences: 0.2640 and 0.2641 against the mix's 0.2659
(-0.002, s.e. 0.004 each; pooled 0.283 / 0.287 / 0.290, oracle 0.374); against held-out random background: 0.2865
and 0.3027 against 0.2990 (pooled oracle 0.411).

The committee's spatial folds (2026-12-02): until then a spec without ``cv.block_size_m`` got 500 m blocks, about one
site each over these regions, so every figure above comes from folds that were random K-fold in effect. Blocks of a
tenth of the extent (the default the docs promised) against 500 m, ``python benchmarks/select_sdm_on_training.py
--variant 'default={}' --variant 'blocks500=cv: {block_size_m: 500}'`` (held-out TSS per block / pooled):

    blocks            held-out AUC                   bundle's max-TSS   only carried (before)   pooled oracle
    tenth of extent   0.7086                         0.2955 / 0.3255    0.2888 / 0.3135         0.3846
    500 m             0.7111 (+0.0025, s.e. 0.0018)  0.2910 / 0.3172    0.2829 / 0.3138         0.3935

Out-of-fold thresholds of near-random folds sat high: the stored threshold less the held-out block's own max-TSS
threshold was +0.08 on the committee's scale (mean over species x folds, a scratch script), as on the survey sites;
with spatial folds -0.01, but each varies more. The bundle's max-TSS now pulls each species' threshold toward the
median species' by 5 / (n + 5) for n presences (``fitting.committee_bundle_thresholds``): +0.0070 (s.e. 0.0038) per
block, +0.0120 (0.0048) pooled, against the carried value alone (k = 5 of 5, 10, 20 and 40 tried in the scratch
script: +0.009, +0.007, +0.005, +0.005 per block, positive in each of the four tasks at 5). A species with no
out-of-fold score at a presence (4 of 454 species x folds here) takes the median. Together, against the previous
default (500 m, only carried): +0.013 per block, +0.012 pooled, for AUC -0.0025 (s.e. 0.0018). Also from the
scratch script, not adopted: a fixed downward shift of the 500 m thresholds, chosen on three of the four tasks and
scored on the fourth, +0.014 (s.e. 0.006) per block: the bias that spatial folds remove without a constant.

Member selection (2026-12-02), ``--variant 'default={}' --variant 'nosel=selection_margin: 1.0'`` with the margin of
0.02 still the default: dropping members whose mean out-of-fold AUC was more than 0.02 below the best fired in 3 of
the 16 task x fold fits (the forest once, DeepMaxent twice, once 0.12 below), and in each the held-out blocks scored
the full committee higher than the kept member alone. Keeping every member: AUC 0.7115 against 0.7086 (+0.0028,
s.e. 0.0009), CPU the same, TSS at the bundle's max-TSS 0.2943 / 0.3266 (per block / pooled) against 0.2961 /
0.3265; so ``selection_margin`` now defaults to None. Clamping DeepMaxent's covariates to the training range (MaxEnt's
default, adopted for maps beyond the sampled range) changed nothing here: -0.0001 (s.e. 0.0001) without it. Then,
against the new default (``--variant 'default={}' --variant 'refit_both=refit: [rf_down, deep_maxent]' ...``):
refitting DeepMaxent on all rows too +0.0003 (s.e. 0.0005) for 11 % more CPU; the same with 60 trees per forest
model -0.0003 (0.0010); four committee folds (``cv: {folds: 4}``, 60 trees per forest model) -0.0008 (0.0015) for
18 % more CPU. None adopted. The script now also prints each variant's TSS at the bundle's thresholds paired against
the base: four folds gave +0.0155 (s.e. 0.0061) per block and +0.0076 (0.0068) pooled, but five folds (50 trees per
forest model) -0.0007 (0.0060) and -0.0031 (0.0067), for AUC +0.0004 (0.0014) and 35 % more CPU: no trend with the
number of folds, so the four-fold gain reads as that fold layout's luck, and the CPU target leaves no room for it.
Also tried (a scratch script, not kept): max-TSS from a Beta distribution fitted to the presences' percentiles among
the out-of-fold background scores (the maximum of u - F(u), in place of the kernel-smoothed curve; then carried and
pulled as the bundle's), +0.0123 (s.e. 0.0058) per block but +0.0005 (0.0060) pooled by maximum likelihood, +0.0097
(0.0053) and -0.0007 (0.0052) by moments: no gain region-wide, where a survey scores it. Not adopted.
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
    """Per species and held-out block fold: AUC of the variant fitted on the other folds, and the held-out
    confusion counts at each stored threshold rule (as the bundle stores it: ``committee_bundle_thresholds``; for
    max-TSS also only carried to the committee's scale, and as is); and the variant's CPU seconds."""
    from sklearn.base import clone

    from ecoalign.sdm.fitting import committee_bundle_thresholds, make_model, species_threshold_rules
    from ecoalign.sdm.metrics import auc
    from ecoalign.sdm.sites import read_sites
    from ecoalign.sdm.spatial_cv import SpatialBlockKFold
    from ecoalign.sdm.spec import as_spec

    tag = f"{region}_{group}"
    po.to_csv(folder / f"{tag}_po.csv", index=False)
    bg.to_csv(folder / f"{tag}_bg.csv", index=False)
    params = dict(params)
    cv = params.pop("cv", None) or {}  # a variant's ``cv:`` goes to the spec's cv block, the rest to the ensemble
    raw = spec_of(tag, region, {"name": "ensemble", "params": params})
    raw["cv"].update(cv)
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
        trained = sites.Y[species].iloc[train][ens.species_]
        rules = species_threshold_rules(trained, pd.DataFrame(ens.oof_, columns=ens.species_))
        n_presences = {s: int((trained[s] > 0).sum()) for s in ens.species_}
        thresholds = {rule: committee_bundle_thresholds(ens, t, n_presences)[0] for rule, t in rules.items()}
        thresholds["max_tss carried only"] = ens.committee_thresholds(rules["max_tss"])  # not pulled to the median
        thresholds["max_tss as is"] = rules["max_tss"]
        for s in ens.species_:
            y = Y[held, species.index(s)]
            ok = np.isfinite(y)
            if (y[ok] > 0).any() and (y[ok] == 0).any():
                yes, score = y[ok] > 0, pred[s].to_numpy()[ok]
                row = {"variant": name, "region": tag, "fold": k, "species": s, "auc": auc(yes.astype(int), score),
                       "n_pres": int(yes.sum()), "n_bg": int((~yes).sum()), "scores": score, "yes": yes}
                for rule, t in thresholds.items():  # held-out presences called present, background called absent
                    row[f"tp {rule}"] = int((score[yes] >= t[s]).sum()) if np.isfinite(t[s]) else np.nan
                    row[f"tn {rule}"] = int((score[~yes] < t[s]).sum()) if np.isfinite(t[s]) else np.nan
                rows.append(row)
    return rows, time.process_time() - t0


def _tss(counts: pd.DataFrame, rule: str) -> pd.Series:
    """TSS from held-out confusion counts (columns ``tp <rule>``, ``tn <rule>``, ``n_pres``, ``n_bg``)."""
    return counts[f"tp {rule}"] / counts["n_pres"] + counts[f"tn {rule}"] / counts["n_bg"] - 1


def _pooled_tss(rows: pd.DataFrame, rule: str) -> pd.Series:
    """TSS per species from its held-out counts summed over the folds where the rule gave it a threshold."""
    cols = [f"tp {rule}", f"tn {rule}", "n_pres", "n_bg"]
    return _tss(rows[rows[f"tp {rule}"].notna()].groupby(["region", "species"])[cols].sum(), rule)


def _best_tss(rows: pd.DataFrame) -> float:
    """TSS at the best single threshold for the held-out rows themselves (an oracle)."""
    from ecoalign.sdm.metrics import confusion_metrics, max_tss_threshold

    yes, score = np.concatenate(list(rows["yes"])), np.concatenate(list(rows["scores"]))
    return confusion_metrics(yes, score, max_tss_threshold(yes, score))["tss"]


def _paired(values: pd.Series, base: pd.Series) -> str:
    """'mean (mean difference to base, s.e.)' over the rows both define."""
    diff = (values - base).dropna()
    return f"{values.mean():.4f} ({diff.mean():+.4f}, s.e. {diff.std(ddof=1) / np.sqrt(len(diff)):.4f})"


def threshold_table(table: pd.DataFrame) -> str:
    """Mean TSS at each stored threshold rule over species x held-out folds (presences of one block against its
    background), and pooled per species over the folds (each row at its own fold's thresholds: a region-wide score
    like a survey's, with every presence of the species), beside the pooled optimum (an oracle). Differences are
    paired against the first rule, the bundle's max-TSS."""
    rules = [c[3:] for c in table.columns if c.startswith("tp ")]
    lines = []
    for name, got in table.groupby("variant", sort=False):
        pooled = got.groupby(["region", "species"])
        lines.append(f"{name}: held-out TSS per block ({len(got)} species x folds) / pooled over the folds "
                     f"({pooled.ngroups} species; pooled optimum, an oracle: {pooled.apply(_best_tss).mean():.4f})")
        cells = []
        for r in rules:
            for score in (lambda rule: _tss(got, rule), lambda rule: _pooled_tss(got, rule)):
                cells.append(_paired(score(r), score(rules[0])))
            lines.append(f"  {r:20s} {cells[-2]}   pooled {cells[-1]}")
    return "\n".join(lines)


def variant_tss_table(table: pd.DataFrame, base: str, rule: str = "max_tss") -> str:
    """TSS at the bundle's thresholds for each variant minus the base variant's, paired over species x held-out
    folds (per block) and over species (pooled), with standard errors: variants move thresholds as well as scores."""
    per_block = table.assign(tss=_tss(table, rule)).pivot_table(index=["region", "fold", "species"],
                                                                 columns="variant", values="tss")
    pooled = pd.DataFrame({name: _pooled_tss(got, rule) for name, got in table.groupby("variant", sort=False)})
    lines = []
    for name in per_block.columns.drop(base):
        cells = [_paired(wide[name], wide[base]) for wide in (per_block, pooled)]
        lines.append(f"  {name:20s} {cells[0]}   pooled {cells[1]}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--regions", default="AWT,NZ,SA")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=YAML",
                    help="ensemble params as a YAML mapping, and optionally the spec's 'cv: {...}' (replaces the "
                         "built-in variants; the first is the base)")
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
    # TSS of held-out presences against held-out background: the threshold that maximises it also maximises TSS
    # against true absences when the background samples the landscape (Liu et al. 2013)
    print("\nstored thresholds (differences to the first rule, the bundle's max_tss):")
    print(threshold_table(table))
    if len(variants) > 1:
        print(f"\nTSS at the bundle's max_tss, paired against {base!r} (per block / pooled over the folds):")
        print(variant_tss_table(table, base))

if __name__ == "__main__":
    main()
