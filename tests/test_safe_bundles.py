"""Species-model bundles that are safe to share: no code runs when a bundle is opened (issue "Species-model
bundles that are safe to share"). Small generated tables: every fit takes a second or two."""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest

from ecoalign.cli import main
from ecoalign.core.errors import EcoalignInputError
from ecoalign.sdm import bundle_io
from ecoalign.sdm.evaluate import evaluate
from ecoalign.sdm.fit import Bundle, fit
from ecoalign.sdm.fitting import load_bundle
from ecoalign.sdm.spec import spec_from_dict

CRS = "EPSG:32631"
SMALL = {
    "lightgbm": {"n_estimators": 15, "num_leaves": 5, "min_child_samples": 5},
    "random_forest": {"n_estimators": 15},
    "logistic": {},
    "ridge": {},
    "rf_down": {"n_estimators": 15},
    "lightgbm_down": {"n_estimators": 3},
    "maxent": {"feature_types": ["linear", "quadratic", "hinge"]},
    "deep_maxent": {"epochs": 30, "hidden": [16]},
    "ensemble": {"members": ["rf_down", "maxent", "deep_maxent"],
                 "member_params": {"rf_down": {"n_estimators": 10}, "deep_maxent": {"epochs": 20, "hidden": [8]}}},
}
PRESENCE_ONLY = ("rf_down", "lightgbm_down", "maxent", "deep_maxent", "ensemble")


def _survey(rng, n: int) -> pd.DataFrame:
    x, y = rng.uniform(0, 20_000, n), rng.uniform(0, 20_000, n)
    t = pd.DataFrame({"plot_id": [f"p{i}" for i in range(n)], "x": x, "y": y,
                      "temp": 25 - x / 1000 + rng.normal(0, 0.5, n), "rain": 500 + y / 20 + rng.normal(0, 20, n),
                      "soil": rng.choice(["a", "b", "c"], n)})
    for k in range(2):
        p = 1 / (1 + np.exp(-(t["temp"] - (15 + 4 * k)) * (1 if k else -1)))
        t[f"sp{k}"] = (rng.random(n) < 0.9 * p).astype(int)
        t[f"n{k}"] = rng.poisson(3 * p)
    return t


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("safe_bundles")
    rng = np.random.default_rng(11)
    _survey(rng, 240).to_csv(folder / "sites.csv", index=False)
    bg = _survey(rng, 300)[["x", "y", "temp", "rain"]]
    bg.to_csv(folder / "bg.csv", index=False)
    recs = []
    for k in range(2):
        cand = _survey(rng, 600)
        p = 1 / (1 + np.exp(-(cand["temp"] - (15 + 4 * k)) * (1 if k else -1))).to_numpy()
        recs.append(cand.iloc[rng.choice(len(cand), 40, replace=False, p=p / p.sum())][["x", "y", "temp", "rain"]]
                    .assign(species=f"sp{k}"))
    pd.concat(recs, ignore_index=True).to_csv(folder / "records.csv", index=False)
    return folder


def _spec(world, estimator: str):
    params = dict(SMALL[estimator])
    if estimator in PRESENCE_ONLY:
        raw = {"name": f"po_{estimator}", "task": "presence_only",
               "target": {"species_column": "species", "min_presences": 5},
               "features": {"embeddings": False, "covariates": ["temp", "rain"]},
               "cv": {"scheme": "spatial_block", "block_size_m": 5000, "folds": 3}, "metrics": ["auc"]}
    elif estimator == "ridge":
        raw = {"name": "ab", "task": "abundance",
               "target": {"source": str(world / "sites.csv"), "id_column": "plot_id", "columns": ["n0", "n1"],
                          "min_presences": 5},
               "features": {"embeddings": False, "covariates": ["temp", "rain"]},
               "cv": {"scheme": "random", "folds": 3}, "metrics": ["mae"]}
    else:
        raw = {"name": f"pa_{estimator}", "task": "presence_absence",
               "target": {"source": str(world / "sites.csv"), "id_column": "plot_id", "columns": ["sp0", "sp1"],
                          "min_presences": 5},
               "features": {"embeddings": False, "covariates": ["temp", "rain", "soil"], "categorical": ["soil"]},
               "cv": {"scheme": "random", "folds": 3}, "metrics": ["auc"]}
    raw["estimator"] = {"name": estimator, "params": params}
    raw["bootstrap"] = 5
    return spec_from_dict(raw, f"<{estimator}>")


def _fit(world, estimator: str, out):
    spec = _spec(world, estimator)
    if estimator in PRESENCE_ONLY:
        return fit(spec, points=world / "records.csv", background=world / "bg.csv", crs=CRS, out=out, n_jobs=1)
    return fit(spec, points=world / "sites.csv", crs=CRS, out=out, n_jobs=1)


def _scores(model, X: pd.DataFrame, task: str) -> np.ndarray:
    return np.asarray(model.predict(X) if task == "abundance" else model.predict_proba(X))


def _features(world, bundle: Bundle) -> pd.DataFrame:
    return pd.read_csv(world / "sites.csv")[bundle.features]


@pytest.fixture(scope="module")
def lgb_bundle(world, tmp_path_factory):
    """One fitted bundle (LightGBM, presence/absence) that the tests copy and tamper with."""
    return _fit(world, "lightgbm", tmp_path_factory.mktemp("lgb") / "bundle")


def _copy(bundle: Bundle, tmp_path, name="copy"):
    return shutil.copytree(bundle.path, tmp_path / name)


def _make_legacy(path) -> None:
    """Turn a current bundle into one written by the format-2 ``fit`` (a pickle in model.joblib)."""
    model, meta = load_bundle(path)
    with open(path / "model.joblib", "wb") as fh:
        pickle.dump(model, fh, protocol=pickle.HIGHEST_PROTOCOL)
    (path / "model.skops").unlink()
    meta = {k: v for k, v in meta.items() if k not in ("files", "content_sha256")}
    meta["format_version"] = 2
    (path / "bundle.json").write_text(json.dumps(meta))


class _WritesAFile:
    """A pickle payload: unpickling it would create ``target``."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return exec, (f"open({self.target!r}, 'w').write('pwned')",)


def _crafted_legacy(bundle: Bundle, tmp_path):
    path = _copy(bundle, tmp_path, "crafted")
    _make_legacy(path)
    marker = tmp_path / "pwned.txt"
    (path / "model.joblib").write_bytes(pickle.dumps(_WritesAFile(marker)))
    return path, marker


def _crafted_current(bundle: Bundle, tmp_path):
    """A current-format bundle whose estimator file is a pickle, with hashes re-sealed (the author lies)."""
    path = _copy(bundle, tmp_path, "crafted_new")
    marker = tmp_path / "pwned_new.txt"
    (path / "model.skops").write_bytes(pickle.dumps(_WritesAFile(marker)))
    bundle_io.seal(path, json.loads((path / "bundle.json").read_text()))
    return path, marker


class _Log(logging.Handler):
    """The ``ecoalign`` log as text (the command's logging set-up stops it reaching pytest's caplog)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __enter__(self):
        self.logger = logging.getLogger("ecoalign")
        self.level = self.logger.level
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


# ------------------------------------------------------------------------------------------- the format
def test_bundle_files_version_and_hash(lgb_bundle):
    names = {p.name for p in lgb_bundle.path.iterdir()}
    assert names == {"bundle.json", "model.skops", "cv_metrics.csv", "reference_scores.npy"}
    meta = lgb_bundle.meta
    assert meta["format_version"] == bundle_io.FORMAT_VERSION
    assert set(meta["files"]) == names - {"bundle.json"}
    assert meta["content_sha256"] == bundle_io.content_hash(meta) == lgb_bundle.sha256
    # the estimator file is a zip of JSON and .npy arrays: no pickle opcodes, no GLOBAL to import
    import zipfile

    with zipfile.ZipFile(lgb_bundle.path / "model.skops") as z:
        assert "schema.json" in z.namelist()


@pytest.mark.parametrize("estimator", list(SMALL))
def test_reloaded_bundle_predicts_identically(world, tmp_path, estimator):
    bundle = _fit(world, estimator, tmp_path / "b")
    X = _features(world, bundle)
    task = "abundance" if estimator == "ridge" else "presence"
    before = _scores(bundle.model, X, task)
    again = Bundle.load(tmp_path / "b")
    assert np.array_equal(before, _scores(again.model, X, task))
    if estimator == "ensemble":
        assert np.array_equal(bundle.model[-1].predict_spread(X), again.model[-1].predict_spread(X))
    # and the old pickle format converts to the same predictions
    legacy = _copy(again, tmp_path, "legacy")
    _make_legacy(legacy)
    bundle_io.convert_bundle(legacy)
    converted = Bundle.load(legacy)
    assert converted.meta["format_version"] == bundle_io.FORMAT_VERSION and not (legacy / "model.joblib").exists()
    assert np.array_equal(before, _scores(converted.model, X, task))


# ------------------------------------------------------------------------------ refused, with nothing run
def test_crafted_pickle_is_refused_by_every_opener(lgb_bundle, world, tmp_path, capsys):
    from ecoalign.mapping.plan import plan_map

    path, marker = _crafted_legacy(lgb_bundle, tmp_path)
    openers = [lambda: load_bundle(path), lambda: Bundle.load(path),
               lambda: evaluate(path, points=world / "sites.csv", crs=CRS),
               lambda: plan_map(object(), path, world / "no_raster.tif"),
               lambda: bundle_io.convert_bundle(path)]
    for opener in openers:
        with pytest.raises(EcoalignInputError, match=r"builtins\.exec") as exc:
            opener()
        assert "model.joblib" in str(exc.value) and "not unpickled" in str(exc.value)
        assert not marker.exists()
    assert main(["evaluate", str(path), "--points", str(world / "sites.csv"), "--crs", CRS]) == 2
    assert main(["convert-bundle", str(path)]) == 2
    assert "builtins.exec" in capsys.readouterr().err
    assert not marker.exists() and (path / "model.joblib").exists()  # a refused conversion changes nothing

    path, marker = _crafted_current(lgb_bundle, tmp_path)
    for opener in (lambda: load_bundle(path), lambda: Bundle.load(path),
                   lambda: evaluate(path, points=world / "sites.csv", crs=CRS),
                   lambda: plan_map(object(), path, world / "no_raster.tif")):
        with pytest.raises(EcoalignInputError, match="estimator file cannot be read"):
            opener()
        assert not marker.exists()


def test_untrusted_type_is_refused_by_name_unless_trusted(lgb_bundle, world, tmp_path, capsys):
    import operator

    import skops.io as sio

    path = _copy(lgb_bundle, tmp_path)
    model = load_bundle(path)[0]
    model[-1].extra_ = operator.neg  # a type outside ecoalign's list
    sio.dump(model, path / "model.skops")
    bundle_io.seal(path, json.loads((path / "bundle.json").read_text()))
    with pytest.raises(EcoalignInputError, match=r"not trusted: \['_operator.neg'\]") as exc:
        Bundle.load(path)
    assert "--trust _operator.neg" in str(exc.value) and "model.skops" in str(exc.value)
    assert Bundle.load(path, trusted=["_operator.neg"]).model[-1].extra_ is operator.neg
    args = ["evaluate", str(path), "--points", str(world / "sites.csv"), "--crs", CRS]
    assert main(args) == 2
    assert main(args + ["--trust", "_operator.neg"]) == 0
    with pytest.raises(EcoalignInputError, match="_operator.neg"):
        bundle_io.save_model(tmp_path, model)  # fit never writes what it could not read back


def test_truncated_estimator_file_is_refused(lgb_bundle, tmp_path):
    path = _copy(lgb_bundle, tmp_path)
    data = (path / "model.skops").read_bytes()
    (path / "model.skops").write_bytes(data[: len(data) // 2])
    with pytest.raises(EcoalignInputError, match=r"edited or truncated") as exc:
        Bundle.load(path)
    assert "model.skops" in str(exc.value) and lgb_bundle.meta["files"]["model.skops"] in str(exc.value)
    bundle_io.seal(path, json.loads((path / "bundle.json").read_text()))  # even with matching hashes
    with pytest.raises(EcoalignInputError, match="estimator file cannot be read"):
        Bundle.load(path)


def test_edited_files_are_refused(lgb_bundle, tmp_path):
    path = _copy(lgb_bundle, tmp_path, "csv")
    with open(path / "cv_metrics.csv", "a") as fh:
        fh.write("macro,auc,1.0,1.0,1.0\n")
    with pytest.raises(EcoalignInputError, match="edited or truncated") as exc:
        Bundle.load(path)
    assert "cv_metrics.csv" in str(exc.value)
    path = _copy(lgb_bundle, tmp_path, "json")
    meta = json.loads((path / "bundle.json").read_text())
    meta["thresholds"] = {s: 0.01 for s in meta["thresholds"]}
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(EcoalignInputError, match="bundle.json was edited"):
        load_bundle(path)
    path = _copy(lgb_bundle, tmp_path, "gone")
    (path / "cv_metrics.csv").unlink()
    with pytest.raises(EcoalignInputError, match="missing"):
        load_bundle(path)


def test_newer_format_is_refused(lgb_bundle, world, tmp_path):
    from ecoalign.sdm.fitting import read_bundle_meta

    path = _copy(lgb_bundle, tmp_path)
    meta = json.loads((path / "bundle.json").read_text())
    meta["format_version"] = bundle_io.FORMAT_VERSION + 1
    (path / "bundle.json").write_text(json.dumps(meta))
    for opener in (lambda: load_bundle(path), lambda: read_bundle_meta(path),
                   lambda: evaluate(path, points=world / "sites.csv", crs=CRS)):
        with pytest.raises(EcoalignInputError, match=f"bundle format {bundle_io.FORMAT_VERSION + 1} is newer"):
            opener()


# ------------------------------------------------------------------------------------ old bundles
def test_old_bundle_loads_with_a_warning_and_converts(lgb_bundle, world, tmp_path, capsys):
    path = _copy(lgb_bundle, tmp_path)
    _make_legacy(path)
    X = _features(world, lgb_bundle)
    with _Log() as log:
        old = Bundle.load(path)
    assert f"ecoalign convert-bundle {path}" in log.text and "pickle" in log.text
    assert np.array_equal(old.model.predict_proba(X), lgb_bundle.model.predict_proba(X))
    assert main(["convert-bundle", str(path)]) == 0
    digest = capsys.readouterr().out.split()[0]
    with _Log() as log:
        new = Bundle.load(path)
    assert "pickle" not in log.text and f"sha256 {digest}" in log.text
    assert new.sha256 == digest and "model.joblib" not in os.listdir(path)
    assert np.array_equal(new.model.predict_proba(X), lgb_bundle.model.predict_proba(X))
    assert main(["convert-bundle", str(path)]) == 0  # already converted: nothing to do


def test_evaluate_logs_the_bundle_hash(lgb_bundle, world):
    with _Log() as log:
        evaluate(lgb_bundle.path, points=world / "sites.csv", crs=CRS)
    assert f"sha256 {lgb_bundle.meta['content_sha256']}" in log.text


def test_pickle_globals_reads_stack_global_without_unpickling(tmp_path):
    f = tmp_path / "p.pkl"
    f.write_bytes(pickle.dumps(_WritesAFile(tmp_path / "x"), protocol=4))
    assert "builtins.exec" in bundle_io.pickle_globals(f)
    f.write_bytes(pickle.dumps(_WritesAFile(tmp_path / "x"), protocol=0))
    assert "__builtin__.exec" in bundle_io.pickle_globals(f)
    assert not (tmp_path / "x").exists()


def test_stack_global_names_what_it_really_consumes(tmp_path):
    """Strings pushed and popped again cannot hide the global that STACK_GLOBAL imports."""
    import pickletools

    def s(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    body = (b"\x80\x04" + s("builtins") + s("exec") + s("numpy") + s("ndarray") + b"00" + b"\x93.")
    with open(os.devnull, "w") as devnull:
        pickletools.dis(body, out=devnull)  # a valid pickle
    f = tmp_path / "hidden.pkl"
    f.write_bytes(body)
    assert bundle_io.pickle_globals(f) == ["builtins.exec"]
    body = b"\x80\x04" + s("builtins") + b"\x94" + s("exec") + b"\x94" + b"h\x00h\x01\x93."  # through the memo
    f.write_bytes(body)
    assert bundle_io.pickle_globals(f) == ["builtins.exec"]
    f.write_bytes(b"\x80\x04N" + s("exec") + b"\x93.")  # a non-string operand
    assert bundle_io.pickle_globals(f) == ["?"]
    with pytest.raises(EcoalignInputError, match=r"\?"):
        bundle_io.check_pickle(f)
