"""The training set encoded for a method's hooks (TrainContext.encode_training_set): `fn` over every
image, batched and without grad, each image under its own seed so a resumed run recomputes exactly
the same features."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from harness.device import autocast, images_to_device
from harness.seeding import STREAM_ENCODE, SeededItems, derive_seeds
from harness.sharding import gather_in_order, my_indices


def encode_seeds(seed: int, seed_key: int, n: int):
    """The seed of each of the n items of an encoding pass (also how harness/monitor.py gives a
    method the same images again)."""
    return derive_seeds(seed, STREAM_ENCODE, seed_key, count=n)


def encode_dataset(
    dataset: Dataset,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    seed: int,
    seed_key: int,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    channels_last: bool,
    amp_dtype: torch.dtype | None,
    desc: str,
    progress: bool,
    rank: int = 0,
    world_size: int = 1,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """`fn` over the `(image, index, id)` items of `dataset` (or only those at the sorted
    `indices`), outputs stacked in that order in the dtype `fn` returns (QK's fp16/bf16 cache is
    never held in float32 whole). Item i is computed under a seed derived from (`seed`,
    `seed_key`, i) whichever items the pass covers, so a subset's row for item i equals the full
    pass's. Under multi-process training the batches are shared among the ranks and gathered
    (harness/sharding.py): every rank gets every row, equal to a one-process pass."""
    seeds = encode_seeds(seed, seed_key, len(dataset))
    items = range(len(dataset)) if indices is None else [int(i) for i in indices]
    n = len(items)
    mine = my_indices(n, batch_size, rank, world_size)
    keys = [(items[j], int(seeds[items[j]])) for j in mine]
    loader = DataLoader(
        SeededItems(dataset),
        batch_size=batch_size,
        sampler=keys,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    outputs = []
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    with torch.no_grad(), autocast(amp_dtype):
        for images, _, _ in bar:
            images = images_to_device(images, device, channels_last)
            outputs.append(fn(images))
    local = torch.cat(outputs) if outputs else None
    return gather_in_order(local, n, batch_size, rank, world_size)
