"""The SLURM profile: the resources of one job, from `configs/slurm/<name>.yaml` and overrides.

The mapping of profile keys to sbatch options is in slurm/README.md. Keys and types come from
`SlurmProfile`'s annotations through the typed-YAML engine (harness/typed_yaml.py); only the ranges
are checked here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.typed_yaml import (
    UnknownKeyError,
    WrongTypeError,
    apply_override,
    build_dataclass,
    load_yaml,
    parse_override,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = REPO_ROOT / "configs" / "slurm"


@dataclass
class SlurmProfile:
    """Resources of one job; `configs/slurm/*.yaml` sets these keys (slurm/README.md maps them)."""

    partition: str | None = None  # sbatch --partition
    account: str | None = None  # --account
    qos: str | None = None  # --qos
    nodes: int = 1  # --nodes
    gpus_per_node: int = 0  # --gpus-per-node; also the number of tasks per node (one per GPU)
    cpus_per_task: int = 2  # --cpus-per-task
    mem_gb: float | None = None  # --mem (per node); None: the partition's default
    time_min: int = 60  # --time; submitit sends USR2 signal_delay_s before the end
    constraint: str | None = None  # --constraint
    array_parallelism: int = 64  # sweeps: --array=0-N%array_parallelism
    signal_delay_s: int = 120  # --signal=USR2@signal_delay_s: time to reach a checkpoint
    max_requeues: int = 3  # timeouts that are requeued (preemptions are always requeued)
    setup: list[str] = field(
        default_factory=list
    )  # shell lines run before the job (module load ...)
    extra_sbatch: dict[str, Any] = field(default_factory=dict)  # any other sbatch option, verbatim

    def tasks_per_node(self) -> int:
        # One process per GPU; torch.distributed is set up from submitit's environment.
        return max(1, self.gpus_per_node)


def profile_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(SlurmProfile)]


_MINIMUM = {
    "nodes": 1,
    "cpus_per_task": 1,
    "time_min": 1,
    "array_parallelism": 1,
    "gpus_per_node": 0,
    "signal_delay_s": 0,
    "max_requeues": 0,
}


def _build_profile(values: dict[str, Any], where: str) -> SlurmProfile:
    """`values` (profile keys) as a SlurmProfile; errors name `where`, the file or the override."""
    try:
        profile = build_dataclass(SlurmProfile, values)
    except UnknownKeyError as err:
        raise ConfigError(
            f"{where}: unknown SLURM profile key {', '.join(map(repr, err.keys))}; valid keys: "
            f"{', '.join(profile_keys())}"
        ) from None
    except WrongTypeError as err:  # worded as the range checks below: "KEY must be ..."
        raise ConfigError(f"{where}: {err.key} must be {err.expected}, got {err.value!r}") from None
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    for key, minimum in _MINIMUM.items():
        if getattr(profile, key) < minimum:
            raise ConfigError(f"{where}: {key} must be >= {minimum}, got {getattr(profile, key)}")
    return profile


def resolve_profile_path(name_or_path: str | os.PathLike) -> Path:
    """A profile name (`local` -> configs/slurm/local.yaml) or a path to a YAML file."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text)
    else:
        path = PROFILE_DIR / f"{text}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(
            f"SLURM profile {text!r} not found ({path}); known profiles: {', '.join(known)}"
        )
    return path


def load_profile(
    name_or_path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    *,
    settings: Mapping[str, Any] | None = None,
    settings_from: str = "profile settings",
) -> SlurmProfile:
    """Profile from YAML (or the defaults when None), then `settings`, then `key=value` overrides.

    `settings` are values already read from YAML (a sweep file's `slurm:`): they keep their types
    (`null` stays None); `settings_from` names them in messages. Override values are parsed as YAML
    (`time_min=30`, `partition=gpu`, `setup=[a, b]`; an empty value is null). In both, a dotted
    key `extra_sbatch.NAME` sets a single extra sbatch option.
    """
    values: dict[str, Any] = {}
    where = "the default SLURM profile"
    if name_or_path is not None:
        path = resolve_profile_path(name_or_path)
        values, where = load_yaml(path), str(path)
    profile = _build_profile(values, where)
    if settings:
        for key, value in settings.items():
            apply_override(values, str(key).split("."), value, where=settings_from)
        profile = _build_profile(values, settings_from)
    for text in overrides:
        keys, value = parse_override(text, flag="--slurm-set", usage="key=value", empty=None)
        where = f"--slurm-set {text!r}"
        apply_override(values, keys, value, where=where)
        profile = _build_profile(values, where)
    return profile
