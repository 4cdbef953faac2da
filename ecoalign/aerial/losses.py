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


CONTRASTIVE_LOSSES = {"siglip": SigLIPLoss, "infonce": InfoNCELoss}


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x, dim=-1)
    return x @ x.T


def anchor_loss(adapted: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of pairwise cosine similarities: the adapted space keeps DOFA's neighbourhoods."""
    return F.mse_loss(cosine_similarity_matrix(adapted), cosine_similarity_matrix(frozen))


def build_contrastive_loss(name: str, **kwargs) -> nn.Module:
    if name not in CONTRASTIVE_LOSSES:
        from ecoalign.core.errors import EcoalignInputError

        raise EcoalignInputError(f"unknown loss '{name}'", expected=f"one of {sorted(CONTRASTIVE_LOSSES)}")
    return CONTRASTIVE_LOSSES[name](**kwargs)
