"""Arguments shared by the species-model verbs (fit, evaluate, compare): where the sites and their features come from."""
from __future__ import annotations

from pathlib import Path

from ecoalign.core.errors import EcoalignInputError


def add_sites_args(p) -> None:
    p.add_argument("--manifest", help="data-set manifest (targets from its relevés or extras)")
    p.add_argument("--embeddings", help="embedding table from `ecoalign embed` (sites + features)")
    p.add_argument("--points", help="sites table without imagery: GeoPackage/GeoParquet, or CSV with x/y (+ --crs)")
    p.add_argument("--covariates", help="table of covariate columns joined on the site id")
    p.add_argument("--background", help="background points (same covariate columns): --points are then "
                                        "presence-only records with a species column")
    p.add_argument("--id-column", default="plot_id")
    p.add_argument("--crs", help="CRS of a CSV sites table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-jobs", type=int, default=-1,
                   help="threads for the whole fit: species in parallel or one estimator's threads, never both "
                        "(default -1: the cores available to this process)")


def load_sites(args, spec, embeddings=None):
    import pandas as pd

    from ecoalign.data.plots import read_plots
    from ecoalign.sdm.sites import build_sites

    manifest = None
    if args.manifest:
        from ecoalign.data.manifest import load_manifest

        manifest = load_manifest(args.manifest)
    background = getattr(args, "background", None)
    if background:
        points = read_points(args.points, args.crs, "--points")
        background = read_points(background, args.crs, "--background")
    else:
        points = read_plots(args.points, id_column=args.id_column, crs=args.crs) if args.points else None
    covariates = pd.read_csv(args.covariates) if args.covariates else None
    sites = build_sites(spec, embeddings=embeddings if embeddings is not None else args.embeddings, points=points,
                        covariates=covariates, manifest=manifest, id_column=args.id_column, background=background)
    dropped = {k: len(v) for k, v in sites.dropped.items()}
    print(f"[ecoalign] {len(sites.ids)} sites, {sites.X.shape[1]} features, {sites.Y.shape[1]} targets; "
          f"dropped {dropped or 'none'}", flush=True)
    return sites


def read_points(path, crs, flag):
    """Records or background points: rows need not have unique ids, only coordinates."""
    import geopandas as gpd
    import pandas as pd

    from ecoalign.data.plots import X_NAMES, Y_NAMES, guess_column

    if path is None:
        raise EcoalignInputError(f"{flag} is required with --background")
    if str(path).lower().endswith((".csv", ".txt")):
        df = pd.read_csv(path, sep=None, engine="python")
        x, y = guess_column(df, X_NAMES, Path(path), "x"), guess_column(df, Y_NAMES, Path(path), "y")
        if crs is None:
            raise EcoalignInputError("a CSV of points needs its CRS", path=path, expected="--crs (e.g. EPSG:4326)")
        return gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df[x], df[y]), crs=crs)
    return gpd.read_file(path)
