"""The generated organism world: deterministic, cached, curatable, and its traits really follow the tree."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ecoalign.data.taxonomy import RANKS, Taxon
from ecoalign.demo.organism_world import generate_organism_world
from ecoalign.organism.shards import read_general_pairs

SMALL = dict(phyla_per_kingdom=1, classes_per_phylum=2, orders_per_class=1, families_per_order=1,
             genera_per_family=3, species_per_genus=3, images_per_species=4, n_general_pairs=20)


def _pixels(world, df):
    from PIL import Image

    return np.stack([np.asarray(Image.open(world.root / p).resize((16, 16)), float).ravel() / 255
                     for p in df["path"]])


def test_world_is_deterministic_cached_and_clean(tmp_path):
    w = generate_organism_world(tmp_path / "w", seed=5, **SMALL)
    df = pd.read_csv(w.metadata_csv)
    assert list(df.columns[:8]) == ["path", *RANKS] and "common_name" in df.columns
    assert len(df) == w.n_images and df["species"].nunique() == 2 * 2 * 3 * 3
    assert len(w.heldout_species) == 2 * 2 * 3  # one per genus
    assert set(w.heldout_species) < set(df["species"])
    per_species = df.groupby("species").size()
    held = per_species[per_species.index.isin(w.heldout_species)]
    assert (held == 4).all()  # a flat evaluation set ...
    seen = df[~df["species"].isin(w.heldout_species)].groupby("genus").size()
    assert seen.min() >= 2 * 2 and seen.max() > 3 * seen.median()  # ... against a long-tailed training set
    assert w.heldout_file.read_text().split("\n")[:-1] == w.heldout_species
    for _, row in df.drop_duplicates("species").iterrows():  # names survive cleaning unchanged
        taxon, notes = Taxon.from_ranks(row.to_dict(), common=row["common_name"])
        assert notes == [] and taxon.depth == 7 and taxon.scientific == row["species"]
    again = generate_organism_world(tmp_path / "w2", seed=5, **SMALL)
    digest = lambda world: hashlib.sha256((world.root / df.at[7, "path"]).read_bytes()).hexdigest()  # noqa: E731
    assert digest(w) == digest(again) and again.heldout_species == w.heldout_species
    other = generate_organism_world(tmp_path / "w3", seed=6, **SMALL)
    assert other.heldout_species != w.heldout_species
    cached = generate_organism_world(None, seed=5, **SMALL)  # under $ECOALIGN_CACHE (isolated by conftest)
    assert generate_organism_world(None, seed=5, **SMALL).root == cached.root
    pairs = list(read_general_pairs(w.general_pairs))
    assert len(pairs) == 20 and pairs[0]["image"].size == (64, 64) and " on a " in pairs[0]["text"]


def test_unseen_species_look_like_their_genus():
    """Nearest genus centroid on raw pixels places held-out species above chance: the traits are shared."""
    w = generate_organism_world(None, seed=0, **{**SMALL, "images_per_species": 6, "long_tail": 0.0})
    df = pd.read_csv(w.metadata_csv)
    assert len(df) == 6 * 36  # long_tail=0: flat
    held = df["species"].isin(w.heldout_species)
    x_seen, x_held = _pixels(w, df[~held]), _pixels(w, df[held])
    genera = sorted(df["genus"].unique())
    centroids = np.stack([x_seen[(df[~held]["genus"] == g).to_numpy()].mean(0) for g in genera])
    dist = ((x_held[:, None, :] - centroids[None]) ** 2).sum(-1)
    predicted = np.array(genera)[dist.argmin(1)]
    acc = (predicted == df[held]["genus"].to_numpy()).mean()
    assert acc > 2.5 / len(genera), acc  # chance is 1/12
    # and the kingdom (background colour) is near-perfectly visible
    king = df["kingdom"].to_numpy()
    x_all = _pixels(w, df)
    border = x_all.reshape(len(df), 16, 16, 3)[:, 0, :, :].mean(1)  # top row: background
    means = {k: border[king == k].mean(0) for k in set(king)}
    nearest = np.array([min(means, key=lambda k: ((b - means[k]) ** 2).sum()) for b in border])
    assert (nearest == king).mean() > 0.9
