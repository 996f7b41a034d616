"""`bench methods`: the module runs at a tiny size and returns sane rows (figures are not asserted)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness.benchmarks import methods as methods_bench
from methods import list_methods

TINY = methods_bench.Setting(
    "test_resnet", 32, 8, 48, steps=1, rounds=1, n_files=16, workers=0, extract_batch=8
)


@pytest.mark.slow
def test_rows_cover_every_case_with_positive_finite_figures(monkeypatch):
    monkeypatch.setattr(methods_bench, "QUICK", TINY)
    rows = methods_bench.run(quick=True)
    json.dumps(rows)  # flat, JSON-serializable values
    cases = [(row["case"], row["method"]) for row in rows]
    assert cases == [
        *(("train", name) for name in methods_bench.METHODS),
        ("qk phase start", "qk"),
        ("train (dataloader)", "simclr"),
        ("extract", "simclr"),
    ]
    for row in rows:
        for key in ("images_per_s", "reference_images_per_s", "seconds"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["case"], key)
        assert (row["backbone"], row["image_size"], row["batch"]) == ("test_resnet", 32, 8)
    train = {row["method"]: row for row in rows if row["case"] == "train"}
    for row in train.values():
        assert row["met"] == (row["overhead_percent"] <= 100 * (methods_bench.OVERHEAD_TARGET - 1))
        assert row["checkpoint_per_step_s"] > 0
    # The phase start is amortized on top of QK's step, so it can only lower the figure.
    assert train["qk"]["images_per_s_with_phase_start"] < train["qk"]["images_per_s"]
    (phase,) = [row for row in rows if row["case"] == "qk phase start"]
    assert phase["cache_dtype"] == "fp32" and phase["cache_mb"] > 0
    assert phase["cache_mb_1M_bf16"] == pytest.approx(phase["cache_mb_1M_fp32"] / 2)
    (extract,) = [row for row in rows if row["case"] == "extract"]
    assert extract["met"] == (extract["ratio"] >= methods_bench.EXTRACT_TARGET)


def test_every_trained_method_is_benchmarked():
    assert set(methods_bench.METHODS) == set(list_methods()) - {"none"}


@pytest.mark.parametrize("name", methods_bench.METHODS)
def test_bare_loop_computes_the_methods_loss(name):
    """The reference does the same math: with the method's weights and state copied in, the bare
    loop's loss equals the method's loss on the same batch."""
    torch.manual_seed(0)
    cfg = methods_bench._run_config(name, TINY)
    method = methods_bench._build_method(cfg, TINY.n_train, torch.device("cpu"))
    bare = methods_bench.BareLoop(name, cfg, TINY.n_train, torch.device("cpu"))
    bare.load_from(method)
    pool = methods_bench._pool(TINY)
    views, index = bare.batch(pool, TINY.batch_size)
    batch = methods_bench.train_batch(views, index)
    method.train()
    bare.train()
    if name == "qk":
        method.cache = bare.cache.clone()
        method.cache_rows = torch.arange(TINY.n_train)
        method.cache_phase = 0
    generator_state = torch.get_rng_state()
    expected, _ = method.training_step(batch, step=0)
    torch.set_rng_state(generator_state)
    got = bare.loss(views, index, step=0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)
