"""`python -m harness run` and `python -m harness methods` from the command line's point of view."""

from __future__ import annotations

import json

import pytest
from conftest import set_flags, tiny_run_overrides

from harness.cli import main
from methods import list_methods

TINY = tiny_run_overrides("train.budget_value=2", "eval.score_norm_n=2")


def run_cli(*argv):
    return main(["run", *argv])


def test_methods_lists_every_registered_method_with_a_summary(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_methods()
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)
    assert main(["methods", "--config", "moco"]) == 0
    out = capsys.readouterr().out
    assert "method: moco" in out and "queue_size:" in out and "budget_kind:" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "byol"], "unknown method 'byol'; registered methods: membank, moco"),
        (["--method", "qk", "--set", "qk.phase=3"], "valid keys in qk:"),
        (["--method", "qk", "--set", "train.lr=fast"], "train.lr: expected float"),
        (["--method", "qk", "--set", "train.budget_value=0"], "trains nothing"),
    ],
)
def test_bad_input_exits_2_with_the_reason(argv, message, capsys, tmp_path):
    assert run_cli(*argv, "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written for a rejected config


@pytest.mark.slow
def test_run_prints_the_table_and_refuses_to_redo_a_finished_run(tiny_benchmark, tmp_path, capsys):
    argv = [
        "--method",
        "simclr",
        "--data",
        str(tiny_benchmark),
        "--out",
        str(tmp_path),
        "--no-progress",
        *set_flags(TINY),
    ]
    assert run_cli(*argv, "--seed", "2") == 0
    out = capsys.readouterr().out
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("simclr-") and run_dir.name.endswith("-s2")
    record = json.loads((run_dir / "record.json").read_text())
    assert record["seed"] == 2 and record["budget"]["steps"] == 2
    assert "µAP" in out and "raw" in out and "normalized" in out
    assert f"{record['metrics']['raw']['average_precision']:.4f}" in out
    assert "skipped" not in out  # no bad image, no line about them

    from harness.commands.run import format_metrics_table

    record["benchmark"]["skipped_images"] = 3
    record["files"]["skipped_images"] = "skipped_images.tsv"
    assert format_metrics_table(record).endswith(
        "skipped 3 bad image(s) (listed in skipped_images.tsv)"
    )

    assert run_cli(*argv, "--seed", "2") == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert run_cli(*argv, "--seed", "2", "--overwrite") == 0
