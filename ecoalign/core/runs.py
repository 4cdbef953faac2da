"""Run directories of the training verbs (``adapt``, ``train-organism``): where a new run goes, which run
``--resume`` continues, which overrides a resumed run may take, and cleaning up a run that failed before it
started, so that re-running the same command is never refused."""
from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator

from ecoalign.core.errors import EcoalignInputError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"


def is_run(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def latest_run(base: Path) -> Path | None:
    """The most recently started run directly under ``base`` (by its config's modification time)."""
    runs = [p for p in base.glob("*") if is_run(p)] if base.is_dir() else []
    return max(runs, key=lambda p: ((p / CONFIG_FILE).stat().st_mtime, p.name)) if runs else None


def resolve_run(out: str | Path | None, resume: str | Path | bool | None, runs_dir: Path) -> tuple[Path, bool]:
    """(run directory, resuming?). ``resume`` is a run directory, or True/"latest" for the newest run under
    ``out`` (itself a run, or a folder of runs) or else under ``runs_dir``."""
    if resume:
        if resume is True or resume == "latest":
            base = Path(out) if out else runs_dir
            run = base if is_run(base) else latest_run(base)
            if run is None:
                raise EcoalignInputError(f"--resume: no earlier run under {base}", expected="--resume RUN_DIR")
            return run, True
        run = Path(resume)
        if not is_run(run):
            raise EcoalignInputError(f"--resume: not an ecoalign run directory (no {CONFIG_FILE})", path=run)
        return run, True
    run = Path(out) if out else runs_dir / datetime.now().strftime("%Y%m%d-%H%M%S")
    if is_run(run):
        raise EcoalignInputError("a run already exists here", path=run,
                                 expected="--resume to continue it, or another --out directory")
    return run, False


def split_resume_argument(resume, overrides: Iterable[str]) -> tuple[str | None, list[str]]:
    """``--resume trainer.epochs=20`` means: resume the latest run with that override (argparse's optional value
    would otherwise take the override for the run directory)."""
    overrides = list(overrides)
    if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
        return "latest", [resume, *overrides]
    return resume, overrides


def apply_resume_overrides(cfg, overrides: Iterable[str], allowed: Iterable[str]):
    """A resumed run keeps its saved config; overrides of ``allowed`` keys (those that do not change what the run
    is, e.g. ``trainer.epochs``) are applied and logged, any other is refused with the list of allowed ones."""
    import yaml
    from omegaconf import OmegaConf

    allowed = sorted(allowed)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in allowed:
            raise EcoalignInputError(
                f"--resume cannot apply {item!r}: it would change what the saved run is", where=key,
                expected=f"overrides of {allowed} only (start a new run for other changes)")
        before = OmegaConf.select(cfg, key)
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
        log.warning("resumed run: %s changed from %r to %r", key, before, OmegaConf.select(cfg, key))
    return cfg


@contextmanager
def started_run(run_dir: Path, config_text: str, resuming: bool) -> Iterator[None]:
    """Write the run's config; if the run fails (not interrupted) before any training output exists, remove what
    it wrote, so the same command can simply be run again after fixing the input."""
    from ecoalign.core.io import write_text

    created = not run_dir.exists()
    if not resuming:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / CONFIG_FILE, config_text)
    try:
        yield
    except Exception:
        if not resuming and not _has_training_output(run_dir):
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:
                (run_dir / CONFIG_FILE).unlink(missing_ok=True)
            log.debug("run failed before its first step; removed %s", run_dir if created else run_dir / CONFIG_FILE)
        raise


def _has_training_output(run_dir: Path) -> bool:
    return any(p.is_file() for p in run_dir.rglob("*") if p.name != CONFIG_FILE)
