"""`simclr`: NT-Xent over the 2B - 2 other in-batch views (Chen et al. 2020), lightly's loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import NTXentLoss

from harness.errors import ConfigError
from methods.backbone import Encoder
from methods.base import Method, MethodConfig, MethodContext, TrainBatch
from methods.registry import register_method


@dataclass
class SimCLRConfig(MethodConfig):
    temperature: float = 0.2  # NT-Xent over the 2B - 2 in-batch negatives


@register_method("simclr", SimCLRConfig, display_name="SimCLR-style (in-batch negatives)")
class SimCLR(Method):
    """SimCLR: two augmented views, in-batch negatives only (2B-2 per sample), NT-Xent loss."""

    def __init__(self, config: SimCLRConfig, context: MethodContext):
        super().__init__(config, context)
        if not config.temperature > 0:
            raise ConfigError(f"simclr.temperature must be > 0, got {config.temperature}")
        self.encoder = Encoder(context)
        # gather_distributed: negatives from every rank; lightly's GatherLayer sums the gradient
        # over ranks in backward, which the trainer's gradient averaging turns into the gradient
        # of the global mean loss (checked by tests/test_methods_distributed.py).
        self.criterion = NTXentLoss(
            temperature=config.temperature, gather_distributed=context.world_size > 1
        )
        self._global_batch = 0

    def training_step(self, batch: TrainBatch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if len(batch.views) < 2:
            raise ValueError("simclr needs two augmented views per image")
        first = self.encoder.head(self.encoder.backbone(batch.views[0]))
        second = self.encoder.head(self.encoder.backbone(batch.views[1]))
        loss = self.criterion(first, second)
        self._global_batch = len(batch.indices) * self.context.world_size
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def describe(self, images, role):
        return self.encoder(images).float()

    def negatives_per_step(self, batch_size: int | None = None) -> int:
        """2B - 2 for a global batch of B images (the last batch seen if not given)."""
        batch_size = batch_size or self._global_batch
        return max(2 * batch_size - 2, 0)
