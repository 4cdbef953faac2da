"""argparse types shared by several verbs: a bad value is a usage error naming the flag (exit code 2)."""
from __future__ import annotations

import argparse


def wavelengths(text: str) -> list[float]:
    """``0.49,0.56,0.665`` -> band centre wavelengths in µm."""
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not numbers in µm, e.g. 0.49,0.56,0.665") from None


PRECISIONS = ("auto", "fp32", "bf16", "int8")  # ecoalign.encoders.dofa.PRECISIONS (kept here: --help stays light)


def band_values(text: str) -> list[float]:
    """``1234.5,1180,990.2`` -> one value per band (band statistics in the raster's units)."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not numbers, one per band, e.g. 1234.5,1180,990.2") from None


def add_encoder_options(p) -> None:
    """--precision, --band-mean, --band-std: how a DOFA encoder computes and its fixed band standardisation."""
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="backbone precision: auto (default: bf16 on CUDA, else fp32), fp32, bf16 (bfloat16 "
                        "transformer), int8 (CPU: the transformer's MLP layers as int8 matmuls, the rest bfloat16 "
                        "where oneDNN runs them)")
    p.add_argument("--band-mean", type=band_values, default=None, metavar="M1,M2,...",
                   help="fixed band means for frozen DOFA, in the raster's units, one per band (with --band-std)")
    p.add_argument("--band-std", type=band_values, default=None, metavar="S1,S2,...",
                   help="fixed band standard deviations for frozen DOFA, one per band (with --band-mean)")


def add_trust_arg(parser) -> None:
    """``--trust TYPE`` (repeatable) for the verbs that open model bundles."""
    parser.add_argument("--trust", action="append", default=[], metavar="TYPE",
                        help="a type (module.Class) the bundle's estimator file may build beyond ecoalign's trusted "
                             "list; only for a bundle whose author you trust (repeatable)")
