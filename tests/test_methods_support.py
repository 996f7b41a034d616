"""Shared helpers for the methods' tests: tiny images and a loop that calls a method exactly as the
trainer's contract in methods/base.py does (no tests here)."""

from __future__ import annotations

import pytest
import torch

from methods import MethodContext, TrainBatch, TrainContext, create_method, get_method

SIZE = 32


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: extra BLAS threads only fight the other jobs on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


BATCH = 8


def context(
    num_train=24, backbone="test_resnet", dim=16, world_size=1, rank=0, seed=0, pooling="avg"
) -> MethodContext:
    return MethodContext(
        backbone=backbone,
        embedding_dim=dim,
        image_size=SIZE,
        head_batch_norm=False,
        pooling=pooling,
        weights=None,
        weights_strict=True,
        pretrained=False,
        num_train_images=num_train,
        seed=seed,
        world_size=world_size,
        rank=rank,
    )


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def augment(batch: torch.Tensor, seed: int) -> torch.Tensor:
    """A cheap deterministic 'edit': noise plus a random horizontal flip per call."""
    generator = torch.Generator().manual_seed(seed)
    noisy = batch + 0.1 * torch.randn(batch.shape, generator=generator)
    return noisy.flip(-1) if torch.rand((), generator=generator) < 0.5 else noisy


def make_batch(data: torch.Tensor, step: int, batch_size: int = BATCH) -> TrainBatch:
    indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(1000 + step))[
        :batch_size
    ]
    clean = data[indices]
    return TrainBatch(
        views=[augment(clean, 2 * step), augment(clean, 2 * step + 1)], indices=indices, clean=clean
    )


def fixed_batch(data: torch.Tensor, indices: torch.Tensor, seed: int) -> TrainBatch:
    clean = data[indices]
    return TrainBatch(
        views=[augment(clean, 2 * seed), augment(clean, 2 * seed + 1)], indices=indices, clean=clean
    )


class FakeTrainer:
    """Offers TrainContext services over an in-memory training set and counts the cache passes."""

    def __init__(self, data: torch.Tensor, total_steps: int):
        self.data = data
        self.encode_calls: list[str] = []
        self.encoded_rows: list[int] = []  # images each pass encoded
        self.ctx = TrainContext(
            encode_training_set=self.encode, total_steps=total_steps, progress=False
        )

    def encode(self, fn, view="clean", batch_size=None, seed_key=0, indices=None):
        self.encode_calls.append(view)
        source = self.data if view == "clean" else augment(self.data, -1 - seed_key)
        if indices is not None:
            source = source[indices]
        self.encoded_rows.append(len(source))
        size = batch_size or 5  # deliberately not dividing the set
        with torch.no_grad():
            return torch.cat([fn(source[i : i + size]) for i in range(0, len(source), size)])


def build(name, config=None, ctx=None):
    torch.manual_seed(0)
    config = config if config is not None else get_method(name).config_cls()
    return create_method(name, config, ctx or context())


def run_steps(method, trainer, optimizer, start, stop, batch_for_step=None):
    """The trainer's loop; returns the losses."""
    losses = []
    method.train()
    for step in range(start, stop):
        batch = batch_for_step(step) if batch_for_step else make_batch(trainer.data, step)
        loss, logs = method.training_step(batch, step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.on_step_end(trainer.ctx, step)
        losses.append(float(loss.detach()))
    return losses


def optimizer_for(method, lr=0.05):
    return torch.optim.SGD(method.parameters(), lr=lr, momentum=0.9)
