"""DDP through the shared trainer: world size 2 on gloo gives the loss and gradients of world size 1
on the same global batch. The backbone is a LayerNorm ConvNeXt, so nothing depends on per-rank
batch statistics (BatchNorm statistics differ per rank by design)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import Dataset

from harness.config import TrainConfig
from harness.train import TrainData, train

N_IMAGES, SIZE, GLOBAL_BATCH, STEPS = 16, 32, 8, 2
# Negatives from the other rank matter for all: SimCLR and SSCD gather embeddings with gradients,
# MoCo gathers keys into its queue, XBM both.
METHODS = ("simclr", "moco", "sscd", "xbm")
TRAIN = TrainConfig(
    batch_size=GLOBAL_BATCH,
    optimizer="sgd",
    lr=0.5,
    momentum=0.0,
    weight_decay=0.0,
    schedule="constant",
    warmup_steps=0,
    budget_kind="steps",
    budget_value=STEPS,
    checkpoint_every=100,
    num_workers=0,
)


class NoisyImages(Dataset):
    """Fixed images; each view adds noise from the global RNG (which the trainer seeds per item)."""

    def __init__(self, kind: str):
        self.base = torch.rand(N_IMAGES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
        self.kind = kind

    def __len__(self):
        return N_IMAGES

    def __getitem__(self, i):
        if self.kind == "stream":
            views = [self.base[i] + 0.2 * torch.randn(3, SIZE, SIZE) for _ in range(2)]
            return {"views": views, "clean": self.base[i], "index": i}
        return self.base[i], i, f"T{i:06d}"


def run_methods(out_dir: Path, rank: int, world_size: int) -> None:
    """Train every method for STEPS steps; rank 0 saves per-step gradients, losses and weights."""
    from methods import MethodContext, create_method, get_method

    grads: list[list[torch.Tensor]] = []

    def record_gradients(optimizer, args, kwargs):
        grads.append(
            [
                p.grad.detach().clone()
                for g in optimizer.param_groups
                for p in g["params"]
                if p.grad is not None
            ]
        )

    handle = register_optimizer_step_pre_hook(record_gradients)
    try:
        for name in METHODS:
            grads.clear()
            context = MethodContext(
                backbone="test_convnext",
                embedding_dim=16,
                image_size=SIZE,
                head_batch_norm=False,
                pooling="avg",
                weights=None,
                weights_strict=True,
                pretrained=False,
                num_train_images=N_IMAGES,
                seed=0,
                world_size=world_size,
                rank=rank,
            )
            config = get_method(name).config_cls()
            if name == "moco":
                config.queue_size = 8
            if name == "xbm":  # step 1 scores against the memory step 0 wrote
                config.memory_size = 8
                config.warmup_steps = 1
            torch.manual_seed(0)
            method = create_method(name, config, context)
            data = TrainData(NoisyImages("stream"), NoisyImages("clean"), NoisyImages("clean"))
            result = train(
                method,
                data,
                TRAIN,
                seed=4,
                run_dir=out_dir / f"{name}-ws{world_size}",
                progress=False,
            )
            if rank == 0:
                torch.save(
                    {
                        "grads": [list(step) for step in grads],
                        "losses": [line["loss"] for line in result.log],
                        "state": method.state_dict(),
                    },
                    out_dir / f"{name}-ws{world_size}.pt",
                )
    finally:
        handle.remove()


def _worker(rank: int, world_size: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out_dir}/rendezvous",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        run_methods(Path(out_dir), rank, world_size)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_world_size_2_matches_world_size_1_on_the_same_global_batch(tmp_path):
    run_methods(tmp_path, rank=0, world_size=1)
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    for name in METHODS:
        one = torch.load(tmp_path / f"{name}-ws1.pt", weights_only=True)
        two = torch.load(tmp_path / f"{name}-ws2.pt", weights_only=True)
        assert len(one["losses"]) == len(two["losses"]) == STEPS
        assert two["losses"] == pytest.approx(one["losses"], rel=1e-5, abs=1e-6), name
        assert len(one["grads"]) == len(two["grads"]) == STEPS
        for step, (g1, g2) in enumerate(zip(one["grads"], two["grads"], strict=True)):
            assert len(g1) == len(g2) > 0
            for a, b in zip(g1, g2, strict=True):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=f"{name} step {step}")
            assert any(a.abs().max() > 0 for a in g1)  # the comparison is not between zeros
        for key, value in one["state"].items():
            torch.testing.assert_close(two["state"][key], value, rtol=1e-4, atol=1e-6, msg=key)
        log = (tmp_path / f"{name}-ws2" / "train_log.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in log] == list(range(STEPS))
