"""Launch runs in this process, through submitit's local/debug executors, or on SLURM.

What a job receives is a run directory (a path) and nothing else: the run's config is already in
`run_dir/config.yaml` and its state in `run_dir/checkpoints/`, so the pickle submitit writes is a few
hundred bytes and no model or dataset ever travels through it.

Signals: submitit is the only layer that handles SLURM's signals. On USR2 (timeout or preemption) it
calls `RunJob.checkpoint`, which returns a fresh `RunJob` for the same run directory, and requeues
the job; the requeued job resumes from the trainer's last atomic checkpoint. Nothing else in the
harness installs SIGUSR/SIGTERM handlers (no Lightning), so the two can never fight.

SLURM parameters come from a profile, `configs/slurm/<name>.yaml`, with `key=value` overrides; the
mapping of profile keys to sbatch options is in slurm/README.md.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, HarnessError
from harness.run_dir import LAUNCH_FILE, SLURM_LOG_DIR, SUBMITIT_LOG_DIR
from harness.typed_yaml import (
    UnknownKeyError,
    WrongTypeError,
    apply_override,
    build_dataclass,
    load_yaml,
    parse_override,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = REPO_ROOT / "configs" / "slurm"

# "inline" runs in the calling process: progress bars on the terminal, Ctrl-C works, a traceback is
# shown where it happened, and nothing is pickled. It is the default for `run`; the others go
# through submitit (local: a child process with submitit's timeout/requeue handling; debug:
# submitit's in-process executor, handy to check that a job pickles; slurm: sbatch).
LAUNCHERS = ("inline", "local", "debug", "slurm")

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


@dataclass
class SlurmProfile:
    """Resources of one job; `configs/slurm/*.yaml` sets these keys (slurm/README.md maps them)."""

    partition: str | None = None  # sbatch --partition
    account: str | None = None  # --account
    qos: str | None = None  # --qos
    nodes: int = 1  # --nodes
    gpus_per_node: int = 0  # --gpus-per-node; also the number of tasks per node (one per GPU)
    cpus_per_task: int = 2  # --cpus-per-task
    mem_gb: float | None = None  # --mem (per node); None: the partition's default
    time_min: int = 60  # --time; submitit sends USR2 signal_delay_s before the end
    constraint: str | None = None  # --constraint
    array_parallelism: int = 64  # sweeps: --array=0-N%array_parallelism
    signal_delay_s: int = 120  # --signal=USR2@signal_delay_s: time to reach a checkpoint
    max_requeues: int = 3  # timeouts that are requeued (preemptions are always requeued)
    setup: list[str] = field(
        default_factory=list
    )  # shell lines run before the job (module load ...)
    extra_sbatch: dict[str, Any] = field(default_factory=dict)  # any other sbatch option, verbatim

    def tasks_per_node(self) -> int:
        # One process per GPU; torch.distributed is set up from submitit's environment.
        return max(1, self.gpus_per_node)


def profile_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(SlurmProfile)]


_MINIMUM = {
    "nodes": 1,
    "cpus_per_task": 1,
    "time_min": 1,
    "array_parallelism": 1,
    "gpus_per_node": 0,
    "signal_delay_s": 0,
    "max_requeues": 0,
}


def _build_profile(values: dict[str, Any], where: str) -> SlurmProfile:
    """`values` (profile keys) as a SlurmProfile; errors name `where`, the file or the override."""
    try:
        profile = build_dataclass(SlurmProfile, values)
    except UnknownKeyError as err:
        raise ConfigError(
            f"{where}: unknown SLURM profile key {', '.join(map(repr, err.keys))}; valid keys: "
            f"{', '.join(profile_keys())}"
        ) from None
    except WrongTypeError as err:  # worded as the range checks below: "KEY must be ..."
        raise ConfigError(f"{where}: {err.key} must be {err.expected}, got {err.value!r}") from None
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    for key, minimum in _MINIMUM.items():
        if getattr(profile, key) < minimum:
            raise ConfigError(f"{where}: {key} must be >= {minimum}, got {getattr(profile, key)}")
    return profile


def resolve_profile_path(name_or_path: str | os.PathLike) -> Path:
    """A profile name (`local` -> configs/slurm/local.yaml) or a path to a YAML file."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text)
    else:
        path = PROFILE_DIR / f"{text}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(
            f"SLURM profile {text!r} not found ({path}); known profiles: {', '.join(known)}"
        )
    return path


def load_profile(
    name_or_path: str | os.PathLike | None = None, overrides: Iterable[str] = ()
) -> SlurmProfile:
    """Profile from YAML (or the defaults when None) plus `key=value` overrides.

    Override values are parsed as YAML (`time_min=30`, `partition=gpu`, `setup=[a, b]`; an empty
    value is null); `extra_sbatch.NAME=VALUE` sets a single extra sbatch option.
    """
    values: dict[str, Any] = {}
    where = "the default SLURM profile"
    if name_or_path is not None:
        path = resolve_profile_path(name_or_path)
        values, where = load_yaml(path), str(path)
    profile = _build_profile(values, where)
    for text in overrides:
        keys, value = parse_override(text, flag="--slurm-set", usage="key=value", empty=None)
        where = f"--slurm-set {text!r}"
        apply_override(values, keys, value, where=where)
        profile = _build_profile(values, where)
    return profile


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


def _init_distributed() -> bool:
    """In a multi-task submitit job (one task per GPU), set up torch.distributed for the run.

    submitit's TorchDistributedEnvironment exports MASTER_ADDR/PORT, RANK, WORLD_SIZE and
    LOCAL_RANK (and narrows CUDA_VISIBLE_DEVICES to the task's GPU); the trainer then reads rank
    and world size from the initialized process group. Returns whether a group was created here.
    """
    import submitit

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return False
    if env.num_tasks <= 1:
        return False
    import torch
    import torch.distributed as dist

    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=True)
    if dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True


_FORK_HOOK_INSTALLED = False


def _restore_default_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGCONT, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)


def _reset_signals_in_forked_children() -> None:
    """Give forked workers (DataLoader, multiprocessing pools) the default signal handlers.

    submitit's handlers belong to the job's main process: it logs and ignores SIGTERM. A forked
    child inherits that, so `Pool.terminate()` (which sends SIGTERM) would wait forever for workers
    that ignore it, and only the main process may checkpoint and requeue on USR2.
    """
    global _FORK_HOOK_INSTALLED
    if not _FORK_HOOK_INSTALLED:
        os.register_at_fork(after_in_child=_restore_default_signals)
        _FORK_HOOK_INSTALLED = True


def _default_target(run_dir: Path) -> dict:
    from harness.pipeline import execute_run_dir

    return execute_run_dir(run_dir, progress=False)


class RunJob:
    """The callable submitit runs: execute one run directory; checkpointable for requeues.

    `target` is `harness.pipeline.execute_run_dir` unless given (tests pass a tiny stand-in); it
    must be idempotent: return the finished record without re-running, or resume from the run
    directory's checkpoint.
    """

    def __init__(self, target: Callable[[Path], Any] | None = None):
        self.target = target

    def __call__(self, run_dir: str) -> Any:
        _reset_signals_in_forked_children()
        created_group = _init_distributed()
        target = self.target or _default_target
        try:
            return target(Path(run_dir))
        finally:
            if created_group:
                import torch.distributed as dist

                dist.destroy_process_group()

    def checkpoint(self, run_dir: str):
        # The state is already on disk (the trainer's last atomic checkpoint); requeue a fresh
        # callable for the same directory rather than pickling anything from this process.
        import submitit

        return submitit.helpers.DelayedSubmission(RunJob(self.target), run_dir)


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
    try:
        if len(args) == 1:
            return [executor.submit(RunJob(target), args[0])]
        return executor.map_array(RunJob(target), args)
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


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [
        ["" if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])
