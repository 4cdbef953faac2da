"""Presence-only helpers (ecoalign.sdm.background): background points, pseudo-absences, long table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely

from ecoalign.core.errors import EcoalignInputError
from ecoalign.sdm.background import (
    presence_background_table,
    sample_background,
    sample_pseudo_absences,
)

BRYCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "releves" / "bryce"


def brute_min_dist(points: np.ndarray, presences: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest presence, by brute force (no KD-tree)."""
    d = np.sqrt(((points[:, None, :] - presences[None, :, :]) ** 2).sum(axis=2))
    return d.min(axis=1)


@pytest.fixture(scope="module")
def bryce_plots():
    """Real plot coordinates (UTM 12N, metres) and presence of one common shrub."""
    if not BRYCE.exists():
        pytest.skip(f"shared field data not found at {BRYCE}")
    site = pd.read_csv(BRYCE / "labdsv_brycesite.csv")
    veg = pd.read_csv(BRYCE / "labdsv_bryceveg.csv")
    ok = site[["east", "north"]].notna().all(axis=1)
    xy = site.loc[ok, ["east", "north"]].to_numpy(float)
    present = (veg.loc[ok, "arcpat"] > 0).to_numpy()
    assert len(xy) == 159 and 30 < present.sum() < 120
    return xy, present


def test_background_extent_polygon_mask_and_seed():
    ext = (1000.0, 2000.0, 1500.0, 2600.0)
    a = sample_background(500, ext, seed=7)
    assert a.shape == (500, 2)
    assert (a[:, 0] >= 1000).all() and (a[:, 0] <= 1500).all() and (a[:, 1] >= 2000).all() and (a[:, 1] <= 2600).all()
    np.testing.assert_array_equal(a, sample_background(500, ext, seed=7))
    assert not np.array_equal(a, sample_background(500, ext, seed=8))
    # roughly uniform: each half of the extent gets about half of the points
    assert 200 < (a[:, 0] < 1250).sum() < 300

    ring = shapely.Point(0, 0).buffer(100).difference(shapely.Point(0, 0).buffer(50))
    r = sample_background(400, ring, seed=1)
    assert r.shape == (400, 2) and shapely.contains_xy(ring, r[:, 0], r[:, 1]).all()
    np.testing.assert_array_equal(r, sample_background(400, ring, seed=np.random.default_rng(1)))

    mask = np.zeros((5, 6), dtype=bool)
    mask[1, 2] = mask[4, 5] = True
    m = sample_background(300, mask, seed=0, transform=(10.0, 0.0, 500.0, 0.0, -10.0, 900.0))
    in_cell_a = (m[:, 0] >= 520) & (m[:, 0] <= 530) & (m[:, 1] <= 890) & (m[:, 1] >= 880)
    in_cell_b = (m[:, 0] >= 550) & (m[:, 0] <= 560) & (m[:, 1] <= 860) & (m[:, 1] >= 850)
    assert (in_cell_a | in_cell_b).all() and 100 < in_cell_a.sum() < 200

    with pytest.raises(EcoalignInputError, match="transform"):
        sample_background(10, mask, seed=0)
    with pytest.raises(EcoalignInputError, match="empty"):
        sample_background(10, (5, 5, 1, 1), seed=0)
    with pytest.raises(EcoalignInputError, match="n=0"):
        sample_background(0, ext, seed=0)


def test_pseudo_absences_in_extent_respect_buffer(bryce_plots):
    xy, present = bryce_plots
    pres = xy[present]
    ext = (xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max())
    pa = sample_pseudo_absences(pres, 300, extent=ext, exclusion_buffer_m=500.0, seed=3)
    assert pa.shape == (300, 2)
    assert (brute_min_dist(pa, pres) >= 500.0).all()
    np.testing.assert_array_equal(pa, sample_pseudo_absences(pres, 300, extent=ext, exclusion_buffer_m=500.0,
                                                             seed=3))
    # without a buffer some background points would fall that close: the buffer does something
    plain = sample_background(300, ext, seed=3)
    assert (brute_min_dist(plain, pres) < 500.0).any()


def test_pseudo_absences_from_candidates(bryce_plots):
    xy, present = bryce_plots
    pres = xy[present]
    buffer = 300.0
    far = brute_min_dist(xy, pres) >= buffer
    assert 5 < far.sum() < 100
    n = int(far.sum()) - 3
    pa, idx = sample_pseudo_absences(pres, n, candidates_xy=xy, exclusion_buffer_m=buffer, seed=0, return_index=True)
    assert pa.shape == (n, 2) and len(set(idx)) == n
    np.testing.assert_array_equal(pa, xy[idx])
    assert far[idx].all()
    assert (brute_min_dist(pa, pres) >= buffer).all()
    pa2 = sample_pseudo_absences(pres, n, candidates_xy=xy, exclusion_buffer_m=buffer, seed=0)
    np.testing.assert_array_equal(pa, pa2)

    with pytest.warns(UserWarning, match=rf"requested 500 pseudo-absences but only {far.sum()} of 159 candidates"):
        allp = sample_pseudo_absences(pres, 500, candidates_xy=xy, exclusion_buffer_m=buffer, seed=0)
    assert len(allp) == far.sum()
    with pytest.raises(EcoalignInputError, match="none of the 159 candidates"):
        sample_pseudo_absences(pres, 10, candidates_xy=xy, exclusion_buffer_m=1e6, seed=0)


def test_pseudo_absences_bad_input():
    pres = np.array([[0.5, 0.5]])
    with pytest.raises(EcoalignInputError, match="longitude/latitude"):
        sample_pseudo_absences(np.array([[-111.2, 37.6]]), 5, extent=(-111.3, 37.5, -111.1, 37.7),
                               exclusion_buffer_m=1000.0, seed=0)
    with pytest.raises(EcoalignInputError, match="exactly one"):
        sample_pseudo_absences(pres, 5, seed=0)
    with pytest.raises(EcoalignInputError, match="NaN"):
        sample_pseudo_absences(np.array([[np.nan, 1.0]]), 5, extent=(0, 0, 1, 1), seed=0)
    with pytest.raises(EcoalignInputError, match="exclusion_buffer_m"):
        sample_pseudo_absences(pres, 5, extent=(0, 0, 1, 1), exclusion_buffer_m=-1, seed=0)


def test_presence_background_table_shared_and_per_species(bryce_plots):
    xy, present = bryce_plots
    records = pd.DataFrame({"species": "arcpat", "x": xy[present, 0], "y": xy[present, 1]})
    records = pd.concat([records, records.iloc[:2],  # a duplicate record
                         pd.DataFrame({"species": ["pinpon"] * 3, "x": xy[:3, 0], "y": xy[:3, 1]})],
                        ignore_index=True)
    bg = xy[~present]
    long = presence_background_table(records, background_xy=bg)
    assert list(long.columns) == ["x", "y", "species", "presence"]
    counts = long.groupby(["species", "presence"]).size()
    assert counts[("arcpat", 1)] == present.sum() and counts[("pinpon", 1)] == 3
    assert counts[("arcpat", 0)] == counts[("pinpon", 0)] == len(bg)

    pa = {"arcpat": bg[:10], "pinpon": bg[10:15]}
    long2 = presence_background_table(records, ["arcpat", "pinpon"], pa, per_species=True)
    c2 = long2.groupby(["species", "presence"]).size()
    assert c2[("arcpat", 0)] == 10 and c2[("pinpon", 0)] == 5
    with pytest.raises(EcoalignInputError, match="no background points for species"):
        presence_background_table(records, ["arcpat", "pinpon"], {"arcpat": bg}, per_species=True)
    with pytest.raises(EcoalignInputError, match=r"missing column\(s\) \['x'\]"):
        presence_background_table(records.drop(columns="x"), background_xy=bg)
    with pytest.warns(UserWarning, match="no presence record"):
        presence_background_table(records, ["arcpat", "abcdef"], background_xy=bg)
