"""Zero-shot accuracy of an organism encoder on labelled photos, at one or more ranks; ``zero_shot`` is the Python
face of ``ecoalign zero-shot``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def zero_shot(encoder, *, curated: str | Path | None = None, table: str | Path | None = None, split: str = "test",
              images_root: str | Path | None = None, rank: str | Sequence[str] = "species", method: str = "sum",
              text_type: str = "taxonomic", labels: str | Path | None = None, weights: str | None = "none",
              device: str = "cpu", batch_size: int = 64, out: str | Path | None = None, overwrite: bool = False,
              progress: bool = True):
    """Top-1 and top-5 zero-shot accuracy, with Wilson 95% intervals, at each of ``rank``.

    The photos: a ``curated`` folder's ``split`` or a labelled ``table`` (paths relative to ``images_root`` or
    the table). The candidate classes: the taxa of a ``labels`` table, or by default those of the evaluated
    photos; above species ``method`` 'sum' adds species probabilities, 'text' scores rank-level texts.
    ``encoder``: a loaded organism encoder or a name for ``load_organism_encoder``.

    Returns a DataFrame, one row per rank (the CSV report's columns: rank, method, text_type, classes, images,
    top1, top1_low, top1_high, top5_k, top5, top5_low, top5_high); ``.attrs["ecoalign"]`` holds the JSON report
    (encoder identity, data, per-rank details with the images left out, skipped images, label notes). With
    ``out`` the report is written: .json (full) or .csv (the table).
    """
    import pandas as pd

    from ecoalign.encoders.organism import as_organism_encoder
    from ecoalign.organism.evaluate import build_classes, zero_shot_accuracy
    from ecoalign.organism.labelled import candidate_taxa, embed_labelled
    from ecoalign.organism.outputs import (
        REPORT_SUFFIXES,
        check_out,
        report_skipped,
        write_report,
    )

    ranks = [rank] if isinstance(rank, str) else list(rank)
    out = check_out(out, overwrite, REPORT_SUFFIXES)
    enc = as_organism_encoder(encoder, weights=weights, device=device)
    data = embed_labelled(enc, curated=curated, table=table, split=split, images_root=images_root,
                          batch_size=batch_size, progress=progress)
    candidates = candidate_taxa(labels) if labels is not None else [t for t in data.taxa if t is not None]
    results, rows = [], []
    for r in ranks:
        classes = build_classes(enc, candidates, r, method=method, text_type=text_type)
        report, _ = zero_shot_accuracy(data.embeddings, data.taxa, classes)
        results.append(report.to_dict())
        t1, t5 = report.top1, report.top5
        rows.append({"rank": r, "method": method, "text_type": text_type, "classes": report.n_classes,
                     "images": report.n_images, "top1": t1.value, "top1_low": t1.low, "top1_high": t1.high,
                     "top5_k": report.top5_k, "top5": t5.value, "top5_low": t5.low, "top5_high": t5.high})
    summary = pd.DataFrame(rows)
    payload = {"encoder": enc.identity(), **data.source, "results": results,
               "skipped": report_skipped(data.skipped, out), "label_notes": data.notes}
    write_report(out, payload, summary)
    summary.attrs["ecoalign"] = payload
    return summary
