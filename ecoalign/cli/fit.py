"""``ecoalign fit``: cross-validate and fit a species model from a spec -> model bundle."""
from __future__ import annotations

from ecoalign.cli.sites_args import add_sites_args, load_sites


def register(sub) -> dict:
    p = sub.add_parser("fit", help="cross-validate and fit a species model from a spec -> model bundle")
    p.add_argument("spec", help="a species_models/ name (plant_presence) or a spec YAML path")
    add_sites_args(p)
    p.add_argument("--out", required=True, help="bundle directory")
    p.add_argument("--overwrite", action="store_true")
    return {"fit": run}


def run(args) -> int:
    from ecoalign.sdm.fitting import fit_bundle
    from ecoalign.sdm.spec import load_spec

    spec = load_spec(args.spec)
    sites = load_sites(args, spec)
    out = fit_bundle(spec, sites, args.out, seed=args.seed, n_jobs=args.n_jobs, overwrite=args.overwrite)
    print(_summary_text(out))
    return 0


def _summary_text(bundle) -> str:
    import json

    meta = json.loads((bundle / "bundle.json").read_text())
    lines = [f"[ecoalign] bundle {bundle}: {len(meta['species'])} targets modelled, "
             f"{len(meta['skipped_species'])} skipped; {meta['cv']['scheme']} CV"]
    for k, (v, lo, hi) in meta["summary"].items():
        lines.append(f"  {k:<22} {v:.3f}  [{lo:.3f}, {hi:.3f}]")
    return "\n".join(lines)
