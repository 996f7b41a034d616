"""What a TrainConfig asks of the optimization: the optimizer, the learning-rate schedule, and the
number of steps its budget allows."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from harness.config import TrainConfig
from harness.errors import ConfigError
from methods.base import Method


def total_steps_for(cfg: TrainConfig) -> int | None:
    """Steps a budget allows; None for a wall-clock budget (it ends when the time is spent)."""
    if cfg.budget_kind == "steps":
        return int(cfg.budget_value)
    if cfg.budget_kind == "images":
        return math.ceil(cfg.budget_value / cfg.batch_size)
    return None


def lr_factor(step: int, progress: float, *, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate: linear warm-up over steps, then cosine over progress."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def build_optimizer(method: Method, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Frozen parameters stay in the optimizer: QK unfreezes them in the next phase, and the
    # optimizer skips parameters whose grad is None.
    params = list(method.parameters())
    if not params:
        raise ConfigError(f"method {method.name!r} trains but has no parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    progress_fraction: Callable[[int], float],
) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_factor` per step; `progress_fraction(step)` is the part of the budget spent (0 to 1)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step,
            progress_fraction(step),
            warmup_steps=cfg.warmup_steps,
            schedule=cfg.schedule,
        ),
    )
