"""Taxon cleaning and text forms: the messy spellings real tables hold, and the strings models train on."""
from __future__ import annotations

import math

import pytest

from ecoalign.core.errors import EcoalignInputError
from ecoalign.data.taxonomy import RANKS, TEMPLATES, TEXT_TYPES, Taxon, captions, text

RAVEN = {"kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes",
         "family": "Corvidae", "genus": "Corvus", "species": "corax"}


def test_full_taxon_views_and_every_text_form():
    t, notes = Taxon.from_ranks(RAVEN, common="common raven")
    assert notes == []
    assert t.ranks == ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax")
    assert (t.depth, t.rank, t.scientific) == (7, "species", "Corvus corax")
    assert t.name_at("species") == "Corvus corax" and t.name_at("class") == "Aves"
    assert t.label("family") == "Animalia Chordata Aves Passeriformes Corvidae"
    forms = {k: text(t, k) for k in TEXT_TYPES}
    assert forms == {
        "taxonomic": "Animalia Chordata Aves Passeriformes Corvidae Corvus corax",
        "scientific": "Corvus corax",
        "common": "common raven",
        "taxonomic_common": "Animalia Chordata Aves Passeriformes Corvidae Corvus corax with common name common raven",
        "scientific_common": "Corvus corax with common name common raven",
        "taxon_tag": "a kingdom Animalia phylum Chordata class Aves order Passeriformes family Corvidae "
                     "genus Corvus species corax",
    }
    caps = captions(t, "scientific")
    assert len(caps) == len(TEMPLATES) and caps[0] == "a photo of Corvus corax."
    assert all("{}" not in c and "Corvus corax" in c for c in caps)


def test_synonyms_capitalisation_and_binomial_with_author():
    raw = {"kingdom": " plants ", "phylum": "TRACHEOPHYTA", "cls": "magnoliopsida", "order": "Fagales",
           "family": "fagaceae", "genus": "quercus", "species": "Quercus  Robur L."}
    t, notes = Taxon.from_ranks(raw)
    assert t.ranks == ("Plantae", "Tracheophyta", "Magnoliopsida", "Fagales", "Fagaceae", "Quercus", "robur")
    joined = " | ".join(notes)
    assert "synonym" in joined and "capitalisation" in joined and "author 'L.' stripped" in joined
    assert Taxon.from_ranks({**RAVEN, "kingdom": "Metazoa"})[0].kingdom == "Animalia"
    assert Taxon.from_ranks({**RAVEN, "kingdom": "fungae"})[0].kingdom == "Fungi"


def test_genus_repeated_infraspecific_and_parenthetical():
    t, notes = Taxon.from_ranks({**RAVEN, "species": "Corvus Corvus corax"})
    assert t.epithet == "corax" and any("genus repeated" in n for n in notes)
    t, notes = Taxon.from_ranks({**RAVEN, "species": "Corvus corax varius"})
    assert t.epithet == "corax" and any("infraspecific" in n for n in notes)
    t, notes = Taxon.from_ranks({**RAVEN, "genus": "Salvia", "species": "Salvia yangii (syn. Perovskia atriplicifolia)"})
    assert (t.genus, t.epithet) == ("Salvia", "yangii") and any("parenthetical" in n for n in notes)
    # genus column empty: taken from the binomial, noted
    t, notes = Taxon.from_ranks({**RAVEN, "genus": None, "species": "Corvus corax"})
    assert t.depth == 7 and any("taken from the species field" in n for n in notes)


@pytest.mark.parametrize("missing", ["unknown", "NA", "", "sp.", "spp", "incertae sedis", None, math.nan])
def test_unknown_values_become_none(missing):
    t, _ = Taxon.from_ranks({**RAVEN, "species": missing})
    assert (t.depth, t.rank, t.scientific) == (6, "genus", "Corvus")
    assert text(t, "taxonomic").endswith("Corvidae Corvus")


def test_gap_keeps_taxon_at_deepest_rank_above_it_and_reports():
    t, notes = Taxon.from_ranks({**RAVEN, "class": "unknown"})
    assert t.depth == 2 and t.rank == "phylum" and t.ranks[2:] == (None,) * 5
    assert any("class missing: lower ranks dropped" in n and "'Corvidae'" in n for n in notes)
    # an insect labelled at order only (as in the real BIOSCAN photos): depth 4, nothing dropped
    t, notes = Taxon.from_ranks({"kingdom": "Animalia", "phylum": "Arthropoda", "class": "Insecta",
                                 "order": "Coleoptera", "family": None, "genus": "", "species": None})
    assert (t.rank, t.scientific, notes) == ("order", "Coleoptera", [])
    assert t.label("species") is None and t.name_at("genus") is None


def test_text_fallbacks_without_common_name():
    t, _ = Taxon.from_ranks(RAVEN)
    assert text(t, "common") == "Corvus corax"
    assert text(t, "taxonomic_common") == text(t, "taxonomic")
    assert text(t, "scientific_common") == "Corvus corax"


def test_truncate_round_trip_and_errors():
    t, _ = Taxon.from_ranks(RAVEN, common="common raven")
    g = t.truncate("genus")
    assert (g.rank, g.common, g.scientific) == ("genus", None, "Corvus")
    assert Taxon.from_dict(t.as_dict()) == t
    assert set(t.as_dict()) == set(RANKS) | {"common"}
    with pytest.raises(EcoalignInputError, match="unknown rank"):
        t.truncate("tribe")
    with pytest.raises(EcoalignInputError, match="unknown text type"):
        text(t, "latin")
