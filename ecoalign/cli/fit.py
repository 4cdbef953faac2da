"""``ecoalign fit``: cross-validate and fit a species model from a spec -> model bundle (:func:`ecoalign.sdm.fit.fit`)."""
from __future__ import annotations

from ecoalign.cli.sites_args import add_n_jobs_arg, add_sites_args, sites_kwargs


def register(sub) -> dict:
    p = sub.add_parser("fit", help="cross-validate and fit a species model from a spec -> model bundle")
    p.add_argument("spec", help="a species_models/ name (plant_presence) or a spec YAML path")
    add_sites_args(p)
    add_n_jobs_arg(p)
    p.add_argument("--out", required=True, help="bundle directory")
    p.add_argument("--overwrite", action="store_true")
    return {"fit": run}


def run(args) -> int:
    from ecoalign.sdm.fit import fit

    bundle = fit(args.spec, **sites_kwargs(args), out=args.out, seed=args.seed, n_jobs=args.n_jobs,
                 overwrite=args.overwrite)
    print(bundle.describe())
    return 0
