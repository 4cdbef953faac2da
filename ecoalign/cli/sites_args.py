"""Flags shared by the species-model verbs (fit, evaluate, compare): where the sites and their features come from.

They are the keyword arguments of :func:`ecoalign.sdm.sites.read_sites` (and of ``fit``/``evaluate``/``compare``).
"""
from __future__ import annotations


def add_sites_args(p, *, embeddings: bool = True) -> None:
    p.add_argument("--manifest", help="data-set manifest (targets from its relevés or extras)")
    if embeddings:  # compare takes one embedding table per --encoder instead
        p.add_argument("--embeddings", help="embedding table from `ecoalign embed` (sites + features)")
    p.add_argument("--points", help="sites table without imagery: GeoPackage/GeoParquet, or CSV with x/y (+ --crs)")
    p.add_argument("--covariates", help="table of covariate columns joined on the site id")
    p.add_argument("--background", help="background points (same covariate columns): --points are then "
                                        "presence-only records with a species column")
    p.add_argument("--id-column", default="plot_id")
    p.add_argument("--crs", help="CRS of a CSV sites table")
    p.add_argument("--seed", type=int, default=0)


def add_n_jobs_arg(p) -> None:
    p.add_argument("--n-jobs", type=int, default=-1,
                   help="threads for the whole fit: species in parallel or one estimator's threads, never both "
                        "(default -1: the cores available to this process)")


def sites_kwargs(args) -> dict:
    """The parsed sites flags as keyword arguments of the library functions."""
    names = ("manifest", "embeddings", "points", "covariates", "background", "id_column", "crs")
    return {name: getattr(args, name) for name in names if hasattr(args, name)}
