"""Where ecoalign keeps things: its shipped resources (package data), the user's own additions, and the cache.

Configs, species-model specs and data-set manifests ship inside the package (``ecoalign/configs``,
``ecoalign/species_models``, ``ecoalign/data_manifests``), so a wheel install has them. A user adds their own
on top through environment variables (several folders separated by ``os.pathsep``) or
``$XDG_CONFIG_HOME/ecoalign/{configs,species_models,manifests}``; a user's file of the same name wins
for specs and manifests, and a user's config groups add options to the shipped ones.
"""
from __future__ import annotations

import os
from pathlib import Path

from ecoalign.core.errors import EcoalignInputError

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _user_dirs(env: str, sub: str) -> list[Path]:
    dirs = [Path(p).expanduser().resolve() for p in os.environ.get(env, "").split(os.pathsep) if p]
    xdg = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")).expanduser() / "ecoalign" / sub
    return dirs + ([xdg.resolve()] if xdg.is_dir() else [])


def config_dir() -> Path:
    """The shipped Hydra config groups (``pkg://ecoalign.configs``)."""
    return PACKAGE_DIR / "configs"


def user_config_dirs() -> list[Path]:
    """Users' config-group folders added to Hydra's search path (ECOALIGN_CONFIG_DIR)."""
    return _user_dirs("ECOALIGN_CONFIG_DIR", "configs")


def manifests_dirs() -> list[Path]:
    """Folders searched for a named manifest, the user's first (ECOALIGN_MANIFEST_DIR)."""
    return _user_dirs("ECOALIGN_MANIFEST_DIR", "manifests") + [PACKAGE_DIR / "data_manifests"]


def species_models_dirs() -> list[Path]:
    """Folders searched for a named species-model spec, the user's first (ECOALIGN_SPECIES_MODELS_DIR)."""
    return _user_dirs("ECOALIGN_SPECIES_MODELS_DIR", "species_models") + [PACKAGE_DIR / "species_models"]


def cache_dir() -> Path:
    """Generated data and backbone-embedding caches (override with ECOALIGN_CACHE)."""
    base = os.environ.get("ECOALIGN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ecoalign"
    path = Path(base).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_named_yaml(name_or_path: str | os.PathLike, folders: list[Path], what: str) -> Path:
    """A YAML file by path, or by name (without .yaml) in the first of ``folders`` that has it."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p.resolve()
    for folder in folders:
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({x.stem for folder in folders if folder.is_dir() for x in folder.glob("*.yaml")})
    raise EcoalignInputError(f"{what} not found", path=p,
                             expected=f"an existing YAML file or one of the named {what}s {known}")


def resolve_manifest(name_or_path: str | os.PathLike) -> Path:
    """A manifest is a path to a YAML file, or the name of one in the manifest folders."""
    return find_named_yaml(name_or_path, manifests_dirs(), "manifest")


def resolve_species_model(name_or_path: str | os.PathLike) -> Path:
    """A species-model spec is a path to a YAML file, or the name of one in the spec folders."""
    return find_named_yaml(name_or_path, species_models_dirs(), "species-model spec")
