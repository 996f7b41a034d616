"""The contract between a method and the shared trainer (harness/train.py).

A method is a small `nn.Module`. The trainer owns data, optimizer, schedule, budget, checkpoints and
devices; the method owns its encoders, heads, banks/queues and loss. Banks and queues are registered
as *persistent* buffers so a checkpoint (`state_dict()`) holds them. Momentum updates and enqueues
happen explicitly inside `training_step`, after the loss is computed, never inside `forward`.

Call order, per run:
    method = create_method(name, method_config, MethodContext(...))
    method.to(device); optimizer over method.parameters()   (params with grad None are skipped)
    method.on_train_start(ctx, start_step)    # also called after a resume, with the resumed step
    for step in range(start_step, total_steps):
        loss, logs = method.training_step(batch, step)
        loss.backward(); optimizer.step(); optimizer.zero_grad(set_to_none=True)
        method.on_step_end(ctx, step)         # phase switches, schedules: after the optimizer step
        method.stale_negatives(probe)         # now and then (eval.consistency_every): a measure only
    descriptors = method.describe(images, role)   # under torch.no_grad(), in eval mode
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from harness.seeding import method_generator

Role = Literal["query", "reference"]


@dataclass
class MethodConfig:
    """Base of every method's config dataclass (fields specific to that method)."""


@dataclass
class MethodContext:
    """What the shared protocol fixes for every method (identical across methods).

    The protocol's values come from the run config (harness/config.py, the one source of defaults;
    `harness.pipeline.build_method` fills this in), so the protocol fields carry no defaults here.
    """

    backbone: str  # any timm model name; built with num_classes=0
    embedding_dim: int  # descriptor dimension (<= 256 for the ISC descriptor track)
    image_size: int
    head_batch_norm: bool  # BatchNorm in the projection head (methods/backbone.py)
    pooling: str  # the backbone's global pooling, "avg" or "gem" (methods/backbone.py)
    weights: str | None  # a file every backbone starts from (harness/weights.py); None: random
    weights_strict: bool  # False: load the tensors of `weights` that fit, skip the rest
    pretrained: bool  # timm's published weights for `backbone` instead of a random init
    num_train_images: int  # size of the training set (membank slots, QK negatives)
    seed: int  # the run seed: every random choice a method makes derives from it
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    world_size: int = 1
    rank: int = 0

    def generator(self, name: str, *counters: int) -> torch.Generator:
        """A CPU generator for the random choice `name` ("membank.negatives") at `counters` (a
        step, a phase): a pure function of (run seed, name, counters), see harness/seeding.py. All
        ranks draw the same values, and a resumed run draws what the uninterrupted one would."""
        return method_generator(self.seed, name, *counters)


@dataclass
class TrainBatch:
    """One training batch as the trainer delivers it (already on the device)."""

    views: list[torch.Tensor]  # augmented views of the same images, each (B, C, H, W)
    indices: torch.Tensor  # (B,) int64 positions in the training set
    clean: torch.Tensor | None = None  # (B, C, H, W) the images with the evaluation transform only


@dataclass
class TrainContext:
    """Services the trainer offers to methods at hook time."""

    # encode_training_set(fn, view="clean"|"augmented", *, batch_size=None, seed_key=0,
    # indices=None) runs `fn` on every training image, or on the sorted `indices` alone (batched,
    # no grad, eval-mode transform for "clean", the training preset's first view for
    # "augmented", seeded by `seed_key` and the index), returns the outputs stacked in index
    # order. `fn` sets its own modules' train/eval mode.
    encode_training_set: Callable[..., torch.Tensor]
    total_steps: int
    progress: bool = True


@dataclass
class NegativeProbe:
    """What the trainer offers the stale-negatives measure (`Method.stale_negatives`)."""

    step: int  # optimizer steps done: an entry written during step s is `step - s` steps old
    # The global training batch of an earlier step, regenerated exactly (same images, same views).
    batch_at: Callable[[int], TrainBatch]
    # training_images(indices, view="clean"|"augmented", seed_key=0): the images the trainer's
    # encode_training_set fed the method for those indices (on the device).
    training_images: Callable[..., torch.Tensor]
    generator: torch.Generator  # for the method's sample; derived from (run seed, step)
    batches: int  # how many earlier batches (or batch-sized samples) to recompute
    batch_size: int  # the global training batch


class Method(nn.Module):
    """Thin base class; see the module docstring for the contract."""

    name: ClassVar[str] = "?"
    # Augmented views of each image that `training_step` reads (TrainBatch.views); the trainer
    # makes only these unless train.n_views asks for more.
    views_per_image: ClassVar[int] = 2

    def __init__(self, config: MethodConfig, context: MethodContext):
        super().__init__()
        self.config = config
        self.context = context

    def training_step(self, batch: TrainBatch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def on_train_start(self, ctx: TrainContext, step: int) -> None:
        """Called before the first step and again after resuming at `step`."""

    def on_step_end(self, ctx: TrainContext, step: int) -> None:
        """Called after the optimizer step of `step`."""

    @torch.no_grad()
    def describe(self, images: torch.Tensor, role: Role) -> torch.Tensor:
        """L2-normalized float32 descriptors (B, embedding_dim) for `role` images."""
        raise NotImplementedError

    def negatives_per_step(self, batch_size: int | None = None) -> int:
        """Number of negatives each training sample is contrasted against (for the record).

        `batch_size` is the global batch size, for methods whose negatives come from the batch;
        without it they use the last batch they saw."""
        raise NotImplementedError

    def stale_negatives(self, probe: NegativeProbe) -> dict[str, float] | None:
        """For methods that score against stored negatives (a queue, a bank, a cache): how far the
        stored entries are from what the key side would compute for the same inputs now, as
        {"consistency": mean cosine, "negative_age": mean age in steps, ...}; see
        methods/staleness.py. None: every negative is computed in the step that uses it."""
        return None

    def costs(self) -> dict | None:
        """What the method's own stored state costs, for the record (e.g. QK's cache bytes and
        phase-start seconds); None when there is nothing beyond the training step."""
        return None

    def trains(self) -> bool:
        """False for methods that need no optimization (the `none` baseline)."""
        return True
