"""``ecoalign train-organism``: CLIP training of an organism encoder on curated shards
(``ecoalign.organism.train.train_organism``; config: ecoalign/configs/train_organism.yaml)."""
from __future__ import annotations

from ecoalign.cli.organism_args import verb_kwargs


def register(sub) -> dict:
    p = sub.add_parser("train-organism", help="train an organism CLIP encoder on curated shards (BioCLIP recipe)",
                       description="Flags set keys of the train_organism config; trailing key=value arguments are "
                                   "Hydra overrides of it, e.g. lr=1e-4 warmup_steps=500 val_split=null. Several "
                                   "GPUs: torchrun --nproc_per_node N -m ecoalign.cli train-organism ...")
    # every dest is a config key (flags left out keep the config's value)
    p.add_argument("--curated", "--data", dest="curated", action="append",
                   help="training data: a curated directory (the --out of `ecoalign curate`), a directory of .tar "
                        "shards, a shard pattern (shard-{000000..000099}.tar) or a caption table (image + caption "
                        "columns); repeat to mix several")
    p.add_argument("--data-weights", type=float, nargs="+", help="one weight per --data (default: their sizes)")
    p.add_argument("--arch", help="open_clip architecture (default ecoalign-tiny-vit), or open_clip:ARCH, "
                                  "local-dir:/dir, hf-hub:org/name, bioclip, a saved encoder directory")
    p.add_argument("--weights", help="local checkpoint (.pt/.bin/.safetensors) for --arch; default: RANDOM init")
    p.add_argument("--text-type", help="mixed (default), one of the taxonomy text types, or caption (plain .txt)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after N steps (continue with --resume)")
    p.add_argument("--batch-size", type=int, help="images per step per process (default 32)")
    p.add_argument("--lr", type=float)
    p.add_argument("--replay", help="general image-text pairs for experience replay (tar or directory of tars)")
    p.add_argument("--replay-weight", type=float)
    p.add_argument("--replay-batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default) | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "amp"),
                   help="fp32, bf16 autocast, amp (fp16 + scaler on CUDA); auto: bf16/amp on CUDA, fp32 on CPU")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--grad-checkpointing", action="store_true", default=None)
    p.add_argument("--workers", "--num-workers", dest="num_workers", type=int,
                   help="DataLoader workers per process (decode + augment; default 0)")
    p.add_argument("--out", help="run directory (default runs/train_organism/<timestamp>)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue an interrupted run: its directory, or the latest under runs/train_organism")
    p.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    return {"train-organism": run}


def run(args) -> int:
    import os

    from ecoalign.organism.train import train_organism

    kwargs = {k: v for k, v in verb_kwargs(args).items() if v is not None}
    if len(kwargs.get("curated", ())) == 1:
        kwargs["curated"] = kwargs["curated"][0]
    run_dir = train_organism(**kwargs)
    if int(os.environ.get("RANK", 0)) != 0:  # torchrun: rank 0 speaks for the run
        return 0
    if (run_dir / "train_report.json").exists():
        print(f"[ecoalign] trained encoder: {run_dir / 'encoder'} (report {run_dir / 'train_report.json'})")
    else:
        print(f"[ecoalign] unfinished run: {run_dir} (continue with --resume {run_dir})")
    return 0
