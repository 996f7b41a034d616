"""Descriptors of an image set: the one extraction path of the final evaluation, validation and
the bench (uint8 batches out of the loader workers, normalized on the device)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from harness.device import amp_dtype, autocast, dist_info, loader_workers
from harness.errors import HarnessError
from harness.sharding import gather_in_order, my_indices

if TYPE_CHECKING:  # pragma: no cover
    from harness.config import RunConfig


def extract_descriptors(
    method,
    image_set,
    role: str,
    cfg: RunConfig,
    device: torch.device,
    *,
    split: str,
    progress: bool = True,
    shared: bool = False,
):
    """Descriptors of every image of `image_set`, described in `role`, as harness.isc.Descriptors.

    `shared`: every rank of a multi-process run calls this, each describes its share of the
    batches, and every rank gets all descriptors (harness/sharding.py); equal to one process."""
    from harness.augment import EvalTransform, normalize_batch
    from harness.data import ImageDataset
    from harness.isc import Descriptors

    rank, world_size = dist_info() if shared else (0, 1)
    n = len(image_set)
    cuda = device.type == "cuda"
    loader = DataLoader(
        # uint8 out of the workers, normalized per batch on the device (harness/augment.py)
        ImageDataset(
            image_set,
            EvalTransform(cfg.model.image_size, normalize=False),
            draft_side=cfg.model.image_size if cfg.data.decode == "draft" else None,
        ),
        batch_size=cfg.eval.batch_size,
        sampler=my_indices(n, cfg.eval.batch_size, rank, world_size),
        num_workers=loader_workers(cfg.data.workers, "data.workers"),
        pin_memory=cuda,
    )
    fmt = torch.channels_last if cuda and cfg.train.channels_last else torch.contiguous_format
    method.eval()
    features = []
    with torch.no_grad(), autocast(amp_dtype(device, cfg.train.amp)):
        for images, _, _ in tqdm(
            loader, desc=f"describe {split}", unit="batch", disable=not progress
        ):
            images = normalize_batch(images.to(device, non_blocking=cuda))
            images = images.contiguous(memory_format=fmt)
            features.append(method.describe(images, role).float())
    local = torch.cat(features) if features else None
    gathered = gather_in_order(local, n, cfg.eval.batch_size, rank, world_size)
    if gathered is None:  # one process, no image
        matrix = np.zeros((0, cfg.model.embedding_dim), dtype=np.float32)
    else:
        matrix = gathered.cpu().numpy()
    if not np.isfinite(matrix).all():
        raise HarnessError(
            f"method {cfg.method!r} produced NaN/inf descriptors for the {split} images; "
            "the model diverged (check train_log.jsonl)"
        )
    return Descriptors(np.asarray(image_set.ids, dtype=str), matrix.astype(np.float32))
