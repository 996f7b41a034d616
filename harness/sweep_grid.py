"""A sweep's grid expanded into runs: every grid point, then each resolved into a validated
RunConfig with its run id.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import yaml

from harness.errors import ConfigError
from harness.sweep_spec import SweepSpec


@dataclass
class SweepRun:
    index: int
    run_id: str
    point: dict[str, Any]  # the grid values of this run (grid keys only)
    overrides: list[str]  # every key=value given to resolve_config (base + point)


def expand_grid(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every grid point, in file order: the union of the products, duplicates removed."""
    points: list[dict[str, Any]] = []
    seen: set[str] = set()
    for axes in spec.grid:
        keys = list(axes)
        for values in itertools.product(*(axes[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            fingerprint = json.dumps(point, sort_keys=True, default=str)
            if fingerprint not in seen:
                seen.add(fingerprint)
                points.append(point)
    if not points:
        raise ConfigError(f"{spec.source}: the grid expands to no runs")
    return points


def _override(key: str, value: Any) -> str:
    # Values travel as YAML flow text, which is exactly how resolve_config parses `--set`.
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return f"{key}={text}"


def resolve_runs(spec: SweepSpec) -> list[tuple[SweepRun, Any]]:
    """Resolve every grid point into a validated RunConfig (ConfigError names the point and key)."""
    from harness.config import resolve_config

    out = []
    ids: dict[str, int] = {}
    for index, point in enumerate(expand_grid(spec)):
        merged = {**spec.base, **point}
        method = merged.pop("method", None)
        if not isinstance(method, str):
            raise ConfigError(f"{spec.source}: grid point {index} {point} has no `method`")
        seed = merged.pop("seed", None)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(
                f"{spec.source}: grid point {index}: seed must be an integer, got {seed!r}"
            )
        overrides = [_override(k, v) for k, v in merged.items()]
        try:
            cfg = resolve_config(
                method, config_path=spec.config, overrides=overrides, seed=seed, data=spec.data
            )
        except ConfigError as err:
            raise ConfigError(f"{spec.source}: grid point {index} {point}: {err}") from None
        if cfg.run_id in ids:
            raise ConfigError(
                f"{spec.source}: grid points {ids[cfg.run_id]} and {index} give the same run "
                f"({cfg.run_id}); remove the duplicate"
            )
        ids[cfg.run_id] = index
        run = SweepRun(index=index, run_id=cfg.run_id, point=point, overrides=overrides)
        out.append((run, cfg))
    return out
