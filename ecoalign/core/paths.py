"""Where ecoalign keeps things: the repository's configs and manifests, and the user's cache."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def config_dir() -> Path:
    """Hydra config groups live in the repository's ``configs/`` (override with ECOALIGN_CONFIG_DIR)."""
    return Path(os.environ.get("ECOALIGN_CONFIG_DIR", REPO_ROOT / "configs")).resolve()


def manifests_dir() -> Path:
    return Path(os.environ.get("ECOALIGN_MANIFEST_DIR", REPO_ROOT / "data_manifests")).resolve()


def cache_dir() -> Path:
    """Generated data and backbone-embedding caches (override with ECOALIGN_CACHE)."""
    base = os.environ.get("ECOALIGN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ecoalign"
    path = Path(base).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_manifest(name_or_path: str | os.PathLike) -> Path:
    """A manifest is a path to a YAML file, or the name of one in ``data_manifests/``."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p.resolve()
    candidate = manifests_dir() / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    from ecoalign.core.errors import EcoalignInputError

    known = sorted(x.stem for x in manifests_dir().glob("*.yaml"))
    raise EcoalignInputError(
        "manifest not found", path=p, expected=f"an existing YAML file or one of the named manifests {known}"
    )
