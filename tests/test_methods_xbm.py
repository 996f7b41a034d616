"""Cross-batch memory: its loss against a plain-loop reference (batch and memory, negatives and
same-image positives), the warm-up, and the FIFO memory and its enqueue order."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_methods_support import (  # noqa: F401  (one_thread: autouse fixture)
    build,
    fixed_batch,
    images,
    one_thread,
)

from methods.xbm import EmbeddingMemory, XBMConfig


def _loop_reference(embedding, ids, memory, memory_ids, temperature):
    """For each embedding i: every other embedding of the same image, in the batch or the memory,
    is a positive scored against the embeddings of other images (batch and memory); the rows'
    means over their positives are averaged."""
    keys = torch.cat([embedding, memory.reshape(-1, embedding.shape[1])]).double()
    key_ids = list(ids) + list(memory_ids)
    total = 0.0
    for i in range(len(embedding)):
        similarity = [float(keys[i] @ keys[j]) / temperature for j in range(len(keys))]
        negative_sum = sum(
            math.exp(similarity[j]) for j in range(len(keys)) if key_ids[j] != ids[i]
        )
        terms = [
            -math.log(math.exp(similarity[p]) / (math.exp(similarity[p]) + negative_sum))
            for p in range(len(keys))
            if key_ids[p] == ids[i] and p != i
        ]
        total += sum(terms) / len(terms)
    return total / len(embedding)


def test_xbm_loss_and_memory_against_a_loop_over_two_steps():
    method = build("xbm", XBMConfig(memory_size=20, warmup_steps=1, temperature=0.2)).eval()
    data = images(24)
    first = fixed_batch(data, torch.arange(8), seed=0)
    # Step 0 is in the warm-up: the memory (still empty) is not used, the loss is in-batch only.
    loss, logs = method.training_step(first, 0)
    embedding = method.encoder(torch.cat(first.views)).detach()
    ids = first.indices.tolist() * 2
    assert loss.item() == pytest.approx(
        _loop_reference(embedding, ids, torch.empty(0), [], 0.2), rel=1e-5
    )
    assert logs["memory_positives"] == 0
    # Both views were enqueued, view 0 first, with their training indices.
    assert int(method.memory.pointer) == 16
    torch.testing.assert_close(method.memory.embeddings[:16], embedding)
    assert method.memory.ids.tolist() == ids + [-1] * 4
    memory, memory_ids = embedding, ids

    # Step 1 shares images 4..7 with step 0: their earlier embeddings are positives too.
    second = fixed_batch(data, torch.arange(4, 12), seed=1)
    loss, logs = method.training_step(second, 1)
    embedding = method.encoder(torch.cat(second.views)).detach()
    ids = second.indices.tolist() * 2
    want = _loop_reference(embedding, ids, memory, memory_ids, 0.2)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert logs["memory_positives"] == 1.0  # 8 of 16 rows, 2 memory copies each
    # 16 more embeddings through a 20-slot memory: the pointer wraps, the oldest are overwritten.
    assert int(method.memory.pointer) == (16 + 16) % 20
    torch.testing.assert_close(method.memory.embeddings[16:], embedding[:4])
    torch.testing.assert_close(method.memory.embeddings[:12], embedding[4:])
    assert method.memory.ids.tolist() == ids[4:] + memory_ids[12:] + ids[:4]


def test_memory_is_used_from_the_warmup_step_only():
    data = images(24)
    losses = {}
    for warmup in (1, 3):
        method = build("xbm", XBMConfig(memory_size=32, warmup_steps=warmup)).eval()
        batches = [fixed_batch(data, torch.arange(8 * s, 8 * s + 8), seed=s) for s in range(2)]
        losses[warmup] = [method.training_step(b, s)[0].item() for s, b in enumerate(batches)]
        embedding = method.encoder(torch.cat(batches[1].views)).detach()
        in_batch = _loop_reference(
            embedding, batches[1].indices.tolist() * 2, torch.empty(0), [], 0.2
        )
        if warmup == 3:  # step 1 is in the warm-up: the memory is full but not used
            assert losses[3][1] == pytest.approx(in_batch, rel=1e-5)
        else:  # 16 extra negatives: a larger loss than in-batch only
            assert losses[1][1] > in_batch + 0.1
    assert losses[1][0] == pytest.approx(losses[3][0], rel=1e-6)


def test_memory_fifo_keeps_the_newest_embeddings_and_ids():
    memory = EmbeddingMemory(size=5, dim=4)
    assert memory.ids.tolist() == [-1] * 5  # empty slots
    keys = F.normalize(torch.randn(7, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    memory.enqueue(keys[:3], torch.tensor([0, 1, 2]), 0)
    memory.enqueue(keys[3:7], torch.tensor([3, 4, 5, 6]), 1)
    assert memory.ids.tolist() == [5, 6, 2, 3, 4] and int(memory.pointer) == 2
    assert torch.equal(memory.embeddings, keys[[5, 6, 2, 3, 4]])
    memory.enqueue(keys, torch.arange(10, 17), 2)  # larger than the memory: the newest 5
    assert memory.ids.tolist() == [15, 16, 12, 13, 14] and int(memory.pointer) == 2
    # Each entry's origin: the step that wrote it and its row in that step's batch.
    assert memory.written_step.tolist() == [2, 2, 2, 2, 2]
    assert memory.written_row.tolist() == [5, 6, 2, 3, 4]
    state = memory.state_dict()
    assert set(state) == {"embeddings", "ids", "pointer", "written_step", "written_row"}


def test_negatives_per_step_counts_batch_and_memory():
    method = build("xbm", XBMConfig(memory_size=32))
    assert method.negatives_per_step(batch_size=64) == 126 + 32
