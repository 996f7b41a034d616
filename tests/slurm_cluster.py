"""Test helpers for the launcher: the localhost SLURM cluster fixture and a tiny checkpointable run.

Test modules import the fixture (`from slurm_cluster import slurm_cluster`). The session fixture
runs slurm/start.sh (which leaves an already running cluster alone) and slurm/stop.sh at the end of
the session, if a test session started the cluster and no other test session still uses it.
Without root, the SLURM packages or a cluster that comes up, the SLURM tests are skipped with the
reason.

`counting_run` stands in for `harness.pipeline.execute_run_dir` where a test needs a job whose
progress it can watch step by step: same contract (idempotent, resumes from an atomic checkpoint in
the run directory, writes record.json last and atomically), no model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from harness.atomic import atomic_write_json

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180

# Jobs unpickle the stand-in run in a fresh interpreter where tests/ is not importable.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def counting_run(run_dir: Path) -> dict:
    """Count to `steps` (run_dir/spec.json, or train.budget_value of config.yaml), one checkpoint
    per step, `sleep_s` per step. Fails on purpose when run_dir/FAIL exists."""
    import yaml  # inside: runs in the job's interpreter

    run_dir = Path(run_dir)
    record_path = run_dir / "record.json"
    with open(run_dir / "attempts.log", "a") as log:
        log.write(
            f"{os.environ.get('SLURM_JOB_ID', 'local')} restart={os.environ.get('SLURM_RESTART_COUNT', 0)}\n"
        )
    import torch.distributed as dist

    if dist.is_initialized():  # multi-task jobs: say which rank of how many ran
        with open(run_dir / "ranks", "a") as ranks:
            ranks.write(f"{dist.get_rank()}/{dist.get_world_size()}\n")
    if record_path.is_file():
        return json.loads(record_path.read_text())
    if (run_dir / "FAIL").exists():
        raise RuntimeError(f"deliberate failure of {run_dir.name}")
    spec_path = run_dir / "spec.json"
    if spec_path.is_file():
        spec = json.loads(spec_path.read_text())
    else:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        spec = {"steps": int(config["train"]["budget_value"]), "sleep_s": 0.0}
    ckpt = run_dir / "checkpoints" / "last.json"
    start = json.loads(ckpt.read_text())["step"] if ckpt.is_file() else 0
    for step in range(start, spec["steps"]):
        time.sleep(spec.get("sleep_s", 0.0))
        atomic_write_json(ckpt, {"step": step + 1})
    attempts = (run_dir / "attempts.log").read_text().count("\n")
    record = {
        "status": "complete",
        "steps": spec["steps"],
        "resumed_from": start,
        "attempts": attempts,
    }
    atomic_write_json(record_path, record)
    return record


def make_counting_run_dir(
    root: Path, name: str, *, steps: int, sleep_s: float = 0.0, fail: bool = False
) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / "spec.json", {"steps": steps, "sleep_s": sleep_s})
    if fail:
        (run_dir / "FAIL").touch()
    return run_dir


def wait_until(predicate, *, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the localhost cluster (slurm/start.sh) for the session; skip when it cannot run."""
    if os.geteuid() != 0:
        pytest.skip("SLURM tests need root to run the localhost cluster (sudo bash slurm/start.sh)")
    missing = [
        b
        for b in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch")
        if not _which(b)
    ]
    if missing:
        pytest.skip(
            f"SLURM packages missing ({', '.join(missing)}): run sudo bash slurm/install.sh"
        )
    try:
        proc = subprocess.run(
            ["bash", str(REPO / "slurm" / "start.sh")],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        subprocess.run(["bash", str(REPO / "slurm" / "stop.sh")], capture_output=True, timeout=120)
        pytest.skip(f"the localhost SLURM cluster did not come up within {START_TIMEOUT_S}s")
    if proc.returncode != 0:
        pytest.skip(
            f"the localhost SLURM cluster did not come up: {(proc.stdout + proc.stderr).strip()[-1500:]}"
        )
    state_dir = Path(os.environ.get("ISC_BENCH_SLURM_DIR", REPO / ".cache" / "slurm"))
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state_dir / "etc" / "slurm.conf")
    # Test sessions may share one cluster: each registers itself, and the last one out stops a
    # cluster that a test session started (a cluster someone started by hand is left running).
    users = state_dir / "test-sessions"
    users.mkdir(parents=True, exist_ok=True)
    marker = state_dir / "started-by-tests"
    if "already up" not in proc.stdout:
        marker.touch()
    me = users / str(os.getpid())
    me.touch()
    yield {
        "state_dir": state_dir,
        "conf": os.environ["SLURM_CONF"],
        "start_output": proc.stdout.strip(),
    }
    me.unlink(missing_ok=True)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    others = [p for p in users.iterdir() if _pid_alive(p.name)]
    if marker.exists() and not others:
        subprocess.run(["bash", str(REPO / "slurm" / "stop.sh")], capture_output=True, timeout=120)
        marker.unlink(missing_ok=True)


def _pid_alive(name: str) -> bool:
    try:
        os.kill(int(name), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _which(name: str) -> bool:
    return shutil.which(name) is not None or Path("/usr/sbin", name).exists()


def affinity_run(run_dir: Path) -> dict:
    """Write the CPUs the job may run on to run_dir/cpus (a stand-in run that trains nothing)."""
    run_dir = Path(run_dir)
    cpus = sorted(os.sched_getaffinity(0))
    (run_dir / "cpus").write_text(json.dumps(cpus))
    return {"cpus": cpus}
