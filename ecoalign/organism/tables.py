"""Metadata tables of organism photos: find their image, rank, common-name and split columns, clean each row's
taxon, and resolve the image each row names (a path relative to the table, an absolute path, or a URL).

One reader for every verb that takes such a table (``curate``, ``zero-shot --table``/``--labels``, ``few-shot``,
``predict --labels``, ``intrinsic``), so a table that works for one works for all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecoalign.core.delimited import read_delimited
from ecoalign.core.errors import EcoalignInputError
from ecoalign.data.taxonomy import RANKS, Taxon

IMAGE_COLUMNS = ("path", "filepath", "file_path", "file", "filename", "file_name", "image", "image_path",
                 "img", "url", "image_url", "identifier", "photo", "source")
RANK_COLUMNS = {
    "kingdom": ("kingdom", "taxon_kingdom", "dwc_kingdom"),
    "phylum": ("phylum", "taxon_phylum", "division", "dwc_phylum"),
    "class": ("class", "cls", "class_name", "taxon_class", "dwc_class"),
    "order": ("order", "order_name", "taxon_order", "dwc_order"),
    "family": ("family", "taxon_family", "dwc_family"),
    "genus": ("genus", "taxon_genus", "dwc_genus"),
    "species": ("species", "scientific_name", "scientificname", "binomial", "species_name", "taxon_species",
                "epithet", "specific_epithet", "specificepithet", "dwc_scientificname"),
}
COMMON_COLUMNS = ("common", "common_name", "commonname", "vernacular", "vernacular_name", "vernacularname")
SPLIT_COLUMNS = ("split", "subset", "partition")


@dataclass
class Table:
    """A metadata table with the columns it was found to use."""

    path: Path
    frame: object  # pandas.DataFrame
    image_col: str | None
    rank_cols: dict[str, str]
    common_col: str | None
    split_col: str | None


def _norm(col: str) -> str:
    return str(col).strip().lower().replace(" ", "_").replace("-", "_").replace(":", "_")


def read_frame(path: str | os.PathLike):
    """A CSV/TSV/Parquet table as a DataFrame (CSV cells as strings), or a named input error."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise EcoalignInputError("table not found", path=path, expected="a CSV or Parquet file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if path.suffix.lower() in (".csv", ".tsv", ".txt"):
            return read_delimited(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise EcoalignInputError(f"cannot read table: {exc}", path=path, expected="a CSV or Parquet file") from exc
    raise EcoalignInputError(f"unsupported table format {path.suffix!r}", path=path, expected=".csv, .tsv or .parquet")


def read_table(path: str | os.PathLike, *, need_images: bool = True) -> Table:
    """Read a CSV/TSV/Parquet metadata table and guess its image, rank, common-name and split columns."""
    path = Path(path)
    if not path.exists():
        raise EcoalignInputError("metadata table not found", path=path, expected="a CSV or Parquet file")
    frame = read_frame(path)
    by_norm = {}
    for c in frame.columns:
        by_norm.setdefault(_norm(c), c)

    def pick(candidates):
        return next((by_norm[c] for c in candidates if c in by_norm), None)

    image_col = pick(IMAGE_COLUMNS)
    rank_cols = {r: c for r in RANKS if (c := pick(RANK_COLUMNS[r])) is not None}
    if need_images and image_col is None:
        raise EcoalignInputError("no image column", path=path, where=f"columns {list(frame.columns)}",
                                 expected=f"one of {IMAGE_COLUMNS} holding a path or URL")
    if not rank_cols:
        raise EcoalignInputError("no taxonomy columns", path=path, where=f"columns {list(frame.columns)}",
                                 expected=f"some of {list(RANKS)}")
    return Table(path, frame.reset_index(drop=True), image_col, rank_cols, pick(COMMON_COLUMNS),
                 pick(SPLIT_COLUMNS))


def _cell(row, col):
    if col is None:
        return None
    v = row[col]
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


def table_taxa(table: Table) -> tuple[list[Taxon], list[list[str]]]:
    taxa, notes = [], []
    for _, row in table.frame.iterrows():
        t, n = Taxon.from_ranks({r: _cell(row, c) for r, c in table.rank_cols.items()},
                                common=_cell(row, table.common_col))
        taxa.append(t)
        notes.append(n)
    return taxa, notes


def is_url(source: str) -> bool:
    return source.split("://", 1)[0].lower() in ("http", "https", "ftp") and "://" in source


def resolve_source(source: str, table_path: Path) -> str:
    source = str(source).strip()
    if is_url(source) or not source:
        return source
    p = Path(source).expanduser()
    return str(p if p.is_absolute() else (table_path.parent / p))


def fetch_bytes(source: str, timeout: float = 30.0) -> bytes:
    """The bytes of a local file or a URL (urllib). Raises OSError (incl. URLError) when unreachable."""
    if is_url(source):
        import urllib.request

        req = urllib.request.Request(source, headers={"User-Agent": "ecoalign-curate"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()
    with open(source, "rb") as f:
        return f.read()
