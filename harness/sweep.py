"""Sweeps: a grid of runs submitted as one job array, the state of each run, waiting for them.

A sweep is read from its file by harness/sweep_spec.py, expanded into runs by harness/sweep_grid.py
and laid out on disk by harness/sweep_dir.py (the runs and the manifest this module records each
submission in).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.job_state import (
    job_failure,
    job_outcome,
    local_job_alive,
    slurm_states,
    wait_jobs,
    wait_until_idle,
)
from harness.sweep_dir import LOG_DIR, load_manifest, record_jobs, utc_timestamp
from harness.text_table import format_table

STATES = ("unsubmitted", "pending", "running", "done", "failed")


@dataclass
class RunState:
    run_id: str
    point: dict[str, Any]
    state: str  # one of STATES
    job_id: str | None
    detail: str = ""  # scheduler state when it says more (cancelled, timeout ...)
    failure: str | None = None  # last lines of the traceback


def run_states(
    sweep_dir: str | Path, manifest: dict[str, Any] | None = None, *, lines: int = 6
) -> list[RunState]:
    """The state of every run: the record decides `done`; otherwise the scheduler and the logs."""
    from harness.run_dir import run_is_finished

    sweep_dir = Path(sweep_dir)
    manifest = manifest or load_manifest(sweep_dir)
    last_jobs = {r["run_id"]: (r["jobs"][-1] if r["jobs"] else None) for r in manifest["runs"]}
    slurm_ids = [j["job_id"] for j in last_jobs.values() if j and j["launcher"] == "slurm"]
    scheduler = slurm_states(slurm_ids)
    out = []
    for entry in manifest["runs"]:
        job = last_jobs[entry["run_id"]]
        run_dir = sweep_dir / entry["run_dir"]
        state = RunState(
            entry["run_id"], entry["point"], "unsubmitted", job["job_id"] if job else None
        )
        if run_is_finished(run_dir):
            state.state = "done"
        elif job is not None:
            folder = sweep_dir / job["log_folder"]
            outcome = job_outcome(folder, job["job_id"])
            if job["launcher"] == "slurm":
                # Not in sacct (yet): just submitted, unless the job already left an error. A job
                # sacct sees queued or running is alive, whatever pickle an earlier attempt left.
                sched = scheduler.get(job["job_id"], "failed" if outcome == "error" else "pending")
            else:
                sched = "running" if local_job_alive(job["job_id"]) else "completed"
            if sched in ("pending", "running"):
                state.state = sched
            else:
                state.state = "failed"
                state.detail = "" if sched in ("completed", "failed") else sched
                state.failure = job_failure(folder, job["job_id"], lines=lines) or (
                    "the job ended without writing record.json" if sched == "completed" else None
                )
        out.append(state)
    return out


def status_table(states: Sequence[RunState], *, lines: bool = True) -> str:
    rows = [
        (
            s.run_id,
            " ".join(f"{k}={v}" for k, v in s.point.items()),
            s.state + (f" ({s.detail})" if s.detail else ""),
            s.job_id or "-",
        )
        for s in states
    ]
    text = format_table(("run", "grid point", "state", "job"), rows)
    counts = {name: sum(s.state == name for s in states) for name in STATES}
    text += "\n\n" + ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    if lines:
        for s in states:
            if s.failure:
                text += f"\n\n{s.run_id} failed:\n" + "\n".join(
                    "    " + ln for ln in s.failure.splitlines()
                )
    return text


def submit_sweep_runs(
    sweep_dir: str | Path,
    run_ids: Sequence[str],
    *,
    launcher: str,
    profile,
    target: Callable[[Path], Any] | None = None,
    wait_local: bool = True,
):
    """Submit `run_ids` of the sweep as one job array and record the job ids in the manifest.

    With the local launcher the runs go `array_parallelism` at a time and this call waits for them
    (submitit's local executor would otherwise start every run at once on this machine).
    """
    from harness.launch import submit_runs

    sweep_dir = Path(sweep_dir).resolve()
    manifest = load_manifest(sweep_dir)
    by_id = {r["run_id"]: r for r in manifest["runs"]}
    unknown = [r for r in run_ids if r not in by_id]
    if unknown:
        raise HarnessError(f"{sweep_dir}: not runs of this sweep: {', '.join(unknown)}")
    if not run_ids:
        return []
    folder = sweep_dir / LOG_DIR
    run_dirs = [sweep_dir / by_id[r]["run_dir"] for r in run_ids]
    name = f"sweep-{manifest['name']}"
    chunks = [list(range(len(run_ids)))]
    if launcher == "local":
        step = max(1, profile.array_parallelism)
        chunks = [list(range(i, min(i + step, len(run_ids)))) for i in range(0, len(run_ids), step)]
    submission = {"launcher": launcher, "profile": dataclasses.asdict(profile)}
    jobs: list[Any] = []
    for chunk in chunks:
        chunk_jobs = submit_runs(
            launcher,
            [run_dirs[i] for i in chunk],
            folder=folder / "%j",
            profile=profile,
            job_name=name,
            target=target,
        )
        record_jobs(
            sweep_dir,
            submission,
            {
                run_ids[i]: {
                    "job_id": str(job.job_id),
                    "launcher": launcher,
                    "log_folder": f"{LOG_DIR}/%j",
                    "submitted_at": utc_timestamp(),
                }
                for i, job in zip(chunk, chunk_jobs, strict=True)
            },
        )
        jobs.extend(chunk_jobs)
        if launcher == "local" and wait_local:
            wait_jobs(chunk_jobs, timeout_s=profile.time_min * 60 * (profile.max_requeues + 1) + 60)
    if launcher == "debug":
        # submitit's debug jobs run when their result is asked for: one by one, here, with pdb
        # on an error (that is what the debug launcher is for).
        for job in jobs:
            job.result()
    return jobs


def wait_for_queued_runs(sweep_dir: Path, *, timeout_s: float, poll_s: float = 2.0):
    """Poll `run_states` until no run is pending or running; HarnessError after `timeout_s`."""
    states: list[RunState] = []

    def queued() -> list[str]:
        nonlocal states
        states = run_states(sweep_dir)
        return [s.run_id for s in states if s.state in ("pending", "running")]

    wait_until_idle(queued, timeout_s=timeout_s, poll_s=poll_s, what="runs still queued")
    return states
