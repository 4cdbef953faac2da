"""Outputs are written atomically and with the user's umask, not mkstemp's private 0600 / mkdtemp's 0700."""
from __future__ import annotations

import os
import stat

import pytest

from ecoalign.core.io import atomic_dir, atomic_path, current_umask, write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_files_and_folders_get_the_umask_permissions(tmp_path, umask_022):
    assert current_umask() == 0o022
    write_json(tmp_path / "report.json", {"a": 1})
    with atomic_path(tmp_path / "map.tif") as tmp:
        tmp.write_bytes(b"x")
    with atomic_dir(tmp_path / "bundle") as folder:
        (folder / "model.bin").write_bytes(b"y")
    for path, mode in ((tmp_path / "report.json", 0o644), (tmp_path / "map.tif", 0o644), (tmp_path / "bundle", 0o755)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
