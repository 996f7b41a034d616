"""SimCLR, MoCo and the memory bank: each step's loss against a literal reference, and their state
updates (queue, momentum encoder, bank slots)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from test_methods_support import (  # noqa: F401  (one_thread: autouse fixture)
    FakeTrainer,
    build,
    images,
    make_batch,
    one_thread,
)

from methods.membank import MemoryBankConfig
from methods.moco import MoCoConfig
from methods.simclr import SimCLRConfig


def _nt_xent(first, second, temperature):
    """Textbook NT-Xent: 2B embeddings, each one's positive is the other view, self excluded."""
    z = F.normalize(torch.cat([first, second]), dim=1)
    n = len(first)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, target)


def test_simclr_loss_is_nt_xent_over_the_batch():
    method = build("simclr", SimCLRConfig(temperature=0.3)).eval()  # eval: BatchNorm is fixed
    batch = make_batch(images(24), 0)
    loss, _ = method.training_step(batch, 0)
    encoder = method.encoder
    first = encoder.head(encoder.backbone(batch.views[0]))
    second = encoder.head(encoder.backbone(batch.views[1]))
    torch.testing.assert_close(loss, _nt_xent(first, second, 0.3))
    assert method.negatives_per_step() == 2 * len(batch.indices) - 2


def test_moco_loss_momentum_update_and_enqueue():
    config = MoCoConfig(queue_size=12, momentum=0.9, temperature=0.2, symmetric=False)
    method = build("moco", config).eval()
    before = copy.deepcopy(method)
    data = images(24)
    for step in range(2):  # 2 x 8 keys through a 12-slot queue: the pointer wraps around
        batch = make_batch(data, step)
        queue = method.queue.keys.clone()
        pointer = int(method.queue.pointer)
        # reference: the key encoder moves towards the query encoder first, then encodes view 2
        expected_key_encoder = copy.deepcopy(before.key_encoder)
        for k, q in zip(
            expected_key_encoder.parameters(), method.query_encoder.parameters(), strict=True
        ):
            k.data = 0.9 * k.data + 0.1 * q.data
        loss, _ = method.training_step(batch, step)
        query = method.query_encoder(batch.views[0])
        key = expected_key_encoder(batch.views[1]).detach()
        logits = torch.cat([(query * key).sum(1, keepdim=True), query @ queue.T], 1) / 0.2
        want = F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long))
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
        for a, b in zip(
            method.key_encoder.parameters(), expected_key_encoder.parameters(), strict=True
        ):
            torch.testing.assert_close(a, b)
        slots = [(pointer + i) % 12 for i in range(len(key))]
        torch.testing.assert_close(method.queue.keys[slots], key, rtol=1e-5, atol=1e-5)
        assert int(method.queue.pointer) == (pointer + len(key)) % 12
        before = copy.deepcopy(method)
    assert all(not p.requires_grad for p in method.key_encoder.parameters())
    assert "queue.keys" in method.state_dict() and "queue.pointer" in method.state_dict()


def test_membank_full_softmax_loss_and_slot_update():
    method = build(
        "membank", MemoryBankConfig(num_negatives=None, temperature=0.07, bank_momentum=0.5)
    )
    method.eval()
    batch = make_batch(images(24), 0)
    slots = method.bank.slots.clone()
    loss, _ = method.training_step(batch, 0)
    embedding = method.encoder(batch.views[0])
    torch.testing.assert_close(loss, F.cross_entropy(embedding @ slots.T / 0.07, batch.indices))
    expected = F.normalize(0.5 * slots[batch.indices] + 0.5 * embedding.detach(), dim=1)
    torch.testing.assert_close(method.bank.slots[batch.indices], expected)
    untouched = torch.ones(24, dtype=torch.bool)
    untouched[batch.indices] = False
    assert torch.equal(method.bank.slots[untouched], slots[untouched])
    assert "bank.slots" in method.state_dict()


def test_membank_sampled_loss_is_a_softmax_over_own_slot_and_sampled_slots():
    method = build("membank", MemoryBankConfig(num_negatives=5, temperature=0.1)).eval()
    batch = make_batch(images(24), 0)
    slots = method.bank.slots.clone()
    loss, _ = method.training_step(batch, 0)
    embedding = method.encoder(batch.views[0])
    positive = (embedding * slots[batch.indices]).sum(1) / 0.1
    all_logits = embedding @ slots.T / 0.1
    # Whatever 5 slots were drawn, the loss lies between the cases "the 5 least similar" and
    # "the 5 most similar" slots, and it differs from the full-bank softmax.
    lowest = all_logits.topk(5, dim=1, largest=False).values
    highest = all_logits.topk(5, dim=1).values

    def ce(negatives):
        return (torch.logsumexp(torch.cat([positive[:, None], negatives], 1), 1) - positive).mean()

    assert ce(lowest) - 1e-5 <= loss <= ce(highest) + 1e-5
    assert method.negatives_per_step() == 5


def test_membank_draws_the_same_negatives_for_the_same_step():
    first = build("membank", MemoryBankConfig(num_negatives=5)).eval()
    second = build("membank", MemoryBankConfig(num_negatives=5)).eval()
    batch = make_batch(images(24), 0)
    assert torch.equal(first.training_step(batch, 3)[0], second.training_step(batch, 3)[0])


def test_moco_queue_smaller_than_a_batch_keeps_the_newest_keys():
    from methods.moco import KeyQueue

    queue = KeyQueue(size=3, dim=4)
    keys = F.normalize(torch.randn(5, 4), dim=1)
    queue.enqueue(keys, 0)
    # FIFO of capacity 3 after 5 pushes: the last 3, and the next write replaces the oldest of them
    assert torch.equal(queue.keys, keys[2:])
    assert int(queue.pointer) == 0
    assert queue.written_row.tolist() == [2, 3, 4]  # each key's row in its step's batch
    queue.enqueue(keys[:1], 1)
    assert torch.equal(queue.keys, torch.cat([keys[:1], keys[3:]]))
    assert queue.written_step.tolist() == [1, 0, 0]


def test_membank_encoder_init_fills_every_slot_at_a_fresh_start_only():
    data = images(24)
    method = build("membank", MemoryBankConfig(num_negatives=5, bank_init="encoder"))
    random_slots = method.bank.slots.clone()
    trainer = FakeTrainer(data, total_steps=3)
    method.on_train_start(trainer.ctx, 0)
    assert trainer.encode_calls == ["clean"] and method.training
    # The slots are train-mode embeddings of the clean images, batch by batch as the trainer
    # delivers them (FakeTrainer: batches of 5).
    reference = copy.deepcopy(method.encoder).train()
    with torch.no_grad():
        expected = torch.cat([reference(data[i : i + 5]) for i in range(0, len(data), 5)])
    torch.testing.assert_close(method.bank.slots, expected)
    # A resumed run keeps the slots its checkpoint restored; "random" is the paper's start.
    restored = method.bank.slots.clone()
    method.on_train_start(trainer.ctx, 2)
    torch.testing.assert_close(method.bank.slots, restored)
    paper = build("membank", MemoryBankConfig(num_negatives=5, bank_init="random"))
    paper.on_train_start(FakeTrainer(data, total_steps=3).ctx, 0)
    torch.testing.assert_close(paper.bank.slots, random_slots)


def test_moco_symmetric_loss_is_the_mean_of_both_directions_and_enqueues_both_key_sets():
    config = MoCoConfig(queue_size=40, momentum=0.9, temperature=0.2, symmetric=True)
    method = build("moco", config).eval()
    batch = make_batch(images(24), 0)
    queue = method.queue.keys.clone()
    loss, _ = method.training_step(batch, 0)  # the key encoder has moved; recompute with it

    def direction(query_view, key_view):
        query = method.query_encoder(query_view)
        key = method.key_encoder(key_view).detach()
        logits = torch.cat([(query * key).sum(1, keepdim=True), query @ queue.T], 1) / 0.2
        return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long)), key

    first, key_1 = direction(batch.views[0], batch.views[1])
    second, key_0 = direction(batch.views[1], batch.views[0])
    torch.testing.assert_close(loss, (first + second) / 2, rtol=1e-5, atol=1e-5)
    n = len(batch.indices)
    torch.testing.assert_close(method.queue.keys[:n], key_1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(method.queue.keys[n : 2 * n], key_0, rtol=1e-5, atol=1e-5)
    assert int(method.queue.pointer) == 2 * n
