"""Seven-rank taxa (kingdom..species), name cleaning, and the text forms organism CLIP models are trained on.

Why: labels in real tables are messy (``Metazoa`` vs ``Animalia``, ``QUERCUS``, ``Quercus robur L.`` in the
species column, ``sp.``/``unknown`` placeholders, gaps in the ranks). BioCLIP's gain comes from the taxonomic
*string*: higher ranks shared across species give the text encoder structure, so every text form is built
here from one cleaned :class:`Taxon`, never from raw table cells.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Mapping

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
_FIELDS = ("kingdom", "phylum", "cls", "order", "family", "genus", "epithet")  # Taxon attribute per rank

TEXT_TYPES = ("taxonomic", "scientific", "common", "taxonomic_common", "scientific_common", "taxon_tag")

# Values that mean "not known" in the tables we meet (compared lower-case, stripped).
MISSING = frozenset({
    "", "unknown", "unk", "na", "n/a", "nan", "none", "null", "nil", "-", "--", "?", "sp", "sp.", "spp", "spp.",
    "species", "indet", "indet.", "undetermined", "unidentified", "not assigned", "incertae sedis",
    "incertae_sedis", "incertae-sedis", "unclassified", "unassigned",
})

# Common synonyms and spelling variants -> accepted name, per rank (keys lower-case).
SYNONYMS: dict[str, dict[str, str]] = {
    "kingdom": {
        "metazoa": "Animalia", "animal": "Animalia", "animals": "Animalia", "animalia": "Animalia",
        "plant": "Plantae", "plants": "Plantae", "plantae": "Plantae", "viridiplantae": "Plantae",
        "fungus": "Fungi", "fungi": "Fungi", "fungae": "Fungi", "mycota": "Fungi", "eumycota": "Fungi",
        "bacterium": "Bacteria", "eubacteria": "Bacteria", "archaebacteria": "Archaea",
        "protista": "Protozoa", "protists": "Protozoa",
    },
    "class": {"dicotyledonae": "Magnoliopsida", "dicots": "Magnoliopsida",
              "monocotyledonae": "Liliopsida", "monocots": "Liliopsida"},
    "phylum": {"magnoliophyta": "Tracheophyta", "spermatophyta": "Tracheophyta"},
}

_INFRASPECIFIC = {"subsp.", "subsp", "ssp.", "ssp", "var.", "var", "f.", "forma", "cv.", "x", "×"}
_QUALIFIERS = {"cf.", "cf", "aff.", "aff", "nr.", "near", "?"}


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return str(value).strip().lower() in MISSING


def _capitalised(word: str) -> str:
    return word[:1].upper() + word[1:].lower()


def _looks_like_author(token: str) -> bool:
    """'L.', 'Mill.', '(L.)', 'Linnaeus,', '1758', '&', 'ex', 'DC.': authorship, not a name."""
    return (token[:1].isupper() or token[:1] in "(&[" or token.rstrip(",)").isdigit() or token in {"ex", "et"}
            or token.endswith((".", ",", ")")))


@dataclass(frozen=True)
class Taxon:
    """One cleaned taxon; ranks below the first unknown rank are always None (the taxon sits at its depth)."""

    kingdom: str | None = None
    phylum: str | None = None
    cls: str | None = None
    order: str | None = None
    family: str | None = None
    genus: str | None = None
    epithet: str | None = None
    common: str | None = None

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_ranks(cls, ranks: Mapping[str, object], common=None) -> tuple["Taxon", list[str]]:
        """Clean raw rank values; return the taxon and human-readable notes on what was changed or dropped.

        Keys: the names in RANKS ('class' or 'cls'); 'species' may hold the epithet or the binomial
        (author, infraspecific names and a repeated genus are stripped). Missing keys count as unknown.
        """
        notes: list[str] = []
        raw = {r: ranks.get(r) for r in RANKS}
        if raw["class"] is None and "cls" in ranks:
            raw["class"] = ranks["cls"]
        if raw["species"] is None and "epithet" in ranks:
            raw["species"] = ranks["epithet"]
        values: dict[str, str | None] = {}
        for rank in RANKS[:-1]:
            values[rank] = _clean_uninomial(rank, raw[rank], notes)
        genus, epithet = _clean_species(raw["species"], values["genus"], notes)
        values["genus"], values["species"] = genus, epithet
        # Keep the taxon at the deepest rank reached without a gap.
        kept: list[str | None] = []
        for i, rank in enumerate(RANKS):
            if values[rank] is None:
                dropped = [f"{r} {values[r]!r}" for r in RANKS[i + 1:] if values[r] is not None]
                if dropped:
                    notes.append(f"{rank} missing: lower ranks dropped ({', '.join(dropped)})")
                kept += [None] * (len(RANKS) - i)
                break
            kept.append(values[rank])
        common_clean = None if _is_missing(common) else " ".join(str(common).split())
        return cls(*kept, common=common_clean), notes

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "Taxon":
        """Inverse of :meth:`as_dict` (cleans again, so any rank mapping is accepted)."""
        return cls.from_ranks(d, common=d.get("common"))[0]

    def as_dict(self) -> dict[str, str | None]:
        """{rank: name} with 'species' as the binomial, plus 'common'."""
        out = {rank: (self.name_at(rank) if i < self.depth else None) for i, rank in enumerate(RANKS)}
        out["common"] = self.common
        return out

    # ---- views --------------------------------------------------------------------------------------
    @property
    def ranks(self) -> tuple[str | None, ...]:
        return tuple(getattr(self, f) for f in _FIELDS)

    @property
    def depth(self) -> int:
        """Number of known ranks from the kingdom down (0 = nothing known, 7 = species)."""
        d = 0
        for v in self.ranks:
            if v is None:
                break
            d += 1
        return d

    @property
    def rank(self) -> str | None:
        """Name of the deepest known rank ('species', 'order', ...); None for an empty taxon."""
        return RANKS[self.depth - 1] if self.depth else None

    def truncate(self, rank: str) -> "Taxon":
        """The same taxon seen at ``rank`` (lower ranks dropped; the common name only survives at species)."""
        i = _rank_index(rank)
        kept = {f: (getattr(self, f) if j <= i else None) for j, f in enumerate(_FIELDS)}
        return replace(self, **kept, common=self.common if i == len(RANKS) - 1 else None)

    def name_at(self, rank: str) -> str | None:
        """The name at ``rank`` (species -> binomial); None when unknown."""
        i = _rank_index(rank)
        if i >= self.depth:
            return None
        if rank == "species":
            return f"{self.genus} {self.epithet}"
        return self.ranks[i]

    def label(self, rank: str) -> str | None:
        """A class label unique at ``rank``: the taxonomic string down to it (None if the taxon is shallower)."""
        i = _rank_index(rank)
        if i >= self.depth:
            return None
        return " ".join(self.ranks[: i + 1])

    @property
    def scientific(self) -> str:
        """Binomial when the species is known, else the deepest known name ('' for an empty taxon)."""
        if self.depth == 0:
            return ""
        return self.name_at(self.rank)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return text(self, "taxonomic")


def _rank_index(rank: str) -> int:
    rank = "class" if rank == "cls" else rank
    if rank not in RANKS:
        from ecoalign.core.errors import EcoalignInputError

        raise EcoalignInputError(f"unknown rank {rank!r}", expected=f"one of {RANKS}")
    return RANKS.index(rank)


def _clean_uninomial(rank: str, value, notes: list[str]) -> str | None:
    """One name above species: first word only, capitalised, synonyms mapped."""
    if _is_missing(value):
        if value is not None and not (isinstance(value, float)) and str(value).strip():
            notes.append(f"{rank} {str(value).strip()!r}: unknown value dropped")
        return None
    text_ = " ".join(str(value).replace("_", " ").split())
    words = text_.split(" ")
    name = words[0]
    if len(words) > 1:
        notes.append(f"{rank} {text_!r} -> {name!r}: extra words (author?) stripped")
    if not re.fullmatch(r"[A-Za-z][A-Za-z-]*", name):
        notes.append(f"{rank} {name!r}: not a Latin name, dropped")
        return None
    cleaned = _capitalised(name)
    synonym = SYNONYMS.get(rank, {}).get(name.lower())
    if synonym and synonym != cleaned:
        notes.append(f"{rank} {name!r} -> {synonym!r}: synonym")
        return synonym
    if synonym:
        cleaned = synonym
    if cleaned != name:
        notes.append(f"{rank} {name!r} -> {cleaned!r}: capitalisation")
    return cleaned


def _clean_species(value, genus: str | None, notes: list[str]) -> tuple[str | None, str | None]:
    """Epithet from a species cell holding 'corax', 'Corvus corax', 'Quercus robur L.', 'Quercus sp.' ...

    Returns (genus, epithet); the genus is taken from the binomial only when the genus column is empty.
    """
    if _is_missing(value):
        if value is not None and not isinstance(value, float) and str(value).strip():
            notes.append(f"species {str(value).strip()!r}: unknown value dropped")
        return genus, None
    original = " ".join(str(value).replace("_", " ").split())
    text_ = original
    if "(" in text_ and not text_.startswith("("):
        stripped = re.sub(r"\s*\([^)]*\)", "", text_).strip()
        if stripped != text_:
            notes.append(f"species {original!r}: parenthetical {text_[len(stripped):].strip()!r} stripped"
                         if text_.startswith(stripped) else f"species {original!r}: parenthetical stripped")
            text_ = stripped
    tokens = text_.split(" ")
    # Leading genus (possibly repeated): 'Corvus corax', 'Corvus Corvus corax'.
    seen_genus = 0
    if len(tokens) == 1 and genus is not None and tokens[0].lower() == genus.lower():
        notes.append(f"species {original!r}: only the genus given, kept at genus")
        return genus, None
    while len(tokens) > 1 and re.fullmatch(r"[A-Za-z-]+", tokens[0]) and (
            tokens[0][:1].isupper() or (genus is not None and tokens[0].lower() == genus.lower())):
        word = _capitalised(tokens[0])
        if genus is None:
            genus = word
            notes.append(f"genus {word!r} taken from the species field")
        elif word != genus:
            if seen_genus:
                break
            notes.append(f"species {original!r}: genus {word!r} differs from genus column {genus!r}; "
                         f"kept {genus!r}")
        seen_genus += 1
        tokens = tokens[1:]
    if seen_genus > 1:
        notes.append(f"species {original!r}: genus repeated in species field")
    if tokens and tokens[0].lower() in _QUALIFIERS:
        notes.append(f"species {original!r}: uncertain identification ({tokens[0]}), kept at genus")
        return genus, None
    if not tokens or tokens[0].lower() in MISSING:
        if tokens:
            notes.append(f"species {original!r}: unknown value dropped")
        return genus, None
    epithet_raw, rest = tokens[0], tokens[1:]
    if not re.fullmatch(r"[A-Za-z][A-Za-z-]*", epithet_raw):
        notes.append(f"species {original!r}: epithet {epithet_raw!r} is not a Latin name, dropped")
        return genus, None
    epithet = epithet_raw.lower()
    if epithet != epithet_raw:
        notes.append(f"species {epithet_raw!r} -> {epithet!r}: epithet lower-cased")
    if rest:
        if rest[0].lower() in _INFRASPECIFIC or (rest[0].islower() and not _looks_like_author(rest[0])):
            notes.append(f"species {original!r}: infraspecific name {' '.join(rest)!r} dropped")
        else:
            notes.append(f"species {original!r}: author {' '.join(rest)!r} stripped")
    return genus, epithet


def parse_name(name) -> tuple[str | None, str | None, list[str]]:
    """(genus, epithet, notes) of a free-text name ('Quercus ilex L.', 'quercus ILEX', 'Quercus sp.'), cleaned by
    the rules of :meth:`Taxon.from_ranks`; genus None when the text holds no Latin genus."""
    notes: list[str] = []
    words = " ".join(str(name or "").replace("_", " ").split()).split(" ")
    if not words[0] or not re.fullmatch(r"[A-Za-z][A-Za-z-]*", words[0]):
        return None, None, [f"{name!r}: no Latin genus"]
    genus = _capitalised(words[0])
    rest = " ".join(words[1:])
    _, epithet = _clean_species(f"{genus} {rest}" if rest else genus, genus, notes)
    return genus, epithet, notes


# ---- text forms ---------------------------------------------------------------------------------------

def text(taxon: Taxon, kind: str) -> str:
    """The raw text of one type (no template).

    Fallbacks when a type cannot be made: 'common' without a common name gives the scientific name;
    'taxonomic_common'/'scientific_common' without one give 'taxonomic'/'scientific' (no dangling
    "with common name").
    """
    known = list(taxon.ranks[: taxon.depth])
    taxonomic = " ".join(known)
    scientific = taxon.scientific
    if kind == "taxonomic":
        return taxonomic
    if kind == "scientific":
        return scientific
    if kind == "common":
        return taxon.common or scientific
    if kind == "taxonomic_common":
        return f"{taxonomic} with common name {taxon.common}" if taxon.common else taxonomic
    if kind == "scientific_common":
        return f"{scientific} with common name {taxon.common}" if taxon.common else scientific
    if kind == "taxon_tag":
        return "a " + " ".join(f"{rank} {name}" for rank, name in zip(RANKS, known))
    from ecoalign.core.errors import EcoalignInputError

    raise EcoalignInputError(f"unknown text type {kind!r}", expected=f"one of {TEXT_TYPES}")


# CLIP-style prompt templates (in the spirit of the OpenAI ImageNet set; our own wording).
TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "a photo of a {}.",
    "a good photo of {}.",
    "a bad photo of {}.",
    "a close-up photo of {}.",
    "a cropped photo of {}.",
    "a bright photo of {}.",
    "a dark photo of {}.",
    "a blurry photo of {}.",
    "a low resolution photo of {}.",
    "a jpeg corrupted photo of {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a field photo of {}.",
    "a camera trap photo of {}.",
    "a specimen photo of {}.",
    "a drawing of {}.",
    "an illustration of {}.",
    "itap of {}.",
    "art of {}.",
)


def captions(taxon: Taxon, kind: str, templates: tuple[str, ...] | list[str] = TEMPLATES) -> list[str]:
    """The text of ``kind`` placed in every template."""
    t = text(taxon, kind)
    return [tpl.format(t) for tpl in templates]


__all__ = ["MISSING", "RANKS", "SYNONYMS", "TEMPLATES", "TEXT_TYPES", "Taxon", "captions", "parse_name", "text"]
