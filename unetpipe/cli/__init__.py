"""The unetpipe command line: one sub-command per pipeline stage.

Each module of this package defines ``register(subparsers)``, which adds its sub-commands and sets
``func`` (called with the parsed arguments, returning an exit status) as their default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from unetpipe import __version__
from unetpipe.log import setup_logging


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: replace an earlier output of unetpipe (never anything unetpipe did not
    write, which is always refused)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output if an earlier unetpipe run wrote it (never anything else)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unetpipe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"unetpipe {__version__}")
    parser.add_argument("--log-file", help="also write the log to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file, logging.DEBUG if args.verbose else logging.INFO)
    log = logging.getLogger("unetpipe")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        log.error("%s", err)  # bad input or environment: the message says what to do
        return 1
    except Exception:  # a bug: keep its traceback in the log file too, not on stderr only
        log.exception("unexpected error in unetpipe %s", args.command)
        return 1


if __name__ == "__main__":
    sys.exit(main())
