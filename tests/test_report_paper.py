"""The paper comparison: which runs form the equal-budget comparison, the differences, summary.md."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from test_report import fabricated  # noqa: F401  (the module-scoped fixture)

from harness import report


@pytest.fixture(scope="module")
def sweep_dir(fabricated, tmp_path_factory):  # noqa: F811
    """The fabricated runs as a sweep directory: qk-256 is a point of a negatives sweep, moco a
    main-comparison product with a fixed queue size."""
    root, _, _ = fabricated
    sweep = tmp_path_factory.mktemp("sweep") / "paper"
    shutil.copytree(root / "sweeps" / "demo", sweep / "runs")
    entries = []
    for run in sorted((sweep / "runs").iterdir()):
        if not (run / "record.json").is_file() or run.name in ("broken", "running"):
            continue
        method, negatives, seed = run.name.split("-")
        point = {"method": method, "seed": int(seed[1:])}
        if method == "qk" and negatives == "256":
            point["qk.num_negatives"] = 256
        if method == "moco":
            point["moco.queue_size"] = 512
        entries.append({"run_id": run.name, "run_dir": f"runs/{run.name}", "point": point})
    (sweep / "manifest.json").write_text(json.dumps({"name": "paper", "runs": entries}))
    (sweep / "sweep.yaml").write_text(
        "name: paper\n"
        "grid:\n"
        "  - {method: [qk, simclr]}\n"
        "  - {method: [moco], moco.queue_size: [512]}\n"
        "  - {method: [qk], qk.num_negatives: [256, 1024]}\n"
        "seeds: [0, 1, 2]\n"
    )
    return sweep


def test_mean_difference_is_welch_standard_error():
    a, b = [0.30, 0.34, 0.35], [0.20, 0.22, 0.19, 0.25]
    delta, se = report.mean_difference(a, b)
    assert delta == pytest.approx(sum(a) / 3 - sum(b) / 4)
    var_a = sum((x - sum(a) / 3) ** 2 for x in a) / 2
    var_b = sum((x - sum(b) / 4) ** 2 for x in b) / 3
    assert se == pytest.approx(math.sqrt(var_a / 3 + var_b / 4))
    assert math.isnan(report.mean_difference([0.3], b)[1])


def test_difference_is_stated_whichever_way_it_comes_out():
    lower = report.Difference("qk", "simclr", -0.05, 0.01, 3, 3)
    assert "lower by 0.0500 ± 0.0100" in report.describe_difference(lower)
    assert "larger than two standard errors" in report.describe_difference(lower)
    close = report.Difference("qk", "moco", 0.01, 0.02, 3, 3)
    assert "higher by 0.0100" in report.describe_difference(close)
    assert "do not separate" in report.describe_difference(close)


def test_method_names_come_from_the_method_registry(monkeypatch):
    import methods.registry as registry

    # A method registered now (as a new methods/<name>.py would be) is named by its entry alone.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_method("byol", object, display_name="BYOL (no negatives)")(
        type("BYOL", (), {})
    )
    registry.register_method("plain", object)(type("Plain", (), {}))
    qk = registry.get_method("qk").display_name
    assert qk == "QK iteration"
    text = report.describe_difference(report.Difference("qk", "byol", 0.02, 0.01, 3, 3))
    assert text.startswith(f"{qk} vs BYOL (no negatives): µAP higher by 0.0200")
    assert report.describe_difference(
        report.Difference("qk", "plain", 0.02, 0.01, 3, 3)
    ).startswith(f"{qk} vs plain:")
    # A record of a method the registry no longer has keeps its key.
    gone = report.Difference("qk", "removed", 0.02, 0.01, 3, 3)
    assert report.describe_difference(gone).startswith(f"{qk} vs removed:")


def test_main_comparison_comes_from_the_manifest(sweep_dir):
    runs = report.add_group_column(report.load_runs([sweep_dir]).runs, report.DEFAULT_GROUP_BY)
    main = report.main_comparison_runs(runs, sweep_dir)
    # Products whose keys besides method and seed have one value each are the main comparison.
    assert sorted(runs.loc[main, "group"].unique()) == ["moco", "qk (num_negatives=64)", "simclr"]
    # A manifest without its sweep file: the points that set nothing but method and seed.
    spec = (sweep_dir / "sweep.yaml").read_text()
    (sweep_dir / "sweep.yaml").unlink()
    try:
        by_points = report.main_comparison_runs(runs, sweep_dir)
    finally:
        (sweep_dir / "sweep.yaml").write_text(spec)
    assert sorted(runs.loc[by_points, "group"].unique()) == ["qk (num_negatives=64)", "simclr"]
    # Without a manifest: per method the group with the most seeds (here a tie -> first by name).
    fallback = report.main_comparison_runs(runs, None)
    assert sorted(runs.loc[fallback, "group"].unique()) == [
        "moco",
        "qk (num_negatives=256)",
        "simclr",
    ]


def test_figures_paper_writes_summary_with_differences(sweep_dir, fabricated, tmp_path, capsys):  # noqa: F811
    from harness.cli import main

    _, _, expected = fabricated
    out = tmp_path / "paper-report"
    assert main(["figures", "paper", "--sweep-dir", str(sweep_dir), "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert capsys.readouterr().out == summary + "\n"  # printed as written
    qk, simclr = (
        np.asarray(expected[("qk", 64)]["map"]),
        np.asarray(expected[("simclr", 126)]["map"]),
    )
    delta = qk.mean() - simclr.mean()
    se = math.sqrt(qk.var(ddof=1) / 3 + simclr.var(ddof=1) / 3)
    direction = "higher" if delta > 0 else "lower"
    assert f"µAP {direction} by {abs(delta):.4f} ± {se:.4f}" in summary
    assert "0.3403" in summary and "0.2001" in summary and "not this benchmark" in summary
    assert "## Negatives per step" in summary
    assert report.comparison_rule(sweep_dir) in summary
    assert "most seeds" in report.comparison_rule(tmp_path)
    for stem in ("map_by_method", "pr_curves", "map_vs_negatives", "map_vs_compute", "map_by_edit"):
        assert (out / f"{stem}.png").stat().st_size > 0
