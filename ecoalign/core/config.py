"""Composing Hydra configs from the shipped config groups (``pkg://ecoalign.configs``) plus the user's, so the
CLI, notebooks and an installed wheel share one source of truth."""
from __future__ import annotations

from typing import Sequence

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.paths import config_dir, user_config_dirs


def compose(root: str, overrides: Sequence[str] = ()):
    """Compose ``<root>.yaml`` with Hydra overrides (``group=option``, ``key=value``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not (config_dir() / f"{root}.yaml").exists():
        raise EcoalignInputError(f"no root config '{root}.yaml'", path=config_dir())
    extra = [f"hydra.searchpath=[{','.join('file://' + str(d) for d in user_config_dirs())}]"] \
        if user_config_dirs() else []
    try:
        with initialize_config_module("ecoalign.configs", version_base="1.3"):
            return hydra_compose(config_name=root, overrides=list(overrides) + extra)
    except (HydraException, OmegaConfBaseException) as exc:
        raise EcoalignInputError(f"bad configuration override: {exc}", path=config_dir(),
                                 expected="group=option (see `ecoalign adapt --help`) or key=value for an existing key"
                                 ) from exc


def group_options(group: str, root: str = "adapt") -> list[str]:
    """The options of a config group (shipped and user), e.g. ``releve_encoder`` -> [attention, mlp, organism_text];
    the CLI's choices come from here, so they cannot drift from the configs."""
    names = set()
    for folder in [config_dir(), *user_config_dirs()]:
        names.update(p.stem for p in (folder / group).glob("*.yaml"))
    return sorted(names)
