"""``ecoalign train-organism``: CLIP training of an organism encoder on curated shards (configs/train_organism.yaml)."""
from __future__ import annotations

from ecoalign.core.errors import EcoalignInputError

# CLI flag (argparse dest) -> config key; flags left out keep the config's value
FLAGS = {"data": "curated", "arch": "arch", "weights": "weights", "text_type": "text_type", "epochs": "epochs",
         "max_steps": "max_steps", "batch_size": "batch_size", "lr": "lr", "replay": "replay",
         "replay_weight": "replay_weight", "replay_batch_size": "replay_batch_size", "seed": "seed",
         "device": "device", "amp": "amp", "grad_checkpointing": "grad_checkpointing", "num_workers": "num_workers",
         "out": "out"}


def register(sub) -> dict:
    p = sub.add_parser("train-organism", help="train an organism CLIP encoder on curated shards (BioCLIP recipe)",
                       description="Trailing key=value arguments are Hydra overrides of configs/train_organism.yaml, "
                                   "e.g. lr=1e-4 warmup_steps=500 val_split=null. Several GPUs: "
                                   "torchrun --nproc_per_node N -m ecoalign.cli train-organism ...")
    p.add_argument("--data", help="curated directory (the --out of `ecoalign curate`)")
    p.add_argument("--arch", help="open_clip architecture (default ecoalign-tiny-vit), or open_clip:ARCH, "
                                  "local-dir:/dir, hf-hub:org/name, bioclip, a saved encoder directory")
    p.add_argument("--weights", help="local checkpoint (.pt/.bin/.safetensors) for --arch; default: RANDOM init")
    p.add_argument("--text-type", dest="text_type", help="mixed (default) or one of the taxonomy text types")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", dest="max_steps", type=int, help="stop after N steps (continue with --resume)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="images per step per process (default 32)")
    p.add_argument("--lr", type=float)
    p.add_argument("--replay", help="general image-text pairs for experience replay (tar or directory of tars)")
    p.add_argument("--replay-weight", dest="replay_weight", type=float)
    p.add_argument("--replay-batch-size", dest="replay_batch_size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default) | cpu | cuda | cuda:N")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), help="CUDA mixed precision (default auto)")
    p.add_argument("--grad-checkpointing", dest="grad_checkpointing", action="store_true", default=None)
    p.add_argument("--num-workers", dest="num_workers", type=int)
    p.add_argument("--out", help="run directory (default runs/train_organism/<timestamp>)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue an interrupted run: its directory, or the latest under runs/train_organism")
    p.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    return {"train-organism": run}


def run(args) -> int:
    import yaml

    from ecoalign.core.config import compose
    from ecoalign.organism.train import train_organism

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise EcoalignInputError(f"unexpected arguments {bad}", expected="key=value Hydra overrides")
    given = {key: getattr(args, dest) for dest, key in FLAGS.items() if getattr(args, dest) is not None}
    if args.resume:
        extra = {o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1]) for o in args.overrides}
        train_organism(compose("train_organism"), resume=args.resume, **given, **extra)
        return 0
    cfg = compose("train_organism", [f"{k}={_hydra_value(v)}" for k, v in given.items()] + list(args.overrides))
    train_organism(cfg)
    return 0


def _hydra_value(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):  # quote so paths with ':' or '=' survive Hydra's override grammar
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(v)
