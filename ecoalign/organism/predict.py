"""Top-k zero-shot predictions for a folder of photos, as flat rows (pybioclip style); ``predict`` is the Python
face of ``ecoalign predict``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError
from ecoalign.organism.evaluate import ZeroShotClasses

log = logging.getLogger(__name__)


def prediction_rows(names: Sequence[str], scores: np.ndarray, classes: ZeroShotClasses, k: int) -> list[dict]:
    """Flat top-k rows per image: file_name, the taxon's ranks (or ``classification``), score, rank (1 = best)."""
    from ecoalign.data.taxonomy import RANKS

    k = max(1, min(k, len(classes.labels)))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = []
    for name, best, row in zip(names, order, scores):
        for pos, c in enumerate(best, start=1):
            out = {"file_name": name}
            taxon = classes.taxa[c]
            if taxon is None:
                out["classification"] = classes.labels[c]
            else:
                depth = RANKS.index(classes.rank) + 1
                for rank_name in RANKS[:depth]:
                    out[rank_name] = taxon.name_at(rank_name)
                if classes.rank == "species":
                    out["common_name"] = taxon.common
            out["score"] = float(row[c])
            out["position"] = pos  # 1 = best; "rank" means taxonomic rank everywhere else
            rows.append(out)
    return rows


def predict_folder(encoder, folder: str | Path, classes: ZeroShotClasses, *, k: int = 5, batch_size: int = 64,
                   progress: bool = True):
    """(table, skipped): top-k zero-shot predictions for every readable image in a folder."""
    import pandas as pd

    from ecoalign.organism.photos import embed_items, folder_items

    items, total = folder_items(folder)
    rows: list[dict] = []
    *_, skipped = embed_items(encoder, items, batch_size=batch_size, total=total, progress=progress,
                              what="predict",
                              on_batch=lambda n, _, e: rows.extend(prediction_rows(n, classes.scores(e), classes, k)))
    return pd.DataFrame(rows), skipped


def class_names(classes: str | Path | Sequence[str]) -> list[str]:
    """Free-text class names: a list, a text file with one per line, or 'a,b,c'."""
    if not isinstance(classes, (str, Path)):
        return [str(c).strip() for c in classes if str(c).strip()]
    path = Path(classes)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [s.strip() for s in str(classes).split(",") if s.strip()]


def predict(images: str | Path, encoder, *, labels: str | Path | None = None,
            classes: str | Path | Sequence[str] | None = None, rank: str = "species", method: str = "sum",
            text_type: str = "taxonomic", k: int = 5, weights: str | None = "none", device: str = "cpu",
            batch_size: int = 64, out: str | Path | None = None, overwrite: bool = False, progress: bool = True):
    """Top-``k`` zero-shot predictions for a folder of photos (searched recursively) or one photo.

    Python face of ``ecoalign predict``. The classes are the taxa of a ``labels`` table at ``rank`` (``method``
    'sum' adds species probabilities up to the rank, 'text' scores rank-level ``text_type`` texts), or free-text
    ``classes`` (a list, 'a,b,c' or a file with one per line). ``encoder``: a loaded organism encoder or a name
    for ``load_organism_encoder``. Returns a DataFrame with ``k`` rows per readable image: ``file_name``, the
    taxon's ranks (or ``classification``), ``score`` and ``rank`` (1 = best); ``.attrs["ecoalign"]`` holds the
    encoder's identity, the classes and the skipped images. With ``out`` (.csv or .parquet) it is written too,
    the skipped images beside it (``<out>.skipped.csv``).
    """
    from ecoalign.encoders.organism import as_organism_encoder
    from ecoalign.organism.evaluate import build_classes, custom_classes
    from ecoalign.organism.labelled import candidate_taxa
    from ecoalign.organism.outputs import (
        TABLE_SUFFIXES,
        check_out,
        report_skipped,
        write_table,
    )

    out = check_out(out, overwrite, TABLE_SUFFIXES)
    if (labels is None) == (classes is None):
        raise EcoalignInputError("give the candidate classes one way", expected="labels=<table of taxa> (--labels) "
                                 "or classes=<names> (--classes)")
    if k < 1:
        raise EcoalignInputError(f"k={k}", expected="k >= 1 predictions per image")
    enc = as_organism_encoder(encoder, weights=weights, device=device)
    if labels is not None:
        cls = build_classes(enc, candidate_taxa(labels), rank, method=method, text_type=text_type)
    else:
        cls = custom_classes(enc, class_names(classes))
    table, skipped = predict_folder(enc, images, cls, k=k, batch_size=batch_size, progress=progress)
    meta = {"encoder": enc.identity(), "rank": cls.rank, "method": cls.method, "k": k, "classes": len(cls.labels)}
    if out is not None:
        write_table(table, out, meta)
        log.info("wrote %d predictions to %s", len(table), out)
    table.attrs["ecoalign"] = {**meta, "skipped": report_skipped(skipped, out)}
    return table
