"""Data-set manifests: one YAML file describes imagery, plots and relevés, so any user can bring data with no code.

A manifest names its files relative to ``root`` (default: the manifest's folder), with a sha256 for each,
either inline (``sha256:``) or through a ``checksums:`` file in ``sha256sum`` format. A manifest with
``generator: demo`` describes a data set that ecoalign generates on first use into its cache.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import sha256_file
from ecoalign.core.paths import cache_dir, resolve_manifest

log = logging.getLogger(__name__)

# generators named by a manifest's `generator:` key, as "module:function(root, **generator_options)"; looked up
# by name so that reading a manifest does not import (or depend on) the demo code
GENERATORS = {"demo": "ecoalign.demo.aerial_world:generate_demo_world"}
# the manifest's schema: top-level keys and the keys of its imagery section (file entries carry reader options)
TOP_KEYS = ("name", "description", "licence", "license", "citation", "root", "generator", "generator_options",
            "checksums", "imagery", "plots", "releves", "species", "extras")
IMAGERY_KEYS = ("files", "wavelengths_um", "nodata")


@dataclass(frozen=True)
class FileRef:
    """A file of the data set and the checksum it must have."""

    path: Path
    sha256: str | None
    options: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass(frozen=True)
class Manifest:
    name: str
    source: Path
    root: Path
    imagery: tuple[FileRef, ...]
    wavelengths_um: tuple[float, ...]
    nodata: float | None
    plots: FileRef
    releves: FileRef
    species: FileRef | None
    extras: dict[str, FileRef]
    licence: str
    citation: str
    raw: dict[str, Any]

    def files(self) -> list[FileRef]:
        out = [*self.imagery, self.plots, self.releves]
        if self.species is not None:
            out.append(self.species)
        out.extend(self.extras.values())
        return out

    def identity(self) -> dict[str, Any]:
        """What the data are, for cache keys and run metadata: names and checksums, not local paths."""
        return {
            "name": self.name,
            "files": {str(f.path.relative_to(self.root)) if f.path.is_relative_to(self.root) else str(f.path): f.sha256
                      for f in self.files()},
            "wavelengths_um": list(self.wavelengths_um),
            "nodata": self.nodata,
        }


def _require(d: dict, key: str, source: Path, where: str, expected: str) -> Any:
    if not isinstance(d, dict) or key not in d or d[key] in (None, ""):
        raise EcoalignInputError(f"missing key '{key}'", path=source, where=where, expected=expected)
    return d[key]


def _check_keys(d: dict, known: tuple[str, ...], source: Path, where: str) -> None:
    """A misspelt key would otherwise be ignored silently (and its default used)."""
    import difflib

    for key in d:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            raise EcoalignInputError(f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                                     path=source, where=where, expected=f"keys among {list(known)}")


def _expand_root(text: str, source: Path) -> Path:
    text = text.replace("{cache}", str(cache_dir()))
    root = Path(os.path.expandvars(text)).expanduser()
    return root if root.is_absolute() else (source.parent / root).resolve()


def _read_checksums(path: Path) -> dict[str, str]:
    sums = {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise EcoalignInputError("malformed checksum line", path=path, where=f"line {i}",
                                     expected="'<64 hex digits>  <file name>'")
        sums[parts[1].strip().lstrip("*")] = parts[0].lower()
    return sums


def _file_ref(entry: Any, root: Path, source: Path, where: str, sums: dict[str, str]) -> FileRef:
    if isinstance(entry, str):
        entry = {"path": entry}
    rel = _require(entry, "path", source, where, "a file path relative to the manifest root")
    path = Path(rel) if Path(rel).is_absolute() else root / rel
    sha = entry.get("sha256") or sums.get(str(rel))
    options = {k: v for k, v in entry.items() if k not in ("path", "sha256")}
    return FileRef(path=path, sha256=(str(sha).lower() if sha else None), options=options)


def load_manifest(name_or_path: str | os.PathLike, *, verify: bool = True) -> Manifest:
    """Read and check a manifest; generate the demo world if the manifest says so and it is missing."""
    source = resolve_manifest(name_or_path)
    try:
        raw = yaml.safe_load(source.read_text())
    except yaml.YAMLError as exc:
        raise EcoalignInputError(f"not valid YAML: {exc}", path=source) from exc
    if not isinstance(raw, dict):
        raise EcoalignInputError("a manifest must be a YAML mapping", path=source)

    _check_keys(raw, TOP_KEYS, source, "top level")
    if isinstance(raw.get("imagery"), dict):
        _check_keys(raw["imagery"], IMAGERY_KEYS, source, "imagery")
    root = _expand_root(str(raw.get("root", ".")), source)
    generator = raw.get("generator")
    if generator is not None:
        if generator not in GENERATORS:
            raise EcoalignInputError(f"unknown generator '{generator}'", path=source, expected=f"one of {sorted(GENERATORS)}")
        _generate(generator, root, raw.get("generator_options") or {})

    sums: dict[str, str] = {}
    if raw.get("checksums"):
        sums_path = root / raw["checksums"]
        if not sums_path.exists():
            raise EcoalignInputError("checksum file not found", path=sums_path)
        sums = _read_checksums(sums_path)

    img = _require(raw, "imagery", source, "imagery", "a mapping with 'files' and 'wavelengths_um'")
    files = _require(img, "files", source, "imagery.files", "a list of GeoTIFF paths")
    if isinstance(files, (str, dict)):
        files = [files]
    if not isinstance(files, list) or not files:
        raise EcoalignInputError("no imagery file listed", path=source, where="imagery.files",
                                 expected="a list of one or more GeoTIFF paths")
    imagery = tuple(_file_ref(e, root, source, f"imagery.files[{i}]", sums) for i, e in enumerate(files))
    wl = _require(img, "wavelengths_um", source, "imagery.wavelengths_um", "a list of band centre wavelengths in µm")
    try:
        wavelengths = tuple(float(w) for w in wl)
    except (TypeError, ValueError) as exc:
        raise EcoalignInputError(f"wavelengths must be numbers, got {wl!r}", path=source,
                                 where="imagery.wavelengths_um") from exc
    if any(not (0.2 <= w <= 20.0) for w in wavelengths):
        raise EcoalignInputError(f"wavelengths {list(wavelengths)} look wrong", path=source,
                                 where="imagery.wavelengths_um", expected="micrometres (e.g. 0.665 for red), 0.2..20")

    species = raw.get("species")
    manifest = Manifest(
        name=str(raw.get("name", source.stem)),
        source=source,
        root=root,
        imagery=imagery,
        wavelengths_um=wavelengths,
        nodata=img.get("nodata"),
        plots=_file_ref(_require(raw, "plots", source, "plots", "a plots file entry"), root, source, "plots", sums),
        releves=_file_ref(_require(raw, "releves", source, "releves", "a relevé table entry"), root, source, "releves", sums),
        species=_file_ref(species, root, source, "species", sums) if species else None,
        extras={k: _file_ref(v, root, source, f"extras.{k}", sums) for k, v in (raw.get("extras") or {}).items()},
        licence=str(raw.get("licence", raw.get("license", "unspecified"))),
        citation=str(raw.get("citation", "")),
        raw=raw,
    )
    if verify:
        verify_files(manifest)
    return manifest


def verify_files(manifest: Manifest) -> None:
    """Every file must exist and match its sha256: a wrong checksum means different data than the manifest describes."""
    for ref in manifest.files():
        if not ref.path.exists():
            raise EcoalignInputError("file listed in the manifest does not exist", path=manifest.source,
                                     where=str(ref.path))
        if ref.sha256 is None:
            raise EcoalignInputError(f"no sha256 given for {ref.path.name}", path=manifest.source,
                                     expected="a 'sha256:' entry or a 'checksums:' file listing it "
                                              "(compute it with: ecoalign manifest-hash FILE)")
        actual = sha256_file(ref.path)
        if actual != ref.sha256:
            raise EcoalignInputError(
                f"sha256 mismatch for {ref.path}: manifest says {ref.sha256}, file has {actual}",
                path=manifest.source, expected="the file the manifest describes (was it changed or replaced?)")


def _generate(generator: str, root: Path, options: dict[str, Any]) -> None:
    """Generate a data set on first use; a finished one has its SHA256SUMS (written last by the generator)."""
    import importlib

    if (root / "SHA256SUMS").exists():
        return
    module, function = GENERATORS[generator].split(":")
    log.info("generating the %s world into %s (first use)", generator, root)
    getattr(importlib.import_module(module), function)(root, **options)
