"""Contrastive losses between image and relevé embeddings, and the anchor that keeps DOFA's geometry.

* SigLIP: pairwise sigmoid loss with learnable temperature and bias (default).
* InfoNCE: symmetric cross-entropy over the batch with a learnable temperature (CLIP).
* Anchor: MSE between the batch cosine-similarity matrices of adapted and frozen image embeddings.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
