"""``ecoalign curate``: organism photo table -> filtered, split webdataset shards (``ecoalign.organism.curate``)."""
from __future__ import annotations

from ecoalign.cli.organism_args import verb_kwargs


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
    p.add_argument("--eval-set", dest="eval_sets", action="append", default=[], metavar="NAME=TABLE",
                   help="an evaluation table: its images are removed from the output and its species may not "
                        "be in training (repeatable)")
    p.add_argument("--allow-leakage", action="store_true",
                   help="train on evaluation-set species anyway (reported in curation.json)")
    p.add_argument("--unseen-fraction", type=float, default=None,
                   help="fraction of species held out entirely into test_unseen (default 0)")
    p.add_argument("--unseen-species", default=None,
                   help="species held out into test_unseen: a file with one name per line, or 'A b,C d'")
    p.add_argument("--val-fraction", type=float, default=None, help="per seen species (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=None, help="per seen species (default 0.1)")
    p.add_argument("--ignore-split-column", action="store_true",
                   help="split by the fractions even though the table has a split column (default: the column's "
                        "splits are used, and fractions given with it are refused)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard (default 1000)")
    p.add_argument("--shuffle-buffer", type=int, default=50_000,
                   help="semi-global shuffle group size (default 50000; a full shuffle below it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return {"curate": run}


def run(args) -> int:
    from ecoalign.organism.curate import curate

    record = curate(**verb_kwargs(args))
    splits = record["splits"]
    print(f"[ecoalign] curated {args.out}: " + ", ".join(f"{k} {splits[k]['images']} images / {splits[k]['taxa']} taxa"
                                                       for k in ("train", "val", "test", "test_unseen"))
          + (f"; skipped {len(record['unreadable'])} unreadable image(s) (listed in curation.json)"
             if record["unreadable"] else ""))
    return 0
