"""Atomic writes and concurrent writers.

A reader polling a file while another process rewrites it (or is SIGKILLed while rewriting it)
sees the old version or the new one, never a part, for every kind of artefact: checkpoints,
descriptors, predictions, records, generated benchmarks. Two commands started at once on one
results directory leave complete records that each belong to their own run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import harness_command, set_flags, tiny_run_overrides

from harness.isc import read_descriptors, read_predictions

# One writer process per artefact kind: rewrites `target` forever, alternating two versions that
# differ everywhere (a torn file mixes them or ends early). Versions are told apart by a marker.
WRITER = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from pathlib import Path
    from harness.atomic import atomic_torch_save, atomic_write_json
    from harness.isc import Descriptors, Predictions, write_descriptors, write_predictions

    kind, target = sys.argv[1], Path(sys.argv[2])
    n = 60_000
    version = 0
    while True:
        version += 1
        fill = float(version % 2)
        if kind == "checkpoint":
            atomic_torch_save({"version": version, "weights": torch.full((n * 8,), fill)}, target)
        elif kind == "descriptors":
            ids = np.array([f"R{i:06d}" for i in range(n // 4)])
            features = np.full((n // 4, 64), fill, dtype=np.float32)
            write_descriptors(target, reference=Descriptors(ids, features))
        elif kind == "predictions":
            q = np.array([f"Q{i:05d}" for i in range(n)])
            r = np.array([f"R{version % 2}{i:05d}" for i in range(n)])
            write_predictions(target, Predictions(q, r, np.full(n, fill + 1.0)))
        elif kind == "record":
            atomic_write_json(target, {"version": version, "rows": [fill] * n, "status": "complete"})
        sys.stdout.write("w\\n"); sys.stdout.flush()
    """
)


def _read(kind: str, path: Path) -> float:
    """The file's fill value (0 or 1); raises if the file is partial or mixed."""
    if kind == "checkpoint":
        weights = torch.load(path, weights_only=True)["weights"]
        values = torch.unique(weights)
        assert len(weights) == 480_000 and len(values) == 1
        return float(values[0])
    if kind == "descriptors":
        features = read_descriptors(path, "reference").features
        assert features.shape == (15_000, 64) and len(np.unique(features)) == 1
        return float(features[0, 0])
    if kind == "predictions":
        predictions = read_predictions(path)
        assert len(predictions.score) == 60_000 and len(np.unique(predictions.score)) == 1
        assert len({r[1] for r in predictions.reference}) == 1
        return float(predictions.score[0]) - 1.0
    record = json.loads(path.read_text())
    assert record["status"] == "complete" and len(record["rows"]) == 60_000
    assert len(set(record["rows"])) == 1
    return float(record["rows"][0])


def _start_writer(kind: str, target: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, kind, str(target)],
        stdout=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.stdout.readline() == b"w\n"  # the first version is complete on disk
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["checkpoint", "descriptors", "predictions", "record"])
def test_readers_never_see_a_partial_file_even_when_the_writer_is_killed(kind, tmp_path):
    rng = random.Random(kind)
    target = tmp_path / {"checkpoint": "last.pt", "descriptors": "d.h5"}.get(kind, f"{kind}.x")
    seen = set()
    for _ in range(2):
        writer = _start_writer(kind, target)
        reads, deadline = 0, time.monotonic() + 1.5
        while time.monotonic() < deadline:
            seen.add(_read(kind, target))
            reads += 1
        time.sleep(rng.uniform(0, 0.05))
        writer.send_signal(signal.SIGKILL)  # most likely in the middle of writing a version
        writer.wait(timeout=30)
        assert _read(kind, target) in (0.0, 1.0)
        assert reads > 0
    assert seen == {0.0, 1.0}, "the reader never saw a rewrite: the test proves nothing"
    # A kill mid-write leaves at most hidden temporaries, never a visible partial file.
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [target.name]


def test_generated_benchmark_appears_complete_or_not_at_all(tmp_path):
    from harness.data.synth import SynthParams, synthesize

    params = SynthParams(references=8, training=8, queries=4, size=32)
    script = (
        "import sys; from harness.data.synth import SynthParams, synthesize; "
        "synthesize(sys.argv[1], SynthParams(references=8, training=8, queries=4, size=32), "
        "workers=1, progress=False)"
    )
    target = tmp_path / "bench"
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)])
    while proc.poll() is None:
        if target.exists():  # once visible, it must be whole
            assert (target / "ground_truth.csv").is_file() and (target / "training").is_dir()
            break
        if any(p.name.startswith(".bench.partial") for p in tmp_path.iterdir()):
            proc.send_signal(signal.SIGKILL)  # killed while generating
        time.sleep(0.01)
    proc.wait(timeout=120)
    assert not target.exists() or (target / "ground_truth.csv").is_file()
    # The next call finishes the job (or finds it finished) and the result is complete.
    synthesize(target, params, workers=1, progress=False, overwrite=target.exists())
    assert len(list((target / "references").iterdir())) == 8


TINY = tiny_run_overrides("train.budget_value=3", "train.warmup_steps=1", "eval.score_norm_n=2")


def _run_command(benchmark: Path, out: Path, seed: int) -> list[str]:
    return harness_command(
        *("run", "--method", "simclr", "--no-progress"),
        *("--data", str(benchmark), "--out", str(out), "--seed", str(seed)),
        *set_flags(TINY),
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_concurrent_runs_into_one_results_directory(tiny_benchmark, tmp_path):
    """Two shells start the same run and a third starts another, all at once, into one --out."""
    out = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = [_run_command(tiny_benchmark, out, seed) for seed in (0, 0, 1)]
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        for c in commands
    ]
    results = [p.communicate(timeout=600) for p in procs]
    # The duplicate either waited for the other and returned its record, or (on a loaded machine
    # it may start only after the first has finished) was refused as an already finished run.
    refused = [
        i
        for i, (proc, (_, err)) in enumerate(zip(procs, results, strict=True))
        if proc.returncode != 0 and "already holds a finished run" in err
    ]
    assert set(refused) <= {0, 1} and len(refused) <= 1
    for i, (proc, (_, err)) in enumerate(zip(procs, results, strict=True)):
        assert proc.returncode == (2 if i in refused else 0), err[-2000:]

    records = sorted(out.rglob("record.json"))
    assert len(records) == 2
    for path in records:
        record = json.loads(path.read_text())
        run_dir = path.parent
        assert record["status"] == "complete" and record["run_id"] == run_dir.name
        assert record["config"]["seed"] == int(run_dir.name.rsplit("-s", 1)[1])
        assert record["budget"]["steps"] == 3
        # Its files belong to it: the predictions it scored are the ones on disk.
        from harness.isc import evaluate, read_ground_truth

        gt = read_ground_truth(tiny_benchmark / "ground_truth.csv")
        predictions = read_predictions(run_dir / record["files"]["predictions"])
        # (equal up to the 9 digits a float32 score is written with)
        assert evaluate(gt, predictions).to_dict() == pytest.approx(
            record["metrics"]["raw"], rel=1e-6
        )
    # The same run started twice was trained once: one waited for the other's record.
    same = [err for _, err in results[:2]]
    waited = sum("another process is running this run; waiting for it" in e for e in same)
    assert waited + len(refused) == 1
    seed0 = next(p for p in records if p.parent.name.endswith("-s0"))
    log = (seed0.parent / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [0, 1, 2]
    if not refused:
        outs = [o for o, _ in results[:2]]
        assert outs[0].splitlines()[1:] == outs[1].splitlines()[1:]  # both print the same table


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    from harness.atomic import atomic_path

    path = tmp_path / "record.json"
    path.write_text('{"status": "complete"}')
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"status": "compl')
        raise RuntimeError("disk full")
    assert path.read_text() == '{"status": "complete"}'
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


TWO_RUN_SWEEP = """\
name: two
launcher: local
base:
  data.synth: {references: 16, training: 20, queries: 8, size: 32}
  data.workers: 0
  model.backbone: test_resnet
  model.embedding_dim: 16
  model.image_size: 32
  train.budget_value: 2
  train.batch_size: 8
  train.num_workers: 0
  train.warmup_steps: 1
  eval.score_norm_n: 2
grid:
  method: [simclr]
  seed: [0, 1]
"""


@pytest.mark.slow
def test_two_sweeps_into_one_directory_at_once_leave_one_record_per_run(tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text(TWO_RUN_SWEEP)
    out = tmp_path / "sweep"
    argv = harness_command("sweep", str(spec), "--launcher", "local")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [*argv, "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr[-2000:]
        assert "2 done" in stdout
    records = sorted(out.rglob("record.json"))
    assert [p.parent.name.rsplit("-s", 1)[1] for p in records] == ["0", "1"]
    for path in records:
        record = json.loads(path.read_text())
        assert record["status"] == "complete" and record["run_id"] == path.parent.name
        # Trained once, in one go: the other sweep's job found the run locked or finished.
        assert record["budget"]["resumed_from"] is None and record["budget"]["steps"] == 2
        log = (path.parent / "train_log.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in log] == [0, 1]
    # Both commands' submissions are in the manifest: no read-modify-write lost the other's jobs.
    manifest = json.loads((out / "manifest.json").read_text())
    recorded = {job["job_id"] for run in manifest["runs"] for job in run["jobs"]}
    # (submitit stages pickles in a literal "%j" folder before the job id is known)
    launched = {f.name for f in (out / "logs").iterdir() if f.is_dir() and f.name != "%j"}
    assert recorded == launched and recorded
