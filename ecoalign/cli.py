"""The ``ecoalign`` command: a thin shell over the library; heavy imports happen only inside a verb."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import EcoalignInputError

# CLI flag -> Hydra config group it selects
GROUP_FLAGS = {"backbone": "backbone", "releve_encoder": "releve_encoder", "loss": "loss", "data": "data",
               "trainer": "trainer"}


def _adapt_parser(sub) -> None:
    p = sub.add_parser("adapt", help="align a frozen DOFA encoder with botanical relevés (BotaCLIP)",
                       description="Trailing key=value arguments are Hydra overrides, e.g. trainer.epochs=20 "
                                   "loss.anchor_weight=0 backbone.size=small.")
    p.add_argument("--backbone", help="backbone config group (dofa)")
    p.add_argument("--releve-encoder", dest="releve_encoder", help="relevé encoder group (mlp | attention)")
    p.add_argument("--loss", help="loss group (siglip | infonce)")
    p.add_argument("--data", help="data config group (demo)")
    p.add_argument("--trainer", help="trainer group (default | quick)")
    p.add_argument("--manifest", help="data-set manifest: a YAML path or a name in data_manifests/ (default: demo)")
    p.add_argument("--weights", help="DOFA weights: torchgeo enum name (DOFA_MAE), a checkpoint path, or none")
    p.add_argument("--size", help="DOFA size: small | base | large")
    p.add_argument("--out", help="run directory (default: runs/adapt/<timestamp>)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue an interrupted run: its directory, or the latest one under runs/adapt")
    p.add_argument("overrides", nargs="*", help="Hydra overrides key=value")


def _adapt(args) -> int:
    from .config import compose
    from .train.adapt import adapt

    overrides = [f"{group}={getattr(args, flag)}" for flag, group in GROUP_FLAGS.items() if getattr(args, flag)]
    if args.manifest:
        overrides.append(f"data.manifest={args.manifest}")
    if args.weights:
        overrides.append(f"backbone.weights={args.weights}")
    if args.size:
        overrides.append(f"backbone.size={args.size}")
    overrides += args.overrides
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise EcoalignInputError(f"unexpected arguments {bad}", expected="key=value Hydra overrides")
    cfg = compose("adapt", overrides)
    adapt(cfg, out=args.out, resume=args.resume)
    return 0


def _embed_parser(sub) -> None:
    p = sub.add_parser("embed", help="embed the image window around each point -> GeoParquet (one row per point)")
    p.add_argument("--encoder", default="dofa", help="'dofa' (frozen) or an `ecoalign adapt` run directory")
    p.add_argument("--weights", default="none", help="frozen DOFA weights: enum name, checkpoint path, or none")
    p.add_argument("--size", default="base", help="frozen DOFA size")
    p.add_argument("--manifest", help="take points (plots) and rasters (imagery) from a data-set manifest")
    p.add_argument("--points", help="points/plots file: GeoPackage, GeoParquet, or CSV (with --crs)")
    p.add_argument("--raster", action="append", default=[], help="GeoTIFF (repeat for several)")
    p.add_argument("--wavelengths", help="band wavelengths in µm, comma-separated (frozen DOFA without --manifest)")
    p.add_argument("--id-column", default="plot_id")
    p.add_argument("--crs", help="CRS of a CSV points file, e.g. EPSG:32631")
    p.add_argument("--patch-size-m", type=float, help="window ground size (default: the encoder's, else 100 m)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--images", help="a folder of organism photos (with an organism encoder): one row per image, "
                                    "CSV or Parquet by the --out suffix")
    p.add_argument("--out", required=True, help="output GeoParquet (points), or CSV/Parquet (--images)")
    p.add_argument("--overwrite", action="store_true")


def _embed(args) -> int:
    if args.images:
        from .commands.organism_eval import embed_images_verb

        return embed_images_verb(args)
    from .data.plots import read_plots
    from .embedding import write_embeddings
    from .encoders.registry import load_encoder

    wavelengths = [float(w) for w in args.wavelengths.split(",")] if args.wavelengths else None
    rasters, points = list(args.raster), None
    if args.manifest:
        from .data.manifest import load_manifest
        from .data.plots import read_manifest_plots

        m = load_manifest(args.manifest)
        rasters = rasters or [f.path for f in m.imagery]
        wavelengths = wavelengths or list(m.wavelengths_um)
        points = read_manifest_plots(m)
        args.id_column = "plot_id"
    if args.points:
        points = read_plots(args.points, id_column=args.id_column, crs=args.crs)
    if points is None:
        raise EcoalignInputError("no points given", expected="--points FILE or --manifest M")
    encoder = load_encoder(args.encoder, size=args.size, weights=args.weights, wavelengths_um=wavelengths)
    meta = write_embeddings(points, rasters, encoder, args.out, overwrite=args.overwrite, id_column=args.id_column,
                            patch_size_m=args.patch_size_m, batch_size=args.batch_size)
    skipped = {k: len(v) for k, v in meta["skipped"].items()}
    print(f"[ecoalign] wrote {meta['embedded']} of {meta['points']} points to {args.out}; skipped {skipped or 'none'}"
          + ("; encoder on RANDOM weights" if meta["random_weights"] else ""))
    return 0


def _sites_args(p) -> None:
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


def _load_sites(args, spec, embeddings=None):
    import pandas as pd

    from .data.plots import read_plots
    from .downstream.sites import build_sites

    manifest = None
    if args.manifest:
        from .data.manifest import load_manifest

        manifest = load_manifest(args.manifest)
    background = getattr(args, "background", None)
    if background:
        points = _read_points(args.points, args.crs, "--points")
        background = _read_points(background, args.crs, "--background")
    else:
        points = read_plots(args.points, id_column=args.id_column, crs=args.crs) if args.points else None
    covariates = pd.read_csv(args.covariates) if args.covariates else None
    sites = build_sites(spec, embeddings=embeddings if embeddings is not None else args.embeddings, points=points,
                        covariates=covariates, manifest=manifest, id_column=args.id_column, background=background)
    dropped = {k: len(v) for k, v in sites.dropped.items()}
    print(f"[ecoalign] {len(sites.ids)} sites, {sites.X.shape[1]} features, {sites.Y.shape[1]} targets; "
          f"dropped {dropped or 'none'}", flush=True)
    return sites


def _read_points(path, crs, flag):
    """Records or background points: rows need not have unique ids, only coordinates."""
    import geopandas as gpd
    import pandas as pd

    from .data.plots import X_NAMES, Y_NAMES, guess_column

    if path is None:
        raise EcoalignInputError(f"{flag} is required with --background")
    if str(path).lower().endswith((".csv", ".txt")):
        df = pd.read_csv(path, sep=None, engine="python")
        x, y = guess_column(df, X_NAMES, Path(path), "x"), guess_column(df, Y_NAMES, Path(path), "y")
        if crs is None:
            raise EcoalignInputError("a CSV of points needs its CRS", path=path, expected="--crs (e.g. EPSG:4326)")
        return gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df[x], df[y]), crs=crs)
    return gpd.read_file(path)


def _fit_parser(sub) -> None:
    p = sub.add_parser("fit", help="cross-validate and fit a species model from a spec -> model bundle")
    p.add_argument("spec", help="a species_models/ name (plant_presence) or a spec YAML path")
    _sites_args(p)
    p.add_argument("--out", required=True, help="bundle directory")
    p.add_argument("--overwrite", action="store_true")


def _fit(args) -> int:
    from .downstream.fitting import fit_bundle
    from .downstream.spec import load_spec

    spec = load_spec(args.spec)
    sites = _load_sites(args, spec)
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


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a model bundle on an independent test table")
    p.add_argument("bundle")
    _sites_args(p)
    p.add_argument("--targets", help="wide test table: id column + one 0/1 (or abundance) column per species "
                                     "(default: the --points file itself)")
    p.add_argument("--out", help="CSV of the metrics")


def _evaluate(args) -> int:
    import pandas as pd

    from .downstream.fitting import evaluate_bundle, load_bundle
    from .io import atomic_path

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
    sites = _load_sites(args, spec)
    table = evaluate_bundle(args.bundle, sites, seed=args.seed)
    summary = table[table["species"].isin(["micro", "macro"])]
    print(summary.to_string(index=False))
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)
    return 0


def _spec_from_meta(meta, targets, id_column, known):
    """The bundle's spec, pointed at the test table's presence/absence (or abundance) columns."""
    from .downstream.spec import spec_from_dict

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


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="several encoders, same sites and folds -> Markdown + CSV table and PNG chart")
    p.add_argument("spec")
    _sites_args(p)
    p.add_argument("--encoder", action="append", required=True, metavar="NAME=EMBEDDINGS.parquet",
                   help="an encoder's embedding table (repeat: frozen=a.parquet adapted=b.parquet ...)")
    p.add_argument("--out", required=True, help="output directory")


def _compare(args) -> int:
    from .downstream.compare import compare_encoders
    from .downstream.spec import load_spec

    spec = load_spec(args.spec)
    sites = {}
    for item in args.encoder:
        if "=" not in item:
            raise EcoalignInputError(f"--encoder {item!r}", expected="NAME=path/to/embeddings.parquet")
        name, path = item.split("=", 1)
        sites[name] = _load_sites(args, spec, embeddings=path)
    compare_encoders(spec, sites, args.out, seed=args.seed, n_jobs=args.n_jobs)
    print((Path(args.out) / "comparison.md").read_text())
    return 0


def _manifest_hash(args) -> int:
    from .io import sha256_file

    for f in args.files:
        print(f"{sha256_file(f)}  {f}")
    return 0


# Verbs living in their own modules under ecoalign/commands/: each module has ``register(sub) -> {verb: fn}``
# and keeps its heavy imports inside the functions it returns.
COMMAND_MODULES = ("curate", "train_organism", "organism_eval", "map")


def _command_verbs(sub) -> dict:
    import importlib

    verbs = {}
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.commands.{name}":
                raise
            continue
        verbs.update(module.register(sub))
    return verbs


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="ecoalign", description="Botany-aware foundation models for ecology.")
    parser.add_argument("--version", action="version", version=f"ecoalign {__version__}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors from the library's log")
    loud.add_argument("-v", "--verbose", action="store_true", help="debug messages from the library's log too")
    sub = parser.add_subparsers(dest="verb", required=True)
    _adapt_parser(sub)
    _embed_parser(sub)
    _fit_parser(sub)
    _evaluate_parser(sub)
    _compare_parser(sub)
    h = sub.add_parser("manifest-hash", help="print sha256 lines for files, to paste into a manifest")
    h.add_argument("files", nargs="+")
    parser.set_defaults(_extra_verbs=_command_verbs(sub))
    return parser


VERBS = {"adapt": _adapt, "embed": _embed, "fit": _fit, "evaluate": _evaluate, "compare": _compare,
         "manifest-hash": _manifest_hash}


# verbs whose finished work is picked up by running the same command again (no --resume flag)
RERUN_RESUMES = {"embed", "map"}


def _configure_logging(quiet: bool, verbose: bool) -> None:
    """The command shows the library's ``ecoalign`` log on stderr (INFO; --quiet: WARNING; --verbose: DEBUG).
    One handler, however often ``main`` runs in a process (tests, notebooks calling the CLI)."""
    import logging

    log = logging.getLogger("ecoalign")
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(h, "_ecoalign_cli", False) for h in log.handlers):
        class Format(logging.Formatter):
            def format(self, record):
                level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
                return f"[ecoalign] {level}{record.getMessage()}"

        class Stderr(logging.StreamHandler):  # whatever sys.stderr is when a record comes (tests, notebooks swap it)
            stream = property(lambda self: sys.stderr, lambda self, value: None)

        handler = Stderr()
        handler.setFormatter(Format())
        handler._ecoalign_cli = True
        log.addHandler(handler)
        log.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet, args.verbose)
    try:
        return {**VERBS, **args._extra_verbs}[args.verb](args)
    except EcoalignInputError as exc:
        print(f"ecoalign {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = "re-run the same command to resume" if args.verb in RERUN_RESUMES else "continue with --resume"
        print(f"ecoalign {args.verb}: interrupted; finished work is kept, {how}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
