"""Shared pytest fixtures."""

from __future__ import annotations

import os

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
