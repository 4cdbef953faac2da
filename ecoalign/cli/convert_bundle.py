"""``ecoalign convert-bundle``: rewrite an older model bundle (a pickle) in the format that loads without running
code (:func:`ecoalign.sdm.bundle_io.convert_bundle`)."""
from __future__ import annotations

from ecoalign.cli.arg_types import add_trust_arg


def register(sub) -> dict:
    p = sub.add_parser("convert-bundle", help="rewrite an older model bundle (model.joblib) as model.skops + hashes",
                       description="The pickle's imports are checked against ecoalign's estimator types before it "
                                   "is unpickled; a pickle naming anything else is refused.")
    p.add_argument("bundles", nargs="+", metavar="DIR", help="bundle folder(s) written by an older `ecoalign fit`")
    p.add_argument("--keep-pickle", action="store_true", help="keep the pickle as .model.joblib.bak")
    add_trust_arg(p)
    return {"convert-bundle": run}


def run(args) -> int:
    from ecoalign.sdm.bundle_io import bundle_hash, convert_bundle

    for d in args.bundles:
        path = convert_bundle(d, trusted=args.trust, keep_pickle=args.keep_pickle)
        print(f"{bundle_hash(path)}  {path}")
    return 0
