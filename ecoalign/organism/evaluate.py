"""Zero-shot and few-shot evaluation of organism CLIP encoders, and prediction/embedding of photo folders.

Zero-shot follows CLIP/BioCLIP: a class is the mean of its template captions' text embeddings (re-normalised);
a rank above species is scored either by summing species probabilities over each taxon's descendants ("sum")
or by the rank-level taxonomic text itself ("text"). Few-shot is SimpleShot (Wang et al. 2019): centre on the
support mean, L2-normalise, nearest class centroid. Accuracies carry Wilson 95% intervals.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
METHODS = ("sum", "text")


# ----------------------------------------------------------------------------------------------- statistics
def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (stays inside [0, 1] and is sane at 0 or n successes)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside 0..{n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # the exact ends, free of rounding
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of repeated-fold scores and its Student-t interval (the folds are the replicates)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    mean = float(v.mean()) if len(v) else float("nan")
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def topk_hits(scores: np.ndarray, true_index: np.ndarray, k: int) -> np.ndarray:
    """Whether each row's true class is among its k best; ties count against the true class (no free hits)."""
    scores = np.asarray(scores)
    true_score = scores[np.arange(len(scores)), true_index]
    rivals = (scores >= true_score[:, None]).sum(axis=1) - 1
    return rivals < k


# ------------------------------------------------------------------------------------------------- zero-shot
def class_embeddings(encoder, captions_per_class: Sequence[Sequence[str]], batch_size: int = 256) -> np.ndarray:
    """(C, D) class embeddings: the mean of each class's L2-normalised caption embeddings, re-normalised."""
    counts = [len(c) for c in captions_per_class]
    if not counts or min(counts) == 0:
        raise EcoalignInputError("every class needs at least one caption", expected="a non-empty class list")
    flat = [t for caps in captions_per_class for t in caps]
    emb = np.asarray(encoder.embed_text(flat, batch_size=batch_size), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    bounds = np.cumsum([0] + counts)
    out = np.stack([emb[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
    return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)


def softmax_scores(image_emb: np.ndarray, class_emb: np.ndarray, logit_scale: float) -> np.ndarray:
    """CLIP class probabilities: softmax over the scaled cosine similarities."""
    logits = logit_scale * (np.asarray(image_emb, np.float64) @ np.asarray(class_emb, np.float64).T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def sum_to_rank(probs: np.ndarray, leaf_groups: Sequence[int], n_groups: int) -> np.ndarray:
    """Probabilities of higher-rank taxa: each taxon gets the summed probability of its descendant leaves."""
    member = np.zeros((probs.shape[1], n_groups))
    member[np.arange(probs.shape[1]), np.asarray(leaf_groups)] = 1.0
    return probs @ member


def _rank_index(rank: str) -> int:
    from ecoalign.data.taxonomy import RANKS

    if rank not in RANKS:
        raise EcoalignInputError(f"unknown rank '{rank}'", expected=f"one of {', '.join(RANKS)}")
    return RANKS.index(rank)


@dataclass
class ZeroShotClasses:
    """The classes a zero-shot classifier chooses among at one rank, and how their scores are made."""
    rank: str
    method: str
    labels: list[str]                   # one unique label per class at ``rank`` (Taxon.label)
    taxa: list                          # a Taxon per class, truncated at ``rank``
    embeddings: np.ndarray              # (leaves or classes, D) text embeddings
    leaf_groups: list[int] | None       # method "sum": class index of each species leaf
    logit_scale: float
    text_type: str = "taxonomic"        # taxonomy text form of the class texts ("custom" for free names)

    def scores(self, image_emb: np.ndarray) -> np.ndarray:
        """(N, classes) probabilities for images."""
        probs = softmax_scores(image_emb, self.embeddings, self.logit_scale)
        return probs if self.leaf_groups is None else sum_to_rank(probs, self.leaf_groups, len(self.labels))


def _unique_by_label(taxa: Iterable) -> dict:
    """Distinct taxa keyed by their full label (the first seen wins; common names do not split a taxon)."""
    out: dict = {}
    for t in taxa:
        out.setdefault(t.label(t.rank), t)
    return out


def build_classes(encoder, candidates: Iterable, rank: str = "species", *, method: str = "sum",
                  text_type: str = "taxonomic", templates: Sequence[str] | None = None,
                  logit_scale: float | None = None) -> ZeroShotClasses:
    """Zero-shot classes at ``rank`` from candidate taxa: leaves scored by text then summed, or rank-level text.

    Candidates not known down to ``rank`` cannot be a class there and are left out. With method "sum" the leaves
    are the distinct candidates at their deepest known rank (usually species).
    """
    from ecoalign.data.taxonomy import TEMPLATES, captions

    if method not in METHODS:
        raise EcoalignInputError(f"unknown method '{method}'", expected="'sum' (add species probabilities) or "
                                                                         "'text' (rank-level text)")
    templates = tuple(templates or TEMPLATES)
    r = _rank_index(rank)
    deep = list(_unique_by_label(t for t in candidates if t is not None and t.depth > r).values())
    if not deep:
        raise EcoalignInputError(f"no candidate taxon is known down to rank '{rank}'",
                                 expected="candidate taxa (labels) that reach that rank")
    class_taxa = list(_unique_by_label(t.truncate(rank) for t in deep).values())
    labels = [t.label(rank) for t in class_taxa]
    scale = float(encoder.logit_scale if logit_scale is None else logit_scale)
    if method == "text" or r == 6:
        emb = class_embeddings(encoder, [captions(t, text_type, templates) for t in class_taxa])
        return ZeroShotClasses(rank, method, labels, class_taxa, emb, None, scale, text_type)
    index = {lab: i for i, lab in enumerate(labels)}
    groups = [index[t.label(rank)] for t in deep]
    emb = class_embeddings(encoder, [captions(t, text_type, templates) for t in deep])
    return ZeroShotClasses(rank, method, labels, class_taxa, emb, groups, scale, text_type)


def custom_classes(encoder, names: Sequence[str], *, templates: Sequence[str] | None = None,
                   logit_scale: float | None = None) -> ZeroShotClasses:
    """Zero-shot classes from free-text names (pybioclip's custom labels): each name put into every template."""
    from ecoalign.data.taxonomy import TEMPLATES

    names = [n.strip() for n in names if n and n.strip()]
    names = list(dict.fromkeys(names))
    if not names:
        raise EcoalignInputError("no class names given", expected="--classes 'a,b,c' or a text file, one per line")
    templates = tuple(templates or TEMPLATES)
    emb = class_embeddings(encoder, [[t.format(n) for t in templates] for n in names])
    scale = float(encoder.logit_scale if logit_scale is None else logit_scale)
    return ZeroShotClasses("custom", "text", names, [None] * len(names), emb, None, scale, "custom")


@dataclass
class Accuracy:
    """A proportion with its Wilson 95% interval."""
    value: float
    low: float
    high: float
    hits: int
    n: int

    @classmethod
    def of(cls, hits: np.ndarray) -> "Accuracy":
        n, s = int(len(hits)), int(np.sum(hits))
        lo, hi = wilson_interval(s, n)
        return cls(s / n if n else float("nan"), lo, hi, s, n)


@dataclass
class ZeroShotReport:
    rank: str
    method: str
    text_type: str
    n_classes: int
    n_images: int
    top1: Accuracy
    top5: Accuracy
    top5_k: int                          # min(5, classes): with fewer than 5 classes top-5 is trivially 1
    excluded: dict = field(default_factory=dict)  # images left out and why (label not reaching the rank, ...)

    def to_dict(self) -> dict:
        return asdict(self)


def zero_shot_accuracy(image_emb: np.ndarray, true_taxa: Sequence, classes: ZeroShotClasses
                       ) -> tuple[ZeroShotReport, np.ndarray]:
    """Top-1/top-5 accuracy at ``classes.rank``; images whose label does not reach the rank are excluded."""
    r = _rank_index(classes.rank)
    index = {lab: i for i, lab in enumerate(classes.labels)}
    keep, truth, shallow, unknown = [], [], 0, 0
    for i, t in enumerate(true_taxa):
        if t is None or t.depth <= r:
            shallow += 1
            continue
        lab = t.label(classes.rank)
        if lab not in index:
            unknown += 1
            continue
        keep.append(i)
        truth.append(index[lab])
    if not keep:
        raise EcoalignInputError(f"no evaluation image has a label at rank '{classes.rank}' among the classes",
                                 expected="labelled images whose taxa reach that rank")
    scores = classes.scores(np.asarray(image_emb)[keep])
    truth = np.asarray(truth)
    k5 = min(5, len(classes.labels))
    report = ZeroShotReport(classes.rank, classes.method, classes.text_type, len(classes.labels), len(keep),
                            Accuracy.of(topk_hits(scores, truth, 1)), Accuracy.of(topk_hits(scores, truth, k5)), k5,
                            {"label_above_rank": shallow, "label_not_a_class": unknown})
    return report, scores


# -------------------------------------------------------------------------------------------------- few-shot
def simpleshot_predict(support: np.ndarray, support_labels: Sequence, query: np.ndarray) -> np.ndarray:
    """SimpleShot: subtract the support mean, L2-normalise, predict the nearest class centroid (Euclidean)."""
    support, query = np.asarray(support, np.float64), np.asarray(query, np.float64)
    centre = support.mean(axis=0, keepdims=True)

    def norm(x):
        x = x - centre
        return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)

    s, q = norm(support), norm(query)
    labels = np.asarray(support_labels)
    classes = np.unique(labels)
    centroids = np.stack([s[labels == c].mean(axis=0) for c in classes])
    d2 = ((q[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    return classes[d2.argmin(axis=1)]


@dataclass
class FewShotReport:
    k: int
    folds: int
    n_classes: int
    queries_per_fold: int
    mean: float
    low: float                           # Student-t 95% interval of the mean over folds
    high: float
    per_fold: list[float]
    excluded_classes: list[str]          # fewer than k + 1 images: no query left

    def to_dict(self) -> dict:
        return asdict(self)


def few_shot(embeddings: np.ndarray, labels: Sequence[str], k: int, *, folds: int = 10, seed: int = 0,
             max_query_per_class: int | None = None) -> FewShotReport:
    """k-shot SimpleShot accuracy over repeated random support/query folds (classes need k + 1 images)."""
    if k < 1 or folds < 1:
        raise EcoalignInputError(f"k={k}, folds={folds}", expected="k >= 1 and folds >= 1")
    emb = np.asarray(embeddings)
    labels = np.asarray([str(x) for x in labels])
    classes, counts = np.unique(labels, return_counts=True)
    usable = classes[counts > k]
    excluded = sorted(classes[counts <= k].tolist())
    if len(usable) < 2:
        raise EcoalignInputError(f"{len(usable)} class(es) have more than k={k} images",
                                 expected="at least 2 classes with k + 1 images or more")
    rng = np.random.default_rng(seed)
    members = {c: np.flatnonzero(labels == c) for c in usable}
    accs, n_query = [], 0
    for _ in range(folds):
        sup, qry = [], []
        for c in usable:
            idx = rng.permutation(members[c])
            sup.append(idx[:k])
            rest = idx[k:]
            qry.append(rest if max_query_per_class is None else rest[:max_query_per_class])
        sup, qry = np.concatenate(sup), np.concatenate(qry)
        pred = simpleshot_predict(emb[sup], labels[sup], emb[qry])
        accs.append(float((pred == labels[qry]).mean()))
        n_query = len(qry)
    mean, lo, hi = mean_interval(accs)
    return FewShotReport(k, folds, len(usable), n_query, mean, lo, hi, accs, excluded)


# ------------------------------------------------------------------------------------------- image folders
def list_images(folder: str | Path) -> list[Path]:
    """Image files under a folder (recursive, sorted); a single image file is a folder of one."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise EcoalignInputError("no such image folder", path=folder, expected="a folder of photos")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise EcoalignInputError("no image files found", path=folder,
                                 expected=f"files ending in {', '.join(IMAGE_SUFFIXES)}")
    return files


def open_rgb(path, min_side: int | None = None):
    """Decode fully (so truncated files fail here, not later) and convert to RGB.

    With ``min_side`` a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose sides stay >= min_side
    (libjpeg's DCT scaling): a model that resizes to 224 px need not decode a 4000 px photo in full.
    """
    from PIL import Image

    with Image.open(path) as im:
        if min_side:
            im.draft("RGB", (min_side, min_side))
        im.load()
        return im.convert("RGB")


def embed_items(encoder, items: Iterable[tuple[str, object, object]], *, batch_size: int = 64,
                total: int | None = None, progress: bool = True, what: str = "images",
                on_batch: Callable[[list[str], list, np.ndarray], None] | None = None
                ) -> tuple[list[str], list, np.ndarray, list[tuple[str, str]]]:
    """Embed (name, PIL image or path, payload) items in batches, skipping unreadable images.

    Returns names, payloads and (N, D) embeddings of the images that were read, and (name, reason) for each
    skipped one. ``on_batch`` sees every batch (streaming writers).
    """
    import itertools
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    names, payloads, parts, skipped = [], [], [], []
    bar = tqdm(total=total, unit=" img", desc=f"[ecoalign] {what}", disable=not progress)
    preprocess = getattr(encoder, "preprocess", None)  # run in the loader threads, beside the model
    min_side = (getattr(encoder, "info", None) or {}).get("image_px")

    def load(item):
        name, image, payload = item
        try:
            image = image if not isinstance(image, (str, Path)) else open_rgb(image, min_side)
            return name, (preprocess(image.convert("RGB")) if preprocess else image), payload, None
        except Exception as exc:  # PIL raises many types for broken files; all mean "skip and list"
            return name, None, payload, f"{type(exc).__name__}: {exc}"

    def flush(batch):
        if not batch:
            return
        images = [b[1] for b in batch]
        if preprocess:
            import torch

            images = torch.stack(images)
        emb = np.asarray(encoder.embed(images, batch_size=len(batch)), dtype=np.float32)
        bn, bp = [b[0] for b in batch], [b[2] for b in batch]
        names.extend(bn)
        payloads.extend(bp)
        parts.append(emb)
        if on_batch is not None:
            on_batch(bn, bp, emb)

    batch: list = []
    source, pending = iter(items), deque()
    # one reader thread decodes the next images while the model runs (more would crowd torch's own threads)
    with ThreadPoolExecutor(max_workers=1) as pool:
        def top_up():  # bounded read-ahead: memory stays at ~2 batches however large the folder
            for item in itertools.islice(source, max(0, 2 * batch_size - len(pending))):
                pending.append(pool.submit(load, item))

        top_up()
        while pending:
            name, image, payload, error = pending.popleft().result()
            top_up()
            bar.update(1)
            if error is not None:
                skipped.append((name, error))
                continue
            batch.append((name, image, payload))
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        flush(batch)
    bar.close()
    dim = parts[0].shape[1] if parts else int(getattr(encoder, "embed_dim", 0))
    return names, payloads, (np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)), skipped


def embed_folder(encoder, folder: str | Path, *, batch_size: int = 64, progress: bool = True):
    """(table, skipped): one row per readable image, ``file_name`` then ``emb_000``... (pybioclip's embed, flat)."""
    import pandas as pd

    from ecoalign.aerial.embed import EMBED_PREFIX

    root = Path(folder)
    files = list_images(root)
    base = root if root.is_dir() else root.parent
    items = ((str(p.relative_to(base)), p, None) for p in files)
    names, _, emb, skipped = embed_items(encoder, items, batch_size=batch_size, total=len(files),
                                         progress=progress, what="embed")
    cols = pd.DataFrame(emb, columns=[f"{EMBED_PREFIX}{j:03d}" for j in range(emb.shape[1])])
    table = pd.concat([pd.DataFrame({"file_name": names}), cols], axis=1)
    return table, skipped


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
            out["rank"] = pos
            rows.append(out)
    return rows


def predict_folder(encoder, folder: str | Path, classes: ZeroShotClasses, *, k: int = 5, batch_size: int = 64,
                   progress: bool = True):
    """(table, skipped): top-k zero-shot predictions for every readable image in a folder."""
    import pandas as pd

    root = Path(folder)
    files = list_images(root)
    base = root if root.is_dir() else root.parent
    items = ((str(p.relative_to(base)), p, None) for p in files)
    rows: list[dict] = []
    *_, skipped = embed_items(encoder, items, batch_size=batch_size, total=len(files), progress=progress,
                              what="predict",
                              on_batch=lambda n, _, e: rows.extend(prediction_rows(n, classes.scores(e), classes, k)))
    return pd.DataFrame(rows), skipped


# ------------------------------------------------------------------------------------------ labelled inputs
PATH_COLUMNS = ("path", "file_name", "filepath", "file", "image", "image_path", "source")
COMMON_COLUMNS = ("common_name", "common")


def read_table(path: str | Path):
    """A CSV (any delimiter) or Parquet table."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise EcoalignInputError("no such table", path=path, expected="a CSV or Parquet file")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    try:
        return pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise EcoalignInputError(f"unreadable table ({exc})", path=path, expected="CSV or Parquet") from exc


def taxa_from_table(df, path) -> tuple[list, list[str]]:
    """A cleaned Taxon per row (None where no rank is known) and the cleaning notes ('row 3: ...')."""
    from ecoalign.data.taxonomy import RANKS, Taxon

    cols = {c.lower().strip(): c for c in df.columns}
    ranks = [r for r in (*RANKS, "cls") if r in cols]
    if not ranks:
        raise EcoalignInputError(f"no rank column among {list(df.columns)}", path=path,
                                 expected=f"columns named like {', '.join(RANKS)}")
    common = next((cols[c] for c in COMMON_COLUMNS if c in cols), None)
    taxa, notes = [], []
    for i, row in enumerate(df.to_dict("records")):
        taxon, issues = Taxon.from_ranks({r: row[cols[r]] for r in ranks}, common=row[common] if common else None)
        notes += [f"row {i + 2}: {n}" for n in issues]
        taxa.append(taxon if taxon.depth else None)
    return taxa, notes


def path_column(df, path) -> str:
    """The table's image path column (path, file_name, filepath, ...)."""
    cols = {str(c).lower().strip(): c for c in df.columns}
    found = next((cols[c] for c in PATH_COLUMNS if c in cols), None)
    if found is None:
        raise EcoalignInputError(f"no image path column among {list(df.columns)}", path=path,
                                 expected=f"one of {', '.join(PATH_COLUMNS)}")
    return found


def read_labelled_table(path: str | Path, images_root: str | Path | None = None):
    """(items, notes) from a labelled image table: items are (name, image path, Taxon or None) per row.

    Image paths are relative to ``images_root`` (default: the table's folder) unless absolute.
    """
    path = Path(path)
    df = read_table(path)
    pcol = path_column(df, path)
    taxa, notes = taxa_from_table(df, path)
    root = Path(images_root) if images_root else path.parent
    items = []
    for name, taxon in zip(df[pcol].astype(str), taxa):
        p = Path(name)
        items.append((name, p if p.is_absolute() else root / p, taxon))
    return items, notes


def iter_curated(curated_dir: str | Path, split: str):
    """(items, total): (key, PIL image, Taxon) from the webdataset shards of one curated split."""
    from ecoalign.organism.shards import iter_samples, shard_paths

    paths = shard_paths(curated_dir, split)
    if not paths:
        raise EcoalignInputError(f"no shards for split '{split}'", path=curated_dir,
                                 expected="a folder written by `ecoalign curate` (train, val, test, test_unseen)")
    total = _curated_count(Path(curated_dir), split)
    return ((s["key"], s["image"], s["taxon"]) for s in iter_samples(paths)), total


def _curated_count(folder: Path, split: str) -> int | None:
    import json

    try:
        return int(json.loads((folder / "curation.json").read_text())["splits"][split]["images"])
    except (OSError, ValueError, TypeError, KeyError):
        return None

