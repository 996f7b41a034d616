"""`moco`: MoCo v2 (He et al. 2020; Chen et al. 2020): momentum key encoder and a FIFO key queue.

The queue is our own module with *persistent* buffers (lightly's MemoryBankModule buffer is not
persistent, so a checkpoint would silently drop it). Under multi-process training the keys of all
ranks are gathered before the enqueue, so every rank holds the same queue.
Not done: MoCo's shuffled BatchNorm across ranks (use a LayerNorm backbone, or one rank).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightly.models.utils import update_momentum
from torch import nn

from harness.errors import ConfigError
from methods.backbone import Encoder, set_trainable
from methods.base import Method, MethodConfig, MethodContext, NegativeProbe, TrainBatch
from methods.distributed import gather_no_grad
from methods.losses import bank_info_nce
from methods.registry import register_method
from methods.staleness import NO_ROW, NOT_WRITTEN, compare_with_recomputed


@dataclass
class MoCoConfig(MethodConfig):
    # MoCo v2 uses 65,536 keys and momentum 0.999; the defaults suit the short ~5k-image CPU run
    # (momentum 0.99; a queue larger than the training set would hold several keys of each image).
    queue_size: int = 4096
    momentum: float = 0.99
    temperature: float = 0.2
    chunk_size: int = 4096
    # Symmetrized loss (MoCo v3, and lightly's MoCo benchmarks): each view is a query once, with
    # the other view's key as its positive; both directions score against the queue as it was
    # before the step, and both key batches are enqueued. False: MoCo v2's single direction.
    # Ours: at 500 steps MoCo v2's one direction reached µAP 0.378, level with the untrained
    # `none` (0.374); symmetrized, 0.454.
    symmetric: bool = True


class KeyQueue(nn.Module):
    """FIFO queue of L2-normalized keys; the keys, write pointer and each key's origin (the step
    that wrote it and its row in that step's key batch, for the stale-negatives measure) are
    checkpointed."""

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.register_buffer(
            "keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        )
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("written_step", torch.full((size,), NOT_WRITTEN, dtype=torch.long))
        self.register_buffer("written_row", torch.full((size,), NO_ROW, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, step: int) -> None:
        size = self.keys.shape[0]
        rows = torch.arange(len(keys), device=keys.device)[-size:]
        keys = keys[-size:]  # a batch larger than the queue keeps its newest keys
        slots = (self.pointer + torch.arange(len(keys), device=keys.device)) % size
        self.keys[slots] = keys.to(self.keys.dtype)
        self.written_step[slots] = step
        self.written_row[slots] = rows.to(self.written_row)
        self.pointer.copy_((self.pointer + len(keys)) % size)


@register_method("moco", MoCoConfig, display_name="MoCo")
class MoCo(Method):
    """MoCo v2: momentum key encoder, FIFO queue of negatives (queue_size per sample), InfoNCE."""

    def __init__(self, config: MoCoConfig, context: MethodContext):
        super().__init__(config, context)
        if not config.temperature > 0:
            raise ConfigError(f"moco.temperature must be > 0, got {config.temperature}")
        if config.queue_size < 1:
            raise ConfigError(f"moco.queue_size must be >= 1, got {config.queue_size}")
        if not 0 <= config.momentum <= 1:
            raise ConfigError(f"moco.momentum must be in [0, 1], got {config.momentum}")
        if config.chunk_size < 1:
            raise ConfigError(f"moco.chunk_size must be >= 1, got {config.chunk_size}")
        self.query_encoder = Encoder(context)
        self.key_encoder = copy.deepcopy(self.query_encoder)
        set_trainable(self.key_encoder, False)
        self.queue = KeyQueue(
            config.queue_size, context.embedding_dim, context.generator("moco.queue_init")
        )

    def training_step(self, batch: TrainBatch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if len(batch.views) < 2:
            raise ValueError("moco needs two augmented views per image")
        query_views, key_views = batch.views[0], batch.views[1]
        if self.config.symmetric:  # one pass over both views each way: each view is a query once
            query_views = torch.cat([batch.views[0], batch.views[1]])
            key_views = torch.cat([batch.views[1], batch.views[0]])
        query = self.query_encoder(query_views)
        with torch.no_grad():
            update_momentum(self.query_encoder, self.key_encoder, m=self.config.momentum)
            key = self.key_encoder(key_views)
        loss = bank_info_nce(
            query,
            self.queue.keys,
            self.config.temperature,
            positive_key=key,
            chunk_size=self.config.chunk_size,
            unit_keys=True,
        )
        # Enqueue after the loss: this batch's keys are negatives from the next step on. Each
        # view's keys are gathered on their own, so the queue holds the global batch in the same
        # order whatever the number of ranks (one gather of [v1; v0] would interleave the ranks).
        views = key.chunk(2) if self.config.symmetric else (key,)
        self.queue.enqueue(torch.cat([gather_no_grad(keys) for keys in views]), step)
        return loss, {"loss": float(loss.detach())}

    def _key_batch(self, batch: TrainBatch) -> torch.Tensor:
        """The key encoder's keys of `batch` in the order the step enqueued them."""
        views = [batch.views[1], batch.views[0]] if self.config.symmetric else [batch.views[1]]
        return self.key_encoder(torch.cat(views))

    def stale_negatives(self, probe: NegativeProbe) -> dict[str, float] | None:
        queue = self.queue
        self.key_encoder.train()  # as in the training step (harness/train.py restores the mode)
        return compare_with_recomputed(
            probe, queue.keys, queue.written_step, queue.written_row, self._key_batch
        )

    @torch.no_grad()
    def describe(self, images, role):
        return self.query_encoder(images).float()

    def negatives_per_step(self, batch_size: int | None = None) -> int:
        return self.config.queue_size
