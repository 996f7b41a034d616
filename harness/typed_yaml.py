"""Typed YAML: any dataclass built from YAML values and `key=value` overrides, every key checked.

A value is checked against its field's annotation and converted only where YAML's reading and the
annotation differ in form, not in meaning: `150` for a float field is 150.0, `150.0` for an int
field is 150, and `1e-3` (a string to YAML 1.1) for a float field is 0.001. Any other mismatch, and
any key the dataclass lacks, is a one-line ConfigError naming the key and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.errors import ConfigError


class WrongTypeError(ConfigError):
    """A value its field's annotation does not accept."""

    def __init__(self, key: str, expected: str, value: Any):
        super().__init__(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})")
        self.key, self.expected, self.value = key, expected, value


class UnknownKeyError(ConfigError):
    """Keys the dataclass lacks; `where` is the dotted section they were given in ("" at the top)."""

    def __init__(self, keys: list[str], valid: list[str], where: str):
        named = ", ".join(_dotted(where, k) for k in keys)
        section = f" in {where}" if where else ""
        super().__init__(f"unknown key {named}; valid keys{section}: {', '.join(valid)}")
        self.keys, self.valid, self.where = keys, valid, where


def _dotted(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def type_name(tp) -> str:
    """How an annotation reads in messages: `int`, `'sgd' | 'adamw'`, `str | null`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(tp))
    return getattr(tp, "__name__", str(tp))


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def coerce(value: Any, tp, key: str) -> Any:
    """Return `value` checked against (and minimally converted to) the annotation `tp`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(value, option, key)
            except ConfigError:
                continue
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # YAML's .nan/.inf: no setting means that
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return float(value)
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads `1e-3` (no dot, unsigned exponent) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (list, tuple)):
            args = typing.get_args(tp)
            if args and args[-1] is not Ellipsis and origin is list:
                return [coerce(v, args[0], key) for v in value]
            if args and origin is tuple and len(args) == 2 and args[1] is Ellipsis:
                return tuple(coerce(v, args[0], key) for v in value)
            return type(value)(value) if origin is None else origin(value)
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    raise WrongTypeError(key, type_name(tp), value)


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build_dataclass(cls: type, values: dict[str, Any], where: str = ""):
    """Instantiate `cls` from `values`; keys in messages are dotted below the section `where`."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {values!r}")
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise UnknownKeyError(unknown, sorted(types_), where)
    kwargs = {k: coerce(v, types_[k], _dotted(where, k)) for k, v in values.items()}
    try:
        instance = cls(**kwargs)
        # Defaults go through the same coercion, so `150` and `150.0` make equal instances.
        normalized = {
            name: coerce(getattr(instance, name), tp, _dotted(where, name))
            for name, tp in types_.items()
        }
        return dataclasses.replace(instance, **normalized)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def load_yaml(path: Path) -> dict:
    """The mapping a YAML file holds ({} when empty), read with yaml.safe_load (no tags run)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            "save it as UTF-8"
        ) from None
    except OSError as err:
        reason = err.strerror or err
        raise ConfigError(
            f"cannot read config file {path}: {reason}; check that it is a readable file"
        ) from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{path}: expected a mapping at the top level, got {type(loaded).__name__}"
        )
    return loaded


def parse_override(text: str, *, flag: str, usage: str, empty: Any = "") -> tuple[list[str], Any]:
    """`train.lr=0.1` -> (["train", "lr"], 0.1).

    The value is read as YAML (`null`, `[1, 2]`, `true`); text YAML cannot read stays a string, and
    an empty value is `empty`. A malformed `text` is an error naming `flag` and its `usage`.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{flag} {text!r}: expected {usage}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else empty
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(tree: dict, path: list[str], value: Any, *, where: str) -> None:
    """Set `value` at the dotted `path` of `tree`, creating sections on the way."""
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {part!r} is not a section")
        node = child
    node[path[-1]] = value
