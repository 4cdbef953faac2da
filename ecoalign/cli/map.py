"""``ecoalign map``: a fitted species model over a raster of any size -> multi-band Cloud-Optimized GeoTIFF."""
from __future__ import annotations

from ecoalign.cli.arg_types import add_encoder_options, add_trust_arg, wavelengths
from ecoalign.core.errors import EcoalignInputError


def register(sub) -> dict:
    p = sub.add_parser("map", help="species-model map of a raster -> COG (one band per target) + quicklook PNG",
                       description="Slide a window of the model's patch size over the raster (the stride sets the "
                                   "output resolution), embed the windows, predict every target, and write a tiled, "
                                   "compressed Cloud-Optimized GeoTIFF. A killed run resumes from <out>.partial/.")
    p.add_argument("--encoder", required=True,
                   help="'dofa' (frozen DOFA: size, weights and wavelengths taken from the bundle), "
                        "'dofa-small'/'dofa-base', or an `ecoalign adapt` run directory")
    p.add_argument("--model", default=None,
                   help="model bundle directory written by `ecoalign fit`; leave out for a zero-shot map "
                        "(--releve/--species with an `adapt --releve-encoder organism_text` run as --encoder)")
    p.add_argument("--releve", action="append", default=None, metavar="'NAME=COVER,...'",
                   help="zero-shot: one band for this named composition, e.g. 'Quercus ilex=60,Pistacia "
                        "lentiscus=20' (percent cover; repeatable); species never seen in training are placed "
                        "through their genus in the run's checklist")
    p.add_argument("--raw-similarity", action="store_true",
                   help="zero-shot: write the cosine similarity instead of the calibrated suitability")
    p.add_argument("--relatives-weight", type=float, default=None, metavar="W",
                   help="zero-shot: pull a name unseen in training toward its closest seen relatives' text (genus, "
                        "else family, else order) with this weight in [0, 1] (default: the chosen default)")
    p.add_argument("--organism-encoder", default=None,
                   help="zero-shot: where the run's organism text encoder now lies (checked to be the same model)")
    p.add_argument("--raster", required=True, nargs="+", metavar="RASTER",
                   help="GeoTIFF with the encoder's bands, in the model's CRS; or many tiles read as one mosaic: "
                        "a quoted glob ('tiles/*.tif'), several files, or a GDAL .vrt (tiles in one CRS, with the "
                        "same bands and resolution)")
    p.add_argument("--env-rasters", nargs="*", default=[], metavar="[NAME=]PATH",
                   help="environmental rasters of the model, by name or in the model's order "
                        "(default: the paths stored in the bundle)")
    p.add_argument("--out", required=True, help="output .tif (a quicklook <stem>_quicklook.png is written beside it)")
    p.add_argument("--stride-m", type=float, default=None,
                   help="distance between window centres = output pixel size, metres (default: the window size)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per encoder batch (default 32)")
    p.add_argument("--wavelengths", type=wavelengths, default=None,
                   help="band wavelengths in µm, comma separated, for frozen DOFA (default: from the bundle)")
    p.add_argument("--weights", default=None,
                   help="frozen DOFA weights: torchgeo enum name, checkpoint path, or none (default: from the bundle)")
    p.add_argument("--max-nodata-fraction", type=float, default=0.5,
                   help="windows with more invalid pixels than this are written as nodata (default 0.5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--scheduler", default=None, help="dask distributed scheduler address (tcp://host:8786)")
    group.add_argument("--workers", type=int, default=None, help="a local dask cluster with N worker processes")
    p.add_argument("--no-quicklook", action="store_true", help="skip the PNG quicklook")
    p.add_argument("--species", nargs="+", default=None, metavar="NAME",
                   help="map only these species of the bundle, in this order (default: all); zero-shot (no "
                        "--model): one band per named species (a one-species relevé)")
    p.add_argument("--threshold-rule", default=None, metavar="RULE|NUMBER",
                   help="threshold of the presence map <stem>_presence.tif (uint8: 1 presence, 0 absence, 255 "
                        "nodata): max_tss, equal_sens_spec or p10_presence (out-of-fold thresholds stored in the "
                        "bundle), or a number in [0, 1] (default: the bundle's max_tss, when it has them)")
    p.add_argument("--no-presence", action="store_true", help="write no presence map")
    p.add_argument("--no-uncertainty", action="store_true",
                   help="write no '<species>: sd' bands (the spread between an ensemble model's members)")
    p.add_argument("--no-progress", action="store_true")
    add_trust_arg(p)
    add_encoder_options(p)  # --precision, --band-mean/--band-std (default: the encoder's, else the bundle's)
    return {"map": map_verb}


def map_verb(args) -> int:
    from ecoalign.mapping import map_raster

    if args.batch_size < 1:
        raise EcoalignInputError(f"--batch-size {args.batch_size}", expected="a positive number of windows")
    if args.model is None and not (args.releve or args.species):
        raise EcoalignInputError("no --model and nothing named for a zero-shot map",
                                 expected="--model BUNDLE, or --releve 'NAME=COVER,...' / --species NAME")
    raster = args.raster[0] if len(args.raster) == 1 else args.raster
    map_raster(args.encoder, args.model, raster, args.out, env_rasters=args.env_rasters, stride_m=args.stride_m,
               batch_size=args.batch_size, overwrite=args.overwrite, scheduler=args.scheduler, workers=args.workers,
               quicklook=not args.no_quicklook, progress=not args.no_progress,
               max_nodata_fraction=args.max_nodata_fraction, wavelengths_um=args.wavelengths,
               weights=args.weights, species=args.species, threshold_rule=args.threshold_rule,
               presence=not args.no_presence, uncertainty=not args.no_uncertainty, precision=args.precision,
               band_mean=args.band_mean, band_std=args.band_std, trusted=args.trust, releve=args.releve,
               raw_similarity=args.raw_similarity, organism_encoder=args.organism_encoder,
               relatives_weight=args.relatives_weight)
    return 0
