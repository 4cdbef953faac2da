"""Training one alignment (adapter + relevé encoder) on cached backbone embeddings, resumable epoch by epoch."""
from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecoalign.aerial.losses import SpeciesQueryLoss, anchor_loss, build_contrastive_loss
from ecoalign.aerial.retrieval import anchor_fidelity, retrieval_recall
from ecoalign.core.io import atomic_path, load_torch, save_torch
from ecoalign.encoders.adapter import ImageAdapter
from ecoalign.encoders.releve import build_releve_encoder

_log = logging.getLogger(__name__)


@dataclass
class AlignmentData:
    """Everything an alignment trains on, in memory: frozen embeddings per view, covers, split labels."""

    frozen: torch.Tensor  # (N, A, D)
    cover: torch.Tensor  # (N, S) percent
    split: np.ndarray  # (N,) 'train' | 'val' | 'test'

    def rows(self, split: str) -> torch.Tensor:
        return torch.from_numpy(np.flatnonzero(self.split == split))


class AlignmentModel(nn.Module):
    """Image tower (adapter, optional projection) and relevé tower, with the loss's learnable scalars.

    ``objective="species"`` is the BotaSP baseline instead: the same adapter trained with a supervised
    multi-label head that predicts which species are present, no relevé encoder and no contrast.
    ``releve_encoder.species_query_weight`` > 0 adds that weight times ``SpeciesQueryLoss`` (one-species relevés
    as presence queries, at the cover a zero-shot map gives a bare species name) to the contrastive loss.
    """

    def __init__(self, dim: int, n_species: int, *, proj_dim: int | None, adapter_mlp_hidden: int,
                 releve_encoder: dict, loss: dict, train_adapter: bool = True, objective: str = "contrastive"):
        super().__init__()
        out_dim = proj_dim or dim
        self.objective = objective
        self.query_weight = 0.0
        self.adapter = ImageAdapter(dim, adapter_mlp_hidden)
        self.adapter.requires_grad_(train_adapter)
        self.image_proj = nn.Linear(dim, out_dim) if proj_dim else nn.Identity()
        if objective == "species":
            self.species_head = nn.Linear(out_dim, n_species)
            return
        self.releve_encoder = build_releve_encoder(dict(releve_encoder), n_species, out_dim)
        self.contrastive = build_contrastive_loss(dict(loss))
        self.query_weight = float(releve_encoder.get("species_query_weight") or 0.0)
        if self.query_weight > 0:
            from ecoalign.aerial.zero_shot import SPECIES_COVER

            self.species_query = SpeciesQueryLoss(SPECIES_COVER,
                                                  max_species=int(releve_encoder.get("species_query_max_species") or 256))

    def encode_image(self, frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        adapted = self.adapter(frozen)
        return adapted, self.image_proj(adapted)

    def losses(self, frozen: torch.Tensor, cover: torch.Tensor, anchor_weight: float) -> dict[str, torch.Tensor]:
        adapted, img = self.encode_image(frozen)
        if self.objective == "species":
            contrastive = F.binary_cross_entropy_with_logits(self.species_head(img), (cover > 0).float())
        else:
            contrastive = self.contrastive(img, self.releve_encoder(cover))
        anchor = anchor_loss(adapted, frozen) if anchor_weight > 0 else torch.zeros((), device=frozen.device)
        parts = {"loss": contrastive + anchor_weight * anchor, "contrastive": contrastive, "anchor": anchor}
        if self.objective == "contrastive" and self.query_weight > 0:
            parts["species_query"] = self.species_query(img, self.releve_encoder, cover)
            parts["loss"] = parts["loss"] + self.query_weight * parts["species_query"]
        return parts


def evaluate(model: AlignmentModel, data: AlignmentData, rows: torch.Tensor, anchor_weight: float) -> dict[str, float]:
    """Loss, retrieval and fidelity on the identity view of the given plots."""
    model.eval()
    with torch.no_grad():
        frozen = data.frozen[rows, 0]
        cover = data.cover[rows]
        parts = model.losses(frozen, cover, anchor_weight)
        adapted, img = model.encode_image(frozen)
        rel = model.releve_encoder(cover) if model.objective == "contrastive" else None
    out = {k: float(v) for k, v in parts.items()}
    if rel is not None:  # the supervised baseline has no relevé embedding to retrieve
        out.update(retrieval_recall(img, rel))
    out["fidelity"] = anchor_fidelity(adapted, frozen)
    return out


def subsample_releves(cover: torch.Tensor, rate: float) -> torch.Tensor:
    """A share ``rate`` of the relevés reduced to a random subset of their species (each kept with a probability
    drawn uniformly per relevé, at least one kept), so that relevés of one or a few species, what a zero-shot
    query names, are in the training distribution of the relevé encoder."""
    if rate <= 0:
        return cover
    present = cover > 0
    chosen = torch.rand(cover.shape[0], 1) < rate
    keep = torch.rand_like(cover) < torch.rand(cover.shape[0], 1)
    one = torch.zeros_like(present)  # one present species of each relevé, at random
    one.scatter_(1, torch.multinomial(present.float() + 1e-9, 1), True)
    keep = (keep & present) | (one & present)
    return torch.where(chosen & ~keep, torch.zeros_like(cover), cover)


def train_alignment(name: str, data: AlignmentData, *, folder: Path, model_kwargs: dict, anchor_weight: float,
                    train_adapter: bool, epochs: int, batch_size: int, lr: float, weight_decay: float, patience: int,
                    seed: int, progress: bool = True, log=None, on_epoch_end=None,
                    objective: str = "contrastive", releve_subsample: float = 0.0) -> dict:
    """Train (or resume) one variant; keep the best epoch by validation loss; return its test metrics.
    ``releve_subsample``: see ``subsample_releves`` (training batches only)."""
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    ckpt_path = folder / "checkpoint.pt"
    torch.manual_seed(seed)
    model = AlignmentModel(data.frozen.shape[-1], data.cover.shape[1], train_adapter=train_adapter,
                           objective=objective, **model_kwargs)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    state = {"epoch": 0, "best_val": float("inf"), "best_epoch": 0, "bad_epochs": 0, "done": False, "history": [],
             "train_seconds": 0.0, "train_plots": 0}
    if ckpt_path.exists():
        ckpt = load_torch(ckpt_path)
        model.load_state_dict(ckpt["model"])
        optim.load_state_dict(ckpt["optim"])
        state = ckpt["state"]
        torch.set_rng_state(ckpt["torch_rng"])
        if not state["done"]:
            (log or _log.info)(f"[{name}] resuming after epoch {state['epoch']}")
    best_path = folder / "best.pt"
    train_rows, val_rows = data.rows("train"), data.rows("val")
    n_views = data.frozen.shape[1]
    bar = tqdm(total=epochs, initial=state["epoch"], desc=f"align {name}", unit="epoch", disable=not progress,
               dynamic_ncols=True)
    while not state["done"] and state["epoch"] < epochs:
        model.train()
        started = time.perf_counter()
        order = train_rows[torch.randperm(len(train_rows))]
        views = torch.randint(0, n_views, (len(order),))
        total, batches = 0.0, 0
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            if len(idx) < 2:
                continue
            cover = subsample_releves(data.cover[idx], releve_subsample) if objective == "contrastive" else data.cover[idx]
            parts = model.losses(data.frozen[idx, views[s:s + batch_size]], cover, anchor_weight)
            optim.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optim.step()
            total += float(parts["loss"].detach())
            batches += 1
        state["train_seconds"] += time.perf_counter() - started
        state["train_plots"] += len(order)
        val = evaluate(model, data, val_rows, anchor_weight)
        state["epoch"] += 1
        row = {"variant": name, "epoch": state["epoch"], "train_loss": total / max(batches, 1),
               "val_loss": val["loss"], "val_contrastive": val["contrastive"], "val_anchor": val["anchor"],
               "val_R@1": val.get("image_to_releve_R@1"), "val_R@10": val.get("image_to_releve_R@10"),
               "val_fidelity": val["fidelity"]}
        state["history"].append(row)
        if val["loss"] < state["best_val"] - 1e-6:
            state.update(best_val=val["loss"], best_epoch=state["epoch"], bad_epochs=0)
            save_torch(model.state_dict(), best_path)
        else:
            state["bad_epochs"] += 1
            if state["bad_epochs"] >= patience:
                state["done"] = True  # early stop; reaching `epochs` is not "done", so a resume may raise it
        save_torch({"model": model.state_dict(), "optim": optim.state_dict(), "state": state,
                    "torch_rng": torch.get_rng_state()}, ckpt_path)
        if on_epoch_end is not None:
            on_epoch_end(row)  # after the checkpoint: a callback that stops the job loses nothing
        bar.update(1)
        bar.set_postfix(val_loss=f"{val['loss']:.3f}", fidelity=f"{val['fidelity']:.2f}")
    bar.close()

    model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True))
    test = evaluate(model, data, data.rows("test"), anchor_weight)
    _write_history(folder / "metrics.csv", state["history"])
    return {"variant": name, "objective": objective, "anchor_weight": anchor_weight, "train_adapter": train_adapter,
            "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
            "train_plots_per_second": state["train_plots"] / state["train_seconds"] if state["train_seconds"] else None,
            "test": test, "model": model}


def _write_history(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
