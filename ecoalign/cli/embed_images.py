"""``ecoalign embed-images``: one embedding row per organism photo (``ecoalign.organism.photos.embed_images``)."""
from __future__ import annotations

from ecoalign.cli.organism_args import (
    add_encoder_args,
    add_out_args,
    skipped_note,
    verb_kwargs,
)


def register(sub) -> dict:
    p = sub.add_parser("embed-images", help="embed a folder of organism photos -> CSV/Parquet (file_name, emb_000...)")
    p.add_argument("images", help="folder of photos (searched recursively) or one image")
    add_encoder_args(p)
    add_out_args(p, "output table: .csv or .parquet")
    return {"embed-images": run}


def run(args) -> int:
    from ecoalign.organism.photos import embed_images

    table = embed_images(**verb_kwargs(args))
    dim = sum(c.startswith("emb_") for c in table.columns)
    print(f"[ecoalign] wrote {len(table)} image embeddings (D={dim}) to {args.out}"
          f"{skipped_note(table.attrs['ecoalign']['skipped'], args.out)}")
    return 0
