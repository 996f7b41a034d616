"""The reproducibility contract: every random choice of a run is a pure function of the run seed.

One derivation serves everything: `derive_seeds(run_seed, stream, *counters)` feeds the integers to
numpy's `SeedSequence`, so each use (the data order, each item's augmentation, the training-set
encodings, the loader, and every random choice a method makes) draws from its own stream, and two
runs that differ only in `--seed` differ in all of them. Methods get their generators through
`MethodContext.generator(name, *counters)`, whose stream is the CRC-32 of the name
(`method_stream`).

The data stream: the sampler's order is a function of (seed, epoch), and every training item is
augmented under its own seed, derived from (seed, step, position in the global batch). The stream is
therefore the same whatever the number of DataLoader workers, and a run resumed at step k sees
exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

import contextlib
import random
import zlib
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from harness.errors import ConfigError


def derive_seeds(*key: int, count: int = 1) -> np.ndarray:
    """`count` independent 63-bit seeds that are a pure function of the integers in `key`."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(count, dtype=np.uint64)
    return (state >> np.uint64(1)).astype(np.int64)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(int(derive_seeds(seed, 1)[0]) % 2**32)
    torch.manual_seed(seed)


def method_stream(name: str) -> int:
    """The stream tag of a method's named random choice (e.g. "membank.negatives")."""
    return zlib.crc32(name.encode())


def method_generator(run_seed: int, name: str, *counters: int) -> torch.Generator:
    """A CPU generator for one of a method's random choices, derived from the run seed."""
    seed = int(derive_seeds(run_seed, method_stream(name), *counters)[0])
    return torch.Generator().manual_seed(seed)


# Stream tags keep the seeds of different uses apart.
STREAM_BATCH, STREAM_ORDER, STREAM_ENCODE, STREAM_LOADER = 11, 12, 13, 14
STREAM_VALIDATION, STREAM_PROBE = 15, 16  # the validation subset; the stale-negatives probe


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch for one item; in the main process, restore them afterwards."""
    in_worker = get_worker_info() is not None
    if not in_worker:
        saved = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[], enabled=not in_worker):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        # The CPU generator only: item transforms run on the CPU, and torch.manual_seed would also
        # queue a lazy CUDA seeding that formats a stack trace per call (~2 ms per item).
        torch.default_generator.manual_seed(seed)
        yield
    if not in_worker:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


class SeededItems(Dataset):
    """Wraps a dataset so that `dataset[(index, seed)]` computes item `index` under `seed`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with _seeded(int(seed)):
            return self.dataset[int(index)]


class StepBatchSampler(Sampler):
    """Batches of (index, item seed) for global steps `start_step`, `start_step + 1`, ...

    Epoch e visits the training set in a permutation drawn from (seed, e), in `len // batch_size`
    full batches; rank r of `world_size` gets the r-th slice of each global batch. With
    `end_step=None` the stream never ends (wall-clock budgets stop it).
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        seed: int,
        *,
        start_step: int = 0,
        end_step: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size > n_items:
            raise ConfigError(
                f"train.batch_size ({batch_size}) is larger than the training set ({n_items} images)"
            )
        if batch_size % world_size:
            raise ConfigError(
                f"train.batch_size ({batch_size}) must divide evenly over {world_size} ranks"
            )
        self.n_items = n_items
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.end_step = end_step
        self.rank = rank
        self.world_size = world_size
        self.batches_per_epoch = n_items // batch_size

    def global_batch(self, step: int) -> np.ndarray:
        """The training-set indices of global step `step` (all ranks)."""
        epoch, position = divmod(step, self.batches_per_epoch)
        order_seed = int(derive_seeds(self.seed, STREAM_ORDER, epoch)[0])
        order = np.random.default_rng(order_seed).permutation(self.n_items)
        return order[position * self.batch_size : (position + 1) * self.batch_size]

    def global_items(self, step: int) -> list[tuple[int, int]]:
        """The (index, item seed) pairs of global step `step`, all ranks: what SeededItems
        computes for that step's batch (also how harness/monitor.py regenerates a past batch)."""
        seeds = derive_seeds(self.seed, STREAM_BATCH, step, count=self.batch_size)
        return list(zip(self.global_batch(step).tolist(), seeds.tolist(), strict=True))

    def __len__(self) -> int:
        if self.end_step is None:
            raise TypeError("an unbounded StepBatchSampler has no length")
        return max(0, self.end_step - self.start_step)

    def __iter__(self):
        step = self.start_step
        local = self.batch_size // self.world_size
        lo, hi = self.rank * local, (self.rank + 1) * local
        while self.end_step is None or step < self.end_step:
            yield self.global_items(step)[lo:hi]
            step += 1
