"""Zero-shot habitat suitability: species named in text, mapped through the aligned encoders of an adapt run.

Why it works: with ``adapt --releve-encoder organism_text`` a relevé's species tokens are projections of an organism
CLIP model's text embeddings of their taxonomic strings, so a relevé naming species never seen in training still
encodes (beside its relatives). The suitability of a place for a named composition is then the cosine similarity
between the place's adapted image embedding and that relevé embedding, turned into a probability by a logistic
calibration fitted at the end of ``adapt`` on the training species at the training plots (``zero_shot.json``).

Two settings of the organism_text config make that query work for unseen species (defaults, chosen on the dev
holdout of ``benchmarks/bench_zero_shot_maps.py``): ``text_ranks: [species, genus]`` (a species' text is its full
taxonomic string and the string cut at its genus, so a new species shares the genus part of its seen congeners
exactly; ``encoders.species_text``) and ``species_query_weight`` (adapt also trains the one-species relevé as a
presence query of the training species, ``aerial.losses.SpeciesQueryLoss``; without it the query is out of the
relevé encoder's training distribution). A species whose genus no training species shares gets no such help.

At query time a name absent from the training species is also pulled toward its closest seen relatives
(``relatives``: the training species of its genus, else of its family, else of its order): its text embedding
becomes ``(1 - w) * own + w * mean(relatives')`` with ``w = RELATIVES_WEIGHT`` (chosen on the dev holdout). Why: the
text encoder places a new epithet arbitrarily (a random-weight one does), while phylogenetic niche conservatism
says relatives are the best prior of where a species grows; with several seen congeners their mean is a better
prior than any one of them. On the dev holdout (two runs, random-weight encoders) genus-seen species went from
AUC 0.86 / 0.78 (w = 0) to 0.90 / 0.88 (w = 0.75), level with their nearest congener's model (0.89), and genus-unseen
ones rose through family/order relatives (figures: ``benchmarks/bench_zero_shot_maps.py``). 0.75 rather than 1
(a little higher on dev) keeps part of the name's own text, which a pretrained text encoder makes informative
(untested here: no pretrained weights).

Files an organism-text run holds for this (``<run>/encoder/``): ``zero_shot.json`` (calibration, the organism
encoder's identity and hash, the held-out species, the cover a one-species relevé gets), ``taxonomy.csv`` (the
checklist names are placed with) and ``plots.npz`` (plot ids, split, centres and adapted embeddings, for
``evaluate-zero-shot``).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError

log = logging.getLogger(__name__)

RELATIVE_RANKS = ("genus", "family", "order")  # ranks searched, closest first, for an unseen name's seen relatives
RELATIVES_WEIGHT = 0.75  # weight of the relatives' mean text in an unseen name's text (dev holdout: see above)
SPECIES_COVER = 25.0  # % cover of the one-species relevé a bare species name stands for (and calibration uses)
ZERO_SHOT_FILE, TAXONOMY_FILE, PLOTS_FILE = "zero_shot.json", "taxonomy.csv", "plots.npz"
NEEDED = "a run trained with `ecoalign adapt --releve-encoder organism_text`"


def identity_hash(identity: dict) -> str:
    """sha256 of an encoder identity (canonical JSON) without where its weights lie: what a run records of its
    organism text encoder, so a moved copy of the same weights still matches and other weights never do."""
    stable = {k: v for k, v in identity.items() if not (k == "weights" and identity.get("weights_sha256"))}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ user input
def parse_releve(text: str) -> list[tuple[str, float]]:
    """``"Quercus ilex=60,Pistacia lentiscus=20"`` -> [(name, percent cover)]; bad input names the item."""
    if text is None or not str(text).strip():
        raise EcoalignInputError("empty relevé", where="--releve", expected='"Species name=cover,..." e.g. '
                                 '"Quercus ilex=60,Pistacia lentiscus=20"')
    items = []
    for i, part in enumerate(str(text).split(","), start=1):
        name, sep, value = part.partition("=")
        name = " ".join(name.split())
        if not name or not sep:
            raise EcoalignInputError(f"item {i} {part.strip()!r} is not NAME=COVER", where="--releve",
                                     expected='"Species name=cover" items separated by commas')
        try:
            cover = float(value)
        except ValueError:
            raise EcoalignInputError(f"cover {value.strip()!r} of {name!r} is not a number", where="--releve",
                                     expected="percent cover in (0, 100], e.g. Quercus ilex=60") from None
        if not 0 < cover <= 100:
            raise EcoalignInputError(f"cover {cover:g} of {name!r} is out of range", where="--releve",
                                     expected="percent cover in (0, 100]")
        items.append((name, cover))
    return items


def compositions(releves: Sequence[str] = (), species: Sequence[str] = ()) -> list[tuple[str, list]]:
    """(band label, [(name, cover)]) for every ``--releve`` string and every ``--species`` name, in that order."""
    out = [(str(r).strip(), parse_releve(r)) for r in releves]
    for name in species:
        if not str(name).strip():
            raise EcoalignInputError("empty species name", where="--species", expected="a Latin name, e.g. Quercus ilex")
        out.append((" ".join(str(name).split()), [(" ".join(str(name).split()), SPECIES_COVER)]))
    if not out:
        raise EcoalignInputError("nothing to map", expected="--releve 'Name=cover,...' and/or --species NAME")
    return out


# ---------------------------------------------------------------------------------- the mapped "model"
@dataclass
class ZeroShotModel:
    """What the block computation calls in place of a species-model bundle: adapted window embeddings ->
    (n, bands) calibrated suitability (or raw cosine similarity). Plain arrays, so a plan carries it to workers."""

    species_: list[str]  # band labels
    targets: np.ndarray  # (bands, D) L2-normalised relevé embeddings
    proj_weight: np.ndarray | None  # image projection (D, D_img) of the run, None for the identity
    proj_bias: np.ndarray | None
    slope: float
    intercept: float
    raw: bool = False

    def similarity(self, X) -> np.ndarray:
        h = np.asarray(X, dtype=np.float64)
        if self.proj_weight is not None:
            h = h @ self.proj_weight.T + self.proj_bias
        h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
        return h @ self.targets.T

    def predict_proba(self, X) -> np.ndarray:
        s = self.similarity(X)
        if self.raw:
            return s
        from scipy.special import expit

        return expit(self.slope * s + self.intercept)

    def spread_info(self) -> dict:
        return {"available": False, "reason": "a zero-shot map compares embeddings: there are no ensemble members"}

    def spec(self) -> dict:
        """JSON form (``plan.extra["zero_shot"]``)."""
        return {"species": list(self.species_), "targets": self.targets.tolist(),
                "proj_weight": None if self.proj_weight is None else self.proj_weight.tolist(),
                "proj_bias": None if self.proj_bias is None else self.proj_bias.tolist(),
                "slope": self.slope, "intercept": self.intercept, "raw": self.raw}

    @classmethod
    def from_spec(cls, spec: dict) -> ZeroShotModel:
        arr = (lambda v: None if v is None else np.asarray(v, dtype=np.float64))
        return cls(list(spec["species"]), arr(spec["targets"]), arr(spec["proj_weight"]), arr(spec["proj_bias"]),
                   float(spec["slope"]), float(spec["intercept"]), bool(spec["raw"]))


# ------------------------------------------------------------------------------------------- the run
class ZeroShotRun:
    """The aligned encoders of an organism-text adapt run, ready to embed relevés of any named species."""

    def __init__(self, run_dir, *, organism_encoder: str | None = None, relatives_weight: float | None = None,
                 relative_ranks: Sequence[str] = RELATIVE_RANKS):
        import pandas as pd

        self.relatives_weight = RELATIVES_WEIGHT if relatives_weight is None else float(relatives_weight)
        if not 0.0 <= self.relatives_weight <= 1.0:
            raise EcoalignInputError(f"relatives weight {self.relatives_weight:g}", where="--relatives-weight",
                                     expected="a number in [0, 1] (0: the name's own text only)")
        bad = [r for r in relative_ranks if r not in RELATIVE_RANKS]
        if bad:
            raise EcoalignInputError(f"relative ranks {bad}", expected=f"some of {list(RELATIVE_RANKS)}")
        self.relative_ranks = tuple(relative_ranks)

        self.run_dir = Path(run_dir)
        meta_path = self.run_dir / "encoder" / "encoder.json"
        if not meta_path.exists():
            raise EcoalignInputError("not an adapt run directory (no encoder/encoder.json)", path=self.run_dir,
                                     expected=NEEDED)
        self.meta = json.loads(meta_path.read_text())
        rel_cfg = self.meta.get("releve_encoder") or {}
        zs_path = self.run_dir / "encoder" / ZERO_SHOT_FILE
        if not rel_cfg.get("organism_encoder"):
            raise EcoalignInputError(f"this run's relevé encoder ('{rel_cfg.get('kind')}') learned one token per "
                                     "training species and cannot encode species named in text", path=self.run_dir,
                                     expected=NEEDED)
        if not zs_path.exists():
            raise EcoalignInputError(f"the run has no {ZERO_SHOT_FILE} (made before zero-shot maps existed, or "
                                     "unfinished)", path=self.run_dir, expected=NEEDED + " with this ecoalign")
        self.info = json.loads(zs_path.read_text())
        self.taxonomy = pd.read_csv(self.run_dir / "encoder" / TAXONOMY_FILE)
        self.species = list(self.meta["species"])
        self._organism_arg = organism_encoder or rel_cfg["organism_encoder"]
        self._organism = None
        self._releve = None
        self._seen = None

    # -- encoders --------------------------------------------------------------------------------------
    @property
    def organism(self):
        """The organism text encoder, checked against the one the run was trained with (identity hash)."""
        if self._organism is None:
            from ecoalign.encoders.organism import load_organism_encoder

            enc = load_organism_encoder(self._organism_arg, weights=self.meta["releve_encoder"].get("organism_weights"))
            mine, theirs = identity_hash(enc.identity()), identity_hash(self.info["organism_encoder"])
            if mine != theirs:
                raise EcoalignInputError(
                    f"organism encoder {self._organism_arg} differs from the one this run was trained with "
                    f"(identity {json.dumps(enc.identity())} vs {json.dumps(self.info['organism_encoder'])})",
                    path=self.run_dir / "encoder" / ZERO_SHOT_FILE,
                    expected="the organism encoder given to adapt (releve_encoder.organism_encoder)")
            self._organism = enc
        return self._organism

    @property
    def releve_encoder(self):
        if self._releve is None:
            import torch

            from ecoalign.encoders.releve import build_releve_encoder
            from ecoalign.encoders.species_text import TEXT_KEYS

            state = torch.load(self.run_dir / "encoder" / "releve_encoder.pt", map_location="cpu", weights_only=True)
            cfg = {k: v for k, v in self.meta["releve_encoder"].items() if k not in TEXT_KEYS}
            cfg["species_text"] = state["species_text"]
            out_dim = self.meta["adapter"]["proj_dim"] or self.meta["backbone"]["embed_dim"]
            enc = build_releve_encoder(cfg, len(self.species), int(out_dim))
            enc.load_state_dict(state)
            self._releve = enc.eval()
        return self._releve

    # -- names ------------------------------------------------------------------------------------------
    def taxon(self, name: str):
        """The Taxon of a name (None where the checklist has names only): from the run's checklist, or its genus's higher ranks there plus the epithet; a
        name whose genus the checklist does not hold is refused (the text encoder could not place it)."""
        from ecoalign.data.taxonomy import RANKS, Taxon, parse_name

        genus, epithet, _ = parse_name(name)
        table = self.taxonomy
        if genus is not None:
            full = table[table["species"].astype(str) == f"{genus} {epithet}"] if epithet else table.iloc[:0]
            row = full.iloc[0] if len(full) else None
            if row is None:
                same = table[table["genus"].astype(str) == genus]
                if len(same):
                    row = {**same.iloc[0].to_dict(), "species": f"{genus} {epithet}" if epithet else None,
                           "common_name": None}
            if row is not None:
                taxon, _ = Taxon.from_ranks({k: row.get(k) for k in RANKS}, common=row.get("common_name"))
                return taxon if taxon.depth else None  # a checklist of names only: embedded by name, as in adapt
        genera = sorted(set(table["genus"].astype(str)))
        raise EcoalignInputError(
            f"cannot place {name!r}: " + (f"its genus '{genus}' is not in the run's checklist" if genus else
                                          "no Latin genus in the name"),
            path=self.run_dir / "encoder" / TAXONOMY_FILE,
            expected=f"a species of a genus the checklist holds ({', '.join(genera[:12])}, ... {len(genera)} genera)")

    def relatives(self, name: str) -> tuple[str | None, list[str]]:
        """(rank, training species) closest to ``name`` in the run's checklist: those of its genus, else of its
        family, else of its order (``relative_ranks``); (None, []) for a training species (however its name is
        written, e.g. ``Quercus ILEX L.``) or a name with none."""
        from ecoalign.data.taxonomy import parse_name

        genus, epithet, _ = parse_name(name)
        if name in self.species or f"{genus} {epithet}" in self.species:
            return None, []
        taxon, table = self.taxon(name), self._seen_taxonomy()
        for rank in self.relative_ranks:
            value = taxon.name_at(rank) if taxon is not None else (genus if rank == "genus" else None)
            if value and rank in table:
                mates = table.index[table[rank].astype(str) == value].tolist()
                if mates:
                    return rank, mates
        return None, []

    def _seen_taxonomy(self):
        """The checklist rows of the training species, indexed by name (built once: every name's relatives use it)."""
        if self._seen is None:
            table = self.taxonomy.assign(species=self.taxonomy["species"].astype(str)).drop_duplicates("species")
            table = table.set_index("species")
            self._seen = table.loc[[s for s in self.species if s in table.index]]
        return self._seen

    def text_embeddings(self, names: Sequence[str]) -> np.ndarray:
        """Text embeddings of ``names`` as the relevé encoder takes them; an unseen name's is pulled toward its
        seen relatives' (``relatives_weight``), whose embeddings are the run's own (as trained)."""
        from ecoalign.encoders.species_text import species_text_embeddings

        taxa = [self.taxon(n) for n in names]
        cfg = self.meta["releve_encoder"]
        text = species_text_embeddings(self.organism, list(names), taxa, cfg.get("text_type", "taxonomic"),
                                       ranks=tuple(cfg.get("text_ranks") or ("species",)))
        if self.relatives_weight > 0:
            trained = self.releve_encoder.species_text.numpy()
            for i, name in enumerate(names):
                rank, mates = self.relatives(name)
                if mates:
                    prior = trained[[self.species.index(m) for m in mates]].mean(axis=0)
                    text[i] = (1.0 - self.relatives_weight) * text[i] + self.relatives_weight * prior
                    log.info("%s: text pulled toward its seen relatives (%s: %s) with weight %.2f", name, rank,
                             ", ".join(mates[:5]) + (" ..." if len(mates) > 5 else ""), self.relatives_weight)
        return text

    def releve_embeddings(self, comps: Sequence[tuple[str, list]]) -> np.ndarray:
        """(len(comps), D) L2-normalised relevé embeddings of named compositions."""
        import torch

        names = list(dict.fromkeys(n for _, items in comps for n, _ in items))
        text = torch.from_numpy(self.text_embeddings(names))
        cover = torch.zeros(len(comps), len(names))
        for i, (_, items) in enumerate(comps):
            for n, c in items:
                cover[i, names.index(n)] += float(c)
        with torch.no_grad():
            z = self.releve_encoder(cover, species_text=text).double().numpy()
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    def model(self, comps: Sequence[tuple[str, list]], *, raw: bool = False) -> ZeroShotModel:
        import torch

        state = torch.load(self.run_dir / "encoder" / "image_proj.pt", map_location="cpu", weights_only=True)
        w = state.get("weight")
        cal = self.info["calibration"]
        return ZeroShotModel([label for label, _ in comps], self.releve_embeddings(comps),
                             None if w is None else w.double().numpy(),
                             None if w is None else state["bias"].double().numpy(),
                             float(cal["slope"]), float(cal["intercept"]), raw)

    def plots(self) -> dict:
        """The run's paired plots: ids, split, centres (raster CRS) and adapted embeddings (identity view)."""
        with np.load(self.run_dir / "encoder" / PLOTS_FILE, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------- written by `adapt`
def write_zero_shot_files(run_dir: Path, model, data, species: list[str], plot_ids, centres, taxonomy,
                          organism_identity: dict, holdout: list[str]) -> dict:
    """At the end of an organism-text adapt run: the plots' adapted embeddings, the checklist, and a logistic
    calibration of image/one-species-relevé similarity against presence, fitted on the training split's plots
    and training species (the held-out species are absent from both)."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from ecoalign.core.io import atomic_path, write_json
    from ecoalign.encoders.releve import one_species_covers

    enc = run_dir / "encoder"
    model.eval()
    with torch.no_grad():
        adapted, img = model.encode_image(data.frozen[:, 0])
        rel = torch.cat([model.releve_encoder(one_species_covers(chunk, data.cover.shape[1], SPECIES_COVER))
                         for chunk in torch.arange(data.cover.shape[1]).split(256)])  # chunks: a (256, S) cover each
    img = torch.nn.functional.normalize(img.double(), dim=1)
    rel = torch.nn.functional.normalize(rel.double(), dim=1)
    train = data.split == "train"
    sims = (img[train] @ rel.T).numpy().ravel()
    present = (data.cover[train] > 0).numpy().ravel()
    lr = LogisticRegression(C=1e4, max_iter=1000).fit(sims[:, None], present)
    from sklearn.metrics import roc_auc_score

    calibration = {"slope": float(lr.coef_[0, 0]), "intercept": float(lr.intercept_[0]), "pairs": len(sims),
                   "prevalence": float(present.mean()), "pooled_auc": float(roc_auc_score(present, sims)), "fitted_on": "train split plots x training species",
                   "species_cover": SPECIES_COVER}
    info = {"calibration": calibration, "organism_encoder": organism_identity,
            "organism_encoder_sha256": identity_hash(organism_identity), "holdout_species": list(holdout),
            "species_cover": SPECIES_COVER}
    with atomic_path(enc / PLOTS_FILE) as tmp, open(tmp, "wb") as f:
        np.savez(f, plot_id=np.asarray(plot_ids, dtype=str), split=np.asarray(data.split, dtype=str),
                 centres=np.asarray(centres, dtype=np.float64), adapted=adapted.numpy().astype(np.float32))
    with atomic_path(enc / TAXONOMY_FILE) as tmp:
        taxonomy.to_csv(tmp, index=False)
    write_json(enc / ZERO_SHOT_FILE, info)
    log.info("zero-shot calibration on %d plot x species pairs: suitability = expit(%.2f * similarity %+.2f)",
             len(sims), calibration["slope"], calibration["intercept"])
    return info
