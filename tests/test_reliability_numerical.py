"""Numerical faults: a diverging run stops with the cause and keeps its last good checkpoint; a
float16 key cache that would overflow is refused before it poisons the loss."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch
from conftest import run_harness, set_flags, tiny_run_overrides
from test_methods_support import FakeTrainer, build, images, make_batch
from test_train import cfg, make_method, run

from harness.errors import HarnessError
from harness.train import TrainingDiverged, read_log
from methods.qk import QKConfig

TINY = tiny_run_overrides(
    "train.budget_value=6",
    "train.checkpoint_every=1",
    "train.warmup_steps=1",
    "eval.score_norm_n=2",
    # A learning rate no model survives: SGD's weights overflow and the loss turns NaN. Without
    # the head's BatchNorm: with it, the very first step already leaves inf in the weights, which
    # the checkpoint guard reports instead (test_weights_gone_non_finite_... below).
    "model.head_batch_norm=false",
    "train.optimizer=sgd",
    "train.lr=1e38",
    "train.schedule=constant",
)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_diverging_run_stops_with_the_cause_and_keeps_the_last_good_checkpoint(
    tiny_benchmark, tmp_path
):
    argv = ["run", "--method", "simclr", "--no-progress"]
    argv += ["--data", str(tiny_benchmark), "--out", str(tmp_path), *set_flags(TINY)]
    done = run_harness(*argv, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    (run_dir,) = tmp_path.iterdir()
    checkpoint = run_dir / "checkpoints" / "last.pt"
    message = re.fullmatch(
        r"error: training diverged: the loss of method 'simclr' is (nan|inf|-inf) at step (\d+); "
        r"stopped, the last good checkpoint \((.+), step (\d+)\) is kept\. Lower train\.lr or "
        r"raise the method's temperature, then run again \(a changed config starts a new run "
        r"directory\)",
        done.stderr.strip(),
    )
    assert message, done.stderr
    bad_step, kept_path, kept_step = int(message[2]), message[3], int(message[4])
    assert kept_path == str(checkpoint) and kept_step == bad_step
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == kept_step
    assert all(torch.isfinite(t).all() for t in state["method"].values() if t.is_floating_point())
    log = read_log(run_dir / "train_log.jsonl")
    assert [line["step"] for line in log] == list(range(bad_step + 1))
    assert log[-1]["loss"] is None and all(line["loss"] is not None for line in log[:-1])
    assert not (run_dir / "record.json").exists()

    # The same command again resumes from the kept checkpoint, meets the same fault, and
    # overwrites nothing.
    before = {p.name: _sha(p) for p in (checkpoint, run_dir / "config.yaml")}
    again = run_harness(*argv, timeout=300)
    assert again.returncode == 2 and again.stderr.strip() == done.stderr.strip()
    assert {p.name: _sha(p) for p in (checkpoint, run_dir / "config.yaml")} == before


def test_weights_gone_non_finite_never_replace_the_last_good_checkpoint(tmp_path):
    """A finite loss does not prove finite weights: a buffer the loss does not read can overflow."""
    method = make_method()
    step_end = method.on_step_end

    def poison_after_step_5(ctx, step):
        step_end(ctx, step)
        if step == 5:
            with torch.no_grad():
                method.frozen_keys.weight[0, 0] = float("inf")

    method.on_step_end = poison_after_step_5
    with pytest.raises(
        TrainingDiverged, match=r"left NaN/inf in frozen_keys\.weight.*step 4\) is kept"
    ):
        run(tmp_path, "a", config=cfg(checkpoint_every=4, budget_value=9), method=method)
    state = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4
    assert torch.isfinite(state["method"]["frozen_keys.weight"]).all()


def test_fp16_key_cache_overflow_is_refused_with_the_remedy():
    # Inputs far outside the image range push the raw backbone features past float16's 65504.
    data = images(24) * 1e6
    trainer = FakeTrainer(data, total_steps=4)
    method = build("qk", QKConfig(phase_steps=2, cache_dtype="fp16"))
    with pytest.raises(HarnessError) as err:
        method.on_train_start(trainer.ctx, 0)
    assert "beyond float16's range (±65504)" in str(err.value)
    assert "set qk.cache_dtype=bf16" in str(err.value)

    # The remedy it names works: bf16 holds the same features, and the loss stays finite.
    method = build("qk", QKConfig(phase_steps=2, cache_dtype="bf16"))
    method.on_train_start(trainer.ctx, 0)
    assert method.cache.dtype == torch.bfloat16 and torch.isfinite(method.cache.float()).all()
    loss, _ = method.training_step(make_batch(data, 0), 0)
    assert torch.isfinite(loss)


def test_fp16_key_cache_within_range_is_kept_in_fp16():
    trainer = FakeTrainer(images(24), total_steps=4)
    method = build("qk", QKConfig(phase_steps=2, cache_dtype="fp16"))
    method.on_train_start(trainer.ctx, 0)
    assert method.cache.dtype == torch.float16 and torch.isfinite(method.cache).all()


def test_nan_descriptors_never_reach_a_record(tmp_path):
    """If a model's descriptors are NaN/inf, the run says so instead of scoring garbage."""
    from PIL import Image

    from harness.config import resolve_config
    from harness.data.layout import ImageSet
    from harness.describe import extract_descriptors

    class Broken(torch.nn.Module):
        def describe(self, images, role):
            return torch.full((len(images), 16), float("nan"))

    png = tmp_path / "R000000.png"
    Image.new("RGB", (32, 32)).save(png)
    config = resolve_config("simclr", overrides=[*TINY[:3], "data.workers=0"])
    with pytest.raises(
        HarnessError, match=r"produced NaN/inf descriptors for the references images"
    ):
        extract_descriptors(
            Broken(),
            ImageSet(["R000000"], [png]),
            "reference",
            config,
            torch.device("cpu"),
            split="references",
            progress=False,
        )


@pytest.mark.slow
def test_an_optimizer_step_that_overflows_stops_the_run_with_the_cause(tiny_benchmark, tmp_path):
    """AdamW divides lr by its bias correction: lr 1e38 overflows inside the step, before any NaN."""
    argv = ["run", "--method", "simclr", "--no-progress"]
    argv += ["--data", str(tiny_benchmark), "--out", str(tmp_path)]
    argv += set_flags(
        "train.optimizer=adamw" if item == "train.optimizer=sgd" else item for item in TINY
    )
    done = run_harness(*argv, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert re.fullmatch(
        r"error: training diverged: the loss of method 'simclr' is finite, but the optimizer step "
        r"overflowed \(.*overflow.*\) at step 0; stopped, no checkpoint was written yet\. .*",
        done.stderr.strip(),
    ), done.stderr
