"""The mapping package is one stage per module, each importing only earlier stages (no cycle, not even a lazy
import inside a function), and every window is prepared by the one ``preprocess_windows``."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import ecoalign.mapping
from ecoalign.data.patches import preprocess_windows

STAGES = ["plan", "loading", "blocks", "writer", "distributed", "run"]  # each may import only those before it
PACKAGE = Path(ecoalign.mapping.__file__).parent


def _mapping_imports(path: Path) -> set[str]:
    """Stages of ecoalign.mapping that a module imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "ecoalign.mapping":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("ecoalign.mapping."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("ecoalign.mapping.")}
    return found


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_imports_only_earlier_stages(stage):
    earlier = set(STAGES[:STAGES.index(stage)])
    imported = _mapping_imports(PACKAGE / f"{stage}.py")
    assert imported <= earlier, f"ecoalign.mapping.{stage} imports {sorted(imported - earlier)}"


def test_every_module_is_a_known_stage():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(STAGES)
    assert ecoalign.mapping.map_raster is ecoalign.mapping.run.map_raster


def test_preprocess_windows_standardises_fills_and_resizes():
    rng = np.random.default_rng(0)
    wins = rng.uniform(0, 200, size=(2, 3, 20, 20)).astype(np.float32)
    wins[0, :, :4, :4] = np.nan
    mean, std = np.array([10.0, 20.0, 30.0]), np.array([2.0, 4.0, 8.0])
    same = preprocess_windows(wins, mean, std, input_px=20)  # already the input size: not resampled
    expected = (wins - mean.astype(np.float32)[:, None, None]) / std.astype(np.float32)[:, None, None]
    np.testing.assert_array_equal(same.numpy(), np.nan_to_num(expected, nan=0.0))
    assert same.dtype == torch.float32 and (same[0, :, :4, :4] == 0).all()  # invalid pixels at the band mean
    from_tensor = preprocess_windows(torch.from_numpy(wins), mean, std, input_px=20)
    assert torch.equal(from_tensor, same)  # numpy or torch input: the same float32 values
    big = preprocess_windows(wins, mean, std, input_px=56)
    assert big.shape == (2, 3, 56, 56) and torch.isfinite(big).all()
    small = preprocess_windows(wins, mean, std, input_px=8)  # shrinking is antialiased: it averages the noise
    np.testing.assert_allclose(small[1].numpy().mean(axis=(1, 2)), same[1].numpy().mean(axis=(1, 2)), rtol=0.02)
    assert (small[1].numpy().std(axis=(1, 2)) < 0.6 * same[1].numpy().std(axis=(1, 2))).all()
    raw = preprocess_windows(wins[1:], input_px=20)  # no statistics: values as given
    np.testing.assert_array_equal(raw.numpy(), wins[1:])
