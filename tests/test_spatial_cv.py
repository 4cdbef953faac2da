"""Spatial block CV: whole blocks held out, an exact buffer, full coverage, sklearn compatibility, honest scores.

Geometry checks run on synthetic points and on the real oribatid-mite core positions (../shared/data, skipped with a
reason when absent); the "spatial CV is more honest" check uses a smooth random field where only location links
features and labels.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED
from scipy.spatial.distance import cdist
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, RepeatedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from ecoalign.core.errors import EcoalignInputError
from ecoalign.data.splits import block_ids
from ecoalign.sdm.spatial_cv import SpatialBlockKFold, make_cv

MITE_XY = SHARED / "soil_fauna" / "oribatid_mites" / "vegan_mite.xy.csv"


def _points(n=400, extent=1000.0, seed=0):
    return np.random.default_rng(seed).uniform(0, extent, size=(n, 2))


def _mite_xy():
    if not MITE_XY.exists():
        pytest.skip(f"shared oribatid mite data not found at {MITE_XY}")
    xy = pd.read_csv(MITE_XY)[["x", "y"]].to_numpy(dtype=float)
    assert xy.shape == (70, 2)
    return xy


def _smooth_field(xy, rng, wavelength, n_waves=20):
    """A stationary Gaussian-like random field: a sum of random plane waves of one wavelength."""
    k = rng.normal(size=(n_waves, 2)) * (2 * np.pi / wavelength)
    phase = rng.uniform(0, 2 * np.pi, n_waves)
    return np.cos(xy @ k.T + phase).sum(axis=1) / np.sqrt(n_waves)


# ------------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("source", ["synthetic", "mites"])
def test_folds_cover_every_point_once_per_repeat_and_never_split_a_block(source):
    if source == "synthetic":
        xy, block, n_splits = _points(), 150.0, 5
    else:
        xy, block, n_splits = _mite_xy(), 1.0, 4  # 70 cores over 2.6 m x 10 m
    cv = SpatialBlockKFold(n_splits=n_splits, block_size=block, n_repeats=3, random_state=0)
    splits = list(cv.split(coords=xy))
    assert len(splits) == cv.get_n_splits() == 3 * n_splits
    blocks = block_ids(xy, block)
    assignments = []
    for r in range(3):
        fold_of_point = np.full(len(xy), -1)
        for k, (train, test) in enumerate(splits[r * n_splits:(r + 1) * n_splits]):
            assert train.dtype.kind == "i" and test.dtype.kind == "i"
            assert np.intersect1d(train, test).size == 0
            assert np.array_equal(np.union1d(train, test), np.arange(len(xy)))  # no buffer: train = complement
            assert (fold_of_point[test] == -1).all()  # tested once only
            fold_of_point[test] = k
            test_blocks = np.unique(blocks[test])
            assert np.intersect1d(test_blocks, blocks[train]).size == 0  # no block on both sides
            assert np.isin(blocks, test_blocks).sum() == test.size  # whole blocks only
        assert (fold_of_point >= 0).all()
        sizes = np.bincount(fold_of_point)
        if source == "synthetic":
            assert sizes.max() <= 1.3 * sizes.min()  # greedy balancing of ~45 blocks
        assignments.append(fold_of_point)
    # repeats reshuffle blocks: partitions differ (compare co-membership, not fold labels)
    same = [np.array_equal(a[:, None] == a[None, :], b[:, None] == b[None, :])
            for a, b in [(assignments[0], assignments[1]), (assignments[1], assignments[2])]]
    assert not any(same)


@pytest.mark.parametrize("source", ["synthetic", "mites"])
def test_buffer_removes_exactly_the_training_points_within_the_buffer(source):
    if source == "synthetic":
        xy, block, buffer = _points(seed=1), 200.0, 60.0
    else:
        xy, block, buffer = _mite_xy(), 2.0, 0.5
    plain = list(SpatialBlockKFold(4, block_size=block, random_state=3).split(coords=xy))
    buffered = list(SpatialBlockKFold(4, block_size=block, buffer=buffer, random_state=3).split(coords=xy))
    removed_total = 0
    for (train0, test0), (train, test) in zip(plain, buffered):
        assert np.array_equal(test, test0)  # the buffer never changes the test fold
        nearest = cdist(xy[train0], xy[test0]).min(axis=1)  # brute force
        assert np.array_equal(train, train0[nearest > buffer])
        removed_total += train0.size - train.size
        if train.size:
            assert cdist(xy[train], xy[test]).min() > buffer
    assert removed_total > 0  # the check above was not vacuous


def test_same_random_state_same_folds_and_other_state_other_folds():
    xy = _points(seed=2)
    a = [t for _, t in SpatialBlockKFold(5, block_size=100.0, random_state=7).split(coords=xy)]
    b = [t for _, t in SpatialBlockKFold(5, block_size=100.0, random_state=7).split(coords=xy)]
    c = [t for _, t in SpatialBlockKFold(5, block_size=100.0, random_state=8).split(coords=xy)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


# ---------------------------------------------------------------------------------------- input handling


def test_coordinates_via_coords_groups_or_dataframe_columns_agree():
    xy = _points(n=120, seed=3)
    cv = SpatialBlockKFold(3, block_size=250.0, buffer=20.0, random_state=0)
    X = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "feature": np.arange(120.0)})
    via_coords = list(cv.split(np.zeros((120, 1)), coords=xy))
    via_groups = list(cv.split(np.zeros((120, 1)), None, xy))
    via_frame = list(cv.split(X))
    for other in (via_groups, via_frame):
        assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(via_coords, other))


def test_clear_errors_for_missing_or_bad_coordinates_and_too_few_blocks():
    xy = _points(n=50, seed=4)
    cv = SpatialBlockKFold(5, block_size=100.0)
    with pytest.raises(EcoalignInputError, match="coordinates"):
        list(cv.split(np.zeros((50, 3))))
    with pytest.raises(EcoalignInputError, match=r"shape \(50,\)"):
        list(cv.split(np.zeros((50, 3)), groups=np.arange(50)))  # group labels are not coordinates
    with pytest.raises(EcoalignInputError, match="49 rows but coords has 50"):
        list(cv.split(np.zeros((49, 3)), coords=xy))
    bad = xy.copy()
    bad[7, 1] = np.nan
    with pytest.raises(EcoalignInputError, match="row 7"):
        list(cv.split(coords=bad))
    with pytest.raises(EcoalignInputError, match="4 block.*fewer than n_splits=5"):
        list(SpatialBlockKFold(5, block_size=600.0).split(coords=xy))  # 1000 m square -> 2 x 2 blocks
    with pytest.raises(EcoalignInputError, match="removes every training site"):
        list(SpatialBlockKFold(2, block_size=500.0, buffer=5000.0).split(coords=xy))
    with pytest.raises(EcoalignInputError, match="block_size"):
        SpatialBlockKFold(5)
    with pytest.raises(EcoalignInputError, match="n_splits"):
        SpatialBlockKFold(1, block_size=10.0)


def test_clone_repr_and_make_cv():
    cv = SpatialBlockKFold(n_splits=4, block_size=250.0, buffer=30.0, n_repeats=2, random_state=11)
    twin = clone(cv)
    assert twin is not cv and twin.get_params() == cv.get_params()
    assert repr(cv) == ("SpatialBlockKFold(block_size=250.0, buffer=30.0, n_repeats=2, n_splits=4,\n"
                        "         random_state=11)")
    assert twin.get_n_splits() == 8
    made = make_cv("spatial_block", n_splits=4, block_size=250.0, buffer=30.0, n_repeats=2, random_state=11)
    assert isinstance(made, SpatialBlockKFold) and made.get_params() == cv.get_params()
    rand = make_cv("random", n_splits=4, random_state=1, block_size=250.0, buffer=30.0)
    assert isinstance(rand, KFold) and rand.shuffle and rand.get_n_splits() == 4
    rep = make_cv("random", n_splits=3, n_repeats=2, random_state=1)
    assert isinstance(rep, RepeatedKFold) and rep.get_n_splits() == 6
    with pytest.raises(EcoalignInputError, match="spatial_block"):
        make_cv("checkerboard", block_size=1.0)


# ------------------------------------------------------------------------------------------- in sklearn use


def test_works_inside_cross_val_score_with_groups_as_coordinates():
    rng = np.random.default_rng(5)
    xy = _points(n=300, seed=5)
    X = rng.normal(size=(300, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(int)
    cv = SpatialBlockKFold(5, block_size=200.0, buffer=25.0, n_repeats=2, random_state=0)
    scores = cross_val_score(LogisticRegression(), X, y, groups=xy, cv=cv, scoring="roc_auc")
    assert scores.shape == (10,) and np.all(scores > 0.75)
    # the scores are those of our folds (groups really carried the coordinates)
    manual = [LogisticRegression().fit(X[tr], y[tr]).decision_function(X[te]) for tr, te in cv.split(X, coords=xy)]
    from sklearn.metrics import roc_auc_score
    expected = [roc_auc_score(y[te], s) for (_, te), s in zip(cv.split(X, coords=xy), manual)]
    np.testing.assert_allclose(scores, expected, rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spatial_cv_is_more_honest_than_random_cv_on_autocorrelated_data(seed):
    # Features and label are independent smooth random fields: the features only encode location, so any skill is
    # interpolation between neighbours. Random CV rewards it; spatial blocks (+ buffer) larger than the field's
    # correlation length do not.
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 2000, size=(500, 2))
    X = np.column_stack([_smooth_field(xy, rng, wavelength=1000.0) for _ in range(4)])
    y = (_smooth_field(xy, rng, wavelength=800.0) > 0).astype(int)
    model = KNeighborsClassifier(n_neighbors=10)
    random_auc = cross_val_score(model, X, y, cv=make_cv("random", n_splits=5, random_state=0),
                                 scoring="roc_auc").mean()
    spatial_auc = cross_val_score(model, X, y, groups=xy, scoring="roc_auc",
                                  cv=make_cv("spatial_block", n_splits=5, block_size=500.0, buffer=200.0,
                                             random_state=0)).mean()
    assert random_auc > 0.65
    assert spatial_auc < random_auc - 0.12
    assert spatial_auc < 0.62  # close to chance, as it should be


@pytest.mark.parametrize("extent", [3_000_000.0, 40.0])  # metres over a continent; degrees
def test_a_spec_without_block_size_holds_out_tenths_of_the_extent_in_the_sites_own_units(extent):
    """The documented default: 500 m blocks over regions 250 to 5,000 km across held about one site each (random
    K-fold under another name); both the per-species CV and the ensemble's committee folds must hold out blocks of
    a tenth of the extent instead."""
    from ecoalign.sdm.fitting import make_model, make_splitter
    from ecoalign.sdm.spec import spec_from_dict

    spec = spec_from_dict({"name": "t", "task": "presence_only", "metrics": ["auc"], "estimator": {"name": "ensemble"},
                           "cv": {"scheme": "spatial_block", "folds": 3}})
    assert spec.cv["block_size_m"] is None
    xy = _points(600, extent=extent, seed=3)
    cells = block_ids(xy, float(np.ptp(xy, axis=0).max()) / 10.0)
    assert 50 <= cells.max() + 1 <= 121  # about ten blocks across
    for splits in (list(make_splitter(spec, 0, xy).split(coords=xy)), make_model(spec)[-1]._splits(len(xy), xy)):
        fold = np.full(len(xy), -1)
        for k, (train, test) in enumerate(splits):
            fold[test] = k
            assert not np.isin(cells[train], cells[test]).any()
        assert (fold >= 0).all()
        assert all(len(np.unique(fold[cells == c])) == 1 for c in np.unique(cells))


@pytest.mark.parametrize("bad", [-500, 0, "500 m", True])
def test_a_block_size_that_is_not_a_positive_number_is_refused_when_the_spec_is_read(bad):
    from ecoalign.sdm.spec import spec_from_dict

    with pytest.raises(EcoalignInputError, match="cv.block_size_m") as err:
        spec_from_dict({"name": "t", "task": "presence_only", "metrics": ["auc"],
                        "cv": {"scheme": "spatial_block", "block_size_m": bad}})
    assert "positive block side" in str(err.value)
