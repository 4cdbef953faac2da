"""Down-sampled (balanced-bootstrap) bagging for presence-background data.

Valavi et al. (2022, Ecol. Monogr. 92:e01486): a random forest whose every tree sees a bootstrap of the
``n_pres`` presences and an equal-sized bootstrap of the background beats MaxEnt and the unbalanced forest on
the NCEAS benchmark; ``base="lightgbm"`` applies the same balanced bags to small boosted models.

Written here because neither scikit-learn's forests nor LightGBM's ``rf`` mode draw a separate balanced
sample per tree (LightGBM's ``pos/neg_bagging_fraction`` did not balance its ``rf`` mode when tried), and
imbalanced-learn would be a dependency for one loop. A fitted model is a list of scikit-learn trees or
LightGBM boosters: no code of its own is stored.
"""
from __future__ import annotations

import numpy as np
from sklearn import config_context
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ecoalign.core.errors import EcoalignInputError

BASES = ("tree", "lightgbm")


class DownsampledBagging(ClassifierMixin, BaseEstimator):
    """Binary presence-background classifier: bags of ``n_pres`` presences + ``n_pres`` background rows.

    ``base="tree"``: a down-sampled random forest (``n_estimators`` fully grown trees, ``max_features``
    features tried per split, default sqrt). ``base="lightgbm"``: ``n_estimators`` bags, each a LightGBM
    model with ``lgbm_params``. ``predict_proba`` is the mean over bags (prevalence 0.5 by construction).
    ``sample_weight`` is accepted and ignored: the balance comes from the sampling itself.
    """

    def __init__(self, base: str = "tree", n_estimators: int = 500, max_features="sqrt", min_samples_leaf: int = 1,
                 lgbm_params: dict | None = None, random_state: int = 0):
        self.base = base
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.min_samples_leaf = min_samples_leaf
        self.lgbm_params = lgbm_params
        self.random_state = random_state

    def _one(self, seed, rng_state: np.random.RandomState):
        if self.base == "tree":  # one RandomState drawn on by every tree: seeding one per tree costs more than the tree
            # A regression tree on the 0/1 target is the Gini classification tree: squared error is Gini / 2 for
            # binary targets, so the splits are the same, and each leaf's mean is its presence fraction. It skips
            # the classifier's per-fit target checks (label encoding, type_of_target), about half the fit time of
            # a small tree; a forest has hundreds of them per species.
            from sklearn.tree import DecisionTreeRegressor

            return DecisionTreeRegressor(max_features=self.max_features, min_samples_leaf=self.min_samples_leaf,
                                         random_state=rng_state)
        import lightgbm as lgb

        kw = {"n_estimators": 100, "learning_rate": 0.05, "num_leaves": 7, "min_child_samples": 5,
              "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "verbose": -1, "n_jobs": 1}
        kw.update(self.lgbm_params or {})
        return lgb.LGBMClassifier(random_state=seed, **kw)

    def fit(self, X, y, sample_weight=None):
        if self.base not in BASES:
            raise EcoalignInputError(f"base={self.base!r}", where="base", expected=" or ".join(map(repr, BASES)))
        if isinstance(self.n_estimators, bool) or not isinstance(self.n_estimators, (int, np.integer)) \
                or self.n_estimators < 1:
            raise EcoalignInputError(f"n_estimators={self.n_estimators!r}", where="n_estimators",
                                     expected="an integer >= 1")
        X = np.ascontiguousarray(X, dtype=np.float32)  # trees' own dtype: checked once here, not per tree
        y = np.asarray(y).astype(int)
        pres, back = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        if len(pres) == 0 or len(back) == 0:
            raise EcoalignInputError(f"{len(pres)} presences and {len(back)} background rows", where="y",
                                     expected="at least one of each")
        rng = np.random.default_rng(self.random_state)
        tree_rng = np.random.RandomState(int(rng.integers(2**31 - 1)))
        k = len(pres)
        self.classes_ = np.array([0, 1])
        self.estimators_ = []
        target = np.r_[np.ones(k), np.zeros(k)]  # float: the trees are 0/1 regressions (see _one)
        # input validated above: per-tree parameter and input checks cost more than a small tree itself
        with config_context(skip_parameter_validation=True, assume_finite=True):
            for seed in rng.integers(0, 2**31 - 1, size=int(self.n_estimators)):
                idx = np.r_[rng.choice(pres, k), rng.choice(back, k)]
                est = self._one(int(seed), tree_rng)
                if self.base == "tree":
                    est.fit(X[idx], target, check_input=False)
                else:
                    est.fit(X[idx], target)
                self.estimators_.append(est)
        if self.base == "tree":  # each leaf's presence fraction, so prediction is a leaf look-up per tree
            self.leaf_presence_ = [self._leaf_fraction(est.tree_) for est in self.estimators_]
        self.n_features_in_ = X.shape[1]
        return self

    @staticmethod
    def _leaf_fraction(tree) -> np.ndarray:
        v = tree.value.reshape(tree.node_count, -1)
        if v.shape[1] == 1:  # a 0/1 regression tree: the node mean is the presence fraction
            return v[:, 0].copy()
        return v[:, 1] / np.maximum(v[:, :2].sum(axis=1), 1e-12)  # a classification tree (bundles saved before)

    def _bags(self, X, squares: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean over bags of the presence probability, and the mean of its squares when asked."""
        check_is_fitted(self, "estimators_")
        X = np.ascontiguousarray(X, dtype=np.float32)
        p = np.zeros(len(X))
        sq = np.zeros(len(X)) if squares else None
        leaves = getattr(self, "leaf_presence_", [None] * len(self.estimators_))
        for est, leaf in zip(self.estimators_, leaves):
            if self.base == "tree":  # the fitted tree structure directly, skipping per-call validation
                q = leaf[est.tree_.apply(X)]
            else:
                q = est.predict_proba(X)[:, 1]
            p += q
            if squares:
                sq += q * q
        p /= len(self.estimators_)
        if squares:
            sq /= len(self.estimators_)
        return p, sq

    def predict_proba(self, X) -> np.ndarray:
        p, _ = self._bags(X, squares=False)
        return np.column_stack([1.0 - p, p])

    def predict_proba_and_spread(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(``predict_proba`` (n, 2), (n,) standard deviation of the presence probability between the bags)."""
        p, sq = self._bags(X, squares=True)
        return np.column_stack([1.0 - p, p]), np.sqrt(np.maximum(sq - p * p, 0.0))

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    # A fitted forest is saved as a few concatenated arrays, not as hundreds of tree objects: skops writes every
    # array of every tree as its own member, which made saving (and reloading) a 30-species committee take minutes
    # and dominate `fit`. The state holds only numbers; the trees are rebuilt with scikit-learn's own Tree.
    _PACKED = ("tree_node_counts_", "tree_max_depths_", "tree_nodes_", "tree_values_")

    def __getstate__(self):
        state = super().__getstate__()
        trees = state.get("estimators_")
        if self.base != "tree" or not trees:
            return state
        state = {k: v for k, v in state.items() if k not in ("estimators_", "leaf_presence_")}
        structures = [est.tree_.__getstate__() for est in trees]
        state["tree_node_counts_"] = np.array([t["node_count"] for t in structures], dtype=np.int64)
        state["tree_max_depths_"] = np.array([t["max_depth"] for t in structures], dtype=np.int64)
        state["tree_nodes_"] = np.concatenate([t["nodes"] for t in structures])
        state["tree_values_"] = np.concatenate([t["values"] for t in structures])
        return state

    def __setstate__(self, state):
        state = dict(state)
        packed = {k: state.pop(k) for k in self._PACKED if k in state}
        super().__setstate__(state)
        if len(packed) == len(self._PACKED):
            self._unpack(**{k.removeprefix("tree_").removesuffix("_"): v for k, v in packed.items()})

    def _unpack(self, node_counts, max_depths, nodes, values) -> None:
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
        from sklearn.tree._tree import Tree

        # one value per node: 0/1 regression trees; two (class counts): classification trees of older bundles
        regression = values.shape[-1] == 1
        ends = np.cumsum(node_counts)
        self.estimators_ = []
        for count, depth, end in zip(node_counts, max_depths, ends):
            start = end - count
            tree = Tree(self.n_features_in_, np.array([1 if regression else 2], dtype=np.intp), 1)
            tree.__setstate__({"max_depth": int(depth), "node_count": int(count),
                               "nodes": np.ascontiguousarray(nodes[start:end]),
                               "values": np.ascontiguousarray(values[start:end])})
            kind = DecisionTreeRegressor if regression else DecisionTreeClassifier
            est = kind(max_features=self.max_features, min_samples_leaf=self.min_samples_leaf)
            est.tree_, est.n_outputs_, est.n_features_in_ = tree, 1, self.n_features_in_
            if not regression:
                est.classes_, est.n_classes_ = self.classes_, 2
            est.max_features_ = tree.n_features if self.max_features is None else est.max_features
            self.estimators_.append(est)
        self.leaf_presence_ = [self._leaf_fraction(est.tree_) for est in self.estimators_]
