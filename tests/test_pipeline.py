"""A whole run on a tiny generated benchmark: the record, its files, idempotence and resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import METRIC_KEYS, tiny_run_overrides

from harness.config import resolve_config
from harness.errors import ConfigError
from harness.isc import read_descriptors, read_ground_truth, read_predictions
from harness.pipeline import execute_run_dir
from harness.run_dir import prepare_run_dir
from harness.train import read_log

TINY = tiny_run_overrides(
    "train.budget_value=4",
    "train.warmup_steps=1",
    "train.checkpoint_every=2",
    "eval.batch_size=64",
    "eval.score_norm_n=3",
    embedding_dim=32,
    batch_size=16,
)
RECORD_KEYS = {
    "schema_version",
    "status",
    "run_id",
    "method",
    "seed",
    "config",
    "benchmark",
    "weights",
    "augmentation",
    "git_commit",
    "versions",
    "device",
    "budget",
    "negatives_per_step",
    "timings",
    "peak_memory_mb",
    "metrics",
    "files",
}


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    from harness.data.synth import SynthParams, synthesize

    params = SynthParams(references=40, training=60, queries=30, size=48)
    return synthesize(tmp_path_factory.mktemp("bench") / "mini", params, workers=1, progress=False)


def tiny_run(benchmark, out, method="simclr", extra=()):
    cfg = resolve_config(method, overrides=[*TINY, *extra], data=str(benchmark))
    return prepare_run_dir(cfg, out)


@pytest.mark.slow
def test_smoke_run_writes_a_complete_record(tiny_benchmark, tmp_path):
    run_dir = tiny_run(tiny_benchmark, tmp_path, "qk", ["qk.phase_steps=2"])
    record = execute_run_dir(run_dir, progress=False)
    assert record == json.loads((run_dir / "record.json").read_text())
    assert RECORD_KEYS <= set(record)
    assert record["status"] == "complete" and record["method"] == "qk"
    assert record["config"]["qk"]["phase_steps"] == 2 and record["config"]["seed"] == 0
    assert record["benchmark"]["n_queries"] == 30 and record["benchmark"]["n_training"] == 60
    assert record["augmentation"]["preset"] == record["config"]["augment"]["preset"]
    assert record["budget"] | {"train_seconds": 0} == {
        "kind": "steps",
        "value": 4,
        "steps": 4,
        "images_seen": 64,
        "train_seconds": 0,
        "resumed_from": None,
    }
    assert record["negatives_per_step"] == 59  # QK: every other training image
    costs = record["method_costs"]  # 4 steps at phase_steps=2: two phase starts
    assert costs["cache"]["rows"] == 60 and costs["cache"]["dtype"] == "fp32"
    assert costs["cache"]["bytes"] == 60 * costs["cache"]["width"] * 4
    assert costs["phase_starts"]["count"] == 2 and costs["phase_starts"]["mean_seconds"] > 0
    assert set(record["timings"]) >= {"train", "extract", "search", "metrics", "total"}
    assert record["peak_memory_mb"]["cpu_rss"] > 0 and record["peak_memory_mb"]["cuda"] is None
    assert record["versions"]["torch"] and record["versions"]["faiss"]
    for variant in ("raw", "normalized"):
        metrics = record["metrics"][variant]
        assert set(metrics) == set(METRIC_KEYS)
        assert 0 <= metrics["average_precision"] <= 1
        assert metrics["n_predictions"] == 300  # the ISC cap: 10 x 30 queries

    files = record["files"]
    gt = read_ground_truth(tiny_benchmark / "ground_truth.csv")
    query = read_descriptors(run_dir / files["descriptors"], "query")
    training = read_descriptors(run_dir / files["descriptors"], "training")
    assert query.features.shape == (30, 32) and training.features.shape == (60, 32)
    assert np.allclose(np.linalg.norm(query.features, axis=1), 1, atol=1e-4)
    predictions = read_predictions(run_dir / files["predictions"])
    assert len(predictions.query) == 300 and set(predictions.query) <= set(gt.queries)
    curve = np.load(run_dir / files["pr_curve"])
    assert {"precision", "recall", "normalized_precision", "normalized_recall"} <= set(curve.files)
    log = read_log(run_dir / files["log"])
    assert [line["step"] for line in log] == [0, 1, 2, 3]
    assert {"loss", "lr", "images_per_s"} <= set(log[0])


@pytest.mark.slow
def test_finished_run_is_returned_not_redone_and_unfinished_run_resumes(tiny_benchmark, tmp_path):
    run_dir = tiny_run(tiny_benchmark, tmp_path, "moco", ["moco.queue_size=32"])
    first = execute_run_dir(run_dir, progress=False)
    stamp = os.stat(run_dir / "record.json").st_mtime_ns
    assert execute_run_dir(run_dir, progress=False) == first
    assert os.stat(run_dir / "record.json").st_mtime_ns == stamp

    # A run that lost its record after training (killed during evaluation) only redoes evaluation,
    # and gets the same descriptors and metrics.
    (run_dir / "record.json").unlink()
    again = execute_run_dir(run_dir, progress=False)
    assert again["budget"]["resumed_from"] == 4 and again["budget"]["steps"] == 4
    assert again["metrics"] == first["metrics"]
    # Its wall-clock is the whole run's: the first process's training is added, and named.
    earlier = again["timings_before_resume"]
    assert earlier["train"] == earlier["total"] > 0
    assert again["timings"]["total"] > earlier["total"] >= first["budget"]["train_seconds"]


@pytest.mark.slow
def test_untrained_baseline_and_bad_inputs(tiny_benchmark, tmp_path):
    record = execute_run_dir(tiny_run(tiny_benchmark, tmp_path, "none"), progress=False)
    assert record["budget"]["steps"] == 0 and record["negatives_per_step"] == 0
    assert (tmp_path / record["run_id"] / "train_log.jsonl").read_text() == ""

    with pytest.raises(ConfigError, match=r"larger than the training set \(60 images\)"):
        execute_run_dir(tiny_run(tiny_benchmark, tmp_path, "simclr", ["train.batch_size=128"]))
    with pytest.raises(ConfigError, match=r"membank.num_negatives must be in \[1, 60\]"):
        execute_run_dir(
            tiny_run(tiny_benchmark, tmp_path, "membank", ["membank.num_negatives=100"])
        )
