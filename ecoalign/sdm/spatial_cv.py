"""Spatial block cross-validation as a scikit-learn splitter: whole blocks are held out, with a buffer around them.

Random K-fold puts a site's neighbours in the training set, so spatially autocorrelated data reward
interpolation and overstate skill. ``SpatialBlockKFold`` holds out whole square blocks (same blocks as
``ecoalign.data.splits.block_ids``) and drops training sites within ``buffer`` metres of any test site.

Coordinates (n, 2), in metres, reach ``split`` by one of, in this order of precedence:
``coords=`` (direct use), ``groups=`` (so ``cross_val_score(est, X, y, groups=coords, cv=splitter)`` works; also
with metadata routing, via ``groups``), or a DataFrame ``X`` with ``x`` and ``y`` columns.
"""
from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from sklearn.model_selection import BaseCrossValidator, KFold, RepeatedKFold

from ecoalign.core.errors import EcoalignInputError
from ecoalign.data.splits import block_ids

__all__ = ["SpatialBlockKFold", "make_cv", "default_block_size", "CV_SCHEMES"]

CV_SCHEMES = ("spatial_block", "random")
_PARAMS = ("n_splits", "block_size", "buffer", "n_repeats", "random_state")


class SpatialBlockKFold(BaseCrossValidator):
    """K-fold over square spatial blocks, folds balanced by point count, training sites near the test fold removed.

    Parameters
    ----------
    n_splits : folds per repeat (>= 2).
    block_size : side of the square blocks in metres (required; roughly the range of spatial autocorrelation).
    buffer : training sites within this distance (metres, ``<=``) of any test site are dropped from training.
    n_repeats : repeats, each with a fresh shuffle of blocks to folds; ``get_n_splits`` = n_splits * n_repeats.
    random_state : int (same folds on every ``split`` call), None or a numpy Generator (fresh folds per call).
    """

    # groups carries the coordinates: ask for it under scikit-learn's metadata routing too
    __metadata_request__split = {"groups": True}

    def __init__(self, n_splits: int = 5, block_size: float | None = None, buffer: float = 0.0, n_repeats: int = 1,
                 random_state=None):
        if not isinstance(n_splits, numbers.Integral) or isinstance(n_splits, bool) or n_splits < 2:
            raise EcoalignInputError(f"n_splits={n_splits!r}", expected="an integer >= 2")
        if not isinstance(n_repeats, numbers.Integral) or isinstance(n_repeats, bool) or n_repeats < 1:
            raise EcoalignInputError(f"n_repeats={n_repeats!r}", expected="an integer >= 1")
        if block_size is None or not isinstance(block_size, numbers.Real) or not np.isfinite(block_size) \
                or block_size <= 0:
            raise EcoalignInputError(f"block_size={block_size!r}",
                                     expected="a positive block side in metres, about the range of spatial "
                                              "autocorrelation in the data")
        if not isinstance(buffer, numbers.Real) or not np.isfinite(buffer) or buffer < 0:
            raise EcoalignInputError(f"buffer={buffer!r}", expected="a distance in metres >= 0")
        self.n_splits = n_splits
        self.block_size = block_size
        self.buffer = buffer
        self.n_repeats = n_repeats
        self.random_state = random_state

    # -- scikit-learn plumbing: clone() and repr() read the constructor parameters back
    def get_params(self, deep: bool = True) -> dict:
        """The constructor parameters, so ``sklearn.base.clone`` can rebuild the splitter."""
        return {name: getattr(self, name) for name in _PARAMS}

    def set_params(self, **params) -> "SpatialBlockKFold":
        """Change constructor parameters (validated as in ``__init__``)."""
        unknown = set(params) - set(_PARAMS)
        if unknown:
            raise EcoalignInputError(f"unknown parameter(s) {sorted(unknown)}", expected=f"some of {list(_PARAMS)}")
        self.__init__(**{**self.get_params(), **params})
        return self

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Number of (train, test) pairs ``split`` yields: n_splits * n_repeats."""
        return self.n_splits * self.n_repeats

    # -- splitting
    @staticmethod
    def _coords(X, groups, coords) -> np.ndarray:
        if coords is not None:
            source, xy = "coords", coords
        elif groups is not None:
            source, xy = "groups", groups
        elif isinstance(X, pd.DataFrame) and {"x", "y"} <= set(X.columns):
            source, xy = "X[['x', 'y']]", X[["x", "y"]]
        else:
            raise EcoalignInputError("SpatialBlockKFold.split needs site coordinates",
                                     expected="coords=(n, 2) array in metres, groups=coords (e.g. in cross_val_score)"
                                              ", or a DataFrame X with 'x' and 'y' columns")
        try:
            xy = np.asarray(xy, dtype=np.float64)
        except (TypeError, ValueError):
            raise EcoalignInputError(f"{source} is not numeric", expected="(n, 2) coordinates in metres") from None
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise EcoalignInputError(f"{source} has shape {xy.shape}",
                                     expected="(n_samples, 2) x/y coordinates in metres (not group labels)")
        if X is not None and hasattr(X, "__len__") and len(X) != len(xy):
            raise EcoalignInputError(f"X has {len(X)} rows but {source} has {len(xy)}", expected="one x/y per row of X")
        bad = ~np.isfinite(xy).all(axis=1)
        if bad.any():
            raise EcoalignInputError(f"{source} has {int(bad.sum())} row(s) with NaN/inf, first at row "
                                     f"{int(np.flatnonzero(bad)[0])}", expected="finite coordinates for every site")
        return xy

    def _assign(self, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Fold of each block: shuffled blocks, each given to the fold with the fewest points so far."""
        fold_of_block = np.empty(counts.size, dtype=np.int64)
        load = np.zeros(self.n_splits, dtype=np.int64)
        for b in rng.permutation(counts.size):
            k = int(np.argmin(load))
            fold_of_block[b] = k
            load[k] += counts[b]
        return fold_of_block

    def split(self, X=None, y=None, groups=None, coords=None):
        """Yield (train_idx, test_idx) int arrays, n_splits per repeat; each site is tested exactly once per repeat."""
        xy = self._coords(X, groups, coords)
        n = len(xy)
        blocks = block_ids(xy, self.block_size) if n else np.empty(0, dtype=np.int64)
        n_blocks = int(blocks.max()) + 1 if n else 0
        if n_blocks < self.n_splits:
            raise EcoalignInputError(
                f"{n} sites fall into {n_blocks} block(s) of {self.block_size} m, fewer than n_splits={self.n_splits}",
                expected="a smaller block_size or fewer folds")
        counts = np.bincount(blocks, minlength=n_blocks)
        rng = np.random.default_rng(self.random_state)
        for _ in range(self.n_repeats):
            fold = self._assign(counts, rng)[blocks]
            for k in range(self.n_splits):
                test = np.flatnonzero(fold == k)
                train = np.flatnonzero(fold != k)
                if self.buffer > 0:
                    dist, _ = cKDTree(xy[test]).query(xy[train], k=1)
                    train = train[dist > self.buffer]
                    if train.size == 0:
                        raise EcoalignInputError(
                            f"buffer={self.buffer} m removes every training site of fold {k}",
                            expected="a smaller buffer (well below the extent of the study area)")
                yield train.astype(np.int64), test.astype(np.int64)


def default_block_size(coords) -> float:
    """Block side when a spec gives none: a tenth of the larger side of the sites' extent (in their units).

    A fixed side cannot suit both a few square kilometres of relevés and a continent of herbarium records: 500 m
    blocks over the disdat regions (250 to 5,000 km across) hold about one site each, which is random K-fold
    under another name. Ten blocks across keep whole landscapes out of each training fold whatever the extent."""
    xy = np.asarray(coords, dtype=np.float64)
    side = float(np.ptp(xy, axis=0).max()) / 10.0 if len(xy) else 0.0
    return side if side > 0 else 1.0  # all sites at one spot: one block, which the splitter then refuses


def make_cv(scheme: str = "spatial_block", *, n_splits: int = 5, n_repeats: int = 1, random_state=None,
            block_size: float | None = None, buffer: float = 0.0):
    """Splitter for a CV scheme: ``"spatial_block"`` -> SpatialBlockKFold, ``"random"`` -> shuffled KFold/RepeatedKFold.

    ``block_size`` and ``buffer`` only apply to spatial blocks and are ignored for ``"random"``, so one config can
    switch schemes. Both splitters accept ``split(X, y, groups=coords)``.
    """
    if scheme == "spatial_block":
        return SpatialBlockKFold(n_splits=n_splits, block_size=block_size, buffer=buffer, n_repeats=n_repeats,
                                 random_state=random_state)
    if scheme == "random":
        if not isinstance(n_repeats, numbers.Integral) or n_repeats < 1:
            raise EcoalignInputError(f"n_repeats={n_repeats!r}", expected="an integer >= 1")
        if n_repeats > 1:
            return RepeatedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=random_state)
        return KFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    raise EcoalignInputError(f"unknown CV scheme {scheme!r}", expected=" or ".join(map(repr, CV_SCHEMES)))
