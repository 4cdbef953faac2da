"""``ecoalign evaluate-zero-shot``: how good are zero-shot maps of species held out of an adapt run?

For every held-out species (``adapt --holdout-species``), scores at the run's plots are compared with the species'
true presences in the relevé table (AUC, continuous Boyce index, bootstrap intervals over plots), beside three
references on the same plots and the same adapted embeddings:

* ``ceiling``: a species model fitted with the species' own presences, out-of-fold over spatial blocks (what the
  species' data would give; never available for a truly unseen species);
* ``congener``: the species model of its nearest seen congener (the seen species of the same genus with the most
  presences at the training plots, as a botanist would reach for the best-known relative), also out-of-fold,
  scored against the held-out species' presences; none for a species whose genus has no seen member;
* ``random``: uniform random scores.

Which plots: by default the run's ``test`` split (spatial blocks that neither the adapter nor the relevé encoder
saw; the held-out species were absent from every relevé used in training anyway); ``plots="all"`` scores every
paired plot (more presences, but the image side of the alignment was trained on most of them).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import atomic_path, write_text
from ecoalign.sdm.bootstrap import bootstrap_ci
from ecoalign.sdm.metrics import auc, boyce_index

log = logging.getLogger(__name__)

METHODS = ("zero_shot", "ceiling", "congener", "random")
MIN_PRESENCES = 3  # on the scored plots, for a species to get metrics


def evaluate_zero_shot(run, *, species=None, out=None, manifest=None, plots: str = "test",
                       estimator: str = "logistic", n_boot: int = 200, seed: int = 0,
                       organism_encoder: str | None = None, relatives_weight: float | None = None) -> pd.DataFrame:
    """Per held-out species and method (``METHODS``): AUC and Boyce with 95% bootstrap intervals; ``out`` (a folder)
    gets ``zero_shot_eval.csv``, ``report.md`` and ``auc.png``. ``species``: a file as for ``adapt
    --holdout-species`` or a list (default: the run's held-out species); ``manifest``: where the relevés are
    (default: the run's manifest); ``relatives_weight``: as for ``ZeroShotRun`` (default
    ``aerial.zero_shot.RELATIVES_WEIGHT``). Each row names the seen relatives the species' query was pulled toward."""
    import json

    from ecoalign.aerial.zero_shot import SPECIES_COVER, ZeroShotRun
    from ecoalign.data.manifest import load_manifest
    from ecoalign.data.releves import read_manifest_releves, read_species_list

    if plots not in ("test", "all"):
        raise EcoalignInputError(f"plots={plots!r}", expected="'test' (the run's held-out spatial blocks) or 'all'")
    zs = ZeroShotRun(run, organism_encoder=organism_encoder, relatives_weight=relatives_weight)
    report = json.loads((Path(run) / "report.json").read_text())
    table = read_manifest_releves(load_manifest(manifest or report["data"]["manifest"]))
    if species is None:
        names = list(zs.info.get("holdout_species") or [])
        if not names:
            raise EcoalignInputError("the run held no species out and none were named", path=run,
                                     expected="--species FILE, or a run made with `adapt --holdout-species FILE`")
    elif isinstance(species, (str, Path)):
        names = read_species_list(species, table.species)
    else:
        names = list(species)
    seen = [n for n in names if n in set(zs.species)]
    if seen:
        log.warning("%s were in the run's training relevés: their scores are not zero-shot", seen)
    p = zs.plots()
    ids, split, xy, X = p["plot_id"], p["split"], p["centres"], p["adapted"].astype(np.float64)
    truth = table.subset(list(ids))
    index = {s: i for i, s in enumerate(truth.species)}
    missing = [n for n in names if n not in index]
    if missing:
        raise EcoalignInputError(f"species {missing[:5]} are in no relevé of the run's plots",
                                 expected="held-out species present in the relevé table")
    present = truth.cover > 0
    scored = split == "test" if plots == "test" else np.ones(len(ids), bool)
    block = float(report.get("split", {}).get("block_size_m", 500.0))
    zero = zs.model([(n, [(n, SPECIES_COVER)]) for n in names]).predict_proba(X)
    relatives = [_relatives_label(*zs.relatives(n)) if zs.relatives_weight > 0 else "-" for n in names]
    rng = np.random.default_rng(seed)
    train_rows = split == "train"
    rows = []
    for k, name in enumerate(names):
        y = present[:, index[name]]
        genus = name.split()[0]
        mates = [s for s in zs.species if s.split()[0] == genus and s != name]
        congener = max(mates, key=lambda s: present[train_rows, index[s]].sum()) if mates else None
        scores = {"zero_shot": zero[:, k], "ceiling": _oof(X, y, xy, estimator, block, seed),
                  "congener": None if congener is None else _oof(X, present[:, index[congener]], xy, estimator,
                                                                  block, seed),
                  "random": rng.random(len(y))}
        for method in METHODS:
            row = {"species": name, "method": method, "congener": congener, "genus_seen": bool(mates),
                   "relatives": relatives[k],
                   "plots": int(scored.sum()), "presences": int(y[scored].sum())}
            s = scores[method]
            if s is not None and row["presences"] >= MIN_PRESENCES and row["presences"] < row["plots"]:
                row.update(_metrics(y[scored].astype(int), s[scored], n_boot, seed))
            rows.append(row)
    result = pd.DataFrame(rows)
    if out is not None:
        _write(Path(out), result, means(result, n_boot, seed), zs, plots, estimator)
    return result


def _relatives_label(rank: str | None, mates: list[str]) -> str:
    """'family: Betula pendula' (the seen relatives an unseen name's query was pulled toward), '-' for none."""
    if not mates:
        return "-"
    return f"{rank}: " + ", ".join(mates[:4]) + (f" (+{len(mates) - 4})" if len(mates) > 4 else "")


def _oof(X: np.ndarray, y: np.ndarray, xy: np.ndarray, estimator: str, block: float, seed: int) -> np.ndarray:
    """Out-of-fold presence probabilities over 5 spatial-block folds (a fold with one class gets its prevalence)."""
    from sklearn.base import clone

    from ecoalign.sdm.estimators import make_estimator
    from ecoalign.sdm.spatial_cv import SpatialBlockKFold

    base = make_estimator(estimator, task="presence")
    out = np.full(len(y), np.nan)
    for train, test in SpatialBlockKFold(n_splits=5, block_size=block, random_state=seed).split(X, y, groups=xy):
        if y[train].min() == y[train].max():
            out[test] = float(y[train].mean())
            continue
        model = clone(base).fit(X[train], y[train].astype(int))
        out[test] = model.predict_proba(X[test])[:, 1]
    return np.where(np.isnan(out), float(y.mean()), out)


def _metrics(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int) -> dict:
    a = bootstrap_ci(auc, y, s, n_boot=n_boot, seed=seed)
    b = bootstrap_ci(lambda yy, ss: boyce_index(ss[yy == 1], ss) if yy.any() else np.nan, y, s, n_boot=n_boot,
                     seed=seed)
    return {"auc": a[0], "auc_low": a[1], "auc_high": a[2], "boyce": b[0], "boyce_low": b[1], "boyce_high": b[2]}


def means(result: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Mean AUC and Boyce per method over species (95% bootstrap intervals over species), separately for species
    with a seen congener and species whose genus has no seen member; and the paired zero-shot - congener AUC."""
    rows = []
    for group, g in result.groupby("genus_seen", sort=False):
        label = "genus seen" if group else "genus unseen"
        for method, m in g.groupby("method", sort=False):
            for metric in ("auc", "boyce"):
                v = m[metric].to_numpy(float) if metric in m else np.array([])
                v = v[np.isfinite(v)]
                if len(v):
                    est, lo, hi = bootstrap_ci(np.mean, v, n_boot=n_boot, seed=seed)
                    rows.append({"group": label, "method": method, "metric": metric, "mean": est, "low": lo,
                                 "high": hi, "species": len(v)})
        if group and "auc" in g:
            wide = g.pivot(index="species", columns="method", values="auc").dropna(subset=["zero_shot", "congener"])
            if len(wide):
                d = (wide["zero_shot"] - wide["congener"]).to_numpy()
                est, lo, hi = bootstrap_ci(np.mean, d, n_boot=n_boot, seed=seed)
                rows.append({"group": label, "method": "zero_shot - congener", "metric": "auc", "mean": est,
                             "low": lo, "high": hi, "species": len(d)})
    return pd.DataFrame(rows)


def _cell(r, metric: str) -> str:
    v = r.get(metric)
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.3f} [{r[metric + '_low']:.2f}, {r[metric + '_high']:.2f}]"


def _write(out: Path, result: pd.DataFrame, summary: pd.DataFrame, zs, plots: str, estimator: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "zero_shot_eval.csv") as tmp:
        result.to_csv(tmp, index=False)
    with atomic_path(out / "means.csv") as tmp:
        summary.to_csv(tmp, index=False)
    where = ("the run's test split (spatial blocks not used in training)" if plots == "test" else
             "all paired plots (the image side of the alignment was trained on most of them)")
    lines = [f"# Zero-shot habitat maps of held-out species: `{zs.run_dir}`", "",
             (f"Scored on {where}; references fitted out-of-fold over spatial blocks ({estimator}) on the same "
              "adapted embeddings. AUC and continuous Boyce index with 95% bootstrap intervals (over plots per "
              "species, over species for the means). congener: the model of the seen species of the same genus "
              "with the most presences at the training plots, scored against the held-out species' presences. "
              f"zero_shot: each name's text pulled toward its closest seen relatives with weight "
              f"{zs.relatives_weight:g}."),
             "", "## Means", "", "| group | method | metric | mean [95% CI] | species |",
             "|---|---|---|---|---|"]
    for r in summary.to_dict("records"):
        lines.append(f"| {r['group']} | {r['method']} | {r['metric']} | {r['mean']:.3f} [{r['low']:.3f}, "
                     f"{r['high']:.3f}] | {r['species']} |")
    for seen, title in ((True, "Species with a seen congener"), (False, "Species whose genus has no seen member")):
        g = result[result["genus_seen"] == seen]
        if g.empty:
            continue
        lines += ["", f"## {title}", "", "| species | congener | query pulled toward | presences / plots | method "
                  "| AUC | Boyce |", "|---|---|---|---|---|---|---|"]
        for r in g.to_dict("records"):
            lines.append(f"| {r['species']} | {r['congener'] or '-'} | {r['relatives']} | {r['presences']} / "
                         f"{r['plots']} | {r['method']} | {_cell(r, 'auc')} | {_cell(r, 'boyce')} |")
    lines += ["", f"Species with fewer than {MIN_PRESENCES} presences on the scored plots get no metrics ('-').", ""]
    write_text(out / "report.md", "\n".join(lines))
    _chart(result, out / "auc.png")


def _chart(result: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    species = list(dict.fromkeys(result["species"]))
    fig, ax = plt.subplots(figsize=(2.0 + 0.9 * len(species), 3.8))
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        g = result[result["method"] == method].set_index("species").reindex(species)
        if "auc" not in g or g["auc"].isna().all():
            continue
        x = np.arange(len(species)) + i * width
        err = np.vstack([g["auc"] - g["auc_low"], g["auc_high"] - g["auc"]]).clip(min=0)
        ax.bar(x, g["auc"], width, yerr=np.nan_to_num(err), capsize=2, label=method)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    labels = [s + ("" if result.loc[result["species"] == s, "genus_seen"].iloc[0] else "\n(genus unseen)")
              for s in species]
    ax.set_xticks(np.arange(len(species)) + width * (len(METHODS) - 1) / 2, labels, rotation=30, ha="right",
                  fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUC (95% CI)")
    ax.legend(fontsize=8, ncol=len(METHODS))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


__all__: Sequence[str] = ("METHODS", "evaluate_zero_shot", "means")
