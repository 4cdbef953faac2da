"""``ecoalign few-shot``: SimpleShot k-shot accuracy of an organism encoder (``ecoalign.organism.few_shot``)."""
from __future__ import annotations

from ecoalign.cli.organism_args import (
    add_data_args,
    add_encoder_args,
    add_out_args,
    skipped_note,
    verb_kwargs,
)


def register(sub) -> dict:
    from ecoalign.data.taxonomy import RANKS

    p = sub.add_parser("few-shot", help="SimpleShot k-shot accuracy over repeated random folds")
    add_encoder_args(p)
    add_data_args(p)
    p.add_argument("--k", nargs="+", type=int, default=[1, 5], help="shots per class (default: 1 5)")
    p.add_argument("--folds", type=int, default=10, help="random support/query folds (default: 10)")
    p.add_argument("--rank", default="species", choices=RANKS, help="rank that defines the classes")
    p.add_argument("--seed", type=int, default=0)
    add_out_args(p, "report: .json or .csv", required=False)
    return {"few-shot": run}


def run(args) -> int:
    from ecoalign.organism.few_shot import few_shot

    table = few_shot(**verb_kwargs(args))
    report = table.attrs["ecoalign"]
    for r, detail in zip(table.to_dict("records"), report["results"]):
        left_out = detail["excluded_classes"]
        print(f"[ecoalign] {r['k']}-shot {r['rank']} ({r['classes']} classes, {r['folds']} folds, "
              f"{detail['queries_per_fold']} queries/fold): {r['accuracy']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
              + (f"; {len(left_out)} class(es) with <= {r['k']} images left out" if left_out else ""))
    note = skipped_note(report["skipped"], args.out)
    if args.out or note:
        print(f"[ecoalign] report: {args.out}{note}" if args.out else f"[ecoalign] {note.lstrip('; ')}")
    return 0
