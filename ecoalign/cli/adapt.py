"""``ecoalign adapt``: BotaCLIP alignment of a frozen DOFA encoder with relevés (the ``adapt`` config)."""
from __future__ import annotations

from ecoalign.aerial.adapt import GROUPS, RESUMABLE_KEYS
from ecoalign.cli.arg_types import PRECISIONS


def register(sub) -> dict:
    from ecoalign.core.config import group_options

    p = sub.add_parser("adapt", help="align a frozen DOFA encoder with botanical relevés (BotaCLIP)",
                       description="Trailing key=value arguments are Hydra overrides, e.g. trainer.epochs=20 "
                                   "loss.anchor_weight=0 backbone.size=small.")
    for group in GROUPS:  # choices come from the config groups themselves
        p.add_argument(f"--{group.replace('_', '-')}", dest=group, choices=group_options(group),
                       help=f"{group} config group")
    p.add_argument("--manifest", help="data-set manifest: a YAML path or a named manifest (default: demo)")
    p.add_argument("--weights", help="DOFA weights: torchgeo enum name (DOFA_MAE), a checkpoint path, or none")
    p.add_argument("--size", choices=("small", "base", "large"), help="DOFA size")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="precision of the frozen-DOFA embedding pass (backbone.precision; default auto: bf16 on "
                        "CUDA, else fp32)")
    p.add_argument("--out", help="run directory (default: runs/adapt/<timestamp>); with --resume, the run or "
                                 "the folder of runs to continue")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN",
                   help="continue an interrupted run: RUN, or without a value the latest one (under --out if "
                        f"given, else runs/adapt); only overrides of {', '.join(RESUMABLE_KEYS)} are accepted")
    p.add_argument("--holdout-species", metavar="FILE",
                   help="species removed from every relevé before training (leave-species-out validation, see "
                        "`ecoalign evaluate-zero-shot`): a text file, one name a line, or a CSV (column 'species')")
    p.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    return {"adapt": run}


def run(args) -> int:
    from ecoalign.aerial.adapt import adapt

    adapt(args.overrides, **{g: getattr(args, g) for g in GROUPS}, manifest=args.manifest, weights=args.weights,
          size=args.size, out=args.out, resume=args.resume, precision=args.precision,
          holdout_species=args.holdout_species)
    return 0
