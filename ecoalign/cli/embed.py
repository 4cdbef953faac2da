"""``ecoalign embed``: the image window around each point -> one embedding row per point (GeoParquet)."""
from __future__ import annotations

from ecoalign.cli.arg_types import add_encoder_options, wavelengths


def register(sub) -> dict:
    p = sub.add_parser("embed", help="embed the image window around each point -> GeoParquet (one row per point)")
    p.add_argument("--encoder", default="dofa", help="'dofa' (frozen) or an `ecoalign adapt` run directory")
    p.add_argument("--weights", default="none", help="frozen DOFA weights: enum name, checkpoint path, or none")
    p.add_argument("--size", default="base", help="frozen DOFA size")
    p.add_argument("--manifest", help="take points (plots) and rasters (imagery) from a data-set manifest")
    p.add_argument("--points", help="points/plots file: GeoPackage, GeoParquet, or CSV (with --crs)")
    p.add_argument("--raster", action="append", default=[], help="GeoTIFF or .vrt (repeat for several), or a quoted glob of tiles ('tiles/*.tif'); tiles in one "
                        "CRS with the same bands, resolution and grid are read as one mosaic")
    p.add_argument("--wavelengths", type=wavelengths,
                   help="band wavelengths in µm, comma-separated (frozen DOFA without --manifest)")
    p.add_argument("--id-column", default="plot_id")
    p.add_argument("--crs", help="CRS of a CSV points file, e.g. EPSG:32631")
    p.add_argument("--patch-size-m", type=float, help="window ground size (default: the encoder's, else 100 m)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", required=True, help="output GeoParquet (organism photos: `ecoalign embed-images`)")
    p.add_argument("--overwrite", action="store_true")
    add_encoder_options(p)  # frozen DOFA without --band-mean/--band-std: fixed once from all --raster files
    return {"embed": run}


def run(args) -> int:
    from ecoalign.aerial.embed import embed_inputs, write_embeddings

    # ecoalign.aerial.embed.embed(..., out=) in two steps, without reading the written table back into memory
    points, rasters, encoder, id_column = embed_inputs(
        args.points, args.raster, manifest=args.manifest, encoder=args.encoder, weights=args.weights,
        size=args.size, wavelengths_um=args.wavelengths, id_column=args.id_column, crs=args.crs,
        precision=args.precision, band_mean=args.band_mean, band_std=args.band_std)
    write_embeddings(points, rasters, encoder, args.out, overwrite=args.overwrite, id_column=id_column,
                     patch_size_m=args.patch_size_m, batch_size=args.batch_size)
    return 0
