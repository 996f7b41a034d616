"""The thread budget: a run's torch threads follow the CPUs it was given, and local jobs that run
side by side each get their own CPUs (as SLURM's tasks do)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from slurm_cluster import affinity_run

from harness import device
from harness.config import resolve_config
from harness.errors import ConfigError


def test_cpu_shares_split_the_usable_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert device.cpu_shares(1) == [list(range(8))]
    assert device.cpu_shares(3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert device.cpu_shares(10) == [[i % 8] for i in range(10)]  # more jobs than CPUs


def test_torch_threads_follow_the_processs_cpus():
    code = (
        "import os, json; os.sched_setaffinity(0, {0});"
        "from harness.device import apply_thread_budget;"
        "print(json.dumps(apply_thread_budget(None)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == {
        "cpus": [0],
        "torch_threads": 1,
        "threads_from": "the CPUs of this process",
    }


def test_threads_option_is_checked():
    assert resolve_config("qk", overrides=["train.threads=1"]).train.threads == 1
    with pytest.raises(ConfigError, match="train.threads must be > 0 or null, got 0"):
        resolve_config("qk", overrides=["train.threads=0"])


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_local_jobs_side_by_side_get_disjoint_cpus(tmp_path):
    from pathlib import Path

    from harness.slurm_profile import load_profile
    from harness.sweep import submit_sweep_runs
    from harness.sweep_dir import prepare_sweep
    from harness.sweep_spec import load_sweep_spec

    repo = Path(__file__).parents[1]
    base = yaml.safe_load((repo / "configs" / "sweeps" / "tiny.yaml").read_text())["base"]
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        yaml.safe_dump({"name": "cpus", "base": base, "grid": {"method": ["none"], "seed": [0, 1]}})
    )
    sweep_dir = tmp_path / "sweep"
    manifest = prepare_sweep(load_sweep_spec(spec_file), sweep_dir)
    run_ids = [r["run_id"] for r in manifest["runs"]]
    profile = load_profile(None, ["array_parallelism=2", "time_min=5"])
    submit_sweep_runs(sweep_dir, run_ids, launcher="local", profile=profile, target=affinity_run)
    shares = [json.loads((sweep_dir / "runs" / r / "cpus").read_text()) for r in run_ids]
    assert shares[0] and shares[1] and not set(shares[0]) & set(shares[1])
