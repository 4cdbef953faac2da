"""Relevé encoders: a species-cover vector -> a point in the shared image/relevé space."""
from __future__ import annotations

import torch
from torch import nn


def cover_features(cover_percent: torch.Tensor) -> torch.Tensor:
    """log1p of percent cover, scaled to about [0, 1]: dominant species count more, without swamping the rest."""
    return torch.log1p(cover_percent.clamp_min(0)) / torch.log1p(torch.tensor(100.0))


def one_species_covers(species: torch.Tensor, n_species: int, cover: float) -> torch.Tensor:
    """(len(species), n_species) percent covers: one relevé per listed species (indices) at ``cover``, the query a
    zero-shot map makes of a bare species name."""
    single = torch.zeros(len(species), n_species, device=species.device)
    single[torch.arange(len(species), device=species.device), species] = float(cover)
    return single


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
    With ``species_text`` (S, T) fixed text embeddings of the species (``encoders.species_text``), a species
    token is a learned linear projection of its text embedding (plus, with ``species_residual``, a learned
    per-species correction starting at zero; with ``standardise_text``, of the text embedding standardised with the
    training species' mean and sd, kept as buffers); ``forward(cover, species_text=...)`` then encodes relevés over
    another species list, species unseen in training included.
    """

    def __init__(self, n_species: int, out_dim: int, hidden: int = 256, heads: int = 4, dropout: float = 0.1,
                 species_embeddings: torch.Tensor | None = None, species_text: torch.Tensor | None = None,
                 species_residual: bool = False, standardise_text: bool = False):
        super().__init__()
        self.species = self.text_proj = self.residual = None
        if species_text is None:
            self.species = nn.Embedding(n_species, hidden)
            if species_embeddings is not None:
                self.species.weight.data.copy_(species_embeddings)
        else:
            species_text = torch.as_tensor(species_text, dtype=torch.float32)
            if species_text.ndim != 2 or species_text.shape[0] != n_species:
                from ecoalign.core.errors import EcoalignInputError

                raise EcoalignInputError(f"species text embeddings of shape {tuple(species_text.shape)}",
                                         expected=f"({n_species} species, text dim)")
            self.register_buffer("species_text", species_text)
            if standardise_text:  # text embeddings of related taxa differ by little: project their differences
                self.register_buffer("text_mean", species_text.mean(0))
                self.register_buffer("text_std", species_text.std(0).clamp_min(1e-6) if len(species_text) > 1
                                     else torch.ones(species_text.shape[1]))
            self.text_proj = nn.Linear(species_text.shape[1], hidden)
            if species_residual:
                self.residual = nn.Embedding(n_species, hidden)
                nn.init.zeros_(self.residual.weight)
        self.cover_proj = nn.Linear(1, hidden)
        self.query = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, out_dim))

    def species_tokens(self, species_text: torch.Tensor | None = None) -> torch.Tensor:
        """(S, H) species tokens: learned, or projected text embeddings (of another species list if given)."""
        if self.text_proj is None:
            if species_text is not None:
                from ecoalign.core.errors import EcoalignInputError

                raise EcoalignInputError("this relevé encoder learned one embedding per training species",
                                         expected="releve_encoder=organism_text to encode other species lists")
            return self.species.weight
        if species_text is not None:
            return self.text_proj(self._standardised(torch.as_tensor(species_text, dtype=torch.float32)))
        tokens = self.text_proj(self._standardised(self.species_text))
        return tokens + self.residual.weight if self.residual is not None else tokens

    def _standardised(self, text: torch.Tensor) -> torch.Tensor:
        """Text embeddings standardised with the training species' mean and sd (when ``standardise_text``)."""
        mean = getattr(self, "text_mean", None)
        return text if mean is None else (text - mean) / self.text_std

    def forward(self, cover_percent: torch.Tensor, species_text: torch.Tensor | None = None) -> torch.Tensor:
        """Only the species present in a relevé become tokens, gathered (in checklist order) and padded to the
        longest relevé of the batch: memory B x k x H for at most k species a relevé, not B x S x H for a
        checklist of S (absent species were masked out of the attention anyway)."""
        feats = cover_features(cover_percent)  # (B, S)
        present = feats > 0
        present[~present.any(dim=1)] = True  # an empty relevé attends to everything rather than to nothing
        k = int(present.sum(dim=1).max()) if len(feats) else 1
        # a stable sort puts each relevé's present species first, in checklist order
        idx = torch.sort((~present).to(torch.uint8), dim=1, stable=True).indices[:, :k]  # (B, k)
        tokens = self.species_tokens(species_text)[idx] + self.cover_proj(feats.gather(1, idx)[..., None])
        padding = ~present.gather(1, idx)
        pooled, _ = self.attn(self.query.expand(feats.shape[0], -1, -1), tokens, tokens, key_padding_mask=padding)
        return self.out(pooled[:, 0])


# `kind` -> class, for configs that name a relevé encoder by kind instead of `_target_`
RELEVE_ENCODERS = {"mlp": "ecoalign.encoders.releve.MLPReleveEncoder",
                   "attention": "ecoalign.encoders.releve.SetReleveEncoder"}


def build_releve_encoder(cfg: dict, n_species: int, out_dim: int) -> nn.Module:
    """The relevé encoder a config describes (``_target_`` or ``kind``), built with ``hydra.utils.instantiate``."""
    from hydra.utils import instantiate

    from ecoalign.core.errors import EcoalignInputError

    params = {k: v for k, v in cfg.items() if k not in ("_target_", "kind", "species_text", "train_subsample",
                                                          "species_query_weight", "species_query_max_species")}
    target = cfg.get("_target_") or RELEVE_ENCODERS.get(cfg.get("kind"))
    if target is None:
        raise EcoalignInputError(f"unknown relevé encoder '{cfg.get('kind')}'", where="releve_encoder",
                                 expected=f"a _target_ class or a kind among {sorted(RELEVE_ENCODERS)}")
    objects = {"species_text": cfg["species_text"]} if cfg.get("species_text") is not None else {}  # tensors
    return instantiate({"_target_": target, **params}, n_species=n_species, out_dim=out_dim, **objects)
