"""The training stream of ``train-organism``: shards read by webdataset in DataLoader workers, a bounded shuffle,
several sources mixed by weight, and a position that a checkpoint can store and a resume can restart from exactly.

Every process (DDP rank) x DataLoader worker is one *global worker* ``g`` of ``W``. The shards of a source form an
endless sequence of passes, each pass a permutation keyed by (seed, source, pass); global worker ``g`` reads the
positions ``g, g + W, g + 2W, ...`` of that sequence, so within a pass no shard is read twice and ranks and workers
share the data without duplication. A worker reads ``block`` consecutive shards of its positions (encoded bytes
only), shuffles them with an RNG keyed by (seed, source, g, block) and serves them; its position is (block,
offset). Memory is one block per worker whatever the data set's size.

Why not webdataset's ``shuffle`` buffer and ``RandomMix``: both draw from an RNG whose state cannot be saved, so a
resumed run would see other samples than an uninterrupted one; a keyed block shuffle and a keyed per-batch choice
of sources give the same mixing with a position that fits in a checkpoint (the tar reading stays webdataset's).
Samples that cannot be used (a truncated member, no text, an image that does not decode) are skipped, counted and
named in the batch's report, which the trainer logs and records.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ecoalign.core.errors import EcoalignInputError

log = logging.getLogger(__name__)


def block_shards(sizes: Sequence[int], shuffle_buffer: int, world: int) -> int:
    """Shards per block: about ``shuffle_buffer`` samples, never more than one pass's share of a worker."""
    mean = max(1.0, float(np.mean(sizes)))
    return max(1, min(math.ceil(len(sizes) / world), round(shuffle_buffer / mean)))


class _Reader:
    """One source as read by one global worker: endless samples from its blocks, from a saved (block, offset)."""

    def __init__(self, source, index: int, g: int, world: int, seed: int, block: int, position, skipped: list):
        self.source, self.index, self.g, self.world, self.seed, self.block = source, index, g, world, seed, block
        self.b, self.offset = position if position else (0, 0)
        self.items: list | None = None
        self.skipped = skipped
        self._perms: dict[int, np.ndarray] = {}
        self._frame = None

    def _unit(self, j: int):
        """The unit (shard) at position j of this worker's sequence."""
        n = len(self.source.units)
        pos = self.g + self.world * j
        p = pos // n
        if p not in self._perms:
            self._perms = {p: np.random.default_rng([self.seed, self.index, p, 41]).permutation(n)}
        return self.source.units[int(self._perms[p][pos % n])]

    def _skip(self, where: str, reason: str) -> bool:
        self.skipped.append({"source": self.source.spec, "where": where, "reason": reason})
        return True  # webdataset handler: go on with the next member or shard

    def _load(self) -> None:
        items = []
        for j in range(self.b * self.block, (self.b + 1) * self.block):
            unit = self._unit(j)
            items.extend(self._read_table_rows(unit) if self.source.table else self._read_shard(unit))
        order = np.random.default_rng([self.seed, self.index, self.g, self.b, 43]).permutation(len(items))
        self.items = [items[i] for i in order]

    def _read_shard(self, url: str) -> list[dict]:
        from ecoalign.organism.shards import iter_tar_groups

        def handler(exc: Exception) -> bool:
            return self._skip(url, f"unreadable tar data: {exc.args[0] if exc.args else exc!r}")

        return list(iter_tar_groups([url], handler=handler))

    def _read_table_rows(self, unit) -> list[dict]:
        from ecoalign.organism.tables import fetch_bytes, read_frame, resolve_source

        path, a, b = unit
        if self._frame is None:
            self._frame = read_frame(path)  # once per worker
        t = self.source.table
        out = []
        for i in range(a, b):
            row = self._frame.iloc[i]
            src = resolve_source(row[t["image"]], Path(path))
            try:
                data = fetch_bytes(src)
            except OSError as exc:
                self._skip(f"{path} row {i}", f"cannot read image {src}: {exc}")
                continue
            out.append({"__key__": f"row{i}", "__url__": f"{path} row {i}", "img": data,
                        "txt": str(row[t["caption"]]).encode()})
        return out

    def next(self) -> tuple[dict, tuple]:
        """(raw sample, its key for RNGs); advances the position."""
        empty_blocks = 0
        while True:
            if self.items is None:
                self._load()
            if self.offset < len(self.items):
                item, key = self.items[self.offset], (self.index, self.g, self.b, self.offset)
                self.offset += 1
                return item, key
            empty_blocks = empty_blocks + 1 if not self.items else 0
            if empty_blocks * self.block > len(self.source.units) + self.world:
                raise EcoalignInputError("no readable sample in a whole pass over these shards", path=self.source.spec,
                                         expected="webdataset shards with images and texts")
            self.b, self.offset, self.items = self.b + 1, 0, None

    @property
    def position(self) -> tuple[int, int]:
        return (self.b, self.offset)


class SampleStream(torch.utils.data.IterableDataset):
    """Iterable dataset (torch ``IterableDataset`` protocol) of batches ``(images, tokens, report)``.

    ``make_sample(raw, source_index, rng) -> (image tensor, text) | str`` turns a raw webdataset sample into a
    training pair, or returns why it is skipped. ``start``: {global worker: position} from a checkpoint; ``shift``:
    batches this process has already taken (the DataLoader's round robin starts again at worker 0 on resume,
    so worker ``w`` plays global worker ``(w + shift) % workers``)."""

    def __init__(self, sources, *, batch: int, seed: int, make_sample: Callable, tokenizer, shuffle_buffer: int,
                 rank: int = 0, world: int = 1, workers: int = 0, start: dict | None = None, shift: int = 0):
        self.sources, self.batch, self.seed, self.make_sample, self.tokenizer = sources, batch, seed, make_sample, tokenizer
        self.rank, self.world, self.workers = rank, world, max(1, workers)
        self.start, self.shift = dict(start or {}), shift
        w = world * self.workers
        self.blocks = [block_shards(s.sizes, shuffle_buffer, w) for s in sources]
        weights = np.array([s.weight for s in sources], float)
        self.probs = weights / weights.sum()

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        local = 0 if info is None else (info.id + self.shift) % self.workers
        g, w = self.rank * self.workers + local, self.world * self.workers
        state = self.start.get(g, {"batch": 0, "sources": [None] * len(self.sources)})
        skipped: list[dict] = []
        readers = [_Reader(s, i, g, w, self.seed, self.blocks[i], state["sources"][i], skipped)
                   for i, s in enumerate(self.sources)]
        n = int(state["batch"])
        while True:
            picks = (np.random.default_rng([self.seed, g, n, 47]).choice(len(readers), self.batch, p=self.probs)
                     if len(readers) > 1 else [0] * self.batch)
            images, texts = [], []
            for s in picks:
                while True:
                    raw, key = readers[s].next()
                    rng = np.random.default_rng([self.seed, *key, 53])
                    got = self.make_sample(raw, s, rng)
                    if isinstance(got, str):
                        skipped.append({"source": self.sources[s].spec, "where": f"{raw.get('__url__')} "
                                        f"sample {raw.get('__key__')}", "reason": got})
                        continue
                    images.append(got[0])
                    texts.append(got[1])
                    break
            n += 1
            report = {"worker": g, "position": {"batch": n, "sources": [r.position for r in readers]},
                      "skipped": list(skipped)}
            skipped.clear()
            yield torch.stack(images), self.tokenizer(texts), report


def merge_positions(positions: dict, world: int, workers: int) -> dict:
    """Positions of all ranks (DDP: gathered) in one dict, keyed by global worker."""
    if world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, positions)
        positions = {k: v for part in gathered for k, v in part.items()}
    return positions
