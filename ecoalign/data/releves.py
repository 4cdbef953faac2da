"""Relevé tables (long or wide, percent or cover classes) into one plots x species cover matrix in percent."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ecoalign.core.delimited import read_delimited
from ecoalign.core.errors import EcoalignInputError

# Cover-class scales to percent cover (class midpoints). A manifest may name one or give its own mapping.
COVER_SCALES: dict[str, dict[str, float]] = {
    "braun_blanquet": {"r": 0.1, "+": 0.5, "1": 2.5, "2": 15.0, "3": 37.5, "4": 62.5, "5": 87.5},
    "braun_blanquet_extended": {"r": 0.1, "+": 0.5, "1": 2.5, "2m": 2.5, "2a": 10.0, "2b": 20.0,
                                "2": 15.0, "3": 37.5, "4": 62.5, "5": 87.5},
    # labdsv's Bryce Canyon classes (bryceveg): 0.2 trace .. 6 = 95-100 %
    "bryce": {"0": 0.0, "0.2": 0.1, "0.5": 0.5, "1": 3.0, "2": 15.0, "3": 37.5, "4": 62.5, "5": 85.0, "6": 97.5},
}


@dataclass
class ReleveTable:
    """Cover in percent for each plot (rows) and species (columns), and what was fixed or skipped on the way."""

    plot_ids: np.ndarray  # str, (P,)
    species: list[str]
    cover: np.ndarray  # float32, (P, S), percent
    report: dict[str, Any] = field(default_factory=dict)

    def subset(self, plot_ids) -> ReleveTable:
        index = {p: i for i, p in enumerate(self.plot_ids)}
        rows = [index[p] for p in plot_ids]
        return ReleveTable(np.asarray(plot_ids, dtype=object), self.species, self.cover[rows], dict(self.report))


def _scale(cover_scale: Any, path: Path) -> dict[str, float] | None:
    if cover_scale in (None, "percent"):
        return None
    if isinstance(cover_scale, str):
        if cover_scale not in COVER_SCALES:
            raise EcoalignInputError(f"unknown cover scale '{cover_scale}'", path=path,
                                     expected=f"one of {sorted(COVER_SCALES)}, 'percent', or a mapping class -> percent")
        return COVER_SCALES[cover_scale]
    if isinstance(cover_scale, Mapping):
        return {str(k).strip(): float(v) for k, v in cover_scale.items()}
    raise EcoalignInputError(f"cover_scale must be a name or a mapping, got {cover_scale!r}", path=path)


def _class_key(value: Any) -> str:
    """'2.0', 2 and '2' name the same class; 'r', '+', '2a' stay as they are."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def _to_percent(values: pd.Series, scale: dict[str, float] | None, path: Path, column: str,
                row_offset: int = 2) -> np.ndarray:
    """Map a column of covers to percent; unknown classes, NaN and negatives are errors naming the row."""
    if scale is not None:
        keys = values.map(_class_key)
        known = {_class_key(k): v for k, v in scale.items()}
        bad = ~keys.isin(list(known)) & values.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise EcoalignInputError(
                f"unknown cover class {values.iloc[i]!r}", path=path,
                where=f"row {i + row_offset}, column '{column}'", expected=f"one of {sorted(known)}")
        numeric = keys.map(known)
    else:
        numeric = pd.to_numeric(values, errors="coerce")
        text_bad = numeric.isna() & values.notna()
        if text_bad.any():
            i = int(np.flatnonzero(text_bad.to_numpy())[0])
            raise EcoalignInputError(
                f"cover {values.iloc[i]!r} is not a number", path=path, where=f"row {i + row_offset}, column '{column}'",
                expected="percent cover, or set cover_scale in the manifest for cover classes")
    arr = numeric.to_numpy(dtype="float64")
    nan = np.isnan(arr)
    if nan.any():
        i = int(np.flatnonzero(nan)[0])
        raise EcoalignInputError("cover is missing (NaN)", path=path, where=f"row {i + row_offset}, column '{column}'",
                                 expected="a cover value for every species row (drop absent species instead)")
    neg = arr < 0
    if neg.any():
        i = int(np.flatnonzero(neg)[0])
        raise EcoalignInputError(f"negative cover {arr[i]}", path=path, where=f"row {i + row_offset}, column '{column}'",
                                 expected="cover >= 0")
    return arr


def _read_table(path: Path, options: Mapping[str, Any]) -> pd.DataFrame:
    sep = options.get("sep")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    try:
        return read_delimited(path, sep=sep, dtype=str, keep_default_na=True, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise EcoalignInputError(f"cannot parse the table: {exc}", path=path) from exc


def _column(df: pd.DataFrame, name: str, path: Path, role: str) -> pd.Series:
    if name not in df.columns:
        raise EcoalignInputError(f"column '{name}' ({role}) not found", path=path,
                                 expected=f"one of the columns {list(df.columns)[:20]}")
    return df[name]


def read_releves(path: str | Path, *, format: str = "long", plot_column: str = "plot_id",
                 species_column: str = "species", cover_column: str = "cover", cover_scale: Any = None,
                 sep: str | None = None) -> ReleveTable:
    """Read a relevé table. Duplicated species rows within a plot are summed and reported; empty relevés dropped."""
    path = Path(path)
    if not path.exists():
        raise EcoalignInputError("relevé table not found", path=path)
    df = _read_table(path, {"sep": sep})
    if df.empty:
        raise EcoalignInputError("the relevé table has no rows", path=path)
    scale = _scale(cover_scale, path)
    report: dict[str, Any] = {"source": str(path), "format": format}

    if format == "long":
        plots = _column(df, plot_column, path, "plot id").astype(str).str.strip()
        species = _column(df, species_column, path, "species name").astype(str).str.strip().str.replace(r"\s+", " ", regex=True)
        cover = _to_percent(_column(df, cover_column, path, "cover"), scale, path, cover_column)
        long = pd.DataFrame({"plot": plots, "species": species, "cover": cover})
        dup = long.duplicated(["plot", "species"], keep=False)
        report["duplicate_species_rows"] = int(dup.sum())
        if dup.any():
            report["duplicate_examples"] = long.loc[dup, ["plot", "species"]].head(5).values.tolist()
        wide = long.pivot_table(index="plot", columns="species", values="cover", aggfunc="sum", fill_value=0.0)
    elif format == "wide":
        ids = _column(df, plot_column, path, "plot id").astype(str).str.strip()
        if ids.duplicated().any():
            d = ids[ids.duplicated()].iloc[0]
            raise EcoalignInputError(f"plot id '{d}' appears on more than one row", path=path,
                                     where=f"row {int(np.flatnonzero(ids.duplicated().to_numpy())[0]) + 2}",
                                     expected="one row per plot in a wide table")
        species_cols = [c for c in df.columns if c != plot_column]
        if not species_cols:
            raise EcoalignInputError("the wide table has no species columns", path=path)
        values = np.column_stack([_to_percent(df[c], scale, path, c) for c in species_cols])
        wide = pd.DataFrame(values, index=ids.to_numpy(), columns=[str(c).strip() for c in species_cols])
        report["duplicate_species_rows"] = 0
    else:
        raise EcoalignInputError(f"unknown relevé format '{format}'", path=path, expected="'long' or 'wide'")

    wide = wide.sort_index()
    wide = wide.loc[:, wide.sum(axis=0) > 0]
    totals = wide.sum(axis=1)
    empty = totals[totals <= 0].index.tolist()
    report["empty_releves_skipped"] = len(empty)
    if empty:
        report["empty_releve_examples"] = empty[:5]
    wide = wide.loc[totals > 0]
    if wide.empty:
        raise EcoalignInputError("every relevé is empty (no species with cover > 0)", path=path)
    report["plots"] = int(wide.shape[0])
    report["species"] = int(wide.shape[1])
    return ReleveTable(plot_ids=wide.index.to_numpy(dtype=object), species=[str(s) for s in wide.columns],
                       cover=wide.to_numpy(dtype=np.float32), report=report)


def read_manifest_releves(manifest) -> ReleveTable:
    ref = manifest.releves
    return read_releves(ref.path, format=ref.get("format", "long"), plot_column=ref.get("plot_column", "plot_id"),
                        species_column=ref.get("species_column", "species"), cover_column=ref.get("cover_column", "cover"),
                        cover_scale=ref.get("cover_scale"), sep=ref.get("sep"))


def read_species_list(path, species: Sequence[str]) -> list[str]:
    """The names of a species-list file (``adapt --holdout-species``, ``evaluate-zero-shot --species``; text: one a
    line, ``#`` comments; CSV: column ``species`` or the first), each of which must be a species of the relevé
    table ``species``; [] for no file."""
    if not path:
        return []
    path = Path(path)
    if not path.is_file():
        raise EcoalignInputError("species list file not found", path=path,
                                 expected="a text file with one species name a line, or a CSV with a species column")
    if path.suffix.lower() == ".csv":
        table = pd.read_csv(path, dtype=str)
        column = "species" if "species" in table.columns else table.columns[0]
        names = table[column].dropna().tolist()
    else:
        names = [line.split("#")[0] for line in path.read_text().splitlines()]
    names = list(dict.fromkeys(" ".join(n.split()) for n in names if n and n.strip()))
    if not names:
        raise EcoalignInputError("the species list names no species", path=path,
                                 expected="one species name a line")
    unknown = [n for n in names if n not in set(species)]
    if unknown:
        raise EcoalignInputError(f"species {unknown[:5]} are in no relevé", path=path,
                                 expected=f"names as the relevé table spells them, e.g. {list(species)[:3]}")
    return names
