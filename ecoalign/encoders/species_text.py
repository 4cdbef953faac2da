"""Species tokens for the relevé encoder from an organism CLIP model's text tower.

Why: a learned per-species embedding knows nothing about a species absent from training; the text embedding of
its taxonomic string ("Plantae Tracheophyta Magnoliopsida Fagales Fagaceae Quercus ilex") places it beside its
relatives, so a relevé holding it still encodes sensibly (``SetReleveEncoder(species_text=...)``).
With ``text_ranks`` (e.g. species and genus) a species' text embedding is the concatenation of the embeddings of
its taxon seen at each rank (the taxonomic string cut there, as BioCLIP names a genus): members of a genus then
share a part of their text exactly, however the text encoder happens to place their full names.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError
from ecoalign.data.taxonomy import RANKS


def manifest_taxa(manifest, species: Sequence[str]) -> tuple[list, list[str]]:
    """Taxon per species name from the manifest's species table (None where the table lacks it), and notes."""
    import pandas as pd

    from ecoalign.data.taxonomy import Taxon

    if manifest.species is None:
        return [None] * len(species), ["the manifest has no species table: species are embedded by name only"]
    table = pd.read_csv(manifest.species.path)
    if "species" not in table.columns:
        raise EcoalignInputError("species table without a 'species' column", path=manifest.species.path,
                                 expected=f"columns {list(RANKS)} (+ common_name)")
    rows = {str(r["species"]).strip(): r for r in table.to_dict("records")}
    taxa, notes = [], []
    for name in species:
        row = rows.get(str(name).strip())
        if row is None:
            taxa.append(None)
            continue
        taxon, issues = Taxon.from_ranks({k: row.get(k) for k in RANKS}, common=row.get("common_name"))
        taxa.append(taxon if taxon.depth else None)
        notes += [f"{name}: {i}" for i in issues]
    missing = [n for n, t in zip(species, taxa) if t is None]
    if missing:
        notes.append(f"{len(missing)} species not in the species table, embedded by name only: {missing[:5]}")
    return taxa, notes


# keys of the organism_text config that say how species become text, not how the relevé encoder is built
TEXT_KEYS = ("organism_encoder", "organism_weights", "text_type", "text_ranks")


def species_text_embeddings(encoder, species: Sequence[str], taxa: Sequence, text_type: str = "taxonomic",
                            templates: Sequence[str] | None = None,
                            ranks: Sequence[str] = ("species",)) -> np.ndarray:
    """(S, D * len(ranks)) text embeddings averaged over CLIP templates (zero-shot classifier practice), one
    L2-normalised block per rank in ``ranks`` (the taxon truncated there; a name without a taxon is its bare name
    at species rank and its genus word above)."""
    from ecoalign.data.taxonomy import RANKS, TEMPLATES

    bad = [r for r in ranks if r not in RANKS]
    if not ranks or bad:
        raise EcoalignInputError(f"text ranks {list(ranks)}", where="releve_encoder.text_ranks",
                                 expected=f"one or more of {list(RANKS)}, e.g. [species, genus]")
    templates = list(templates or TEMPLATES)
    blocks = []
    for rank in ranks:
        texts = [_rank_text(name, t, rank, text_type) for name, t in zip(species, taxa)]
        emb = encoder.embed_text([tpl.format(x) for x in texts for tpl in templates])
        emb = emb.reshape(len(texts), len(templates), -1).mean(axis=1)
        blocks.append(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    return np.hstack(blocks).astype(np.float32)


def _rank_text(name: str, taxon, rank: str, text_type: str) -> str:
    """The text of a species seen at ``rank``: its taxon cut there (whole when shallower); a bare name (no taxon)
    is itself at species rank and its genus word above."""
    from ecoalign.data.taxonomy import RANKS, parse_name, text

    if taxon is None:
        return str(name) if rank == "species" else (parse_name(name)[0] or str(name))
    return text(taxon.truncate(rank) if taxon.depth > RANKS.index(rank) else taxon, text_type)


def releve_species_text(cfg: dict, manifest, species: Sequence[str]) -> tuple[dict, dict]:
    """Relevé-encoder kwargs with the species text embeddings resolved from ``cfg['organism_encoder']``, and a
    record of what was used (for the run report)."""
    import torch

    from ecoalign.encoders.organism import load_organism_encoder

    if cfg.get("kind") != "attention":
        raise EcoalignInputError(f"species text tokens need the set (attention) relevé encoder, not '{cfg.get('kind')}'",
                                 expected="releve_encoder=organism_text (kind: attention)")
    encoder = load_organism_encoder(cfg["organism_encoder"], weights=cfg.get("organism_weights"))
    taxa, notes = manifest_taxa(manifest, species)
    emb = species_text_embeddings(encoder, species, taxa, cfg.get("text_type", "taxonomic"),
                                  ranks=tuple(cfg.get("text_ranks") or ("species",)))
    kwargs = {k: v for k, v in cfg.items() if k not in TEXT_KEYS}
    kwargs["species_text"] = torch.from_numpy(emb)
    info = {"organism_encoder": encoder.identity(), "text_type": cfg.get("text_type", "taxonomic"),
            "text_ranks": list(cfg.get("text_ranks") or ("species",)),
            "species": len(species), "with_taxonomy": sum(t is not None for t in taxa), "notes": notes[:20]}
    return kwargs, info
