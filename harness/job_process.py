"""Inside a submitit job: `RunJob` executes one run directory, with torch.distributed and signals
set up for the job's process.

Signals: submitit is the only layer that handles SLURM's signals. On USR2 (timeout or preemption) it
calls `RunJob.checkpoint`, which returns a fresh `RunJob` for the same run directory, and requeues
the job; the requeued job resumes from the trainer's last atomic checkpoint. Nothing else in the
harness installs SIGUSR/SIGTERM handlers (no Lightning), so the two can never fight.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any


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

    def __call__(self, run_dir: str, cpus: list[int] | None = None) -> Any:
        """`cpus`: the CPUs of this job when several run side by side on one machine (a local
        sweep, harness/sweep.py); SLURM jobs get theirs from SLURM."""
        from harness.device import pin_to_cpus

        pin_to_cpus(cpus)
        _reset_signals_in_forked_children()
        created_group = _init_distributed()
        target = self.target or _default_target
        try:
            return target(Path(run_dir))
        finally:
            if created_group:
                import torch.distributed as dist

                dist.destroy_process_group()

    def checkpoint(self, run_dir: str, cpus: list[int] | None = None):
        # The state is already on disk (the trainer's last atomic checkpoint); requeue a fresh
        # callable for the same directory rather than pickling anything from this process.
        import submitit

        extra = () if cpus is None else (cpus,)  # the same CPUs again after a requeue
        return submitit.helpers.DelayedSubmission(RunJob(self.target), run_dir, *extra)
