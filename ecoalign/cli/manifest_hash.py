"""``ecoalign manifest-hash``: sha256 lines for files, to paste into a manifest."""
from __future__ import annotations


def register(sub) -> dict:
    h = sub.add_parser("manifest-hash", help="print sha256 lines for files, to paste into a manifest")
    h.add_argument("files", nargs="+")
    return {"manifest-hash": run}


def run(args) -> int:
    from ecoalign.core.io import sha256_file

    for f in args.files:
        print(f"{sha256_file(f)}  {f}")
    return 0
