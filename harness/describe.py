"""Descriptors of an image set: the one extraction path of the final evaluation, validation and
the bench (uint8 batches out of the loader workers, normalized on the device)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from harness.device import amp_dtype, autocast, dist_info, loader_workers
from harness.errors import HarnessError, InputError
from harness.sharding import gather_kept, my_indices

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
    skip_log: Path | None = None,
):
    """Descriptors of every image of `image_set`, described in `role`, as harness.isc.Descriptors.

    `shared`: every rank of a multi-process run calls this, each describes its share of the
    batches, and every rank gets all descriptors (harness/sharding.py); equal to one process.
    A bad image (one that does not decode) fails the extraction naming the file, or with
    `data.skip_bad_images` gets no descriptor: the result then lacks its id (the caller drops its
    ground-truth rows), and it is written to `skip_log` (harness/data/datasets.py)."""
    from harness.augment import EvalTransform, normalize_batch
    from harness.data import ImageDataset
    from harness.data.datasets import collate_kept
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
            bad_images="drop" if cfg.data.skip_bad_images else "fail",
            skip_log=skip_log,
        ),
        batch_size=cfg.eval.batch_size,
        sampler=my_indices(n, cfg.eval.batch_size, rank, world_size),
        num_workers=loader_workers(cfg.data.workers, "data.workers"),
        pin_memory=cuda,
        collate_fn=collate_kept,  # a batch may lose its bad images, or be all bad (None)
    )
    fmt = torch.channels_last if cuda and cfg.train.channels_last else torch.contiguous_format
    method.eval()
    features, kept = [], []
    with torch.no_grad(), autocast(amp_dtype(device, cfg.train.amp)):
        for batch in tqdm(loader, desc=f"describe {split}", unit="batch", disable=not progress):
            if batch is None:
                continue
            images, indices, _ = batch
            images = normalize_batch(images.to(device, non_blocking=cuda))
            images = images.contiguous(memory_format=fmt)
            features.append(method.describe(images, role).float())
            kept.append(indices.to(device))
    local = torch.cat(features) if features else None
    local_kept = torch.cat(kept) if kept else None
    gathered, indices = gather_kept(local, local_kept, rank, world_size)
    if gathered is None:  # no image, or every one skipped
        if n:
            raise InputError(
                f"none of the {n} {split} images decodes (all skipped as bad); "
                "check the benchmark with `python -m harness data check`"
            )
        matrix, rows = np.zeros((0, cfg.model.embedding_dim), dtype=np.float32), np.zeros(0, int)
    else:
        matrix, rows = gathered.cpu().numpy(), indices.cpu().numpy()
    if not np.isfinite(matrix).all():
        raise HarnessError(
            f"method {cfg.method!r} produced NaN/inf descriptors for the {split} images; "
            "the model diverged (check train_log.jsonl)"
        )
    ids = np.asarray(image_set.ids, dtype=str)
    return Descriptors(ids[rows] if len(rows) < n else ids, matrix.astype(np.float32))


def described_ground_truth(gt, queries, references, query_descriptors, reference_descriptors):
    """`gt` without the rows of the `queries` and `references` (ImageSets) that got no descriptor
    (skipped as bad while decoding, data.skip_bad_images), as the listing's check drops those of
    the files it skipped. `gt` itself when every image was described (no set of ids is built)."""
    from harness.data.layout import without_skipped

    def undescribed(images, descriptors) -> set[str]:
        if len(descriptors.ids) == len(images):
            return set()
        return set(images.ids) - set(descriptors.ids.tolist())

    return without_skipped(
        gt, undescribed(queries, query_descriptors), undescribed(references, reference_descriptors)
    )
