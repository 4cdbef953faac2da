"""Intrinsic analysis of an embedding space (BioCLIP 2, section 5): where intra-species variation lives.

- explained-variance ratio rho = ||U^T D||_F^2 / ||D||_F^2, U an orthonormal (QR) basis of the species mean
  vectors, D the intra-species variation vectors: small rho means variation sits orthogonal to the species span
  and does not blur species apart. A random direction would give rho = dim(span) / D ("chance").
- Fisher discriminant ratio ||mu_A - mu_B||^2 / (sigma_A^2 + sigma_B^2): how separable two groups are.
- a 2-D map (PCA or t-SNE) of the embeddings coloured by a taxonomic rank.

``intrinsic`` is the Python face of ``ecoalign intrinsic``: an encoder and labelled photos in, these measures out.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError


def group_means(emb: np.ndarray, labels: Sequence) -> tuple[list, np.ndarray]:
    """Distinct labels (first-seen order) and the mean embedding of each."""
    labels = np.asarray([str(x) for x in labels])
    names = list(dict.fromkeys(labels.tolist()))
    return names, np.stack([emb[labels == n].mean(axis=0) for n in names])


def span_basis(vectors: np.ndarray, rtol: float = 1e-8) -> np.ndarray:
    """(D, r) orthonormal basis of the span of the rows of ``vectors`` (pivoted QR; dependent rows dropped)."""
    from scipy.linalg import qr

    q, r, _ = qr(np.asarray(vectors, np.float64).T, mode="economic", pivoting=True)
    diag = np.abs(np.diag(r))
    keep = diag > rtol * (diag.max() if len(diag) else 0.0)
    return q[:, keep]


def intra_species_vectors(emb: np.ndarray, species: Sequence, variants: Sequence | None = None) -> np.ndarray:
    """Rows of D: each image minus its species mean, or (given variants) between-variant mean differences."""
    emb = np.asarray(emb, np.float64)
    species = np.asarray([str(s) for s in species])
    rows = []
    for s in dict.fromkeys(species.tolist()):
        mask = species == s
        if variants is None:
            if mask.sum() >= 2:  # a single image carries no measurable variation
                rows.append(emb[mask] - emb[mask].mean(axis=0))
            continue
        names, means = group_means(emb[mask], np.asarray(variants)[mask])
        if len(names) >= 2:
            rows.append(means[1:] - means[0])  # from the first variant's mean to each other one
    if not rows:
        raise EcoalignInputError("no species with intra-species variation to measure",
                                 expected="species with 2+ images (or 2+ variants)")
    return np.concatenate(rows)


def explained_variance_ratio(emb: np.ndarray, species: Sequence, variants: Sequence | None = None) -> dict:
    """rho: share of intra-species variation energy inside the span of the species means (BioCLIP 2, eq. in 5.2)."""
    emb = np.asarray(emb, np.float64)
    _, means = group_means(emb, species)
    if len(means) < 2:
        raise EcoalignInputError(f"{len(means)} species", expected="at least 2 species")
    basis = span_basis(means)
    d = intra_species_vectors(emb, species, variants)
    energy = float((d ** 2).sum())
    rho = float(((basis.T @ d.T) ** 2).sum() / energy) if energy > 0 else float("nan")
    return {"rho": rho, "chance": basis.shape[1] / emb.shape[1], "span_dim": int(basis.shape[1]),
            "embed_dim": int(emb.shape[1]), "n_vectors": int(len(d)), "n_species": int(len(means))}


def fisher_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_A - mu_B||^2 / (sigma_A^2 + sigma_B^2), sigma^2 the mean squared distance to the group mean."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 1 or len(b) < 1:
        raise EcoalignInputError("an empty group", expected="two groups with at least one embedding each")
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    spread = ((a - ma) ** 2).sum(axis=1).mean() + ((b - mb) ** 2).sum(axis=1).mean()
    gap = float(((ma - mb) ** 2).sum())
    return gap / spread if spread > 0 else float("inf")


def mean_fisher_ratio(emb: np.ndarray, groups: Sequence, within: Sequence | None = None) -> dict:
    """Mean FDR over all pairs of groups, or (``within`` = species) over variant pairs inside each species."""
    emb = np.asarray(emb, np.float64)
    groups = np.asarray([str(g) for g in groups])
    blocks = [np.ones(len(emb), bool)] if within is None else [
        np.asarray(within).astype(str) == w for w in dict.fromkeys(np.asarray(within).astype(str).tolist())]
    values = []
    for block in blocks:
        names, counts = np.unique(groups[block], return_counts=True)
        names = names[counts >= 2]  # a spread needs two members
        for x, y in combinations(names, 2):
            values.append(fisher_ratio(emb[block & (groups == x)], emb[block & (groups == y)]))
    if not values:
        raise EcoalignInputError("no pair of groups to compare",
                                 expected="2+ groups with 2+ images each (per species, with within=)")
    return {"mean": float(np.mean(values)), "median": float(np.median(values)), "pairs": len(values)}


def project_2d(emb: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, 2) coordinates by PCA or t-SNE (perplexity shrunk for small sets)."""
    emb = np.asarray(emb, np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(emb)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(max(2, min(30, (len(emb) - 1) // 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(emb)
    raise EcoalignInputError(f"unknown projection '{method}'", expected="pca or tsne")


def plot_embedding(emb: np.ndarray, labels: Sequence, path: str | Path, *, method: str = "pca",
                   title: str = "", seed: int = 0) -> Path:
    """A 2-D scatter of the embeddings coloured by label -> PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ecoalign.core.io import atomic_path

    if len(emb) < 3:
        raise EcoalignInputError(f"{len(emb)} embeddings", expected="at least 3 images to plot")
    xy = project_2d(emb, method, seed)
    labels = np.asarray([str(x) for x in labels])
    names = list(dict.fromkeys(labels.tolist()))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(7, 6))
    for i, n in enumerate(names):
        m = labels == n
        ax.scatter(xy[m, 0], xy[m, 1], s=14, color=cmap(i % cmap.N), label=n.split(" ")[-1], alpha=0.8)
    if len(names) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best", frameon=False)
    ax.set_title(title or f"{method.upper()} of image embeddings")
    ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def _or_reason(fn, *args, **kwargs) -> dict:
    """A measure, or why it cannot be measured on this data (one image per species, ...)."""
    try:
        return fn(*args, **kwargs)
    except EcoalignInputError as exc:
        return {"not_measured": str(exc)}


def intrinsic_analysis(emb: np.ndarray, taxa: Sequence, *, rank: str = "genus", variants: Sequence | None = None,
                       method: str = "pca", out_dir: str | Path | None = None, seed: int = 0,
                       extra: dict | None = None) -> dict:
    """rho and FDR at species level (variants optional) and FDR between taxa at ``rank``; optional JSON + PNG.
    ``extra`` (what was measured: encoder, data ...) joins the report."""
    from ecoalign.data.taxonomy import RANKS

    if rank not in RANKS:
        raise EcoalignInputError(f"unknown rank '{rank}'", expected=f"one of {', '.join(RANKS)}")
    emb = np.asarray(emb, np.float64)
    keep = [i for i, t in enumerate(taxa) if t is not None and t.depth == len(RANKS)]
    species = [taxa[i].label("species") for i in keep]
    var = None if variants is None else [variants[i] for i in keep]
    e = emb[keep]
    at_rank = [i for i, t in enumerate(taxa) if t is not None and t.depth > RANKS.index(rank)]
    rank_labels = [taxa[i].label(rank) for i in at_rank]
    report = {"n_images": len(emb), "n_labelled_to_species": len(keep),
              "explained_variance_ratio": _or_reason(explained_variance_ratio, e, species, var),
              "fisher_species": _or_reason(mean_fisher_ratio, e, species),
              f"fisher_{rank}": _or_reason(mean_fisher_ratio, emb[at_rank], rank_labels)}
    if var is not None:
        report["fisher_variants_within_species"] = _or_reason(mean_fisher_ratio, e, var, within=species)
    report.update(extra or {})
    if out_dir is not None:
        from ecoalign.core.io import write_json

        out = Path(out_dir)
        png = plot_embedding(emb[at_rank], rank_labels, out / f"embedding_{method}_{rank}.png", method=method,
                             title=f"{method.upper()} of {len(at_rank)} images, coloured by {rank}", seed=seed)
        report["plot"] = str(png)
        write_json(out / "intrinsic.json", report)
    return report


def intrinsic(encoder, *, curated: str | Path | None = None, table: str | Path | None = None, split: str = "test",
              images_root: str | Path | None = None, rank: str = "genus", variant_column: str | None = None,
              projection: str = "pca", seed: int = 0, weights: str | None = "none", device: str = "cpu",
              batch_size: int = 64, out: str | Path | None = None, overwrite: bool = False,
              progress: bool = True) -> dict:
    """BioCLIP 2's intrinsic analysis of an encoder's image embeddings of labelled photos.

    The photos: a ``curated`` folder's ``split`` or a labelled ``table`` (paths relative to ``images_root`` or
    the table), whose ``variant_column`` may name intra-species variants (life stage, sex ...). ``encoder``: a
    loaded organism encoder or a name for ``load_organism_encoder``. Returns the report: explained-variance
    ratio, Fisher ratios between species and between taxa at ``rank`` (and between variants), what was
    measured and the skipped images. With ``out`` (a folder) it is written as ``intrinsic.json`` with a 2-D
    ``projection`` plot (pca or tsne) coloured by ``rank``.
    """
    from ecoalign.encoders.organism import as_organism_encoder
    from ecoalign.organism.labelled import embed_labelled
    from ecoalign.organism.outputs import report_skipped
    from ecoalign.organism.tables import read_table

    out = None if out is None else Path(out)
    if out is not None and (out / "intrinsic.json").exists() and not overwrite:
        raise EcoalignInputError("output exists", path=out / "intrinsic.json",
                                 expected="another output folder, or overwrite (--overwrite)")
    if variant_column and table is None:
        raise EcoalignInputError("variant_column needs a labelled table", expected="table=<table with that column> "
                                 "(--table)")
    variants_of = None
    if variant_column:
        tab = read_table(table)
        if variant_column not in tab.frame.columns:
            raise EcoalignInputError(f"no column '{variant_column}'", path=table,
                                     expected=f"one of {list(tab.frame.columns)}")
        variants_of = dict(zip(tab.frame[tab.image_col].astype(str), tab.frame[variant_column].astype(str)))
    enc = as_organism_encoder(encoder, weights=weights, device=device)
    data = embed_labelled(enc, curated=curated, table=table, split=split, images_root=images_root,
                          batch_size=batch_size, progress=progress)
    variants = None if variants_of is None else [variants_of[n] for n in data.names]
    extra = {"encoder": enc.identity(), **data.source, "projection": projection,
             "skipped": report_skipped(data.skipped, None if out is None else out / "intrinsic.json")}
    return intrinsic_analysis(data.embeddings, data.taxa, rank=rank, variants=variants, method=projection,
                              out_dir=out, seed=seed, extra=extra)
