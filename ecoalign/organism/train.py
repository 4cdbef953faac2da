"""``ecoalign train-organism``: CLIP training of an open_clip model on curated organism shards (BioCLIP recipe).

Data are streamed from webdataset shards (``organism.stream``; memory does not grow with the data set): curated
sets, shard patterns or caption tables, several mixed by weight (``organism.train_sources``). Each organism
image, each time it is drawn, is paired with one text type sampled from ``taxonomy.TEXT_TYPES`` (BioCLIP's mixed
text types) or a fixed one, placed in a random CLIP template; general image-caption pairs keep their caption (so a
model can be pretrained on them, then fine-tuned on taxonomic text). Optional experience replay (BioCLIP 2):
general image-text pairs share the towers but go through their own visual projection (a copy of the original one)
and their own CLIP loss, weighted by ``replay_weight``. All randomness is keyed by stream position, and the
checkpoint stores each worker's position, so a resumed run takes the same path as an uninterrupted one (with the
same processes and workers). DDP via ``torchrun``; only rank 0 writes.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import load_torch, save_torch, write_json, write_text
from ecoalign.organism.train_data import CAPTION, MakeSample

log = logging.getLogger(__name__)

RUNS_DIR = Path("runs") / "train_organism"
RUNTIME_KEYS = ("max_steps", "device", "threads", "progress", "checkpoint_every", "log_every")  # may change on resume
PRECISIONS = ("auto", "fp32", "bf16", "amp")
METRIC_COLUMNS = ("step", "epoch", "loss", "species_loss", "replay_loss", "logit_scale", "lr", "images_per_s",
                  "val_loss")


def _log(msg: str) -> None:
    log.info("%s", msg)


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
def _config(cfg, overrides: Sequence[str], kwargs: dict) -> tuple[dict, dict]:
    """(config, the options this call sets): ``cfg`` (default: the shipped train_organism config) with the Hydra
    ``overrides`` and then ``kwargs`` applied. When resuming, an override is an option set by this call (checked
    against the saved run), so its Hydra-typed value joins ``kwargs``."""
    from omegaconf import DictConfig, OmegaConf

    from ecoalign.core.config import compose

    overrides = list(overrides)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise EcoalignInputError(f"unexpected arguments {bad}", expected="key=value Hydra overrides")
    if overrides and cfg is not None:
        raise EcoalignInputError("overrides are applied to the shipped config", expected="cfg=None with overrides, "
                                 "or the changes as keyword arguments")
    if cfg is None:
        cfg = compose("train_organism", overrides)
        if kwargs.get("resume"):
            kwargs = {**{k: cfg[k] for k in (o.split("=", 1)[0].lstrip("+~") for o in overrides)}, **kwargs}
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    unknown = sorted(set(kwargs) - set(c))
    if unknown:
        raise EcoalignInputError(f"unknown train-organism option(s) {unknown}", expected=f"keys of {sorted(c)}")
    c.update(kwargs)
    return c, kwargs


def _resolve_run(c: dict, kwargs: dict) -> tuple[Path, dict, bool]:
    import yaml

    from ecoalign.core.runs import resolve_run

    run, resuming = resolve_run(c.get("out"), c.get("resume"), RUNS_DIR)
    if not resuming:
        return run, c, False
    saved = yaml.safe_load((run / "config.yaml").read_text())
    changed = sorted(k for k in kwargs if k not in RUNTIME_KEYS + ("resume", "out") and kwargs[k] != saved.get(k))
    if changed:
        raise EcoalignInputError(f"cannot change {changed} when resuming", path=run / "config.yaml",
                                 expected=f"only runtime options {list(RUNTIME_KEYS)}; start a new run otherwise")
    saved["max_steps"] = None  # an early stop belongs to the session that asked for it
    applied = {k: v for k, v in kwargs.items() if k in RUNTIME_KEYS and v != saved.get(k)}
    for k, v in applied.items():
        log.warning("resumed run: %s changed from %r to %r", k, saved.get(k), v)
    saved.update(applied)
    return run, saved, True


def _validate(c: dict) -> None:
    from ecoalign.data.taxonomy import TEXT_TYPES

    if not c.get("curated"):
        raise EcoalignInputError("no training data given", expected="curated=<the --out directory of ecoalign curate, "
                                 "shards, a shard pattern or a caption table> (--data on the command line)")
    if c["text_type"] not in ("mixed", CAPTION, *TEXT_TYPES):
        raise EcoalignInputError(f"text_type={c['text_type']!r}",
                                 expected=f"'mixed', '{CAPTION}' (the plain .txt captions) or one of {TEXT_TYPES}")
    bad = [k for k in c.get("mixed_types") or () if k not in TEXT_TYPES]
    if bad:
        raise EcoalignInputError(f"mixed_types {bad}", expected=f"text types from {TEXT_TYPES}")
    for key in ("batch_size", "epochs"):
        if int(c[key]) < 1:
            raise EcoalignInputError(f"{key}={c[key]}", expected="a positive integer")
    if c.get("replay") and int(c["replay_batch_size"]) < 2:
        raise EcoalignInputError(f"replay_batch_size={c['replay_batch_size']}", expected="at least 2 (a CLIP loss)")
    if c.get("precision", "auto") not in PRECISIONS:
        raise EcoalignInputError(f"precision={c['precision']!r}", expected=" | ".join(PRECISIONS))
    for key in ("num_workers", "shuffle_buffer"):
        if int(c[key]) < (0 if key == "num_workers" else 1):
            raise EcoalignInputError(f"{key}={c[key]}", expected="a non-negative integer" if key == "num_workers"
                                     else "a positive integer")
    if c.get("threads") is not None and int(c["threads"]) < 1:
        raise EcoalignInputError(f"threads={c['threads']}", expected="a positive integer, or null (torch's choice)")


def _model_name(arch: str) -> str:
    """A bare architecture name means open_clip:ARCH; other encoder names pass through."""
    from ecoalign.encoders.organism import BIOCLIP

    if arch.startswith(("open_clip:", "hf-hub:", "local-dir:")) or arch == "bioclip" or Path(arch).is_dir():
        return BIOCLIP if arch == "bioclip" else arch
    return f"open_clip:{arch}"


# ---- training --------------------------------------------------------------------------------------------------
def train_organism(cfg=None, /, *, overrides: Sequence[str] = (), **kwargs) -> Path:
    """Train (or continue) an organism CLIP model; returns the run directory, whose ``encoder/`` loads with
    ``load_organism_encoder``.

    Python face of ``ecoalign train-organism``: keyword arguments are the keys of the train_organism config
    (the command's flags: ``curated``, ``arch``, ``weights``, ``epochs``, ..., ``out``, ``resume``), ``overrides``
    its trailing Hydra ``key=value`` arguments (keywords win over them). ``cfg``: a composed ``train_organism``
    config (or dict) instead of the shipped one."""
    import torch
    import yaml

    from ecoalign.encoders.organism import load_organism_encoder

    if kwargs.get("resume"):  # `--resume lr=1e-4`: the override is not a run directory
        from ecoalign.core.runs import split_resume_argument

        kwargs["resume"], overrides = split_resume_argument(kwargs["resume"], overrides)
    c, kwargs = _config(cfg, overrides, kwargs)
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
    if c.get("threads"):
        torch.set_num_threads(int(c["threads"]))
    from ecoalign.organism.stream import SampleStream, merge_positions
    from ecoalign.organism.train_sources import resolve_sources

    sources = resolve_sources(c["curated"], c.get("data_weights"), c["train_split"])
    replay_sources = resolve_sources(c["replay"]) if c.get("replay") else None
    batch, workers = int(c["batch_size"]), int(c["num_workers"])
    epoch_samples = int(c.get("epoch_samples") or sum(s.samples for s in sources))
    steps_per_epoch = epoch_samples // (batch * world)
    if steps_per_epoch == 0:
        raise EcoalignInputError(f"batch_size={batch} is larger than the {epoch_samples // world} training images "
                                 f"per process", path=c["curated"], expected="a smaller batch_size or more images")
    total_steps = steps_per_epoch * int(c["epochs"])
    stop_at = min(total_steps, int(c["max_steps"])) if c.get("max_steps") else total_steps
    if replay_sources is not None and sum(s.samples for s in replay_sources) < int(c["replay_batch_size"]):
        raise EcoalignInputError(f"{sum(s.samples for s in replay_sources)} general image-text pairs, fewer than "
                                 f"replay_batch_size={c['replay_batch_size']}", path=c["replay"])

    ckpt_path = run_dir / "checkpoints" / "last.pt"
    state = load_torch(ckpt_path) if resuming and ckpt_path.exists() else None
    encoder = load_organism_encoder(_model_name(str(c["arch"])), weights=c.get("weights"))
    start_info = {k: encoder.info.get(k) for k in ("arch", "weights", "weights_sha256", "random_weights")}
    if encoder.random_weights and not resuming and main:
        log.warning("training starts from RANDOM weights (%s, no weights): fine for tests and the demo world; give "
                    "a checkpoint to fine-tune a pretrained model", start_info["arch"])
    say(f"{epoch_samples} training images per epoch from {len(sources)} source(s) "
        f"({', '.join(f'{s.spec}: {s.samples}' for s in sources)}), {steps_per_epoch} steps/epoch x "
        f"{c['epochs']} epochs, batch {batch} x {world} process(es), text {c['text_type']}"
        + (f", replay {sum(s.samples for s in replay_sources)} pairs x{c['replay_weight']}" if replay_sources else ""))

    model = _contrastive_model_class()(encoder.model, replay=replay_sources is not None).to(device)
    if c["grad_checkpointing"]:
        encoder.model.set_grad_checkpointing(True)
    precision, autocast, channels_last = _precision(c.get("precision", "auto"), device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(_param_groups(model, float(c["weight_decay"])), lr=float(c["lr"]),
                                  betas=(0.9, 0.98), eps=1e-6)
    from open_clip.loss import ClipLoss
    from open_clip_train.scheduler import cosine_lr

    schedule = cosine_lr(optimizer, float(c["lr"]), int(c["warmup_steps"]), total_steps)
    loss_fn = ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world)
    scaler = torch.amp.GradScaler("cuda") if precision == "amp" and device.startswith("cuda") else None

    if main and not resuming:  # written once the set-up has succeeded, so a failed start leaves no run behind
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", yaml.safe_dump(c, sort_keys=False))
    step, rows, data_state = 0, [], {"positions": {}, "replay_positions": {}, "skipped": 0, "skipped_first": []}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, rows = int(state["step"]), list(state["metrics"])
        data_state = _check_data_state(state.get("data"), world, workers, ckpt_path) or data_state
        say(f"resuming {run_dir} at step {step} of {total_steps}")
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.startswith("cuda") else None)

    positions, replay_positions = data_state["positions"], data_state["replay_positions"]

    def checkpoint():
        everything = merge_positions(positions, world, workers)
        replay_all = merge_positions(replay_positions, world, workers) if replay_sources else {}
        if main:
            data = {"world": world, "workers": max(1, workers), "positions": everything,
                    "replay_positions": replay_all, "skipped": data_state["skipped"],
                    "skipped_first": data_state["skipped_first"]}
            save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else None, "step": step,
                        "metrics": rows, "data": data}, ckpt_path)
            _write_metrics(run_dir / "metrics.csv", rows)

    from tqdm.auto import tqdm

    bar = tqdm(total=stop_at, initial=step, desc="train-organism", unit="step",
               disable=not (main and c["progress"]))
    tf, tok = encoder.train_preprocess, encoder.tokenizer
    make = MakeSample(tf, c["text_type"], c["templates"], c.get("mixed_types"))

    def loader(srcs, size, start, sample_seed):
        stream = SampleStream(srcs, batch=size, seed=sample_seed, make_sample=make, tokenizer=tok,
                              shuffle_buffer=int(c["shuffle_buffer"]), rank=rank, world=world, workers=workers,
                              start=start, shift=step)
        return iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                                pin_memory=device.startswith("cuda"),
                                                persistent_workers=False))

    def take(it, where):
        images, tokens, report = next(it)
        where[report["worker"]] = report["position"]
        for event in report["skipped"]:
            data_state["skipped"] += 1
            if len(data_state["skipped_first"]) < 100:
                data_state["skipped_first"].append(event)
            if data_state["skipped"] <= 20 or data_state["skipped"] % 1000 == 0:  # the first ones, then a count
                log.warning("skipped a sample (%d so far): %s: %s (%s)", data_state["skipped"], event["where"],
                            event["reason"], event["source"])
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, tokens.to(device, non_blocking=True)

    species_iter = loader(sources, batch, positions, seed)
    replay_iter = loader(replay_sources, int(c["replay_batch_size"]), replay_positions, seed + 1) \
        if replay_sources else None
    t0, cpu0, images_done, tick = time.perf_counter(), time.process_time(), 0, (time.perf_counter(), step)
    model.train()
    while step < stop_at:
        epoch = step // steps_per_epoch
        schedule(step)
        images, tokens = take(species_iter, positions)
        r_images = r_tokens = None
        if replay_iter is not None:
            r_images, r_tokens = take(replay_iter, replay_positions)
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
    bar.close()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    if world > 1:
        torch.distributed.barrier()
    if step < total_steps:
        say(f"stopped at step {step} of {total_steps} (max_steps); continue with --resume {run_dir}")
    elif main:
        _finish(run_dir, encoder, model, c, start_info, step, rows, samples_total=epoch_samples, world=world,
                device=device, precision=precision, seconds=seconds, cpu_seconds=cpu_seconds,
                images_done=images_done * world, data_state=data_state,
                replay=None if replay_sources is None else sum(s.samples for s in replay_sources))
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


def _precision(precision: str, device: str):
    """(resolved precision, autocast context factory, channels-last?). fp32: no autocast; bf16: bfloat16 autocast
    (CUDA or CPU); amp: float16 autocast with a grad scaler on CUDA (open_clip's 'amp'), bfloat16 on CPU; auto:
    bf16 on a CUDA device that supports it, else amp, and fp32 on CPU. Channels-last on CUDA with autocast
    (the convolutional patch embedding runs faster in it)."""
    import torch

    cuda = device.startswith("cuda")
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "amp") if cuda else "fp32"
    if precision == "fp32":
        return precision, nullcontext, False
    dtype = torch.float16 if precision == "amp" and cuda else torch.bfloat16
    kind = "cuda" if cuda else "cpu"
    return precision, (lambda: torch.autocast(kind, dtype=dtype)), cuda


def _check_data_state(data: dict | None, world: int, workers: int, ckpt_path: Path) -> dict | None:
    """The saved stream positions, usable only with the same processes x workers (they key the shard split)."""
    if data is None:
        log.warning("%s has no data position (older checkpoint): the data stream starts again from its beginning",
                    ckpt_path)
        return None
    if (data["world"], data["workers"]) != (world, max(1, workers)):
        raise EcoalignInputError(f"this run was checkpointed with {data['world']} process(es) x {data['workers']} "
                                 f"DataLoader worker(s); now {world} x {max(1, workers)}", path=ckpt_path,
                                 expected="--resume with the same number of processes and --workers, which split "
                                          "the shards between them")
    return {**data, "positions": {g: p for g, p in data["positions"].items() if g // max(1, workers) == _rank()},
            "replay_positions": {g: p for g, p in data["replay_positions"].items()
                                 if g // max(1, workers) == _rank()}}


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _val_loss(model, encoder, c: dict, device, autocast, cap: int = 512) -> float | None:
    """Mean CLIP loss (open_clip's, as in training) on (up to ``cap`` images of) the validation split, in batches
    of ``batch_size``, taxonomic text in the first template. Rank 0 alone: a loss of its own, no gathering."""
    import itertools

    import torch
    from open_clip.loss import ClipLoss

    from ecoalign.data.taxonomy import TEMPLATES, text
    from ecoalign.organism.shards import iter_samples, shard_paths

    specs = [c["curated"]] if isinstance(c["curated"], (str, os.PathLike)) else list(c["curated"])
    if not (Path(specs[0]) / "curation.json").exists():  # validation split: of the first source, when curated
        return None
    paths = shard_paths(specs[0], c["val_split"])
    if not paths:
        return None
    batch, losses, loss_fn = int(c["batch_size"]), [], ClipLoss()
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
            losses.append(float(loss_fn(img, txt, clip.logit_scale.exp())))
    model.train()
    return float(np.mean(losses)) if losses else None


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def _finish(run_dir: Path, encoder, model, c: dict, start_info: dict, step: int, rows: list[dict], *, samples_total,
            world, device, precision, seconds, cpu_seconds, images_done, replay, data_state) -> None:
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
              "precision": precision, "threads": _threads(),
              "skipped_samples": data_state["skipped"], "skipped_first": data_state["skipped_first"],
              "grad_checkpointing": bool(c["grad_checkpointing"]), "seconds_this_session": seconds,
              "images_per_s_this_session": images_done / max(seconds, 1e-9),
              "cpu_seconds_this_session": cpu_seconds,  # this process only (not DataLoader workers)
              "final": rows[-1] if rows else None,
              "finished": datetime.now(timezone.utc).isoformat()}
    write_json(run_dir / "train_report.json", report)
    _log(f"done: {step} steps; encoder saved to {run_dir / 'encoder'}"
         + (" (trained from RANDOM initial weights)" if start_info["random_weights"] else ""))
