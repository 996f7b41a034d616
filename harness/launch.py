"""Launch runs in this process, through submitit's local/debug executors, or on SLURM.

What a job receives is a run directory (a path) and nothing else: the run's config is already in
`run_dir/config.yaml` and its state in `run_dir/checkpoints/`, so the pickle submitit writes is a few
hundred bytes and no model or dataset ever travels through it. What runs inside the job (and how it
requeues on SLURM's signals) is harness/job_process.py; the job's resources are a SLURM profile,
harness/slurm_profile.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.device import cpu_shares
from harness.errors import ConfigError, HarnessError
from harness.job_process import RunJob
from harness.run_dir import LAUNCH_FILE, SLURM_LOG_DIR, SUBMITIT_LOG_DIR
from harness.slurm_profile import SlurmProfile, load_profile

# "inline" runs in the calling process: progress bars on the terminal, Ctrl-C works, a traceback is
# shown where it happened, and nothing is pickled. It is the default for `run`; the others go
# through submitit (local: a child process with submitit's timeout/requeue handling; debug:
# submitit's in-process executor, handy to check that a job pickles; slurm: sbatch).
LAUNCHERS = ("inline", "local", "debug", "slurm")


def make_executor(
    launcher: str, folder: str | os.PathLike, profile: SlurmProfile, *, job_name: str
):
    """A submitit executor whose logs and pickles go to `folder` (inside a run or sweep directory)."""
    import submitit

    folder = Path(folder)
    if launcher == "slurm":
        if shutil.which("sbatch") is None:
            raise HarnessError(
                "--launcher slurm: sbatch not found (is SLURM installed and on PATH?)"
            )
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_requeues)
        params: dict[str, Any] = {
            "job_name": job_name,
            "nodes": profile.nodes,
            "ntasks_per_node": profile.tasks_per_node(),
            "cpus_per_task": profile.cpus_per_task,
            "time": profile.time_min,
            "signal_delay_s": profile.signal_delay_s,
            "array_parallelism": profile.array_parallelism,
            "setup": list(profile.setup),
            "additional_parameters": dict(profile.extra_sbatch),
        }
        if profile.gpus_per_node:
            params["gpus_per_node"] = profile.gpus_per_node
        if profile.mem_gb is not None:
            params["mem"] = f"{max(1, round(profile.mem_gb * 1024))}M"
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(profile, key) is not None:
                params[key] = getattr(profile, key)
        executor.update_parameters(**params)
        return executor
    if launcher == "local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=profile.max_requeues)
        # submitit's local default timeout is 2 minutes; use the profile's.
        executor.update_parameters(
            timeout_min=profile.time_min,
            tasks_per_node=1 if profile.gpus_per_node <= 1 else profile.gpus_per_node,
            gpus_per_node=profile.gpus_per_node,
            signal_delay_s=profile.signal_delay_s,
            setup=list(profile.setup),
        )
        return executor
    if launcher == "debug":
        return submitit.DebugExecutor(folder=folder)
    raise ConfigError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")


def submit_runs(
    launcher: str,
    run_dirs: Sequence[str | os.PathLike],
    *,
    folder: str | os.PathLike,
    profile: SlurmProfile,
    job_name: str,
    target: Callable[[Path], Any] | None = None,
):
    """Submit one job per run directory; more than one go out as a single job array."""
    executor = make_executor(launcher, folder, profile, job_name=job_name)
    args = [str(Path(d).resolve()) for d in run_dirs]
    # Local jobs side by side each get their own CPUs (SLURM does that for its jobs).
    cpus = cpu_shares(len(args)) if launcher == "local" else [None] * len(args)
    try:
        if len(args) == 1:
            return [executor.submit(RunJob(target), args[0], cpus[0])]
        return executor.map_array(RunJob(target), args, cpus)
    except subprocess.CalledProcessError as err:
        # sbatch's own message (bad partition, account, qos ...) is the useful part: show it as is.
        output = err.output.decode() if isinstance(err.output, bytes) else str(err.output or "")
        raise HarnessError(f"sbatch refused the job:\n{output.strip()}") from err
    except Exception as err:
        if type(err).__name__ == "FailedJobError":
            hint = ""
            if launcher == "slurm" and "SLURM_CONF" not in os.environ:
                hint = "\n(SLURM_CONF is not set; for the localhost cluster: source .cache/slurm/env.sh)"
            raise HarnessError(f"sbatch refused the job:\n{err}{hint}") from err
        raise


def write_launch_info(run_dir: Path, launcher: str, job_id: str, folder: Path) -> None:
    from harness.atomic import atomic_write_json

    atomic_write_json(
        run_dir / LAUNCH_FILE,
        {
            "launcher": launcher,
            "job_id": job_id,
            "log_folder": os.path.join(os.path.relpath(folder, run_dir), "%j"),
            "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def launch_run_dir(
    run_dir: str | os.PathLike,
    launcher: str = "inline",
    *,
    profile: SlurmProfile | None = None,
    wait: bool | None = None,
    target: Callable[[Path], Any] | None = None,
) -> Any:
    """Execute a prepared run directory with `launcher`.

    inline/debug/local return the record (local waits for its child). slurm returns the submitted
    job unless `wait` is true; the job's logs are in `run_dir/slurm/`.
    """
    run_dir = Path(run_dir)
    if launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    if launcher == "inline":
        if target is not None:
            return target(run_dir)
        from harness.pipeline import execute_run_dir

        return execute_run_dir(run_dir, progress=True)
    profile = profile or load_profile(None)
    folder = run_dir / (SLURM_LOG_DIR if launcher == "slurm" else SUBMITIT_LOG_DIR)
    (job,) = submit_runs(
        launcher,
        [run_dir],
        folder=folder / "%j",
        profile=profile,
        job_name=run_dir.name,
        target=target,
    )
    write_launch_info(run_dir, launcher, job.job_id, folder)
    print(
        f"submitted {run_dir.name} as {launcher} job {job.job_id}; logs: {folder}", file=sys.stderr
    )
    if launcher == "slurm" and not wait:
        return job
    return job.results()[0]  # rank 0's result (a multi-GPU job has one task per GPU)
