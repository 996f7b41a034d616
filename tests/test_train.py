"""The shared trainer on a toy method: data stream, budgets, schedule, checkpoints, resume, NaN."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from harness.config import TrainConfig
from harness.errors import ConfigError
from harness.optimization import lr_factor, total_steps_for
from harness.seeding import StepBatchSampler
from harness.train import TrainData, TrainingDiverged, read_log, train
from methods.base import Method, MethodConfig, MethodContext

N_IMAGES, SIZE = 24, 8


@dataclass
class ToyConfig(MethodConfig):
    queue_size: int = 16
    nan_at_step: int = -1


class ToyMethod(Method):
    """A queue, a phase, random negative sampling and a cache rebuilt at train start: every kind
    of state the real methods carry, in a model small enough to train in milliseconds."""

    def __init__(self, config: ToyConfig, context: MethodContext):
        super().__init__(config, context)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 16), nn.Dropout(0.2))
        self.head = nn.Linear(16, 8)
        self.frozen_keys = nn.Linear(3 * SIZE * SIZE, 8).requires_grad_(False)  # QK's frozen side
        self.register_buffer("queue", F.normalize(torch.randn(config.queue_size, 8), dim=1))
        self.register_buffer("phase", torch.zeros((), dtype=torch.long))
        self.cache = None
        self.start_calls: list[int] = []

    def embed(self, x):
        return F.normalize(self.head(self.encoder(x)), dim=1)

    def training_step(self, batch, step):
        q, k = self.embed(batch.views[0]), self.embed(batch.views[1])
        picked = self.queue[torch.randint(0, len(self.queue), (4,))]
        cached = self.cache[batch.indices]
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ picked.T, q @ cached.T], dim=1)
        loss = F.cross_entropy(logits / 0.2, torch.zeros(len(q), dtype=torch.long))
        if step == self.config.nan_at_step:
            loss = loss * float("nan")
        self.queue = torch.cat([k.detach(), self.queue])[: len(self.queue)]
        return loss, {"phase": float(self.phase)}

    def on_train_start(self, ctx, step):
        self.start_calls.append(step)
        self.cache = ctx.encode_training_set(
            lambda x: F.normalize(self.frozen_keys(x.flatten(1)), dim=1), "clean"
        )

    def on_step_end(self, ctx, step):
        if (step + 1) % 3 == 0:
            self.phase.fill_(1 - int(self.phase))

    def describe(self, images, role):
        return self.embed(images)

    def negatives_per_step(self):
        return 4 + self.context.num_train_images


class ToyImages(Dataset):
    """Fixed base images; `augment` adds noise drawn from the global torch RNG, as real presets do."""

    def __init__(self, kind: str):
        self.base = torch.rand(N_IMAGES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
        self.kind = kind

    def __len__(self):
        return N_IMAGES

    def _view(self, i):
        return self.base[i] + 0.1 * torch.randn(3, SIZE, SIZE) + 0.01 * np.random.rand()

    def __getitem__(self, i):
        if self.kind == "stream":
            return {"views": [self._view(i), self._view(i)], "clean": self.base[i], "index": i}
        image = self.base[i] if self.kind == "clean" else self._view(i)
        return image, i, f"T{i:06d}"


def toy_data() -> TrainData:
    return TrainData(ToyImages("stream"), ToyImages("clean"), ToyImages("augmented"))


def make_method(**config) -> ToyMethod:
    torch.manual_seed(0)
    context = MethodContext(
        backbone="test_resnet",
        embedding_dim=16,
        image_size=32,
        head_batch_norm=False,
        pooling="avg",
        weights=None,
        weights_strict=True,
        pretrained=False,
        num_train_images=N_IMAGES,
        seed=0,
    )
    return ToyMethod(ToyConfig(**config), context)


def cfg(**overrides) -> TrainConfig:
    base = TrainConfig(
        batch_size=8,
        lr=0.1,
        warmup_steps=2,
        budget_kind="steps",
        budget_value=9,
        checkpoint_every=4,
        num_workers=0,
    )
    return replace(base, **overrides)


def run(tmp_path, name, config=None, method=None, **kw):
    method = method or make_method()
    result = train(
        method, toy_data(), config or cfg(), seed=3, run_dir=tmp_path / name, progress=False, **kw
    )
    return method, result


def without_speed(log):
    return [{k: v for k, v in line.items() if k != "images_per_s"} for line in log]


def assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_sampler_covers_each_epoch_once_and_splits_ranks():
    sampler = StepBatchSampler(20, 4, seed=5, end_step=10)
    batches = [[i for i, _ in b] for b in sampler]
    assert len(batches) == 10
    for epoch in range(2):  # 5 full batches per epoch: a permutation of all 20 items
        assert sorted(sum(batches[5 * epoch : 5 * epoch + 5], [])) == list(range(20))
    assert batches[:5] != batches[5:]  # a new order each epoch
    # Starting at an offset continues the same stream.
    assert [
        [i for i, _ in b] for b in StepBatchSampler(20, 4, 5, start_step=7, end_step=10)
    ] == batches[7:]
    # Two ranks get disjoint halves of the same global batch, with the same item seeds.
    full = list(StepBatchSampler(20, 4, 5, end_step=3))
    halves = [list(StepBatchSampler(20, 4, 5, end_step=3, rank=r, world_size=2)) for r in (0, 1)]
    for step in range(3):
        assert halves[0][step] + halves[1][step] == full[step]


def test_sampler_rejects_batch_larger_than_training_set():
    with pytest.raises(
        ConfigError, match=r"batch_size \(32\) is larger than the training set \(20"
    ):
        StepBatchSampler(20, 32, seed=0)


def test_lr_factor_warmup_then_cosine():
    assert lr_factor(0, 0.0, warmup_steps=4, schedule="cosine") == pytest.approx(0.25)
    assert lr_factor(3, 0.3, warmup_steps=4, schedule="cosine") == pytest.approx(1.0)
    assert lr_factor(10, 0.5, warmup_steps=4, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(10, 1.0, warmup_steps=4, schedule="cosine") == pytest.approx(0.0)
    assert lr_factor(10, 0.7, warmup_steps=0, schedule="constant") == 1.0


def test_budget_in_images_rounds_up_to_whole_steps():
    assert total_steps_for(cfg(budget_kind="images", budget_value=20)) == 3
    assert total_steps_for(cfg(budget_kind="steps", budget_value=7)) == 7
    assert total_steps_for(cfg(budget_kind="seconds", budget_value=7)) is None


def test_training_writes_log_and_checkpoint_and_changes_weights(tmp_path):
    before = make_method().state_dict()
    method, result = run(tmp_path, "a")
    assert result.steps == 9 and result.images_seen == 72 and result.resumed_from is None
    assert result.negatives_per_step == 4 + N_IMAGES
    log = read_log(tmp_path / "a" / "train_log.jsonl")
    assert [line["step"] for line in log] == list(range(9))
    assert all(math.isfinite(line["loss"]) and line["images_per_s"] > 0 for line in log)
    assert [line["phase"] for line in log[:4]] == [0.0, 0.0, 0.0, 1.0]
    lrs = [line["lr"] for line in log]
    assert lrs[0] == pytest.approx(0.05) and lrs[1] == pytest.approx(0.1) and lrs[-1] < lrs[2]
    assert (tmp_path / "a" / "checkpoints" / "last.pt").is_file()
    assert not torch.equal(before["encoder.1.weight"], method.state_dict()["encoder.1.weight"])
    ckpt = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 9
    assert torch.equal(ckpt["method"]["queue"], method.queue)


def test_same_seed_same_weights_whatever_the_worker_count(tmp_path):
    a, ra = run(tmp_path, "a")
    b, rb = run(tmp_path, "b", cfg(num_workers=2))
    assert_same_state(a, b)
    assert [x["loss"] for x in ra.log] == [x["loss"] for x in rb.log]


def test_interrupted_run_resumes_bit_for_bit(tmp_path):
    reference, ref_result = run(tmp_path, "full")

    class Interrupt(Exception):
        pass

    interrupted = make_method()
    original = interrupted.on_step_end

    def stop_after_step_5(ctx, step):
        original(ctx, step)
        if step == 5:  # the last checkpoint is at step 4: steps 4 and 5 are lost and redone
            raise Interrupt

    interrupted.on_step_end = stop_after_step_5
    with pytest.raises(Interrupt):
        run(tmp_path, "resumed", method=interrupted)
    torch.manual_seed(123)  # a fresh process would not share the interrupted one's RNG
    resumed, result = run(tmp_path, "resumed", method=make_method())
    assert result.resumed_from == 4 and resumed.start_calls == [4]
    # The interrupted process's wall-clock up to its step-4 checkpoint travels with it.
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    assert full["wall_seconds"] >= full["train_seconds"] > 0
    assert ref_result.earlier_wall_seconds is None and result.earlier_wall_seconds > 0
    assert_same_state(reference, resumed)
    # Losses, lrs and phase logs, step by step (throughput is a timing, not a result).
    assert without_speed(result.log) == without_speed(ref_result.log)
    assert without_speed(read_log(tmp_path / "resumed" / "train_log.jsonl")) == without_speed(
        ref_result.log
    )


def test_finished_training_is_not_redone(tmp_path):
    run(tmp_path, "a")
    method, result = run(tmp_path, "a", method=make_method())
    assert result.resumed_from == 9 and result.steps == 9 and len(result.log) == 9


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"loss .* is nan at step 6.*step 4\) is kept"):
        run(tmp_path, "a", method=make_method(nan_at_step=6))
    ckpt = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v.float()).all() for v in ckpt["method"].values())
    log = read_log(tmp_path / "a" / "train_log.jsonl")
    assert [line["step"] for line in log] == list(range(7)) and log[-1]["loss"] is None


def test_seconds_budget_stops_on_time(tmp_path):
    _, result = run(tmp_path, "a", cfg(budget_kind="seconds", budget_value=0.3))
    assert result.train_seconds >= 0.3 and result.steps >= 1
    assert (
        json.loads((tmp_path / "a" / "train_log.jsonl").read_text().splitlines()[-1])["step"]
        == result.steps - 1
    )


def test_batch_larger_than_training_set_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="larger than the training set"):
        run(tmp_path, "a", cfg(batch_size=64))
