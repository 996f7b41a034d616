"""Measurements taken while a run trains, none of which changes it: periodic validation
(harness/validation.py), the stale-negatives measure (methods/staleness.py) and the TensorBoard
event files.

`preserved_state` is what makes "never changes training" hold: every random generator, the
modules' train/eval modes and BatchNorm's running statistics are as they were after a measurement,
so a run with measurements trains to the same weights as one without (tests/test_monitor.py).
Curve points go to the run directory's `curve.jsonl`, written with each checkpoint and cut back
to it on a resume, so a killed run neither repeats nor loses a point.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from harness.device import batch_to_device, images_to_device
from harness.encode import encode_seeds
from harness.errors import ConfigError
from harness.seeding import STREAM_PROBE, SeededItems, StepBatchSampler, derive_seeds
from methods.base import NegativeProbe

TENSORBOARD_DIR = "tensorboard"


@dataclass
class Monitors:
    """What to measure during training (eval.every, eval.consistency_every, train.tensorboard)."""

    validate: Callable[[nn.Module], dict[str, float]] | None = None
    validate_every: int | None = None
    consistency_every: int | None = None
    consistency_batches: int = 4
    tensorboard: bool = False

    def due(self, step: int, *, last: bool) -> tuple[bool, bool]:
        """(validate, measure consistency) after `step` optimizer steps."""
        validate = self.validate is not None and self.validate_every is not None
        validate = validate and (step % self.validate_every == 0 or last)
        consistency = self.consistency_every is not None and step > 0
        consistency = consistency and (step % self.consistency_every == 0 or last)
        return validate, consistency


@contextlib.contextmanager
def preserved_state(module: nn.Module) -> Iterator[None]:
    """Random generators, train/eval modes and BatchNorm running statistics restored on exit."""
    modes = {m: m.training for m in module.modules()}
    norms = {
        f"{prefix}.{name}": buffer.clone()
        for prefix, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for name, buffer in m.named_buffers(recurse=False)
    }
    saved_python, saved_numpy = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            yield
    finally:
        random.setstate(saved_python)
        np.random.set_state(saved_numpy)
        buffers = dict(module.named_buffers())
        for name, value in norms.items():
            buffers[name].copy_(value)
        for m, mode in modes.items():
            m.training = mode


def negative_probe(trainer, step: int, batches: int) -> NegativeProbe:
    """The probe a method's `stale_negatives` reads: earlier batches regenerated from the run seed
    (harness/seeding.py's stream is a pure function of the seed and the step)."""
    data, cfg, seed = trainer.data, trainer.cfg, trainer.seed
    sampler = StepBatchSampler(len(data.stream), cfg.batch_size, seed)
    stream = SeededItems(data.stream)

    def batch_at(past_step: int):
        items = [stream[key] for key in sampler.global_items(past_step)]
        return batch_to_device(default_collate(items), trainer.device, trainer.channels_last)

    def training_images(indices: torch.Tensor, view: str = "clean", seed_key: int = 0):
        dataset = SeededItems(data.clean if view == "clean" else data.augmented)
        seeds = encode_seeds(seed, seed_key, len(data.clean))
        images = [dataset[(int(i), int(seeds[int(i)]))][0] for i in indices.tolist()]
        return images_to_device(torch.stack(images), trainer.device, trainer.channels_last)

    generator = torch.Generator().manual_seed(int(derive_seeds(seed, STREAM_PROBE, step)[0]))
    return NegativeProbe(
        step=step,
        batch_at=batch_at,
        training_images=training_images,
        generator=generator,
        batches=batches,
        batch_size=cfg.batch_size,
    )


def tensorboard_writer(run_dir: Path, purge_step: int | None):
    """A SummaryWriter on the run's tensorboard/ folder; `purge_step` drops the events of steps a
    resumed run redoes."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "train.tensorboard is on but the tensorboard package is not installed: "
            "pip install tensorboard, or pass --set train.tensorboard=false to keep only "
            "train_log.jsonl"
        ) from None
    return SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)
