"""``ecoalign zero-shot``: zero-shot accuracy of an organism encoder at any rank (``ecoalign.organism.zero_shot``)."""
from __future__ import annotations

from ecoalign.cli.organism_args import (
    add_data_args,
    add_encoder_args,
    add_out_args,
    skipped_note,
    verb_kwargs,
)


def register(sub) -> dict:
    from ecoalign.data.taxonomy import RANKS, TEXT_TYPES

    p = sub.add_parser("zero-shot", help="zero-shot accuracy of an organism encoder at any rank (top-1/top-5, "
                                         "Wilson 95%% intervals)")
    add_encoder_args(p)
    add_data_args(p)
    p.add_argument("--rank", nargs="+", default=["species"], choices=RANKS, help="rank(s) (default: species)")
    p.add_argument("--method", default="sum", choices=("sum", "text"),
                   help="above species: sum species probabilities (sum, default) or rank-level text (text)")
    p.add_argument("--text-type", default="taxonomic", choices=TEXT_TYPES, help="class text (default: taxonomic)")
    p.add_argument("--labels", help="table of candidate taxa (default: the taxa of the evaluated images)")
    add_out_args(p, "report: .json or .csv", required=False)
    return {"zero-shot": run}


def run(args) -> int:
    from ecoalign.organism.zero_shot import zero_shot

    table = zero_shot(**verb_kwargs(args))
    for r in table.to_dict("records"):
        print(f"[ecoalign] zero-shot {r['rank']:<8} ({r['method']}, {r['classes']} classes, {r['images']} images): "
              f"top-1 {r['top1']:.3f} [{r['top1_low']:.3f}, {r['top1_high']:.3f}]  top-{r['top5_k']} "
              f"{r['top5']:.3f} [{r['top5_low']:.3f}, {r['top5_high']:.3f}]")
    note = skipped_note(table.attrs["ecoalign"]["skipped"], args.out)
    if args.out or note:
        print(f"[ecoalign] report: {args.out}{note}" if args.out else f"[ecoalign] {note.lstrip('; ')}")
    return 0
