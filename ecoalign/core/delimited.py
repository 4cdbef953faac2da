"""Delimited text tables (CSV, TSV, semicolon) read by pandas' C parser, the delimiter sniffed from the head.

``pandas.read_csv(sep=None)`` sniffs the delimiter too, but only with its Python parser, some 50 times
slower: 1.5 s of CPU for the 10,000 background points of one disdat region, more than fitting a model to
them. Here the standard library's ``csv.Sniffer`` reads the first line (as pandas does), limited to real
delimiters, and the C parser reads the file. A first line without any (one column) is read as a CSV: pandas'
unrestricted sniffing would split the header ``plot_id`` on the letter ``t``.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

DELIMITERS = ",;\t|"


def sniff_delimiter(path: str | os.PathLike) -> str | None:
    """The delimiter of the file's first non-empty line, or None when it cannot be told."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                try:
                    return csv.Sniffer().sniff(line, delimiters=DELIMITERS).delimiter
                except csv.Error:
                    return None
    return None


def read_delimited(path: str | os.PathLike, sep: str | None = None, **kwargs):
    """``pandas.read_csv(path, sep=sep, engine="c", **kwargs)``; ``sep=None``: sniffed (a comma if none is seen)."""
    import pandas as pd

    path = Path(path)
    return pd.read_csv(path, sep=sep or sniff_delimiter(path) or ",", engine="c", **kwargs)
