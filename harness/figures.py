"""Comparison figures from the report's tables (seaborn on matplotlib's Agg backend).

Every figure is sized for one paper column (3.3 in wide), saved as PNG (200 dpi) and PDF, and reads
in black and white: methods differ by marker, line style and hatch, not only by colour, and the
heatmap uses a grey scale with printed values.

    paths = write_figures(runs, summary, out_dir, edit_summary=..., pr_groups=...)

Each `plot_*` function takes plain tables and returns a matplotlib Figure (or None when the data
has nothing to show, e.g. no sweep over negatives), so it can be tested without the CLI.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from harness.atomic import atomic_path  # noqa: E402

COLUMN_WIDTH_IN = 3.3
DPI = 200
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
HATCHES = ("", "///", "...", "xxx", "\\\\\\", "---", "+++", "ooo")
# Colour-blind-safe palette; grayscale readability comes from markers/hatches, not from hue.
PALETTE = "colorblind"
KNOWN_METHODS = ("qk", "simclr", "moco", "membank", "none", "sscd", "xbm")


def _style() -> None:
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=0.8)
    plt.rcParams.update(
        {
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "savefig.bbox": "tight",
            "pdf.fonttype": 42,  # embedded TrueType: editable text, no Type 3 fonts in the PDF
            "axes.titlesize": 8,
            "legend.fontsize": 6.5,
            "legend.title_fontsize": 7,
        }
    )


def _method_styles(methods: Sequence[str]) -> dict[str, dict[str, object]]:
    """One fixed (colour, marker, line style, hatch) per method: the known methods always get the
    same one, so every figure (and every report) draws a method the same way."""
    colours = sns.color_palette(PALETTE, n_colors=10)
    others = sorted(set(methods) - set(KNOWN_METHODS))
    order = {m: i for i, m in enumerate([*KNOWN_METHODS, *others])}
    return {
        method: {
            "color": colours[order[method] % len(colours)],
            "marker": MARKERS[order[method] % len(MARKERS)],
            "linestyle": LINESTYLES[order[method] % len(LINESTYLES)],
            "hatch": HATCHES[order[method] % len(HATCHES)],
        }
        for method in methods
    }


def save_figure(figure, stem: str | os.PathLike) -> list[Path]:
    """Write `<stem>.png` and `<stem>.pdf` atomically; returns both paths."""
    stem = Path(stem)
    written = []
    for fmt in ("png", "pdf"):
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            if fmt == "png":
                _save_small_png(figure, tmp)
            else:
                figure.savefig(tmp, format=fmt, dpi=DPI, metadata=_metadata(fmt))
        written.append(path)
    plt.close(figure)
    return written


def _save_small_png(figure, path: Path) -> None:
    # Plots are flat colours plus anti-aliasing: a 256-colour palette looks the same and makes the
    # PNG about three times smaller than matplotlib's RGBA output (they are committed in docs/).
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata=_metadata("png"))
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
        palette.save(path, format="PNG", optimize=True)


def _metadata(fmt: str) -> dict[str, str | None]:
    # No creation dates: the same records give byte-identical PDFs (smaller diffs in docs/).
    return {"CreationDate": None} if fmt == "pdf" else {"Software": None}


def _errorbar(ax, x, y, xerr, yerr, style, label) -> None:
    ax.errorbar(
        x,
        y,
        xerr=xerr,
        yerr=yerr,
        color=style["color"],
        marker=style["marker"],
        linestyle=style["linestyle"],
        markersize=4,
        linewidth=1,
        capsize=2,
        markerfacecolor="white",
        label=label,
    )


def plot_map_by_group(runs: pd.DataFrame, summary: pd.DataFrame) -> plt.Figure:
    """µAP per group (horizontal bars: mean, error bar: ± std over seeds, dots: single seeds).

    With score normalization, a second, white bar per group shows the normalized µAP."""
    _style()
    styles = _method_styles(list(summary["method"].unique()))
    order = list(summary["group"])
    normalized = "map_normalized_mean" in summary and summary["map_normalized_mean"].notna().any()
    kinds = [("map", "raw")] + ([("map_normalized", "normalized")] if normalized else [])
    height = 0.35 / len(kinds)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 0.9 + 0.28 * len(order) * len(kinds)))
    positions = np.arange(len(order))
    for k, (metric, kind) in enumerate(kinds):
        offset = (k - (len(kinds) - 1) / 2) * height * 2
        for i, row in summary.reset_index(drop=True).iterrows():
            style = styles[row["method"]]
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            if math.isnan(mean):
                continue
            ax.barh(
                positions[i] + offset,
                mean,
                height=height * 2 * 0.9,
                color=style["color"] if kind == "raw" else "white",
                edgecolor="black",
                hatch=style["hatch"] if kind == "raw" else "",
                linewidth=0.6,
                xerr=0 if math.isnan(std) else std,
                error_kw={"elinewidth": 0.8, "capsize": 2},
            )
            seeds = runs.loc[runs["group"] == row["group"], metric].dropna()
            ax.plot(
                seeds,
                np.full(len(seeds), positions[i] + offset),
                linestyle="none",
                marker="|",
                color="black",
                markersize=5,
            )
    ax.set_yticks(positions, order)
    ax.invert_yaxis()
    ax.set_xlabel("µAP (bar: mean ± std over seeds; ticks: seeds)")
    ax.set_xlim(left=0)
    if normalized:
        from matplotlib.patches import Patch

        ax.legend(
            handles=[
                Patch(facecolor="lightgrey", edgecolor="black", label="raw"),
                Patch(facecolor="white", edgecolor="black", label="score-normalized"),
            ],
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncol=2,
            frameon=False,
        )
    return fig


def plot_pr_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], methods: dict[str, str]
) -> plt.Figure:
    """Precision-recall curves overlaid, one per label; `methods` maps a label to its method (style)."""
    _style()
    styles = _method_styles(sorted(set(methods.values())))
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.6))
    for label, (precision, recall) in curves.items():
        style = styles[methods[label]]
        ax.plot(
            recall,
            precision,
            color=style["color"],
            linestyle=style["linestyle"],
            marker=style["marker"],
            markevery=0.12,  # evenly spaced along the drawn line, not by point index
            markersize=3.5,
            markerfacecolor="white",
            linewidth=1,
            label=label,
        )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return fig


def plot_metric_against(
    summary: pd.DataFrame,
    x: str,
    *,
    y: str = "map",
    xlabel: str,
    log_x: bool = False,
    connect: bool = True,
    ax=None,
) -> plt.Figure | None:
    """Group means of `y` against group means of `x`, one series per method, error bars in both axes."""
    _style()
    data = summary.dropna(subset=[f"{x}_mean", f"{y}_mean"])
    if data.empty:
        return None
    styles = _method_styles(list(summary["method"].unique()))
    figure = None
    if ax is None:
        figure, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.4))
    for method, rows in data.groupby("method", sort=True):
        rows = rows.sort_values(f"{x}_mean")
        style = dict(styles[method])
        if not connect or len(rows) == 1:
            style["linestyle"] = "none"
        _errorbar(
            ax,
            rows[f"{x}_mean"],
            rows[f"{y}_mean"],
            rows[f"{x}_std"].fillna(0),
            rows[f"{y}_std"].fillna(0),
            style,
            method,
        )
    if log_x:
        ax.set_xscale("log")
        ticks = sorted(data[f"{x}_mean"].unique())
        if len(ticks) <= 8:  # label the swept values themselves, not powers of ten
            ax.set_xticks(ticks, [f"{t:,.0f}" for t in ticks])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("µAP")
    ax.legend(loc="best")
    return figure if figure is not None else ax.figure


def plot_negatives_sweep(summary: pd.DataFrame) -> plt.Figure | None:
    """µAP against negatives per step (log x) for the methods whose runs vary it; None if none do."""
    varied = summary.groupby("method")["negatives_per_step_mean"].nunique()
    methods = list(varied[varied > 1].index)
    if not methods:
        return None
    return plot_metric_against(
        summary[summary["method"].isin(methods)],
        "negatives_per_step",
        xlabel="negatives per step (log scale)",
        log_x=True,
    )


def plot_equal_compute(summary: pd.DataFrame) -> plt.Figure | None:
    """The equal-compute view: µAP against training wall-clock (left) and images seen (right)."""
    _style()
    panels = [
        (x, label)
        for x, label in (
            ("train_seconds", "training wall-clock (s)"),
            ("images_seen", "images seen"),
        )
        if f"{x}_mean" in summary and summary[f"{x}_mean"].notna().any()
    ]
    if not panels:
        return None
    fig, axes = plt.subplots(
        1, len(panels), figsize=(COLUMN_WIDTH_IN, 2.2), sharey=True, squeeze=False
    )
    for ax, (x, label) in zip(axes[0], panels, strict=True):
        plot_metric_against(summary, x, xlabel=label, connect=False, ax=ax)
        if ax is not axes[0][0]:
            ax.set_ylabel("")
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
        ax.tick_params(axis="x", labelrotation=30)
    return _legend_below(fig, axes[0][0], ncol=3)


def _legend_below(fig, ax, *, ncol: int):
    """The figure laid out, with one legend (the series of `ax`) under all its panels, off the
    data."""
    fig.tight_layout()
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, frameon=False
    )
    return fig


def _curve_figure(long: pd.DataFrame, panels, *, width: float, height: float):
    """One panel per (value, x axis, x label, y label) in `panels`: per group, the mean of the
    value over seeds against the mean x, with a band of ± one sample std (2 seeds or more).
    None when no panel has a point."""
    from harness.report.curves import mean_curves

    means = [mean_curves(long, value) for value, *_ in panels]
    if all(curves.empty for curves in means):
        return None
    _style()
    styles = _method_styles(sorted(set(long["method"])))
    fig, axes = plt.subplots(1, len(panels), figsize=(width, height), squeeze=False)
    for ax, curves, (_, x, xlabel, ylabel) in zip(axes[0], means, panels, strict=True):
        for (group, method), rows in curves.groupby(["group", "method"], sort=True):
            rows = rows.sort_values("step")
            style = styles[method]
            ax.plot(
                rows[x],
                rows["mean"],
                color=style["color"],
                linestyle=style["linestyle"],
                marker=style["marker"],
                markersize=2.5,
                markerfacecolor="white",
                linewidth=1,
                label=group,
            )
            band = rows["std"].fillna(0)
            ax.fill_between(
                rows[x],
                rows["mean"] - band,
                rows["mean"] + band,
                color=style["color"],
                alpha=0.18,
                linewidth=0,
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel if ax is axes[0][0] or ylabel != panels[0][3] else "")
        ax.tick_params(axis="x", labelrotation=30)
    return _legend_below(fig, axes[0][0], ncol=4)


def plot_learning_curves(long: pd.DataFrame) -> plt.Figure | None:
    """Validation µAP (mean over seeds, ± std band) against steps, images seen and training
    wall-clock, side by side; None without validation points."""
    y = "validation µAP (raw)"
    panels = [
        ("val_micro_ap", "step", "step", y),
        ("val_micro_ap", "images_seen", "images seen", y),
        ("val_micro_ap", "train_seconds", "training wall-clock (s)", y),
    ]
    return _curve_figure(long, panels, width=2 * COLUMN_WIDTH_IN, height=2.4)


def plot_stale_negatives(long: pd.DataFrame) -> plt.Figure | None:
    """The stale-negatives measure against steps: the mean cosine between stored negatives and
    their recomputation now (left) and their mean age (right); None without such points."""
    if long["consistency"].isna().all():
        return None
    panels = [
        ("consistency", "step", "step", "stored vs recomputed (cosine)"),
        ("negative_age", "step", "step", "mean age of stored negatives (steps)"),
    ]
    return _curve_figure(long, panels, width=1.6 * COLUMN_WIDTH_IN, height=2.3)


def plot_edit_heatmap(edit_summary: pd.DataFrame) -> plt.Figure | None:
    """Groups × edit families (transposed when there are more families than groups), mean µAP
    printed in each cell on a grey scale."""
    if edit_summary.empty:
        return None
    _style()
    order = list(dict.fromkeys(edit_summary["group"]))
    matrix = edit_summary.pivot(index="group", columns="family", values="map_mean").reindex(order)
    if matrix.shape[1] > matrix.shape[0]:
        matrix = matrix.T  # the longer side runs down the page, so the figure fits a column
    width = max(COLUMN_WIDTH_IN, 1.6 + 0.34 * matrix.shape[1])
    fig, ax = plt.subplots(figsize=(width, 0.9 + 0.24 * matrix.shape[0]))
    sns.heatmap(
        matrix,
        ax=ax,
        cmap="Greys",
        vmin=0,
        vmax=max(float(np.nanmax(matrix.to_numpy())), 1e-6),
        annot=True,
        fmt=".2f",
        annot_kws={"fontsize": 5.5},
        linewidths=0.4,
        linecolor="white",
        cbar_kws={"label": "µAP", "shrink": 0.8},
    )
    ax.set_xlabel("edit family" if matrix.columns.name == "family" else "")
    ax.set_ylabel("edit family" if matrix.index.name == "family" else "")
    ax.tick_params(axis="x", labelrotation=45)
    plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    return fig


def load_pr_curve(
    path: str | os.PathLike, normalized: bool = False
) -> tuple[np.ndarray, np.ndarray] | None:
    """(precision, recall) from a run's pr_curve.npz, or None when absent or unreadable."""
    prefix = "normalized_" if normalized else ""
    try:
        with np.load(path) as data:
            return np.asarray(data[f"{prefix}precision"]), np.asarray(data[f"{prefix}recall"])
    except (OSError, KeyError, ValueError):
        return None


def representative_runs(
    runs: pd.DataFrame, summary: pd.DataFrame, groups: Collection[str] | None = None
) -> pd.DataFrame:
    """Per method, one group (among `groups` if given; else the one with the most seeds, ties: higher
    mean µAP), and in it the seed whose µAP is the median (the lower middle one for an even count):
    the run whose PR curve is drawn."""
    chosen = []
    if groups is not None:
        summary = summary[summary["group"].isin(set(groups))]
    ranked = summary.sort_values(["n_seeds", "map_mean"], ascending=[False, False], kind="stable")
    for _, group in ranked.drop_duplicates("method").iterrows():
        members = runs[runs["group"] == group["group"]].sort_values("map", kind="stable")
        chosen.append(members.iloc[(len(members) - 1) // 2])
    return pd.DataFrame(chosen)


def write_figures(
    runs: pd.DataFrame,
    summary: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    edit_summary: pd.DataFrame | None = None,
    pr_groups: Collection[str] | None = None,
    curve_points: pd.DataFrame | None = None,
) -> list[Path]:
    """The figure set of a report; `runs` must carry the `group` column
    (harness.report.tables.add_group_column).

    `pr_groups` chooses the groups whose PR curves are drawn (see `representative_runs`);
    `curve_points` (harness.report.curves.load_curves) adds the learning and stale-negatives curves."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    written += save_figure(plot_map_by_group(runs, summary), out_dir / "map_by_method")
    curves, curve_methods = {}, {}
    for _, run in representative_runs(runs, summary, pr_groups).iterrows():
        curve = load_pr_curve(Path(run["run_dir"]) / run["pr_curve_file"])
        if curve is not None:
            label = f"{run['group']} (seed {run['seed']})"
            curves[label], curve_methods[label] = curve, run["method"]
    if curves:
        written += save_figure(plot_pr_curves(curves, curve_methods), out_dir / "pr_curves")
    for name, figure in (
        ("map_vs_negatives", plot_negatives_sweep(summary)),
        ("map_vs_compute", plot_equal_compute(summary)),
        (
            "map_by_edit",
            plot_edit_heatmap(edit_summary if edit_summary is not None else pd.DataFrame()),
        ),
        ("learning_curves", None if curve_points is None else plot_learning_curves(curve_points)),
        ("stale_negatives", None if curve_points is None else plot_stale_negatives(curve_points)),
    ):
        if figure is not None:
            written += save_figure(figure, out_dir / name)
    return written
