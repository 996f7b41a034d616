"""Passes over a whole split shared by the ranks (harness/sharding.py): descriptor extraction and
the training-set encodings give, on every rank, exactly what one process computes."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port, gloo_rank, tiny_run_overrides

from harness.sharding import batch_bounds, my_indices

N, BATCH = 23, 4  # 6 batches, the last one short: ranks get 3 batches each, one of them short
SUBSET = [0, 2, 3, 7, 11, 12, 13, 19, 22]  # 3 batches of a subset pass, the last one short


def test_batches_go_round_robin_and_cover_every_index_once():
    assert batch_bounds(N, BATCH)[-1] == (20, 23)
    shares = [my_indices(N, BATCH, r, 2) for r in range(2)]
    assert shares[0][:4] == [0, 1, 2, 3] and shares[1][:4] == [4, 5, 6, 7]
    assert sorted(shares[0] + shares[1]) == list(range(N))
    assert my_indices(N, BATCH, 2, 3) == [8, 9, 10, 11, 20, 21, 22]
    assert my_indices(3, BATCH, 1, 2) == []  # one batch only: rank 1 has nothing to do


def _passes(benchmark: str, rank: int, world_size: int) -> dict:
    """Descriptors of the references (eval mode) and the training set encoded in train mode
    (BatchNorm's batch statistics), as rank `rank` of `world_size` gets them."""
    from harness.config import resolve_config
    from harness.describe import extract_descriptors
    from harness.encode import encode_dataset
    from harness.pipeline import build_method, load_data

    cfg = resolve_config(
        "membank",
        overrides=tiny_run_overrides("eval.batch_size=4", "membank.num_negatives=8"),
        data=benchmark,
    )
    data = load_data(cfg)
    method = build_method(cfg, len(data.benchmark.training), torch.device("cpu"))
    references = extract_descriptors(
        method,
        data.benchmark.references,
        "reference",
        cfg,
        torch.device("cpu"),
        split="references",
        progress=False,
        shared=True,
    )

    def mode(train: bool):
        def encode(images):
            method.encoder.train(train)
            return method.encoder(images)

        return encode

    def encoding_pass(fn, indices=None, world_size=world_size):
        return encode_dataset(
            data.train_data.augmented,
            fn,
            seed=0,
            seed_key=3,
            batch_size=BATCH,
            num_workers=0,
            device=torch.device("cpu"),
            channels_last=False,
            amp_dtype=None,
            desc="",
            progress=False,
            rank=rank if world_size > 1 else 0,
            world_size=world_size,
            indices=indices,
        )

    # The eval-mode passes first: a train-mode pass moves each rank's BatchNorm running
    # statistics by that rank's batches only.
    # QK's cache pass over a subset of negatives (qk.num_negatives): only those are encoded.
    subset = encoding_pass(mode(False), torch.tensor(SUBSET))
    full_eval = encoding_pass(mode(False), world_size=1) if world_size == 1 else None
    encoded = encoding_pass(mode(True))  # BatchNorm's batch statistics: batches must match

    return {
        "ids": list(references.ids),
        "references": references.features,
        "encoded": encoded,
        "subset": subset,
        "full_eval": full_eval,
    }


def _worker(rank: int, world_size: int, port: int, benchmark: str, out_dir: str) -> None:
    with gloo_rank(rank, world_size, port):
        torch.save(_passes(benchmark, rank, world_size), os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def sharding_benchmark(tmp_path_factory):
    from harness.data.synth import SynthParams, synthesize

    params = SynthParams(references=N, training=N, queries=6, size=40)
    return synthesize(tmp_path_factory.mktemp("bench") / "mini", params, workers=1, progress=False)


@pytest.mark.slow
def test_two_ranks_describe_and_encode_exactly_as_one(sharding_benchmark, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _passes(str(sharding_benchmark), 0, 1)
    finally:
        torch.set_num_threads(before)
    mp.spawn(
        _worker,
        args=(2, free_port(), str(sharding_benchmark), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert got["ids"] == single["ids"]
        assert (got["references"] == single["references"]).all()  # bit for bit
        assert torch.equal(got["encoded"], single["encoded"])
        assert torch.equal(got["subset"], single["subset"])
    # Each subset row is its item's row of a full pass: the same image under the same seed.
    assert single["subset"].shape[0] == len(SUBSET)
    torch.testing.assert_close(single["subset"], single["full_eval"][SUBSET], rtol=1e-4, atol=1e-5)


# Bad references: batch 0 (rank 0) loses one image, and every batch of rank 1 (1, 3 and the short
# 5) loses all of them, so rank 1 has no row at all. Bad training images: each rank loses some.
BAD_REFERENCES = (1, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22)
BAD_TRAINING = (2, 5, 22)


def _describe_skipping(benchmark: str, out: str, rank: int, world_size: int) -> None:
    """References and training images described with data.skip_bad_images, as rank `rank` of
    `world_size` gets them."""
    from harness.config import resolve_config
    from harness.describe import extract_descriptors
    from harness.pipeline import build_method, load_data

    cfg = resolve_config(
        "none",
        overrides=tiny_run_overrides("eval.batch_size=4", "data.skip_bad_images=true"),
        data=benchmark,
    )
    data = load_data(cfg)
    method = build_method(cfg, len(data.benchmark.training), torch.device("cpu"))
    got = {}
    for split in ("references", "training"):
        descriptors = extract_descriptors(
            method,
            getattr(data.benchmark, split),
            "reference",
            cfg,
            torch.device("cpu"),
            split=split,
            progress=False,
            shared=True,
        )
        got[split] = (list(descriptors.ids), descriptors.features)
    torch.save(got, os.path.join(out, f"rank{rank}-of-{world_size}.pt"))


def _skipping_worker(rank: int, world_size: int, port: int, benchmark: str, out: str) -> None:
    with gloo_rank(rank, world_size, port):
        _describe_skipping(benchmark, out, rank, world_size)


@pytest.mark.slow
def test_two_ranks_describe_as_one_when_batches_lose_bad_images(sharding_benchmark, tmp_path):
    bench = tmp_path / "bench"
    shutil.copytree(sharding_benchmark, bench)
    for split, bad in (("references", BAD_REFERENCES), ("training", BAD_TRAINING)):
        files = sorted((bench / split).iterdir())
        for i in bad:
            files[i].write_bytes(b"not an image")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _describe_skipping(str(bench), str(tmp_path), 0, 1)
    finally:
        torch.set_num_threads(before)
    single = torch.load(tmp_path / "rank0-of-1.pt", weights_only=False)
    for split, bad in (("references", BAD_REFERENCES), ("training", BAD_TRAINING)):
        prefix = "R" if split == "references" else "T"
        assert single[split][0] == [f"{prefix}{i:06d}" for i in range(N) if i not in bad]
    mp.spawn(
        _skipping_worker, args=(2, free_port(), str(bench), str(tmp_path)), nprocs=2, join=True
    )
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}-of-2.pt", weights_only=False)
        for split in ("references", "training"):
            assert got[split][0] == single[split][0]
            assert (got[split][1] == single[split][1]).all()  # bit for bit


def _run_worker(rank: int, world_size: int, port: int, run_dir: str) -> None:
    from harness.pipeline import execute_run_dir

    with gloo_rank(rank, world_size, port):
        execute_run_dir(run_dir, progress=False)


@pytest.mark.slow
def test_a_two_rank_run_writes_the_descriptors_of_a_one_rank_run(sharding_benchmark, tmp_path):
    from harness.config import resolve_config
    from harness.isc import read_descriptors
    from harness.pipeline import execute_run_dir
    from harness.run_dir import prepare_run_dir

    cfg = resolve_config(
        "none", overrides=tiny_run_overrides("eval.batch_size=4"), data=str(sharding_benchmark)
    )
    one = prepare_run_dir(cfg, tmp_path / "one")
    two = prepare_run_dir(cfg, tmp_path / "two")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = execute_run_dir(one, progress=False)
    finally:
        torch.set_num_threads(before)
    mp.spawn(_run_worker, args=(2, free_port(), str(two)), nprocs=2, join=True)
    for split in ("query", "reference", "training"):
        a = read_descriptors(one / "descriptors.h5", split)
        b = read_descriptors(two / "descriptors.h5", split)
        assert list(a.ids) == list(b.ids) and (a.features == b.features).all()
    record = json.loads((two / "record.json").read_text())
    assert record["metrics"] == single["metrics"]
