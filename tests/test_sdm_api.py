"""verb = module = API function: ``ecoalign.sdm.fit.fit``, ``ecoalign.sdm.evaluate.evaluate`` and
``ecoalign.sdm.compare.compare`` give what ``ecoalign fit`` / ``evaluate`` / ``compare`` give for the same
arguments, from paths or from tables in memory. Small generated landscapes: every test runs in seconds."""
from __future__ import annotations

import io
import json
import warnings

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import yaml

from ecoalign.cli import main
from ecoalign.core.errors import EcoalignInputError
from ecoalign.data.plots import read_plots
from ecoalign.sdm.compare import compare
from ecoalign.sdm.evaluate import evaluate
from ecoalign.sdm.fit import Bundle, fit
from ecoalign.sdm.sites import read_sites
from ecoalign.sdm.species_model import (
    CONSTANT_COLUMNS_NOTE,
    SKIPPED_SPECIES_NOTE,
    TrainingRowsNote,
    notes_silenced,
)

CRS = "EPSG:32631"
LGB = {"name": "lightgbm", "params": {"n_estimators": 25, "num_leaves": 5, "min_child_samples": 5}}


def _env(x, y, rng):
    return pd.DataFrame({"temp": 25 - x / 1000 + rng.normal(0, 0.5, len(x)),
                         "rain": 500 + y / 20 + rng.normal(0, 20, len(x))})


def _suitability(env: pd.DataFrame, k: int) -> np.ndarray:
    return 1 / (1 + np.exp(-(env["temp"] - (13 + 4 * k)) * (1 if k % 2 else -1)))


def _survey(rng, n: int, prefix: str) -> pd.DataFrame:
    """Presence/absence sites in a 20 km square (metres): ids, x/y, covariates, species sp0..sp2."""
    x, y = rng.uniform(0, 20_000, n), rng.uniform(0, 20_000, n)
    table = pd.concat([pd.DataFrame({"plot_id": [f"{prefix}{i}" for i in range(n)], "x": x, "y": y}),
                       _env(x, y, rng)], axis=1)
    for k in range(3):
        table[f"sp{k}"] = (rng.random(n) < 0.9 * _suitability(table, k)).astype(int)
    return table


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Training and test survey CSVs, a presence/absence spec on them, presence-only records + background."""
    folder = tmp_path_factory.mktemp("sdm_api")
    rng = np.random.default_rng(7)
    train, test = _survey(rng, 260, "t"), _survey(rng, 160, "s")
    train.to_csv(folder / "train.csv", index=False)
    test.assign(not_a_species=(rng.random(len(test)) < 0.3).astype(int)).to_csv(folder / "test.csv", index=False)
    pa = {"name": "pa", "task": "presence_absence",
          "target": {"source": str(folder / "train.csv"), "id_column": "plot_id", "columns": ["sp0", "sp1", "sp2"],
                     "min_presences": 5},
          "features": {"embeddings": False, "covariates": ["temp", "rain"]}, "estimator": LGB,
          "cv": {"scheme": "spatial_block", "block_size_m": 5000, "folds": 3}, "metrics": ["auc", "tss"],
          "bootstrap": 10}
    (folder / "pa.yaml").write_text(yaml.safe_dump(pa))
    # presence-only: records biased to good sites, background over the whole square
    bx, by = rng.uniform(0, 20_000, 600), rng.uniform(0, 20_000, 600)
    pd.concat([pd.DataFrame({"x": bx, "y": by}), _env(bx, by, rng)], axis=1).to_csv(folder / "bg.csv", index=False)
    recs = []
    for k in range(3):
        cx, cy = rng.uniform(0, 20_000, 2000), rng.uniform(0, 20_000, 2000)
        cand = pd.concat([pd.DataFrame({"x": cx, "y": cy}), _env(cx, cy, rng)], axis=1)
        p = _suitability(cand, k).to_numpy()
        recs.append(cand.iloc[rng.choice(len(cand), 50, replace=False, p=p / p.sum())].assign(species=f"sp{k}"))
    pd.concat(recs, ignore_index=True).to_csv(folder / "records.csv", index=False)
    po = {"name": "po", "task": "presence_only", "target": {"species_column": "species", "min_presences": 5},
          "features": {"embeddings": False, "covariates": "all"}, "estimator": LGB,
          "cv": {"scheme": "random", "folds": 3}, "metrics": ["auc", "boyce"], "bootstrap": 10}
    (folder / "po.yaml").write_text(yaml.safe_dump(po))
    return folder


def _as_written(table: pd.DataFrame) -> pd.DataFrame:
    """A metrics table as the command's CSV holds it (an all-empty text column reads back as floats)."""
    return pd.read_csv(io.StringIO(table.to_csv(index=False)))


def _same_bundle(cli_dir, bundle: Bundle):
    """Everything in bundle.json but the wall time is the same, and so are the fitted model's scores."""
    cli = json.loads((cli_dir / "bundle.json").read_text())
    api = dict(bundle.meta)
    for meta in (cli, api):  # the wall time differs, and with it the hashes (the model file's too: zip times)
        for key in ("cv_seconds", "content_sha256", "files"):
            meta.pop(key)
    assert api == cli
    pd.testing.assert_frame_equal(bundle.cv_metrics, pd.read_csv(cli_dir / "cv_metrics.csv"))


def test_fit_from_python_equals_the_command_from_paths_and_from_tables(world, tmp_path, capsys):
    spec, train = world / "pa.yaml", world / "train.csv"
    assert main(["fit", str(spec), "--points", str(train), "--crs", CRS, "--out", str(tmp_path / "cli"),
                 "--n-jobs", "1"]) == 0
    printed = capsys.readouterr().out
    bundle = fit(str(spec), points=train, crs=CRS, out=tmp_path / "api", n_jobs=1)
    assert isinstance(bundle, Bundle) and bundle.path == tmp_path / "api"
    _same_bundle(tmp_path / "cli", bundle)
    assert bundle.describe().replace(str(tmp_path / "api"), str(tmp_path / "cli")) in printed
    assert bundle.species == ["sp0", "sp1", "sp2"] and bundle.features == ["temp", "rain"]
    assert set(bundle.summary) == {"micro_auc", "macro_auc", "micro_tss", "macro_tss"}
    assert bundle.model.predict_proba(pd.read_csv(train)[bundle.features]).shape == (260, 3)
    # the same sites in memory: a DataFrame with x/y (+ crs) and a GeoDataFrame
    table = pd.read_csv(train)
    _same_bundle(tmp_path / "cli", fit(spec, points=table, crs=CRS, out=tmp_path / "mem", n_jobs=1))
    gdf = gpd.GeoDataFrame(table, geometry=gpd.points_from_xy(table.x, table.y), crs=CRS)
    _same_bundle(tmp_path / "cli", fit(spec, points=gdf, out=tmp_path / "geo", n_jobs=1))
    with pytest.raises(EcoalignInputError, match="a model bundle already exists here"):
        fit(spec, points=train, crs=CRS, out=tmp_path / "api", n_jobs=1)
    assert main(["fit", str(spec), "--points", str(train), "--crs", CRS, "--out", str(tmp_path / "api")]) == 2


def test_evaluate_from_python_equals_the_command(world, tmp_path, capsys):
    spec, test = world / "pa.yaml", world / "test.csv"
    bundle = fit(spec, points=world / "train.csv", crs=CRS, out=tmp_path / "b", n_jobs=1)
    assert main(["evaluate", str(bundle.path), "--points", str(test), "--crs", CRS, "--out",
                 str(tmp_path / "cli.csv")]) == 0
    printed = capsys.readouterr().out
    assert "not_a_species" in printed and "macro" in printed  # the unknown test column is reported, not scored
    cli = pd.read_csv(tmp_path / "cli.csv")
    api = evaluate(tmp_path / "b", points=test, crs=CRS, out=tmp_path / "api.csv")
    assert api.attrs["not_evaluated"] == ["not_a_species"]
    assert set(api["species"]) == {"sp0", "sp1", "sp2", "micro", "macro"}
    pd.testing.assert_frame_equal(_as_written(api), cli)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "api.csv"), cli)
    # a loaded bundle, the sites and the targets as tables in memory, --targets apart from the sites
    table = pd.read_csv(test)
    mem = evaluate(bundle, targets=table, points=table.drop(columns=["sp0", "sp1", "sp2"]), crs=CRS)
    pd.testing.assert_frame_equal(_as_written(mem), cli)
    assert main(["evaluate", str(bundle.path), "--points", str(test), "--targets", str(test), "--crs", CRS,
                 "--out", str(tmp_path / "cli2.csv")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cli2.csv"), cli)


def test_evaluate_errors_name_the_table_and_the_columns(world, tmp_path):
    bundle = fit(world / "pa.yaml", points=world / "train.csv", crs=CRS, out=tmp_path / "b", n_jobs=1)
    with pytest.raises(EcoalignInputError, match="no test targets"):
        evaluate(bundle, embeddings=None)
    odd = pd.read_csv(world / "test.csv").rename(columns={"sp0": "a", "sp1": "b", "sp2": "c"})
    odd.to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(EcoalignInputError) as err:
        evaluate(bundle, points=tmp_path / "odd.csv", crs=CRS)
    msg = str(err.value)
    assert "odd.csv" in msg and "none of the test table's columns is a species of the model" in msg
    assert "'sp0'" in msg
    with pytest.raises(EcoalignInputError) as err:
        evaluate(bundle, points=world / "test.csv", crs=CRS, id_column="site")
    assert "test.csv" in str(err.value) and "site id column 'site' not found" in str(err.value)
    with pytest.raises(EcoalignInputError, match="test table not found"):
        evaluate(bundle, targets=tmp_path / "nope.csv", points=world / "test.csv", crs=CRS)
    with pytest.raises(EcoalignInputError, match="not a model bundle"):
        evaluate(tmp_path, points=world / "test.csv", crs=CRS)


def test_presence_only_fit_and_evaluate_from_python_equal_the_command(world, tmp_path):
    spec, records, bg = world / "po.yaml", world / "records.csv", world / "bg.csv"
    assert main(["fit", str(spec), "--points", str(records), "--background", str(bg), "--crs", CRS,
                 "--out", str(tmp_path / "cli"), "--n-jobs", "1"]) == 0
    bundle = fit(spec, points=records, background=bg, crs=CRS, out=tmp_path / "api", n_jobs=1)
    _same_bundle(tmp_path / "cli", bundle)
    assert bundle.meta["n_sites"] == 150 + 600 and bundle.features == ["temp", "rain"]
    # in memory: records repeat no id and need none
    mem = fit(spec, points=pd.read_csv(records), background=pd.read_csv(bg), crs=CRS, out=tmp_path / "mem", n_jobs=1)
    _same_bundle(tmp_path / "cli", mem)
    assert main(["evaluate", str(tmp_path / "cli"), "--points", str(world / "test.csv"), "--crs", CRS,
                 "--out", str(tmp_path / "e.csv")]) == 0
    api = evaluate(bundle, points=world / "test.csv", crs=CRS)
    pd.testing.assert_frame_equal(_as_written(api), pd.read_csv(tmp_path / "e.csv"))
    assert set(api["metric"]) == {"auc", "boyce"}


def test_compare_from_python_equals_the_command(world, tmp_path, capsys):
    train = pd.read_csv(world / "train.csv")
    rng = np.random.default_rng(0)
    env = train[["temp", "rain"]].to_numpy()
    good = (env - env.mean(0)) / env.std(0) @ rng.normal(size=(2, 6)) + rng.normal(0, 0.1, (len(train), 6))
    paths = {}
    for name, emb in (("env", good), ("noise", rng.normal(size=good.shape))):
        g = gpd.GeoDataFrame(train[["plot_id"]], geometry=gpd.points_from_xy(train.x, train.y), crs=CRS)
        for j in range(emb.shape[1]):
            g[f"emb_{j:03d}"] = emb[:, j]
        paths[name] = tmp_path / f"{name}.parquet"
        g.to_parquet(paths[name])
    raw = yaml.safe_load((world / "pa.yaml").read_text())
    raw["features"] = {"embeddings": True}
    (tmp_path / "emb.yaml").write_text(yaml.safe_dump(raw))
    spec = tmp_path / "emb.yaml"
    assert main(["compare", str(spec), "--encoder", f"env={paths['env']}", "--encoder", f"noise={paths['noise']}",
                 "--out", str(tmp_path / "cli"), "--n-jobs", "1"]) == 0
    assert "| env | macro |" in capsys.readouterr().out
    api = compare(spec, paths, out=tmp_path / "api", n_jobs=1)
    cli = pd.read_csv(tmp_path / "cli" / "comparison.csv")
    pd.testing.assert_frame_equal(_as_written(api), cli)
    assert (tmp_path / "api" / "comparison.md").read_text() == (tmp_path / "cli" / "comparison.md").read_text()
    macro = api.query("species == 'macro' and metric == 'auc'").set_index("encoder")["value"]
    assert macro["env"] > macro["noise"]
    assert main(["compare", str(spec), "--encoder", "env", "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(EcoalignInputError, match="no encoders to compare"):
        compare(spec, {}, out=tmp_path / "y")


def test_read_sites_takes_paths_or_tables_and_counts_sites_without_coordinates(world, tmp_path):
    table = pd.read_csv(world / "train.csv")
    table.loc[[3, 5], "x"] = np.nan
    table.to_csv(tmp_path / "gaps.csv", index=False)
    sites = read_sites(world / "pa.yaml", points=tmp_path / "gaps.csv", crs=CRS)
    assert sites.dropped["no_coordinates"] == ["t3", "t5"] and len(sites.ids) == 258
    mem = read_sites(world / "pa.yaml", points=table, crs=CRS)
    assert list(mem.ids) == list(sites.ids) and mem.dropped == sites.dropped
    covs = table[["plot_id", "temp", "rain"]]
    with_cov = read_sites(world / "pa.yaml", points=table.drop(columns=["temp", "rain"]), covariates=covs, crs=CRS)
    pd.testing.assert_frame_equal(with_cov.X, mem.X)
    with pytest.raises(EcoalignInputError) as err:
        read_sites(world / "pa.yaml", points=table)
    assert "a CSV of plots needs its CRS" in str(err.value) and "--crs" in str(err.value)
    with pytest.raises(EcoalignInputError, match="covariate table not found"):
        read_sites(world / "pa.yaml", points=table, covariates=tmp_path / "nope.csv", crs=CRS)


def test_read_plots_records_mode_allows_repeated_ids_and_lists_rows_without_coordinates(tmp_path):
    path = tmp_path / "records.csv"
    path.write_text("species;x;y\na;387050;4173450\na;387050;4173450\nb;;4173400\n")  # semicolons, a blank x
    recs = read_plots(path, crs="EPSG:26912", unique_ids=False)
    assert list(recs.index) == [0, 1] and recs.attrs["without_coordinates"] == ["row 4"]
    assert list(recs["species"]) == ["a", "a"] and recs.crs == "EPSG:26912"
    with pytest.raises(EcoalignInputError) as err:
        read_plots(path, unique_ids=False)
    assert "records.csv" in str(err.value) and "a CSV of points needs its CRS" in str(err.value)
    path.write_text("species,x,y\na,387050,4173450\nb,387O50,4173400\n")
    with pytest.raises(EcoalignInputError) as err:
        read_plots(path, crs="EPSG:26912", unique_ids=False)
    assert "coordinate '387O50' is not a number" in str(err.value) and "row 3, column 'x'" in str(err.value)
    frame = pd.DataFrame({"plot_id": ["p1", "p1"], "east": [1.0, 2.0], "north": [3.0, 4.0]})
    with pytest.raises(EcoalignInputError) as err:
        read_plots(frame, crs="EPSG:26912")
    assert "<points table in memory>" in str(err.value) and "plot id 'p1' appears more than once" in str(err.value)
    assert len(read_plots(frame, crs="EPSG:26912", unique_ids=False)) == 2


def test_only_the_fold_notes_are_silenced():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with notes_silenced(SKIPPED_SPECIES_NOTE, CONSTANT_COLUMNS_NOTE):
            warnings.warn("skipped 1 of 3 species: x (1 presences < min 2); see skipped_species_", TrainingRowsNote)
            warnings.warn("dropping 2 constant feature column(s): ['a', 'b']", TrainingRowsNote)
            warnings.warn("skipped 1 of 3 species: a user's own warning", UserWarning)  # not a model note
            warnings.warn("categorical column 'soil': unseen levels", UserWarning)
        with notes_silenced(CONSTANT_COLUMNS_NOTE):
            warnings.warn("skipped 1 of 3 species: x", TrainingRowsNote)
    assert [str(w.message) for w in caught] == ["skipped 1 of 3 species: a user's own warning",
                                                "categorical column 'soil': unseen levels",
                                                "skipped 1 of 3 species: x"]
    assert issubclass(TrainingRowsNote, UserWarning)  # pytest.warns(UserWarning) and user filters still see them
