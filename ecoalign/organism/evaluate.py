"""The measures behind ``zero-shot``, ``few-shot`` and ``predict``: class embeddings, scores and accuracies.

Zero-shot follows CLIP/BioCLIP: a class is the mean of its template captions' text embeddings (re-normalised);
a rank above species is scored either by summing species probabilities over each taxon's descendants ("sum")
or by the rank-level taxonomic text itself ("text"). Few-shot is SimpleShot (Wang et al. 2019): centre on the
support mean, L2-normalise, nearest class centroid. Accuracies carry Wilson 95% intervals.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError

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


def rank_index(rank: str) -> int:
    """Position of ``rank`` in RANKS (kingdom 0 .. species 6); an unknown rank is a clear input error."""
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
    r = rank_index(rank)
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
    r = rank_index(classes.rank)
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


def few_shot_accuracy(embeddings: np.ndarray, labels: Sequence[str], k: int, *, folds: int = 10, seed: int = 0,
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
