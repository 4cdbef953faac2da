"""``ecoalign evaluate``: metrics of a model bundle on an independent test table (:func:`ecoalign.sdm.evaluate.evaluate`)."""
from __future__ import annotations

from ecoalign.cli.arg_types import add_trust_arg
from ecoalign.cli.sites_args import add_sites_args, sites_kwargs


def register(sub) -> dict:
    p = sub.add_parser("evaluate", help="metrics of a model bundle on an independent test table")
    p.add_argument("bundle")
    add_sites_args(p)
    p.add_argument("--targets", help="wide test table: id column + one 0/1 (or abundance) column per species "
                                     "(default: the --points file itself)")
    p.add_argument("--out", help="CSV of the metrics")
    add_trust_arg(p)
    return {"evaluate": run}


def run(args) -> int:
    from ecoalign.sdm.evaluate import evaluate

    table = evaluate(args.bundle, targets=args.targets, **sites_kwargs(args), out=args.out, seed=args.seed,
                     trusted=args.trust)
    print(table[table["species"].isin(["micro", "macro"])].to_string(index=False))
    unknown = table.attrs.get("not_evaluated") or []
    if unknown:
        print(f"not evaluated ({len(unknown)} test column(s) that look like species the model does not know): "
              f"{unknown[:8]}")
    return 0
