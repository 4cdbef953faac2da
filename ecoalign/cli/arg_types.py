"""argparse types shared by several verbs: a bad value is a usage error naming the flag (exit code 2)."""
from __future__ import annotations

import argparse


def wavelengths(text: str) -> list[float]:
    """``0.49,0.56,0.665`` -> band centre wavelengths in µm."""
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not numbers in µm, e.g. 0.49,0.56,0.665") from None
