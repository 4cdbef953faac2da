"""The ``ecoalign`` command: a thin shell over the library; heavy imports happen only inside a verb."""
from __future__ import annotations

import argparse
import sys

from .errors import EcoalignInputError

# CLI flag -> Hydra config group it selects
GROUP_FLAGS = {"backbone": "backbone", "releve_encoder": "releve_encoder", "loss": "loss", "data": "data",
               "trainer": "trainer"}


def _adapt_parser(sub) -> None:
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


def _adapt(args) -> int:
    from .config import compose
    from .train.adapt import adapt

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


def _manifest_hash(args) -> int:
    from .io import sha256_file

    for f in args.files:
        print(f"{sha256_file(f)}  {f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecoalign", description="Botany-aware foundation models for ecology.")
    sub = parser.add_subparsers(dest="verb", required=True)
    _adapt_parser(sub)
    h = sub.add_parser("manifest-hash", help="print sha256 lines for files, to paste into a manifest")
    h.add_argument("files", nargs="+")
    return parser


VERBS = {"adapt": _adapt, "manifest-hash": _manifest_hash}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return VERBS[args.verb](args)
    except EcoalignInputError as exc:
        print(f"ecoalign {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ecoalign {args.verb}: interrupted; finished work is kept, continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
