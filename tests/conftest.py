"""Shared pytest fixtures, and what several test modules import from here (`from conftest
import ...`): the tiny run's overrides, the command-line helpers, the published metric keys."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pytest

# Tests must not depend on the user's cache or spend both cores on BLAS threads per worker.
os.environ.setdefault(
    "ISC_BENCH_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "test")
)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        yield
        return
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    """A tiny generated mini-DISC, made once per session; tests only read it (those that need
    another size define their own `tiny_benchmark`, which takes precedence)."""
    from harness.data.synth import SynthParams, synthesize

    params = SynthParams(references=16, training=20, queries=8, size=32)
    return synthesize(tmp_path_factory.mktemp("bench") / "mini", params, workers=1, progress=False)


def tiny_run_overrides(*extra: str, embedding_dim: int = 16, batch_size: int = 8) -> list[str]:
    """Config overrides of a run that trains in seconds: the test backbone at 32 px, no DataLoader
    worker processes, then `extra` (each module's budget and sizes)."""
    return [
        "model.backbone=test_resnet",
        "model.image_size=32",
        f"model.embedding_dim={embedding_dim}",
        f"train.batch_size={batch_size}",
        "train.num_workers=0",
        "data.workers=0",
        *extra,
    ]


def set_flags(overrides: Iterable[str]) -> list[str]:
    """`--set KEY=VALUE` for each override, as a user types them."""
    return [flag for item in overrides for flag in ("--set", item)]


def harness_command(*argv: str) -> list[str]:
    """The command line of `python -m harness ARGV` under this interpreter."""
    return [sys.executable, "-m", "harness", *argv]


def run_harness(*argv: str, timeout: float | None, **options) -> subprocess.CompletedProcess:
    """`python -m harness ARGV` in a fresh interpreter, as a shell or a scheduler runs it, to its
    end; its stdout and stderr are captured as text. `options` go to subprocess.run."""
    return subprocess.run(
        harness_command(*argv), capture_output=True, text=True, timeout=timeout, **options
    )


# The keys of harness.isc.Metrics.to_dict(), in their published order.
METRIC_KEYS = [
    "average_precision",
    "recall_at_p90",
    "threshold_at_p90",
    "recall_at_rank1",
    "recall_at_rank10",
    "n_predictions",
    "n_gt",
]


def free_port() -> int:
    """A TCP port free on localhost now, for a torch.distributed group of test processes."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def gloo_rank(rank: int, world_size: int, port: int) -> Iterator[None]:
    """Rank `rank` of a gloo group on localhost:`port`, for a test's spawned process (one torch
    thread). When the body succeeds, every rank meets at a barrier before the group is torn down:
    without it a rank that left first made gloo abort another at exit ("terminate called without
    an active exception", SIGABRT) in about one run in ten of tests/test_sharding.py."""
    import torch
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()
