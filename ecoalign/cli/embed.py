"""``ecoalign embed``: the image window around each point -> one embedding row per point (GeoParquet)."""
from __future__ import annotations

from ecoalign.core.errors import EcoalignInputError

def register(sub) -> dict:
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
    return {"embed": run}


def run(args) -> int:
    if args.images:
        from ecoalign.cli.organism_eval import embed_images_verb

        return embed_images_verb(args)
    from ecoalign.data.plots import read_plots
    from ecoalign.aerial.embed import write_embeddings
    from ecoalign.encoders.registry import load_encoder

    wavelengths = [float(w) for w in args.wavelengths.split(",")] if args.wavelengths else None
    rasters, points = list(args.raster), None
    if args.manifest:
        from ecoalign.data.manifest import load_manifest
        from ecoalign.data.plots import read_manifest_plots

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
