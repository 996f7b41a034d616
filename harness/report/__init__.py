"""Tables, figures and the paper comparison from result records (`python -m harness report`,
`python -m harness figures`). One module per job:

    records   find run directories, load and check each record.json, tell settings from seeds
    tables    groups, mean ± std summaries, the main table, Markdown and LaTeX text
    per_edit  µAP per edit family, from the benchmark's metadata.csv
    build     the whole report of a results directory, written to disk
    paper     QK iteration against the baselines over one sweep, and the QK paper's numbers

The flow is pure steps over pandas tables, so each can be tested on fabricated records:

    loaded = load_runs(["results/"])   # one row per complete run, plus the skipped ones
    grouping = protocol_grouping(loaded.runs, ["method", "setting"], loaded.config_columns)
    summary = summarize(loaded.runs, grouping.columns)   # <metric>_mean, _std, _n; n_seeds
    table = main_table(summary)        # display strings "mean ± std", "(2 of 3)" when fewer
"""

from harness.report.build import FORMATS, Report, build_report, parse_list, report_markdown
from harness.report.paper import (
    PAPER_BASELINES,
    PAPER_METHOD,
    SEED_REPORTED,
    Difference,
    build_paper_report,
    comparison_rule,
    describe_difference,
    main_comparison_runs,
    mean_difference,
    method_name,
    paper_differences,
    paper_summary,
)
from harness.report.per_edit import (
    edit_families,
    edit_family_map,
    edit_table,
    family_masks,
    per_edit_runs,
    read_metadata,
    summarize_edits,
)
from harness.report.records import (
    DEFAULT_IGNORED_KEYS,
    RECORD_METRICS,
    RECORD_NAME,
    SCHEMA_VERSION,
    LoadedRuns,
    SkippedRun,
    find_run_directories,
    flatten_config,
    load_runs,
    record_row,
    resolve_benchmark,
    setting_labels,
)
from harness.report.tables import (
    DEFAULT_GROUP_BY,
    MAIN_TABLE_COLUMNS,
    Grouping,
    add_group_column,
    check_group_by,
    format_cell,
    format_mean_std,
    group_label,
    latex_escape,
    main_table,
    protocol_grouping,
    summarize,
    to_latex,
    to_markdown,
)

__all__ = [
    "DEFAULT_GROUP_BY",
    "DEFAULT_IGNORED_KEYS",
    "FORMATS",
    "MAIN_TABLE_COLUMNS",
    "PAPER_BASELINES",
    "PAPER_METHOD",
    "RECORD_METRICS",
    "RECORD_NAME",
    "SCHEMA_VERSION",
    "SEED_REPORTED",
    "Difference",
    "Grouping",
    "LoadedRuns",
    "Report",
    "SkippedRun",
    "add_group_column",
    "build_paper_report",
    "build_report",
    "check_group_by",
    "comparison_rule",
    "describe_difference",
    "edit_families",
    "edit_family_map",
    "edit_table",
    "family_masks",
    "find_run_directories",
    "flatten_config",
    "format_cell",
    "format_mean_std",
    "group_label",
    "latex_escape",
    "load_runs",
    "main_comparison_runs",
    "main_table",
    "mean_difference",
    "method_name",
    "paper_differences",
    "paper_summary",
    "parse_list",
    "per_edit_runs",
    "protocol_grouping",
    "read_metadata",
    "record_row",
    "report_markdown",
    "resolve_benchmark",
    "setting_labels",
    "summarize",
    "summarize_edits",
    "to_latex",
    "to_markdown",
]
