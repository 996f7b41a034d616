"""Benchmarks run by `python -m harness bench`.

Each module in this package (names starting with "_" are skipped) is one benchmark:

    DESCRIPTION = "one line shown by `bench --help` and in the table title"
    def run(quick: bool) -> list[dict]: ...

`run` measures its figures side by side in one process, each next to its floor or reference, and
returns one flat dict per row (str/int/float/bool/None values). `quick=True` must finish in
seconds on 2 CPU cores (CI runs it); the full sizes are the ones quoted in the issue. A module whose
`run` also takes `protocol` (a `Protocol`, or None) measures at a run protocol's model and batch
when `bench --config/--set` gives one (`methods`, `negatives`): the figures `sweep --dry-run
--calibration` reads (harness/calibration.py). Timings go
through `timed`, which synchronizes CUDA so the same code measures GPU work correctly (`methods`
also reads the trainer's own per-step clock from its log).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Protocol:
    """A run protocol to measure at: a --config file and --set overrides, as `run` takes them."""

    config: str | None = None
    overrides: tuple[str, ...] = ()

    def resolve(self, method: str, extra: Sequence[str] = ()):
        """`method`'s RunConfig under this protocol, from a random init: the backbone's starting
        weights change no timing, and the protocol's file need not exist on the bench machine."""
        from harness.config import resolve_config

        overrides = [*self.overrides, "model.weights=null", "model.pretrained=false", *extra]
        return resolve_config(method, config_path=self.config, overrides=overrides)

    def describe(self) -> str:
        return " ".join([self.config or "the defaults", *(f"--set {o}" for o in self.overrides)])


def accepts_protocol(module: ModuleType) -> bool:
    import inspect

    return "protocol" in inspect.signature(module.run).parameters


def discover() -> dict[str, ModuleType]:
    """Benchmark modules of this package by name, sorted."""
    modules = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if callable(getattr(module, "run", None)):
            modules[info.name] = module
    return modules


def _synchronize() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], *, repeat: int = 1) -> tuple[Any, float]:
    """Run `fn` `repeat` times; return its last result and the best wall-clock time (seconds)."""
    best, result = float("inf"), None
    for _ in range(max(1, repeat)):
        _synchronize()
        start = time.perf_counter()
        result = fn()
        _synchronize()
        best = min(best, time.perf_counter() - start)
    return result, best


def machine_info() -> dict:
    """What the figures were measured on."""
    import numpy

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        info["torch"], info["device"] = None, "cpu"
    try:
        import faiss

        info["faiss"] = faiss.__version__
        info["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        info["faiss_threads"] = faiss.omp_get_max_threads()
    except ImportError:  # pragma: no cover
        info["faiss"] = None
    return info
