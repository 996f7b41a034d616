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


# ---------------------------------------------------------------------------------------------
# Silently wrong numbers: the same pairs score the same, whatever the spelling
# ---------------------------------------------------------------------------------------------


def score_json(capsys, *argv) -> dict:
    assert main(["score", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "gt_text",
    [
        "query_id,reference_id\nQ1 ,R1 \nQ2 ,R2\nQ3 ,\n",
        "query_id,reference_id\n Q1, R1\n\tQ2\t,R2\nQ3,\n",
        'QUERY_ID,REFERENCE_ID\r\n"Q1","R1"\r\nQ2,R2\r\nQ3\r\n',
    ],
)
def test_ground_truth_spellings_score_like_the_plain_file(
    tmp_path, gt_csv, predictions_csv, capsys, gt_text
):
    plain = score_json(capsys, "--gt", gt_csv, "--predictions", predictions_csv)
    odd = tmp_path / "odd.csv"
    odd.write_text(gt_text)
    assert score_json(capsys, "--gt", odd, "--predictions", predictions_csv) == plain
    assert plain["average_precision"] == pytest.approx((1 + 2 / 3) / 2)


def test_a_ground_truth_header_with_other_names_is_an_error_not_a_pair(
    tmp_path, predictions_csv, capsys
):
    gt = tmp_path / "gt.csv"
    gt.write_text("qid,rid\nQ1,R1\nQ2,R2\nQ3,\n")
    assert main(["score", "--gt", str(gt), "--predictions", str(predictions_csv)]) == 2
    assert capsys.readouterr().err == (
        f"error: {gt}:1: unknown columns 'qid,rid', expected query_id,reference_id (the first "
        "line is not an id pair like the lines below it: name the columns "
        "query_id,reference_id, or remove the line)\n"
    )


# ---------------------------------------------------------------------------------------------
# Ids that never meet the ground truth's: an error naming the counts and the likely cause
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, cause",
    [
        (
            "Q1.jpg,R1.jpg,0.9\nQ2.jpg,R2.jpg,0.7\n",
            "none of the 2 query ids in {p} and none of the 2 reference ids in {p} is in {gt}, "
            "so every metric would be 0: ids differ in form ('Q1.jpg' here, 'Q1' in {gt}); "
            "write ids as image names without folder or extension",
        ),
        (
            "queries/q1,R1,0.9\nqueries/q2,R5,0.7\n",
            "none of the 2 query ids in {p} is in {gt}, so every metric would be 0: ids differ "
            "in form ('queries/q1' here, 'Q1' in {gt}); write ids as image names without "
            "folder or extension",
        ),
        (
            "R1,Q1,0.9\nR2,Q2,0.7\n",
            "none of the 2 query ids in {p} and none of the 2 reference ids in {p} is in {gt}, "
            "so every metric would be 0: queries and references look swapped ('R1' is on the "
            "other side in {gt})",
        ),
        (
            "Q1,X1,0.9\nQ2,X2,0.7\n",
            "none of the 2 reference ids in {p} is in {gt}, so every metric would be 0: the "
            "files seem to come from different benchmarks ('X1' here, 'R1' in {gt})",
        ),
    ],
)
def test_disjoint_ids_are_an_error_unless_allowed(tmp_path, gt_csv, capsys, text, cause):
    path = tmp_path / "p.csv"
    path.write_text(text)
    argv = ["score", "--gt", str(gt_csv), "--predictions", str(path), "--json"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    message = cause.format(p=path, gt=gt_csv)
    assert captured.out == ""
    assert captured.err == f"error: {message} (pass --allow-disjoint-ids if this is intended)\n"

    assert main([*argv, "--allow-disjoint-ids"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["average_precision"] == 0.0
    assert captured.err == f"warning: {message}\n"


def test_swapped_descriptor_files_are_an_error(tmp_path, capsys):
    (tmp_path / "gt.csv").write_text("Q1,R1\nQ2,R2\nQ3,R3\n")
    submission, _ = make_descriptor_files(tmp_path)
    write_descriptors(tmp_path / "q.h5", query=read_split(submission, "query"))
    write_descriptors(tmp_path / "r.h5", reference=read_split(submission, "reference"))
    argv = ["score", "--gt", str(tmp_path / "gt.csv")]
    swapped = [*argv, "--queries", str(tmp_path / "r.h5"), "--references", str(tmp_path / "q.h5")]
    assert main(swapped) == 2
    assert capsys.readouterr().err == (
        f"error: none of the 50 query ids in {tmp_path / 'r.h5'} and none of the 3 reference ids "
        f"in {tmp_path / 'q.h5'} is in {tmp_path / 'gt.csv'}, so every metric would be 0: "
        f"queries and references look swapped ('R1' is on the other side in "
        f"{tmp_path / 'gt.csv'}) (pass --allow-disjoint-ids if this is intended)\n"
    )


def read_split(path, split):
    from harness.isc import read_descriptors

    return read_descriptors(path, split)


def test_partial_overlap_is_a_warning_with_counts(tmp_path, gt_csv, capsys):
    path = tmp_path / "p.csv"
    path.write_text("Q1,R1,0.9\nQ8,R1,0.8\nQ8,R2,0.7\nQ9,R2,0.6\n")
    assert main(["score", "--gt", str(gt_csv), "--predictions", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n_predictions"] == 4
    assert captured.err == (
        f"warning: 2 of 3 query ids in {path} are not in {gt_csv}; their 3 predictions count as "
        "false positives, as in isc2021 (--restrict-to-gt-queries drops them)\n"
    )
    main(["score", "--gt", str(gt_csv), "--predictions", str(path), "--restrict-to-gt-queries"])
    assert "their 3 predictions are left out (--restrict-to-gt-queries)" in capsys.readouterr().err


@pytest.mark.parametrize("form", ["Q{}", "query-image-{:06d}", "Qé{}"])
@pytest.mark.parametrize("complete", [False, True])
def test_overlap_counts_are_the_set_counts(form, complete):
    """The overlap checks look ids up as integer keys (packed when short ASCII, factorized
    otherwise); their counts must be those of plain Python sets."""
    from harness.isc import GroundTruth
    from harness.isc.id_overlap import ScoredIds, disjoint_ids, partial_overlap

    rng = np.random.default_rng(0)
    gt_queries = [form.format(i) for i in range(0, 60, 2)]
    gt = GroundTruth(
        queries=gt_queries, query=gt_queries[:10], reference=[f"R{i}" for i in range(10)]
    )
    query = np.array([form.format(i) for i in rng.integers(0, 80, 500)])
    reference = np.array([f"R{i}" for i in rng.integers(5, 40, 500)])
    ids = ScoredIds(query, reference, "p.csv", "p.csv", complete)
    assert disjoint_ids(gt, ids, "gt.csv") is None
    (absent, *lost) = partial_overlap(gt, ids, "gt.csv", restrict_to_gt_queries=False)
    outside = [q for q in query.tolist() if q not in set(gt_queries)]
    assert absent.startswith(
        f"{len(set(outside)):,} of {len(set(query.tolist())):,} query ids in p.csv are not in "
        "gt.csv; " + ("their candidates" if complete else f"their {len(outside):,} predictions")
    )
    if complete:
        pairs = list(zip(gt.query.tolist(), gt.reference.tolist(), strict=True))
        no_query = sum(q not in set(query.tolist()) for q, _ in pairs)
        no_reference = sum(r not in set(reference.tolist()) for _, r in pairs)
        lost_pairs = sum(
            q not in set(query.tolist()) or r not in set(reference.tolist()) for q, r in pairs
        )
        assert lost == [
            f"{lost_pairs:,} of 10 ground-truth pairs in gt.csv can never be found: {no_query:,} "
            f"have no query descriptor in p.csv, {no_reference:,} no reference descriptor in p.csv"
        ]
    far = ScoredIds(np.array([form.format(i) for i in range(100, 103)]), reference, "p", "p", False)
    assert disjoint_ids(gt, far, "gt.csv").startswith("none of the 3 query ids in p is in gt.csv")


def test_ground_truth_pairs_without_descriptors_are_counted(tmp_path, capsys):
    (tmp_path / "gt.csv").write_text("Q1,R1\nQ2,R2\nQ3,R3\nQ4,R1\nQ1,R99\n")
    submission, _ = make_descriptor_files(tmp_path)
    argv = ["score", "--gt", str(tmp_path / "gt.csv")]
    assert main([*argv, "--queries", str(submission), "--references", str(submission)]) == 0
    assert capsys.readouterr().err == (
        f"warning: 2 of 5 ground-truth pairs in {tmp_path / 'gt.csv'} can never be found: 1 have "
        f"no query descriptor in {submission}, 1 no reference descriptor in {submission}\n"
    )


# ---------------------------------------------------------------------------------------------
# Inputs destroyed: no output may name an input, however spelled
# ---------------------------------------------------------------------------------------------


def _spell(path, how, tmp_path):
    """Another name for `path`: the same string, ./-relative, a symbolic link or a hard link."""
    import os

    if how == "same":
        return path
    if how == "dotted":
        return path.parent / "." / ".." / path.parent.name / path.name
    link = tmp_path / f"link-{how}-{path.name}"
    (os.symlink if how == "symlink" else os.link)(path, link)
    return link


@pytest.mark.parametrize("how", ["same", "dotted", "symlink", "hardlink"])
@pytest.mark.parametrize("output", ["--write-predictions", "--pr-curve"])
@pytest.mark.parametrize("victim", ["--gt", "--queries", "--references", "--training"])
def test_an_output_that_names_an_input_is_refused_and_the_input_kept(
    tmp_path, capsys, how, output, victim
):
    (tmp_path / "gt.csv").write_text("Q1,R1\nQ2,R2\nQ3,R3\n")
    submission, training = make_descriptor_files(tmp_path)
    write_descriptors(tmp_path / "r.h5", reference=read_split(submission, "reference"))
    inputs = {
        "--gt": tmp_path / "gt.csv",
        "--queries": submission,
        "--references": tmp_path / "r.h5",
        "--training": training,
    }
    before = {path: path.read_bytes() for path in inputs.values()}
    target = _spell(inputs[victim], how, tmp_path)
    argv = ["score", "--score-norm", "isc2021", output, str(target)]
    for option, path in inputs.items():
        argv += [option, str(path)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: {output} {target} would overwrite the input {victim} {inputs[victim]}; choose "
        "another output file\n"
    )
    assert {path: path.read_bytes() for path in inputs.values()} == before


@pytest.mark.parametrize("victim", ["--gt", "--predictions"])
def test_pr_curve_over_an_input_of_the_matching_track(
    tmp_path, gt_csv, predictions_csv, capsys, victim
):
    inputs = {"--gt": gt_csv, "--predictions": predictions_csv}
    before = {path: path.read_bytes() for path in inputs.values()}
    argv = ["score", "--gt", str(gt_csv), "--predictions", str(predictions_csv)]
    assert main([*argv, "--pr-curve", str(inputs[victim])]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in inputs.values()} == before


def test_other_outputs_that_cannot_be_written(
    tmp_path, gt_csv, predictions_csv, capsys, monkeypatch
):
    base = ["score", "--gt", str(gt_csv), "--predictions", str(predictions_csv)]
    assert main([*base, "--pr-curve", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err
        == f"error: --pr-curve {tmp_path}: is a directory; give a file name\n"
    )
    inside_a_file = gt_csv / "pr.png"
    assert main([*base, "--pr-curve", str(inside_a_file)]) == 2
    assert capsys.readouterr().err == (
        f"error: --pr-curve {inside_a_file}: {gt_csv} is a file, not a folder\n"
    )
    import errno
    import os

    def disk_full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)
    assert main([*base, "--pr-curve", str(tmp_path / "pr.png")]) == 2
    assert capsys.readouterr().err == (
        f"error: --pr-curve {tmp_path / 'pr.png'}: cannot write it (No space left on device); "
        "choose another location\n"
    )
    assert not list(tmp_path.glob(".pr.png*"))


def test_write_predictions_is_refused_where_it_would_be_ignored(gt_csv, predictions_csv, capsys):
    argv = ["score", "--gt", str(gt_csv), "--predictions", str(predictions_csv)]
    assert main([*argv, "--write-predictions", "again.csv"]) == 2
    assert "--write-predictions apply to descriptors only" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Out-of-range option values: one line, before any library sees them
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pca-whiten", "-1"], "--pca-whiten must be >= 0 (0 keeps the dimension), got -1"),
        (["--subtract-negatives", "--negatives-k", "0"], "--negatives-k must be >= 1, got 0"),
        (
            ["--subtract-negatives", "--negatives-alpha", "nan"],
            "--negatives-alpha must be a finite number, got nan",
        ),
        (["--score-norm", "sscd", "--score-norm-n", "-3"], "--score-norm-n must be >= 1, got -3"),
        (
            ["--score-norm", "sscd", "--score-norm-beta", "inf"],
            "--score-norm-beta must be a finite number, got inf",
        ),
        (["--knn", "0"], "--knn must be >= 1, got 0"),
        (["--max-results", "-5"], "--max-results must be >= 1, got -5"),
        (["--max-dim", "0"], "--max-dim must be >= 1, got 0"),
    ],
)
def test_out_of_range_option_values(tmp_path, capsys, extra, message):
    (tmp_path / "gt.csv").write_text("Q1,R1\n")
    submission, training = make_descriptor_files(tmp_path)
    argv = ["score", "--gt", str(tmp_path / "gt.csv"), "--training", str(training)]
    argv += ["--queries", str(submission), "--references", str(submission)]
    assert main([*argv, *extra]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_whitening_a_flat_training_set_is_refused_not_turned_into_nan(tmp_path, capsys):
    (tmp_path / "gt.csv").write_text("Q1,R1\nQ2,R2\nQ3,R3\n")
    submission, _ = make_descriptor_files(tmp_path)
    flat = np.zeros((40, 16), np.float32)
    flat[:, :3] = np.random.default_rng(0).standard_normal((40, 3))  # varies in 3 directions
    write_descriptors(tmp_path / "t.h5", training=Descriptors([f"T{i}" for i in range(40)], flat))
    argv = ["score", "--gt", str(tmp_path / "gt.csv"), "--training", str(tmp_path / "t.h5")]
    argv += ["--queries", str(submission), "--references", str(submission)]
    assert main([*argv, "--pca-whiten", "8"]) == 2
    assert capsys.readouterr().err == (
        "error: PCA whitening to 8 dimensions: the training descriptors vary in only 3 of 16 "
        "dimensions; whiten to at most 3, or give more varied training descriptors\n"
    )
    assert main([*argv, "--pca-whiten", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_predictions"] == 30
    write_descriptors(
        tmp_path / "t.h5",
        training=Descriptors([f"T{i}" for i in range(40)], np.ones((40, 16), np.float32)),
    )
    assert main([*argv, "--pca-whiten", "0"]) == 2
    assert capsys.readouterr().err == (
        "error: PCA whitening: the training descriptors are all equal; give varied ones\n"
    )
