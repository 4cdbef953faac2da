"""``python -m ecoalign.cli`` (used by torchrun and by tests that run the command in a fresh process)."""
import sys

from ecoalign.cli import main

sys.exit(main())
