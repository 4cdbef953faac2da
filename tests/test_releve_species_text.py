"""Relevé species tokens from an organism CLIP text encoder (releve_encoder=organism_text) in adapt."""
from __future__ import annotations

import json
from types import SimpleNamespace

import conftest
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ecoalign.core.errors import EcoalignInputError
from ecoalign.encoders.organism import load_organism_encoder
from ecoalign.encoders.releve import SetReleveEncoder
from ecoalign.encoders.species_text import manifest_taxa, species_text_embeddings

TABLE = pd.DataFrame([
    {"species": "Quercus robur", "kingdom": "Plantae", "phylum": "Tracheophyta", "class": "Magnoliopsida",
     "order": "Fagales", "family": "Fagaceae", "genus": "Quercus", "common_name": "pedunculate oak"},
    {"species": "Quercus ilex", "kingdom": "Plantae", "phylum": "Tracheophyta", "class": "Magnoliopsida",
     "order": "Fagales", "family": "Fagaceae", "genus": "Quercus", "common_name": "holm oak"},
    {"species": "Pinus sylvestris", "kingdom": "Plantae", "phylum": "Tracheophyta", "class": "Pinopsida",
     "order": "Pinales", "family": "Pinaceae", "genus": "Pinus", "common_name": "Scots pine"},
    {"species": "Poa annua", "kingdom": "Plantae", "phylum": "Tracheophyta", "class": "Liliopsida",
     "order": "Poales", "family": "Poaceae", "genus": "Poa", "common_name": "annual meadow-grass"},
])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("organism") / "tiny"
    load_organism_encoder("open_clip:ecoalign-tiny-vit").save(folder)
    return folder


def test_species_text_tokens_and_unseen_species(tiny_dir, tmp_path):
    TABLE.to_csv(tmp_path / "species.csv", index=False)
    manifest = SimpleNamespace(species=SimpleNamespace(path=tmp_path / "species.csv"))
    seen = ["Quercus robur", "Pinus sylvestris", "Poa annua", "Mystery plant"]
    taxa, notes = manifest_taxa(manifest, seen)
    assert [t is not None for t in taxa] == [True, True, True, False]
    assert taxa[0].order == "Fagales" and any("by name only" in n for n in notes)
    enc = load_organism_encoder(tiny_dir)
    text = species_text_embeddings(enc, seen, taxa)
    assert text.shape == (4, 64) and np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)

    torch.manual_seed(0)
    releve = SetReleveEncoder(4, 16, hidden=32, heads=2, dropout=0.0, species_text=torch.from_numpy(text)).eval()
    with_residual = SetReleveEncoder(4, 16, hidden=32, heads=2, dropout=0.0, species_text=torch.from_numpy(text),
                                     species_residual=True)
    with_residual.load_state_dict(releve.state_dict(), strict=False)
    assert torch.equal(with_residual.species_tokens(), releve.species_tokens())  # the correction starts at zero
    cover = torch.tensor([[50.0, 0, 0, 0], [0, 30.0, 5.0, 0]])
    assert releve(cover).shape == (2, 16)

    # a relevé of a species never seen in training, encoded through its taxonomic text
    unseen_taxa, _ = manifest_taxa(manifest, ["Quercus ilex"])
    new_list = torch.from_numpy(np.vstack([species_text_embeddings(enc, ["Quercus ilex"], unseen_taxa), text[1:3]]))
    with torch.no_grad():
        z_unseen = releve(torch.tensor([[50.0, 0, 0]]), species_text=new_list)
        z_oak, z_pine, z_grass = releve(torch.tensor([[50.0, 0, 0, 0], [0, 50.0, 0, 0], [0, 0, 50.0, 0]]))
    cos = torch.nn.functional.cosine_similarity
    assert cos(z_unseen, z_oak[None]) > cos(z_unseen, z_pine[None])
    assert cos(z_unseen, z_oak[None]) > cos(z_unseen, z_grass[None])

    with pytest.raises(EcoalignInputError, match="species text embeddings of shape"):
        SetReleveEncoder(5, 16, hidden=32, heads=2, species_text=torch.from_numpy(text))
    with pytest.raises(EcoalignInputError, match="one embedding per training species"):
        SetReleveEncoder(4, 16, hidden=32, heads=2)(cover, species_text=torch.from_numpy(text))


def test_rank_blocks_share_the_genus_part_of_congeners(tiny_dir, tmp_path):
    """text_ranks=[species, genus]: the species block is the plain text embedding, the genus block is the same for
    congeners (and for a bare name, through its genus word) and differs between genera."""
    TABLE.to_csv(tmp_path / "species.csv", index=False)
    manifest = SimpleNamespace(species=SimpleNamespace(path=tmp_path / "species.csv"))
    names = ["Quercus robur", "Quercus ilex", "Pinus sylvestris"]
    taxa, _ = manifest_taxa(manifest, names)
    enc = load_organism_encoder(tiny_dir)
    plain = species_text_embeddings(enc, names, taxa)
    both = species_text_embeddings(enc, names, taxa, ranks=("species", "genus"))
    assert both.shape == (3, 128)
    np.testing.assert_allclose(both[:, :64], plain, atol=1e-6)
    genus = both[:, 64:]
    np.testing.assert_allclose(genus[0], genus[1], atol=1e-6)
    assert np.abs(genus[0] - genus[2]).max() > 1e-3 and np.abs(both[0] - both[1]).max() > 1e-3
    bare = species_text_embeddings(enc, ["Quercus ilex", "Quercus"], [None, None], ranks=("species", "genus"))
    np.testing.assert_allclose(bare[0, 64:], bare[1, 64:], atol=1e-6)
    with pytest.raises(EcoalignInputError, match="text ranks"):
        species_text_embeddings(enc, names, taxa, ranks=("subgenus",))


@pytest.mark.slow
def test_adapt_with_organism_text_releve_encoder(tiny_dir, tmp_path):
    """adapt on a small generated world whose manifest has a species table (7 ranks + common names)."""
    import ecoalign

    manifest = conftest.generated_world_manifest(tmp_path, "text-world", n_plots=32, size_m=1000.0,
                                                 resolution_m=4.0, seed=4)
    body = yaml.safe_load(manifest.read_text())
    body["species"] = {"path": "species.csv"}
    manifest.write_text(yaml.safe_dump(body))
    run = ecoalign.adapt([f"data.manifest={manifest}", "backbone.size=small", "trainer=quick", "trainer.epochs=3",
                          "trainer.baselines=false", "data.augmentations=1", "data.block_size_m=250",
                          "releve_encoder=organism_text", f"releve_encoder.organism_encoder={tiny_dir}",
                          "releve_encoder.species_residual=true"], out=str(tmp_path / "run"))
    report = json.loads((run / "report.json").read_text())
    info = report["releve_species_text"]
    assert info["organism_encoder"]["kind"] == "organism_clip" and info["text_type"] == "taxonomic"
    assert info["text_ranks"] == ["species", "genus"]
    assert info["species"] > 5 and info["with_taxonomy"] == info["species"]
    saved = json.loads((run / "encoder" / "encoder.json").read_text())["releve_encoder"]
    assert saved["organism_encoder"] == str(tiny_dir) and saved["kind"] == "attention"
    assert saved["text_ranks"] == ["species", "genus"] and saved["species_query_weight"] > 0  # the defaults
    state = torch.load(run / "encoder" / "releve_encoder.pt", weights_only=True)
    assert state["species_text"].shape == (info["species"], 2 * 64) and "text_proj.weight" in state
    assert 0.0 <= report["variants"][0]["test"]["image_to_releve_R@10"] <= 1.0


def test_set_encoder_makes_tokens_of_present_species_only_and_equals_attention_over_the_whole_checklist():
    """The gathered (present-only) forward is the masked attention over every checklist species, an empty relevé
    included (it attends to all of them); its tokens are as wide as the longest relevé, not the checklist."""
    from ecoalign.encoders.releve import cover_features

    torch.manual_seed(0)
    enc = SetReleveEncoder(300, 16, hidden=32, heads=4, dropout=0.1).eval()
    cover = torch.rand(24, 300) * (torch.rand(24, 300) < 0.02) * 60
    cover[5] = 0.0
    cover[7, 0] = 100.0

    def masked_over_checklist(c):
        feats = cover_features(c)
        tokens = enc.species_tokens()[None] + enc.cover_proj(feats[..., None])
        absent = feats <= 0
        absent[absent.all(dim=1)] = False
        pooled, _ = enc.attn(enc.query.expand(len(c), -1, -1), tokens, tokens, key_padding_mask=absent)
        return enc.out(pooled[:, 0])

    seen = []
    hook = enc.attn.register_forward_hook(lambda m, args, out: seen.append(args[1].shape))
    with torch.no_grad():
        torch.testing.assert_close(enc(cover), masked_over_checklist(cover), atol=1e-5, rtol=1e-5)
        full = enc(cover[[0, 1, 2, 3, 4, 6, 7]])
    hook.remove()
    assert seen[0][1] == 300 and seen[-1][1] == int((cover[[0, 1, 2, 3, 4, 6, 7]] > 0).sum(1).max()) < 20
    assert torch.isfinite(full).all()
