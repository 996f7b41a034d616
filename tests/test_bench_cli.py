"""`python -m harness bench`: discovery, table, JSON with machine info (no timing assertions)."""

from __future__ import annotations

import json

import pytest
from conftest import run_harness

from harness.benchmarks import discover
from harness.benchmarks import metrics as metrics_bench
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
    assert {"metrics", "search"} <= set(modules)
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
