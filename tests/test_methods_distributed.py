"""World size 2 (gloo, two processes, each half the batch, gradients averaged as the trainer does)
must give the gradients of world size 1 on the full batch, and identical queues, banks and caches.

A LayerNorm backbone (timm's test_convnext) is used because BatchNorm statistics differ per rank by
design.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port, gloo_rank
from test_methods_support import FakeTrainer, build, context, images, make_batch

from methods import TrainBatch
from methods.membank import MemoryBankConfig
from methods.moco import MoCoConfig
from methods.qk import QKConfig
from methods.simclr import SimCLRConfig
from methods.sscd import SSCDConfig
from methods.xbm import XBMConfig

CASES = {
    "simclr": SimCLRConfig(temperature=0.2),
    "moco": MoCoConfig(queue_size=12, momentum=0.9),
    "membank": MemoryBankConfig(num_negatives=7),
    "qk": QKConfig(phase_steps=1),
    # Mixup off: each rank mixes its own images, so mixed pairs depend on the world size.
    "sscd": SSCDConfig(entropy_weight=1.0),
    # Step 1 uses the memory written at step 0 (16 embeddings in 12 slots: it wraps around).
    "xbm": XBMConfig(memory_size=12, warmup_steps=1),
}
STEPS = 2
BATCH = 8


def _run(name, world_size: int, rank: int) -> dict:
    """Two trainer steps of `name` on this rank's slice of each global batch."""
    method = build(
        name, CASES[name], context(backbone="test_convnext", world_size=world_size, rank=rank)
    )
    data = images(24)
    trainer = FakeTrainer(data, total_steps=STEPS)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5)
    method.on_train_start(trainer.ctx, 0)
    local = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    out = {"grads": [], "state": {}}
    for step in range(STEPS):
        full = make_batch(data, step, batch_size=BATCH)
        batch = TrainBatch([v[local] for v in full.views], full.indices[local], full.clean[local])
        loss, _ = method.training_step(batch, step)
        loss.backward()
        grads = {n: p.grad for n, p in method.named_parameters() if p.grad is not None}
        if world_size > 1:  # what harness/train.py does after backward (DDP's averaging)
            for grad in grads.values():
                dist.all_reduce(grad)
                grad /= world_size
        out["grads"].append({n: g.clone() for n, g in grads.items()})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.on_step_end(trainer.ctx, step)
    out["state"] = {
        k: v.clone()
        for k, v in method.state_dict().items()
        if "queue" in k or "bank" in k or "memory" in k
    }
    if name == "qk":
        out["state"]["cache"] = method.cache.clone()
    return out


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    with gloo_rank(rank, world_size, port):
        results = {name: _run(name, world_size, rank) for name in CASES}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_ranks_match_one_rank_for_every_method(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = {name: _run(name, 1, 0) for name in CASES}
    finally:
        torch.set_num_threads(before)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in CASES:
        for step in range(STEPS):
            want = single[name]["grads"][step]
            for rank in ranks:
                got = rank[name]["grads"][step]
                assert got.keys() == want.keys(), name
                for key in want:
                    torch.testing.assert_close(
                        got[key], want[key], rtol=1e-4, atol=1e-6, msg=f"{name} {key}"
                    )
        for key, value in single[name]["state"].items():
            assert torch.equal(ranks[0][name]["state"][key], ranks[1][name]["state"][key]), (
                name,
                key,
            )
            torch.testing.assert_close(ranks[0][name]["state"][key], value, rtol=1e-4, atol=1e-5)
