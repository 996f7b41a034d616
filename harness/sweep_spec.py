"""A sweep file read into a SweepSpec: the grid checked, unknown keys refused.

A sweep file (configs/sweeps/*.yaml):

    name: negatives
    config: null                 # optional config file layered under every run
    data: null                   # optional benchmark directory (default: the generated mini-DISC)
    base:                        # dotted config keys set in every run
      train.budget_value: 200
    grid:                        # a mapping is one product; a list of mappings is their union
      - {method: [qk], qk.num_negatives: [10000, 100000, 1000000]}
      - {method: [moco], moco.queue_size: [4096, 65536]}
    seeds: [0, 1, 2]             # shorthand for a `seed` axis in every product
    launcher: slurm              # default for `sweep` (the command line wins)
    slurm_profile: local         # configs/slurm/<name>.yaml or a path
    slurm: {array_parallelism: 4}   # overrides of that profile
    benchmark_sizes: {queries: 50000, references: 1000000, training: 1000000}
                                 # for `--dry-run`'s estimate where the data is not readable
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.slurm_profile import SlurmProfile, load_profile
from harness.typed_yaml import load_yaml

SPEC_KEYS = (
    "name",
    "description",
    "config",
    "data",
    "base",
    "grid",
    "seeds",
    "launcher",
    "slurm_profile",
    "slurm",
    "benchmark_sizes",
)
SIZE_KEYS = ("queries", "references", "training")


@dataclass
class SweepSpec:
    name: str
    grid: list[dict[str, list[Any]]]
    base: dict[str, Any] = field(default_factory=dict)
    config: str | None = None
    data: str | None = None
    launcher: str = "slurm"
    slurm_profile: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    benchmark_sizes: dict[str, int] | None = None  # images per split (SIZE_KEYS)
    source: str = "<sweep>"  # the file it came from, for messages


def load_sweep_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found")
    return spec_from_dict(load_yaml(path), source=str(path), default_name=path.stem)


def spec_from_dict(data: Any, *, source: str = "<sweep>", default_name: str = "sweep") -> SweepSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a sweep file must be a mapping with a `grid:`")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(SPEC_KEYS)}"
        )
    grid = data.get("grid")
    if isinstance(grid, dict):
        grid = [grid] if grid else []
    if not isinstance(grid, list) or not grid:
        raise ConfigError(f"{source}: `grid` is empty; give a mapping of key -> list of values")
    seeds = data.get("seeds")
    products = []
    for i, product in enumerate(grid):
        where = f"{source}: grid[{i}]"
        if not isinstance(product, dict) or not product:
            raise ConfigError(f"{where} is empty; give a mapping of key -> list of values")
        axes: dict[str, list[Any]] = {}
        for key, values in product.items():
            values = values if isinstance(values, list) else [values]
            if not values:
                raise ConfigError(
                    f"{where}: `{key}` has no values (an empty axis makes an empty grid)"
                )
            axes[str(key)] = values
        if seeds is not None and "seed" not in axes:
            axes["seed"] = seeds if isinstance(seeds, list) else [seeds]
            if not axes["seed"]:
                raise ConfigError(f"{source}: `seeds` is empty")
        products.append(axes)
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: `base` must be a mapping of dotted config keys to values")
    slurm = data.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError(f"{source}: `slurm` must be a mapping of SLURM profile keys to values")
    return SweepSpec(
        name=str(data.get("name") or default_name),
        grid=products,
        base=base,
        config=data.get("config"),
        data=data.get("data"),
        launcher=str(data.get("launcher") or "slurm"),
        slurm_profile=data.get("slurm_profile"),
        slurm=slurm,
        description=str(data.get("description") or ""),
        benchmark_sizes=_benchmark_sizes(data.get("benchmark_sizes"), source),
        source=source,
    )


def _benchmark_sizes(value: Any, source: str) -> dict[str, int] | None:
    if value is None:
        return None
    valid = isinstance(value, dict) and set(value) == set(SIZE_KEYS)
    valid = valid and all(type(n) is int and n > 0 for n in value.values())
    if not valid:
        raise ConfigError(
            f"{source}: `benchmark_sizes` must give each of {', '.join(SIZE_KEYS)} a positive "
            f"number of images, got {value!r}"
        )
    return dict(value)


def sweep_profile(
    spec: SweepSpec,
    name_or_path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
) -> SlurmProfile:
    """The SLURM profile of a sweep's jobs: `name_or_path` (else the file's `slurm_profile`), the
    file's `slurm:` values as typed as YAML read them, then the command line's `key=value`."""
    return load_profile(
        name_or_path or spec.slurm_profile,
        overrides,
        settings=spec.slurm,
        settings_from=f"{spec.source}: slurm",
    )
