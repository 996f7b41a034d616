"""What a careless or unlucky user feeds `harness report`, and the tables must not lie about:
benchmarks that share a `--data` string, values that are not numbers, groups that mix protocols,
and runs resumed after an interruption. Records are made by `harness.record.build_record`, as a run
makes them."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from harness import report
from harness.cli import main
from harness.record import benchmark_fingerprint, build_record

DOCS = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"


def _benchmark(root: Path, *, training: int = 4, gt_extra: str = "") -> Path:
    """A benchmark directory as the layout reader finds it; the images are never decoded here."""
    root.mkdir(parents=True)
    for split, prefix, n in (
        ("references", "R", 3),
        ("queries", "Q", 2),
        ("training", "T", training),
    ):
        (root / split).mkdir()
        for i in range(n):
            (root / split / f"{prefix}{i:06d}.jpg").write_bytes(b"\xff\xd8" + bytes(10 + i))
    (root / "ground_truth.csv").write_text(f"query_id,reference_id\nQ000000,R000001\n{gt_extra}")
    return root


def _config(method: str, seed: int, run_id: str, data: str, **sections) -> dict:
    config = {
        "method": method,
        "seed": seed,
        "run_id": run_id,
        "data": {"spec": data, "workers": 2},
        "model": {"backbone": "resnet10t", "embedding_dim": 128},
        "train": {"budget_kind": "steps", "budget_value": 50, "lr": 0.06},
        method: {"temperature": 0.1},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def _write(
    results: Path,
    run_id: str,
    config: dict,
    *,
    map_value: float = 0.4,
    r90: float | None = 0.2,
    total: float = 100.0,
    earlier: dict | None = None,
    resumed_from: int | None = None,
    **benchmark,
) -> Path:
    """One run directory with the record `build_record` makes for this config."""
    record = build_record(
        config=config,
        benchmark={"path": config["data"]["spec"], "n_queries": 2, **benchmark},
        augmentation={"preset": "copy-edit"},
        device="cpu (test)",
        budget={
            "kind": config["train"]["budget_kind"],
            "value": config["train"]["budget_value"],
            "steps": config["train"]["budget_value"],
            "images_seen": 32 * config["train"]["budget_value"],
            "train_seconds": total / 2,
            "resumed_from": resumed_from,
        },
        negatives_per_step=62,
        timings={"train": total / 2, "total": total},
        peak_memory={"cpu_rss": 800.0, "cuda": None},
        metrics_raw={"average_precision": map_value, "recall_at_p90": r90, "recall_at_rank1": 0.5},
        metrics_normalized=None,
        files={"predictions": "predictions.csv"},
        git={"commit": "0" * 40, "dirty": False},
        versions={"python": "3"},
        earlier_timings=earlier,
    )
    run_dir = results / run_id
    run_dir.mkdir(parents=True)
    # allow_nan: a record damaged or written by hand may hold NaN/Infinity; json reads them back.
    (run_dir / "record.json").write_text(json.dumps(record, allow_nan=True))
    return run_dir


def _table(built) -> dict[str, dict[str, str]]:
    return {row["group"]: row for row in built.table.to_dict("records")}


# --- 1. the benchmark is its identity, never the string typed after --data ----------------------


def test_the_same_data_string_from_two_folders_makes_two_benchmarks(tmp_path, monkeypatch):
    results = tmp_path / "results"
    for folder, maps in (("lab-a", (0.30, 0.32)), ("lab-b", (0.60, 0.64))):
        _benchmark(tmp_path / folder / "bench", training=4 if folder == "lab-a" else 6)
        monkeypatch.chdir(tmp_path / folder)  # `cd lab-a; harness run --data bench`
        for seed, value in enumerate(maps):
            _write(
                results,
                f"{folder}-s{seed}",
                _config("qk", seed, f"{folder}-s{seed}", "bench"),
                map_value=value,
            )
    monkeypatch.chdir(tmp_path)
    built = report.build_report([results], tmp_path / "out", figures=False, edits=False)
    table = _table(built)
    a, b = (f"qk (benchmark={(tmp_path / f / 'bench').resolve()})" for f in ("lab-a", "lab-b"))
    assert set(table) == {a, b}
    assert table[a]["seeds"] == "2" and table[a]["µAP"] == "0.3100 ± 0.0141"
    assert table[b]["seeds"] == "2" and table[b]["µAP"] == "0.6200 ± 0.0283"
    # `--group-by method` may not pool them either: the benchmark is part of the protocol.
    pooled = report.build_report(
        [results], tmp_path / "out2", group_by=["method"], figures=False, edits=False
    )
    assert set(_table(pooled)) == {a, b}
    assert any("differed in benchmark" in note for note in pooled.notes)


def test_a_copy_of_one_benchmark_is_merged_only_when_its_path_is_ignored(tmp_path):
    original = _benchmark(tmp_path / "bench")
    copy = tmp_path / "scratch" / "bench"
    shutil.copytree(original, copy)
    other = _benchmark(tmp_path / "other", gt_extra="Q000001,R000002\n")
    assert benchmark_fingerprint(copy) == benchmark_fingerprint(original)
    assert benchmark_fingerprint(other) != benchmark_fingerprint(original)
    results = tmp_path / "results"
    for seed, bench in enumerate((original, copy, other)):
        _write(results, f"qk-s{seed}", _config("qk", seed, f"qk-s{seed}", str(bench)))
    by_path = report.build_report([results], tmp_path / "o1", figures=False, edits=False)
    assert len(by_path.summary) == 3
    by_content = report.build_report(
        [results],
        tmp_path / "o2",
        ignored_keys=["seed", "run_id", "benchmark"],
        figures=False,
        edits=False,
    )
    assert sorted(by_content.summary["n_seeds"]) == [1, 2]  # the copy joins; `other` never does


def test_the_fingerprint_follows_names_sizes_and_the_ground_truth_not_the_layout(tmp_path):
    bench = _benchmark(tmp_path / "bench")
    first = benchmark_fingerprint(bench)
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    (bench / "training").rename(bench / "train")  # DISC21's spelling of the same split
    assert benchmark_fingerprint(bench) == first
    image = bench / "train" / "T000000.jpg"
    image.write_bytes(image.read_bytes() + b"\0")
    assert benchmark_fingerprint(bench) != first
    image.write_bytes(image.read_bytes()[:-1])
    (bench / "queries" / "Q000009.png").write_bytes(b"x")
    assert benchmark_fingerprint(bench) != first
    (bench / "queries" / "Q000009.png").unlink()
    (bench / "queries" / "notes.txt").write_text("not an image")
    assert benchmark_fingerprint(bench) == first
    (bench / "ground_truth.csv").write_text("query_id,reference_id\nQ000000,R000002\n")
    assert benchmark_fingerprint(bench) != first
    assert benchmark_fingerprint(tmp_path / "nowhere") is None


def test_build_record_adds_the_resolved_path_and_fingerprint(tmp_path, monkeypatch):
    bench = _benchmark(tmp_path / "bench")
    monkeypatch.chdir(tmp_path)
    run_dir = _write(tmp_path / "results", "r", _config("qk", 0, "r", "bench"))
    block = json.loads((run_dir / "record.json").read_text())["benchmark"]
    assert block["path"] == "bench"
    assert block["resolved_path"] == str(bench.resolve())
    assert block["fingerprint"] == benchmark_fingerprint(bench)


def test_old_records_fall_back_to_the_resolved_path_and_say_so(tmp_path, monkeypatch):
    results = tmp_path / "results"
    for folder in ("a", "b"):
        bench = _benchmark(tmp_path / folder / "bench")
        run_dir = _write(results, f"old-{folder}", _config("qk", 0, f"old-{folder}", str(bench)))
        record = json.loads((run_dir / "record.json").read_text())
        del record["benchmark"]["resolved_path"], record["benchmark"]["fingerprint"]
        (run_dir / "record.json").write_text(json.dumps(record))
    lost = _write(results, "old-lost", _config("qk", 1, "old-lost", "gone/bench"))
    record = json.loads((lost / "record.json").read_text())
    del record["benchmark"]["resolved_path"], record["benchmark"]["fingerprint"]
    (lost / "record.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    loaded = report.load_runs([results])
    assert loaded.runs["setting_id"].nunique() == 3  # two folders, and one that is gone
    assert loaded.notes == [
        report.records.NO_FINGERPRINT_NOTE.format(n=3)
        + "; "
        + report.records.UNRESOLVED_NOTE.format(n=1, paths="'gone/bench'")
    ]


def test_per_edit_scores_are_refused_when_the_benchmark_changed_since_the_run(tmp_path):
    bench = _benchmark(tmp_path / "bench")
    (bench / "metadata.csv").write_text(
        "query_id,reference_id,source_id,edits\nQ000000,R000001,,blur\nQ000001,,,crop\n"
    )
    run_dir = _write(tmp_path / "results", "r", _config("qk", 0, "r", str(bench)))
    (run_dir / "predictions.csv").write_text("query_id,reference_id,score\nQ000000,R000001,0.9\n")
    fingerprint = benchmark_fingerprint(bench)
    (bench / "ground_truth.csv").write_text("query_id,reference_id\nQ000000,R000002\n")
    built = report.build_report([tmp_path / "results"], tmp_path / "out", figures=False)
    assert built.edit_summary.empty
    assert [s.reason for s in built.skipped] == [
        f"per-edit table: {bench} has changed since the run (fingerprint {fingerprint} then, "
        f"{benchmark_fingerprint(bench)} now)"
    ]


# --- 2. what was averaged is counted; NaN and inf are not numbers --------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "n/a"])
def test_a_metric_that_is_not_a_finite_number_is_counted_out_and_named(tmp_path, bad):
    results = tmp_path / "results"
    bench = _benchmark(tmp_path / "bench")
    for seed, r90 in enumerate((0.20, 0.30, bad)):
        _write(results, f"qk-s{seed}", _config("qk", seed, f"qk-s{seed}", str(bench)), r90=r90)
    built = report.build_report([results], tmp_path / "out", figures=False, edits=False)
    row = built.summary.iloc[0]
    assert row["n_seeds"] == 3 and row["recall_at_p90_n"] == 2 and row["map_n"] == 3
    assert row["recall_at_p90_mean"] == pytest.approx(0.25)
    assert built.table.iloc[0]["R@P90"] == "0.2500 ± 0.0707 (2 of 3)"
    assert built.table.iloc[0]["µAP"] == "0.4000"  # every seed has it: no mark
    assert (
        f"{results / 'qk-s2'}: metrics.raw.recall_at_p90 is {bad!r}, not a finite number; "
        "left out of its group's mean" in built.notes
    )
    assert report.tables.COUNT_NOTE in built.notes
    text = (tmp_path / "out" / "report.md").read_text()
    assert "(2 of 3)" in text and "not a finite number" in text


def test_an_undefined_metric_is_counted_out_without_blame(tmp_path):
    results = tmp_path / "results"
    bench = _benchmark(tmp_path / "bench")
    for seed, r90 in enumerate((0.20, None, None)):
        _write(results, f"qk-s{seed}", _config("qk", seed, f"qk-s{seed}", str(bench)), r90=r90)
    built = report.build_report([results], tmp_path / "out", figures=False, edits=False)
    assert built.table.iloc[0]["R@P90"] == "0.2000 (1 of 3)"
    assert not any("not a finite number" in note for note in built.notes)


def test_a_record_whose_map_is_infinite_is_skipped_not_printed(tmp_path):
    results = tmp_path / "results"
    bench = _benchmark(tmp_path / "bench")
    _write(results, "qk-s0", _config("qk", 0, "qk-s0", str(bench)), map_value=0.4)
    _write(results, "qk-s1", _config("qk", 1, "qk-s1", str(bench)), map_value=math.inf)
    built = report.build_report([results], tmp_path / "out", figures=False, edits=False)
    assert built.table.iloc[0]["µAP"] == "0.4000" and built.table.iloc[0]["seeds"] == "1"
    assert [s.reason for s in built.skipped] == [
        "metrics.raw.average_precision is missing or not a finite number"
    ]


def test_the_edit_table_marks_a_family_averaged_over_fewer_runs():
    import pandas as pd

    runs = pd.DataFrame({"run_id": ["a", "b"], "method": ["qk", "qk"], "setting": ["default"] * 2})
    edits = pd.DataFrame(
        {"run_id": ["a", "b"], "family": ["blur", "blur"], "map": [0.5, math.nan], "n_gt": [3, 3]}
    )
    edit_summary = report.summarize_edits(runs, edits)
    assert edit_summary.iloc[0][["map_n", "n_seeds"]].tolist() == [1, 2]
    assert report.edit_table(edit_summary).iloc[0]["blur"] == "0.5000 (1 of 2)"


# --- 3. a group never mixes protocols -------------------------------------------------------------


def _protocol_runs(tmp_path: Path, seeds=((0, 1), (0, 1))) -> Path:
    """qk at budgets 50 and 103 (seeds 0, 1 each) and simclr at 50: `--group-by method` bait."""
    results = tmp_path / "results"
    bench = _benchmark(tmp_path / "bench")
    for budget, maps, budget_seeds in zip(
        (50, 103), ((0.30, 0.32), (0.50, 0.54)), seeds, strict=True
    ):
        for seed, value in zip(budget_seeds, maps, strict=True):
            run_id = f"qk-{budget}-s{seed}"
            config = _config("qk", seed, run_id, str(bench), train={"budget_value": budget})
            _write(results, run_id, config, map_value=value)
    for seed in (0, 1):
        _write(results, f"simclr-s{seed}", _config("simclr", seed, f"simclr-s{seed}", str(bench)))
    return results


def test_group_by_method_splits_groups_whose_budgets_differ_and_names_the_key(tmp_path):
    results = _protocol_runs(tmp_path)
    built = report.build_report(
        [results], tmp_path / "out", group_by=["method"], figures=False, edits=False
    )
    table = _table(built)
    assert set(table) == {
        "qk (train.budget_value=50)",
        "qk (train.budget_value=103)",
        "simclr (train.budget_value=50)",
    }
    assert table["qk (train.budget_value=50)"]["budget"] == "50 steps"
    assert table["qk (train.budget_value=103)"]["budget"] == "103 steps"
    assert table["qk (train.budget_value=50)"]["seeds"] == "2"
    assert table["qk (train.budget_value=103)"]["µAP"] == "0.5200 ± 0.0283"
    assert built.notes[-1] == report.tables.SPLIT_NOTE.format(
        asked="method", keys="train.budget_value"
    )
    assert "76.5" not in (tmp_path / "out" / "main.md").read_text()


def test_every_differing_protocol_key_is_named(tmp_path):
    results = _protocol_runs(tmp_path)
    bench = tmp_path / "bench"
    config = _config("simclr", 2, "simclr-big", str(bench), model={"backbone": "resnet50"})
    _write(results, "simclr-big", config)
    grouping = report.tables.protocol_grouping(
        report.load_runs([results]).runs, ["method"], report.load_runs([results]).config_columns
    )
    assert grouping.split_by == ["model.backbone", "train.budget_value"]


def test_pooling_on_purpose_shows_every_budget_and_says_what_it_pooled(tmp_path):
    results = _protocol_runs(tmp_path, seeds=((0, 1), (2, 3)))
    built = report.build_report(
        [results],
        tmp_path / "out",
        group_by=["method"],
        ignored_keys=["seed", "run_id", "train.budget_value"],
        figures=False,
        edits=False,
    )
    table = _table(built)
    assert table["qk"]["budget"] == "50/103 steps"  # never a budget no run had
    assert table["qk"]["seeds"] == "4"


def test_pooling_a_methods_own_settings_is_marked(tmp_path):
    results = tmp_path / "results"
    bench = _benchmark(tmp_path / "bench")
    for negatives in (64, 256):
        for seed in (0, 1, 2):
            run_id = f"qk-{negatives}-s{seed}"
            config = _config("qk", seed, run_id, str(bench), qk={"num_negatives": negatives})
            _write(results, run_id, config)
    built = report.build_report(
        [results], tmp_path / "out", group_by=["method"], figures=False, edits=False
    )
    assert built.table.iloc[0]["seeds"] == "6 (2 settings)"
    assert report.tables.POOLED_NOTE.format(group="qk", n=2, keys="qk.num_negatives") in built.notes
    default = report.build_report([results], tmp_path / "out2", figures=False, edits=False)
    assert sorted(default.table["seeds"]) == ["3", "3"] and not any(
        "pools" in note for note in default.notes
    )


# --- 4. wall-clock adds up across interruptions ---------------------------------------------------


def test_build_record_adds_the_earlier_processes_time(tmp_path):
    bench = _benchmark(tmp_path / "bench")
    run_dir = _write(
        tmp_path / "results",
        "r",
        _config("qk", 0, "r", str(bench)),
        total=100.0,
        resumed_from=40,
        earlier={"train": 300.0, "total": 300.0},
    )
    record = json.loads((run_dir / "record.json").read_text())
    assert record["timings"] == {"train": 350.0, "total": 400.0}
    assert record["timings_before_resume"] == {"train": 300.0, "total": 300.0}


def test_a_resumed_run_whose_wall_clock_counts_one_process_is_left_out(tmp_path):
    results = tmp_path / "results"
    bench = _benchmark(tmp_path / "bench")
    _write(results, "qk-s0", _config("qk", 0, "qk-s0", str(bench)), total=400.0)
    _write(results, "qk-s1", _config("qk", 1, "qk-s1", str(bench)), total=100.0, resumed_from=40)
    _write(
        results,
        "qk-s2",
        _config("qk", 2, "qk-s2", str(bench)),
        total=100.0,
        resumed_from=40,
        earlier={"train": 300.0, "total": 300.0},
    )
    built = report.build_report([results], tmp_path / "out", figures=False, edits=False)
    assert built.table.iloc[0]["wall-clock (s)"] == "400.0 (2 of 3)"
    assert (
        f"{results / 'qk-s1'}: timings.total counts only the last process of this run, resumed at "
        "step 40 (a record from before timings were carried across resumes); left out of its "
        "group's mean"
    ) in built.notes


# --- what the user reads ---------------------------------------------------------------------------


def _cli_notes(results: Path, out: Path, capsys) -> list[str]:
    argv = ["report", str(results), "--out", str(out), "--group-by", "method", "--no-figures"]
    assert main([*argv, "--no-edits"]) == 0
    err = capsys.readouterr().err
    return [
        line.replace(str(results), "results")
        for line in err.splitlines()
        if line.startswith("note: ")
    ]


def test_the_cli_prints_each_note_on_stderr_as_documented(tmp_path, capsys, monkeypatch):
    """docs/troubleshooting.md, "Reports": every message there, word for word, and no other."""
    results = _protocol_runs(tmp_path)
    bench = tmp_path / "bench"
    _write(results, "simclr-s2", _config("simclr", 2, "simclr-s2", str(bench)), r90=math.inf)
    _write(results, "simclr-s3", _config("simclr", 3, "simclr-s3", str(bench)), resumed_from=40)
    shown = _cli_notes(results, tmp_path / "out", capsys)
    assert len(shown) == 4

    pooled = tmp_path / "pooled"
    for negatives in (64, 256):
        config = _config("qk", 0, f"qk-{negatives}", str(bench), qk={"num_negatives": negatives})
        _write(pooled, f"qk-{negatives}", config)
    old = _write(pooled, "old", _config("simclr", 0, "old", "bench"))
    record = json.loads((old / "record.json").read_text())
    del record["benchmark"]["resolved_path"], record["benchmark"]["fingerprint"]
    (old / "record.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path / "results")  # where no `bench` folder is
    shown += _cli_notes(pooled, tmp_path / "out2", capsys)
    assert len(shown) == 6

    section = DOCS.read_text().partition("\n## Reports\n")[2].partition("\n## ")[0]
    documented = re.findall(r"`(note: [^`]*)`", section)
    assert sorted(shown) == sorted(documented)
