"""``ecoalign compare``: several encoders on the same sites and folds -> Markdown + CSV table and PNG chart."""
from __future__ import annotations

from pathlib import Path

from ecoalign.cli.sites_args import add_sites_args, load_sites
from ecoalign.core.errors import EcoalignInputError


def register(sub) -> dict:
    p = sub.add_parser("compare", help="several encoders, same sites and folds -> Markdown + CSV table and PNG chart")
    p.add_argument("spec")
    add_sites_args(p)
    p.add_argument("--encoder", action="append", required=True, metavar="NAME=EMBEDDINGS.parquet",
                   help="an encoder's embedding table (repeat: frozen=a.parquet adapted=b.parquet ...)")
    p.add_argument("--out", required=True, help="output directory")
    return {"compare": run}


def run(args) -> int:
    from ecoalign.sdm.compare import compare_encoders
    from ecoalign.sdm.spec import load_spec

    spec = load_spec(args.spec)
    sites = {}
    for item in args.encoder:
        if "=" not in item:
            raise EcoalignInputError(f"--encoder {item!r}", expected="NAME=path/to/embeddings.parquet")
        name, path = item.split("=", 1)
        sites[name] = load_sites(args, spec, embeddings=path)
    compare_encoders(spec, sites, args.out, seed=args.seed, n_jobs=args.n_jobs)
    print((Path(args.out) / "comparison.md").read_text())
    return 0
