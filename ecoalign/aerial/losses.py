"""Contrastive losses between image and relevé embeddings, and the anchor that keeps DOFA's geometry.

* SigLIP: pairwise sigmoid loss with learnable temperature and bias (default).
* InfoNCE: symmetric cross-entropy over the batch with a learnable temperature (CLIP).
* Anchor: MSE between the batch cosine-similarity matrices of adapted and frozen image embeddings.
* Species query: presence of each training species at each plot from the image's similarity to that species'
  one-species relevé, the query a zero-shot map makes (``aerial.zero_shot``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ecoalign.encoders.releve import one_species_covers


class SigLIPLoss(nn.Module):
    def __init__(self, init_temperature: float = 10.0, init_bias: float = -10.0):
        super().__init__()
        self.log_t = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, img: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        logits = F.normalize(img, dim=-1) @ F.normalize(rel, dim=-1).T * self.log_t.exp() + self.bias
        labels = 2 * torch.eye(len(img), device=img.device) - 1
        return -F.logsigmoid(labels * logits).sum() / len(img)


class InfoNCELoss(nn.Module):
    def __init__(self, init_temperature: float = 0.07):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(self, img: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        logits = F.normalize(img, dim=-1) @ F.normalize(rel, dim=-1).T * self.log_scale.exp().clamp(max=100.0)
        target = torch.arange(len(img), device=img.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class SpeciesQueryLoss(nn.Module):
    """Sigmoid loss of species presence on (image, one-species relevé) similarity, with learnable temperature and
    bias; summed over species and averaged over plots, like SigLIP over pairs.

    Why: the contrastive loss only ever shows the relevé encoder whole-plot relevés, so the one-species relevé a
    zero-shot map is asked for is out of its training distribution (on the demo world its similarity ranks the
    plots of a *seen* species at AUC ~0.68). Training that query to score presence, through the text projection of
    the species tokens, is what an unseen species' query then inherits.

    Cost: one one-species relevé per species (one token each: the set encoder gathers present species only) and
    B x S logits. With more than ``max_species`` species, a training step scores a random subset of that many
    (drawn from torch's global generator, which adapt checkpoints, so resume stays exact) and scales the sum by
    S / subset, an unbiased estimate of the full loss; evaluation scores every species, in chunks of
    ``max_species`` without gradients.
    """

    def __init__(self, cover: float, init_temperature: float = 10.0, init_bias: float = -5.0,
                 max_species: int = 256):
        super().__init__()
        if max_species < 1:
            from ecoalign.core.errors import EcoalignInputError

            raise EcoalignInputError(f"max_species={max_species}", where="releve_encoder.species_query_max_species",
                                     expected="a positive number of species scored per step")
        self.cover = float(cover)
        self.max_species = int(max_species)
        self.log_t = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, img: torch.Tensor, releve_encoder: nn.Module, cover: torch.Tensor) -> torch.Tensor:
        n = cover.shape[1]
        if n <= self.max_species:
            return self._loss(img, releve_encoder, cover, torch.arange(n, device=img.device))
        if torch.is_grad_enabled():
            chosen = torch.randperm(n)[: self.max_species].to(img.device)
            return self._loss(img, releve_encoder, cover, chosen) * (n / self.max_species)
        return sum(self._loss(img, releve_encoder, cover, torch.arange(i, min(i + self.max_species, n),
                                                                       device=img.device))
                   for i in range(0, n, self.max_species))

    def _loss(self, img, releve_encoder, cover, species: torch.Tensor) -> torch.Tensor:
        """Summed loss over ``species`` (indices), averaged over plots: only those species' relevés are encoded."""
        queries = releve_encoder(one_species_covers(species, cover.shape[1], self.cover))  # (k, D)
        logits = F.normalize(img, dim=-1) @ F.normalize(queries, dim=-1).T * self.log_t.exp() + self.bias
        return F.binary_cross_entropy_with_logits(logits, (cover[:, species] > 0).float(), reduction="sum") / len(img)


# `name` -> class, for configs that name a loss instead of giving its `_target_`
CONTRASTIVE_LOSSES = {"siglip": "ecoalign.aerial.losses.SigLIPLoss", "infonce": "ecoalign.aerial.losses.InfoNCELoss"}


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x, dim=-1)
    return x @ x.T


def anchor_loss(adapted: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of pairwise cosine similarities: the adapted space keeps DOFA's neighbourhoods."""
    return F.mse_loss(cosine_similarity_matrix(adapted), cosine_similarity_matrix(frozen))


def build_contrastive_loss(cfg: dict) -> nn.Module:
    """The contrastive loss a config describes (``_target_`` or ``name``), built with ``hydra.utils.instantiate``;
    ``anchor_weight`` belongs to the training objective, not to the loss module."""
    from hydra.utils import instantiate

    params = {k: v for k, v in cfg.items() if k not in ("_target_", "name", "anchor_weight")}
    target = cfg.get("_target_") or CONTRASTIVE_LOSSES.get(cfg.get("name"))
    if target is None:
        from ecoalign.core.errors import EcoalignInputError

        raise EcoalignInputError(f"unknown loss '{cfg.get('name')}'", where="loss",
                                 expected=f"a _target_ class or a name among {sorted(CONTRASTIVE_LOSSES)}")
    return instantiate({"_target_": target, **params})
