"""What ``train-organism --data`` names, resolved to shard lists with sample counts (nothing is read but
``sizes.json`` or tar headers).

A data source is: a curated directory (``ecoalign curate``'s --out: its train split), a directory of ``.tar``
shards, one ``.tar``, a brace-expanded or glob shard pattern (``/data/shard-{000000..000099}.tar``,
``/data/*.tar``), or a caption table (.csv/.tsv/.parquet with an image column and a caption column, read in
chunks of rows that play the part of shards). Several sources are mixed by weight.
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ecoalign.core.errors import EcoalignInputError

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
IMAGE_COLUMNS = ("image", "filepath", "path", "file", "image_path", "url")
CAPTION_COLUMNS = ("caption", "text", "title", "txt")
TABLE_CHUNK = 1000  # rows per unit of a caption table (the table's "shards")


@dataclass
class Source:
    """One data source: its units (shard paths, or (table, first row, end row) chunks) and their sample counts."""

    spec: str
    units: list = field(default_factory=list)
    sizes: list = field(default_factory=list)
    weight: float = 1.0
    table: dict | None = None  # {"path", "image", "caption"} for a caption table

    @property
    def samples(self) -> int:
        return int(sum(self.sizes))


def resolve_sources(data, weights: Sequence[float] | None = None, split: str = "train") -> list[Source]:
    """``data`` (one spec or a list) -> sources with their weights (default: proportional to their sizes)."""
    from ecoalign.organism.shards import shard_sizes

    specs = [data] if isinstance(data, (str, os.PathLike)) else list(data or [])
    if not specs:
        raise EcoalignInputError("no training data given", expected="--data <curated dir | shards | pattern | "
                                 "caption table> (repeatable)")
    if weights is not None and len(weights) != len(specs):
        raise EcoalignInputError(f"{len(weights)} data weight(s) for {len(specs)} data source(s)",
                                 where="--data-weights", expected="one weight per --data")
    sources = []
    for i, spec in enumerate(specs):
        spec = str(spec)
        if Path(spec).suffix.lower() in TABLE_SUFFIXES and Path(spec).is_file():
            src = _table_source(spec)
        else:
            paths = shard_list(spec, split)
            src = Source(spec, [str(p) for p in paths], shard_sizes(paths))
        if src.samples == 0:
            raise EcoalignInputError("no samples in these shards", path=spec, expected="non-empty shards")
        if weights is not None:
            if not float(weights[i]) > 0:
                raise EcoalignInputError(f"weight {weights[i]}", where="--data-weights", expected="positive")
            src.weight = float(weights[i])
        else:
            src.weight = float(src.samples)
        sources.append(src)
    return sources


def shard_list(spec: str, split: str = "train") -> list[Path]:
    """The shard files one spec names; every named file must exist, and a spec must name at least one."""
    from webdataset.shardlists import expand_urls

    from ecoalign.organism.shards import shard_paths, tar_paths

    p = Path(spec)
    if p.is_dir():
        if (p / "curation.json").exists():
            paths = shard_paths(p, split)
            if not paths:
                raise EcoalignInputError(f"no shards in split {split!r}", path=p / split,
                                         expected=f"a curated set with {split} images")
            _note_old_layout(p / split)
            return paths
        paths = tar_paths(p)
        if not paths:
            raise EcoalignInputError("no .tar shards in this directory", path=p,
                                     expected="webdataset shards, or the --out directory of `ecoalign curate`")
        return paths
    if p.is_file():
        return [p]
    named = expand_urls(spec)  # brace expansion ({000..009}) and '::' lists, as webdataset reads them
    paths, missing = [], []
    for name in named:
        hits = sorted(glob.glob(name)) if glob.has_magic(name) else [name] if Path(name).is_file() else []
        if not hits and glob.has_magic(name):
            raise EcoalignInputError("the shard pattern matches no file", path=name,
                                     expected="existing .tar shards (local paths; {a..b} and * are expanded)")
        missing += [] if hits else [name]
        paths.extend(Path(h) for h in hits)
    if len(missing) == len(named):
        raise EcoalignInputError("the shard pattern matches no file", path=spec,
                                 expected="existing .tar shards (local paths; {a..b} and * are expanded)")
    if missing:
        raise EcoalignInputError(f"{len(missing)} of the {len(named)} shards the pattern names do not exist, "
                                 f"first: {missing[0]}", path=spec, expected="every shard the pattern names")
    return paths


def _note_old_layout(folder: Path) -> None:
    from ecoalign.organism.shards import SIZES

    if not (folder / SIZES).exists():
        log.warning("%s was written by an older `ecoalign curate` (no %s): samples are counted from the tar "
                    "headers and the shards have no plain <key>.txt caption for open_clip_train; re-run "
                    "`ecoalign curate` to update them", folder, SIZES)


def _table_source(spec: str) -> Source:
    from ecoalign.organism.tables import read_frame

    frame = read_frame(spec)
    cols = {c.lower(): c for c in frame.columns}
    image = next((cols[c] for c in IMAGE_COLUMNS if c in cols), None)
    caption = next((cols[c] for c in CAPTION_COLUMNS if c in cols), None)
    if image is None or caption is None:
        raise EcoalignInputError(f"columns {list(frame.columns)}", path=spec,
                                 expected=f"an image column (one of {IMAGE_COLUMNS}) and a caption column (one of "
                                          f"{CAPTION_COLUMNS})")
    n = len(frame)
    units = [(spec, a, min(a + TABLE_CHUNK, n)) for a in range(0, n, TABLE_CHUNK)]
    return Source(spec, units, [b - a for _, a, b in units], table={"path": spec, "image": image, "caption": caption})
