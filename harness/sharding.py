"""Passes over a whole split shared by every rank: descriptor extraction and the training-set
encodings of the methods' hooks (QK's cache, the memory bank's first fill).

The split is cut into the batches one process would make, and batch b goes to rank b mod world
size. Each batch therefore holds the same images as in a one-process run (so BatchNorm in train
mode sees the same batch statistics) and the gathered result equals the one-process result. Every
rank ends with all rows, in index order; one GPU no longer encodes 2M images while seven wait.
Descriptor extraction may lose items (bad images skipped while decoding): `gather_kept` gathers the
rows each rank kept, with their indices; `gather_in_order` is the same gather for a pass that lost
nothing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of each batch of a one-process pass over n items."""
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def my_indices(n: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """The item indices rank `rank` computes: its batches, in order."""
    bounds = batch_bounds(n, batch_size)
    return [i for b, (lo, hi) in enumerate(bounds) if b % world_size == rank for i in range(lo, hi)]


def gather_in_order(
    local: torch.Tensor | None, n: int, batch_size: int, rank: int, world_size: int
) -> torch.Tensor | None:
    """All ranks' rows (each rank's `local` holds its batches' rows, in order; None for a rank
    with no batch) as one tensor of n rows in index order, on every rank: `gather_kept` of a pass
    that lost nothing, each rank's rows being the items of `my_indices`."""
    if world_size == 1:
        return local
    mine = my_indices(n, batch_size, rank, world_size)
    computed = 0 if local is None else local.shape[0]
    if computed != len(mine):
        raise RuntimeError(f"rank {rank} computed {computed} rows, expected {len(mine)}")
    indices = None if local is None else torch.tensor(mine, device=local.device)
    out, _ = gather_kept(local, indices, rank, world_size)
    if out is not None and out.shape[0] != n:
        raise RuntimeError(f"gathered {out.shape[0]} rows of {n}")
    return out


def gather_kept(
    local: torch.Tensor | None, indices: torch.Tensor | None, rank: int, world_size: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The rows of a pass whose batches may lose items (bad images skipped while decoding,
    harness/data/datasets.py): each rank's `local` rows come with their item `indices` (None for a
    rank that kept none), and every rank gets all kept rows in index order with their indices;
    (None, None) when no rank kept any. No rank can know the others' counts beforehand, so they are
    exchanged first, with the rows' shape and dtype (a rank without rows learns them there)."""
    if world_size == 1:
        return local, indices
    metas = [None] * world_size
    meta = None if local is None else (tuple(local.shape[1:]), local.dtype, str(local.device))
    dist.all_gather_object(metas, (meta, 0 if local is None else int(local.shape[0])))
    if all(m is None for m, _ in metas):
        return None, None
    shape, dtype, device = next(m for m, _ in metas if m is not None)
    counts = [count for _, count in metas]
    if local is None:
        local = torch.zeros((0, *shape), dtype=dtype, device=device)
        indices = torch.zeros(0, dtype=torch.int64, device=device)
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: counts[rank]] = local
    padded_indices = torch.full((max(counts),), -1, dtype=torch.int64, device=local.device)
    padded_indices[: counts[rank]] = indices.to(local.device, torch.int64)
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    index_parts = [torch.empty_like(padded_indices) for _ in range(world_size)]
    dist.all_gather(parts, padded.contiguous())
    dist.all_gather(index_parts, padded_indices)
    kept = torch.cat([part[:count] for part, count in zip(index_parts, counts, strict=True)])
    # Each row is written once, straight to its place in index order: one output the size of
    # the result (DISC21's QK cache is gigabytes), not a concatenation and then a reordered copy.
    order = torch.argsort(kept)
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order), device=order.device)
    out = local.new_empty((len(kept), *local.shape[1:]))
    start = 0
    for part, count in zip(parts, counts, strict=True):
        out[position[start : start + count]] = part[:count]
        start += count
    return out, kept[order]
