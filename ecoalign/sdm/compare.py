"""``compare``: several encoders on the same sites and the same folds -> Markdown, CSV and a chart.

The Python face of ``ecoalign compare``: ``compare(spec, {"frozen": "a.parquet", "adapted": "b.parquet"},
manifest=..., out="cmp")`` returns the table the command writes to ``comparison.csv``.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import atomic_path, write_text
from ecoalign.sdm.fitting import cross_validate
from ecoalign.sdm.sites import SiteTable, read_sites
from ecoalign.sdm.spec import ModelSpec, as_spec

log = logging.getLogger(__name__)


def _common(sites: dict[str, SiteTable]) -> dict[str, SiteTable]:
    """Restrict every encoder's sites to the ids all of them have, in one order: identical folds for all."""
    ids = None
    for s in sites.values():
        ids = set(s.ids) if ids is None else ids & set(s.ids)
    order = [i for i in next(iter(sites.values())).ids if i in ids]
    if len(order) < 10:
        raise EcoalignInputError(f"the encoders share only {len(order)} sites", expected="embedding tables of the same sites")
    out = {}
    for name, s in sites.items():
        pos = pd.Index(s.ids).get_indexer(order)
        out[name] = replace(s, ids=np.asarray(order), xy=s.xy[pos], X=s.X.iloc[pos], Y=s.Y.iloc[pos])
    return out


def compare(spec: ModelSpec | str | Path, encoders: Mapping[str, object], *, manifest=None, points=None,
            covariates=None, background=None, id_column: str = "plot_id", crs=None, out: str | Path, seed: int = 0,
            n_jobs: int = -1) -> pd.DataFrame:
    """Cross-validate the spec's model on each encoder's embeddings, on the sites all of them share and the
    same folds; write ``comparison.csv``, ``comparison.md`` and ``comparison.png`` to ``out``.

    ``encoders``: ``{name: embedding table}`` (``ecoalign embed`` paths or GeoDataFrames). The other sites
    inputs are those of :func:`ecoalign.sdm.sites.read_sites`. Returns the metrics of every encoder (per
    species, micro and macro, with bootstrap intervals; columns ``encoder`` and ``random_weights``).
    """
    spec = as_spec(spec)
    if not encoders:
        raise EcoalignInputError("no encoders to compare", expected="at least one NAME=EMBEDDINGS.parquet "
                                                                    "(--encoder; encoders={name: table})")
    if isinstance(manifest, (str, Path)):
        from ecoalign.data.manifest import load_manifest

        manifest = load_manifest(manifest)  # once for all encoders
    sites = {}
    for name, embeddings in encoders.items():
        log.info("encoder '%s': reading its sites", name)
        sites[str(name)] = read_sites(spec, manifest=manifest, embeddings=embeddings, points=points,
                                      covariates=covariates, background=background, id_column=id_column, crs=crs)
    return compare_encoders(spec, sites, out, seed=seed, n_jobs=n_jobs)


def compare_encoders(spec, sites: dict[str, SiteTable], out: str | Path, *, seed: int = 0, n_jobs: int = -1) -> pd.DataFrame:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, s in _common(sites).items():
        log.info("cross-validating %s on '%s' (%d sites, %d features)", spec.name, name, len(s.ids), s.X.shape[1])
        res = cross_validate(spec, s, seed=seed, n_jobs=n_jobs)
        table = res.metrics.assign(encoder=name, random_weights=s.feature_source.get("random_weights"))
        rows.append(table)
    allm = pd.concat(rows, ignore_index=True)
    with atomic_path(out / "comparison.csv") as tmp:
        allm.to_csv(tmp, index=False)
    write_text(out / "comparison.md", _markdown(spec, allm))
    _chart(spec, allm, out / "comparison.png")
    return allm


def _markdown(spec, allm: pd.DataFrame) -> str:
    summ = allm[allm["species"].isin(["micro", "macro"])]
    lines = [f"# {spec.name}: encoders compared ({spec.cv['scheme']} CV, {spec.cv['folds']} folds, same folds for all)", "",
             "| encoder | summary | " + " | ".join(spec.metrics) + " |", "|---|---|" + "---|" * len(spec.metrics)]
    for (enc, agg), g in summ.groupby(["encoder", "species"], sort=False):
        cells = []
        for m in spec.metrics:
            r = g[g["metric"] == m]
            cells.append("" if r.empty else f"{r.value.iloc[0]:.3f} [{r.ci_low.iloc[0]:.3f}, {r.ci_high.iloc[0]:.3f}]")
        lines.append(f"| {enc} | {agg} | " + " | ".join(cells) + " |")
    lines += ["", "Values with bias-corrected bootstrap 95% intervals over sites. Thresholds (TSS, F1, sensitivity, "
              "specificity) are the max-TSS thresholds of the kernel-smoothed out-of-fold ROC curve.", ""]
    if allm["random_weights"].fillna(False).any():
        lines.append("NOTE: some encoders ran on RANDOM backbone weights.")
    return "\n".join(lines)


def _chart(spec, allm: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    macro = allm[allm["species"] == "macro"]
    metrics = [m for m in spec.metrics if m in set(macro["metric"])]
    encoders = list(dict.fromkeys(macro["encoder"]))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(metrics), 3.6))
    width = 0.8 / max(len(encoders), 1)
    for i, enc in enumerate(encoders):
        g = macro[macro["encoder"] == enc].set_index("metric").reindex(metrics)
        x = np.arange(len(metrics)) + i * width
        err = np.vstack([g.value - g.ci_low, g.ci_high - g.value]).clip(min=0)
        ax.bar(x, g.value, width, yerr=err, capsize=3, label=enc)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(encoders) - 1) / 2, metrics)
    ax.set_ylabel("macro mean (95% CI)")
    ax.set_title(f"{spec.name}: {spec.cv['scheme']} CV")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
