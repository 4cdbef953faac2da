"""``ecoalign curate`` (organism photo table -> webdataset shards) and ``ecoalign organism-world`` (demo data)."""
from __future__ import annotations

from ecoalign.core.errors import EcoalignInputError


def register(sub) -> dict:
    p = sub.add_parser("curate", help="organism photo table (CSV/Parquet) -> filtered, split webdataset shards",
                       description="Read a metadata table (image path relative to the table, absolute, or URL; "
                                   "kingdom..species columns; optional common name and split columns), clean the "
                                   "names, filter, de-duplicate, split and write webdataset shards with text "
                                   "sidecars, metadata.parquet, curation.json and report/stats.md.")
    p.add_argument("table", help="metadata table: .csv/.tsv/.parquet")
    p.add_argument("--out", required=True, help="output directory (built in a temporary folder, then renamed)")
    p.add_argument("--min-per-species", type=int, default=1, help="drop species with fewer images (default 1)")
    p.add_argument("--max-per-species", type=int, default=None,
                   help="cap per species by seeded random subsampling (default: no cap)")
    p.add_argument("--include", action="append", default=[], metavar="RANK=NAME",
                   help="keep only rows in this taxon (repeatable: any match), e.g. --include class=Insecta")
    p.add_argument("--exclude", action="append", default=[], metavar="RANK=NAME",
                   help="drop rows in this taxon (repeatable), e.g. --exclude species='Homo sapiens'")
    p.add_argument("--eval-set", action="append", default=[], metavar="NAME=TABLE",
                   help="an evaluation table: its images are removed from the output and its species may not "
                        "be in training (repeatable)")
    p.add_argument("--allow-leakage", action="store_true",
                   help="train on evaluation-set species anyway (reported in curation.json)")
    p.add_argument("--unseen-fraction", type=float, default=0.0,
                   help="fraction of species held out entirely into test_unseen (default 0)")
    p.add_argument("--unseen-species", default=None,
                   help="species held out into test_unseen: a file with one name per line, or 'A b,C d'")
    p.add_argument("--val-fraction", type=float, default=0.1, help="per seen species (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="per seen species (default 0.1)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard (default 1000)")
    p.add_argument("--shuffle-buffer", type=int, default=50_000,
                   help="semi-global shuffle group size (default 50000; a full shuffle below it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.add_argument("--no-progress", action="store_true")

    w = sub.add_parser("organism-world", help="generate the demo organism world (procedural photos + taxonomy)")
    w.add_argument("--out", required=True, help="directory to write the world into")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--images-per-species", type=int, default=6)
    w.add_argument("--image-px", type=int, default=64)
    w.add_argument("--overwrite", action="store_true")
    return {"curate": curate_verb, "organism-world": world_verb}


def _eval_sets(specs) -> dict:
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise EcoalignInputError(f"bad --eval-set {spec!r}", expected="NAME=TABLE, e.g. rare=rare_species.csv")
        out[name.strip()] = path.strip()
    return out


def curate_verb(args) -> int:
    from ecoalign.organism.curate import curate

    curate(args.table, args.out, min_per_species=args.min_per_species, max_per_species=args.max_per_species,
           include=args.include, exclude=args.exclude, eval_sets=_eval_sets(args.eval_set),
           allow_leakage=args.allow_leakage, unseen_fraction=args.unseen_fraction,
           unseen_species=args.unseen_species, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
           shard_size=args.shard_size, shuffle_buffer=args.shuffle_buffer, seed=args.seed,
           overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def world_verb(args) -> int:
    from ecoalign.demo.organism_world import generate_organism_world

    w = generate_organism_world(args.out, seed=args.seed, images_per_species=args.images_per_species,
                                image_px=args.image_px, overwrite=args.overwrite)
    print(f"[ecoalign] organism world: {w.n_images} images in {w.root}; table {w.metadata_csv}; "
          f"{len(w.heldout_species)} held-out species in {w.heldout_file}; general pairs in {w.general_pairs}")
    return 0
