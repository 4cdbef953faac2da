"""``ecoalign train-organism``: CLIP training of an open_clip model on curated organism shards (BioCLIP recipe).

Each image, each time it is drawn, is paired with one text type sampled from ``taxonomy.TEXT_TYPES`` (BioCLIP's
mixed text types) or a fixed one, placed in a random CLIP template. Optional experience replay (BioCLIP 2):
general image-text pairs share the towers but go through their own visual projection (a copy of the original one)
and their own CLIP loss, weighted by ``replay_weight``. All randomness is keyed by (seed, epoch, index) or by step,
so a resumed run takes the same path as an uninterrupted one. DDP via ``torchrun``; only rank 0 writes.
"""
from __future__ import annotations

import logging

import csv
import io
import math
import os
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import save_torch, write_json, write_text

log = logging.getLogger(__name__)

RUNS_DIR = Path("runs") / "train_organism"
RUNTIME_KEYS = ("max_steps", "device", "num_workers", "progress", "checkpoint_every", "log_every")  # may change on resume
METRIC_COLUMNS = ("step", "epoch", "loss", "species_loss", "replay_loss", "logit_scale", "lr", "images_per_s",
                  "val_loss")


def _log(msg: str) -> None:
    log.info("%s", msg)


# ---- data ------------------------------------------------------------------------------------------------------
def load_species_samples(curated_dir, split: str, *, rank: int = 0, world: int = 1) -> list[dict]:
    """This process's share (every ``world``-th sample, equal counts per rank) of a curated split, images kept
    encoded: dicts with ``image`` (bytes), ``texts`` and ``taxon``."""
    from ecoalign.organism.shards import iter_samples, shard_paths

    paths = shard_paths(curated_dir, split)
    return [{"image": s["image"], "texts": s["texts"], "taxon": s["taxon"]}
            for i, s in enumerate(iter_samples(paths, decode=False)) if i % world == rank]


def load_general_pairs(path, *, rank: int = 0, world: int = 1) -> list[dict]:
    from ecoalign.organism.shards import read_general_pairs

    return [{"image": p["image"], "text": p["text"]}
            for i, p in enumerate(read_general_pairs(path, decode=False)) if i % world == rank]


class SpeciesCaption:
    """Caption of a species sample: text type (fixed or mixed) from its sidecars, in a random template."""

    def __init__(self, samples: list[dict], text_type: str, templates: bool):
        from ecoalign.data.taxonomy import TEMPLATES, TEXT_TYPES

        self.samples, self.text_type, self.templates = samples, text_type, TEMPLATES if templates else ("{}",)
        self.kinds = TEXT_TYPES

    def __call__(self, idx: int, rng) -> str:
        from ecoalign.data.taxonomy import text

        s = self.samples[idx]
        kind = self.kinds[rng.integers(len(self.kinds))] if self.text_type == "mixed" else self.text_type
        raw = s["texts"].get(kind) or text(s["taxon"], kind)
        return self.templates[rng.integers(len(self.templates))].format(raw)


class PairCaption:
    def __init__(self, pairs: list[dict]):
        self.pairs = pairs

    def __call__(self, idx: int, rng) -> str:
        return self.pairs[idx]["text"]


class CaptionedImages:
    """Map-style dataset over encoded images; key (epoch, index) -> (image tensor, tokens). The augmentation and
    caption are drawn from an RNG seeded by (seed, epoch, index): same views after a resume, with any workers."""

    def __init__(self, images: list[bytes], caption: Callable, transform, tokenizer, seed: int):
        self.images, self.caption, self.transform, self.tokenizer, self.seed = images, caption, transform, tokenizer, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        import torch

        from ecoalign.organism.shards import decode_image

        epoch, idx = key
        rng = np.random.default_rng([self.seed, epoch, idx])
        text = self.caption(idx, rng)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2 ** 31)))
            image = self.transform(decode_image(self.images[idx]))
        return image, self.tokenizer([text])[0]


def epoch_batches(n: int, batch: int, seed: int, epoch: int, start: int = 0) -> list[list[tuple[int, int]]]:
    """The (epoch, index) batches of one epoch, from batch ``start`` on (drop_last, as CLIP training does)."""
    perm = np.random.default_rng([seed, epoch, 17]).permutation(n)
    return [[(epoch, int(i)) for i in perm[b * batch:(b + 1) * batch]] for b in range(start, n // batch)]


class ReplayBatches:
    """Endless replay batches: step s takes items s*B .. s*B+B-1 of a stream of reshuffled passes (deterministic)."""

    def __init__(self, n: int, batch: int, seed: int, start_step: int):
        self.n, self.batch, self.seed, self.start_step = n, batch, seed, start_step

    def __iter__(self):
        step, perms = self.start_step, {}
        while True:
            out = []
            for pos in range(step * self.batch, (step + 1) * self.batch):
                cycle = pos // self.n
                if cycle not in perms:
                    perms = {cycle: np.random.default_rng([self.seed, cycle, 29]).permutation(self.n)}
                out.append((cycle, int(perms[cycle][pos % self.n])))
            yield out
            step += 1


# ---- model -----------------------------------------------------------------------------------------------------
def _contrastive_model_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ContrastiveOrganismModel(nn.Module):
        """The CLIP model plus, with replay, a second visual projection for the general pairs (BioCLIP 2).

        With replay, the visual tower's own projection moves here as ``species_proj`` so one trunk pass serves
        both batches; ``as_clip()`` puts it back for saving and evaluation."""

        def __init__(self, clip, replay: bool):
            super().__init__()
            self.clip = clip
            self.species_proj = self.replay_proj = None
            if replay:
                proj = getattr(clip.visual, "proj", None)
                if not isinstance(proj, nn.Parameter):
                    raise EcoalignInputError(f"experience replay needs a visual tower with a projection matrix "
                                             f"(open_clip ViT); this one is {type(clip.visual).__name__}",
                                             expected="replay=null, or a ViT architecture")
                self.species_proj = proj
                self.replay_proj = nn.Parameter(proj.detach().clone())
                clip.visual.proj = None

        def forward(self, images, tokens, replay_images=None, replay_tokens=None):
            scale = self.clip.logit_scale.exp()
            if self.replay_proj is None:
                return (self.clip.encode_image(images, normalize=True), self.clip.encode_text(tokens, normalize=True),
                        None, None, scale)
            n = len(images)
            pooled = self.clip.visual(torch.cat([images, replay_images]))
            text = self.clip.encode_text(torch.cat([tokens, replay_tokens]), normalize=True)
            return (F.normalize(pooled[:n] @ self.species_proj, dim=-1), text[:n],
                    F.normalize(pooled[n:] @ self.replay_proj, dim=-1), text[n:], scale)

        @contextmanager
        def as_clip(self):
            if self.species_proj is not None:
                self.clip.visual.proj = self.species_proj
            try:
                yield self.clip
            finally:
                if self.species_proj is not None:
                    self.clip.visual.proj = None

    return ContrastiveOrganismModel


def _param_groups(model, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases and the logit scale (CLIP practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


# ---- config and run directory ----------------------------------------------------------------------------------
def _config(cfg, kwargs: dict) -> dict:
    from omegaconf import DictConfig, OmegaConf

    from ecoalign.core.config import compose

    if cfg is None:
        cfg = compose("train_organism")
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    unknown = sorted(set(kwargs) - set(c))
    if unknown:
        raise EcoalignInputError(f"unknown train-organism option(s) {unknown}", expected=f"keys of {sorted(c)}")
    c.update(kwargs)
    return c


def _resolve_run(c: dict, kwargs: dict) -> tuple[Path, dict, bool]:
    import yaml

    resume = c.get("resume")
    if resume:
        if resume in (True, "latest"):
            runs = sorted(p for p in RUNS_DIR.glob("*") if (p / "config.yaml").exists())
            if not runs:
                raise EcoalignInputError(f"--resume: no earlier run under {RUNS_DIR}", expected="--resume RUN_DIR")
            run = runs[-1]
        else:
            run = Path(resume)
        if not (run / "config.yaml").exists():
            raise EcoalignInputError("--resume: not a train-organism run directory (no config.yaml)", path=run)
        saved = yaml.safe_load((run / "config.yaml").read_text())
        changed = sorted(k for k in kwargs if k not in RUNTIME_KEYS + ("resume", "out") and kwargs[k] != saved.get(k))
        if changed:
            raise EcoalignInputError(f"cannot change {changed} when resuming", path=run / "config.yaml",
                                     expected=f"only runtime options {list(RUNTIME_KEYS)}; start a new run otherwise")
        saved["max_steps"] = None  # an early stop belongs to the session that asked for it
        saved.update({k: v for k, v in kwargs.items() if k in RUNTIME_KEYS})
        return run, saved, True
    run = Path(c["out"]) if c.get("out") else RUNS_DIR / datetime.now().strftime("%Y%m%d-%H%M%S")
    if (run / "config.yaml").exists():
        raise EcoalignInputError("a run already exists here", path=run,
                                 expected="--resume to continue it, or another --out directory")
    return run, c, False


def _validate(c: dict) -> None:
    from ecoalign.data.taxonomy import TEXT_TYPES

    if not c.get("curated"):
        raise EcoalignInputError("no curated data set given", expected="curated=<the --out directory of ecoalign curate> (--data on the command line)")
    if c["text_type"] != "mixed" and c["text_type"] not in TEXT_TYPES:
        raise EcoalignInputError(f"text_type={c['text_type']!r}", expected=f"'mixed' or one of {TEXT_TYPES}")
    for key in ("batch_size", "epochs"):
        if int(c[key]) < 1:
            raise EcoalignInputError(f"{key}={c[key]}", expected="a positive integer")
    if c.get("replay") and int(c["replay_batch_size"]) < 2:
        raise EcoalignInputError(f"replay_batch_size={c['replay_batch_size']}", expected="at least 2 (a CLIP loss)")
    if c["amp"] not in ("auto", "bf16", "fp16", "off"):
        raise EcoalignInputError(f"amp={c['amp']!r}", expected="auto | bf16 | fp16 | off")


def _model_name(arch: str) -> str:
    """A bare architecture name means open_clip:ARCH; other encoder names pass through."""
    from ecoalign.encoders.organism import BIOCLIP

    if arch.startswith(("open_clip:", "hf-hub:", "local-dir:")) or arch == "bioclip" or Path(arch).is_dir():
        return BIOCLIP if arch == "bioclip" else arch
    return f"open_clip:{arch}"


# ---- training --------------------------------------------------------------------------------------------------
def train_organism(cfg=None, /, **kwargs) -> Path:
    """Train (or continue) an organism CLIP model; returns the run directory, whose ``encoder/`` loads with
    ``load_organism_encoder``. ``cfg``: a composed ``train_organism`` config (or dict); kwargs override keys."""
    import torch
    import yaml

    from ecoalign.encoders.organism import load_organism_encoder

    c = _config(cfg, kwargs)
    run_dir, c, resuming = _resolve_run(c, kwargs)
    _validate(c)
    rank, world, local_rank = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1),
                                                                        ("LOCAL_RANK", 0)))
    device = c["device"]
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    main = rank == 0
    say = _log if main else (lambda msg: None)
    seed = int(c["seed"])
    torch.manual_seed(seed)

    samples = load_species_samples(c["curated"], c["train_split"], rank=rank, world=world)
    n_local = len(samples)
    if world > 1:  # equal step counts on every rank
        n_min = torch.tensor(n_local)
        torch.distributed.all_reduce(n_min, op=torch.distributed.ReduceOp.MIN)
        n_local = int(n_min)
        samples = samples[:n_local]
    batch = int(c["batch_size"])
    steps_per_epoch = n_local // batch
    if steps_per_epoch == 0:
        raise EcoalignInputError(f"batch_size={batch} is larger than the {n_local} training images per process",
                                 path=c["curated"], expected="a smaller batch_size or more images")
    total_steps = steps_per_epoch * int(c["epochs"])
    stop_at = min(total_steps, int(c["max_steps"])) if c.get("max_steps") else total_steps
    pairs = load_general_pairs(c["replay"], rank=rank, world=world) if c.get("replay") else None
    if pairs is not None and len(pairs) < int(c["replay_batch_size"]):
        raise EcoalignInputError(f"{len(pairs)} general image-text pairs per process, fewer than "
                                 f"replay_batch_size={c['replay_batch_size']}", path=c["replay"])

    encoder = load_organism_encoder(_model_name(str(c["arch"])), weights=c.get("weights"))
    start_info = {k: encoder.info.get(k) for k in ("arch", "weights", "weights_sha256", "random_weights")}
    if encoder.random_weights and not resuming:
        say(f"WARNING: training starts from RANDOM weights ({start_info['arch']}, no --weights): fine for tests and "
            f"the demo world; give a checkpoint to fine-tune a pretrained model")
    tf, tok = encoder.train_preprocess, encoder.tokenizer
    species_ds = CaptionedImages([s["image"] for s in samples], SpeciesCaption(samples, c["text_type"],
                                                                               c["templates"]), tf, tok, seed)
    replay_ds = None if pairs is None else CaptionedImages([p["image"] for p in pairs], PairCaption(pairs), tf, tok,
                                                           seed + 1)
    say(f"{n_local * world} training images ({c['train_split']}), {steps_per_epoch} steps/epoch x {c['epochs']} "
        f"epochs, batch {batch} x {world} process(es), text {c['text_type']}"
        + (f", replay {len(replay_ds) * world} pairs x{c['replay_weight']}" if replay_ds else ""))

    model = _contrastive_model_class()(encoder.model, replay=replay_ds is not None).to(device)
    if c["grad_checkpointing"]:
        encoder.model.set_grad_checkpointing(True)
    optimizer = torch.optim.AdamW(_param_groups(model, float(c["weight_decay"])), lr=float(c["lr"]),
                                  betas=(0.9, 0.98), eps=1e-6)
    from open_clip.loss import ClipLoss
    from open_clip_train.scheduler import cosine_lr

    schedule = cosine_lr(optimizer, float(c["lr"]), int(c["warmup_steps"]), total_steps)
    loss_fn = ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world)
    amp_dtype = _amp_dtype(c["amp"], device)
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    if main and not resuming:  # written once the set-up has succeeded, so a failed start leaves no run behind
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", yaml.safe_dump(c, sort_keys=False))
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    step, rows = 0, []
    if resuming and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, rows = int(state["step"]), list(state["metrics"])
        say(f"resuming {run_dir} at step {step} of {total_steps}")
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.startswith("cuda") else None)

    def checkpoint():
        if main:
            save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else None, "step": step,
                        "metrics": rows}, ckpt_path)
            _write_metrics(run_dir / "metrics.csv", rows)

    from tqdm.auto import tqdm

    bar = tqdm(total=stop_at, initial=step, desc="train-organism", unit="step",
               disable=not (main and c["progress"]))
    loader_kw = {"num_workers": int(c["num_workers"]), "pin_memory": device.startswith("cuda")}
    replay_iter = None
    if replay_ds is not None:
        replay_iter = iter(torch.utils.data.DataLoader(
            replay_ds, batch_sampler=ReplayBatches(len(replay_ds), int(c["replay_batch_size"]), seed, step),
            **loader_kw))
    t0, cpu0, images_done, tick = time.perf_counter(), time.process_time(), 0, (time.perf_counter(), step)
    model.train()
    while step < stop_at:
        epoch = step // steps_per_epoch
        loader = torch.utils.data.DataLoader(
            species_ds, batch_sampler=epoch_batches(n_local, batch, seed, epoch, step % steps_per_epoch), **loader_kw)
        for images, tokens in loader:
            schedule(step)
            images, tokens = images.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
            r_images = r_tokens = None
            if replay_iter is not None:
                r_images, r_tokens = (t.to(device, non_blocking=True) for t in next(replay_iter))
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                img, txt, r_img, r_txt, scale = train_model(images, tokens, r_images, r_tokens)
                species_loss = loss_fn(img, txt, scale)
                replay_loss = loss_fn(r_img, r_txt, scale) if r_img is not None else None
                loss = species_loss + float(c["replay_weight"]) * replay_loss if replay_loss is not None \
                    else species_loss
            _backward_and_step(loss, optimizer, scaler, model, c.get("grad_clip"))
            with torch.no_grad():
                model.clip.logit_scale.clamp_(0, math.log(100))
            step += 1
            images_done += len(images)
            bar.update(1)
            end_of_epoch = step % steps_per_epoch == 0
            if main and (step % int(c["log_every"]) == 0 or end_of_epoch or step == stop_at):
                now = time.perf_counter()
                ips = (step - tick[1]) * batch * world / max(now - tick[0], 1e-9)
                tick = (now, step)
                rows.append({"step": step, "epoch": epoch, "loss": loss.item(), "species_loss": species_loss.item(),
                             "replay_loss": None if replay_loss is None else replay_loss.item(),
                             "logit_scale": scale.item(), "lr": optimizer.param_groups[0]["lr"],
                             "images_per_s": ips, "val_loss": None})
                bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}")
            if end_of_epoch and main and c.get("val_split"):
                val = _val_loss(model, encoder, c, device, autocast)
                if val is not None and rows:
                    rows[-1]["val_loss"] = val
            if step % int(c["checkpoint_every"]) == 0 or end_of_epoch or step == stop_at:
                checkpoint()
            if step >= stop_at:
                break
    bar.close()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    if world > 1:
        torch.distributed.barrier()
    if step < total_steps:
        say(f"stopped at step {step} of {total_steps} (max_steps); continue with --resume {run_dir}")
    elif main:
        _finish(run_dir, encoder, model, c, start_info, step, rows, samples_total=n_local * world, world=world,
                device=device, amp=amp_dtype, seconds=seconds, cpu_seconds=cpu_seconds, images_done=images_done * world,
                replay=None if replay_ds is None else len(replay_ds) * world)
    if world > 1:
        torch.distributed.barrier()
    return run_dir


def _backward_and_step(loss, optimizer, scaler, model, grad_clip) -> None:
    import torch

    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def _amp_dtype(amp: str, device: str):
    import torch

    if amp == "off" or not device.startswith("cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _val_loss(model, encoder, c: dict, device, autocast, cap: int = 512) -> float | None:
    """Mean CLIP loss on (up to ``cap`` images of) the validation split, taxonomic text in the first template."""
    import itertools

    import torch

    from ecoalign.organism.shards import iter_samples, shard_paths
    from ecoalign.data.taxonomy import TEMPLATES, text

    paths = shard_paths(c["curated"], c["val_split"])
    if not paths:
        return None
    batch, losses = int(c["batch_size"]), []
    samples = list(itertools.islice(iter_samples(paths), cap))
    model.eval()
    with torch.no_grad(), model.as_clip() as clip, autocast():
        for b in range(0, len(samples) - 1, batch):
            chunk = samples[b:b + batch]
            if len(chunk) < 2:
                break
            x = torch.stack([encoder.preprocess(s["image"]) for s in chunk]).to(device)
            t = encoder.tokenizer([TEMPLATES[0].format(s["texts"].get("taxonomic") or text(s["taxon"], "taxonomic"))
                                   for s in chunk]).to(device)
            img, txt = clip.encode_image(x, normalize=True), clip.encode_text(t, normalize=True)
            logits = clip.logit_scale.exp() * img @ txt.T
            labels = torch.arange(len(chunk), device=device)
            losses.append(float((torch.nn.functional.cross_entropy(logits, labels)
                                 + torch.nn.functional.cross_entropy(logits.T, labels)) / 2))
    model.train()
    return float(np.mean(losses)) if losses else None


def _write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def _finish(run_dir: Path, encoder, model, c: dict, start_info: dict, step: int, rows: list[dict], *, samples_total,
            world, device, amp, seconds, cpu_seconds, images_done, replay) -> None:
    """Save the trained encoder (main projection back in place) and the run report (written last)."""
    training = {"run_dir": str(run_dir.resolve()), "steps": step, "epochs": c["epochs"], "text_type": c["text_type"],
                "replay": c.get("replay"), "replay_weight": c["replay_weight"] if c.get("replay") else None,
                "curated": str(c["curated"])}
    encoder.info = {**encoder.info, "random_weights": False, "initialised_from": start_info, "training": training}
    model.eval()
    with model.as_clip():
        encoder.save(run_dir / "encoder")
    _write_metrics(run_dir / "metrics.csv", rows)
    report = {"encoder": str(run_dir / "encoder"), "initialised_from": start_info,
              "started_from_random_weights": bool(start_info["random_weights"]), **training,
              "train_images": samples_total, "replay_pairs": replay, "world_size": world, "device": device,
              "amp": None if amp is None else str(amp).replace("torch.", ""),
              "grad_checkpointing": bool(c["grad_checkpointing"]), "seconds_this_session": seconds,
              "images_per_s_this_session": images_done / max(seconds, 1e-9),
              "cpu_seconds_this_session": cpu_seconds,  # this process only (not DataLoader workers)
              "final": rows[-1] if rows else None,
              "finished": datetime.now(timezone.utc).isoformat()}
    write_json(run_dir / "train_report.json", report)
    _log(f"done: {step} steps; encoder saved to {run_dir / 'encoder'}"
         + (" (trained from RANDOM initial weights)" if start_info["random_weights"] else ""))
