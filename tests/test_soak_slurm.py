"""Soak: a sweep of 22 tiny runs through the localhost SLURM cluster while running jobs are
requeued at random (`scontrol requeue`, as an admin or a preemption would); every run ends with
exactly one complete record.

The runs are `slurm_cluster.counting_run` (the pipeline's contract: idempotent, an atomic checkpoint
per step, the record written last) so the sweep, the job array, SLURM's requeue and the resume from
checkpoints are what is soaked, in about three minutes on two cores; tests/test_slurm.py and
tests/test_reliability_resume.py cover requeued and killed real training runs. Bounded: the test
fails, it does not hang, if the cluster loses a run.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_harness
from slurm_cluster import counting_run, slurm_cluster, wait_until  # noqa: F401  (fixture)

from harness.atomic import atomic_write_json
from harness.job_state import wait_jobs
from harness.slurm_profile import load_profile
from harness.sweep import submit_sweep_runs
from harness.sweep_dir import prepare_sweep
from harness.sweep_spec import spec_from_dict

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

N_RUNS = 22
STEPS, SLEEP_S = 12, 0.75  # 9 s of work per run
# SLURM sends SIGTERM on requeue and SIGKILL KillWait (5 s, slurm/templates) later, and submitit
# lets the job run on through SIGTERM: only a run caught early is really interrupted.
REQUEUE_BEFORE_STEP = 3
SOAK_TIMEOUT_S = 420  # the whole soak, records and job ends; it takes ~3 min on 2 cores
MIN_REQUEUES = 4


def _running_jobs(array_id: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "RUNNING", "-j", array_id, "-o", "%i"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def test_sweep_survives_random_requeues_with_every_record_once(tmp_path, slurm_cluster):  # noqa: F811
    rng = random.Random(7)
    spec = spec_from_dict(
        {
            "name": "soak",
            "grid": {"method": ["simclr"], "seed": list(range(N_RUNS))},
            "base": {"train.budget_value": STEPS},
        },
        source="soak",
    )
    sweep_dir = tmp_path / "soak"
    manifest = prepare_sweep(spec, sweep_dir)
    run_ids = [r["run_id"] for r in manifest["runs"]]
    assert len(run_ids) == N_RUNS
    for run_id in run_ids:
        atomic_write_json(
            sweep_dir / "runs" / run_id / "spec.json", {"steps": STEPS, "sleep_s": SLEEP_S}
        )
    profile = load_profile("local", ["time_min=30", "array_parallelism=4"])
    jobs = submit_sweep_runs(
        sweep_dir, run_ids, launcher="slurm", profile=profile, target=counting_run
    )
    array_id = jobs[0].job_id.split("_")[0]
    records = [sweep_dir / "runs" / r / "record.json" for r in run_ids]

    started = time.monotonic()
    requeued: list[str] = []
    while not all(p.is_file() for p in records):
        assert time.monotonic() - started < SOAK_TIMEOUT_S, (
            f"{sum(p.is_file() for p in records)}/{N_RUNS} records after {SOAK_TIMEOUT_S}s; "
            f"requeued {requeued}"
        )
        running = _running_jobs(array_id)
        # Requeue only runs caught early (a checkpoint on disk, most of the work left), so each
        # requeue really interrupts work that must then resume.
        candidates = [
            job
            for job in running
            if 0 < _checkpointed_step(sweep_dir, run_ids, job) <= REQUEUE_BEFORE_STEP
        ]
        if candidates and len(requeued) < 2 * MIN_REQUEUES:
            job = rng.choice(candidates)
            done = subprocess.run(
                ["scontrol", "requeue", job], capture_output=True, text=True, timeout=30
            )
            if done.returncode == 0:
                requeued.append(job)
        time.sleep(rng.uniform(1.0, 3.0))
    wait_jobs(jobs, timeout_s=max(30.0, SOAK_TIMEOUT_S - (time.monotonic() - started)))
    print(
        f"\nsoak: {N_RUNS} runs, requeued {len(requeued)}: {requeued}, "
        f"{time.monotonic() - started:.0f}s"
    )

    assert len(requeued) >= MIN_REQUEUES, "too few requeues landed: the soak proved little"
    assert sorted(sweep_dir.rglob("record.json")) == sorted(records)  # each once, nowhere else
    resumed = 0
    for path in records:
        record = json.loads(path.read_text())
        assert record["status"] == "complete" and record["steps"] == STEPS
        resumed += record["resumed_from"] > 0
    requeued_runs = {_run_dir_of(sweep_dir, run_ids, job).name for job in requeued}
    assert resumed >= 1 and resumed <= len(requeued_runs)
    for run_id in requeued_runs:
        attempts = (sweep_dir / "runs" / run_id / "attempts.log").read_text().splitlines()
        assert len(attempts) >= 2, f"{run_id} was requeued but ran once: {attempts}"
    status = run_harness("status", str(sweep_dir), timeout=120)
    assert status.returncode == 0 and f"{N_RUNS} done" in status.stdout, status.stdout


def _run_dir_of(sweep_dir: Path, run_ids: list[str], job_id: str) -> Path:
    """Array task `123_4` runs the 5th run of the submission order."""
    return sweep_dir / "runs" / run_ids[int(job_id.split("_")[1])]


def _checkpointed_step(sweep_dir: Path, run_ids: list[str], job_id: str) -> int:
    path = _run_dir_of(sweep_dir, run_ids, job_id) / "checkpoints" / "last.json"
    try:
        return json.loads(path.read_text())["step"]
    except (OSError, ValueError):
        return 0
