"""Collectives the methods need under multi-process training; no-ops in a single process.

The trainer averages gradients over ranks after backward (all_reduce SUM / world_size, as DDP
does) and each rank's loss is the mean over its local batch. A gather that must carry gradients
(SimCLR's, SSCD's and XBM's in-batch negatives) therefore has to *sum* the gradient over ranks in
its backward, which lightly's `GatherLayer` does (`gather_with_grad`): rank r's embeddings then get
d(sum_r' L_r')/dz_r, and the trainer's average turns that into the gradient of the global mean
loss. Bank, queue and memory updates use `gather_no_grad`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.utils.dist import GatherLayer


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from all ranks in rank order, keeping the graph: lightly's GatherLayer,
    whose backward sums the gradient over ranks (module doc); identity in one process."""
    if not is_distributed():
        return tensor
    return torch.cat(GatherLayer.apply(tensor.contiguous()))


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from all ranks in rank order (detached); identity in one process."""
    if not is_distributed():
        return tensor.detach()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts)
