"""The resumable embedding cache, and the CLI's mapping of flags onto Hydra config groups."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ecoalign.aerial.backbone_cache import build_backbone_cache
from ecoalign.cli import main
from ecoalign.core.config import compose


class WindowReader:
    """Windows whose content is the plot's x coordinate; plots with x < 0 are 'outside'."""

    def read_batch(self, centres):
        kept = [i for i, (x, _) in enumerate(centres) if x >= 0]
        patches = np.stack([np.full((2, 4, 4), centres[i][0], np.float32) for i in kept]) if kept else np.zeros((0, 2, 4, 4), np.float32)
        return patches, kept, {i: "outside_raster" for i, (x, _) in enumerate(centres) if x < 0}


class MeanFeatures:
    """A deterministic stand-in for DOFA that isolates the cache logic; counts its calls."""

    def __init__(self, fail_after=None):
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("killed")
        return torch.stack([x.mean(dim=(1, 2, 3)), x[:, 0, 0, 1] - x[:, 0, 1, 0]], dim=1)


def _build(tmp_path, features, ids, centres):
    return build_backbone_cache(reader=WindowReader(), features=features, plot_ids=ids, centres=centres,
                                views=["identity", "rot90"], key_parts={"t": 1}, cache_root=tmp_path,
                                batch_size=4, progress=False)


def test_cache_resumes_after_kill_and_is_reused(tmp_path):
    ids = [f"p{i}" for i in range(22)]
    centres = np.column_stack([np.arange(22.0) - 2.0, np.zeros(22)])  # p0, p1 outside
    straight = _build(tmp_path / "a", MeanFeatures(), ids, centres)

    killed = MeanFeatures(fail_after=5)  # 2 views per chunk: dies inside the third chunk
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "b", killed, ids, centres)
    resumed_features = MeanFeatures()
    resumed = _build(tmp_path / "b", resumed_features, ids, centres)
    assert resumed_features.calls == 2 * (6 - 2)  # only the 4 unfinished chunks of 6 were recomputed
    np.testing.assert_array_equal(np.asarray(resumed.embeddings), np.asarray(straight.embeddings))
    assert list(resumed.plot_ids) == ids[2:]
    assert resumed.skipped == {"outside_raster": ["p0", "p1"]}
    assert resumed.embeddings.shape == (20, 2, 2)

    again = MeanFeatures()
    reused = _build(tmp_path / "b", again, ids, centres)
    assert again.calls == 0 and reused.reused


def test_cache_key_changes_with_backbone_identity(tmp_path):
    ids = ["a", "b"]
    centres = np.array([[1.0, 0], [2.0, 0]])
    a = build_backbone_cache(reader=WindowReader(), features=MeanFeatures(), plot_ids=ids, centres=centres,
                             views=["identity"], key_parts={"backbone": {"weights": "none"}}, cache_root=tmp_path,
                             progress=False)
    b = build_backbone_cache(reader=WindowReader(), features=MeanFeatures(), plot_ids=ids, centres=centres,
                             views=["identity"], key_parts={"backbone": {"weights": "x.pth"}}, cache_root=tmp_path,
                             progress=False)
    assert a.key != b.key and a.path != b.path


def test_flags_select_config_groups_and_overrides_apply():
    cfg = compose("adapt", ["backbone=dofa", "releve_encoder=attention", "loss=infonce", "trainer=quick",
                            "loss.anchor_weight=0", "backbone.size=small"])
    assert cfg.backbone.name == "dofa" and cfg.backbone.size == "small"
    assert cfg.releve_encoder.kind == "attention"
    assert cfg.loss.name == "infonce" and cfg.loss.anchor_weight == 0
    assert cfg.trainer.epochs == 5 and cfg.trainer.batch_size == 64  # quick extends default
    assert cfg.data.patch_size_m == 100


def test_bad_override_is_a_clear_error(capsys):
    assert main(["adapt", "--backbone", "resnet"]) == 2
    err = capsys.readouterr().err
    assert "backbone" in err and "resnet" in err
    assert main(["adapt", "trainer.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_help_is_fast_and_lists_verbs():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "ecoalign.cli", "--help"], capture_output=True,
                         text=True, check=True)
    assert "adapt" in out.stdout
    assert "torch" not in {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines()}
