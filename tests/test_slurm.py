"""The launcher against a real scheduler: the single-node cluster slurm/start.sh runs on localhost."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from slurm_cluster import (  # noqa: F401  (slurm_cluster is a fixture)
    counting_run,
    make_counting_run_dir,
    slurm_cluster,
    wait_until,
)

from harness.errors import HarnessError
from harness.launch import (
    RunJob,
    launch_run_dir,
    load_profile,
    slurm_states,
    submit_runs,
    wait_jobs,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

JOB_TIMEOUT_S = 120


@pytest.fixture
def profile(slurm_cluster):  # noqa: F811
    return load_profile("local", ["time_min=30"])


def test_cluster_is_idle_and_accounts(slurm_cluster):  # noqa: F811
    out = subprocess.run(
        ["sinfo", "-h", "-o", "%P %a %T %D"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    partition, avail, state, nodes = out.stdout.split()
    assert (partition, avail, nodes) == ("debug*", "up", "1")
    assert state in ("idle", "mixed", "allocated")
    # Accounting must answer, or submitit cannot see a job that died without a result.
    acct = subprocess.run(
        ["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, timeout=30
    )
    assert acct.returncode == 0, acct.stderr


def test_single_run_through_slurm(tmp_path, profile):
    run_dir = make_counting_run_dir(tmp_path, "single", steps=3)
    job = launch_run_dir(run_dir, "slurm", profile=profile, target=counting_run)
    wait_jobs([job], timeout_s=JOB_TIMEOUT_S)
    record = job.result()
    assert record["status"] == "complete" and record["steps"] == 3
    assert json.loads((run_dir / "record.json").read_text()) == record
    launch = json.loads((run_dir / "launch.json").read_text())
    assert launch["launcher"] == "slurm" and launch["job_id"] == job.job_id
    # submitit's logs live in the run directory, next to what they describe.
    assert list((run_dir / "slurm").glob(f"{job.job_id}/*_log.out"))
    assert slurm_states([job.job_id]) == {job.job_id: "completed"}


def test_gpu_request_is_scheduled_on_fake_gpus(tmp_path, slurm_cluster):  # noqa: F811
    profile = load_profile("local", ["gpus_per_node=2", "cpus_per_task=1", "mem_gb=1"])
    run_dir = make_counting_run_dir(tmp_path, "gpus", steps=1)
    job = launch_run_dir(run_dir, "slurm", profile=profile, target=counting_run)
    wait_jobs([job], timeout_s=JOB_TIMEOUT_S)
    assert job.results()[0]["status"] == "complete"
    # One task per GPU: both tasks ran the job; rank 0's result is the job's.
    assert (run_dir / "attempts.log").read_text().count("\n") == 2
    sbatch = next((run_dir / "slurm").glob(f"{job.job_id}/*_submission.sh")).read_text()
    assert "--gpus-per-node=2" in sbatch and "--ntasks-per-node=2" in sbatch


def test_unknown_partition_shows_sbatch_error(tmp_path, slurm_cluster):  # noqa: F811
    profile = load_profile("local", ["partition=no_such_partition"])
    run_dir = make_counting_run_dir(tmp_path, "badpart", steps=1)
    with pytest.raises(HarnessError, match="invalid partition"):
        launch_run_dir(run_dir, "slurm", profile=profile, target=counting_run)
    assert not (run_dir / "launch.json").exists()


def test_cancelled_job_is_detected_not_hung(tmp_path, profile):
    run_dir = make_counting_run_dir(tmp_path, "cancel", steps=1000, sleep_s=0.5)
    (job,) = submit_runs(
        "slurm",
        [run_dir],
        folder=tmp_path / "logs" / "%j",
        profile=profile,
        job_name="cancel",
        target=counting_run,
    )
    wait_until(
        lambda: (run_dir / "checkpoints" / "last.json").is_file(),
        timeout_s=JOB_TIMEOUT_S,
        what="the job to start",
    )
    subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    start = time.monotonic()
    wait_jobs([job], timeout_s=JOB_TIMEOUT_S)
    assert time.monotonic() - start < JOB_TIMEOUT_S
    assert job.state.startswith("CANCELLED")
    assert slurm_states([job.job_id])[job.job_id] == "cancelled"
    assert not (run_dir / "record.json").exists()


def test_requeue_resumes_from_checkpoint(tmp_path, profile):
    steps = 24
    reference = make_counting_run_dir(tmp_path, "uninterrupted", steps=steps)
    expected = counting_run(reference)
    run_dir = make_counting_run_dir(tmp_path, "requeued", steps=steps, sleep_s=1.0)
    (job,) = submit_runs(
        "slurm",
        [run_dir],
        folder=run_dir / "slurm" / "%j",
        profile=profile,
        job_name="requeue",
        target=counting_run,
    )
    ckpt = run_dir / "checkpoints" / "last.json"
    wait_until(
        lambda: ckpt.is_file() and json.loads(ckpt.read_text())["step"] >= 4,
        timeout_s=JOB_TIMEOUT_S,
        what="step 4",
    )
    # USR2 alone, as SLURM sends it before a time limit (submitit counts it as a timeout here).
    job._interrupt(timeout=True)
    wait_until(
        lambda: job.state in ("REQUEUED", "PENDING") or "restart=1" in _attempts(run_dir),
        timeout_s=JOB_TIMEOUT_S,
        what="the requeue",
    )
    wait_jobs([job], timeout_s=3 * JOB_TIMEOUT_S)
    record = json.loads((run_dir / "record.json").read_text())
    print(f"\nrequeue: job {job.job_id} attempts:\n{_attempts(run_dir)}record: {record}")
    assert record["steps"] == expected["steps"] == steps
    assert 0 < record["resumed_from"] < steps
    assert record["attempts"] == 2
    assert job.result() == record
    assert len(list(run_dir.rglob("record.json"))) == 1
    log = next((run_dir / "slurm").glob(f"{job.job_id}/*_log.err")).read_text()
    assert "Requeued job" in log or "requeue" in log.lower()


def _attempts(run_dir: Path) -> str:
    path = run_dir / "attempts.log"
    return path.read_text() if path.is_file() else ""


def test_run_job_pickles_only_a_path(tmp_path):
    import cloudpickle

    blob = cloudpickle.dumps((RunJob(), str(tmp_path)))
    assert len(blob) < 2000


def test_sweep_is_one_job_array_and_status_shows_the_failure(tmp_path, profile):
    from harness.sweep import (
        load_sweep_spec,
        prepare_sweep,
        run_states,
        status_table,
        submit_sweep_runs,
    )

    spec = load_sweep_spec(Path(__file__).parent.parent / "configs" / "sweeps" / "tiny.yaml")
    sweep_dir = tmp_path / "tiny"
    manifest = prepare_sweep(spec, sweep_dir)
    run_ids = [r["run_id"] for r in manifest["runs"]]
    assert len(run_ids) == 4
    failing = run_ids[1]
    (sweep_dir / "runs" / failing / "FAIL").touch()
    jobs = submit_sweep_runs(
        sweep_dir, run_ids, launcher="slurm", profile=profile, target=counting_run
    )
    array_ids = {job.job_id.split("_")[0] for job in jobs}
    assert len(array_ids) == 1, f"expected one job array, got {[j.job_id for j in jobs]}"
    wait_jobs(jobs, timeout_s=JOB_TIMEOUT_S * 2)
    states = {s.run_id: s for s in run_states(sweep_dir)}
    print("\n" + status_table(list(states.values())))
    assert states[failing].state == "failed"
    assert "deliberate failure" in states[failing].failure
    assert all(states[r].state == "done" for r in run_ids if r != failing)

    # --resubmit-failed path: fix the cause, resubmit only what failed.
    (sweep_dir / "runs" / failing / "FAIL").unlink()
    (job,) = submit_sweep_runs(
        sweep_dir, [failing], launcher="slurm", profile=profile, target=counting_run
    )
    wait_jobs([job], timeout_s=JOB_TIMEOUT_S)
    states = run_states(sweep_dir)
    assert [s.state for s in states] == ["done"] * 4
    entries = {
        r["run_id"]: r for r in json.loads((sweep_dir / "manifest.json").read_text())["runs"]
    }
    assert len(entries[failing]["jobs"]) == 2
    assert all(len(entries[r]["jobs"]) == 1 for r in run_ids if r != failing)
