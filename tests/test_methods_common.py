"""Contract tests shared by every method: registry, descriptors, learning, checkpoints, bad config."""

from __future__ import annotations

import copy

import pytest
import torch
from test_methods_support import (  # noqa: F401  (one_thread: autouse fixture)
    BATCH,
    FakeTrainer,
    build,
    context,
    fixed_batch,
    images,
    one_thread,
    optimizer_for,
    run_steps,
)
from torch import nn

from harness.errors import ConfigError
from methods import create_method, get_method, list_methods
from methods.backbone import GeMPooled
from methods.membank import MemoryBankConfig
from methods.moco import MoCoConfig
from methods.none import NoneConfig
from methods.qk import QKConfig
from methods.simclr import SimCLRConfig
from methods.sscd import SSCDConfig
from methods.xbm import XBMConfig

TRAINED = ["simclr", "moco", "membank", "qk", "sscd", "xbm"]


def _small_config(name):
    return {
        "simclr": SimCLRConfig(),
        "moco": MoCoConfig(queue_size=32),
        "membank": MemoryBankConfig(num_negatives=16),
        "qk": QKConfig(phase_steps=2),
        # mixup on: the round trip must restore its draws too
        "sscd": SSCDConfig(mixup=True, mix_probability=0.5),
        "xbm": XBMConfig(memory_size=12, warmup_steps=1),
    }[name]


def test_registry_lists_every_method_with_a_summary():
    assert set(list_methods()) >= {"none", "simclr", "moco", "membank", "qk", "sscd", "xbm"}
    for name in list_methods():
        summary = get_method(name).summary
        assert summary and "\n" not in summary


def test_unknown_method_and_wrong_config_type_are_config_errors():
    with pytest.raises(ConfigError, match="unknown method"):
        create_method("byol", None, context())
    with pytest.raises(ConfigError, match="MoCoConfig"):
        create_method("moco", SimCLRConfig(), context())


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="backbone"):
        build("simclr", ctx=context(backbone="no_such_model_xyz"))


@pytest.mark.parametrize("name", ["none", *TRAINED])
def test_describe_gives_unit_float32_descriptors_for_both_roles(name):
    method = build(name, _small_config(name) if name != "none" else None)
    trainer = FakeTrainer(images(24), total_steps=4)
    if method.trains():
        method.on_train_start(trainer.ctx, 0)
    method.eval()
    with torch.no_grad():
        for role in ("query", "reference"):
            out = method.describe(images(5, seed=3), role)
            assert out.shape == (5, 16) and out.dtype == torch.float32
            torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


def test_none_is_untrained_and_deterministic_for_a_seed():
    first, second = build("none"), build("none")
    assert not first.trains() and first.negatives_per_step() == 0
    batch = images(4)
    with torch.no_grad():
        torch.testing.assert_close(
            first.eval().describe(batch, "query"), second.eval().describe(batch, "query")
        )


@pytest.mark.parametrize("name", TRAINED)
def test_loss_decreases_over_a_few_steps(name):
    # Two fixed disjoint tiny batches, alternating, so MoCo's 8-key queue always holds the *other*
    # batch's keys (a queue of the same images would make the positive its own negative). Step 0 is
    # left out of the comparison: the queue/bank then still holds its random initial keys.
    # XBM's 16-entry memory likewise holds the other batch's 2 x 8 embeddings.
    config = {
        "moco": MoCoConfig(queue_size=BATCH),
        "qk": QKConfig(phase_steps=100),
        "sscd": SSCDConfig(),
        "xbm": XBMConfig(memory_size=2 * BATCH, warmup_steps=1),
    }.get(name, _small_config(name))
    method = build(name, config)
    data = images(24)
    trainer = FakeTrainer(data, total_steps=10)
    method.on_train_start(trainer.ctx, 0)
    first = torch.arange(BATCH)
    second = torch.arange(BATCH, 2 * BATCH)
    batches = [fixed_batch(data, first, seed=0), fixed_batch(data, second, seed=1)]
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    losses = run_steps(method, trainer, optimizer, 0, 10, batch_for_step=lambda s: batches[s % 2])
    assert sum(losses[-3:]) / 3 < sum(losses[1:4]) / 3 - 0.1, losses


def _state(method, optimizer):
    return copy.deepcopy({"method": method.state_dict(), "optimizer": optimizer.state_dict()})


@pytest.mark.parametrize("name", TRAINED)
def test_checkpoint_round_trip_resumes_bit_for_bit(name):
    config = _small_config(name)
    data = images(24)
    straight = build(name, config)
    trainer = FakeTrainer(data, total_steps=6)
    straight.on_train_start(trainer.ctx, 0)
    optimizer = optimizer_for(straight)
    run_steps(straight, trainer, optimizer, 0, 3)
    checkpoint = _state(straight, optimizer)
    expected = run_steps(straight, trainer, optimizer, 3, 6)

    torch.manual_seed(123)  # a fresh instance with different initial weights
    resumed = create_method(name, config, context())
    resumed.load_state_dict(checkpoint["method"])
    resumed.on_train_start(trainer.ctx, 3)
    resumed_optimizer = optimizer_for(resumed)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    got = run_steps(resumed, trainer, resumed_optimizer, 3, 6)

    assert got == expected
    for (key, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), key


@pytest.mark.parametrize(
    "name, config, key",
    [
        ("simclr", SimCLRConfig(temperature=0), "simclr.temperature"),
        ("moco", MoCoConfig(temperature=-1), "moco.temperature"),
        ("moco", MoCoConfig(queue_size=0), "moco.queue_size"),
        ("moco", MoCoConfig(momentum=1.5), "moco.momentum"),
        ("membank", MemoryBankConfig(temperature=0), "membank.temperature"),
        ("membank", MemoryBankConfig(num_negatives=25), "membank.num_negatives"),
        ("membank", MemoryBankConfig(bank_momentum=1.0), "membank.bank_momentum"),
        ("qk", QKConfig(num_negatives=25), "qk.num_negatives"),
        ("qk", QKConfig(num_negatives=0), "qk.num_negatives"),
        ("qk", QKConfig(temperature=0.0), "qk.temperature"),
        ("qk", QKConfig(phase_steps=0), "qk.phase_steps"),
        ("qk", QKConfig(cache_dtype="int8"), "qk.cache_dtype"),
        ("qk", QKConfig(cache_view="edited"), "qk.cache_view"),
        ("qk", QKConfig(describe_mode="both"), "qk.describe_mode"),
        ("qk", QKConfig(chunk_size=0), "qk.chunk_size"),
        ("none", NoneConfig(projection="pca"), "none.projection"),
        ("sscd", SSCDConfig(temperature=0), "sscd.temperature"),
        ("sscd", SSCDConfig(entropy_weight=-1), "sscd.entropy_weight"),
        ("sscd", SSCDConfig(projection="conv"), "sscd.projection"),
        ("sscd", SSCDConfig(mix_probability=1.5), "sscd.mix_probability"),
        ("sscd", SSCDConfig(cutmix_share=-0.1), "sscd.cutmix_share"),
        ("sscd", SSCDConfig(mix_alpha=0), "sscd.mix_alpha"),
        ("xbm", XBMConfig(memory_size=0), "xbm.memory_size"),
        ("xbm", XBMConfig(warmup_steps=-1), "xbm.warmup_steps"),
        ("xbm", XBMConfig(temperature=0), "xbm.temperature"),
    ],
)
def test_invalid_config_is_a_config_error_naming_the_key(name, config, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        create_method(name, config, context(num_train=24))


def test_methods_that_index_the_training_set_need_its_size():
    for name in ("membank", "qk"):
        with pytest.raises(ConfigError, match="num_train_images"):
            create_method(name, None, context(num_train=0))


def test_negatives_per_step_for_the_record():
    assert build("simclr").negatives_per_step(batch_size=64) == 126
    assert build("moco", MoCoConfig(queue_size=32)).negatives_per_step() == 32
    assert build("membank", MemoryBankConfig(num_negatives=16)).negatives_per_step() == 16
    assert build("membank", MemoryBankConfig(num_negatives=None)).negatives_per_step() == 23
    assert build("qk").negatives_per_step() == 23
    assert build("qk", QKConfig(num_negatives=10)).negatives_per_step() == 10
    assert build("sscd").negatives_per_step(batch_size=64) == 126
    assert build("xbm", XBMConfig(memory_size=32)).negatives_per_step(batch_size=64) == 126 + 32


def test_gem_pooling_closed_form():
    # One channel, a 2 x 2 map of 1, 2, 3, 4: ((1 + 8 + 27 + 64) / 4)^(1/3) = 25^(1/3)
    gem = GeMPooled(nn.Identity(), "identity")
    pooled = gem(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
    torch.testing.assert_close(pooled, torch.tensor([[25.0 ** (1 / 3)]]))
    # Negative features are clamped (GeM is for non-negative maps), as in SSCD
    assert gem(torch.full((1, 1, 2, 2), -1.0)).item() == pytest.approx(1e-6, rel=1e-4)


@pytest.mark.parametrize("name", ["none", *TRAINED])
def test_gem_pooling_is_the_protocols_for_every_method(name):
    config = _small_config(name) if name != "none" else None
    avg = build(name, config, context(pooling="avg"))
    gem = build(name, config, context(pooling="gem"))
    poolers = [m for m in gem.modules() if isinstance(m, GeMPooled)]
    assert poolers and not any(isinstance(m, GeMPooled) for m in avg.modules())
    # Same initial weights (the trunk is built as before); only the pooling differs. At 64 px the
    # test ResNet's feature map is 2 x 2, so GeM and the mean differ.
    batch = images(3, seed=4)
    batch = torch.nn.functional.interpolate(batch, size=64)
    trunk = poolers[0].trunk.eval()
    with torch.no_grad():
        feature_map = trunk(batch)
        assert feature_map.shape[-2:] == (2, 2)
        pooled = poolers[0].eval()(batch)
    torch.testing.assert_close(pooled, feature_map.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3))
    assert not torch.allclose(pooled, feature_map.mean((2, 3)))
    gem.eval()
    with torch.no_grad():
        out = gem.describe(batch, "query")
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_gem_pooling_needs_a_feature_map_and_pooling_is_checked():
    method = build("simclr", ctx=context(backbone="test_vit", pooling="gem"))
    with pytest.raises(ConfigError, match="model.pooling=gem"):
        method.describe(images(2), "query")
    with pytest.raises(ConfigError, match="model.pooling"):
        build("simclr", ctx=context(pooling="max"))


def test_run_config_pooling_reaches_every_backbone():
    from harness.config import resolve_config
    from harness.pipeline import build_method

    overrides = ["model.backbone=test_resnet", "model.image_size=32", "model.embedding_dim=16"]
    assert resolve_config("sscd", overrides=overrides).model.pooling == "avg"
    cfg = resolve_config("xbm", overrides=[*overrides, "model.pooling=gem"])
    method = build_method(cfg, 24, torch.device("cpu"))
    assert method.context.pooling == "gem"
    assert isinstance(method.encoder.backbone, GeMPooled)
    with pytest.raises(ConfigError, match="model.pooling"):
        resolve_config("sscd", overrides=[*overrides, "model.pooling=max"])
