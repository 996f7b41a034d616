"""Submitted jobs: their state (sacct, the local controller's pid, submitit's result pickle), the
traceback of a failed one, and bounded waiting until jobs are done.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

# sacct states, folded into what `status` shows.
_SLURM_STATE_MAP = {
    "PENDING": "pending",
    "REQUEUED": "pending",
    "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending",
    "RESV_DEL_HOLD": "pending",
    "CONFIGURING": "running",
    "RUNNING": "running",
    "COMPLETING": "running",
    "RESIZING": "running",
    "SUSPENDED": "running",
    "STAGE_OUT": "running",
    "SIGNALING": "running",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
    "TIMEOUT": "failed",
    "OUT_OF_MEMORY": "failed",
    "NODE_FAIL": "failed",
    "PREEMPTED": "pending",  # with JobRequeue the job comes back
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
    "REVOKED": "failed",
}


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """sacct's state of each job id (`123` or `123_4`), folded to pending/running/completed/...

    Ids sacct does not know (yet) are missing from the result.
    """
    ids = sorted({str(j) for j in job_ids})
    if not ids or shutil.which("sacct") is None:
        return {}
    try:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(ids)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return {}
    states: dict[str, str] = {}
    for line in out.splitlines():
        job_id, _, state = line.partition("|")
        word = state.split()[0] if state.split() else ""
        states[job_id.strip()] = _SLURM_STATE_MAP.get(word, word.lower() or "unknown")
    return states


def local_job_alive(job_id: str) -> bool:
    """A local submitit job's id is the pid of its controller process."""
    try:
        status = Path(f"/proc/{int(job_id)}/status").read_text()
    except (OSError, ValueError):
        return False
    return "\nState:\tZ" not in status


def job_outcome(folder: str | os.PathLike, job_id: str) -> str | None:
    """ "success" or "error" once submitit has written the job's result pickle, else None.

    The pickle is written before the scheduler notices the job has ended, so it settles a job's
    fate earlier (and more surely) than sacct.
    """
    import submitit

    paths = submitit.core.utils.JobPaths(folder, job_id=job_id, task_id=0)
    if not paths.result_pickle.exists():
        return None
    try:
        outcome, _ = submitit.core.utils.pickle_load(paths.result_pickle)
    except Exception:  # being written right now
        return None
    return "success" if outcome == "success" else "error"


def job_failure(folder: str | os.PathLike, job_id: str, *, lines: int = 8) -> str | None:
    """The last lines of a job's traceback from submitit's result pickle or its stderr, if any."""
    import submitit

    paths = submitit.core.utils.JobPaths(folder, job_id=job_id, task_id=0)
    if paths.result_pickle.exists():
        try:
            outcome, payload = submitit.core.utils.pickle_load(paths.result_pickle)
        except Exception:  # a half-written pickle: fall back to the log
            outcome, payload = "error", None
        if outcome == "success":
            return None
        if payload:
            return "\n".join(str(payload).rstrip().splitlines()[-lines:])
    if paths.stderr.exists():
        text = paths.stderr.read_text(errors="replace").rstrip().splitlines()
        tb = [i for i, line in enumerate(text) if line.startswith("Traceback")]
        if tb:
            return "\n".join(text[tb[-1] :][-lines:])
        return "\n".join(text[-lines:]) if text else None
    return None


def _job_finished(job: Any) -> bool:
    if not job.done():
        return False
    if type(job).__name__ != "SlurmJob":
        return True
    # For SLURM, the scheduler has the last word, asked afresh (submitit's watcher stops polling a
    # job once it saw it finished, and it trusts a result pickle): a job caught by a requeue can
    # leave an error pickle from before the requeue (`scontrol requeue` itself gets the SIGTERM
    # meant for the job) while its next attempt is already queued.
    return slurm_states([job.job_id]).get(job.job_id, "pending") not in ("pending", "running")


def wait_until_idle(
    busy: Callable[[], list[str]], *, timeout_s: float, poll_s: float, what: str
) -> None:
    """Call `busy` every `poll_s` seconds until it names nothing; after `timeout_s`, raise a
    HarnessError saying `what` ("jobs still not done") and naming what `busy` last returned."""
    deadline = time.monotonic() + timeout_s
    while still := busy():
        if time.monotonic() > deadline:
            raise HarnessError(f"{what} after {timeout_s:.0f}s: {', '.join(still)}")
        time.sleep(poll_s)


def wait_jobs(jobs: Sequence[Any], *, timeout_s: float, poll_s: float = 2.0) -> None:
    """Wait until every submitit job is done, bounded: raise HarnessError on timeout."""
    pending = list(jobs)

    def still_pending() -> list[str]:
        nonlocal pending  # a job seen finished is not asked about again (a sacct call each)
        pending = [job for job in pending if not _job_finished(job)]
        return [job.job_id for job in pending]

    wait_until_idle(still_pending, timeout_s=timeout_s, poll_s=poll_s, what="jobs still not done")
