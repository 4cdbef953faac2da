"""The curation report: how many taxa and images per rank and split, and the long tail of images per species.

Why: a curated organism set is judged by its coverage (distinct taxa at each rank) and its imbalance (a few
species with most photos); both decide what a CLIP model can learn and which filters to set.
"""
from __future__ import annotations

import os
from pathlib import Path

from ecoalign.core.io import atomic_path, write_text
from ecoalign.data.taxonomy import RANKS


def rank_table(meta):
    """Per rank: distinct taxa known at that rank, and images labelled at least that deep (all splits)."""
    import pandas as pd

    out = []
    for i, rank in enumerate(RANKS):
        known = meta[meta["depth"] > i]
        labels = known[list(RANKS[: i + 1])].astype(str).agg(" ".join, axis=1) if len(known) else []
        out.append({"rank": rank, "taxa": int(pd.Series(labels).nunique()) if len(known) else 0,
                    "images": int(len(known))})
    return pd.DataFrame(out)


def images_per_taxon(meta):
    """Images per deepest label (species, or the rank a row was kept at), largest first."""
    labels = meta.apply(lambda r: " ".join(str(r[k]) for k in RANKS[: int(r["depth"])]), axis=1)
    return labels.value_counts().sort_values(ascending=False)


def write_report(meta, out_dir: str | os.PathLike, record: dict | None = None) -> Path:
    """stats.md + images_per_rank.png + long_tail.png in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = rank_table(meta)
    counts = images_per_taxon(meta) if len(meta) else None

    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.bar(ranks["rank"], ranks["taxa"], color="tab:green")
    ax1.set_ylabel("distinct taxa", color="tab:green")
    ax1.set_yscale("log")
    ax2 = ax1.twinx()
    ax2.plot(ranks["rank"], ranks["images"], "o-", color="tab:blue")
    ax2.set_ylabel("images labelled to this rank", color="tab:blue")
    ax2.set_ylim(bottom=0)
    ax1.set_title("Taxa and images per rank")
    fig.tight_layout()
    with atomic_path(out_dir / "images_per_rank.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    if counts is not None and len(counts):
        ax.plot(range(1, len(counts) + 1), counts.to_numpy(), drawstyle="steps-post")
    ax.set_yscale("log")
    ax.set_xlabel("species (or deepest taxon), sorted by image count")
    ax.set_ylabel("images")
    ax.set_title("Long tail: images per species")
    fig.tight_layout()
    with atomic_path(out_dir / "long_tail.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)

    lines = ["# Curated organism data", "", f"{len(meta)} images."]
    if record is not None:
        lines += ["", "## Filters", "", "| step | before | after |", "|---|---:|---:|"]
        lines += [f"| {s['step']} | {s['before']} | {s['after']} |" for s in record.get("steps", [])]
        lines += ["", f"Unreadable images skipped: {len(record.get('unreadable', []))}; "
                      f"duplicates removed: {len(record.get('duplicates', []))} (table), "
                      f"{len(record.get('eval_duplicates', []))} (evaluation sets); "
                      f"rows kept above species rank: {len(record.get('missing_ranks', []))}."]
        if record.get("leakage", {}).get("allowed"):
            lines += ["", f"**Leakage allowed**: {record['leakage']['species']}"]
    lines += ["", "## Splits", "", "| split | images | taxa |", "|---|---:|---:|"]
    for split in ("train", "val", "test", "test_unseen"):
        part = meta[meta["split"] == split]
        n_taxa = images_per_taxon(part).size if len(part) else 0
        lines.append(f"| {split} | {len(part)} | {n_taxa} |")
    lines += ["", "## Ranks", "", "| rank | distinct taxa | images |", "|---|---:|---:|"]
    lines += [f"| {r.rank} | {r.taxa} | {r.images} |" for r in ranks.itertuples()]
    if counts is not None and len(counts):
        lines += ["", "## Long tail", "",
                  f"Images per species: max {counts.max()}, median {float(counts.median()):g}, min {counts.min()}; "
                  f"{int((counts == 1).sum())} species with a single image.", "",
                  "![images per rank](images_per_rank.png)", "", "![long tail](long_tail.png)"]
    write_text(out_dir / "stats.md", "\n".join(lines) + "\n")
    return out_dir / "stats.md"
