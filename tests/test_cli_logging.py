"""The command's log: --version, --quiet and --verbose, and one handler however often main() runs."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import ecoalign
from ecoalign.cli import main


def test_version_answers_without_loading_the_stack():
    out = subprocess.run([sys.executable, "-m", "ecoalign.cli", "--version"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == f"ecoalign {ecoalign.__version__}"


@pytest.mark.parametrize("flag,shown", [([], {"info", "warning"}), (["--quiet"], {"warning"}),
                                        (["--verbose"], {"debug", "info", "warning"})])
def test_quiet_and_verbose_set_what_the_log_shows(flag, shown, tmp_path, capfd):
    main([*flag, "manifest-hash", __file__])
    main([*flag, "manifest-hash", __file__])  # a second run adds no second handler
    log = logging.getLogger("ecoalign.test")
    log.debug("d-line")
    log.info("i-line")
    log.warning("w-line")
    err = capfd.readouterr().err
    seen = {name for name, text in (("debug", "d-line"), ("info", "i-line"), ("warning", "w-line")) if text in err}
    assert seen == shown
    assert err.count("w-line") == 1 and "[ecoalign] warning: w-line" in err
