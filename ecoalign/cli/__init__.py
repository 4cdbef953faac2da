"""The ``ecoalign`` command: one module per verb under ``ecoalign.cli``, each a thin parser over the library.

Every verb module has ``register(subparsers) -> {verb: function(args) -> exit code}`` and keeps its heavy
imports inside the function, so ``ecoalign --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ecoalign.core.errors import EcoalignInputError

# the verb modules, in the order ``ecoalign --help`` lists them
VERB_MODULES = ("adapt", "embed", "fit", "evaluate", "compare", "map", "organism_world", "curate", "train_organism",
                "zero_shot", "few_shot", "predict", "intrinsic", "embed_images", "manifest_hash",
                "convert_bundle", "evaluate_zero_shot")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The argument parser and the verb -> function table."""
    from ecoalign import __version__

    parser = argparse.ArgumentParser(prog="ecoalign", description="Botany-aware foundation models for ecology.")
    parser.add_argument("--version", action="version", version=f"ecoalign {__version__}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors from the library's log")
    loud.add_argument("-v", "--verbose", action="store_true", help="debug messages from the library's log too")
    sub = parser.add_subparsers(dest="verb", required=True)
    verbs = {}
    for name in VERB_MODULES:
        verbs.update(importlib.import_module(f"ecoalign.cli.{name}").register(sub))
    return parser, verbs


# verbs whose finished work is picked up by running the same command again (no --resume flag)
RERUN_RESUMES = {"embed", "map"}


def _configure_logging(quiet: bool, verbose: bool) -> None:
    """The command shows the library's ``ecoalign`` log on stderr (INFO; --quiet: WARNING; --verbose: DEBUG).
    One handler, however often ``main`` runs in a process (tests, notebooks calling the CLI)."""
    import logging

    log = logging.getLogger("ecoalign")
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(h, "_ecoalign_cli", False) for h in log.handlers):
        class Format(logging.Formatter):
            def format(self, record):
                level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
                return f"[ecoalign] {level}{record.getMessage()}"

        class Stderr(logging.StreamHandler):  # whatever sys.stderr is when a record comes (tests, notebooks swap it)
            stream = property(lambda self: sys.stderr, lambda self, value: None)

        handler = Stderr()
        handler.setFormatter(Format())
        handler._ecoalign_cli = True
        log.addHandler(handler)
        log.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser, verbs = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's usage errors (2) and --help/--version (0) as a return code
        return exc.code if isinstance(exc.code, int) else 0
    _configure_logging(args.quiet, args.verbose)
    try:
        return verbs[args.verb](args)
    except EcoalignInputError as exc:
        print(f"ecoalign {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = "re-run the same command to resume" if args.verb in RERUN_RESUMES else "continue with --resume"
        print(f"ecoalign {args.verb}: interrupted; finished work is kept, {how}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
