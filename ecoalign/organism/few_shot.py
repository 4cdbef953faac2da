"""Few-shot (SimpleShot) accuracy of an organism encoder's image embeddings on labelled photos; ``few_shot`` is the
Python face of ``ecoalign few-shot``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def few_shot(encoder, *, curated: str | Path | None = None, table: str | Path | None = None, split: str = "test",
             images_root: str | Path | None = None, k: int | Sequence[int] = (1, 5), folds: int = 10,
             rank: str = "species", seed: int = 0, weights: str | None = "none", device: str = "cpu",
             batch_size: int = 64, out: str | Path | None = None, overwrite: bool = False, progress: bool = True):
    """k-shot SimpleShot accuracy over ``folds`` random support/query folds, for each of ``k``, with classes the
    taxa at ``rank`` (classes with k or fewer images are left out and listed).

    The photos: a ``curated`` folder's ``split`` or a labelled ``table`` (paths relative to ``images_root`` or
    the table). ``encoder``: a loaded organism encoder or a name for ``load_organism_encoder``.

    Returns a DataFrame, one row per k (the CSV report's columns: rank, k, folds, classes, accuracy, low, high:
    the mean over folds and its Student-t 95% interval); ``.attrs["ecoalign"]`` holds the JSON report (encoder
    identity, data, per-k details with per-fold accuracies and classes left out, skipped images). With ``out``
    the report is written: .json (full) or .csv (the table).
    """
    import pandas as pd

    from ecoalign.encoders.organism import as_organism_encoder
    from ecoalign.organism.evaluate import few_shot_accuracy, rank_index
    from ecoalign.organism.labelled import embed_labelled
    from ecoalign.organism.outputs import (
        REPORT_SUFFIXES,
        check_out,
        report_skipped,
        write_report,
    )

    ks = [int(k)] if np.ndim(k) == 0 else [int(x) for x in k]
    rank_index(rank)
    out = check_out(out, overwrite, REPORT_SUFFIXES)
    enc = as_organism_encoder(encoder, weights=weights, device=device)
    data = embed_labelled(enc, curated=curated, table=table, split=split, images_root=images_root,
                          batch_size=batch_size, progress=progress)
    keep = [i for i, t in enumerate(data.taxa) if t is not None and t.label(rank) is not None]
    labels = [data.taxa[i].label(rank) for i in keep]
    results, rows = [], []
    for shots in ks:
        rep = few_shot_accuracy(data.embeddings[keep], labels, shots, folds=folds, seed=seed)
        results.append(rep.to_dict())
        rows.append({"rank": rank, "k": shots, "folds": rep.folds, "classes": rep.n_classes, "accuracy": rep.mean,
                     "low": rep.low, "high": rep.high})
    summary = pd.DataFrame(rows)
    payload = {"encoder": enc.identity(), **data.source, "rank": rank,
               "images_without_rank": len(data.taxa) - len(keep), "results": results,
               "skipped": report_skipped(data.skipped, out), "label_notes": data.notes}
    write_report(out, payload, summary)
    summary.attrs["ecoalign"] = payload
    return summary
