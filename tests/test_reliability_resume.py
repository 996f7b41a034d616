"""Kill and resume: `python -m harness run` SIGKILLed inside training, descriptor extraction and
search, then the same command again, ends with one complete record equal to an uninterrupted run's.

The stage a kill lands in is read from what a user sees, no fault-injection hook: training from the
run's train_log.jsonl (one line per step, written with each checkpoint), extraction and search from
the progress bars on stderr ("describe ...", "capped search ..."). After each kill the test checks
where it landed from the files (no descriptors yet / descriptors but no predictions), so a kill
that missed its stage fails the test instead of passing it silently.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import harness_command, set_flags, tiny_run_overrides

from harness.train import read_log

BUDGET = 6
TINY = tiny_run_overrides(
    f"train.budget_value={BUDGET}",
    "train.checkpoint_every=1",
    "train.warmup_steps=1",
    "eval.batch_size=8",  # several extraction batches: a kill can land between them
    "eval.score_norm_n=2",
    "qk.phase_steps=2",  # Q, K, Q phases: the resumed run must rebuild the right key cache
)
STAGE_TIMEOUT_S = 300
SEED = int(os.environ.get("ISC_BENCH_KILL_SEED", random.SystemRandom().randrange(10**6)))


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    from harness.data.synth import SynthParams, synthesize

    params = SynthParams(references=40, training=32, queries=16, size=32)
    return synthesize(tmp_path_factory.mktemp("bench") / "mini", params, workers=1, progress=False)


def _command(benchmark: Path, out: Path) -> list[str]:
    return harness_command(
        *("run", "--method", "qk", "--data", str(benchmark)),
        *("--out", str(out), "--seed", "3"),
        *set_flags(TINY),
    )


def _env() -> dict[str, str]:
    # One BLAS thread: the two CI cores are shared, and the reference run sees the same setting.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Run:
    """`harness run` in its own process group, its stderr (progress bars) read as it comes."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
            start_new_session=True,  # the kill takes DataLoader workers with it, like scancel
        )
        self.stderr = ""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        fd = self.proc.stderr.fileno()
        while chunk := os.read(fd, 4096):
            with self._changed:
                self.stderr += chunk.decode(errors="replace")
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_text(self, text: str) -> None:
        deadline = time.monotonic() + STAGE_TIMEOUT_S
        with self._changed:
            while text not in self.stderr:
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"run ended before {text!r}:\n{self.stderr[-3000:]}")
                if not self._changed.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise AssertionError(f"no {text!r} after {STAGE_TIMEOUT_S}s")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        self._reader.join(timeout=60)
        assert self.proc.returncode == -signal.SIGKILL, (self.proc.returncode, self.stderr[-2000:])

    def finish(self) -> str:
        out, _ = self.proc.communicate(timeout=STAGE_TIMEOUT_S)
        self._reader.join(timeout=60)
        assert self.proc.returncode == 0, self.stderr[-3000:]
        return out.decode()


def _wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _logged_steps(run_dir: Path) -> int:
    try:
        return len(read_log(run_dir / "train_log.jsonl"))
    except (OSError, ValueError):
        return 0


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of `path`: an atomic rewrite gives it a new inode."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _kill_during(benchmark: Path, out: Path, text: str, output: Path, delay: float):
    """Run, SIGKILL `delay` s after `text` shows on stderr, until a kill lands before the stage
    writes `output` (its file identity unchanged; a missed attempt left one that the next must
    not replace). Fast stages can end inside the delay: later attempts kill without it.

    Returns the last attempt's Run and the indices of the attempts that landed too late."""
    missed = []
    for attempt in range(4):
        before = _identity(output)
        run = Run(_command(benchmark, out))
        run.wait_for_text(text)
        time.sleep(delay if attempt == 0 else 0.0)
        run.kill()
        assert not any(out.rglob("record.json")), "the run finished before the kill"
        if _identity(output) == before:
            return run, missed
        missed.append(attempt)
    raise AssertionError(f"every kill after {text!r} landed after {output.name} was written")


def _without_speed(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "images_per_s"} for line in log]


@pytest.mark.slow
def test_sigkill_in_training_extraction_and_search_then_rerun_equals_uninterrupted(
    tiny_benchmark, tmp_path
):
    rng = random.Random(SEED)
    print(f"\nkill points drawn with ISC_BENCH_KILL_SEED={SEED}")
    reference_out, victim_out = tmp_path / "uninterrupted", tmp_path / "killed"
    Run(_command(tiny_benchmark, reference_out)).finish()
    (reference_dir,) = reference_out.iterdir()
    reference = json.loads((reference_dir / "record.json").read_text())
    run_dir = victim_out / reference_dir.name  # the run id is a function of the config

    # 1. Training: after a random number of checkpointed steps, plus a random part of a step (of
    # the uninterrupted run's step time: a fixed delay would outlast a fast machine's steps).
    step_seconds = reference["budget"]["train_seconds"] / BUDGET
    killed_after = rng.randint(1, BUDGET - 3)
    run = Run(_command(tiny_benchmark, victim_out))
    _wait_until(lambda: _logged_steps(run_dir) >= killed_after, f"step {killed_after}")
    time.sleep(rng.uniform(0.0, min(0.3, step_seconds / 2)))
    run.kill()
    assert not (run_dir / "descriptors.h5").exists(), "the kill missed training"
    assert not (run_dir / "record.json").exists()
    checkpoint_steps = _logged_steps(run_dir)
    assert killed_after <= checkpoint_steps < BUDGET

    # 2. Descriptor extraction of the resumed run (training resumes from the checkpoint first).
    # Extracting this tiny benchmark takes tens of milliseconds, so a kill can land just after it
    # (descriptors written); such an attempt is retried without the delay, as for the search.
    split = rng.choice(["queries", "references", "training"])
    descriptors = run_dir / "descriptors.h5"
    run, missed_extraction = _kill_during(
        tiny_benchmark, victim_out, f"describe {split}", descriptors, rng.uniform(0.0, 0.05)
    )
    print(f"extraction kills that landed after the extraction (retried): {missed_extraction}")
    assert "train qk" in run.stderr  # it did resume training before extracting
    if not missed_extraction:
        assert not descriptors.exists(), "the kill missed extraction"
    assert _logged_steps(run_dir) == BUDGET

    # 3. Search: the capped search's progress bar is up, predictions not written yet. On this
    # tiny benchmark search and metrics take a few milliseconds, so a kill can land just after
    # them (predictions written, no record yet); such an attempt is retried without the delay.
    _, missed = _kill_during(
        tiny_benchmark,
        victim_out,
        "capped search",
        run_dir / "predictions.csv",
        rng.uniform(0.0, 0.001),
    )
    print(f"search kills that landed after the search (retried): {missed}")
    assert (run_dir / "descriptors.h5").exists()

    # 4. The same command once more finishes the run. (A kill inside a checkpoint write leaves a
    # temporary like this one; the rerun clears it.)
    stale = run_dir / "checkpoints" / f".last.pt.tmp-{2**22 + 1}-0123abcd"
    stale.write_bytes(b"half a checkpoint")
    out = Run(_command(tiny_benchmark, victim_out)).finish()
    assert not stale.exists() and not list(run_dir.rglob(".*.tmp-*"))
    assert "µAP" in out
    records = sorted(victim_out.rglob("record.json"))
    assert records == [run_dir / "record.json"]
    record = json.loads(records[0].read_text())
    assert record["status"] == "complete"
    assert record["metrics"] == reference["metrics"]
    assert record["budget"]["steps"] == reference["budget"]["steps"] == BUDGET
    assert (
        record["budget"]["resumed_from"] == BUDGET and reference["budget"]["resumed_from"] is None
    )
    assert record["final_loss"] == reference["final_loss"]
    assert _without_speed(read_log(run_dir / "train_log.jsonl")) == _without_speed(
        read_log(reference_dir / "train_log.jsonl")
    )
    for name in ("predictions.csv", "predictions_normalized.csv"):
        assert (run_dir / name).read_bytes() == (reference_dir / name).read_bytes()
    # Whatever the kills interrupted was never renamed into place: only hidden temporaries remain.
    visible = {p.name for p in run_dir.iterdir() if not p.name.startswith(".")}
    assert visible == {p.name for p in reference_dir.iterdir() if not p.name.startswith(".")}
