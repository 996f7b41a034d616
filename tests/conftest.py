"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest

# Tests must not depend on the user's cache or spend both cores on BLAS threads per worker.
os.environ.setdefault("ISC_BENCH_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "test"))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        yield
        return
    torch.manual_seed(0)
    yield
