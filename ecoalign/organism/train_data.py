"""What ``train-organism`` feeds the model: curated samples and general pairs kept encoded, one caption per draw,
and batch orders, all keyed by (seed, epoch, index) or by step so a resumed run sees exactly the batches an
uninterrupted one would.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def load_species_samples(curated_dir, split: str, *, rank: int = 0, world: int = 1) -> list[dict]:
    """This process's share (every ``world``-th sample, equal counts per rank) of a curated split, images kept
    encoded: dicts with ``image`` (bytes), ``texts`` and ``taxon``."""
    from ecoalign.organism.shards import iter_samples, shard_paths

    paths = shard_paths(curated_dir, split)
    return [{"image": s["image"], "texts": s["texts"], "taxon": s["taxon"]}
            for i, s in enumerate(iter_samples(paths, decode=False)) if i % world == rank]


def load_general_pairs(path, *, rank: int = 0, world: int = 1) -> list[dict]:
    from ecoalign.organism.shards import read_general_pairs

    return [{"image": p["image"], "text": p["text"]}
            for i, p in enumerate(read_general_pairs(path, decode=False)) if i % world == rank]


class SpeciesCaption:
    """Caption of a species sample: text type (fixed or mixed) from its sidecars, in a random template."""

    def __init__(self, samples: list[dict], text_type: str, templates: bool):
        from ecoalign.data.taxonomy import TEMPLATES, TEXT_TYPES

        self.samples, self.text_type, self.templates = samples, text_type, TEMPLATES if templates else ("{}",)
        self.kinds = TEXT_TYPES

    def __call__(self, idx: int, rng) -> str:
        from ecoalign.data.taxonomy import text

        s = self.samples[idx]
        kind = self.kinds[rng.integers(len(self.kinds))] if self.text_type == "mixed" else self.text_type
        raw = s["texts"].get(kind) or text(s["taxon"], kind)
        return self.templates[rng.integers(len(self.templates))].format(raw)


class PairCaption:
    def __init__(self, pairs: list[dict]):
        self.pairs = pairs

    def __call__(self, idx: int, rng) -> str:
        return self.pairs[idx]["text"]


class CaptionedImages:
    """Map-style dataset over encoded images; key (epoch, index) -> (image tensor, tokens). The augmentation and
    caption are drawn from an RNG seeded by (seed, epoch, index): same views after a resume, with any workers."""

    def __init__(self, images: list[bytes], caption: Callable, transform, tokenizer, seed: int):
        self.images, self.caption, self.transform, self.tokenizer, self.seed = images, caption, transform, tokenizer, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        import torch

        from ecoalign.organism.shards import decode_image

        epoch, idx = key
        rng = np.random.default_rng([self.seed, epoch, idx])
        text = self.caption(idx, rng)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2 ** 31)))
            image = self.transform(decode_image(self.images[idx]))
        return image, self.tokenizer([text])[0]


def epoch_batches(n: int, batch: int, seed: int, epoch: int, start: int = 0) -> list[list[tuple[int, int]]]:
    """The (epoch, index) batches of one epoch, from batch ``start`` on (drop_last, as CLIP training does)."""
    perm = np.random.default_rng([seed, epoch, 17]).permutation(n)
    return [[(epoch, int(i)) for i in perm[b * batch:(b + 1) * batch]] for b in range(start, n // batch)]


class ReplayBatches:
    """Endless replay batches: step s takes items s*B .. s*B+B-1 of a stream of reshuffled passes (deterministic)."""

    def __init__(self, n: int, batch: int, seed: int, start_step: int):
        self.n, self.batch, self.seed, self.start_step = n, batch, seed, start_step

    def __iter__(self):
        step, perms = self.start_step, {}
        while True:
            out = []
            for pos in range(step * self.batch, (step + 1) * self.batch):
                cycle = pos // self.n
                if cycle not in perms:
                    perms = {cycle: np.random.default_rng([self.seed, cycle, 29]).permutation(self.n)}
                out.append((cycle, int(perms[cycle][pos % self.n])))
            yield out
            step += 1
