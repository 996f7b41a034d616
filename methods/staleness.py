"""The stale-negatives measure's shared part: stored entries against a recomputation now.

QK iteration's argument is that a queue or a memory bank "relaxes consistency": the negatives it
scores against were computed by earlier weights. A store that remembers, per entry, the step that
wrote it and its row in that step's output can be checked exactly: regenerate that step's global
batch (the trainer's stream is a pure function of the run seed and the step), run the key side
as it is now on the batch, in the mode the training step ran it, and compare each stored entry
with the row it came from. With unchanged weights the cosine is 1 (a momentum-mixed slot aside);
the further the weights moved, the lower it falls. BatchNorm's running statistics are left as
they were (harness/train.py restores them), so the measure never changes training.

Recomputing whole batches keeps BatchNorm's batch statistics those of the original step; under
multi-process training each rank normalized its own share, which the one-process recomputation
does not reproduce exactly (a small floor below 1, said in the record's note).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from methods.base import NegativeProbe, TrainBatch

NOT_WRITTEN = -1  # written_step of an entry no training image wrote (a random initial value)
NO_ROW = -1  # written_row of an entry written outside the training stream (an initial fill)


@torch.no_grad()
def compare_with_recomputed(
    probe: NegativeProbe,
    stored: torch.Tensor,
    written_step: torch.Tensor,
    written_row: torch.Tensor,
    recompute: Callable[[TrainBatch], torch.Tensor],
) -> dict[str, float] | None:
    """Mean cosine between stored entries and their recomputation for up to `probe.batches` of
    the steps that wrote them (drawn with `probe.generator`), and the mean age of every written
    entry. `recompute(batch)` returns the rows the store took from `batch`, in the store's row
    order. None when nothing written by a training step is stored yet."""
    written = written_step != NOT_WRITTEN
    from_stream = written & (written_row != NO_ROW)
    if not bool(from_stream.any()):
        return None
    steps = torch.unique(written_step[from_stream]).cpu()
    pick = torch.randperm(len(steps), generator=probe.generator)[: probe.batches]
    cosines = []
    for step in steps[pick].sort().values.tolist():
        entries = torch.nonzero(from_stream & (written_step == step)).flatten()
        now = recompute(probe.batch_at(step))
        then = stored[entries].float()
        again = now[written_row[entries].to(now.device)].float()
        cosines.append((F.normalize(then, dim=1) * F.normalize(again, dim=1)).sum(1).cpu())
    ages = probe.step - written_step[written].float()
    return {
        "consistency": float(torch.cat(cosines).mean()),
        "consistency_entries": float(sum(len(c) for c in cosines)),
        "negative_age": float(ages.mean()),
        "negative_age_max": float(ages.max()),
    }
