"""The launcher against a real scheduler: the single-node cluster slurm/start.sh runs on localhost."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_harness, set_flags
from slurm_cluster import (  # noqa: F401  (slurm_cluster is a fixture)
    counting_run,
    make_counting_run_dir,
    slurm_cluster,
    wait_until,
)

from harness.errors import HarnessError
from harness.job_process import RunJob
from harness.job_state import slurm_states, wait_jobs
from harness.launch import launch_run_dir, submit_runs
from harness.slurm_profile import load_profile

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

JOB_TIMEOUT_S = 240


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
    # The result pickle comes first; sacct follows within seconds.
    wait_until(
        lambda: slurm_states([job.job_id]) == {job.job_id: "completed"},
        timeout_s=60,
        what="sacct to report COMPLETED",
    )


def test_gpu_request_is_scheduled_on_fake_gpus(tmp_path, slurm_cluster):  # noqa: F811
    profile = load_profile("local", ["gpus_per_node=2", "cpus_per_task=1", "mem_gb=1"])
    run_dir = make_counting_run_dir(tmp_path, "gpus", steps=1)
    job = launch_run_dir(run_dir, "slurm", profile=profile, target=counting_run)
    wait_jobs([job], timeout_s=JOB_TIMEOUT_S)
    assert job.results()[0]["status"] == "complete"
    # One task per GPU: both tasks ran the job in one torch.distributed group; rank 0's result
    # is the job's.
    assert (run_dir / "attempts.log").read_text().count("\n") == 2
    ranks = sorted((run_dir / "ranks").read_text().split())
    assert ranks == ["0/2", "1/2"]
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
    wait_jobs([job], timeout_s=2 * JOB_TIMEOUT_S)
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
    from harness.sweep import run_states, status_table, submit_sweep_runs
    from harness.sweep_dir import prepare_sweep
    from harness.sweep_spec import load_sweep_spec

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


# --- real tiny runs (harness.pipeline.execute_run_dir) -------------------------------------------

TINY_RUN = set_flags(
    [
        "data.synth={references: 24, training: 32, queries: 12, size: 32}",
        "data.workers=0",
        "model.embedding_dim=16",
        "model.image_size=32",
        "train.batch_size=8",
        "train.num_workers=0",
        "train.checkpoint_every=2",
        "train.warmup_steps=1",
        "eval.batch_size=16",
    ]
)
RUN_TIMEOUT_S = 240


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return run_harness(*argv, timeout=RUN_TIMEOUT_S)


def _job_of(run_dir: Path):
    import submitit

    launch = json.loads((run_dir / "launch.json").read_text())
    return submitit.SlurmJob(run_dir / "slurm" / "%j", launch["job_id"])


def test_run_command_with_slurm_launcher(tmp_path, slurm_cluster):  # noqa: F811
    out = _cli(
        "run",
        "--method",
        "simclr",
        "--out",
        str(tmp_path),
        "--launcher",
        "slurm",
        "--slurm-profile",
        "local",
        "--set",
        "train.budget_value=3",
        *TINY_RUN,
    )
    assert out.returncode == 0, out.stderr
    assert "submitted SLURM job" in out.stdout
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    job = _job_of(run_dir)
    wait_jobs([job], timeout_s=RUN_TIMEOUT_S)
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "complete" and record["budget"]["steps"] == 3
    assert job.result()["run_id"] == record["run_id"]
    # The job carried a path, not a model: submitit's pickle stays tiny.
    (pickle,) = (run_dir / "slurm").glob("*/*_submitted.pkl")
    assert pickle.stat().st_size < 4000


def test_unknown_profile_key_is_refused_before_submission(tmp_path, slurm_cluster):  # noqa: F811
    out = _cli(
        "run",
        "--method",
        "simclr",
        "--out",
        str(tmp_path),
        "--launcher",
        "slurm",
        "--slurm-set",
        "gpus=2",
        *TINY_RUN,
    )
    assert out.returncode == 2
    assert "unknown SLURM profile key 'gpus'" in out.stderr and "gpus_per_node" in out.stderr
    assert not list(tmp_path.glob("*/launch.json"))


def test_requeue_mid_training_resumes_real_run(tmp_path, slurm_cluster):  # noqa: F811
    """Two copies of one config: one runs through, the other is signalled mid-training."""
    import submitit

    from harness.config import resolve_config
    from harness.run_dir import prepare_run_dir

    overrides = [v for v in TINY_RUN if v != "--set"] + ["train.budget_value=10"]
    cfg = resolve_config("simclr", overrides=overrides)
    plain = prepare_run_dir(cfg, tmp_path / "plain")
    interrupted = prepare_run_dir(cfg, tmp_path / "interrupted")
    profile = load_profile("local", ["time_min=30"])
    jobs = submit_runs(
        "slurm",
        [plain, interrupted],
        folder=tmp_path / "logs" / "%j",
        profile=profile,
        job_name="requeue",
    )
    job = jobs[1]
    ckpt = interrupted / "checkpoints" / "last.pt"
    wait_until(lambda: ckpt.is_file(), timeout_s=RUN_TIMEOUT_S, what="the first checkpoint")
    job._interrupt(timeout=True)
    wait_until(
        lambda: "SIGUSR2" in _log(tmp_path, job), timeout_s=60, what="the signal to reach the job"
    )
    wait_jobs(jobs, timeout_s=2 * RUN_TIMEOUT_S)
    log = _log(tmp_path, job)
    states = slurm_states([j.job_id for j in jobs])
    assert (plain / "record.json").is_file() and (interrupted / "record.json").is_file(), (
        f"sacct: {states}\nlog of {job.job_id}:\n{log[-3000:]}\nlog of {jobs[0].job_id}:\n"
        f"{_log(tmp_path, jobs[0])[-3000:]}"
    )
    a = json.loads((plain / "record.json").read_text())
    b = json.loads((interrupted / "record.json").read_text())
    print(
        f"\nrequeued job {job.job_id}: {[ln for ln in log.splitlines() if 'SIGUSR2' in ln or 'REQUEUE' in ln]}"
    )
    print(f"uninterrupted budget: {a['budget']}\nrequeued budget:      {b['budget']}")
    assert "JOB REQUEUE" in log or "Requeued job" in log
    assert b["budget"]["steps"] == a["budget"]["steps"] == 10
    assert b["budget"]["resumed_from"]  # it really resumed from a checkpoint
    assert len(list(interrupted.rglob("record.json"))) == 1
    assert isinstance(job, submitit.SlurmJob) and job.result()["run_id"] == b["run_id"]


def _log(root: Path, job) -> str:
    paths = list((root / "logs").glob(f"{job.job_id}/*_log.err"))
    return paths[0].read_text() if paths else ""


def test_sweep_command_runs_tiny_grid_as_job_array(tmp_path, slurm_cluster):  # noqa: F811
    sweep_dir = tmp_path / "tiny"
    out = run_harness(
        *("sweep", "configs/sweeps/tiny.yaml", "--launcher", "slurm", "--out", str(sweep_dir)),
        *("--wait", "--timeout", str(2 * RUN_TIMEOUT_S)),
        timeout=3 * RUN_TIMEOUT_S,
        cwd=Path(__file__).parent.parent,
    )
    print("\n" + out.stdout)
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    job_ids = [r["jobs"][0]["job_id"] for r in manifest["runs"]]
    assert len({j.split("_")[0] for j in job_ids}) == 1 and all("_" in j for j in job_ids)
    status = run_harness("status", str(sweep_dir), timeout=120)
    print(status.stdout)
    assert status.returncode == 0 and "4 done" in status.stdout
    for entry in manifest["runs"]:
        record = json.loads((sweep_dir / entry["run_dir"] / "record.json").read_text())
        assert (
            record["method"] == entry["point"]["method"]
            and record["seed"] == entry["point"]["seed"]
        )
    # Submitting the same sweep again submits nothing: finished runs are never re-run.
    again = run_harness(
        *("sweep", "configs/sweeps/tiny.yaml", "--launcher", "slurm", "--out", str(sweep_dir)),
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert again.returncode == 0 and "nothing to submit" in again.stdout
