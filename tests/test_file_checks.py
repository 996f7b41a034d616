"""harness/file_checks.py: what an input must be, and what an output must never be."""

from __future__ import annotations

import os

import pytest

from harness.errors import InputError, OutputError
from harness.file_checks import refuse_overwriting_inputs, require_input_file


def test_distinct_files_and_options_not_given_pass(tmp_path):
    (tmp_path / "in.csv").write_text("x")
    refuse_overwriting_inputs(
        {"--out": tmp_path / "out.csv", "--plot": None}, {"--in": tmp_path / "in.csv", "--x": None}
    )


def test_paths_that_do_not_exist_yet_are_compared_resolved(tmp_path):
    os.symlink(tmp_path, tmp_path / "here")
    with pytest.raises(OutputError, match="--out .*here/new.csv would overwrite the input --in"):
        refuse_overwriting_inputs(
            {"--out": tmp_path / "here" / "new.csv"}, {"--in": tmp_path / "new.csv"}
        )


def test_two_outputs_naming_one_file(tmp_path):
    with pytest.raises(OutputError, match="--a and --b name the same file"):
        refuse_overwriting_inputs({"--a": tmp_path / "x", "--b": tmp_path / "." / "x"}, {})


def test_a_regular_file_is_required(tmp_path):
    (tmp_path / "f").write_text("x")
    assert require_input_file(tmp_path / "f") == tmp_path / "f"
    with pytest.raises(InputError, match="no such file"):
        require_input_file(tmp_path / "f" / "below")
    with pytest.raises(InputError, match="is a character device, not a regular file"):
        require_input_file("/dev/null")
