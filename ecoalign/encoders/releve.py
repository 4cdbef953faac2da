"""Relevé encoders: a species-cover vector -> a point in the shared image/relevé space."""
from __future__ import annotations

import torch
from torch import nn


def cover_features(cover_percent: torch.Tensor) -> torch.Tensor:
    """log1p of percent cover, scaled to about [0, 1]: dominant species count more, without swamping the rest."""
    return torch.log1p(cover_percent.clamp_min(0)) / torch.log1p(torch.tensor(100.0))


class MLPReleveEncoder(nn.Module):
    """An MLP over the whole species-cover vector (BotaCLIP's relevé encoder)."""

    def __init__(self, n_species: int, out_dim: int, hidden: int = 512, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        blocks, d = [], n_species
        for _ in range(layers - 1):
            blocks += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout)]
            d = hidden
        blocks.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*blocks)

    def forward(self, cover_percent: torch.Tensor) -> torch.Tensor:
        return self.net(cover_features(cover_percent))


class SetReleveEncoder(nn.Module):
    """A relevé as a set of (species, cover) items, pooled by attention: order-free and sparse-friendly.

    Each present species contributes its learned embedding scaled by its cover feature; a learned query
    attends over the present species only, so plots with very different species counts encode comparably.
    """

    def __init__(self, n_species: int, out_dim: int, hidden: int = 256, heads: int = 4, dropout: float = 0.1,
                 species_embeddings: torch.Tensor | None = None):
        super().__init__()
        self.species = nn.Embedding(n_species, hidden)
        if species_embeddings is not None:
            self.species.weight.data.copy_(species_embeddings)
        self.cover_proj = nn.Linear(1, hidden)
        self.query = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, out_dim))

    def forward(self, cover_percent: torch.Tensor) -> torch.Tensor:
        feats = cover_features(cover_percent)  # (B, S)
        tokens = self.species.weight[None] + self.cover_proj(feats[..., None])  # (B, S, H)
        absent = feats <= 0
        absent[absent.all(dim=1)] = False  # an empty relevé attends to everything rather than to nothing
        pooled, _ = self.attn(self.query.expand(feats.shape[0], -1, -1), tokens, tokens, key_padding_mask=absent)
        return self.out(pooled[:, 0])


RELEVE_ENCODERS = {"mlp": MLPReleveEncoder, "attention": SetReleveEncoder}


def build_releve_encoder(kind: str, n_species: int, out_dim: int, **kwargs) -> nn.Module:
    if kind not in RELEVE_ENCODERS:
        from ..errors import EcoalignInputError

        raise EcoalignInputError(f"unknown relevé encoder '{kind}'", expected=f"one of {sorted(RELEVE_ENCODERS)}")
    return RELEVE_ENCODERS[kind](n_species, out_dim, **kwargs)
