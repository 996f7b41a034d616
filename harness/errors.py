"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class HarnessError(Exception):
    """A problem with the user's input or environment, explained in the message."""

    exit_code = 2


class InputError(HarnessError):
    """Bad input data: a malformed file, a missing split, NaN descriptors, ..."""


class ConfigError(HarnessError):
    """An invalid configuration: unknown key, wrong type, impossible value."""


class OutputError(HarnessError):
    """An output the command must not or cannot write: one of its own inputs, a directory, ..."""
