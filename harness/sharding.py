"""Passes over a whole split shared by every rank: descriptor extraction and the training-set
encodings of the methods' hooks (QK's cache, the memory bank's first fill).

The split is cut into the batches one process would make, and batch b goes to rank b mod world
size. Each batch therefore holds the same images as in a one-process run (so BatchNorm in train
mode sees the same batch statistics) and the gathered result equals the one-process result. Every
rank ends with all rows, in index order; one GPU no longer encodes 2M images while seven wait.
Descriptor extraction may lose items (bad images skipped while decoding): `gather_kept` gathers the
rows each rank kept, with their indices, instead of counting on whole batches.
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
) -> torch.Tensor:
    """All ranks' rows (each rank's `local` holds its batches' rows, in order; None for a rank
    with no batch) as one tensor of n rows in index order, on every rank."""
    if world_size == 1:
        return local
    # A rank without a batch learns the rows' shape and dtype from one that has some.
    metas = [None] * world_size
    meta = None if local is None else (tuple(local.shape[1:]), local.dtype, str(local.device))
    dist.all_gather_object(metas, meta)
    shape, dtype, device = next(m for m in metas if m is not None)
    if local is None:
        local = torch.zeros((0, *shape), dtype=dtype, device=device)
    counts = [len(my_indices(n, batch_size, r, world_size)) for r in range(world_size)]
    if local.shape[0] != counts[rank]:
        raise RuntimeError(f"rank {rank} computed {local.shape[0]} rows, expected {counts[rank]}")
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: counts[rank]] = local
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded.contiguous())
    taken = [0] * world_size
    rows = []
    for b, (lo, hi) in enumerate(batch_bounds(n, batch_size)):
        owner = b % world_size
        rows.append(parts[owner][taken[owner] : taken[owner] + hi - lo])
        taken[owner] += hi - lo
    out = torch.cat(rows) if rows else local.new_zeros((0, *local.shape[1:]))
    if out.shape[0] != n:
        raise RuntimeError(f"gathered {out.shape[0]} rows of {n}")
    return out


def gather_kept(
    local: torch.Tensor | None, indices: torch.Tensor | None, rank: int, world_size: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`gather_in_order` for a pass whose batches may lose items (bad images skipped while
    decoding, harness/data/datasets.py): each rank's `local` rows come with their item `indices`
    (None for a rank that kept none), and every rank gets all kept rows in index order with their
    indices; (None, None) when no rank kept any. No rank can know the others' counts beforehand,
    so they are exchanged first."""
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
    rows = torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])
    kept = torch.cat([part[:count] for part, count in zip(index_parts, counts, strict=True)])
    order = torch.argsort(kept)
    return rows[order], kept[order]
