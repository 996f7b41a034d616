"""`python -m harness methods`: the registered methods, or one method's resolved defaults."""

from __future__ import annotations

import argparse

NAME = "methods"
HELP = "list the registered methods (or print one method's default config)"
DESCRIPTION = """\
List every registered method with its one-line summary, or print the full default run config of
one method (the protocol's defaults from harness/config.py and the method's own), the
starting point for --config files and --set overrides.

  python -m harness methods
  python -m harness methods --config qk
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="NAME",
        default=None,
        help="print the resolved default config of method NAME as YAML",
    )


def main(args: argparse.Namespace) -> int:
    import methods  # noqa: F401  (registers every method)
    from methods.registry import get_method, list_methods

    if args.config is not None:
        from harness.config import dump_config, resolve_config

        print(dump_config(resolve_config(args.config)), end="")
        return 0
    names = list_methods()
    width = max(len(n) for n in names)
    for name in names:
        entry = get_method(name)
        print(f"{name:<{width}}  {entry.summary}")
    return 0
