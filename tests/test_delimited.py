"""Delimited tables: the delimiter sniffed as pandas' sep=None does, the file read by the C parser."""
from __future__ import annotations

import pandas as pd
import pytest

from ecoalign.core.delimited import read_delimited, sniff_delimiter

ROWS = [["plot_id", "x", "y", "species"], ["p1", "1.5", "2", "Quercus ilex, L."], ["p 2", "3", "-4.25", "Pinus"]]


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_same_table_as_pandas_sniffing(tmp_path, sep):
    path = tmp_path / "t.csv"
    path.write_text("\n".join(sep.join(f'"{c}"' if sep in c or "," in c else c for c in row) for row in ROWS) + "\n")
    assert sniff_delimiter(path) == sep
    for kw in ({}, {"dtype": str}, {"dtype": {"plot_id": str}, "keep_default_na": False}):
        pd.testing.assert_frame_equal(read_delimited(path, **kw), pd.read_csv(path, sep=None, engine="python", **kw))


def test_reads_with_the_c_parser_and_one_column_as_one_column(tmp_path, monkeypatch):
    engines = []
    real = pd.read_csv
    monkeypatch.setattr(pd, "read_csv", lambda *a, **kw: engines.append(kw.get("engine")) or real(*a, **kw))
    many = tmp_path / "many.csv"
    many.write_text("a;b\n1;2\n")
    one = tmp_path / "one.csv"
    one.write_text("plot_id\np1\np2\n")
    assert read_delimited(many).columns.tolist() == ["a", "b"]
    assert read_delimited(one)["plot_id"].tolist() == ["p1", "p2"]
    assert engines == ["c", "c"]  # pandas' own sniffing splits "plot_id" on "t"
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n")
    assert sniff_delimiter(blank) is None
