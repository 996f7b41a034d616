"""The generated mini-DISC: determinism, disjoint and distinct splits, ground truth vs metadata,
every edit family, the reader round trip, overwrite/interruption safety, the cache, the CLI, and
that a trivial descriptor neither fails nor solves the default benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.cli import main as cli_main
from harness.data import (
    EDIT_FAMILIES,
    SynthParams,
    ensure_synthetic,
    load_benchmark,
    resolve_data,
    synthesize,
)
from harness.data import synth as synth_module
from harness.data.edits import apply_edit
from harness.errors import ConfigError, InputError
from harness.isc import Descriptors, evaluate, read_ground_truth, search

TINY = SynthParams(references=40, training=60, queries=30, size=48, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth") / "tiny", TINY, workers=1, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _pixels(path: Path, side: int = 8) -> np.ndarray:
    """The trivial descriptor: side x side RGB pixels, centred and L2-normalized."""
    x = np.asarray(Image.open(path).convert("RGB").resize((side, side), Image.BILINEAR), np.float32)
    x = x.reshape(-1) - x.mean()
    return x / (np.linalg.norm(x) + 1e-6)


def test_same_seed_same_bytes_whatever_the_worker_count(tiny, tmp_path):
    again = synthesize(tmp_path / "again", TINY, workers=2, progress=False)
    assert _files(again) == _files(tiny)
    other = synthesize(
        tmp_path / "other", SynthParams(**{**TINY.to_dict(), "seed": 4}), workers=1, progress=False
    )
    assert _files(other)["references/R000000.jpg"] != _files(tiny)["references/R000000.jpg"]
    assert (other / "ground_truth.csv").read_bytes() != (tiny / "ground_truth.csv").read_bytes()


def test_reader_round_trip(tiny):
    bench = load_benchmark(tiny)
    assert bench.references.ids == [f"R{i:06d}" for i in range(40)]
    assert bench.training.ids == [f"T{i:06d}" for i in range(60)]
    assert bench.queries.ids == [f"Q{i:05d}" for i in range(30)]
    assert bench.skipped == []
    assert bench.ground_truth.n_gt == TINY.n_copies == 15
    assert list(bench.metadata.columns) == ["query_id", "reference_id", "source_id", "edits"]
    with Image.open(bench.references.paths[0]) as image:
        assert image.size == (48, 48)
    for path in bench.queries.paths:
        with Image.open(path) as image:
            assert max(image.size) == 48


def test_ground_truth_matches_metadata(tiny):
    gt = read_ground_truth(tiny / "ground_truth.csv")
    meta = pd.read_csv(tiny / "metadata.csv", dtype=str, keep_default_na=False)
    assert sorted(gt.queries.tolist()) == sorted(meta["query_id"])
    copies = meta[meta["reference_id"] != ""]
    assert set(zip(gt.query, gt.reference, strict=True)) == set(
        zip(copies["query_id"], copies["reference_id"], strict=True)
    )
    assert (copies["source_id"] == copies["reference_id"]).all()
    assert copies["reference_id"].is_unique  # each reference copied at most once
    distractors = meta[meta["reference_id"] == ""]
    assert len(distractors) == 15
    # A distractor's source is in neither image set.
    assert distractors["source_id"].str.startswith("D").all()
    assert (meta["edits"] != "").all()


def test_splits_are_disjoint_and_references_distinct(tiny):
    bench = load_benchmark(tiny)
    refs = np.stack([_pixels(p) for p in bench.references.paths])
    train = np.stack([_pixels(p) for p in bench.training.paths])
    assert not set(bench.references.ids) & set(bench.training.ids)
    # The typical distance of a mild copy (JPEG + slight blur) to its original ...
    mild = []
    for path in bench.references.paths[:10]:
        image = Image.open(path).convert("RGB")
        edited = apply_edit(
            "blur",
            apply_edit("jpeg", image, np.random.default_rng(0)),
            np.random.default_rng(0),
            0.3,
        )
        edited.save(tiny.parent / "mild.jpg")
        mild.append(np.linalg.norm(_pixels(tiny.parent / "mild.jpg") - _pixels(path)))
    copy_distance = float(np.max(mild))
    # ... is smaller than the distance between any two references or a reference and a training
    # image: no near-duplicates inside the references, nothing shared with training.
    ref_ref = np.linalg.norm(refs[:, None] - refs[None], axis=-1)
    ref_ref[np.diag_indices(len(refs))] = np.inf
    ref_train = np.linalg.norm(refs[:, None] - train[None], axis=-1)
    assert ref_ref.min() > 2 * copy_distance
    assert ref_train.min() > 2 * copy_distance


def test_every_edit_family_appears(tmp_path):
    params = SynthParams(
        references=150, training=1, queries=150, distractor_fraction=0.2, size=32, seed=1
    )
    root = synthesize(tmp_path / "families", params, workers=1, progress=False)
    meta = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    used = {name for edits in meta["edits"] for name in edits.split("|")}
    assert used == set(EDIT_FAMILIES)
    assert "meme_format" not in used


def test_existing_output_is_not_overwritten(tiny, tmp_path):
    before = _files(tiny)
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        synthesize(tiny, TINY, progress=False)
    assert _files(tiny) == before
    small = SynthParams(references=5, training=5, queries=4, size=24)
    # --overwrite replaces a generated benchmark, never a folder of someone's files.
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with pytest.raises(InputError, match="not a benchmark made by data synth"):
        synthesize(folder, small, overwrite=True, workers=1, progress=False)
    assert (folder / "old.txt").read_text() == "old"
    target = synthesize(tmp_path / "replace", small, workers=1, progress=False)
    (target / "old.txt").write_text("old")
    synthesize(target, small, overwrite=True, workers=1, progress=False)
    assert not (target / "old.txt").exists() and (target / "ground_truth.csv").is_file()


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth_module, "make_query", boom)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "half", TINY, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="--distractor-fraction"):
        SynthParams(distractor_fraction=1.5)
    with pytest.raises(ConfigError, match="references"):
        SynthParams(references=10, queries=100, distractor_fraction=0.5)
    with pytest.raises(ConfigError, match="valid:"):
        SynthParams.from_dict({"refs": 3})


def test_cache_is_keyed_by_parameters(tmp_path, monkeypatch):
    small = SynthParams(references=6, training=4, queries=4, size=24)
    first = ensure_synthetic(small, cache_dir=tmp_path, progress=False, workers=1)
    assert first.is_dir() and first.parent.parent == tmp_path

    def no_regeneration(*args, **kwargs):
        raise AssertionError("cached benchmark regenerated")

    monkeypatch.setattr(synth_module, "synthesize", no_regeneration)
    assert ensure_synthetic(small, cache_dir=tmp_path, progress=False) == first
    other = SynthParams(references=6, training=4, queries=4, size=24, seed=1)
    assert synth_module.synthetic_path(other, tmp_path) != first


def test_resolve_data(tmp_path, monkeypatch, tiny):
    monkeypatch.setenv("ISC_BENCH_CACHE", str(tmp_path / "cache"))
    small = SynthParams(references=6, training=4, queries=4, size=24)
    path = resolve_data("synthetic", synth_params=small)
    assert path.is_relative_to(tmp_path / "cache") and (path / "ground_truth.csv").is_file()
    assert resolve_data(str(tiny)) == tiny
    with pytest.raises(InputError, match="no such directory"):
        resolve_data(str(tmp_path / "missing"))


def test_cli_synth_and_check(tmp_path, capsys):
    out = tmp_path / "cli"
    args = [
        "data",
        "synth",
        "--out",
        str(out),
        "--references",
        "8",
        "--training",
        "6",
        "--queries",
        "6",
        "--size",
        "24",
        "--workers",
        "1",
        "--no-progress",
        "--edit-families",
        "jpeg,flip",
    ]
    assert cli_main(args) == 0
    meta = pd.read_csv(out / "metadata.csv", dtype=str, keep_default_na=False)
    assert {n for e in meta["edits"] for n in e.split("|")} <= {"jpeg", "flip"}
    assert cli_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["data", "check", str(out)]) == 0
    assert '"n_references": 8' in capsys.readouterr().out
    (out / "training" / "T000001.jpg").write_bytes(b"")
    assert cli_main(["data", "check", str(out)]) == 2
    assert cli_main(["data", "check", "--skip-bad-images", str(out)]) == 0
    assert "zero-byte" in capsys.readouterr().out


@pytest.mark.slow
def test_trivial_descriptor_neither_fails_nor_solves_the_default_benchmark(tmp_path):
    # References and queries depend only on (seed, split, index) and the query plan, not on the
    # training count: this is the default benchmark's evaluation part, without its 5k training images.
    root = synthesize(tmp_path / "default", SynthParams(training=1), progress=False)
    bench = load_benchmark(root, check_images=False)

    def describe(image_set):
        features = np.stack([_pixels(p) for p in image_set.paths]).astype(np.float32)
        return Descriptors(np.asarray(image_set.ids), features)

    metrics = evaluate(
        bench.ground_truth, search(describe(bench.queries), describe(bench.references))
    )
    assert 0.15 < metrics.average_precision < 0.75, metrics.average_precision


def _ensure_in_subprocess(cache_dir: str) -> str:
    small = SynthParams(references=30, training=10, queries=20, size=24)
    return str(ensure_synthetic(small, cache_dir=cache_dir, progress=False, workers=1))


@pytest.mark.slow
def test_concurrent_runs_share_one_cached_benchmark(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        paths = pool.map(_ensure_in_subprocess, [str(tmp_path)] * 2)
    assert paths[0] == paths[1]
    synthetic = tmp_path / "synthetic"
    assert [p.name for p in synthetic.iterdir() if not p.name.endswith(".lock")] == [
        Path(paths[0]).name
    ]
    assert load_benchmark(paths[0]).ground_truth.n_gt == 10
