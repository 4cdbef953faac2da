"""The package works as a library: a wheel installed in a fresh venv, run from outside any checkout, has its
configs, specs and the demo manifest, and runs the main job and a species-model fit."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_adapt_and_fit(tmp_path):
    wheels = tmp_path / "wheels"
    # no build isolation: the build backend (setuptools) is already installed, and CI may have no index cache
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(wheels)], check=True)
    wheel = next(wheels.glob("ecoalign-*.whl"))
    venv = tmp_path / "venv"
    # the venv sees the installed dependencies, but ecoalign itself only from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py, exe = venv / "bin" / "python", venv / "bin" / "ecoalign"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "ECOALIGN_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}

    def run(*args):
        return subprocess.run([str(exe), *args], cwd=work, env=env, capture_output=True, text=True, timeout=None)

    where = subprocess.run([py, "-c", "import ecoalign; print(ecoalign.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # not the checkout
    adapt = run("adapt", "--backbone", "dofa", "--size", "small", "trainer=quick", "data.augmentations=1",
                "trainer.baselines=false", "--out", "run")
    assert adapt.returncode == 0, adapt.stderr[-3000:]
    assert (work / "run" / "encoder" / "encoder.json").exists()
    assert "next steps:" in adapt.stderr and "ecoalign embed --encoder run --manifest demo" in adapt.stderr
    embed = run("embed", "--encoder", "run", "--manifest", "demo", "--out", "emb.parquet")
    assert embed.returncode == 0, embed.stderr[-3000:]
    fit = run("fit", "soil_trophic_groups", "--manifest", "demo", "--embeddings", "emb.parquet", "--out", "bundle")
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (work / "bundle" / "bundle.json").exists()
