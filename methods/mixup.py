"""Mixup and CutMix across a training batch, with the sources of each mixed image (SSCD's option).

SSCD (`--mixup`, through Classy Vision's element-wise MixupTransform) treats the batch of both
views, [view 0; view 1] (M images), as one list: each image is mixed with probability
`probability` (SSCD: 0.05) with its mirror partner, the image at position M - 1 - i (taken before
any mixing), by mixup or, with probability `cutmix_share` (0.5), by CutMix, the weight `lam` of its
own content drawn from Beta(alpha, alpha) (alpha 2 for both). CutMix pastes a square box of side
sqrt(1 - lam) times the image's, centred uniformly and clipped at the borders, and `lam` is then
corrected to the share of pixels left. An image's label is lam * own + (1 - lam) * partner, and
two images match (positives of each other) when their labels overlap: a mixed image is a positive
of every source it contains, and of every image that contains one of its sources.

Ours: the draws come from a generator the caller seeds (the run seed, the step and the rank), so a
resumed run mixes what the uninterrupted one did; sources are training-set indices, not positions
in the rank's batch (the same matches, since an index appears once per global batch).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def mix_across_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    probability: float,
    alpha: float,
    cutmix_share: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mixed images, partner (M,) positions, own-content weight lam (M,) in [0, 1])."""
    count, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    rng = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
    mixed_mask = rng.random(count) < probability
    cutmix = rng.random(count) < cutmix_share
    draws = rng.beta(alpha, alpha, size=count)
    centres = rng.integers(0, [height, width], size=(count, 2))
    partner = torch.arange(count - 1, -1, -1)
    weight = torch.ones(count, dtype=torch.float64)
    mixed = images.clone()
    for i in np.flatnonzero(mixed_mask).tolist():
        j = int(partner[i])
        lam = float(draws[i])
        if cutmix[i]:
            top, bottom, left, right = cutmix_box(height, width, lam, centres[i])
            mixed[i, :, top:bottom, left:right] = images[j, :, top:bottom, left:right]
            lam = 1 - (bottom - top) * (right - left) / (height * width)
        else:
            mixed[i] = lam * images[i] + (1 - lam) * images[j]
        weight[i] = lam
    return mixed, partner.to(images.device), weight.to(images.device)


def cutmix_box(height: int, width: int, lam: float, centre) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the pasted box: sides sqrt(1 - lam) of the image's, centred
    at `centre` (row, column), clipped at the borders."""
    ratio = math.sqrt(1 - lam)
    half_h, half_w = int(height * ratio) // 2, int(width * ratio) // 2
    row, column = int(centre[0]), int(centre[1])
    return (
        min(max(row - half_h, 0), height),
        min(max(row + half_h, 0), height),
        min(max(column - half_w, 0), width),
        min(max(column + half_w, 0), width),
    )


def mixed_sources(ids: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(M, 2) ids of the images each mixed image contains: its own and its partner's; a source
    with no content left (weight 0 or 1) is replaced by the other one."""
    own = torch.where(weight > 0, ids, ids[partner])
    other = torch.where(weight < 1, ids[partner], own)
    return torch.stack([own, other], dim=1)


def sources_match(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(R, C) bool: row i and column j share a source (ids (R, S) and (C, S'))."""
    return (rows[:, None, :, None] == columns[None, :, None, :]).any(dim=3).any(dim=2)
