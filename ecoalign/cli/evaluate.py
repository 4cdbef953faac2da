"""``ecoalign evaluate``: metrics of a model bundle on an independent test table."""
from __future__ import annotations

from pathlib import Path

from ecoalign.cli.sites_args import add_sites_args, load_sites
from ecoalign.core.errors import EcoalignInputError


def register(sub) -> dict:
    p = sub.add_parser("evaluate", help="metrics of a model bundle on an independent test table")
    p.add_argument("bundle")
    add_sites_args(p)
    p.add_argument("--targets", help="wide test table: id column + one 0/1 (or abundance) column per species "
                                     "(default: the --points file itself)")
    p.add_argument("--out", help="CSV of the metrics")
    return {"evaluate": run}


def run(args) -> int:
    import pandas as pd

    from ecoalign.sdm.fitting import evaluate_bundle, load_bundle
    from ecoalign.core.io import atomic_path

    _, meta = load_bundle(args.bundle)
    targets = args.targets or args.points
    if not targets:
        raise EcoalignInputError("no test targets", expected="--targets TABLE (or a --points table with species columns)")
    table = pd.read_csv(targets)
    known = [c for c in table.columns if c in meta["species"]]
    # other target-like columns (0/1 for presence models) are species the model does not know: report them
    others = table.drop(columns=[c for c in table.columns if c in meta["species"] or c in meta["features"]])
    numeric = others.select_dtypes("number")
    unknown = [c for c in numeric.columns if meta["task"] == "abundance" or numeric[c].dropna().isin([0, 1]).all()]
    unknown = [c for c in unknown if c != args.id_column and c not in meta["skipped_species"]]
    spec = _spec_from_meta(meta, targets, args.id_column, known)
    if unknown:
        print(f"[ecoalign] {len(unknown)} test column(s) look like species the model does not know; not evaluated: "
              f"{unknown[:8]}")
    sites = load_sites(args, spec)
    table = evaluate_bundle(args.bundle, sites, seed=args.seed)
    summary = table[table["species"].isin(["micro", "macro"])]
    print(summary.to_string(index=False))
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)
    return 0


def _spec_from_meta(meta, targets, id_column, known):
    """The bundle's spec, pointed at the test table's presence/absence (or abundance) columns."""
    from ecoalign.sdm.spec import spec_from_dict

    raw = dict(meta["spec"])
    task = "abundance" if raw["task"] == "abundance" else "presence_absence"
    raw.update(task=task, target={"source": str(targets), "id_column": id_column, "columns": known})
    features = dict(raw.get("features") or {})
    if features.get("covariates") == "all":  # the columns the bundle was fitted on, not a new guess
        rasters = {r.get("name", Path(r["path"]).stem) for r in features.get("rasters") or []}
        features["covariates"] = [c for c in meta["features"] if not c.startswith("emb_") and c not in rasters]
    raw["features"] = features
    if task == "presence_absence" and not meta.get("reference_scores"):
        raw["metrics"] = [m for m in raw["metrics"] if m != "boyce"] or ["auc"]
    return spec_from_dict(raw, targets)
