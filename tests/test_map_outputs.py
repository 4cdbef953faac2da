"""What a map tells an ecologist besides the probability: the ensemble's spread (``"<species>: sd"`` bands, or
metadata saying a single model has none), a presence/absence COG at a stored out-of-fold threshold (or one the
user picks), the quicklook, ``--species``, and that resume and Dask give the same files with the new bands.

Maps are 3 x 3 windows of the small generated world (DOFA-small, random weights): a few seconds each.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import small_map_world

from ecoalign.cli import main
from ecoalign.core.errors import EcoalignInputError
from ecoalign.mapping import run, writer
from ecoalign.mapping.writer import presence_path
from ecoalign.sdm.bundle_io import seal

NODATA = -9999.0
FAST_ENSEMBLE = {"member_params": {"rf_down": {"n_estimators": 10}, "deep_maxent": {"epochs": 30}}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return small_map_world.build(tmp_path_factory.getbasetemp() / "small-map-world")


def _fit(world, folder: Path, estimator: dict, cv: dict | None = None) -> Path:
    """A bundle on the world's plot embeddings (targets: wetland, grassland) with another estimator."""
    from ecoalign.sdm.fitting import fit_bundle
    from ecoalign.sdm.sites import build_sites
    from ecoalign.sdm.spec import spec_from_dict

    spec = spec_from_dict({
        "name": "landcover_presence", "task": "presence_absence",
        "target": {"source": str(world["bundle"].parent / "landcover.csv"), "min_presences": 3},
        "features": {"embeddings": True}, "estimator": estimator,
        "cv": cv or {"scheme": "random", "folds": 2}, "metrics": ["auc"], "bootstrap": 5})
    return fit_bundle(spec, build_sites(spec, embeddings=world["embeddings"]), folder / "bundle", n_jobs=1,
                      progress=False)


@pytest.fixture(scope="module")
def bagged(world, tmp_path_factory):
    """Down-sampled bagging (25 bags per species): an ensemble with a spread."""
    return _fit(world, tmp_path_factory.mktemp("bagged"), {"name": "rf_down", "params": {"n_estimators": 25}})


def _map(world, bundle, out, **kw):
    kw = {"block_px": 2, "progress": False, "quicklook": False, **kw}
    return run.map_raster(world["encoder"], bundle, world["raster"], out, **kw)


def _read(path):
    import rasterio

    with rasterio.open(path) as src:
        return {"values": src.read(), "descriptions": src.descriptions, "nodata": src.nodata, "dtype": src.dtypes[0],
                "count": src.count, "tags": [src.tags(i) for i in range(1, src.count + 1)],
                "meta": json.loads(src.tags()["ecoalign"]), "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")}


def _stored(bundle, rule="max_tss") -> dict:
    return json.loads((Path(bundle) / "bundle.json").read_text())["threshold_rules"][rule]


def _check_presence(prob: np.ndarray, pres: dict, thresholds: dict, species: list[str]) -> None:
    """The presence band is (probability >= threshold) on valid pixels, 255 elsewhere, band by band."""
    assert pres["dtype"] == "uint8" and pres["nodata"] == 255 and pres["layout"] == "COG"
    assert pres["descriptions"] == tuple(f"{s}: presence" for s in species)
    valid = prob != NODATA
    for i, s in enumerate(species):
        t = np.float64(thresholds[s])
        expected = np.where(valid[i], prob[i].astype(np.float64) >= t, 255).astype(np.uint8)
        np.testing.assert_array_equal(pres["values"][i], expected)
        assert float(pres["tags"][i]["threshold"]) == thresholds[s]


def _nothing_written(out: Path) -> None:
    assert not out.exists() and not presence_path(out).exists()
    assert not out.with_name(out.name + ".partial").exists()


# ------------------------------------------------------------------------------------------ the model's spread

def test_model_spread_is_the_sd_between_members_and_leaves_the_probability_unchanged():
    from ecoalign.sdm.ensemble import SpatialEnsemble
    from ecoalign.sdm.estimators import MultiSpeciesModel
    from ecoalign.sdm.outputs import predict_with_spread, spread_info

    rng = np.random.default_rng(0)
    X = rng.normal(size=(160, 4))
    Y = np.c_[X[:, 0] + rng.normal(0, 0.5, 160) > 0, X[:, 1] - X[:, 2] > 0.3].astype(int)
    Xt = rng.normal(size=(40, 4))
    for name, members in (("rf_down", lambda est: [leaf[t.tree_.apply(Xt.astype(np.float32))]
                                                   for t, leaf in zip(est.estimators_, est.leaf_presence_)]),
                          ("random_forest", lambda est: [t.predict_proba(Xt)[:, 1] for t in est.estimators_])):
        model = MultiSpeciesModel(name, params={"n_estimators": 15}, n_jobs=1).fit(X, Y)
        info = spread_info(model)
        assert info["available"] and info["statistic"] == "sd" and info["members"] == 15
        values, sd = predict_with_spread(model, "presence", Xt)
        assert values.tobytes() == model.predict_proba(Xt).tobytes()  # bit for bit the model's probability
        for j, s in enumerate(model.species_):
            np.testing.assert_allclose(sd[:, j], np.std(members(model.estimators_[s]), axis=0), atol=1e-12)
        assert (sd > 0).any() and (sd >= 0).all()
        one, one_sd = predict_with_spread(model, "presence", Xt, species=["species_1"])
        assert one.tobytes() == values[:, [1]].tobytes() and one_sd.tobytes() == sd[:, [1]].tobytes()
    committee = SpatialEnsemble(member_params={"rf_down": {"n_estimators": 8}, "deep_maxent": {"epochs": 20}},
                                n_jobs=1, spatial=False).fit(X, Y)
    values, sd = predict_with_spread(committee, "presence", Xt)
    assert values.tobytes() == committee.predict_proba(Xt).tobytes()
    assert sd.tobytes() == committee.predict_spread(Xt).tobytes() and (sd > 0).any()
    assert "committee" in spread_info(committee)["over"]
    single = MultiSpeciesModel("logistic", n_jobs=1).fit(X, Y)
    info = spread_info(single)
    assert not info["available"] and "not an ensemble" in info["reason"]
    values, sd = predict_with_spread(single, "presence", Xt)
    assert sd is None and values.tobytes() == single.predict_proba(Xt).tobytes()


# ------------------------------------------------------------------------------------------ maps with the new bands

def test_ensemble_map_has_sd_bands_a_presence_cog_and_a_quicklook(world, bagged, tmp_path):
    out = _map(world, bagged, tmp_path / "bagged.tif", quicklook=True)
    m = _read(out)
    assert m["count"] == 4 and m["dtype"] == "float32" and m["nodata"] == NODATA and m["layout"] == "COG"
    assert m["descriptions"] == ("wetland", "grassland", "wetland: sd", "grassland: sd")
    assert [t["kind"] for t in m["tags"]] == ["probability", "probability", "sd", "sd"]
    assert [b["kind"] for b in m["meta"]["bands"]] == ["probability", "probability", "sd", "sd"]
    unc = m["meta"]["uncertainty"]
    assert unc["available"] and unc["statistic"] == "sd" and unc["members"] == 25 and "bags" in unc["over"]
    prob, sd = m["values"][:2], m["values"][2:]
    valid = prob != NODATA
    assert valid.any() and not valid.all()  # the nodata strip
    assert ((sd == NODATA) == ~valid).all()  # the spread is nodata exactly where the probability is
    assert (sd[valid] >= 0).all() and (sd[valid] > 0).any() and (sd[valid] <= 0.5).all()
    # the probability bands are those of a map without spread bands, bit for bit
    plain = _read(_map(world, bagged, tmp_path / "plain.tif", uncertainty=False))
    assert plain["count"] == 2 and plain["values"].tobytes() == prob.tobytes()
    assert plain["meta"]["uncertainty"] == {"available": False, "reason": "not asked for (--no-uncertainty)"}
    # presence: the bundle's out-of-fold max-TSS thresholds
    pres = _read(presence_path(out))
    assert m["meta"]["presence"]["written"] and m["meta"]["presence"]["file"] == "bagged_presence.tif"
    assert m["meta"]["presence"]["thresholds"] == _stored(bagged) and m["meta"]["presence"]["rule"] == "max_tss"
    _check_presence(prob, pres, _stored(bagged), ["wetland", "grassland"])
    # quicklook: per species probability | sd | presence, each with a colour bar and a scale bar
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    png = out.with_name("bagged_quicklook.png")
    assert png.stat().st_size > 5000
    fig = writer.quicklook_figure(out)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split(" (")[0] for ax in panels] == [
        "wetland: probability", "wetland: sd", "wetland: presence",
        "grassland: probability", "grassland: sd", "grassland: presence"]
    assert all(ax.images and any(isinstance(a, AnchoredSizeBar) for a in ax.artists) for ax in panels)
    assert len(fig.axes) == 12  # one colour bar per panel
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_spatial_ensemble_map_spread_and_probability_equal_the_models(world, tmp_path):
    from ecoalign.mapping.blocks import compute_block
    from ecoalign.mapping.plan import plan_map
    from ecoalign.sdm.fitting import load_bundle

    bundle = _fit(world, tmp_path, {"name": "ensemble", "params": FAST_ENSEMBLE}, cv={"scheme": "random", "folds": 3})
    m = _read(_map(world, bundle, tmp_path / "ens.tif"))
    assert m["count"] == 4 and m["descriptions"][2:] == ("wetland: sd", "grassland: sd")
    assert "spatial-fold committee" in m["meta"]["uncertainty"]["over"]
    valid = m["values"][:2] != NODATA
    assert (m["values"][2:][valid] > 0).any()
    # the probability bands equal the model's predict_proba (the path without extra bands), bit for bit
    model = load_bundle(bundle)[0]
    plan = plan_map(world["encoder"], bundle, world["raster"], block_px=2)
    for block in plan.blocks:
        values = compute_block(plan, block, encoder=world["encoder"], model=model)
        window = m["values"][:2, block.row_off:block.row_off + block.height, block.col_off:block.col_off + block.width]
        assert values.tobytes() == np.ascontiguousarray(window).tobytes()


def test_single_model_map_has_no_spread_and_says_why(world, tmp_path, capsys):
    bundle = world["bundle"]  # logistic regression: no ensemble
    out = _map(world, bundle, tmp_path / "logistic.tif", threshold_rule="p10_presence")
    m = _read(out)
    assert m["count"] == 2 and m["descriptions"] == ("wetland", "grassland")
    assert m["meta"]["uncertainty"]["available"] is False and "not an ensemble" in m["meta"]["uncertainty"]["reason"]
    assert m["meta"]["presence"]["rule"] == "p10_presence"
    _check_presence(m["values"], _read(presence_path(out)), _stored(bundle, "p10_presence"), ["wetland", "grassland"])
    # a number picked by the user, from the command line
    cli_out = tmp_path / "fixed.tif"
    assert main(["map", "--encoder", "dofa", "--model", str(bundle), "--raster", str(world["raster"]), "--out",
                 str(cli_out), "--threshold-rule", "0.05", "--no-progress", "--no-quicklook"]) == 0
    fixed = _read(cli_out)
    assert fixed["meta"]["presence"]["rule"] == "fixed"
    _check_presence(fixed["values"], _read(presence_path(cli_out)), {"wetland": 0.05, "grassland": 0.05},
                    ["wetland", "grassland"])
    assert (_read(presence_path(cli_out))["values"] == 1).any()


# ------------------------------------------------------------------------------------------ --species

def test_species_filter_maps_only_the_species_named(world, bagged, tmp_path, capsys):
    full = _read(_map(world, bagged, tmp_path / "full.tif"))
    out = _map(world, bagged, tmp_path / "grass.tif", species=["grassland"])
    one = _read(out)
    assert one["descriptions"] == ("grassland", "grassland: sd") and one["meta"]["targets"] == ["grassland"]
    assert one["values"].tobytes() == full["values"][[1, 3]].tobytes()
    assert _read(presence_path(out))["values"].tobytes() == \
        _read(presence_path(tmp_path / "full.tif"))["values"][[1]].tobytes()
    swapped = _read(_map(world, bagged, tmp_path / "swapped.tif", species=["grassland", "wetland"]))
    assert swapped["descriptions"][:2] == ("grassland", "wetland")  # the order asked for
    assert swapped["values"].tobytes() == full["values"][[1, 0, 3, 2]].tobytes()
    bad = tmp_path / "bad.tif"
    args = ["map", "--encoder", "dofa", "--model", str(bagged), "--raster", str(world["raster"]), "--out", str(bad),
            "--species", "grassland", "Quercus ilex", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "bundle.json: --species: the bundle has no fitted species 'Quercus ilex'" in err
    assert "wetland, grassland" in err  # the known names are listed
    _nothing_written(bad)


# ------------------------------------------------------------------------------------------ thresholds missing

def test_a_bundle_without_stored_thresholds(world, tmp_path, capsys):
    bundle = tmp_path / "no_thresholds"
    shutil.copytree(world["bundle"], bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["thresholds"] = {s: math.nan for s in meta["species"]}  # as `cv: none` writes them
    meta["threshold_rules"] = {}
    seal(bundle, meta)  # re-hashed: an edited bundle.json is refused otherwise
    out = tmp_path / "m.tif"
    with pytest.raises(EcoalignInputError, match=r"no_thresholds/bundle.json: --threshold-rule: the bundle stores "
                                                 r"no max_tss threshold for species \['wetland', 'grassland'\]"):
        _map(world, bundle, out, threshold_rule="max_tss")
    _nothing_written(out)
    base = ["map", "--encoder", "dofa", "--model", str(bundle), "--raster", str(world["raster"]), "--out", str(out),
            "--no-progress"]
    assert main(base + ["--threshold-rule", "equal_sens_spec"]) == 2
    assert "--threshold-rule: the bundle stores no equal_sens_spec threshold" in capsys.readouterr().err
    _nothing_written(out)
    for rule, message in (("tss", ("unknown threshold rule 'tss'.*one of \\['max_tss', 'equal_sens_spec', "
                                   "'p10_presence'\\] or a number in \\[0, 1\\]")),
                          (1.5, "threshold 1.5 is outside \\[0, 1\\]")):
        with pytest.raises(EcoalignInputError, match=message):
            _map(world, bundle, out, threshold_rule=rule)
        _nothing_written(out)
    with pytest.raises(EcoalignInputError, match="--threshold-rule or --no-presence, not both"):
        _map(world, bundle, out, threshold_rule=0.5, presence=False)
    _nothing_written(out)
    # not asked for: the map is written without a presence map, and its metadata says why
    m = _read(_map(world, bundle, out))
    assert not presence_path(out).exists()
    assert m["meta"]["presence"]["written"] is False and "no max_tss threshold" in m["meta"]["presence"]["reason"]
    # a number needs no stored threshold
    fixed = tmp_path / "fixed.tif"
    _map(world, bundle, fixed, threshold_rule=0.5)
    assert presence_path(fixed).exists()
    fixed.unlink()  # a presence map left from another run is not replaced silently either
    with pytest.raises(EcoalignInputError, match="fixed_presence.tif: the presence map exists.*--overwrite"):
        _map(world, bundle, fixed, threshold_rule=0.5)
    _map(world, bundle, fixed, presence=False, overwrite=True)  # and is removed with the map it belonged to
    assert fixed.exists() and not presence_path(fixed).exists()


# ------------------------------------------------------------------------------------------ resume and Dask

class Killed(Exception):
    pass


def _interrupted(world, bundle, out, after: int, **kw) -> None:
    """A run that dies after ``after`` blocks are on disk (as a kill would leave it: ledger, partial files)."""
    real, calls = writer.PartialMap.write, []

    def dying(self, block, values):
        if len(calls) == after:
            raise Killed(f"killed after {after} blocks")
        calls.append(block)
        return real(self, block, values)

    writer.PartialMap.write = dying
    try:
        with pytest.raises(Killed):
            _map(world, bundle, out, block_px=1, **kw)
    finally:
        writer.PartialMap.write = real
    partial = out.with_name(out.name + ".partial")
    assert not out.exists() and len((partial / "ledger.jsonl").read_text().splitlines()) == after


def _counted(world, bundle, out, **kw) -> int:
    real, calls = run.predict_block, []

    def counting(plan, data, **k):
        calls.append(data.block)
        return real(plan, data, **k)

    run.predict_block = counting
    try:
        _map(world, bundle, out, block_px=1, overwrite=True, **kw)
    finally:
        run.predict_block = real
    return len(calls)


def test_resume_gives_the_same_files_and_other_options_start_afresh(world, bagged, tmp_path, caplog):
    import logging

    reference = _map(world, bagged, tmp_path / "ref" / "m.tif", block_px=1)  # same name: the metadata names files
    out = tmp_path / "m.tif"
    _interrupted(world, bagged, out, after=3)
    assert _counted(world, bagged, out) == 9 - 3  # 3 x 3 one-window blocks; finished ones are not recomputed
    assert out.read_bytes() == reference.read_bytes()
    assert presence_path(out).read_bytes() == presence_path(reference).read_bytes()
    # a partial made with other output options is not reused
    for options in ({"threshold_rule": "p10_presence"}, {"species": ["wetland"]}, {"uncertainty": False},
                    {"presence": False}):
        other = tmp_path / f"other_{next(iter(options))}.tif"
        _interrupted(world, bagged, other, after=2)
        writer_log = logging.getLogger("ecoalign.mapping.writer")  # the CLI's handler stops propagation
        writer_log.addHandler(caplog.handler)
        try:
            assert _counted(world, bagged, other, **options) == 9, options
        finally:
            writer_log.removeHandler(caplog.handler)
        assert "discarding a partial map made with other inputs" in caplog.text
        caplog.clear()


def test_dask_workers_write_the_single_process_files(world, bagged, tmp_path):
    """Bands, spread and presence: the same bytes from 2 Dask worker processes as from one process that is
    single-threaded from its start (as the workers are; see test_mapping_dask.py)."""
    import os

    single = tmp_path / "single.tif"
    small_map_world.map_in_single_threaded_process(world['bundle'].parent, bagged, single)
    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    parallel = _map(world, bagged, tmp_path / "dask.tif", workers=2)
    # the local cluster's worker settings do not leak into this process (its later subprocesses would run
    # single-threaded and give other last bits than this process)
    assert {k: os.environ.get(k) for k in threads} == threads
    assert _read(parallel)["count"] == 4
    small_map_world.assert_same_map(single, parallel)
    small_map_world.assert_same_map(presence_path(single), presence_path(parallel))


def test_abundance_forest_map_has_sd_bands_and_no_presence(world, tmp_path):
    """A random-forest abundance model: its trees' spread; no presence map (a threshold needs a probability)."""
    from ecoalign.sdm.fitting import fit_bundle
    from ecoalign.sdm.sites import build_sites
    from ecoalign.sdm.spec import spec_from_dict

    spec = spec_from_dict({
        "name": "landcover_abundance", "task": "abundance",
        "target": {"source": str(world["bundle"].parent / "landcover.csv"), "min_presences": 3},
        "features": {"embeddings": True}, "estimator": {"name": "random_forest", "params": {"n_estimators": 20}},
        "cv": {"scheme": "random", "folds": 2}, "metrics": ["rmse"], "bootstrap": 5})
    bundle = fit_bundle(spec, build_sites(spec, embeddings=world["embeddings"]), tmp_path / "bundle", n_jobs=1,
                        progress=False)
    out = tmp_path / "abundance.tif"
    with pytest.raises(EcoalignInputError, match="--threshold-rule: the model predicts abundances"):
        _map(world, bundle, out, threshold_rule="max_tss")
    _nothing_written(out)
    m = _read(_map(world, bundle, out, species=["grassland"]))
    assert m["descriptions"] == ("grassland", "grassland: sd") and [b["kind"] for b in m["meta"]["bands"]] == [
        "value", "sd"]
    assert m["meta"]["uncertainty"]["members"] == 20 and "trees" in m["meta"]["uncertainty"]["over"]
    assert m["meta"]["presence"]["written"] is False and not presence_path(out).exists()
    valid = m["values"][0] != NODATA
    assert (m["values"][1][valid] >= 0).all() and ((m["values"][1] == NODATA) == ~valid).all()


# ------------------------------------------------------------------------------------------ shared bundles

def test_maps_from_an_old_pickled_bundle_and_its_conversion_are_unchanged(world, bagged, tmp_path):
    """A format-2 bundle (model.joblib) maps as before (with a warning), and so does its converted copy."""
    import pickle

    from ecoalign.sdm.bundle_io import convert_bundle
    from ecoalign.sdm.fitting import load_bundle

    reference = _read(_map(world, bagged, tmp_path / "skops.tif"))
    old = Path(shutil.copytree(bagged, tmp_path / "old"))
    model, meta = load_bundle(old)
    (old / "model.joblib").write_bytes(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
    (old / "model.skops").unlink()
    meta = {k: v for k, v in meta.items() if k not in ("files", "content_sha256")}
    (old / "bundle.json").write_text(json.dumps({**meta, "format_version": 2}))
    for name in ("pickled", "converted"):
        if name == "converted":
            convert_bundle(old)
            assert not (old / "model.joblib").exists()
        m = _read(_map(world, old, tmp_path / f"{name}.tif"))
        np.testing.assert_array_equal(m["values"], reference["values"])
        assert m["descriptions"] == reference["descriptions"]
