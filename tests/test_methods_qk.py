"""QK iteration: phases, which side learns, all N negatives per step, subsampling, descriptors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_methods_support import (  # noqa: F401  (one_thread: autouse fixture)
    FakeTrainer,
    build,
    context,
    images,
    make_batch,
    one_thread,
    run_steps,
)

from methods.qk import QKConfig

N_TRAIN = 24


def _naive_loss(method, batch, trained, frozen, data, temperature):
    """Cross-entropy of the trained side's embeddings over the frozen side's keys of ALL images."""
    frozen.eval()
    with torch.no_grad():
        features = frozen.backbone(data)
    keys = F.normalize(frozen.head(features), dim=1)
    embedding = trained(batch.views[0])
    return F.cross_entropy(embedding @ keys.T / temperature, batch.indices)


def test_phases_alternate_and_each_phase_recomputes_the_cache():
    method = build("qk", QKConfig(phase_steps=2))
    trainer = FakeTrainer(images(N_TRAIN), total_steps=7)
    method.on_train_start(trainer.ctx, 0)
    sides = []
    for step in range(7):
        sides.append(method.trained_side(method.phase_of(step)))
        run_steps(method, trainer, torch.optim.SGD(method.parameters(), lr=0.01), step, step + 1)
    assert sides == ["q", "q", "k", "k", "q", "q", "k"]
    assert len(trainer.encode_calls) == 4  # start, after steps 1, 3, 5; none after the last step
    assert build("qk", QKConfig(phase_steps=3, first_phase="k")).trained_side(0) == "k"


@pytest.mark.parametrize("train_frozen_head", [True, False])
def test_gradients_reach_only_the_side_being_optimized(train_frozen_head):
    method = build("qk", QKConfig(phase_steps=1, train_frozen_head=train_frozen_head))
    data = images(N_TRAIN)
    trainer = FakeTrainer(data, total_steps=2)
    method.on_train_start(trainer.ctx, 0)
    for step, (trained, frozen) in enumerate(
        [(method.query, method.key), (method.key, method.query)]
    ):
        loss, _ = method.training_step(make_batch(data, step), step)
        loss.backward()
        # (timm zero-initialises each residual block's last BatchNorm, so some grads start at 0)
        assert all(p.grad is not None for p in trained.parameters())
        assert next(trained.backbone.parameters()).grad.abs().sum() > 0
        assert all(p.grad is None for p in frozen.backbone.parameters())
        for p in frozen.head.parameters():
            assert (p.grad is not None and p.grad.abs().sum() > 0) == train_frozen_head
        method.zero_grad(set_to_none=True)
        method.on_step_end(trainer.ctx, step)


@pytest.mark.parametrize("train_frozen_head", [True, False])
def test_every_step_scores_against_all_training_images(train_frozen_head):
    config = QKConfig(phase_steps=1, train_frozen_head=train_frozen_head, temperature=0.2)
    method = build("qk", config)
    data = images(N_TRAIN)
    trainer = FakeTrainer(data, total_steps=2)
    method.on_train_start(trainer.ctx, 0)
    for step, (trained, frozen) in enumerate(
        [(method.query, method.key), (method.key, method.query)]
    ):
        batch = make_batch(data, step)
        torch.manual_seed(step)
        loss, _ = method.training_step(batch, step)
        torch.manual_seed(step)
        want = _naive_loss(method, batch, trained, frozen, data, 0.2)
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
        assert method.negatives_per_step() == N_TRAIN - 1
        method.on_step_end(trainer.ctx, step)


def test_the_frozen_backbone_stays_in_eval_mode_while_training():
    method = build("qk", QKConfig(phase_steps=1))  # test_resnet has BatchNorm
    trainer = FakeTrainer(images(N_TRAIN), total_steps=3)
    method.on_train_start(trainer.ctx, 0)
    method.train()
    assert method.query.training and not method.key.backbone.training
    method.on_step_end(trainer.ctx, 0)
    method.train()
    assert method.key.training and not method.query.backbone.training


def test_subsampled_negatives_use_a_fixed_subset_per_phase_and_clean_positives():
    config = QKConfig(phase_steps=1, num_negatives=10, temperature=0.2)
    method = build("qk", config)
    data = images(N_TRAIN)
    trainer = FakeTrainer(data, total_steps=3)
    method.on_train_start(trainer.ctx, 0)
    rows = method.cache_rows.clone()
    assert len(rows) == 10 and len(set(rows.tolist())) == 10 and method.negatives_per_step() == 10
    batch = make_batch(data, 0)
    torch.manual_seed(0)
    loss, _ = method.training_step(batch, 0)
    method.key.eval()
    with torch.no_grad():
        keys = F.normalize(method.key.head(method.key.backbone(data)), dim=1)
    torch.manual_seed(0)
    embedding = method.query(batch.views[0])
    logits = torch.cat(
        [(embedding * keys[batch.indices]).sum(1, keepdim=True), embedding @ keys[rows].T], 1
    )
    want = F.cross_entropy(logits / 0.2, torch.zeros(len(batch.indices), dtype=torch.long))
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
    method.on_step_end(trainer.ctx, 0)
    assert not torch.equal(method.cache_rows, rows)  # a new subset for the new phase
    assert trainer.encoded_rows == [10, 10]  # each phase start encodes its subset alone


def test_costs_give_the_cache_bytes_by_dtype_and_each_phase_start():
    data = images(N_TRAIN)
    sizes = {}
    for dtype, width in (("fp32", 4), ("fp16", 2), ("bf16", 2)):
        method = build("qk", QKConfig(cache_dtype=dtype, phase_steps=2))
        assert method.costs() is None  # no phase started yet
        trainer = FakeTrainer(data, total_steps=4)
        method.on_train_start(trainer.ctx, 0)
        method.on_step_end(trainer.ctx, 1)  # step 2 starts phase 1
        costs = method.costs()
        cache = costs["cache"]
        assert cache["rows"] == N_TRAIN and cache["dtype"] == dtype
        assert cache["bytes"] == N_TRAIN * cache["width"] * width
        starts = costs["phase_starts"]
        assert starts["count"] == 2 and len(starts["seconds"]) == 2
        assert starts["per_step_seconds"] == pytest.approx(starts["mean_seconds"] / 2)
        sizes[dtype] = cache["bytes"]
    assert sizes["fp16"] == sizes["bf16"] == sizes["fp32"] // 2


@pytest.mark.parametrize("cache_dtype", ["fp16", "bf16"])
def test_low_precision_cache_gives_nearly_the_same_loss(cache_dtype):
    data = images(N_TRAIN)
    batch = make_batch(data, 0)
    losses = []
    for dtype in ("fp32", cache_dtype):
        method = build("qk", QKConfig(cache_dtype=dtype)).eval()  # eval: no BatchNorm noise
        method.on_train_start(FakeTrainer(data, total_steps=1).ctx, 0)
        method.eval()
        losses.append(method.training_step(batch, 0)[0].detach())
    assert method.cache.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[cache_dtype]
    torch.testing.assert_close(losses[1], losses[0], rtol=0.02, atol=0.02)


def test_the_augmented_cache_view_is_passed_to_the_trainer():
    method = build("qk", QKConfig(cache_view="augmented"))
    trainer = FakeTrainer(images(N_TRAIN), total_steps=1)
    method.on_train_start(trainer.ctx, 0)
    assert trainer.encode_calls == ["augmented"]


@pytest.mark.parametrize(
    "mode, query_side, reference_side",
    [("asymmetric", "query", "key"), ("query", "query", "query"), ("key", "key", "key")],
)
def test_describe_modes_pick_the_encoders(mode, query_side, reference_side):
    method = build("qk", QKConfig(describe_mode=mode)).eval()
    torch.nn.init.normal_(method.key.head.layers[2].weight)  # make Q and K clearly different
    batch = images(4, seed=5)
    with torch.no_grad():
        assert torch.equal(method.describe(batch, "query"), getattr(method, query_side)(batch))
        assert torch.equal(
            method.describe(batch, "reference"), getattr(method, reference_side)(batch)
        )


def test_training_step_without_a_cache_for_its_phase_is_an_error():
    method = build("qk", QKConfig(phase_steps=2))
    data = images(N_TRAIN)
    with pytest.raises(RuntimeError, match="on_train_start"):
        method.training_step(make_batch(data, 0), 0)
    method.on_train_start(FakeTrainer(data, total_steps=4).ctx, 0)
    with pytest.raises(RuntimeError, match="phase"):
        method.training_step(make_batch(data, 2), 2)


def test_context_is_used():
    assert build("qk", ctx=context(num_train=7)).negatives_per_step() == 6


@pytest.mark.parametrize("init", ["shared", "independent"])
def test_init_decides_whether_q_and_k_start_in_one_space(init):
    method = build("qk", QKConfig(init=init, describe_mode="asymmetric")).eval()
    data = images(8)
    same = torch.equal(method.describe(data, "query"), method.describe(data, "reference"))
    assert same == (init == "shared")


def test_unknown_init_is_a_config_error():
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="qk.init"):
        build("qk", QKConfig(init="copy"))


def test_the_trainers_encoding_keeps_the_cache_dtype():
    """QK's fp16/bf16 cache halves memory only if the trainer's pass does not widen it to float32
    (it did: encode_dataset stacked `.float()` outputs, so an fp16 cache took fp32's bytes)."""
    from harness.encode import encode_dataset

    data = images(N_TRAIN)
    items = [(data[i], i, f"T{i}") for i in range(N_TRAIN)]
    out = encode_dataset(
        items,
        lambda x: x.flatten(1)[:, :4].to(torch.float16),
        seed=0,
        seed_key=0,
        batch_size=5,
        num_workers=0,
        device=torch.device("cpu"),
        channels_last=False,
        amp_dtype=None,
        desc="",
        progress=False,
    )
    assert out.dtype == torch.float16 and out.shape == (N_TRAIN, 4)
    assert torch.equal(out, data.flatten(1)[:, :4].to(torch.float16))
