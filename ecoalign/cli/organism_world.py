"""``ecoalign organism-world``: the generated demo organism world (``ecoalign.demo.organism_world.organism_world``)."""
from __future__ import annotations

from ecoalign.cli.organism_args import verb_kwargs


def register(sub) -> dict:
    p = sub.add_parser("organism-world", help="generate the demo organism world (procedural photos + taxonomy)")
    p.add_argument("--out", required=True, help="directory to write the world into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images-per-species", type=int, default=6)
    p.add_argument("--image-px", type=int, default=64)
    p.add_argument("--overwrite", action="store_true")
    return {"organism-world": run}


def run(args) -> int:
    from ecoalign.demo.organism_world import organism_world

    w = organism_world(**verb_kwargs(args))
    print(f"[ecoalign] organism world: {w.n_images} images in {w.root}; table {w.metadata_csv}; "
          f"{len(w.heldout_species)} held-out species in {w.heldout_file}; general pairs in {w.general_pairs}")
    return 0
