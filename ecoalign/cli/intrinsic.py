"""``ecoalign intrinsic``: BioCLIP 2's intrinsic analysis of an organism encoder
(``ecoalign.organism.intrinsic.intrinsic``)."""
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

    p = sub.add_parser("intrinsic", help="BioCLIP 2 intrinsic analysis: explained-variance ratio, Fisher ratio, "
                                         "2-D plot coloured by rank")
    add_encoder_args(p)
    add_data_args(p)
    p.add_argument("--rank", default="genus", choices=RANKS, help="rank for colours and between-taxa FDR")
    p.add_argument("--variant-column", help="table column with intra-species variants (life stage, sex ...)")
    p.add_argument("--projection", default="pca", choices=("pca", "tsne"))
    p.add_argument("--seed", type=int, default=0)
    add_out_args(p, "output folder (intrinsic.json + PNG)")
    return {"intrinsic": run}


def run(args) -> int:
    from pathlib import Path

    from ecoalign.organism.intrinsic import intrinsic

    report = intrinsic(**verb_kwargs(args))
    ev, fdr = report["explained_variance_ratio"], report["fisher_species"]
    print("[ecoalign] explained-variance ratio " + (
        f"rho = {ev['rho']:.3f} (chance {ev['chance']:.3f}, span {ev['span_dim']} of {ev['embed_dim']} dims)"
        if "rho" in ev else f"not measured: {ev['not_measured']}"))
    print("[ecoalign] Fisher ratio between species " + (f"{fdr['mean']:.3f} (mean of {fdr['pairs']} pairs)"
                                                        if "mean" in fdr else f"not measured: {fdr['not_measured']}"))
    out = Path(args.out) / "intrinsic.json"
    print(f"[ecoalign] wrote {out} and {report['plot']}{skipped_note(report['skipped'], out)}")
    return 0
