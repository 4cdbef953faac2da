"""Labelled photos to evaluate an encoder on: a split of a curated folder or a labelled image table, embedded,
with the taxon of every readable image; and candidate taxa from a labels table.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecoalign.core.errors import EcoalignInputError

log = logging.getLogger(__name__)


@dataclass
class LabelledPhotos:
    """Embedded labelled photos: one name, taxon (None where no rank is known) and embedding row per read image."""
    names: list[str]
    taxa: list
    embeddings: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (name, reason) of unreadable images
    notes: list[str] = field(default_factory=list)                  # label cleaning notes ('row 3: ...')
    source: dict = field(default_factory=dict)                      # {"data": curated folder or table, "split"}


def read_labelled_table(path: str | Path, images_root: str | Path | None = None):
    """(items, notes) from a labelled image table: items are (name, image path, Taxon or None) per row, notes
    the name-cleaning notes ('row 3: ...', counting the header as row 1).

    Image paths are relative to ``images_root`` (default: the table's folder) unless absolute.
    """
    from ecoalign.organism.tables import read_table, table_taxa

    tab = read_table(path)
    taxa, per_row = table_taxa(tab)
    notes = [f"row {i + 2}: {n}" for i, row in enumerate(per_row) for n in row]
    root = Path(images_root) if images_root else tab.path.parent
    items = []
    for name, taxon in zip(tab.frame[tab.image_col].astype(str), taxa):
        p = Path(name)
        items.append((name, p if p.is_absolute() else root / p, taxon if taxon.depth else None))
    return items, notes


def iter_curated(curated_dir: str | Path, split: str):
    """(items, total): (key, PIL image, Taxon) from the webdataset shards of one curated split."""
    from ecoalign.organism.shards import iter_samples, shard_paths

    paths = shard_paths(curated_dir, split)
    if not paths:
        raise EcoalignInputError(f"no shards for split '{split}'", path=curated_dir,
                                 expected="a folder written by `ecoalign curate` (train, val, test, test_unseen)")
    total = _curated_count(Path(curated_dir), split)
    return ((s["key"], s["image"], s["taxon"]) for s in iter_samples(paths)), total


def _curated_count(folder: Path, split: str) -> int | None:
    import json

    try:
        return int(json.loads((folder / "curation.json").read_text())["splits"][split]["images"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def candidate_taxa(labels: str | Path) -> list:
    """The taxa of a labels table, one per row with a known rank (rank columns; no image column needed)."""
    from ecoalign.organism.tables import read_table, table_taxa

    taxa, _ = table_taxa(read_table(labels, need_images=False))
    taxa = [t for t in taxa if t.depth]
    if not taxa:
        raise EcoalignInputError("no taxon in the labels table", path=labels, expected="rank columns with names")
    return taxa


def embed_labelled(encoder, *, curated: str | Path | None = None, table: str | Path | None = None,
                   split: str = "test", images_root: str | Path | None = None, batch_size: int = 64,
                   progress: bool = True) -> LabelledPhotos:
    """Embed the photos of a curated split (``curated`` + ``split``) or of a labelled table (``table``, paths
    relative to ``images_root`` or the table); unreadable images are skipped and listed."""
    from ecoalign.organism.photos import embed_items

    if (curated is None) == (table is None):
        raise EcoalignInputError("give one labelled data set", expected="curated=<folder of `ecoalign curate`> "
                                 "(--curated) or table=<labelled image table> (--table)")
    notes: list[str] = []
    if curated is not None:
        items, total = iter_curated(curated, split)
        source = {"data": str(curated), "split": split}
    else:
        items, notes = read_labelled_table(table, images_root)
        total, source = len(items), {"data": str(table), "split": None}
        if notes:
            log.info("%d label note(s), e.g. %s", len(notes), notes[0])
    names, taxa, emb, skipped = embed_items(encoder, items, batch_size=batch_size, total=total, progress=progress)
    if not names:
        raise EcoalignInputError("no readable labelled image", path=curated or table)
    return LabelledPhotos(names, taxa, emb, skipped, notes, source)
