"""Tables from result records: load every `record.json`, group runs that differ only in seed, summarize.

The flow is three pure steps over pandas tables, so each can be tested on fabricated records:

    loaded = load_runs(["results/"])          # one row per complete run, plus the skipped ones
    summary = summarize(loaded.runs)          # one row per group: <metric>_mean, <metric>_std, n_seeds
    table = main_table(summary)               # display strings "mean ± std"; to_markdown / to_latex

A *setting* is the whole resolved config except the seed (also a method's own `<method>.seed`) and
the run id; runs with equal settings form a group. Its label lists only the keys that take more than
one value among the runs of the same method (a short, readable name); `setting_id` hashes the whole
setting.

Per-edit-type µAP (`edit_family_map`) restricts the ground truth to the queries whose metadata lists the
edit family, keeps every distractor query, and scores the predictions of those queries with the ISC
evaluation core (`harness.isc.evaluate`); nothing here re-implements the metric.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import ConfigError, InputError
from harness.run_dir import RECORD_FILENAME as RECORD_NAME

SCHEMA_VERSION = 1

# Config keys that never define a setting: runs differing only in these are seeds of one group.
DEFAULT_IGNORED_KEYS: tuple[str, ...] = ("seed", "run_id")

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
}

# Columns of the main table: (metric column, header, decimals).
MAIN_TABLE_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("map", "µAP", 4),
    ("map_normalized", "µAP (norm.)", 4),
    ("recall_at_p90", "R@P90", 4),
    ("recall_at_rank1", "R@rank1", 4),
    ("negatives_per_step", "negatives/step", 0),
    ("images_seen", "images seen", 0),
    ("total_seconds", "wall-clock (s)", 1),
    ("peak_cpu_mb", "peak RSS (MB)", 0),
    ("peak_cuda_mb", "peak CUDA (MB)", 0),
)

DEFAULT_GROUP_BY: tuple[str, ...] = ("method", "setting")


@dataclass(frozen=True)
class SkippedRun:
    """A run directory or record the report could not use, and why."""

    path: str
    reason: str


@dataclass
class LoadedRuns:
    """One row per complete run (`runs`) and the runs left out (`skipped`)."""

    runs: pd.DataFrame
    skipped: list[SkippedRun] = field(default_factory=list)
    config_columns: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Loading


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
            elif "config.yaml" in filenames:
                unfinished.add(Path(dirpath))
    return sorted(records), sorted(unfinished)


def _dig(record: dict, path: Sequence[str]):
    value = record
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _as_float(value) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


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


def _check_record(record, path: Path) -> str | None:
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
    if math.isnan(_as_float(_dig(record, RECORD_METRICS["map"]))):
        return "metrics.raw.average_precision is missing or not a number"
    return None


def record_row(record: dict, record_path: Path) -> dict[str, object]:
    """One table row: identity, metrics, budget, cost and the flattened config of one record."""
    row: dict[str, object] = {
        "run_id": str(record["run_id"]),
        "method": str(record["method"]),
        "seed": record.get("seed", _dig(record, ("config", "seed"))),
        "run_dir": str(record_path.parent),
        "benchmark_path": _dig(record, ("benchmark", "path")),
        "budget_kind": _dig(record, ("budget", "kind")),
        "predictions_file": _dig(record, ("files", "predictions")) or "predictions.csv",
        "pr_curve_file": _dig(record, ("files", "pr_curve")) or "pr_curve.npz",
    }
    for column, path in RECORD_METRICS.items():
        row[column] = _as_float(_dig(record, path))
    return row


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
        reason = _check_record(record, path)
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
    config_columns = [c for c in config_frame.columns if c not in ignored]
    if runs.empty:
        return LoadedRuns(pd.DataFrame(columns=["run_id", "method", "seed"]), skipped)
    runs = pd.concat([runs, config_frame], axis=1)
    runs["setting_id"] = [
        _setting_hash({rename.get(k, k): v for k, v in flat.items()}, ignored) for flat in configs
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
    return LoadedRuns(runs=runs, skipped=skipped, config_columns=config_columns)


def _setting_hash(flat_config: dict[str, object], ignored: set[str]) -> str:
    setting = {k: v for k, v in flat_config.items() if k not in ignored}
    text = json.dumps(setting, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def setting_labels(runs: pd.DataFrame, config_columns: Sequence[str]) -> list[str]:
    """A short label per run: `key=value` for each config key that varies among its method's runs.

    Keys of the method's own section lose their prefix (`qk.num_negatives` -> `num_negatives`).
    A null (unset) value reads `key=null`. Runs of a method whose settings are all equal are
    labelled "default".
    """
    labels = [""] * len(runs)
    for method, rows in runs.groupby("method", sort=False):
        varying = []
        for column in config_columns:
            values = {json.dumps(v, default=str) for v in rows[column] if not _is_missing(v)}
            has_missing = any(_is_missing(v) for v in rows[column])
            if len(values) + int(has_missing and bool(values)) > 1:
                varying.append(column)
        for index, row in rows.iterrows():
            parts = []
            for column in varying:
                value = row[column]
                key = column.removeprefix(f"{method}.")
                parts.append(f"{key}={'null' if _is_missing(value) else _format_value(value)}")
            labels[runs.index.get_loc(index)] = ", ".join(parts) or "default"
    return labels


def _format_value(value) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------------------------------
# Grouping and summaries


def check_group_by(runs: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    """The grouping columns, validated against the table (a ConfigError names an unknown one)."""
    group_by = [c.strip() for c in group_by if c.strip()]
    if not group_by:
        raise ConfigError("--group-by: give at least one column, e.g. method,setting")
    unknown = [c for c in group_by if c not in runs.columns]
    if unknown:
        known = ", ".join(c for c in runs.columns if not c.endswith("_file"))
        raise ConfigError(f"--group-by: unknown column(s) {', '.join(unknown)}; known: {known}")
    if "seed" in group_by:
        raise ConfigError(
            "--group-by: seed cannot be a grouping column (groups aggregate over seeds)"
        )
    return group_by


def group_label(values: dict[str, object]) -> str:
    """Readable name of a group from its grouping values: "qk", "qk (num_negatives=256)".

    A missing value is left out, except in the method's own section, where it is a null setting
    (`qk.num_negatives=null`); other methods' sections are simply absent from a run's config."""
    method = values.get("method")
    rest = []
    for key, value in values.items():
        if key == "method" or (key == "setting" and value == "default"):
            continue
        if _is_missing(value):
            if method is not None and key.startswith(f"{method}."):
                rest.append(f"{key}=null")
            continue
        rest.append(_format_value(value) if key == "setting" else f"{key}={_format_value(value)}")
    if method is None:
        return ", ".join(rest) or "all"
    return f"{method} ({', '.join(rest)})" if rest else str(method)


def add_group_column(runs: pd.DataFrame, group_by: Sequence[str]) -> pd.DataFrame:
    """A copy of `runs` with a `group` column naming each run's group."""
    runs = runs.copy()
    runs["group"] = [
        group_label({c: row[c] for c in group_by}) for _, row in runs[list(group_by)].iterrows()
    ]
    return runs


def summarize(
    runs: pd.DataFrame,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    metrics: Sequence[str] = tuple(RECORD_METRICS),
) -> pd.DataFrame:
    """One row per group: the grouping columns, `group`, `n_seeds`, `seeds`, and for each metric its
    mean and sample standard deviation (ddof=1; NaN with one seed) over the group's runs.

    Undefined values (recall@P90 when no cutoff reaches precision 0.9) are left out of that
    metric's mean and std; `n_seeds` still counts every run of the group."""
    group_by = check_group_by(runs, group_by)
    runs = add_group_column(runs, group_by)
    metrics = [m for m in metrics if m in runs.columns]
    grouped = runs.groupby(list(group_by), sort=True, dropna=False)
    stats = grouped[metrics].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    info = grouped.agg(
        group=("group", "first"),
        n_seeds=("run_id", "size"),
        seeds=("seed", lambda s: ",".join(_format_value(v) for v in sorted(s))),
        budget_kind=("budget_kind", lambda s: "/".join(sorted({str(v) for v in s}))),
    )
    summary = info.join(stats).reset_index()
    return summary


def format_mean_std(mean: float, std: float, decimals: int, *, pm: str = " ± ") -> str:
    """ "0.3403 ± 0.0120"; the mean alone when the spread is undefined or zero; "—" when no value."""
    if math.isnan(mean):
        return "—"
    text = f"{mean:,.{decimals}f}" if decimals == 0 else f"{mean:.{decimals}f}"
    if math.isnan(std) or std == 0:
        return text
    spread = f"{std:,.{decimals}f}" if decimals == 0 else f"{std:.{decimals}f}"
    return f"{text}{pm}{spread}"


def main_table(summary: pd.DataFrame, *, pm: str = " ± ") -> pd.DataFrame:
    """The main table as display strings: group columns, seeds, then each metric as mean ± std.

    Metric columns with no value in any group (e.g. CUDA memory on a CPU run, µAP normalized when no
    run normalized) are left out.
    """
    columns: dict[str, list[str]] = {"group": list(summary["group"])}
    columns["seeds"] = [str(n) for n in summary["n_seeds"]]
    budget = []
    for _, row in summary.iterrows():
        value = row.get("budget_value_mean", math.nan)
        budget.append("—" if math.isnan(value) else f"{_format_value(value)} {row['budget_kind']}")
    columns["budget"] = budget
    for metric, header, decimals in MAIN_TABLE_COLUMNS:
        mean_column = f"{metric}_mean"
        if mean_column not in summary or summary[mean_column].isna().all():
            continue
        columns[header] = [
            format_mean_std(m, s, decimals, pm=pm)
            for m, s in zip(summary[mean_column], summary[f"{metric}_std"], strict=True)
        ]
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------------------------------
# Per-edit-type µAP


def read_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """The benchmark's metadata.csv, checked by the layout reader, with `edits` split into lists."""
    from harness.data.layout import read_metadata as read_metadata_csv

    try:
        frame = read_metadata_csv(Path(path))
    except OSError as err:
        raise InputError(f"{path}: cannot read metadata: {err}") from err
    frame["edits"] = [[e.strip() for e in text.split("|") if e.strip()] for text in frame["edits"]]
    return frame


def edit_families(metadata: pd.DataFrame) -> list[str]:
    return sorted({family for edits in metadata["edits"] for family in edits})


def family_masks(gt, metadata: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per edit family, a boolean over `gt.queries`: the query's metadata `edits` list the family."""
    query_index = pd.Index(gt.queries)
    rows = query_index.get_indexer(metadata["query_id"].to_numpy(str))
    masks: dict[str, np.ndarray] = {}
    for family in edit_families(metadata):
        listed = np.fromiter((family in e for e in metadata["edits"]), bool, len(metadata))
        mask = np.zeros(len(query_index), dtype=bool)
        mask[rows[listed & (rows >= 0)]] = True  # metadata rows of unknown queries are ignored
        masks[family] = mask
    return masks


def edit_family_map(gt, metadata: pd.DataFrame, predictions) -> dict[str, dict[str, float]]:
    """Per edit family: the ISC µAP of the family's queries plus every distractor query, and the
    number of true pairs it covers.

    The restricted ground truth lists the family's queries and all distractors (queries with no true
    pair) and only the family's true pairs; the predictions kept are those of the listed queries.
    Ids are matched once as integer positions in `gt.queries`, so each family costs a few boolean
    masks, not a string join (14 families at DISC21's 50k queries and 500k predictions: 1.4 s, was
    5.1 s with np.isin on the id strings).
    """
    from harness.isc import GroundTruth, Predictions, evaluate

    query_index = pd.Index(gt.queries)
    pair_rows = query_index.get_indexer(gt.query)
    prediction_rows = query_index.get_indexer(predictions.query)
    distractor = np.ones(len(query_index), dtype=bool)
    distractor[pair_rows[pair_rows >= 0]] = False
    result: dict[str, dict[str, float]] = {}
    for family, in_family in family_masks(gt, metadata).items():
        keep_pairs = in_family[pair_rows] & (pair_rows >= 0)
        if not keep_pairs.any():
            continue  # a family seen only on distractors has no µAP
        keep_queries = in_family | distractor
        family_gt = GroundTruth(
            queries=gt.queries[keep_queries],
            query=gt.query[keep_pairs],
            reference=gt.reference[keep_pairs],
        )
        keep = (prediction_rows >= 0) & keep_queries[prediction_rows]
        family_predictions = Predictions(
            query=predictions.query[keep],
            reference=predictions.reference[keep],
            score=predictions.score[keep],
        )
        metrics = evaluate(family_gt, family_predictions)
        result[family] = {
            "map": _as_float(metrics.to_dict()["average_precision"]),
            "n_gt": float(keep_pairs.sum()),
        }
    return result


def resolve_benchmark(path: str | None, run_dir: str) -> Path | None:
    """The benchmark directory named by a record (absolute, relative to here, or to the run dir)."""
    if not path:
        return None
    candidates = [Path(path)] if Path(path).is_absolute() else [Path(path), Path(run_dir) / path]
    return next((c for c in candidates if c.is_dir()), None)


def _edit_truth(benchmark: Path) -> tuple[object, pd.DataFrame] | str:
    """(ground truth, metadata) of a benchmark, or why the per-edit table cannot use it."""
    from harness.data.layout import METADATA_FILE, find_ground_truth
    from harness.isc import read_ground_truth

    if not (benchmark / METADATA_FILE).is_file():
        return f"per-edit table: {benchmark} has no {METADATA_FILE}"
    try:
        return read_ground_truth(find_ground_truth(benchmark)), read_metadata(
            benchmark / METADATA_FILE
        )
    except InputError as err:
        return f"per-edit table: {err}"


def per_edit_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[SkippedRun]]:
    """Long table (run_id, family, map, n_gt) over all runs whose benchmark has a metadata.csv.

    Runs whose benchmark, metadata or predictions cannot be read are listed ("per-edit table: ...")
    and stay in the main table. Each benchmark's ground truth and metadata are read once.
    """
    from harness.isc import read_predictions

    rows: list[dict[str, object]] = []
    skipped: list[SkippedRun] = []
    benchmarks: dict[Path, tuple[object, pd.DataFrame] | str] = {}
    for _, run in runs.iterrows():
        benchmark = resolve_benchmark(run["benchmark_path"], run["run_dir"])
        if benchmark is None:
            skipped.append(
                SkippedRun(
                    run["run_dir"], f"per-edit table: benchmark {run['benchmark_path']!r} not found"
                )
            )
            continue
        if benchmark not in benchmarks:
            benchmarks[benchmark] = _edit_truth(benchmark)
        if isinstance(benchmarks[benchmark], str):
            skipped.append(SkippedRun(run["run_dir"], benchmarks[benchmark]))
            continue
        gt, metadata = benchmarks[benchmark]
        predictions_path = Path(run["run_dir"]) / run["predictions_file"]
        if not predictions_path.is_file():
            skipped.append(
                SkippedRun(run["run_dir"], f"per-edit table: {predictions_path} not found")
            )
            continue
        try:
            per_family = edit_family_map(gt, metadata, read_predictions(predictions_path))
        except InputError as err:
            skipped.append(SkippedRun(run["run_dir"], f"per-edit table: {err}"))
            continue
        for family, values in per_family.items():
            rows.append({"run_id": run["run_id"], "family": family, **values})
    return pd.DataFrame(rows, columns=["run_id", "family", "map", "n_gt"]), skipped


def summarize_edits(
    runs: pd.DataFrame, edits: pd.DataFrame, group_by: Sequence[str] = DEFAULT_GROUP_BY
) -> pd.DataFrame:
    """Per group and edit family: µAP mean, std (ddof=1) and number of runs."""
    group_by = check_group_by(runs, group_by)
    runs = add_group_column(runs, group_by)
    merged = edits.merge(runs[["run_id", "group", *group_by]], on="run_id", how="inner")
    out = (
        merged.groupby([*group_by, "group", "family"], sort=True, dropna=False)["map"]
        .agg(map_mean="mean", map_std="std", n_seeds="size")
        .reset_index()
    )
    return out


def edit_table(edit_summary: pd.DataFrame, *, pm: str = " ± ") -> pd.DataFrame:
    """Groups as rows, edit families as columns, "mean ± std" µAP cells."""
    if edit_summary.empty:
        return pd.DataFrame(columns=["group"])
    cells = edit_summary.assign(
        cell=[
            format_mean_std(m, s, 4, pm=pm)
            for m, s in zip(edit_summary["map_mean"], edit_summary["map_std"], strict=True)
        ]
    )
    order = list(dict.fromkeys(cells["group"]))
    table = cells.pivot(index="group", columns="family", values="cell").reindex(order)
    return table.fillna("—").reset_index().rename_axis(columns=None)


# --------------------------------------------------------------------------------------------------
# Text formats


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (first column left-aligned, the rest right-aligned)."""
    header = [str(c) for c in table.columns]
    rows = [[str(v).replace("|", "\\|") for v in row] for row in table.itertuples(index=False)]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    return (
        "\n".join([line(header), "| " + " | ".join(rule) + " |", *(line(r) for r in rows)]) + "\n"
    )


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def to_latex(table: pd.DataFrame, caption: str | None = None) -> str:
    """A booktabs LaTeX table; "±" becomes `$\\pm$`, "µ" `$\\mu$`, everything else is escaped."""

    def cell(value) -> str:
        text = latex_escape(str(value))
        return text.replace("±", r"$\pm$").replace("µ", r"$\mu$").replace("—", "--")

    escaped = table.map(cell)
    escaped.columns = [cell(c) for c in table.columns]
    column_format = "l" + "r" * (len(table.columns) - 1)
    return escaped.to_latex(
        index=False,
        escape=False,
        column_format=column_format,
        caption=None if caption is None else cell(caption),
    )


# --------------------------------------------------------------------------------------------------
# The whole report

FORMATS = ("md", "csv", "tex")


@dataclass
class Report:
    """Everything a report computed, and the files it wrote."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    table: pd.DataFrame
    edit_summary: pd.DataFrame
    edit_table: pd.DataFrame
    skipped: list[SkippedRun]
    written: list[Path]


def parse_list(text: str | Sequence[str]) -> list[str]:
    """ "a,b" or ["a", "b,c"] -> ["a", "b", "c"]."""
    items = [text] if isinstance(text, str) else list(text)
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def _write_table(
    table: pd.DataFrame, numbers: pd.DataFrame, stem: Path, formats, caption
) -> list[Path]:
    from harness.atomic import atomic_write_text

    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        if fmt == "md":
            atomic_write_text(path, to_markdown(table))
        elif fmt == "csv":
            atomic_write_text(path, numbers.to_csv(index=False))
        else:
            atomic_write_text(path, to_latex(table, caption=caption))
        written.append(path)
    return written


def build_report(
    roots: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    formats: Sequence[str] = FORMATS,
    ignored_keys: Sequence[str] = DEFAULT_IGNORED_KEYS,
    edits: bool = True,
    figures: bool = True,
    comparison: Callable[[pd.DataFrame], pd.Series] | None = None,
) -> Report:
    """Load, group, tabulate and draw: writes `report.md`, `runs.csv`, `main.<fmt>`, `edits.<fmt>`
    and the figure set into `out_dir`. Raises InputError only when no run at all is usable.

    `comparison` marks the runs of the main comparison (a boolean per run); the PR-curve figure then
    draws its groups. By default, per method, the group with the most seeds."""
    from harness.atomic import atomic_write_text

    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ConfigError(
            f"--format: unknown {', '.join(unknown)}; choose from {', '.join(FORMATS)}"
        )
    loaded = load_runs(roots, ignored_keys=ignored_keys)
    if loaded.runs.empty:
        reasons = "".join(f"\n  {s.path}: {s.reason}" for s in loaded.skipped)
        where = ", ".join(str(r) for r in roots)
        raise InputError(f"no complete {RECORD_NAME} under {where}{reasons}")
    group_by = check_group_by(loaded.runs, group_by)
    runs = add_group_column(loaded.runs, group_by)
    summary = summarize(runs, group_by)
    table = main_table(summary)
    skipped = list(loaded.skipped)
    edit_long = pd.DataFrame(columns=["run_id", "family", "map", "n_gt"])
    if edits:
        edit_long, edit_skipped = per_edit_runs(runs)
        skipped += edit_skipped
    edit_summary = summarize_edits(runs, edit_long, group_by)
    families = edit_table(edit_summary)

    out_dir = Path(out_dir)
    written = []
    atomic_write_text(out_dir / "runs.csv", runs.to_csv(index=False))
    written.append(out_dir / "runs.csv")
    written += _write_table(table, summary, out_dir / "main", formats, "µAP and cost per method")
    if not edit_summary.empty:
        written += _write_table(
            families, edit_summary, out_dir / "edits", formats, "µAP per edit family"
        )
    figure_paths: list[Path] = []
    if figures:
        from harness.figures import write_figures

        pr_groups = None if comparison is None else set(runs.loc[comparison(runs), "group"])
        figure_paths = write_figures(
            runs, summary, out_dir, edit_summary=edit_summary, pr_groups=pr_groups
        )
        written += figure_paths
    markdown = report_markdown(table, families, skipped, figure_paths, out_dir)
    atomic_write_text(out_dir / "report.md", markdown)
    written.append(out_dir / "report.md")
    return Report(runs, summary, table, edit_summary, families, skipped, written)


def report_markdown(
    table: pd.DataFrame,
    families: pd.DataFrame,
    skipped: Sequence[SkippedRun],
    figure_paths: Sequence[Path],
    out_dir: Path,
) -> str:
    """report.md: the main table, the per-edit table, the figures (PNG links) and the skipped runs."""
    parts = [
        "# Results\n",
        "Mean ± sample std over seeds; `seeds` counts the runs in each group.\n",
        to_markdown(table),
    ]
    if len(families.columns) > 1:
        parts += [
            "\n## µAP per edit family\n",
            "µAP of the queries with each edit family plus every distractor query (raw scores,"
            " predictions.csv), scored by the ISC evaluation; mean ± std over seeds.\n",
            to_markdown(families),
        ]
    pngs = [p for p in figure_paths if p.suffix == ".png"]
    if pngs:
        parts.append("\n## Figures\n")
        parts += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})\n" for p in pngs]
    if skipped:
        parts.append("\n## Skipped\n")
        parts += [f"- `{s.path}`: {s.reason}\n" for s in skipped]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------
# The paper comparison (`python -m harness figures paper`)

# The seed paper's own figures (DISC21 phase 1 µAP, QK iteration against a SimCLR-style method with
# in-batch negatives only). Quoted next to ours for orientation: a different benchmark and budget.
SEED_REPORTED = {"qk": 0.3403, "simclr": 0.2001}
PAPER_METHOD = "qk"
PAPER_BASELINES = ("simclr", "moco", "membank", "none")
METHOD_NAMES = {
    "qk": "QK iteration",
    "simclr": "SimCLR-style (in-batch negatives)",
    "moco": "MoCo",
    "membank": "memory bank",
    "none": "untrained backbone",
}


@dataclass(frozen=True)
class Difference:
    """Mean µAP of `method` minus that of `baseline`, with the spread of that difference."""

    method: str
    baseline: str
    delta: float
    standard_error: float  # Welch: sqrt(s_a²/n_a + s_b²/n_b); NaN with fewer than 2 seeds a side
    n_method: int
    n_baseline: int


def mean_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(mean(a) − mean(b), its standard error sqrt(var_a/n_a + var_b/n_b)); sample variances."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan
    delta = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return delta, math.nan
    return delta, float(math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))


def _is_main_product(axes: dict[str, list]) -> bool:
    """A grid product is part of the main comparison when every axis besides method and seed has a
    single value (fixed settings); an axis with several values makes it a sweep of that key."""
    return all(len(values) == 1 for key, values in axes.items() if key not in ("method", "seed"))


def _point_in_product(point: dict, axes: dict[str, list]) -> bool:
    return set(point) == set(axes) and all(point[key] in axes[key] for key in axes)


def main_comparison_runs(runs: pd.DataFrame, sweep_dir: str | os.PathLike | None) -> pd.Series:
    """Which runs form the equal-budget comparison (a boolean per run).

    Read from the sweep directory: the runs whose grid point (manifest.json) comes from a product of
    the sweep file (sweep.yaml) in which no key but method and seed takes several values, i.e. not
    from a sweep over a key such as qk.num_negatives. With a manifest but no sweep file: the runs
    whose grid point sets only method and seed. With neither: per method, the group with the most
    seeds (ties: the first by name).
    """
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else None
    manifest = sweep_dir / "manifest.json" if sweep_dir is not None else None
    if manifest is not None and manifest.is_file():
        try:
            entries = json.loads(manifest.read_text(encoding="utf-8")).get("runs", [])
        except (OSError, ValueError) as err:
            raise InputError(f"{manifest}: unreadable sweep manifest: {err}") from err
        if (sweep_dir / "sweep.yaml").is_file():
            from harness.sweep import load_sweep_spec

            products = [
                a for a in load_sweep_spec(sweep_dir / "sweep.yaml").grid if _is_main_product(a)
            ]
        else:
            products = None
        main_ids = {
            str(e["run_id"])
            for e in entries
            if (
                any(_point_in_product(e.get("point", {}), axes) for axes in products)
                if products is not None
                else set(e.get("point", {})) <= {"method", "seed"}
            )
        }
        return runs["run_id"].astype(str).isin(main_ids)
    sizes = runs.groupby(["method", "group"]).size().reset_index(name="n")
    sizes = sizes.sort_values(["method", "n", "group"], ascending=[True, False, True])
    chosen = set(sizes.drop_duplicates("method")["group"])
    return runs["group"].isin(chosen)


def comparison_rule(sweep_dir: str | os.PathLike | None) -> str:
    """In words, which rule `main_comparison_runs` applies to this directory."""
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else None
    if sweep_dir is None or not (sweep_dir / "manifest.json").is_file():
        return "Per method, the group with the most seeds (no sweep manifest found)."
    if (sweep_dir / "sweep.yaml").is_file():
        return "The runs of the sweep's products in which no key but method and seed takes several values."
    return "The runs whose grid point sets only method and seed (sweep.yaml not found)."


def paper_differences(main_runs: pd.DataFrame, metric: str = "map") -> list[Difference]:
    """QK minus each baseline present, over the per-seed values of `metric`."""
    values = {m: rows[metric].dropna().to_numpy() for m, rows in main_runs.groupby("method")}
    if PAPER_METHOD not in values:
        return []
    out = []
    for baseline in PAPER_BASELINES:
        if baseline in values:
            delta, se = mean_difference(values[PAPER_METHOD], values[baseline])
            out.append(
                Difference(
                    PAPER_METHOD,
                    baseline,
                    delta,
                    se,
                    len(values[PAPER_METHOD]),
                    len(values[baseline]),
                )
            )
    return out


def describe_difference(diff: Difference, metric_name: str = "µAP") -> str:
    """One sentence: the direction, the size with its standard error, and whether seeds resolve it."""
    name, base = (
        METHOD_NAMES.get(diff.method, diff.method),
        METHOD_NAMES.get(diff.baseline, diff.baseline),
    )
    if math.isnan(diff.delta):
        return f"{name} vs {base}: no runs to compare."
    direction = "higher" if diff.delta > 0 else "lower" if diff.delta < 0 else "equal"
    text = f"{name} vs {base}: {metric_name} {direction} by {abs(diff.delta):.4f}"
    if math.isnan(diff.standard_error):
        return text + f" (one seed on a side, n = {diff.n_method}/{diff.n_baseline}: no spread)."
    text += f" ± {diff.standard_error:.4f} (standard error, n = {diff.n_method}/{diff.n_baseline} seeds)"
    if abs(diff.delta) >= 2 * diff.standard_error:
        return text + "; larger than two standard errors."
    return text + "; within two standard errors: these seeds do not separate them."


def paper_summary(
    runs: pd.DataFrame,
    summary: pd.DataFrame,
    main: pd.Series,
    *,
    sweep_name: str,
    sweep_dir: str,
    skipped: Sequence[SkippedRun] = (),
) -> str:
    """The Markdown summary of the paper comparison: the equal-budget table, each QK − baseline
    difference with its spread, the negatives sweeps, and the seed paper's numbers beside them."""
    main_runs = runs[main]
    main_summary = summary[summary["group"].isin(set(main_runs["group"]))]
    lines = [
        f"# Method comparison: `{sweep_name}`\n",
        f"{len(runs)} complete runs from `{sweep_dir}`"
        + (f" ({len(skipped)} skipped, listed in report.md)" if skipped else "")
        + f". Benchmark: `{', '.join(sorted({str(p) for p in runs['benchmark_path']}))}`.\n",
        "## Equal budget\n",
        f"{comparison_rule(sweep_dir)} Mean ± sample std over seeds.\n",
        to_markdown(main_table(main_summary)),
        "## Differences\n",
        "QK iteration minus each baseline (difference of the seed means ± its standard error):\n",
    ]
    for metric, metric_name in (("map", "µAP"), ("map_normalized", "score-normalized µAP")):
        if metric in main_runs and main_runs[metric].notna().any():
            lines += [
                f"- {describe_difference(d, metric_name)}"
                for d in paper_differences(main_runs, metric)
            ]
    if not paper_differences(main_runs):
        lines.append("- no QK runs in the equal-budget comparison: nothing to compare.")
    reported = SEED_REPORTED["qk"] - SEED_REPORTED["simclr"]
    lines += [
        "",
        f"For orientation, the QK iteration paper reports µAP {SEED_REPORTED['qk']:.4f} for QK against "
        f"{SEED_REPORTED['simclr']:.4f} for a SimCLR-style method with in-batch negatives "
        f"(+{reported:.4f}) on DISC21 phase 1. That is not this benchmark (size, images, budget and "
        "backbone all differ), so only the direction of the difference is comparable.\n",
    ]
    sweeps = summary[summary["method"].isin(["qk", "moco"])]
    varied = sweeps.groupby("method")["negatives_per_step_mean"].nunique()
    for method in varied[varied > 1].index:
        rows = sweeps[sweeps["method"] == method].sort_values("negatives_per_step_mean")
        if not lines[-1].startswith("## Negatives"):
            lines.append("## Negatives per step\n")
        points = ", ".join(
            f"{r['negatives_per_step_mean']:,.0f}: {format_mean_std(r['map_mean'], r['map_std'], 4)}"
            for _, r in rows.iterrows()
        )
        lines.append(f"- {METHOD_NAMES.get(method, method)} (negatives: µAP): {points}")
    lines.append("")
    return "\n".join(lines)


def build_paper_report(
    sweep_dir: str | os.PathLike, out_dir: str | os.PathLike, *, sweep_name: str
) -> tuple[Report, str]:
    """The report over one sweep directory plus `summary.md` (see `paper_summary`)."""
    from harness.atomic import atomic_write_text

    def comparison(runs: pd.DataFrame) -> pd.Series:
        return main_comparison_runs(runs, sweep_dir)

    built = build_report([sweep_dir], out_dir, comparison=comparison)
    main = comparison(built.runs)
    text = paper_summary(
        built.runs,
        built.summary,
        main,
        sweep_name=sweep_name,
        sweep_dir=str(sweep_dir),
        skipped=built.skipped,
    )
    path = Path(out_dir) / "summary.md"
    atomic_write_text(path, text)
    built.written.append(path)
    return built, text
