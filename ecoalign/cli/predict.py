"""``ecoalign predict``: top-k zero-shot predictions for a folder of photos (``ecoalign.organism.predict``)."""
from __future__ import annotations

from ecoalign.cli.organism_args import (
    add_encoder_args,
    add_out_args,
    skipped_note,
    verb_kwargs,
)


def register(sub) -> dict:
    from ecoalign.data.taxonomy import RANKS, TEXT_TYPES

    p = sub.add_parser("predict", help="top-k zero-shot predictions for a folder of photos -> CSV/Parquet")
    p.add_argument("images", help="folder of photos (searched recursively) or one image")
    add_encoder_args(p)
    cls = p.add_mutually_exclusive_group(required=True)
    cls.add_argument("--labels", help="table of candidate taxa (rank columns kingdom..species)")
    cls.add_argument("--classes", help="free-text class names: 'a,b,c' or a text file with one per line")
    p.add_argument("--rank", default="species", choices=RANKS, help="rank of the predictions (with --labels)")
    p.add_argument("--method", default="sum", choices=("sum", "text"))
    p.add_argument("--text-type", default="taxonomic", choices=TEXT_TYPES)
    p.add_argument("--k", type=int, default=5, help="predictions per image (default: 5)")
    add_out_args(p, "output table: .csv or .parquet")
    return {"predict": run}


def run(args) -> int:
    from ecoalign.organism.predict import predict

    table = predict(**verb_kwargs(args))
    meta = table.attrs["ecoalign"]
    n_img = table["file_name"].nunique() if len(table) else 0
    print(f"[ecoalign] wrote {len(table)} predictions for {n_img} image(s) ({meta['classes']} classes at "
          f"{meta['rank']}) to {args.out}{skipped_note(meta['skipped'], args.out)}")
    return 0
