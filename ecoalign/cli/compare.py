"""``ecoalign compare``: several encoders on the same sites and folds -> Markdown + CSV table and PNG chart
(:func:`ecoalign.sdm.compare.compare`)."""
from __future__ import annotations

from pathlib import Path

from ecoalign.cli.sites_args import add_n_jobs_arg, add_sites_args, sites_kwargs
from ecoalign.core.errors import EcoalignInputError


def register(sub) -> dict:
    p = sub.add_parser("compare", help="several encoders, same sites and folds -> Markdown + CSV table and PNG chart")
    p.add_argument("spec")
    add_sites_args(p, embeddings=False)
    add_n_jobs_arg(p)
    p.add_argument("--encoder", action="append", required=True, metavar="NAME=EMBEDDINGS.parquet",
                   help="an encoder's embedding table (repeat: frozen=a.parquet adapted=b.parquet ...)")
    p.add_argument("--out", required=True, help="output directory")
    return {"compare": run}


def run(args) -> int:
    from ecoalign.sdm.compare import compare

    encoders = {}
    for item in args.encoder:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise EcoalignInputError(f"--encoder {item!r}", expected="NAME=path/to/embeddings.parquet")
        if name in encoders:
            raise EcoalignInputError(f"--encoder {item!r}: the name '{name}' is given twice", expected="one name per encoder")
        encoders[name] = path
    compare(args.spec, encoders, **sites_kwargs(args), out=args.out, seed=args.seed, n_jobs=args.n_jobs)
    print((Path(args.out) / "comparison.md").read_text())
    return 0
