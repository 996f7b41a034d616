"""Measurements while training (harness/monitor.py): validation curves, the stale-negatives measure
and TensorBoard; none of them may change what a run trains."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_run_overrides

from harness.config import resolve_config
from harness.errors import ConfigError
from harness.isc import read_descriptors
from harness.pipeline import build_method, execute_run_dir
from harness.run_dir import prepare_run_dir
from harness.train import Trainer, read_log
from harness.validation import validation_split
from methods.base import NegativeProbe, TrainBatch

TINY = tiny_run_overrides(
    "train.budget_value=6",
    "train.warmup_steps=1",
    "train.checkpoint_every=2",
    "eval.batch_size=64",
    "eval.score_norm_n=3",
    "eval.val_queries=12",
    "eval.val_references=20",
    embedding_dim=16,
    batch_size=8,
)
METHOD_SIZES = {
    "moco": ["moco.queue_size=24"],
    "xbm": ["xbm.memory_size=24", "xbm.warmup_steps=2"],
    "qk": ["qk.phase_steps=4"],
    "membank": ["membank.num_negatives=16"],
}
MEASURED = ("eval.every=2", "eval.consistency_every=2")


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    from harness.data.synth import SynthParams, synthesize

    params = SynthParams(references=40, training=48, queries=30, size=48)
    return synthesize(tmp_path_factory.mktemp("bench") / "mini", params, workers=1, progress=False)


def config(method, *extra, data=None):
    overrides = [*TINY, *METHOD_SIZES.get(method, []), *extra]
    return resolve_config(method, overrides=overrides, data=None if data is None else str(data))


def run(benchmark, out, method, *extra):
    cfg = config(method, *extra, data=benchmark)
    run_dir = prepare_run_dir(cfg, out)
    return run_dir, execute_run_dir(run_dir, progress=False)


def without_timings(points):
    return [
        {k: v for k, v in p.items() if k not in ("val_seconds", "train_seconds")} for p in points
    ]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["moco", "membank", "qk", "xbm"])
def test_measurements_never_change_training(tiny_benchmark, tmp_path, method):
    plain_dir, plain = run(tiny_benchmark, tmp_path / "plain", method, "train.tensorboard=false")
    measured_dir, measured = run(tiny_benchmark, tmp_path / "measured", method, *MEASURED)
    losses = [line["loss"] for line in read_log(plain_dir / "train_log.jsonl")]
    assert losses == [line["loss"] for line in read_log(measured_dir / "train_log.jsonl")]
    for split in ("query", "reference", "training"):
        a = read_descriptors(plain_dir / "descriptors.h5", split)
        b = read_descriptors(measured_dir / "descriptors.h5", split)
        assert np.array_equal(a.features, b.features)
    assert plain["metrics"] == measured["metrics"]
    assert measured["resources"]["torch_threads"] >= 1  # the thread budget the run used
    assert "curve" not in plain and not (plain_dir / "tensorboard").exists()
    curve = measured["curve"]
    assert [p["step"] for p in curve if "val_micro_ap" in p] == [0, 2, 4, 6]
    assert [p["step"] for p in curve if "negatives/consistency" in p] == [2, 4, 6]
    assert measured["stale_negatives"]["step"] == 6
    assert 0 <= measured["stale_negatives"]["consistency"] <= 1 + 1e-5
    assert curve == read_log(measured_dir / "curve.jsonl")


@pytest.mark.slow
def test_a_killed_run_resumes_its_curve_without_repeats_or_gaps(
    tiny_benchmark, tmp_path, monkeypatch
):
    _, whole = run(
        tiny_benchmark, tmp_path / "whole", "moco", "eval.every=1", "eval.consistency_every=1"
    )
    real_step = Trainer._step

    def killed_after_step_5(self, batches, bar):
        if self.step == 5:  # after the checkpoint at step 4 and the points of step 5
            raise KeyboardInterrupt
        return real_step(self, batches, bar)

    monkeypatch.setattr(Trainer, "_step", killed_after_step_5)
    cfg = config("moco", "eval.every=1", "eval.consistency_every=1", data=tiny_benchmark)
    run_dir = prepare_run_dir(cfg, tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        execute_run_dir(run_dir, progress=False)
    assert max(p["step"] for p in read_log(run_dir / "curve.jsonl")) == 4  # as the checkpoint
    monkeypatch.setattr(Trainer, "_step", real_step)
    resumed = execute_run_dir(run_dir, progress=False)
    assert without_timings(resumed["curve"]) == without_timings(whole["curve"])
    assert [p["step"] for p in resumed["curve"]] == list(range(7))


def test_validation_subset_is_fixed_by_the_seed(tiny_benchmark):
    from harness.data import load_benchmark

    bench = load_benchmark(tiny_benchmark)
    first = validation_split(bench, 12, 20, seed=0)
    assert first.queries.ids == validation_split(bench, 12, 20, seed=0).queries.ids
    assert first.queries.ids != validation_split(bench, 12, 20, seed=1).queries.ids
    assert len(first.queries) == 12 and len(first.references) == 20
    gt = bench.ground_truth
    chosen = set(first.queries.ids)
    expected = {(q, r) for q, r in zip(gt.query, gt.reference, strict=True) if q in chosen}
    assert set(zip(first.ground_truth.query, first.ground_truth.reference, strict=True)) == expected
    assert set(first.ground_truth.reference) <= set(first.references.ids)
    with pytest.raises(ConfigError, match="eval.val_references is 41, but the benchmark has 40"):
        validation_split(bench, 12, 41, seed=0)


def test_bad_monitor_settings_are_named():
    for key in ("every", "consistency_every"):
        with pytest.raises(ConfigError, match=f"eval.{key} must be > 0 or null, got 0"):
            resolve_config("qk", overrides=[f"eval.{key}=0"])
    with pytest.raises(ConfigError, match="eval.val_queries must be > 0, got -1"):
        resolve_config("qk", overrides=["eval.val_queries=-1"])


# --- the stale-negatives measure on cases with a known answer --------------------------------


def _method(name, *extra):
    cfg = config(name, *extra)
    return build_method(cfg, 48, torch.device("cpu"))


def _batch(seed, n=8, views=2):
    g = torch.Generator().manual_seed(seed)
    return TrainBatch(
        views=[torch.randn(n, 3, 32, 32, generator=g) for _ in range(views)],
        indices=torch.randperm(48, generator=g)[:n],
    )


def _probe(step, batches_by_step):
    return NegativeProbe(
        step=step,
        batch_at=lambda s: batches_by_step[s],
        training_images=None,
        generator=torch.Generator().manual_seed(0),
        batches=len(batches_by_step),
        batch_size=8,
    )


@torch.no_grad()
def test_moco_queue_is_exact_until_the_key_encoder_moves_then_as_computed_by_hand():
    method = _method("moco").train()
    batches = {0: _batch(0), 1: _batch(1)}
    for step, batch in batches.items():
        method.training_step(batch, step)
    figures = method.stale_negatives(_probe(2, batches))
    assert figures["consistency"] == pytest.approx(1.0, abs=1e-5)
    # 2 x 16 keys through 24 slots: 8 of step 0 (age 2) are left and 16 of step 1 (age 1).
    assert figures["consistency_entries"] == 24
    assert figures["negative_age"] == pytest.approx((8 * 2 + 16 * 1) / 24)
    # Move the key encoder; the expected cosine is computed here from the queue and the batch.
    for p in method.key_encoder.parameters():
        p.add_(0.05 * torch.randn_like(p))
    queue = method.queue
    expected = []
    for step, batch in batches.items():
        keys = method.key_encoder.train()(torch.cat([batch.views[1], batch.views[0]]))
        slots = (queue.written_step == step).nonzero().flatten()
        expected.append((queue.keys[slots] * keys[queue.written_row[slots]]).sum(1))
    figures = method.stale_negatives(_probe(2, batches))
    assert figures["consistency"] == pytest.approx(float(torch.cat(expected).mean()), abs=1e-6)
    assert figures["consistency"] < 0.999


@torch.no_grad()
def test_membank_slot_is_the_momentum_mix_computed_by_hand():
    method = _method("membank", "membank.bank_momentum=0.5").train()
    batch = _batch(0, views=1)
    before = method.bank.slots[batch.indices].clone()
    method.training_step(batch, 0)
    fresh = F.normalize(method.encoder(batch.views[0]), dim=1)
    mixed = F.normalize(0.5 * before + 0.5 * fresh, dim=1)
    expected = float((mixed * fresh).sum(1).mean())
    figures = method.stale_negatives(_probe(3, {0: batch}))
    assert figures["consistency"] == pytest.approx(expected, abs=1e-5) and expected < 0.999
    assert figures["consistency_entries"] == 8
    # Unvisited slots hold their random start (no on_train_start here): no age, not compared.
    assert figures["negative_age"] == pytest.approx(3.0)
    zero = _method("membank", "membank.bank_momentum=0")
    zero.train().training_step(batch, 0)
    assert zero.stale_negatives(_probe(1, {0: batch}))["consistency"] == pytest.approx(1, abs=1e-5)


@pytest.mark.slow
def test_qk_cache_is_exact_within_a_phase_and_the_measure_can_fail(tiny_benchmark, tmp_path):
    _, record = run(tiny_benchmark, tmp_path, "qk", "eval.consistency_every=1", "train.lr=0.01")
    points = [p for p in record["curve"] if "negatives/consistency" in p]
    assert len(points) == 6
    for p in points:
        assert p["negatives/consistency"] == pytest.approx(1.0, abs=1e-5)
    assert [p["negatives/negative_age"] for p in points] == [1, 2, 3, 0, 1, 2]  # phase_steps 4


def test_qk_measure_sees_a_frozen_side_that_moved(tiny_benchmark):
    from harness.pipeline import load_data

    cfg = config("qk", data=tiny_benchmark)
    data = load_data(cfg)
    method = build_method(cfg, len(data.benchmark.training), torch.device("cpu"))
    trainer = Trainer(
        method, data.train_data, cfg.train, seed=0, run_dir="/nonexistent", progress=False
    )
    method.on_train_start(trainer.context, 0)
    from harness.monitor import negative_probe

    assert method.stale_negatives(negative_probe(trainer, 1, 2))["consistency"] == pytest.approx(
        1.0, abs=1e-5
    )
    with torch.no_grad():
        for p in method.key.backbone.parameters():  # the frozen side in the first (Q) phase
            p.add_(0.1 * torch.randn_like(p))
    assert method.stale_negatives(negative_probe(trainer, 1, 2))["consistency"] < 0.99


# --- TensorBoard --------------------------------------------------------------------------------


@pytest.mark.slow
def test_tensorboard_holds_the_logged_and_measured_scalars(tiny_benchmark, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = run(tiny_benchmark, tmp_path, "moco", *MEASURED)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_s", "val/val_micro_ap"} <= tags
    assert "negatives/consistency" in tags
    losses = [e.value for e in events.Scalars("train/loss")]
    logged = [line["loss"] for line in read_log(run_dir / "train_log.jsonl")]
    assert losses == pytest.approx(logged)


def test_missing_tensorboard_is_one_line_with_the_way_out(monkeypatch, tmp_path):
    from harness.monitor import tensorboard_writer

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match="--set train.tensorboard=false"):
        tensorboard_writer(tmp_path, None)
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.slow
def test_report_draws_the_curves_and_reads_equal_time_off_them(tiny_benchmark, tmp_path):
    from harness.report.build import build_report

    for method in ("qk", "none"):
        run(tiny_benchmark, tmp_path / "runs", method, *MEASURED)
    report = build_report([tmp_path / "runs"], tmp_path / "report")
    names = {p.name for p in report.written}
    assert {"learning_curves.png", "stale_negatives.png", "curves.csv"} <= names
    assert any(note.startswith("val µAP @ equal time") for note in report.notes)
    assert "val µAP @ equal time" in report.table.columns
    qk = report.summary.set_index("method").loc["qk"]
    assert qk["consistency_mean"] == pytest.approx(1.0, abs=1e-5)
