"""Composing Hydra configs from the repository's config groups, so CLI and notebooks share one source of truth."""
from __future__ import annotations

from typing import Sequence

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.paths import config_dir


def compose(root: str, overrides: Sequence[str] = ()):
    """Compose ``configs/<root>.yaml`` with Hydra overrides (``group=option``, ``key=value``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    folder = config_dir()
    if not (folder / f"{root}.yaml").exists():
        raise EcoalignInputError(f"no root config '{root}.yaml'", path=folder)
    try:
        with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
            return hydra_compose(config_name=root, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise EcoalignInputError(f"bad configuration override: {exc}", path=folder,
                                 expected="group=option (see configs/) or key=value for an existing key") from exc
