"""A timm-like method registry: `@register_method("qk", QKConfig, display_name="QK iteration")`,
`list_methods()`, `get_method()`, `create_method()`."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import ConfigError


@dataclass(frozen=True)
class MethodEntry:
    name: str
    cls: type
    config_cls: type
    summary: str  # the class docstring's first line (`python -m harness methods`)
    display_name: str  # the method's name in report tables and sentences


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(name: str, config_cls: type, *, display_name: str | None = None):
    """Class decorator: register a `Method` subclass under `name` with its config dataclass and the
    name reports print for it (`display_name`, default `name`)."""

    def decorator(cls):
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        _REGISTRY[name] = MethodEntry(name, cls, config_cls, summary, display_name or name)
        cls.name = name
        return cls

    return decorator


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> MethodEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}; registered methods: {', '.join(list_methods())}"
        ) from None


def create_method(name: str, config, context):
    """Build method `name` from its config dataclass (or None for defaults) and a MethodContext."""
    entry = get_method(name)
    if config is None:
        config = entry.config_cls()
    if not isinstance(config, entry.config_cls):
        raise ConfigError(
            f"method {name!r} needs a {entry.config_cls.__name__}, got {type(config).__name__}"
        )
    return entry.cls(config, context)
