"""SLURM profiles, executors and the checkpointable job, without a scheduler."""

from __future__ import annotations

import json
import pickle
import signal
from pathlib import Path

import pytest
from slurm_cluster import counting_run, make_counting_run_dir

from harness.errors import ConfigError
from harness.job_process import RunJob
from harness.job_state import job_failure
from harness.launch import launch_run_dir, make_executor
from harness.slurm_profile import PROFILE_DIR, SlurmProfile, load_profile, profile_keys
from harness.text_table import format_table


def test_shipped_profiles_load():
    names = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
    assert {"local", "example"} <= set(names)
    for name in names:
        assert isinstance(load_profile(name), SlurmProfile)


def test_unknown_profile_key_lists_valid_keys(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("partition: gpu\ngpus: 4\n")
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    message = str(err.value)
    assert str(path) in message and "'gpus'" in message
    for key in profile_keys():
        assert key in message


def test_overrides_are_typed_and_checked():
    profile = load_profile(
        "local", ["time_min=7", "partition=gpu", "extra_sbatch.exclude=node1", "mem_gb=2.5"]
    )
    assert (profile.time_min, profile.partition, profile.mem_gb) == (7, "gpu", 2.5)
    assert profile.extra_sbatch == {"exclude": "node1"}
    with pytest.raises(ConfigError, match="time_min must be int"):
        load_profile(None, ["time_min=soon"])
    with pytest.raises(ConfigError, match="nodes must be >= 1"):
        load_profile(None, ["nodes=0"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_profile(None, ["partition"])
    with pytest.raises(ConfigError, match="known profiles"):
        load_profile("no_such_profile")


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("partition: gpu\nnodes: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml line \d"):
        load_profile(path)


def test_slurm_executor_maps_profile_to_sbatch(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    profile = load_profile(
        "example",
        [
            "gpus_per_node=4",
            "account=lab",
            "qos=high",
            "constraint=a100",
            "extra_sbatch.exclude=n1",
            "setup=[module load cuda]",
        ],
    )
    executor = make_executor("slurm", tmp_path / "%j", profile, job_name="x")
    text = executor._make_submission_file_text("python -m job", "uid")
    for option in (
        "--partition=gpu",
        "--account=lab",
        "--qos=high",
        "--constraint=a100",
        "--gpus-per-node=4",
        "--ntasks-per-node=4",  # one task per GPU
        "--cpus-per-task=10",
        "--mem=65536M",
        "--time=720",
        "--signal=USR2@180",
        "--exclude=n1",
    ):
        assert option in text, option
    assert "module load cuda" in text
    assert str(tmp_path) in text  # logs in the run/sweep directory


def test_run_job_pickle_holds_a_path_not_a_model(tmp_path):
    import submitit

    job = RunJob()
    delayed = job.checkpoint(str(tmp_path))
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.args == (str(tmp_path),) and delayed.function is not job
    assert len(pickle.dumps(delayed)) < 2000
    # A local job pinned to its share of the CPUs keeps that share when it is requeued.
    assert job.checkpoint(str(tmp_path), [1]).args == (str(tmp_path), [1])


def test_debug_launcher_runs_and_is_idempotent(tmp_path):
    run_dir = make_counting_run_dir(tmp_path, "run", steps=3)
    record = launch_run_dir(run_dir, "debug", target=counting_run)
    assert record["steps"] == 3 and record["resumed_from"] == 0
    again = launch_run_dir(run_dir, "debug", target=counting_run)
    assert again == record  # a finished run is returned, not re-run
    assert json.loads((run_dir / "launch.json").read_text())["launcher"] == "debug"
    assert (run_dir / "submitit").is_dir()


@pytest.mark.slow
def test_local_launcher_resumes_and_reports_failure(tmp_path):
    run_dir = make_counting_run_dir(tmp_path, "run", steps=4)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.json").write_text('{"step": 2}')
    record = launch_run_dir(run_dir, "local", target=counting_run)
    assert record == {"status": "complete", "steps": 4, "resumed_from": 2, "attempts": 1}

    bad = make_counting_run_dir(tmp_path, "bad", steps=1, fail=True)
    with pytest.raises(Exception, match="deliberate failure"):
        launch_run_dir(bad, "local", target=counting_run)
    launch = json.loads((bad / "launch.json").read_text())
    failure = job_failure(bad / launch["log_folder"], launch["job_id"])
    assert failure is not None and "deliberate failure of bad" in failure


def test_forked_children_get_default_signal_handlers():
    import os

    from harness.job_process import _reset_signals_in_forked_children

    previous = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        _reset_signals_in_forked_children()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report whether SIGTERM is back to the default
            os.write(write, b"1" if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else b"0")
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(read, 1) == b"1"
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL  # the parent keeps its handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_unknown_launcher_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown launcher"):
        launch_run_dir(tmp_path, "kubernetes")


def test_format_table_aligns_columns():
    text = format_table(("a", "bb"), [(1, "x"), ("long", None)])
    lines = text.splitlines()
    assert lines[0].startswith("a     bb") and lines[1].startswith("----  --")
    assert lines[3].rstrip() == "long"


def test_profile_readme_documents_every_key():
    readme = (Path(__file__).parent.parent / "slurm" / "README.md").read_text()
    for key in profile_keys():
        assert f"`{key}`" in readme, key
