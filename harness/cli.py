"""`python -m harness`: one subcommand per module in `harness/commands/`.

Each command module defines NAME, HELP, `add_arguments(parser)` and `main(args) -> int`, and imports
heavy libraries (torch, faiss) inside `main` only, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from harness import __version__, commands
from harness.errors import HarnessError, os_error_message

DESCRIPTION = """\
isc-bench: train self-supervised descriptors (QK iteration, SimCLR, MoCo, memory bank) under one
protocol and score them with the official ISC 2021 (DISC21) metrics.

Start with:  python -m harness run --method qk      (trains and evaluates on a generated mini-DISC)
"""


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{commands.__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"isc-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        command = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(handler=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.filename is None:  # not about a file: a bug, whose traceback is wanted
            raise
        print(f"error: {os_error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
