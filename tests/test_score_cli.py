"""`python -m harness score`: table, --json, --pr-curve, descriptors, and bad input exits non-zero."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import METRIC_KEYS, run_harness

from harness.cli import main
from harness.isc import Descriptors, l2_normalize, write_descriptors


@pytest.fixture
def gt_csv(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text("query_id,reference_id\nQ1,R1\nQ2,R2\nQ3,\n")
    return path


@pytest.fixture
def predictions_csv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("query_id,reference_id,score\nQ1,R1,0.9\nQ3,R7,0.8\nQ2,R2,0.7\nQ2,R5,0.1\n")
    return path


def test_json_is_exactly_one_object(gt_csv, predictions_csv, capsys):
    assert (
        main(["score", "--gt", str(gt_csv), "--predictions", str(predictions_csv), "--json"]) == 0
    )
    out = capsys.readouterr().out
    result = json.loads(out)
    assert list(result) == METRIC_KEYS
    assert result["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["recall_at_p90"] == 0.5 and result["threshold_at_p90"] == 0.9
    assert result["n_predictions"] == 4 and result["n_gt"] == 2
    assert out.count("\n") == 1


def test_json_null_where_undefined(tmp_path, gt_csv, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("Q3,R1,0.9\nQ1,R1,0.5\n")
    assert main(["score", "--gt", str(gt_csv), "--predictions", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recall_at_p90"] is None


def test_table_and_pr_curve(tmp_path, gt_csv, predictions_csv, capsys):
    png = tmp_path / "curve" / "pr.png"
    argv = [
        "score",
        "--gt",
        str(gt_csv),
        "--predictions",
        str(predictions_csv),
        "--pr-curve",
        str(png),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "µAP" in out and "0.8333" in out and "recall@P90" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_restrict_to_gt_queries(tmp_path, gt_csv, capsys):
    path = tmp_path / "p.csv"
    path.write_text("QX,R1,0.9\nQ1,R1,0.5\n")
    main(["score", "--gt", str(gt_csv), "--predictions", str(path), "--json"])
    assert json.loads(capsys.readouterr().out)["average_precision"] == pytest.approx(0.25)
    main(
        [
            "score",
            "--gt",
            str(gt_csv),
            "--predictions",
            str(path),
            "--json",
            "--restrict-to-gt-queries",
        ]
    )
    assert json.loads(capsys.readouterr().out)["average_precision"] == pytest.approx(0.5)


def make_descriptor_files(tmp_path, d=16):
    rng = np.random.default_rng(0)
    reference = l2_normalize(rng.standard_normal((50, d)).astype(np.float32))
    query = l2_normalize(reference[:3] + 0.05 * rng.standard_normal((3, d)).astype(np.float32))
    training = l2_normalize(rng.standard_normal((40, d)).astype(np.float32))
    write_descriptors(
        tmp_path / "submission.h5",
        query=Descriptors(["Q1", "Q2", "Q3"], query),
        reference=Descriptors([f"R{i}" for i in range(1, 51)], reference),
    )
    write_descriptors(
        tmp_path / "t.h5", training=Descriptors([f"T{i}" for i in range(40)], training)
    )
    return tmp_path / "submission.h5", tmp_path / "t.h5"


def descriptor_track_args(gt, submission) -> list[str]:
    """`score` of the submission's queries against its references."""
    return ["score", "--gt", str(gt), "--queries", str(submission), "--references", str(submission)]


def test_descriptor_track(tmp_path, capsys):
    (tmp_path / "gt.csv").write_text("Q1,R1\nQ2,R2\nQ3,R3\n")
    submission, training = make_descriptor_files(tmp_path)
    base = descriptor_track_args(tmp_path / "gt.csv", submission)
    assert main([*base, "--json", "--write-predictions", str(tmp_path / "pred.csv")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_predictions"] == 30 and result["recall_at_rank1"] == 1.0
    assert len((tmp_path / "pred.csv").read_text().splitlines()) == 31
    assert main([*base, "--json", "--knn", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["n_predictions"] == 6
    assert main([*base, "--json", "--training", str(training), "--score-norm", "isc2021"]) == 0
    assert json.loads(capsys.readouterr().out)["average_precision"] == 1.0
    post = ["--training", str(training), "--pca-whiten", "8", "--subtract-negatives"]
    assert main([*base, "--json", *post]) == 0
    assert json.loads(capsys.readouterr().out)["recall_at_rank1"] == 1.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--score-norm", "isc2021"], "--score-norm need(s) --training"),
        (["--pca-whiten", "8"], "--pca-whiten need(s) --training"),
        (["--max-dim", "8"], "dimension 16 exceeds 8"),
    ],
)
def test_descriptor_option_errors(tmp_path, capsys, extra, message):
    (tmp_path / "gt.csv").write_text("Q1,R1\n")
    submission, _ = make_descriptor_files(tmp_path)
    argv = descriptor_track_args(tmp_path / "gt.csv", submission)
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err


def test_mismatched_dimensions(tmp_path, capsys):
    (tmp_path / "gt.csv").write_text("Q1,R1\n")
    write_descriptors(tmp_path / "q.h5", query=Descriptors(["Q1"], np.ones((1, 8), np.float32)))
    write_descriptors(tmp_path / "r.h5", reference=Descriptors(["R1"], np.ones((1, 4), np.float32)))
    argv = [
        "score",
        "--gt",
        str(tmp_path / "gt.csv"),
        "--queries",
        str(tmp_path / "q.h5"),
        "--references",
        str(tmp_path / "r.h5"),
    ]
    assert main(argv) == 2
    assert "dimensions differ" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        ("Q1,R1,0.5\nQ2,R2,0.5,1\n", "p.csv:2: 4 fields, expected 3"),
        ("qid,rid,score\nQ1,R1,0.5\n", "p.csv:1: unknown columns"),
        ("Q1,R1,0.5\nQ2,R2,abc\n", "p.csv:2: score 'abc'"),
        ("Q1,R1,NaN\n", "p.csv:1: score 'NaN'"),
        ("Q1,R1,0.5\nQ1,R1,0.4\n", "p.csv:2: duplicate prediction"),
        ("", "p.csv: the file is empty"),
    ],
)
def test_bad_predictions_exit_non_zero_with_one_message(tmp_path, gt_csv, capsys, text, message):
    path = tmp_path / "p.csv"
    path.write_text(text)
    assert main(["score", "--gt", str(gt_csv), "--predictions", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err


def test_needs_something_to_score(gt_csv, capsys):
    assert main(["score", "--gt", str(gt_csv)]) == 2
    assert "nothing to score" in capsys.readouterr().err


def test_help_states_the_false_positive_convention():
    out = run_harness("score", "--help", timeout=None, check=True).stdout
    assert "false positives" in out and "--restrict-to-gt-queries" in out
