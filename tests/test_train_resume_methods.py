"""Checkpoint round trip with the real methods: a run interrupted after k steps and resumed ends with
exactly the weights, banks/queues/phases and loss log of the uninterrupted run (CPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_run_overrides

from harness.config import resolve_config
from harness.pipeline import build_method, load_data
from harness.train import read_log, train

TINY = tiny_run_overrides(
    "train.budget_value=5", "train.warmup_steps=2", "train.checkpoint_every=2"
)
# Small banks/queues and short phases, so that the interrupted window crosses a phase switch and
# queue wrap-around; membank samples its negatives at random (the RNG state must be restored), and
# so does SSCD's mixup; XBM's memory wraps around and is in use from step 1.
METHODS = {
    "qk": ["qk.phase_steps=2"],
    "moco": ["moco.queue_size=12"],
    "membank": ["membank.num_negatives=16"],
    "simclr": [],
    "sscd": ["sscd.mixup=true", "sscd.mix_probability=0.5"],
    "xbm": ["xbm.memory_size=12", "xbm.warmup_steps=1"],
}


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    from harness.data.synth import SynthParams, synthesize

    params = SynthParams(references=20, training=40, queries=10, size=32)
    return synthesize(tmp_path_factory.mktemp("bench") / "mini", params, workers=1, progress=False)


class Interrupt(Exception):
    pass


def without_speed(log):
    return [{k: v for k, v in line.items() if k != "images_per_s"} for line in log]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_resume_continues_bit_for_bit(name, tiny_benchmark, tmp_path):
    cfg = resolve_config(name, overrides=[*TINY, *METHODS[name]], data=str(tiny_benchmark))
    data = load_data(cfg).train_data

    def fit(run_dir, method):
        return train(method, data, cfg.train, seed=cfg.seed, run_dir=run_dir, progress=False)

    reference = build_method(cfg, 40, torch.device("cpu"))
    reference_result = fit(tmp_path / "full", reference)

    interrupted = build_method(cfg, 40, torch.device("cpu"))
    hook = interrupted.on_step_end

    def stop_after_step_3(ctx, step):
        hook(ctx, step)
        if step == 3:  # the checkpoint holds step 2: steps 2 and 3 are lost and redone
            raise Interrupt

    interrupted.on_step_end = stop_after_step_3
    with pytest.raises(Interrupt):
        fit(tmp_path / "resumed", interrupted)
    torch.manual_seed(99)  # a new process starts from another RNG state
    resumed = build_method(cfg, 40, torch.device("cpu"))
    result = fit(tmp_path / "resumed", resumed)

    assert result.resumed_from == 2 and result.steps == 5
    expected, got = reference.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{name}: {key} differs after resume"
    assert without_speed(result.log) == without_speed(reference_result.log)
    assert without_speed(read_log(tmp_path / "resumed" / "train_log.jsonl")) == without_speed(
        reference_result.log
    )
