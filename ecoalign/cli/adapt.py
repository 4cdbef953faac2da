"""``ecoalign adapt``: BotaCLIP alignment of a frozen DOFA encoder with relevés (configs/adapt.yaml)."""
from __future__ import annotations

from ecoalign.core.errors import EcoalignInputError

# CLI flag -> Hydra config group it selects
GROUP_FLAGS = {"backbone": "backbone", "releve_encoder": "releve_encoder", "loss": "loss", "data": "data",
               "trainer": "trainer"}


def register(sub) -> dict:
    p = sub.add_parser("adapt", help="align a frozen DOFA encoder with botanical relevés (BotaCLIP)",
                       description="Trailing key=value arguments are Hydra overrides, e.g. trainer.epochs=20 "
                                   "loss.anchor_weight=0 backbone.size=small.")
    p.add_argument("--backbone", help="backbone config group (dofa)")
    p.add_argument("--releve-encoder", dest="releve_encoder", help="relevé encoder group (mlp | attention)")
    p.add_argument("--loss", help="loss group (siglip | infonce)")
    p.add_argument("--data", help="data config group (demo)")
    p.add_argument("--trainer", help="trainer group (default | quick)")
    p.add_argument("--manifest", help="data-set manifest: a YAML path or a name in data_manifests/ (default: demo)")
    p.add_argument("--weights", help="DOFA weights: torchgeo enum name (DOFA_MAE), a checkpoint path, or none")
    p.add_argument("--size", help="DOFA size: small | base | large")
    p.add_argument("--out", help="run directory (default: runs/adapt/<timestamp>)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue an interrupted run: its directory, or the latest one under runs/adapt")
    p.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    return {"adapt": run}


def run(args) -> int:
    from ecoalign.core.config import compose
    from ecoalign.aerial.adapt import adapt

    overrides = [f"{group}={getattr(args, flag)}" for flag, group in GROUP_FLAGS.items() if getattr(args, flag)]
    if args.manifest:
        overrides.append(f"data.manifest={args.manifest}")
    if args.weights:
        overrides.append(f"backbone.weights={args.weights}")
    if args.size:
        overrides.append(f"backbone.size={args.size}")
    overrides += args.overrides
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise EcoalignInputError(f"unexpected arguments {bad}", expected="key=value Hydra overrides")
    cfg = compose("adapt", overrides)
    adapt(cfg, out=args.out, resume=args.resume)
    return 0
