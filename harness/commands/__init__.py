"""Subcommands of `python -m harness`; see harness/cli.py for the module contract."""
