"""`python -m harness bench`: discovery, table, JSON with machine info (no timing assertions)."""

from __future__ import annotations

import json
import math
import re

import pytest
from conftest import run_harness

from harness.benchmarks import discover
from harness.benchmarks import metrics as metrics_bench
from harness.benchmarks import scale as scale_bench
from harness.benchmarks import search as search_bench
from harness.cli import main
from harness.commands.bench import format_table
from harness.isc import evaluate


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(metrics_bench, "QUICK_SIZES", (2_000,))
    monkeypatch.setattr(search_bench, "QUICK_CASES", ((200, 3_000, 16),))


def test_modules_are_discovered():
    modules = discover()
    assert {"metrics", "search", "scale"} <= set(modules)
    for module in modules.values():
        assert isinstance(module.DESCRIPTION, str) and callable(module.run)


def test_bench_writes_table_and_json(tiny, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "metrics", "search", "--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## metrics" in printed and "## search" in printed and "reference_seconds" in printed
    report = json.loads(out.read_text())
    assert report["quick"] is True
    assert {"cpu_count", "torch", "faiss", "device"} <= set(report["machine"])
    metrics_rows = report["benchmarks"]["metrics"]["rows"]
    assert [row["identical"] for row in metrics_rows] == [True]
    assert all(row["seconds"] > 0 and row["reference_seconds"] > 0 for row in metrics_rows)
    (search_row,) = report["benchmarks"]["search"]["rows"]
    assert search_row["results"] == search_row["max_results"] == 2_000


def test_unknown_benchmark_is_a_clear_error(capsys):
    assert main(["bench", "nonsense", "--quick"]) == 2
    assert "unknown benchmark(s) nonsense" in capsys.readouterr().err


def test_bench_reference_agrees_with_the_vectorized_metrics():
    gt, predictions = metrics_bench.synthetic_case(5_000, seed=3)
    pairs, rows = metrics_bench.as_plain_lists(gt, predictions)
    expected = metrics_bench.reference_metrics(pairs, rows)
    got = evaluate(gt, predictions).to_dict()
    assert expected["recall_at_p90"] is not None  # the case exercises every metric
    for key, value in expected.items():
        assert got[key] == value, key


def test_score_bench_times_the_command_against_the_plain_reading_and_metrics(monkeypatch):
    from harness.benchmarks import score as score_bench

    monkeypatch.setattr(score_bench, "QUICK_SIZE", 3_000)
    (row,) = score_bench.run(quick=True)
    assert row["identical"] is True and row["n_predictions"] > 2_900
    assert row["seconds"] > 0 and row["reference_seconds"] > 0 and row["read_seconds"] > 0
    assert row["speedup"] == row["reference_seconds"] / row["seconds"]


def test_score_bench_reference_reads_what_the_harness_reads(tmp_path):
    from harness.benchmarks import score as score_bench
    from harness.isc import (
        read_ground_truth,
        read_predictions,
        write_ground_truth,
        write_predictions,
    )

    gt, predictions = metrics_bench.synthetic_case(4_000, seed=2)
    write_ground_truth(tmp_path / "gt.csv", gt)
    write_predictions(tmp_path / "p.csv", predictions)
    expected, _ = score_bench.plain_score(tmp_path / "gt.csv", tmp_path / "p.csv")
    read = read_ground_truth(tmp_path / "gt.csv"), read_predictions(tmp_path / "p.csv")
    got = evaluate(*read).to_dict()
    assert expected["recall_at_p90"] is not None
    assert {key: got[key] for key in expected} == expected


def test_format_table_aligns_columns():
    table = format_table(
        [{"case": "a", "seconds": 1.5, "ok": True}, {"case": "bb", "seconds": 0.25, "ok": False}]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["case", "seconds", "ok"]
    # Numbers right-aligned under their header: both values end where "seconds" ends.
    end = lines[0].index("seconds") + len("seconds")
    assert lines[2][:end].endswith("1.5") and lines[3][:end].endswith("0.25")
    assert "NO" in lines[3]


@pytest.mark.slow
def test_quick_bench_runs_unchanged(tmp_path):
    """What CI promises: `bench --quick` at its real quick sizes (figures printed, not asserted)."""
    out = tmp_path / "quick.json"
    done = run_harness(
        "bench", "metrics", "search", "--quick", "--json", str(out), timeout=None, check=True
    )
    print(done.stdout)
    report = json.loads(out.read_text())
    assert all(row["identical"] for row in report["benchmarks"]["metrics"]["rows"])
    assert all(
        row["results"] == row["max_results"] for row in report["benchmarks"]["search"]["rows"]
    )


def test_scale_fits_the_growth_exponent_and_flags_faster_growth():
    sizes = (1_000, 10_000, 100_000)
    assert scale_bench.slope(sizes, [2e-6 * n**1.5 for n in sizes]) == pytest.approx(1.5)
    assert scale_bench.slope(sizes, [1.0, 0.0, 2.0]) is None  # no log of 0
    stage = next(s for s in scale_bench.STAGES if s.name == "list")
    results = [
        {"seconds": 1e-6 * n**1.3, "runs": 1, "peak_mb": 0.5, "inputs_mb": 400.0} for n in sizes
    ]
    row = scale_bench.stage_row(stage, sizes, results)
    assert row["exponent"] == pytest.approx(1.3) and row["expected"] == 1
    assert row["as_expected"] is False  # more than 0.2 above linear
    assert row["memory_exponent"] is None  # rises under 1 MB are noise
    assert row["per_100k_s"] == pytest.approx(results[-1]["seconds"])  # at 100k files
    search = next(s for s in scale_bench.STAGES if s.name == "search")
    row = scale_bench.stage_row(search, sizes, [{**r, "peak_mb": 10.0} for r in results])
    assert row["as_expected"] is True and row["per_100k_s"] is None
    assert row["memory_exponent"] == pytest.approx(0.0)


@pytest.mark.slow
def test_quick_scale_bench_measures_every_stage(tmp_path):
    """`bench scale --quick` as CI runs it: every stage at 3 sizes, each with a time, a peak memory
    and a finite growth exponent, in the table and the JSON (figures printed, not asserted)."""
    out = tmp_path / "scale.json"
    done = run_harness("bench", "scale", "--quick", "--json", str(out), timeout=None, check=True)
    print(done.stdout)
    rows = json.loads(out.read_text())["benchmarks"]["scale"]["rows"]
    names = [stage.name for stage in scale_bench.STAGES]
    assert [row["stage"] for row in rows] == names
    lines = done.stdout.splitlines()
    for row, stage in zip(rows, scale_bench.STAGES, strict=True):
        assert [row[f"size_{i}"] for i in (1, 2, 3)] == list(stage.quick)
        assert all(row[f"seconds_{i}"] > 0 for i in (1, 2, 3))
        assert all(row[f"peak_mb_{i}"] is not None for i in (1, 2, 3))
        assert math.isfinite(row["exponent"]) and row["expected"] == stage.expected
        printed = re.compile(rf"scale +{re.escape(stage.name)} +[0-9]")
        assert any(printed.match(line) for line in lines), stage.name
