"""Arguments shared by the organism verbs (zero-shot, few-shot, predict, intrinsic, embed-images), named as the
library functions' arguments, so a verb passes them on unchanged."""
from __future__ import annotations

CLI_ONLY = ("verb", "quiet", "verbose")


def add_encoder_args(p) -> None:
    p.add_argument("--encoder", required=True,
                   help="train-organism run dir, saved encoder dir, open_clip:ARCH (+ --weights), local-dir:..., "
                        "bioclip")
    p.add_argument("--weights", default="none", help="weights file for open_clip:ARCH (default: none = random)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)


def add_data_args(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--curated", help="a folder written by `ecoalign curate`")
    src.add_argument("--table", help="labelled image table (CSV/Parquet): an image path column + rank columns")
    p.add_argument("--split", default="test", help="curated split (train | val | test | test_unseen; default test)")
    p.add_argument("--images-root", help="folder the table's relative paths start from (default: the table's)")


def add_out_args(p, help_text: str, required: bool = True) -> None:
    p.add_argument("--out", required=required, help=help_text)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def verb_kwargs(args) -> dict:
    """The parsed arguments as the library function's keyword arguments (same names)."""
    return {k: v for k, v in vars(args).items() if k not in CLI_ONLY}


def skipped_note(skipped, out=None) -> str:
    """'; skipped N unreadable image(s) (listed in X)' for a summary line ('' when none was skipped)."""
    if not skipped:
        return ""
    from ecoalign.organism.outputs import skipped_path

    return f"; skipped {len(skipped)} unreadable image(s)" + (f" (listed in {skipped_path(out)})" if out else "")
