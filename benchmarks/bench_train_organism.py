"""Training images/s of ``train-organism`` vs open_clip's own loop (``open_clip_train.train.train_one_epoch``),
side by side in one run: same tiny model and seeded start, same batch, same data and DataLoader settings.

ecoalign's figure is its whole training loop (mixed-text captions, metrics, the checkpoint written at each epoch
end); open_clip's is ``train_one_epoch`` over a DataLoader of the same dataset. Runs alternate (open_clip,
ecoalign, open_clip, ...) so that a machine shared with other jobs affects both. Two figures: wall-clock images/s
(best of the repeats) and images per CPU-second of the training process (median; steady on a busy machine with
--workers 0). Target: ecoalign within 10% of open_clip.

    python benchmarks/bench_train_organism.py [--images 1536] [--batch-size 64] [--epochs 2] [--repeats 3]
                                              [--arch ecoalign-tiny-vit] [--device cpu] [--threads 1] [--workers 0]
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


def make_curated(root: Path, n: int, px: int = 64, seed: int = 0) -> Path:
    """n procedural photos of 16 species in curate's layout (written with the project's shard writer)."""
    from PIL import Image

    from ecoalign.data.taxonomy import TEXT_TYPES, Taxon, text
    from ecoalign.organism.shards import sample_record, write_shards

    rng = np.random.default_rng(seed)
    taxa = [Taxon.from_ranks({"kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes",
                              "family": f"Fam{g // 4}idae", "genus": f"Genus{g}", "species": f"sp{s}"},
                             common=f"bird {g}-{s}")[0] for g in range(8) for s in range(2)]
    records = []
    for i in range(n):
        t = i % len(taxa)
        arr = (rng.normal(0, 25, (px, px, 3)) + rng.integers(0, 255, 3)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        meta = {"key": f"k{i}", "taxon": taxa[t].as_dict(), "common": taxa[t].common, "split": "train"}
        records.append(sample_record(f"k{i}", buf.getvalue(), "jpg", meta, {k: text(taxa[t], k) for k in TEXT_TYPES}))
    write_shards(records, root / "train", shard_size=512)
    (root / "curation.json").write_text(json.dumps({"seed": seed, "benchmark": True}))
    return root


def run_open_clip(curated: Path, a) -> tuple[float, float]:
    """images/s of open_clip_train's train_one_epoch on the same dataset, model start and optimiser settings."""
    from open_clip.loss import ClipLoss
    from open_clip_train.data import DataInfo
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    from ecoalign.encoders.organism import load_organism_encoder
    from ecoalign.organism.train import (
        CaptionedImages,
        SpeciesCaption,
        _param_groups,
        epoch_batches,
        load_species_samples,
    )

    torch.manual_seed(0)
    enc = load_organism_encoder(f"open_clip:{a.arch}")
    model = enc.model.to(a.device)
    model.output_dict = True
    samples = load_species_samples(curated, "train")
    ds = CaptionedImages([s["image"] for s in samples], SpeciesCaption(samples, "mixed", True),
                         enc.train_preprocess, enc.tokenizer, 0)
    steps = len(ds) // a.batch_size
    opt = torch.optim.AdamW(_param_groups(model, 0.2), lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    sched = cosine_lr(opt, 5e-4, 10, steps * a.epochs)
    cuda = a.device.startswith("cuda")
    args = SimpleNamespace(device=a.device, precision="amp_bf16" if cuda else "fp32", distill=False, accum_freq=1,
                           skip_scheduler=False, grad_clip_norm=None, horovod=False, log_every_n_steps=10 ** 9,
                           world_size=1, rank=0, local_rank=0, batch_size=a.batch_size, wandb=False)
    loss = ClipLoss()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for epoch in range(a.epochs):
        loader = torch.utils.data.DataLoader(ds, batch_sampler=epoch_batches(len(ds), a.batch_size, 0, epoch),
                                             num_workers=a.workers, pin_memory=cuda)
        loader.num_batches, loader.num_samples = steps, steps * a.batch_size
        train_one_epoch(model, {"train": DataInfo(loader)}, loss, epoch, opt, None, sched, None, args)
    if cuda:
        torch.cuda.synchronize()
    n = steps * a.epochs * a.batch_size
    return n / (time.perf_counter() - t0), n / (time.process_time() - cpu0)


def run_ecoalign(curated: Path, a, out: Path) -> tuple[float, float]:
    from ecoalign.organism.train import train_organism

    run = train_organism(curated=str(curated), arch=a.arch, epochs=a.epochs, batch_size=a.batch_size,
                         val_split=None, device=a.device, num_workers=a.workers, progress=False,
                         checkpoint_every=10 ** 9, log_every=10 ** 9, out=str(out))
    report = json.loads((run / "train_report.json").read_text())
    n = report["steps"] * a.batch_size
    return report["images_per_s_this_session"], n / report["cpu_seconds_this_session"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1536)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--arch", default="ecoalign-tiny-vit")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers, both sides")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        curated = make_curated(Path(tmp) / "curated", a.images)
        print(f"[bench] {a.images} images, batch {a.batch_size}, {a.epochs} epochs, {a.arch} on {a.device}, "
              f"{torch.get_num_threads()} thread(s), {a.workers} worker(s)")
        figures = {"open_clip": [], "ecoalign": []}
        for r in range(a.repeats):
            figures["open_clip"].append(run_open_clip(curated, a))
            figures["ecoalign"].append(run_ecoalign(curated, a, Path(tmp) / f"run{r}"))
            (ow, oc), (ew, ec) = figures["open_clip"][-1], figures["ecoalign"][-1]
            print(f"[bench] repeat {r + 1}: open_clip {ow:.1f} img/s wall, {oc:.1f} img/cpu-s | "
                  f"ecoalign {ew:.1f} img/s wall, {ec:.1f} img/cpu-s", flush=True)
    for i, what in ((0, "wall-clock img/s, best"), (1, "img per CPU-second of the training process, median")):
        pick = max if i == 0 else np.median
        o, e = (float(pick([f[i] for f in figures[k]])) for k in ("open_clip", "ecoalign"))
        print(f"[bench] {what} of {a.repeats}: open_clip train_one_epoch {o:.1f} | ecoalign train-organism {e:.1f}"
              f" | ratio ecoalign/open_clip {e / o:.3f} (target >= 0.90: {'met' if e / o >= 0.9 else 'NOT met'})")
    print("[bench] CPU-seconds count this process only: compare them with --workers 0 on a busy machine; on a "
          "quiet or GPU machine the wall-clock figure is the one that matters")


if __name__ == "__main__":
    main()
