"""The ``ecoalign`` command: a thin shell over the library; heavy imports happen only inside a verb."""
from __future__ import annotations

import argparse
import sys

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
    p.add_argument("--out", required=True, help="output GeoParquet")
    p.add_argument("--overwrite", action="store_true")


def _embed(args) -> int:
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


def _manifest_hash(args) -> int:
    from .io import sha256_file

    for f in args.files:
        print(f"{sha256_file(f)}  {f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecoalign", description="Botany-aware foundation models for ecology.")
    sub = parser.add_subparsers(dest="verb", required=True)
    _adapt_parser(sub)
    _embed_parser(sub)
    h = sub.add_parser("manifest-hash", help="print sha256 lines for files, to paste into a manifest")
    h.add_argument("files", nargs="+")
    return parser


VERBS = {"adapt": _adapt, "embed": _embed, "manifest-hash": _manifest_hash}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return VERBS[args.verb](args)
    except EcoalignInputError as exc:
        print(f"ecoalign {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ecoalign {args.verb}: interrupted; finished work is kept, continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
