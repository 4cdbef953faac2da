"""Run directories of the training verbs: --resume by flag, overrides on resume applied or refused loudly,
--resume under the --out that was used, and a failed start leaving nothing that blocks a rerun."""
from __future__ import annotations

import logging
import os
import time

import pytest
from omegaconf import OmegaConf

from ecoalign.aerial.adapt import RESUMABLE_KEYS
from ecoalign.cli import build_parser
from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.runs import (
    apply_resume_overrides,
    resolve_run,
    split_resume_argument,
    started_run,
)


def _run(folder, age_s=0.0):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("trainer: {epochs: 10, patience: 3}\nloss: {name: siglip}\n")
    t = time.time() - age_s
    os.utime(folder / "config.yaml", (t, t))
    return folder


def test_resume_with_an_override_but_no_run_means_the_latest_run():
    parser, _ = build_parser()
    args = parser.parse_args(["adapt", "--resume", "trainer.epochs=20", "trainer.patience=5"])
    assert args.resume == "trainer.epochs=20"  # argparse's optional value takes it ...
    assert split_resume_argument(args.resume, args.overrides) == ("latest", ["trainer.epochs=20", "trainer.patience=5"])
    assert split_resume_argument("runs/adapt/x", ["trainer.epochs=20"]) == ("runs/adapt/x", ["trainer.epochs=20"])


def test_resume_finds_runs_under_the_out_that_was_used(tmp_path):
    old, new = _run(tmp_path / "mine" / "a", age_s=100), _run(tmp_path / "mine" / "b")
    assert resolve_run(tmp_path / "mine", True, tmp_path / "default") == (new, True)
    assert resolve_run(old, "latest", tmp_path / "default") == (old, True)  # --out is itself the run
    assert resolve_run(None, str(old), tmp_path / "default") == (old, True)
    with pytest.raises(EcoalignInputError, match="no earlier run under"):
        resolve_run(None, True, tmp_path / "default")
    with pytest.raises(EcoalignInputError, match="a run already exists here"):
        resolve_run(old, None, tmp_path / "default")


def test_overrides_on_resume_are_applied_loudly_or_refused(tmp_path, caplog):
    cfg = OmegaConf.load(_run(tmp_path / "r") / "config.yaml")
    logger = logging.getLogger("ecoalign")
    logger.addHandler(caplog.handler)  # the CLI, run earlier in the session, stops propagation to the root
    try:
        with caplog.at_level(logging.WARNING, logger="ecoalign"):
            apply_resume_overrides(cfg, ["trainer.epochs=20"], RESUMABLE_KEYS)
    finally:
        logger.removeHandler(caplog.handler)
    assert cfg.trainer.epochs == 20
    assert "trainer.epochs changed from 10 to 20" in caplog.text
    for bad in ("loss=infonce", "backbone.size=base", "loss.anchor_weight=0"):
        with pytest.raises(EcoalignInputError, match="would change what the saved run is") as err:
            apply_resume_overrides(cfg, [bad], RESUMABLE_KEYS)
        assert "trainer.epochs" in str(err.value)  # says which overrides a resume takes


def test_a_run_that_fails_before_its_first_step_leaves_nothing(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(EcoalignInputError):
        with started_run(run, "a: 1\n", resuming=False):
            raise EcoalignInputError("bad manifest")
    assert not run.exists()
    # interrupted (not failed) runs keep their config so that --resume finds them
    with pytest.raises(KeyboardInterrupt):
        with started_run(run, "a: 1\n", resuming=False):
            raise KeyboardInterrupt
    assert (run / "config.yaml").exists()
    # a run that failed after training wrote something keeps it, for --resume
    run2 = tmp_path / "run2"
    with pytest.raises(RuntimeError):
        with started_run(run2, "a: 1\n", resuming=False):
            (run2 / "variants").mkdir()
            (run2 / "variants" / "checkpoint.pt").write_bytes(b"x")
            raise RuntimeError("disk full")
    assert (run2 / "config.yaml").exists()


class _Payload:
    """Stands for code a crafted checkpoint would run when unpickled: it would create a folder."""

    marker = ""

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_checkpoints_load_tensors_only(tmp_path):
    import torch

    from ecoalign.core.io import load_torch

    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.ones(2)}, "state": {"epoch": 3, "history": [{"loss": 0.5, "note": None}]},
                "torch_rng": torch.get_rng_state()}, good)
    assert load_torch(good)["state"]["epoch"] == 3
    bad = tmp_path / "bad.pt"
    payload = _Payload()
    payload.marker = str(tmp_path / "written-on-load")
    torch.save({"model": {}, "extra": payload}, bad)
    with pytest.raises(EcoalignInputError, match="refused to load") as err:
        load_torch(bad)
    assert str(bad) in str(err.value)
    assert not (tmp_path / "written-on-load").exists()  # nothing ran
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(EcoalignInputError, match="truncated"):
        load_torch(truncated)
