"""Training images/s of ``train-organism`` vs open_clip_train's own loop reading the same shards from disk, and
peak memory of ``train-organism`` at 1x and 16x the images over the same number of steps.

Throughput: open_clip's figure is ``open_clip_train.train.train_one_epoch`` over ``open_clip_train.data.
get_wds_dataset`` (its ``--train-data`` path: webdataset pipeline, the curated shards' ``<key>.txt`` captions and
``sizes.json``); ecoalign's is its whole ``train_organism`` run on the same shards (mixed-text captions, metrics,
a checkpoint at each epoch end). Same tiny model and seeded start, batch, workers and epochs. Runs alternate
(open_clip, ecoalign, open_clip, ...) so a machine shared with other jobs affects both; figures: wall-clock
images/s (best of the repeats) and images per CPU-second of the training process (median). Target: >= 0.95x.

Memory: each size trains in its own subprocess (a fresh interpreter) for ``--rss-steps`` steps; peak RSS is
``ru_maxrss`` of the process plus its DataLoader workers'. Target: the 16x run within 5% of the 1x run.

    python benchmarks/bench_train_organism.py [--images 1536] [--batch-size 64] [--epochs 2] [--repeats 3]
        [--arch ecoalign-tiny-vit] [--device cpu] [--threads 1] [--workers 2] [--precision auto]
        [--rss-images 512] [--rss-factor 16] [--rss-steps 24] [--skip-throughput] [--skip-rss]
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


def make_curated(root: Path, n: int, px: int = 64, seed: int = 0, shard_size: int = 256) -> Path:
    """n procedural photos of 16 species in curate's layout (written with the project's shard writer)."""
    from PIL import Image

    from ecoalign.data.taxonomy import TEXT_TYPES, Taxon, text
    from ecoalign.organism.shards import sample_record, write_shards

    rng = np.random.default_rng(seed)
    taxa = [Taxon.from_ranks({"kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes",
                              "family": f"Fam{g // 4}idae", "genus": f"Genus{g}", "species": f"sp{s}"},
                             common=f"bird {g}-{s}")[0] for g in range(8) for s in range(2)]

    def records():
        for i in range(n):
            t = i % len(taxa)
            arr = (rng.normal(0, 25, (px, px, 3)) + rng.integers(0, 255, 3)).clip(0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=90)
            meta = {"key": f"k{i}", "taxon": taxa[t].as_dict(), "common": taxa[t].common, "split": "train"}
            yield sample_record(f"k{i}", buf.getvalue(), "jpg", meta, {k: text(taxa[t], k) for k in TEXT_TYPES},
                                caption=text(taxa[t], "taxonomic_common"))

    write_shards(records(), root / "train", shard_size=shard_size)
    (root / "curation.json").write_text(json.dumps({"seed": seed, "benchmark": True}))
    return root


def run_open_clip(curated: Path, a) -> tuple[float, float]:
    """images/s of open_clip_train's train_one_epoch over its own webdataset loader of the curated shards."""
    import open_clip_train.data as ocd
    from open_clip.loss import ClipLoss
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch
    from webdataset.tariterators import tar_file_expander

    from ecoalign.encoders.organism import load_organism_encoder
    from ecoalign.organism.train import _param_groups

    # open_clip_train 3.3 expects webdataset <= 0.2.86, whose tar expander ends a shard without an empty marker
    ocd.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)
    torch.manual_seed(0)
    enc = load_organism_encoder(f"open_clip:{a.arch}")
    model = enc.model.to(a.device)
    model.output_dict = True
    shards = sorted((curated / "train").glob("shard-*.tar"))
    cuda = a.device.startswith("cuda")
    precision = {"auto": "amp_bf16" if cuda else "fp32", "fp32": "fp32", "bf16": "amp_bf16", "amp": "amp"}[a.precision]
    args = SimpleNamespace(train_data=str(curated / "train" / f"shard-{{000000..{len(shards) - 1:06d}}}.tar"),
                           train_num_samples=None, dataset_resampled=False, train_data_upsampling_factors=None,
                           seed=0, batch_size=a.batch_size, world_size=1, workers=a.workers, device=a.device,
                           precision=precision, distill=False, accum_freq=1, skip_scheduler=False,
                           grad_clip_norm=None, horovod=False, log_every_n_steps=10 ** 9, rank=0, local_rank=0,
                           wandb=False)
    data = ocd.get_wds_dataset(args, enc.train_preprocess, is_train=True, epoch=0, tokenizer=enc.tokenizer)
    steps = data.dataloader.num_batches
    opt = torch.optim.AdamW(_param_groups(model, 0.2), lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    sched = cosine_lr(opt, 5e-4, 10, steps * a.epochs)
    scaler = torch.amp.GradScaler("cuda") if precision == "amp" and cuda else None
    t0, cpu0 = time.perf_counter(), time.process_time()
    for epoch in range(a.epochs):
        train_one_epoch(model, {"train": data}, ClipLoss(), epoch, opt, scaler, sched, None, args)
    if cuda:
        torch.cuda.synchronize()
    n = steps * a.epochs * a.batch_size
    return n / (time.perf_counter() - t0), n / (time.process_time() - cpu0)


def run_ecoalign(curated: Path, a, out: Path, max_steps: int | None = None) -> dict:
    from ecoalign.organism.train import train_organism

    run = train_organism(curated=str(curated), arch=a.arch, epochs=a.epochs, batch_size=a.batch_size,
                         val_split=None, device=a.device, num_workers=a.workers, progress=False,
                         precision=a.precision, checkpoint_every=10 ** 9, log_every=10 ** 9, out=str(out),
                         max_steps=max_steps)
    report = run / "train_report.json"
    return json.loads(report.read_text()) if report.exists() else {}


def rss_child(a) -> None:
    """One memory measurement (a fresh interpreter): make the set, train --rss-steps steps, print peak RSS."""
    import resource

    with tempfile.TemporaryDirectory() as tmp:
        curated = make_curated(Path(tmp) / "curated", a.rss_child)
        a.epochs = 1
        t0 = time.perf_counter()
        run_ecoalign(curated, a, Path(tmp) / "run", max_steps=a.rss_steps)
        seconds = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"images": a.rss_child, "peak_rss_mb": own, "worker_peak_rss_mb": workers,
                      "seconds": seconds}))


def measure_rss(a, images: int) -> dict:
    cmd = [sys.executable, __file__, "--rss-child", str(images), "--rss-steps", str(a.rss_steps), "--batch-size",
           str(a.batch_size), "--arch", a.arch, "--device", a.device, "--workers", str(a.workers),
           "--precision", a.precision] + (["--threads", str(a.threads)] if a.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1536)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--arch", default="ecoalign-tiny-vit")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, both sides")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "amp"))
    p.add_argument("--rss-images", type=int, default=512)
    p.add_argument("--rss-factor", type=int, default=16)
    p.add_argument("--rss-steps", type=int, default=24)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.getLogger().setLevel(logging.ERROR)
    if a.rss_child:
        rss_child(a)
        return
    print(f"[bench] batch {a.batch_size}, {a.arch} on {a.device}, precision {a.precision}, "
          f"{torch.get_num_threads()} thread(s), {a.workers} worker(s)")
    if not a.skip_throughput:
        with tempfile.TemporaryDirectory() as tmp:
            curated = make_curated(Path(tmp) / "curated", a.images)
            print(f"[bench] throughput: {a.images} images from {len(list((curated / 'train').glob('*.tar')))} "
                  f"shards on disk, {a.epochs} epochs", flush=True)
            figures = {"open_clip": [], "ecoalign": []}
            for r in range(a.repeats):
                figures["open_clip"].append(run_open_clip(curated, a))
                rep = run_ecoalign(curated, a, Path(tmp) / f"run{r}")
                n = rep["steps"] * a.batch_size
                figures["ecoalign"].append((rep["images_per_s_this_session"], n / rep["cpu_seconds_this_session"]))
                (ow, oc), (ew, ec) = figures["open_clip"][-1], figures["ecoalign"][-1]
                print(f"[bench] repeat {r + 1}: open_clip {ow:.1f} img/s wall, {oc:.1f} img/cpu-s | "
                      f"ecoalign {ew:.1f} img/s wall, {ec:.1f} img/cpu-s", flush=True)
        for i, what in ((0, "wall-clock img/s, best"), (1, "img per CPU-second of the training process, median")):
            pick = max if i == 0 else np.median
            o, e = (float(pick([f[i] for f in figures[k]])) for k in ("open_clip", "ecoalign"))
            print(f"[bench] {what} of {a.repeats}: open_clip train_one_epoch {o:.1f} | ecoalign train-organism "
                  f"{e:.1f} | ratio ecoalign/open_clip {e / o:.3f} (target >= 0.95: {'met' if e / o >= 0.95 else 'NOT met'})")
        print("[bench] CPU-seconds count the training process only (decoding runs in the workers on both sides)")
    if not a.skip_rss:
        small = measure_rss(a, a.rss_images)
        big = measure_rss(a, a.rss_images * a.rss_factor)
        for m in (small, big):
            print(f"[bench] peak RSS, {m['images']} images, {a.rss_steps} steps: training process "
                  f"{m['peak_rss_mb']:.0f} MB, largest DataLoader worker {m['worker_peak_rss_mb']:.0f} MB "
                  f"({m['seconds']:.0f} s with the data set's creation)")
        ratio = big["peak_rss_mb"] / small["peak_rss_mb"]
        wratio = big["worker_peak_rss_mb"] / max(small["worker_peak_rss_mb"], 1e-9)
        print(f"[bench] peak RSS {a.rss_factor}x / 1x images: training process {ratio:.3f}, workers {wratio:.3f} "
              f"(target <= 1.05: {'met' if max(ratio, wratio) <= 1.05 else 'NOT met'})")


if __name__ == "__main__":
    main()
