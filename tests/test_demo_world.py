"""The generated demo world: real file formats, determinism, atomic writing, and a signal that is really there."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import from_bounds

from ecoalign.demo import aerial_world as demo_world
from ecoalign.demo.aerial_world import (
    DEMO_BANDS,
    DEMO_FILES,
    LANDCOVERS,
    generate_demo_world,
    plant_niches,
)

SMALL = dict(n_plots=60, size_m=1500.0, resolution_m=2.0, seed=0)
TINY = dict(n_plots=5, size_m=600.0, resolution_m=4.0, seed=1)
SIGNAL = dict(n_plots=150, size_m=2000.0, resolution_m=2.0, seed=0)  # enough plots to see a faint signal
BB_PERCENT = {"r": 0.1, "+": 0.5, "1": 2.5, "2": 15.0, "3": 37.5, "4": 62.5, "5": 87.5}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_demo_world(tmp_path_factory.mktemp("demo") / "world", **SMALL)


@pytest.fixture(scope="module")
def plots(world):
    import geopandas as gpd

    return gpd.read_file(world / "plots.gpkg", layer="plots")


@pytest.fixture(scope="module")
def env(world) -> pd.DataFrame:
    return pd.read_csv(world / "plot_environment.csv", dtype={"plot_id": str})


@pytest.fixture(scope="module")
def signal_world(tmp_path_factory) -> Path:
    return generate_demo_world(tmp_path_factory.mktemp("demo") / "signal", **SIGNAL)


@pytest.fixture(scope="module")
def signal_env(signal_world) -> pd.DataFrame:
    """Truth per regular plot of the signal world."""
    env = pd.read_csv(signal_world / "plot_environment.csv", dtype={"plot_id": str})
    return env[env["kind"] == "regular"].set_index("plot_id")


@pytest.fixture(scope="module")
def window_means(signal_world, signal_env) -> pd.DataFrame:
    """Per regular plot, the mean of each band over its 100 m window (as downstream reads it)."""
    regular = signal_env.reset_index()
    rows = []
    with rasterio.open(signal_world / "ortho.tif") as src:
        for x, y in zip(regular["x"], regular["y"]):
            win = from_bounds(x - 50, y - 50, x + 50, y + 50, transform=src.transform).round_offsets().round_lengths()
            a = src.read(window=win).astype(float)
            rows.append(a[:, a[0] > 0].mean(axis=1))
    return pd.DataFrame(rows, columns=list(DEMO_BANDS), index=regular["plot_id"])


def _raster(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


# ------------------------------------------------------------------------------------------ formats
def test_all_files_exist_and_the_ortho_is_georeferenced_as_promised(world):
    for name in (*DEMO_FILES, "SHA256SUMS"):
        assert (world / name).is_file(), name
    with rasterio.open(world / "ortho.tif") as src:
        assert src.count == 4 and src.dtypes == ("uint16",) * 4
        assert src.crs.to_epsg() == 32631
        assert src.transform == from_origin(560000.0, 4830000.0 + 1500.0, 2.0, 2.0)
        assert (src.width, src.height) == (750, 750)
        assert src.nodata == 0
        assert src.descriptions == ("blue", "green", "red", "nir")
        assert src.block_shapes[0] == (256, 256)
        assert src.compression.name.lower() == "deflate"
        assert float(src.tags(4)["wavelength_um"]) == DEMO_BANDS["nir"]
        img = src.read()
    valid = img[0] > 0
    assert (valid == np.all(img > 0, axis=0)).all(), "a pixel is nodata in some bands only"
    assert valid[:, 0].all() and not valid[:, -1].any(), "the nodata strip belongs on the eastern edge"
    assert 0.04 < 1 - valid.mean() < 0.2
    p1, p99 = np.percentile(img[:, valid], [1, 99])
    assert 100 <= p1 and p99 <= 6000, "reflectance x 10000"


def test_plots_table(plots, env):
    assert len(plots) == SMALL["n_plots"] + 6
    assert plots["plot_id"].is_unique and plots["plot_id"].str.fullmatch(r"P\d{4}").all()
    assert set(plots["landcover"]) <= set(LANDCOVERS)
    assert plots.crs.to_epsg() == 32631
    np.testing.assert_allclose(plots.area, 100.0, atol=0.5)
    assert list(env["plot_id"]) == list(plots["plot_id"])
    assert env["kind"].value_counts().to_dict() == {"regular": 60, "outside_raster": 3, "nodata_strip": 3}
    centres = np.column_stack([plots.centroid.x, plots.centroid.y])[env["kind"] == "regular"]
    d = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(d), 1)].min() >= 60.0
    x0, y0, size = 560000.0, 4830000.0, SMALL["size_m"]
    assert (centres >= [x0 + 60, y0 + 60]).all() and (centres <= [x0 + size - 60, y0 + size - 60]).all()


def test_extra_plots_are_outside_the_raster_or_on_nodata_and_regular_ones_on_data(world, env):
    with rasterio.open(world / "ortho.tif") as src:
        left, bottom, right, top = src.bounds

        def nodata_fraction(x, y):
            win = from_bounds(x - 50, y - 50, x + 50, y + 50, transform=src.transform).round_offsets().round_lengths()
            a = src.read(1, window=win, boundless=True, fill_value=0)
            return float((a == 0).mean())

        for row in env.itertuples():
            inside = left <= row.x <= right and bottom <= row.y <= top
            if row.kind == "outside_raster":
                assert not inside
            elif row.kind == "nodata_strip":
                assert inside and nodata_fraction(row.x, row.y) > 0.9
            else:
                assert inside and nodata_fraction(row.x, row.y) == 0.0


def test_releves_taxonomy_butterflies_and_soil_tables(world, env):
    rel = pd.read_csv(world / "releves.csv", dtype=str)
    assert list(rel.columns) == ["plot_id", "species", "cover"]
    assert set(rel["cover"]) <= set(BB_PERCENT)
    assert rel.groupby("plot_id").size().reindex(env["plot_id"]).min() >= 3  # every plot, extras included
    assert rel.equals(rel.sort_values(["plot_id", "species"]).reset_index(drop=True))
    assert not rel.duplicated(["plot_id", "species"]).any()

    taxonomy = ["species", "kingdom", "phylum", "class", "order", "family", "genus", "common_name"]
    sp = pd.read_csv(world / "species.csv")
    assert list(sp.columns) == taxonomy and sp["species"].is_unique and 40 <= len(sp) <= 80
    assert set(sp["kingdom"]) == {"Plantae"} and set(sp["phylum"]) == {"Tracheophyta"}
    assert set(sp["class"]) == {"Magnoliopsida", "Liliopsida", "Pinopsida"}
    assert (sp["genus"] == sp["species"].str.split().str[0]).all()
    assert sp.loc[sp["species"] == "Quercus robur", ["order", "family"]].values.tolist() == [["Fagales", "Fagaceae"]]
    assert set(rel["species"]) <= set(sp["species"]) and set(plant_niches()["species"]) == set(sp["species"])

    bsp = pd.read_csv(world / "butterfly_species.csv")
    assert list(bsp.columns) == taxonomy and len(bsp) >= 12
    assert set(bsp["kingdom"]) == {"Animalia"} and set(bsp["order"]) == {"Lepidoptera"}
    assert set(bsp["family"]) <= {"Nymphalidae", "Lycaenidae", "Pieridae", "Papilionidae", "Hesperiidae"}
    bf = pd.read_csv(world / "butterflies.csv", dtype={"plot_id": str})
    assert list(bf.columns) == ["record_id", "species", "x", "y", "plot_id"] and bf["record_id"].is_unique
    assert set(bf["species"]) <= set(bsp["species"]) and len(bf) > 20
    centre = env.set_index("plot_id").loc[bf["plot_id"], ["x", "y"]].to_numpy()
    assert np.hypot(*(bf[["x", "y"]].to_numpy() - centre).T).max() <= 30.2

    soil = pd.read_csv(world / "soil_trophic_groups.csv", dtype={"plot_id": str})
    groups = ["bacterivores", "fungivores", "omnivores", "predators", "plant_feeders", "detritivores"]
    assert list(soil.columns) == ["plot_id", *groups] and list(soil["plot_id"]) == list(env["plot_id"])
    assert all(pd.api.types.is_integer_dtype(soil[g]) for g in groups) and (soil[groups] >= 0).all().all()


def test_sha256sums_match_every_file(world):
    lines = (world / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ", 1)
        listed[name] = digest
    assert set(listed) == set(DEMO_FILES)
    for name, digest in listed.items():
        assert hashlib.sha256((world / name).read_bytes()).hexdigest() == digest, name


# ------------------------------------------------------------------------------------- determinism
def test_same_seed_same_world_other_seed_other_world(world, tmp_path):
    again = generate_demo_world(tmp_path / "again", **SMALL)
    other = generate_demo_world(tmp_path / "other", **{**SMALL, "seed": 1})
    assert (again / "releves.csv").read_bytes() == (world / "releves.csv").read_bytes()
    np.testing.assert_array_equal(_raster(again / "ortho.tif"), _raster(world / "ortho.tif"))
    for name in ("plot_environment.csv", "butterflies.csv", "soil_trophic_groups.csv"):
        assert (again / name).read_bytes() == (world / name).read_bytes(), name
    assert (other / "releves.csv").read_bytes() != (world / "releves.csv").read_bytes()
    assert not np.array_equal(_raster(other / "ortho.tif"), _raster(world / "ortho.tif"))


# ----------------------------------------------------------------------------------------- signal
def test_window_spectra_predict_land_cover_well_above_chance(window_means, signal_env):
    """Leave-one-out nearest centroid on the four standardised log band means of each plot's window."""
    labels = signal_env.loc[window_means.index, "landcover"].to_numpy()
    x = np.log(window_means.to_numpy())
    x = (x - x.mean(0)) / x.std(0)
    hits = 0
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        classes = np.unique(labels[keep])
        centroids = np.stack([x[keep & (labels == c)].mean(0) for c in classes])
        hits += classes[np.argmin(((centroids - x[i]) ** 2).sum(1))] == labels[i]
    majority = pd.Series(labels).value_counts(normalize=True).max()
    assert len(set(labels)) >= 3
    assert hits / len(x) >= max(0.75, majority + 0.35)


def _community_weighted_moisture(world: Path) -> pd.Series:
    """Cover-weighted mean moisture optimum of the species noted in each relevé (an Ellenberg-style index)."""
    rel = pd.read_csv(world / "releves.csv", dtype=str)
    weight = rel["cover"].map(BB_PERCENT)
    optimum = rel["species"].map(plant_niches().set_index("species")["moisture_opt"])
    return (weight * optimum).groupby(rel["plot_id"]).sum() / weight.groupby(rel["plot_id"]).sum()


def _residual(y: np.ndarray, covariates: np.ndarray) -> np.ndarray:
    beta, *_ = np.linalg.lstsq(covariates, y, rcond=None)
    return y - covariates @ beta


def _partial_r(x: np.ndarray, y: np.ndarray, covariates: np.ndarray) -> float:
    return float(np.corrcoef(_residual(x, covariates), _residual(y, covariates))[0, 1])


def test_composition_follows_moisture_and_leaves_a_faint_trace_in_the_image(signal_world, window_means, signal_env):
    """Beyond land cover, the window's NIR/red ratio tracks moisture, and so the moisture the species indicate.

    Land cover is removed first (regression on the true land-cover fractions of each window), so this cannot
    pass on the strong land-cover signal alone; nutrient, which also greens the image and goes with moisture
    in the species' niches, is held fixed for the image-truth check. Zeroing the generator's moisture terms
    drops that partial correlation to about 0 (-0.2 .. 0.2 over seeds); with them it is 0.4 .. 0.55.
    """
    e = signal_env.loc[window_means.index]
    cwm = _community_weighted_moisture(signal_world).loc[window_means.index].to_numpy()
    moisture, nutrient = e["moisture"].to_numpy(), e["nutrient"].to_numpy()
    assert np.corrcoef(cwm, moisture)[0, 1] > 0.6  # species composition really is moisture-driven

    log_ratio = np.log(window_means["nir"] / window_means["red"]).to_numpy()
    fractions = e[[f"frac_{lc}" for lc in LANDCOVERS]].to_numpy()
    r_truth = _partial_r(log_ratio, moisture, np.column_stack([fractions, nutrient]))
    assert r_truth > 0.3, f"NIR/red barely follows moisture beyond land cover and nutrient (r = {r_truth:.2f})"
    r_composition = _partial_r(log_ratio, cwm, fractions)
    assert r_composition > 0.25, f"NIR/red barely follows the relevés' moisture index (r = {r_composition:.2f})"

    explained_by_landcover = 1 - _residual(log_ratio, fractions).var() / log_ratio.var()
    assert explained_by_landcover > 0.6 and r_composition ** 2 < explained_by_landcover


def test_plant_niches_are_in_the_documented_ranges():
    n = plant_niches()
    assert n["niche_width"].between(0.15, 0.35).all()
    assert n[["moisture_opt", "nutrient_opt"]].stack().between(0, 1).all()
    affinity = n[[f"affinity_{lc}" for lc in LANDCOVERS]].to_numpy()
    assert ((affinity >= 0.3).sum(1) <= 2).all() and ((affinity >= 0.3).sum(1) >= 1).all()


# ------------------------------------------------------------------------------- atomic generation
def test_complete_world_is_returned_untouched(world):
    before = {p.name: p.stat().st_mtime_ns for p in world.iterdir()}
    t = time.perf_counter()
    assert generate_demo_world(world, **{**SMALL, "seed": 99}) == world
    assert time.perf_counter() - t < 0.5
    assert {p.name: p.stat().st_mtime_ns for p in world.iterdir()} == before


def test_leftovers_of_a_killed_generation_do_not_break_the_next_one(tmp_path):
    root = tmp_path / "world"
    stale = tmp_path / ".world.tmp-999999999"  # killed long ago: removed
    ours = tmp_path / f".world.tmp-{os.getpid()}"  # our pid, so certainly not running: removed
    running = tmp_path / ".world.tmp-999999998"  # fresh, maybe another process at work: left alone
    for d in (stale, ours, running):
        d.mkdir()
        (d / "ortho.tif").write_bytes(b"half a tiff")
    old = time.time() - 3600
    os.utime(stale, (old, old))

    assert generate_demo_world(root, **TINY) == root
    assert (root / "SHA256SUMS").exists()
    assert not stale.exists() and running.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".world.tmp-999999998", "world"])


def test_a_failing_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(demo_world, "_simulate_soil", boom)
    with pytest.raises(RuntimeError):
        generate_demo_world(tmp_path / "world", **TINY)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert (generate_demo_world(tmp_path / "world", **TINY) / "SHA256SUMS").exists()


def test_a_foreign_folder_is_not_overwritten(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_demo_world(root, **TINY)
    assert (root / "notes.txt").read_text() == "keep me"


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError):
        generate_demo_world(tmp_path / "w", n_plots=0)
    with pytest.raises(ValueError):
        generate_demo_world(tmp_path / "w", size_m=1000.0, resolution_m=3.0)
    with pytest.raises(ValueError, match="cannot place"):
        generate_demo_world(tmp_path / "w", n_plots=500, size_m=600.0, resolution_m=4.0)
    assert not (tmp_path / "w").exists()


def test_congeners_share_niches_except_the_documented_genera():
    """Phylogenetic niche conservatism, as the generator's docstring promises: congeners sit closer in niche
    space than unrelated species do, the documented exceptions are far apart, and some genera have one member."""
    from ecoalign.demo.aerial_world import NICHE_EXCEPTIONS, genus_structure

    g = genus_structure()
    multi = g[g["genus_size"] > 1]
    conserved = multi[~multi["niche_exception"]]
    assert set(multi["genus"]) - set(NICHE_EXCEPTIONS) and set(NICHE_EXCEPTIONS) <= set(multi["genus"])
    assert (g["genus_size"] == 1).sum() >= 10
    n = plant_niches()
    feats = n[["moisture_opt", "nutrient_opt"] + [f"affinity_{lc}" for lc in LANDCOVERS]].to_numpy(float)
    d = np.linalg.norm(feats[:, None] - feats[None], axis=2)
    genus = n["species"].str.split().str[0].to_numpy()
    unrelated = d[genus[:, None] != genus[None]]
    assert conserved["nearest_congener_distance"].max() < np.quantile(unrelated, 0.1)
    assert multi.loc[multi["niche_exception"], "nearest_congener_distance"].min() > np.median(unrelated) * 0.5
