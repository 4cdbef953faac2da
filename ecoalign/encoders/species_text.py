"""Species tokens for the relevé encoder from an organism CLIP model's text tower.

Why: a learned per-species embedding knows nothing about a species absent from training; the text embedding of
its taxonomic string ("Plantae Tracheophyta Magnoliopsida Fagales Fagaceae Quercus ilex") places it beside its
relatives, so a relevé holding it still encodes sensibly (``SetReleveEncoder(species_text=...)``).
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


def species_text_embeddings(encoder, species: Sequence[str], taxa: Sequence, text_type: str = "taxonomic",
                            templates: Sequence[str] | None = None) -> np.ndarray:
    """(S, D) L2-normalised text embeddings, averaged over CLIP templates (zero-shot classifier practice)."""
    from ecoalign.data.taxonomy import TEMPLATES, text

    templates = list(templates or TEMPLATES)
    texts = [text(t, text_type) if t is not None else str(name) for name, t in zip(species, taxa)]
    emb = encoder.embed_text([tpl.format(x) for x in texts for tpl in templates])
    emb = emb.reshape(len(texts), len(templates), -1).mean(axis=1)
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


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
    emb = species_text_embeddings(encoder, species, taxa, cfg.get("text_type", "taxonomic"))
    kwargs = {k: v for k, v in cfg.items() if k not in ("organism_encoder", "organism_weights", "text_type")}
    kwargs["species_text"] = torch.from_numpy(emb)
    info = {"organism_encoder": encoder.identity(), "text_type": cfg.get("text_type", "taxonomic"),
            "species": len(species), "with_taxonomy": sum(t is not None for t in taxa), "notes": notes[:20]}
    return kwargs, info
