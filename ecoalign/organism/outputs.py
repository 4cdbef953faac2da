"""Result files of the organism verbs: the output path checked before any work, tables and reports written
atomically, and the images that could not be read listed in the log and beside the output.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from ecoalign.core.errors import EcoalignInputError

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".parquet")
REPORT_SUFFIXES = (".json", ".csv")
SHOW_SKIPPED = 20


def check_out(out, overwrite: bool, suffixes: Sequence[str] | None = None) -> Path | None:
    """``out`` as a Path (None stays None), refused if it has another suffix or exists without ``overwrite``."""
    if out is None:
        return None
    out = Path(out)
    if suffixes and out.suffix.lower() not in suffixes:
        raise EcoalignInputError(f"output suffix '{out.suffix}'", path=out, expected=" or ".join(suffixes))
    if out.exists() and not overwrite:
        raise EcoalignInputError("output exists", path=out, expected="another output, or overwrite (--overwrite)")
    return out


def write_table(df, out: Path, meta: dict | None = None) -> None:
    """CSV or Parquet by suffix, atomically; Parquet carries ``meta`` (encoder identity ...) in its schema."""
    import json

    from ecoalign.core.io import atomic_path

    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            if meta:
                table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                       b"ecoalign": json.dumps(meta, default=str).encode()})
            pq.write_table(table, tmp)
        else:
            df.to_csv(tmp, index=False)


def write_report(out: Path | None, payload: dict, table) -> None:
    """A report: the full ``payload`` as .json, or the summary ``table`` as .csv."""
    from ecoalign.core.io import write_json

    if out is None:
        return
    if out.suffix.lower() == ".json":
        write_json(out, payload)
    else:
        write_table(table, out)
    log.info("wrote %s", out)


def report_skipped(skipped: Sequence[tuple[str, str]], out: Path | None = None) -> list[dict]:
    """Unreadable images: a warning naming the first few, with an output ``<out>.skipped.csv`` listing all;
    returns them as ``{"file_name", "reason"}`` rows (the reports' ``skipped``)."""
    rows = [{"file_name": name, "reason": why} for name, why in skipped]
    if not rows:
        return rows
    shown = "\n".join(f"  {r['file_name']}: {r['reason']}" for r in rows[:SHOW_SKIPPED])
    more = f"\n  ... {len(rows) - SHOW_SKIPPED} more" if len(rows) > SHOW_SKIPPED else ""
    if out is not None:
        import pandas as pd

        from ecoalign.core.io import atomic_path

        side = skipped_path(out)
        with atomic_path(side) as tmp:
            pd.DataFrame(rows, columns=["file_name", "reason"]).to_csv(tmp, index=False)
        more += f"\n  list of skipped images: {side}"
    log.warning("skipped %d unreadable image(s):\n%s%s", len(rows), shown, more)
    return rows


def skipped_path(out: str | Path) -> Path:
    """Where the list of skipped images goes beside an output."""
    out = Path(out)
    return out.with_name(out.name + ".skipped.csv")
