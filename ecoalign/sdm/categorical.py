"""Categorical predictors declared in a spec (``features.categorical``), one-hot encoded inside the model.

The encoding lives in the fitted pipeline, not in the site table, so a bundle keeps the raw column (e.g.
``toxicats``) as its feature: test sites or map windows that lack a level, or carry one never seen in
training, still line up. Such values get an all-zero indicator row (the reference "other" level) and a
warning naming the column and the level; missing values are treated the same way. Integer-coded levels read
from CSVs (``1``) and from rasters (``1.0``) are the same level.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ecoalign.core.errors import EcoalignInputError

log = logging.getLogger(__name__)


def level_names(values) -> np.ndarray:
    """Category labels as strings, with integral numbers written without a decimal point; NaN stays None."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            out[i] = None
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            out[i] = str(int(v))
        else:
            out[i] = str(v)
    return out


ENCODINGS = ("onehot", "codes")


class CategoricalEncoder(TransformerMixin, BaseEstimator):
    """Encode ``columns`` of a DataFrame, pass the others through.

    ``encoding="onehot"``: indicator columns ``"<column>=<level>"``; unseen or missing values get all-zero
    indicators. ``encoding="codes"``: the column holds the level's index, for estimators with native categorical
    splits (LightGBM); unseen or missing values get -1, which LightGBM treats as missing. Either way a
    ``UserWarning`` names the column and the levels (once per call). Levels are those seen in ``fit``.
    """

    def __init__(self, columns=(), encoding: str = "onehot"):
        self.columns = columns
        self.encoding = encoding

    def fit(self, X, y=None):
        if not isinstance(X, pd.DataFrame):
            raise EcoalignInputError(f"categorical encoding needs a DataFrame, got {type(X).__name__}", where="X",
                                     expected="a DataFrame with the declared categorical columns")
        if self.encoding not in ENCODINGS:
            raise EcoalignInputError(f"encoding={self.encoding!r}", where="encoding",
                                     expected=" or ".join(map(repr, ENCODINGS)))
        missing = [c for c in self.columns if c not in X.columns]
        if missing:
            raise EcoalignInputError(f"categorical column(s) {missing} are not among the features",
                                     where="features.categorical", expected=f"columns of {list(X.columns)[:20]}")
        self.levels_ = {}
        for c in self.columns:
            names = level_names(X[c].to_numpy())
            self.levels_[c] = sorted({v for v in names if v is not None})
            if not self.levels_[c]:
                raise EcoalignInputError(f"categorical column {c!r} has no value in the training data",
                                         where="features.categorical", expected="at least one level")
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def transform(self, X) -> pd.DataFrame:
        check_is_fitted(self, "levels_")
        if not isinstance(X, pd.DataFrame):
            raise EcoalignInputError(f"categorical encoding needs a DataFrame, got {type(X).__name__}", where="X",
                                     expected="a DataFrame with the declared categorical columns")
        missing = [c for c in self.columns if c not in X.columns]
        if missing:
            raise EcoalignInputError(f"the sites lack categorical column(s) {missing}", where="X",
                                     expected=f"the columns seen at fit: {list(self.feature_names_in_)[:20]}")
        if self.encoding == "codes":
            out = X.copy()
        parts = [X.drop(columns=list(self.columns))]
        for c in self.columns:
            names = level_names(X[c].to_numpy())
            known = self.levels_[c]
            unseen = sorted({str(v) for v in names if v not in known})
            if unseen:
                n = int(sum(v not in known for v in names))
                what = "all-zero indicators" if self.encoding == "onehot" else "the missing category"
                warnings.warn(f"categorical column {c!r}: {n} row(s) with level(s) {unseen[:10]} not seen in training "
                              f"(levels {known[:10]}); they get {what}", UserWarning, stacklevel=2)
            if self.encoding == "codes":
                index = {lv: float(i) for i, lv in enumerate(known)}
                out[c] = np.array([index.get(v, -1.0) for v in names], dtype=float)
                continue
            onehot = (names[:, None] == np.asarray(known, dtype=object)[None, :]).astype(float)
            parts.append(pd.DataFrame(onehot, index=X.index, columns=[f"{c}={lv}" for lv in known]))
        return out if self.encoding == "codes" else pd.concat(parts, axis=1)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "levels_")
        if self.encoding == "codes":
            return np.asarray(self.feature_names_in_, dtype=object)
        rest = [c for c in self.feature_names_in_ if c not in self.columns]
        return np.asarray(rest + [f"{c}={lv}" for c in self.columns for lv in self.levels_[c]], dtype=object)
