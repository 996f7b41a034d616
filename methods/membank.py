"""`membank`: the instance memory bank of Wu et al. 2018, one slot per training image.

Slots are updated after each step with the (gathered, detached) embeddings of the batch:
v_i <- normalize(m * v_i + (1 - m) * f_i), m = 0.5 as in the paper. The paper starts the slots as
random unit vectors (`bank_init: random`); then every positive of the first epoch is noise, and a
budget of a few epochs spends its first one pulling images towards random points. Our default,
`bank_init: encoder`, fills the slots at the first step with the untrained encoder's embeddings of
the clean training images, so the positives mean something from step 0.
Our choice: the loss is a softmax cross-entropy (positive = the image's own slot) over either the
full bank or `num_negatives` uniformly sampled slots plus the positive, not the paper's NCE
approximation. The sample is drawn from the run seed's "membank.negatives" generator at the step
(`MethodContext.generator`), so all ranks draw the same negatives, a resumed run draws what the
uninterrupted one would have, and two seeds draw different ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import ConfigError
from methods.backbone import Encoder
from methods.base import (
    Method,
    MethodConfig,
    MethodContext,
    NegativeProbe,
    TrainBatch,
    TrainContext,
)
from methods.distributed import gather_no_grad
from methods.losses import bank_info_nce
from methods.registry import register_method
from methods.staleness import NO_ROW, NOT_WRITTEN, compare_with_recomputed


@dataclass
class MemoryBankConfig(MethodConfig):
    temperature: float = 0.07
    bank_momentum: float = 0.5
    num_negatives: int | None = 4096  # None: softmax over the full bank
    chunk_size: int = 4096
    bank_init: str = "encoder"  # "encoder" (ours) or "random" (the paper's); see the module doc


class InstanceBank(nn.Module):
    """One L2-normalized slot per training image, with the step that last wrote each slot and its
    row in that step's batch (for the stale-negatives measure); persistent buffers, so
    checkpoints hold them."""

    def __init__(self, size: int, dim: int, generator: torch.Generator):
        super().__init__()
        self.register_buffer(
            "slots", F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        )
        self.register_buffer("written_step", torch.full((size,), NOT_WRITTEN, dtype=torch.long))
        self.register_buffer("written_row", torch.full((size,), NO_ROW, dtype=torch.long))

    @torch.no_grad()
    def update(
        self, indices: torch.Tensor, features: torch.Tensor, momentum: float, step: int
    ) -> None:
        mixed = momentum * self.slots[indices] + (1 - momentum) * features.to(self.slots.dtype)
        self.slots[indices] = F.normalize(mixed, dim=1)
        self.written_step[indices] = step
        self.written_row[indices] = torch.arange(len(indices), device=indices.device)


BANK_INITS = ("encoder", "random")


@register_method("membank", MemoryBankConfig, display_name="memory bank")
class MemoryBank(Method):
    """Memory bank (Wu et al. 2018): one slot per training image, momentum-updated negatives."""

    views_per_image = 1

    def __init__(self, config: MemoryBankConfig, context: MethodContext):
        super().__init__(config, context)
        if not config.temperature > 0:
            raise ConfigError(f"membank.temperature must be > 0, got {config.temperature}")
        if not 0 <= config.bank_momentum < 1:
            raise ConfigError(
                f"membank.bank_momentum must be in [0, 1), got {config.bank_momentum}"
            )
        if context.num_train_images < 1:
            raise ConfigError(
                "membank needs the training-set size (num_train_images) to size its bank"
            )
        if (
            config.num_negatives is not None
            and not 1 <= config.num_negatives <= context.num_train_images
        ):
            raise ConfigError(
                f"membank.num_negatives must be in [1, {context.num_train_images}] (the training-set "
                f"size) or null for the full bank, got {config.num_negatives}"
            )
        if config.chunk_size < 1:
            raise ConfigError(f"membank.chunk_size must be >= 1, got {config.chunk_size}")
        if config.bank_init not in BANK_INITS:
            raise ConfigError(
                f"membank.bank_init must be one of {BANK_INITS}, got {config.bank_init!r}"
            )
        self.encoder = Encoder(context)
        self.bank = InstanceBank(
            context.num_train_images,
            context.embedding_dim,
            context.generator("membank.bank_init"),
        )

    def on_train_start(self, ctx: TrainContext, step: int) -> None:
        # Only a fresh run fills the bank: a resumed one restores its slots from the checkpoint.
        if step > 0 or self.config.bank_init != "encoder":
            return

        def encode(images: torch.Tensor) -> torch.Tensor:
            # Train mode: BatchNorm normalizes with batch statistics, as in the training step
            # whose embeddings the slots are compared with (eval mode at step 0 would use the
            # initial running statistics and give differently scaled slots).
            self.encoder.train()
            return self.encoder(images)

        slots = ctx.encode_training_set(encode, view="clean")
        self.bank.slots.copy_(slots)  # every rank encoded its share and gathered all rows
        self.bank.written_step.fill_(0)  # written before step 0, by no training batch (NO_ROW)

    def training_step(self, batch: TrainBatch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        embedding = self.encoder(batch.views[0])
        indices = batch.indices.to(embedding.device)
        slots = self.bank.slots
        if self.config.num_negatives is None:
            loss = bank_info_nce(
                embedding,
                slots,
                self.config.temperature,
                positive_index=indices,
                chunk_size=self.config.chunk_size,
                unit_keys=True,
            )
        else:
            sample = self.negative_sample(step)
            loss = bank_info_nce(
                embedding,
                slots[sample.to(slots.device)],
                self.config.temperature,
                positive_key=slots[indices],
                chunk_size=self.config.chunk_size,
                unit_keys=True,
            )
        self.bank.update(
            gather_no_grad(indices), gather_no_grad(embedding), self.config.bank_momentum, step
        )
        return loss, {"loss": float(loss.detach())}

    def negative_sample(self, step: int) -> torch.Tensor:
        """The slots sampled as negatives at `step` (with replacement, `num_negatives` of them)."""
        generator = self.context.generator("membank.negatives", step)
        return torch.randint(
            len(self.bank.slots), (self.config.num_negatives,), generator=generator
        )

    def stale_negatives(self, probe: NegativeProbe) -> dict[str, float] | None:
        """A slot mixes the embeddings of every visit (momentum `bank_momentum`): even with
        unchanged weights it is 1 only when the visits agree."""
        self.encoder.train()  # as in the training step (harness/train.py restores the mode)
        bank = self.bank
        return compare_with_recomputed(
            probe,
            bank.slots,
            bank.written_step,
            bank.written_row,
            lambda batch: self.encoder(batch.views[0]),
        )

    @torch.no_grad()
    def describe(self, images, role):
        return self.encoder(images).float()

    def negatives_per_step(self, batch_size: int | None = None) -> int:
        if self.config.num_negatives is None:
            return self.context.num_train_images - 1
        return self.config.num_negatives
