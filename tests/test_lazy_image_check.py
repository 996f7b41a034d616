"""A run lists its benchmark without opening an image and meets bad images while decoding them:
without data.skip_bad_images the first one fails the run with one line naming it; with it, the run
finishes, a bad query or reference has no descriptor and no ground-truth row, a bad training image
is replaced by the next good one (deterministically), and the record counts them. `data check`
still finds every bad file before anything runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_harness, set_flags, tiny_run_overrides

from harness.cli import main

SKIP_HINT = (
    "to skip bad files, pass --skip-bad-images (data check) or --set data.skip_bad_images=true "
    "(run, sweep)"
)
# Loader worker processes for training and extraction: a bad image is met in a worker.
WORKERS = ("train.num_workers=1", "data.workers=1")
TINY = [
    *tiny_run_overrides("train.budget_value=2", "eval.score_norm_n=2", "membank.num_negatives=8"),
    *WORKERS,
]


def _truncate(path: Path) -> None:
    """An interrupted copy: the JPEG header intact, the end of the scan gone."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])


def _positive_pairs(bench: Path) -> list[tuple[str, str]]:
    lines = (bench / "ground_truth.csv").read_text().splitlines()[1:]
    return [tuple(line.split(",")) for line in lines if line.split(",")[1]]


@pytest.fixture
def bench(tiny_benchmark, tmp_path) -> Path:
    root = tmp_path / "bench"
    shutil.copytree(tiny_benchmark, root)
    return root


def _run_argv(bench: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--method",
        "membank",
        "--data",
        str(bench),
        "--out",
        str(out),
        "--no-progress",
        *set_flags(TINY),
        *extra,
    ]


@pytest.mark.slow
def test_a_corrupt_jpeg_fails_the_run_at_decode_time_with_one_line_naming_it(bench, tmp_path):
    query, reference = _positive_pairs(bench)[0]
    bad = bench / "references" / f"{reference}.jpg"
    _truncate(bad)
    done = run_harness(*_run_argv(bench, tmp_path / "results"), timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"error: {bad}: does not decode (OSError: image file is truncated")
    assert lines[0].endswith(f"; remove it, or {SKIP_HINT}")
    # Listed without opening it: the run trained before it met the file, while describing.
    (run_dir,) = (tmp_path / "results").iterdir()
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert not (run_dir / "record.json").exists()
    # The full check finds it before anything runs.
    check = run_harness("data", "check", str(bench), timeout=120)
    assert check.returncode == 2
    assert check.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: does not decode")


def _break_benchmark(bench: Path) -> dict[str, Path]:
    """One bad file of each kind a run meets: a zero-byte query (the listing's scan sees it), a
    truncated query and a garbage reference (met while describing), a garbage training image (met
    while filling the memory bank and training)."""
    pairs = _positive_pairs(bench)
    bad = {
        "zero-byte query": bench / "queries" / f"{pairs[0][0]}.jpg",
        "truncated query": bench / "queries" / f"{pairs[1][0]}.jpg",
        "garbage reference": bench / "references" / f"{pairs[2][1]}.jpg",
        "garbage training image": sorted((bench / "training").iterdir())[3],
    }
    bad["zero-byte query"].write_bytes(b"")
    _truncate(bad["truncated query"])
    bad["garbage reference"].write_bytes(b"this is not a JPEG")
    bad["garbage training image"].write_bytes(b"this is not a JPEG either")
    return bad


@pytest.fixture(scope="module")
def skipped_runs(tiny_benchmark, tmp_path_factory):
    """The same run, skip on, twice (two results folders) over a benchmark with bad files."""
    from harness.config import resolve_config
    from harness.pipeline import execute_run_dir
    from harness.run_dir import prepare_run_dir

    root = tmp_path_factory.mktemp("skip")
    bench = root / "bench"
    shutil.copytree(tiny_benchmark, bench)
    bad = _break_benchmark(bench)
    cfg = resolve_config("membank", overrides=[*TINY, "data.skip_bad_images=true"], data=str(bench))
    run_dirs = [prepare_run_dir(cfg, root / name) for name in ("first", "second")]
    records = [execute_run_dir(run_dir, progress=False) for run_dir in run_dirs]
    return bench, bad, run_dirs, records


@pytest.mark.slow
def test_with_skip_on_the_run_finishes_and_counts_and_drops_the_skipped_images(skipped_runs):
    from harness.isc import read_descriptors, read_ground_truth, read_predictions

    bench, bad, (run_dir, _), (record, _) = skipped_runs
    assert record["status"] == "complete"
    assert record["benchmark"]["skipped_images"] == 4
    assert record["files"]["skipped_images"] == "skipped_images.tsv"
    logged = {
        line.split("\t")[0]
        for line in (run_dir / "skipped_images.tsv").read_text().split("\n")
        if line
    }
    assert logged == {str(path) for path in bad.values()}
    # No descriptor for a bad query or reference; a bad training image described as such neither.
    ids = {
        split: set(read_descriptors(run_dir / "descriptors.h5", split).ids)
        for split in ("query", "reference", "training")
    }
    assert bad["truncated query"].stem not in ids["query"]
    assert bad["zero-byte query"].stem not in ids["query"]
    assert bad["garbage reference"].stem not in ids["reference"]
    assert bad["garbage training image"].stem not in ids["training"]
    gt = read_ground_truth(bench / "ground_truth.csv")
    assert record["benchmark"]["n_queries"] == len(gt.queries) - 2
    assert record["benchmark"]["n_references"] == len(list((bench / "references").iterdir())) - 1
    assert record["benchmark"]["n_training"] == len(list((bench / "training").iterdir()))
    # The ground truth scored lost exactly the pairs of the three skipped query/reference files.
    assert record["benchmark"]["n_gt"] == len(gt.query) - 3 == record["metrics"]["raw"]["n_gt"]
    predicted = set(read_predictions(run_dir / "predictions.csv").query)
    assert not predicted & {bad["truncated query"].stem, bad["zero-byte query"].stem}


@pytest.mark.slow
def test_a_bad_training_image_is_substituted_the_same_way_every_time(skipped_runs):
    from harness.isc import read_descriptors

    _, _, run_dirs, records = skipped_runs
    for split in ("query", "reference", "training"):
        first, second = (read_descriptors(d / "descriptors.h5", split) for d in run_dirs)
        assert list(first.ids) == list(second.ids)
        assert np.array_equal(first.features, second.features)
    logs = [(d / "train_log.jsonl").read_text() for d in run_dirs]
    assert [json.loads(line)["loss"] for line in logs[0].splitlines()] == [
        json.loads(line)["loss"] for line in logs[1].splitlines()
    ]
    assert records[0]["metrics"] == records[1]["metrics"]


@pytest.mark.slow
def test_a_resumed_run_counts_each_skipped_image_once(skipped_runs):
    from harness.pipeline import execute_run_dir

    _, _, (run_dir, _), (record, _) = skipped_runs
    (run_dir / "record.json").unlink()  # killed after training: the rerun describes again
    lines_before = len((run_dir / "skipped_images.tsv").read_text().splitlines())
    again = execute_run_dir(run_dir, progress=False)
    assert len((run_dir / "skipped_images.tsv").read_text().splitlines()) > lines_before
    assert again["benchmark"]["skipped_images"] == 4
    assert again["metrics"] == record["metrics"]


def test_data_check_finds_the_bad_files_a_run_would_meet_late(bench, capsys):
    bad = _break_benchmark(bench)
    assert main(["data", "check", str(bench)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith(f"error: {bad['garbage reference']}: does not decode")
    assert main(["data", "check", "--skip-bad-images", str(bench)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {entry["path"] for entry in summary["skipped"]} == {str(p) for p in bad.values()}
    assert summary["skipped_images"] == 4
