"""Where training runs: the rank and world size, gradient averaging across ranks, mixed precision,
moving batches onto the device, and how many loader workers the machine can run.

DDP without DistributedDataParallel: each rank takes its slice of the global batch and gradients are
averaged across ranks by one all-reduce after `backward`, as DistributedDataParallel would (its
wrapper cannot be used because QK freezes and unfreezes parameters between phases). Methods gather
negatives across ranks with gradient-aware all-gathers (lightly's `gather_distributed`), so the
averaged gradient equals the gradient of the loss on the global batch.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.distributed as dist

from methods.base import TrainBatch


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: what SLURM or taskset gave it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cpu_shares(parallel: int) -> list[list[int]]:
    """The usable CPUs split into `parallel` disjoint, nearly equal shares (at least one CPU
    each; with fewer CPUs than jobs, shares repeat): what side-by-side local jobs each get, as
    SLURM gives each task its own CPUs. Two runs that each spin one OpenMP thread per core on the
    same cores made a SimCLR step go from ~0.8 s to 5.3 s on a 2-core machine."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus or parallel <= 1:
        return [cpus] * max(parallel, 1)
    if parallel >= len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(parallel)]
    size, extra = divmod(len(cpus), parallel)
    shares, start = [], 0
    for i in range(parallel):
        end = start + size + (1 if i < extra else 0)
        shares.append(cpus[start:end])
        start = end
    return shares


def pin_to_cpus(cpus: list[int] | None) -> None:
    """Run this process (and the threads and workers it starts) on `cpus` only."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def apply_thread_budget(threads: int | None) -> dict[str, object]:
    """Torch's intra-op threads from the CPUs this process was given (its affinity: SLURM's
    cpus_per_task, taskset, or a local sweep's share) unless `threads` (train.threads) says; the
    record's `resources` block."""
    available = usable_cpus()
    chosen = available if threads is None else threads
    torch.set_num_threads(chosen)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpus": cpus,
        "torch_threads": torch.get_num_threads(),
        "threads_from": "train.threads" if threads is not None else "the CPUs of this process",
    }


_CAPPED: set[tuple[str, int]] = set()


def loader_workers(requested: int, key: str) -> int:
    """`requested` DataLoader workers, at most one per usable CPU. Each worker is a process: a
    hundred thousand of them take minutes to start and cannot all be stopped by one Ctrl-C."""
    available = usable_cpus()
    if requested <= available:
        return requested
    if (key, requested) not in _CAPPED:  # say it once per process, not per loader
        _CAPPED.add((key, requested))
        print(
            f"{key}={requested} capped to {available}: this process may use {available} CPUs",
            file=sys.stderr,
        )
    return available


def dist_info() -> tuple[int, int]:
    """(rank, world_size) of the current torch.distributed group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """Average `.grad` across ranks (what DistributedDataParallel does during backward)."""
    if world_size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_across_ranks(value: float, world_size: int, device: torch.device) -> float:
    if world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """Mixed precision on CUDA only: bfloat16 where supported (no loss scaling), else float16."""
    if not (amp and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def images_to_device(
    images: torch.Tensor, device: torch.device, channels_last: bool
) -> torch.Tensor:
    """An image batch on `device`, copied asynchronously from pinned memory on CUDA."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, non_blocking=device.type == "cuda", memory_format=fmt)


def batch_to_device(batch: dict, device: torch.device, channels_last: bool) -> TrainBatch:
    """A TrainingDataset batch ("views", "index", optional "clean") as a TrainBatch on `device`."""
    return TrainBatch(
        views=[images_to_device(v, device, channels_last) for v in batch["views"]],
        indices=batch["index"].to(device, non_blocking=device.type == "cuda"),
        clean=(
            images_to_device(batch["clean"], device, channels_last)
            if batch.get("clean") is not None
            else None
        ),
    )
