"""Result records: find run directories, load and check each `record.json`, flatten its config, and
tell settings from seeds.

    loaded = load_runs(["results/"])   # one row per complete run; the runs left out in `skipped`

A *setting* is the whole resolved config except the seed (also a method's own `<method>.seed`) and
the run id, with the benchmark named by its identity rather than by the `--data` string typed: its
resolved path (`benchmark`) and content fingerprint (`benchmark_fingerprint`, harness.record). Runs
with equal settings are the seeds of one setting. `setting_id` hashes the whole setting; the
`setting` label lists only the keys that take more than one value among the runs of the same method
(a short, readable name).

A metric a record holds but that is not a finite number (NaN, ±inf, text), and the wall-clock of a
resumed run whose record counts only its last process, are left out (NaN) and described in the
run's `dropped` column; `LoadedRuns.notes` says so in words.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.errors import InputError
from harness.record import SCHEMA_VERSION
from harness.run_dir import CONFIG_FILENAME
from harness.run_dir import RECORD_FILENAME as RECORD_NAME

# Config keys that never define a setting: runs differing only in these are seeds of one group.
DEFAULT_IGNORED_KEYS: tuple[str, ...] = ("seed", "run_id")

# The config key holding `--data` as typed: the benchmark's identity columns stand in for it.
DATA_KEY = "data.spec"
BENCHMARK_COLUMNS: tuple[str, ...] = ("benchmark", "benchmark_fingerprint")

NO_FINGERPRINT_NOTE = (
    "{n} run(s) have no benchmark fingerprint in their record (written before isc-bench recorded "
    "one): their benchmark is told apart by its resolved path only, so one regenerated in place "
    "passes for the same"
)
UNRESOLVED_NOTE = (
    "{n} of them name a benchmark that is not found from here ({paths}): the path as recorded "
    "stands for it, so runs given that same relative path from different folders pass for one "
    "benchmark"
)
DROPPED_NOTE = "{run_dir}: {reasons}; left out of its group's mean"

# Numeric columns taken from a record: column -> path of keys inside the record.
RECORD_METRICS: dict[str, tuple[str, ...]] = {
    "map": ("metrics", "raw", "average_precision"),
    "map_normalized": ("metrics", "normalized", "average_precision"),
    "recall_at_p90": ("metrics", "raw", "recall_at_p90"),
    "recall_at_p90_normalized": ("metrics", "normalized", "recall_at_p90"),
    "recall_at_rank1": ("metrics", "raw", "recall_at_rank1"),
    "recall_at_rank10": ("metrics", "raw", "recall_at_rank10"),
    "negatives_per_step": ("negatives_per_step",),
    "budget_value": ("budget", "value"),
    "train_steps": ("budget", "steps"),
    "images_seen": ("budget", "images_seen"),
    "train_seconds": ("budget", "train_seconds"),
    "total_seconds": ("timings", "total"),
    "peak_cpu_mb": ("peak_memory_mb", "cpu_rss"),
    "peak_cuda_mb": ("peak_memory_mb", "cuda"),
    # The stale-negatives measure at the run's last point (eval.consistency_every).
    "consistency": ("stale_negatives", "consistency"),
    "negative_age": ("stale_negatives", "negative_age"),
}


@dataclass(frozen=True)
class SkippedRun:
    """A run directory or record the report could not use, and why."""

    path: str
    reason: str


@dataclass
class LoadedRuns:
    """One row per complete run (`runs`), the runs left out (`skipped`), the columns that define a
    setting (`config_columns`, the benchmark's identity among them) and what a reader of the tables
    must know (`notes`: values left out, benchmarks identified by path only)."""

    runs: pd.DataFrame
    skipped: list[SkippedRun] = field(default_factory=list)
    config_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_run_directories(roots: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """(records, unfinished): every `record.json` below the roots, and run directories without one.

    A run directory is recognised by its `config.yaml` (written at the start of a run); hidden folders
    (atomic writes in progress, `.partial-*`) are not looked into.
    """
    records: set[Path] = set()
    unfinished: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise InputError(f"{root}: no such results directory")
        if root.is_file():
            if root.name != RECORD_NAME:
                raise InputError(f"{root}: expected a directory or a {RECORD_NAME}")
            records.add(root)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if RECORD_NAME in filenames:
                records.add(Path(dirpath) / RECORD_NAME)
            elif CONFIG_FILENAME in filenames:
                unfinished.add(Path(dirpath))
    return sorted(records), sorted(unfinished)


def _dig(record: dict, path: Sequence[str]):
    value = record
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def as_float(value) -> float:
    """A record's number as a float; NaN for null, a bool, ±inf, or what float() refuses."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def resolve_benchmark(path: str | None, run_dir: str) -> Path | None:
    """The benchmark directory named by a record (absolute, relative to here, or to the run dir)."""
    if not path:
        return None
    candidates = [Path(path)] if Path(path).is_absolute() else [Path(path), Path(run_dir) / path]
    return next((c for c in candidates if c.is_dir()), None)


def flatten_config(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested config sections -> {"section.key": value}; lists become JSON text so they can be compared."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple, dict)):
            flat[name] = json.dumps(value, sort_keys=True)
        else:
            flat[name] = value
    return flat


def _check_record(record) -> str | None:
    """The reason a parsed record cannot be used, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("schema_version") != SCHEMA_VERSION:
        return f"schema_version {record.get('schema_version')!r}, expected {SCHEMA_VERSION}"
    if record.get("status") != "complete":
        return f"status {record.get('status')!r} (unfinished)"
    for key in ("run_id", "method", "config", "metrics"):
        if key not in record:
            return f"missing key {key!r}"
    if not isinstance(record["config"], dict):
        return "config is not a mapping"
    if math.isnan(as_float(_dig(record, RECORD_METRICS["map"]))):
        return "metrics.raw.average_precision is missing or not a finite number"
    return None


def _benchmark_identity(record: dict, run_dir: Path) -> tuple[str | None, str | None, bool]:
    """(resolved path, fingerprint, found): the record's own, or for a record written before they
    were, the recorded path resolved from here (`found` False: the path as recorded stands in)."""
    block = record.get("benchmark") if isinstance(record.get("benchmark"), dict) else {}
    fingerprint = block.get("fingerprint") if isinstance(block.get("fingerprint"), str) else None
    if isinstance(block.get("resolved_path"), str):
        return block["resolved_path"], fingerprint, True
    path = block.get("path") or _dig(record, ("config", *DATA_KEY.split(".")))
    found = resolve_benchmark(str(path) if path else None, str(run_dir))
    if found is not None:
        return str(found.resolve()), fingerprint, True
    return (None if path is None else str(path)), fingerprint, False


def _dropped(record: dict, path: Sequence[str]) -> str | None:
    """Why a value the record holds at `path` cannot be averaged, or None (also when it is absent:
    an undefined metric, such as recall@P90 that no cutoff reaches, is recorded as null)."""
    value = _dig(record, path)
    if value is None or not math.isnan(as_float(value)):
        return None
    return f"{'.'.join(path)} is {value!r}, not a finite number"


def record_row(record: dict, record_path: Path) -> dict[str, object]:
    """One table row: identity, metrics, budget, cost and the flattened config of one record."""
    resolved, fingerprint, found = _benchmark_identity(record, record_path.parent)
    row: dict[str, object] = {
        "run_id": str(record["run_id"]),
        "method": str(record["method"]),
        "seed": record.get("seed", _dig(record, ("config", "seed"))),
        "run_dir": str(record_path.parent),
        "benchmark_path": _dig(record, ("benchmark", "path")),
        "benchmark": resolved,
        "benchmark_fingerprint": fingerprint,
        "benchmark_found": found,
        "budget_kind": _dig(record, ("budget", "kind")),
        "predictions_file": _dig(record, ("files", "predictions")) or "predictions.csv",
        "pr_curve_file": _dig(record, ("files", "pr_curve")) or "pr_curve.npz",
    }
    dropped = []
    for column, path in RECORD_METRICS.items():
        row[column] = as_float(_dig(record, path))
        reason = _dropped(record, path)
        if reason is not None:
            dropped.append(reason)
    resumed_from = _dig(record, ("budget", "resumed_from"))
    if resumed_from is not None and "timings_before_resume" not in record:
        if not math.isnan(row["total_seconds"]):
            dropped.append(
                f"timings.total counts only the last process of this run, resumed at step "
                f"{resumed_from} (a record from before timings were carried across resumes)"
            )
        row["total_seconds"] = math.nan
    row["dropped"] = "; ".join(dropped)
    return row


def _identity_notes(runs: pd.DataFrame) -> list[str]:
    notes = []
    old = runs[runs["benchmark_fingerprint"].isna()]
    if not old.empty:
        notes.append(NO_FINGERPRINT_NOTE.format(n=len(old)))
        unresolved = old[~old["benchmark_found"].astype(bool)]
        if not unresolved.empty:
            paths = ", ".join(sorted({repr(str(p)) for p in unresolved["benchmark"]}))
            notes[-1] += "; " + UNRESOLVED_NOTE.format(n=len(unresolved), paths=paths)
    notes += [
        DROPPED_NOTE.format(run_dir=run["run_dir"], reasons=run["dropped"])
        for _, run in runs.iterrows()
        if run["dropped"]
    ]
    return notes


def load_runs(
    roots: Iterable[str | os.PathLike], ignored_keys: Sequence[str] = DEFAULT_IGNORED_KEYS
) -> LoadedRuns:
    """Every complete record below `roots` as one row; unreadable and unfinished ones are listed in
    `skipped` instead of raising, so one broken run never hides the others."""
    record_paths, unfinished = find_run_directories(roots)
    skipped = [SkippedRun(str(d), f"no {RECORD_NAME} (unfinished)") for d in unfinished]
    rows: list[dict[str, object]] = []
    configs: list[dict[str, object]] = []
    seen_ids: dict[str, str] = {}
    for path in record_paths:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            skipped.append(SkippedRun(str(path), f"unreadable: {err}"))
            continue
        reason = _check_record(record)
        if reason is not None:
            skipped.append(SkippedRun(str(path), reason))
            continue
        row = record_row(record, path)
        if row["run_id"] in seen_ids:
            skipped.append(
                SkippedRun(
                    str(path),
                    f"duplicate run_id {row['run_id']} (also in {seen_ids[row['run_id']]})",
                )
            )
            continue
        seen_ids[str(row["run_id"])] = str(path)
        rows.append(row)
        configs.append(flatten_config(record["config"]))
    runs = pd.DataFrame(rows)
    config_frame = pd.DataFrame(configs)
    reserved = set(runs.columns) | {"setting", "setting_id", "group"}
    rename = {c: f"config.{c}" for c in config_frame.columns if c in reserved}
    config_frame = config_frame.rename(columns=rename)
    ignored = set(ignored_keys) | {rename.get(k, k) for k in ignored_keys}
    # A method's own seed key (`qk.seed`) follows the run's seed: it never defines a setting.
    ignored |= {c for c in config_frame.columns if c.endswith(".seed")}
    # The benchmark is its identity, never the string typed after --data.
    ignored.add(DATA_KEY)
    config_columns = [c for c in config_frame.columns if c not in ignored]
    config_columns += [c for c in BENCHMARK_COLUMNS if c not in ignored]
    if runs.empty:
        return LoadedRuns(pd.DataFrame(columns=["run_id", "method", "seed"]), skipped)
    runs = pd.concat([runs, config_frame], axis=1)
    runs["setting_id"] = [
        _setting_hash(
            {
                **{rename.get(k, k): v for k, v in flat.items()},
                **{c: row[c] for c in BENCHMARK_COLUMNS},
            },
            ignored,
        )
        for flat, row in zip(configs, rows, strict=True)
    ]
    # Two runs of one setting with the same seed (re-run under another --run-id) are one sample,
    # not two seeds: keep the first found, list the other.
    repeated = runs.duplicated(["setting_id", "seed"], keep="first")
    for _, run in runs[repeated].iterrows():
        first = runs[(runs["setting_id"] == run["setting_id"]) & (runs["seed"] == run["seed"])]
        skipped.append(
            SkippedRun(run["run_dir"], f"same setting and seed as {first.iloc[0]['run_dir']}")
        )
    runs = runs[~repeated].reset_index(drop=True)
    runs["setting"] = setting_labels(runs, config_columns)
    runs = runs.sort_values(["method", "setting", "seed"], kind="stable").reset_index(drop=True)
    return LoadedRuns(
        runs=runs, skipped=skipped, config_columns=config_columns, notes=_identity_notes(runs)
    )


def _setting_hash(flat_config: dict[str, object], ignored: set[str]) -> str:
    setting = {k: v for k, v in flat_config.items() if k not in ignored}
    text = json.dumps(setting, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def is_missing(value) -> bool:
    """None or NaN: a config key a run does not set, or a metric it did not report."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def varies(values: Iterable) -> bool:
    """More than one value among `values`; a null beside values counts as one more."""
    values = list(values)
    present = {json.dumps(v, default=str) for v in values if not is_missing(v)}
    return len(present) + int(bool(present) and any(is_missing(v) for v in values)) > 1


def varying_columns(
    rows: pd.DataFrame, columns: Sequence[str], within: Sequence[str] = ()
) -> list[str]:
    """The columns whose value differs among `rows` (inside a group of `within`, when given).

    The benchmark's fingerprint counts only where its path leaves it differing: two benchmarks in
    two folders are named by their paths alone, one rebuilt in place by its fingerprint too."""

    def differs(column: str, by: Sequence[str]) -> bool:
        if not by:
            return varies(rows[column])
        groups = rows.groupby(list(by), sort=False, dropna=False)
        return any(varies(group[column]) for _, group in groups)

    found = [c for c in columns if c != "benchmark_fingerprint" and differs(c, within)]
    if "benchmark_fingerprint" in columns:
        by = [*within, *(["benchmark"] if "benchmark" in found else [])]
        if differs("benchmark_fingerprint", by):
            found.append("benchmark_fingerprint")
    return found


def setting_labels(runs: pd.DataFrame, config_columns: Sequence[str]) -> list[str]:
    """A short label per run: `key=value` for each config key that varies among its method's runs.

    Keys of the method's own section lose their prefix (`qk.num_negatives` -> `num_negatives`).
    A null (unset) value reads `key=null`. Runs of a method whose settings are all equal are
    labelled "default".
    """
    labels = [""] * len(runs)
    for method, rows in runs.groupby("method", sort=False):
        varying = varying_columns(rows, config_columns)
        for index, row in rows.iterrows():
            parts = []
            for column in varying:
                value = row[column]
                key = column.removeprefix(f"{method}.")
                parts.append(f"{key}={'null' if is_missing(value) else format_value(value)}")
            labels[runs.index.get_loc(index)] = ", ".join(parts) or "default"
    return labels


def format_value(value) -> str:
    """A config value as labels print it: whole floats without ".0"."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)
