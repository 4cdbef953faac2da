"""The species-model bundle format: files that load without running code, a format version and a content hash.

A bundle folder (``ecoalign fit --out``) holds

- ``bundle.json``: spec, features, thresholds, encoder identity, metrics (plain JSON), ``format_version``,
  ``files`` (sha256 of every other file of the bundle) and ``content_sha256`` (sha256 over ``bundle.json``
  itself without that field, ``files`` included: one hash names the whole bundle);
- ``model.skops``: the fitted pipeline through ``skops.io`` (a zip of JSON and ``.npy`` arrays read with
  ``allow_pickle=False``; LightGBM boosters as their text model, DeepMaxent's weights as numpy arrays).
  Loading builds only the types of :data:`TRUSTED_TYPES` (and scikit-learn/numpy types skops itself
  trusts); any other type is refused by name unless the caller trusts it (``trusted=[...]``, ``--trust``);
- ``cv_metrics.csv``, ``reference_scores.npy``: data.

Bundles of format 2 and older hold a pickle (``model.joblib``). They still load, with a warning, after their
pickle's GLOBAL / STACK_GLOBAL / INST opcodes were read (``pickletools.genops``, without unpickling) and found
to name only allowed types; :func:`convert_bundle` (``ecoalign convert-bundle DIR``) rewrites them in this format.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pickletools
from collections.abc import Iterable
from pathlib import Path

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import atomic_path, sha256_file, write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
MODEL_FILE = "model.skops"
LEGACY_MODEL_FILE = "model.joblib"
META_FILE = "bundle.json"

# The types a bundle's estimator file may build, beyond those skops trusts by default (scikit-learn estimators,
# numpy arrays and dtypes, builtins). Kept by the project: a new species estimator adds its types here.
TRUSTED_TYPES: tuple[str, ...] = (
    "builtins.slice",
    "collections.OrderedDict",
    "ecoalign.sdm.categorical.CategoricalEncoder",
    "ecoalign.sdm.deep_maxent.DeepMaxent",
    "ecoalign.sdm.downsampled.DownsampledBagging",
    "ecoalign.sdm.ensemble.SpatialEnsemble",
    "ecoalign.sdm.estimators.MultiSpeciesModel",
    "elapid.features.CategoricalTransformer",
    "elapid.features.HingeTransformer",
    "elapid.features.LinearTransformer",
    "elapid.features.MaxentFeatureTransformer",
    "elapid.features.ProductTransformer",
    "elapid.features.QuadraticTransformer",
    "elapid.features.ThresholdTransformer",
    "elapid.models.MaxentModel",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
    "lightgbm.sklearn.LGBMRegressor",
    "numpy.expm1",
    "numpy.log1p",
    "sklearn.tree._tree.Tree",
)

# What a scikit-learn / numpy pickle needs to rebuild arrays and objects (legacy bundles only).
_PICKLE_MACHINERY = (
    "builtins.bytearray", "builtins.complex", "builtins.frozenset", "builtins.set", "builtins.slice",
    "builtins.object", "copyreg._reconstructor", "collections.OrderedDict", "collections.defaultdict",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.ndarray", "numpy.dtype",
    "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__bit_generator_ctor",
    "numpy.random._pickle.__generator_ctor", "numpy.random._mt19937.MT19937", "numpy.random._pcg64.PCG64",
    "numpy.random.mtrand.RandomState", "numpy.random._generator.Generator",
    "numpy.random.bit_generator.SeedSequence", "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    "joblib.numpy_pickle.NumpyArrayWrapper", "joblib.numpy_pickle.NDArrayWrapper",
    "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",
    "sklearn.tree._tree.Tree", "numpy.log1p", "numpy.expm1",
)


def _skops_default_names() -> set[str]:
    """Type names skops.io trusts by itself (scikit-learn estimators and internals, numpy, builtins)."""
    try:
        from skops.io import _trusted_types as t
    except ImportError:  # pragma: no cover - layout of a future skops
        return set()
    names: set[str] = set()
    for attr in ("SKLEARN_ESTIMATOR_TYPE_NAMES", "SKLEARN_INTERNAL_TYPE_NAMES", "PRIMITIVE_TYPE_NAMES",
                 "CONTAINER_TYPE_NAMES", "NUMPY_DTYPE_TYPE_NAMES", "NUMPY_UFUNC_TYPE_NAMES",
                 "NUMPY_RANDOM_BIT_GENERATOR_TYPE_NAMES"):
        names.update(str(n) for n in getattr(t, attr, ()))
    return names


def allowed_types(trusted: Iterable[str] = ()) -> set[str]:
    """Every type name a bundle may build: the project's list, skops's defaults and ``trusted``."""
    return set(TRUSTED_TYPES) | _skops_default_names() | {str(t) for t in trusted or ()}


def _trust_hint(names: list[str]) -> str:
    return ("a bundle with only ecoalign's estimator types; if you trust its author: "
            + " ".join(f"--trust {n}" for n in names[:5]) + " (Python: trusted=[...])")


# ----------------------------------------------------------------------------------------------- hashing
def content_hash(meta: dict) -> str:
    """sha256 of ``bundle.json`` without its ``content_sha256`` (canonical JSON: sorted keys, no spaces)."""
    body = {k: v for k, v in meta.items() if k != "content_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def bundle_hash(path: str | Path, meta: dict | None = None) -> str:
    """The hash that names a bundle: its ``content_sha256``, or for an older bundle the sha256 of its pickle."""
    meta = meta if meta is not None else read_meta(path)
    if meta.get("content_sha256"):
        return str(meta["content_sha256"])
    return sha256_file(Path(path) / LEGACY_MODEL_FILE)


def seal(path: str | Path, meta: dict) -> dict:
    """``meta`` with ``format_version``, the sha256 of every other file of the bundle and the content hash,
    written to ``bundle.json``."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name != META_FILE and not p.name.startswith("."))
    meta = {**meta, "format_version": FORMAT_VERSION, "files": {p.name: sha256_file(p) for p in files}}
    meta.pop("content_sha256", None)
    meta["content_sha256"] = content_hash(meta)
    write_json(path / META_FILE, meta)
    return meta


def read_meta(path: str | Path) -> dict:
    """A bundle's ``bundle.json``, without loading its model (the format version is checked)."""
    meta_path = Path(path) / META_FILE
    if not meta_path.exists():
        raise EcoalignInputError("not a model bundle (no bundle.json)", path=path,
                                 expected="an `ecoalign fit --out` directory")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EcoalignInputError(f"bundle.json is not valid JSON ({exc})", path=meta_path,
                                 expected="the bundle.json written by `ecoalign fit`") from None
    version = meta.get("format_version", 1) if isinstance(meta, dict) else None
    if not isinstance(version, int):
        raise EcoalignInputError(f"bundle.json has no integer format_version ({version!r})", path=meta_path,
                                 expected="the bundle.json written by `ecoalign fit`")
    if version > FORMAT_VERSION:
        raise EcoalignInputError(f"bundle format {version} is newer than this ecoalign reads (format "
                                 f"{FORMAT_VERSION})", path=meta_path,
                                 expected="a newer ecoalign (pip install -U ecoalign), or a bundle of format "
                                          f"<= {FORMAT_VERSION}")
    return meta


def verify(path: str | Path, meta: dict) -> str:
    """Check every file of a current-format bundle against its recorded sha256; the bundle's hash."""
    path = Path(path)
    where = path / META_FILE
    files = meta.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files or not meta.get("content_sha256"):
        raise EcoalignInputError(f"bundle.json of format {meta.get('format_version')} lacks 'files' / "
                                 f"'content_sha256' (or {MODEL_FILE} in 'files')", path=where,
                                 expected="the bundle.json written by `ecoalign fit`")
    if content_hash(meta) != meta["content_sha256"]:
        raise EcoalignInputError("bundle.json was edited after the bundle was written (its content hash does not "
                                 "match)", path=where, expected=f"content_sha256 {meta['content_sha256']}")
    for name, digest in files.items():
        if Path(name).name != name:
            raise EcoalignInputError(f"bundle.json lists the file {name!r} outside the bundle", path=where,
                                     expected="file names inside the bundle folder")
        f = path / name
        if not f.is_file():
            raise EcoalignInputError("a file of the bundle is missing", path=f, expected=f"sha256 {digest}")
        actual = sha256_file(f)
        if actual != digest:
            raise EcoalignInputError(f"the file does not match the bundle (edited or truncated: sha256 {actual})",
                                     path=f, expected=f"sha256 {digest}, as recorded in bundle.json")
    return str(meta["content_sha256"])


# ----------------------------------------------------------------------------------------- the model file
def save_model(path: str | Path, model) -> Path:
    """Write the fitted model as ``model.skops``; refuses types outside the allow-list (they would not load)."""
    import skops.io as sio

    path = Path(path)
    data = sio.dumps(model)
    untrusted = sorted(set(sio.get_untrusted_types(data=data)) - allowed_types())
    if untrusted:
        raise EcoalignInputError(f"the model holds types not on ecoalign's trusted list: {untrusted[:10]}",
                                 where="bundle", expected="add them to ecoalign.sdm.bundle_io.TRUSTED_TYPES")
    with atomic_path(path / MODEL_FILE) as tmp:
        Path(tmp).write_bytes(data)
    return path / MODEL_FILE


def _load_skops(file: Path, trusted: Iterable[str]):
    import zipfile

    import skops.io as sio

    data = file.read_bytes()
    try:
        untrusted = sorted(set(sio.get_untrusted_types(data=data)) - allowed_types(trusted))
    except (zipfile.BadZipFile, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise EcoalignInputError(f"the estimator file cannot be read ({type(exc).__name__}: {exc})", path=file,
                                 expected=f"the {MODEL_FILE} written by `ecoalign fit`") from None
    if untrusted:
        raise EcoalignInputError(f"the estimator file would build type(s) that are not trusted: {untrusted[:10]}",
                                 path=file, expected=_trust_hint(untrusted))
    try:
        return sio.loads(data, trusted=sorted(allowed_types(trusted)))
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError, ImportError, EOFError,
            json.JSONDecodeError) as exc:  # a damaged or hand-made file: name it
        raise EcoalignInputError(f"the estimator file cannot be loaded ({type(exc).__name__}: {exc})", path=file,
                                 expected=f"the {MODEL_FILE} written by `ecoalign fit`") from None


def pickle_globals(file: str | Path) -> list[str]:
    """``module.name`` of every global a pickle would import (GLOBAL, STACK_GLOBAL, INST), read with
    ``pickletools.genops`` without unpickling. The pickle machine's stack is followed (each opcode's documented
    stack effect, marks and the memo), so STACK_GLOBAL names the strings it really consumes; operands that are
    not plain strings are reported as ``?`` (never allowed)."""
    mark = object()
    stack: list = []
    memo: dict = {}
    found: list[str] = []
    strings = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
               "SHORT_BINSTRING"}

    def pop(n: int) -> list:
        if n > len(stack):
            raise ValueError("stack underflow")
        taken = stack[len(stack) - n:] if n else []
        del stack[len(stack) - n:]
        return taken

    with open(file, "rb") as fh:
        try:
            for op, arg, _ in pickletools.genops(fh):
                name = op.name
                if name == "MEMOIZE":
                    memo[len(memo)] = stack[-1] if stack else None
                    continue
                if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = stack[-1] if stack else None
                    continue
                if name == "DUP":
                    stack.append(stack[-1] if stack else None)
                    continue
                before = list(op.stack_before)
                if pickletools.markobject in before:  # everything down to the last mark, then what lies below it
                    if mark not in stack:
                        raise ValueError(f"{name} without a mark")
                    depth = len(stack) - 1 - stack[::-1].index(mark)
                    del stack[depth:]
                    taken = pop(before.index(pickletools.markobject))
                else:
                    taken = pop(len(before))
                if name in ("GLOBAL", "INST"):
                    module, _, attr = str(arg).partition(" ")
                    found.append(f"{module}.{attr}")
                elif name == "STACK_GLOBAL":
                    module, attr = taken
                    found.append(f"{module}.{attr}" if isinstance(module, str) and isinstance(attr, str) else "?")
                if name == "MARK":
                    stack.append(mark)
                elif name in strings:
                    stack.append(str(arg))
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    stack.append(memo.get(arg))
                else:
                    stack.extend([None] * len(op.stack_after))
        except (ValueError, EOFError, KeyError, UnicodeDecodeError) as exc:  # truncated or not a pickle
            if any(g.startswith("joblib.numpy_pickle.") for g in found):  # arrays inline between the opcodes
                raise EcoalignInputError("the model was written with joblib.dump (a bundle of an ecoalign from "
                                         "before plain-pickle bundles); its arrays cannot be checked without "
                                         "unpickling", path=file, expected="a refit of the bundle (ecoalign fit)") \
                    from None
            raise EcoalignInputError(f"the pickle cannot be read ({type(exc).__name__}: {exc})", path=file,
                                     expected="the model.joblib written by an older `ecoalign fit`") from None
    return found


def check_pickle(file: str | Path, trusted: Iterable[str] = ()) -> None:
    """Refuse a pickle that would import anything outside the allow-list (checked before unpickling)."""
    allowed = allowed_types(trusted) | set(_PICKLE_MACHINERY)
    bad = sorted({g for g in pickle_globals(file) if g not in allowed})
    if bad:
        raise EcoalignInputError(f"the pickle would import names outside ecoalign's estimator types: {bad[:10]} "
                                 "(it was not unpickled)", path=file, expected=_trust_hint(bad))


def _load_pickle(file: Path, trusted: Iterable[str]):
    import pickle

    check_pickle(file, trusted)
    with open(file, "rb") as fh:
        try:
            return pickle.load(fh)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError) as exc:
            raise EcoalignInputError(f"the pickle cannot be loaded ({type(exc).__name__}: {exc})", path=file,
                                     expected="the model.joblib written by an older `ecoalign fit`") from None


def load(path: str | Path, trusted: Iterable[str] = ()):
    """(fitted model, ``bundle.json`` as a dict, the bundle's hash), after the format and hash checks."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("format_version", 1) >= FORMAT_VERSION:
        digest = verify(path, meta)
        model = _load_skops(path / MODEL_FILE, trusted)
    else:
        file = path / LEGACY_MODEL_FILE
        if not file.is_file():
            raise EcoalignInputError("the bundle has no model file", path=file,
                                     expected=f"{LEGACY_MODEL_FILE} (format {meta.get('format_version', 1)})")
        digest = sha256_file(file)
        log.warning("bundle %s holds a pickle (%s, format %s): its types were checked against ecoalign's list "
                    "before loading, but pickles can run code; convert it once with: ecoalign convert-bundle %s",
                    path, LEGACY_MODEL_FILE, meta.get("format_version", 1), path)
        model = _load_pickle(file, trusted)
    log.info("loaded bundle %s (sha256 %s)", path, digest)
    return model, meta, digest


def convert_bundle(bundle: str | Path, *, trusted: Iterable[str] = (), keep_pickle: bool = False) -> Path:
    """Rewrite an older bundle (``model.joblib``, a pickle) in the current format (``model.skops`` + hashes).

    The pickle's imports are checked against the allow-list before it is unpickled; anything else is refused
    (``trusted`` names types to accept). ``keep_pickle``: keep the pickle as ``.model.joblib.bak`` (not part of the
    bundle). Returns the bundle folder."""
    path = Path(bundle)
    meta = read_meta(path)
    if meta.get("format_version", 1) >= FORMAT_VERSION:
        verify(path, meta)
        log.info("bundle %s is already in format %d (sha256 %s): nothing to convert", path,
                 meta["format_version"], meta["content_sha256"])
        return path
    file = path / LEGACY_MODEL_FILE
    if not file.is_file():
        raise EcoalignInputError("the bundle has no model file to convert", path=file,
                                 expected=f"{LEGACY_MODEL_FILE} of a bundle written by an older `ecoalign fit`")
    model = _load_pickle(file, trusted)
    save_model(path, model)
    if keep_pickle:
        file.replace(path / f".{LEGACY_MODEL_FILE}.bak")  # hidden: not a file of the bundle
    else:
        file.unlink()
    meta = seal(path, {k: v for k, v in meta.items() if k not in ("files", "content_sha256")})
    log.info("converted bundle %s to format %d (sha256 %s)", path, FORMAT_VERSION, meta["content_sha256"])
    return path
