"""The benchmark reader: both layouts, the torch datasets, and every bad-input case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from harness.augment import build_preset, eval_transform
from harness.data import ImageDataset, TrainingDataset, load_benchmark
from harness.errors import InputError


def _write_image(path: Path, seed: int, suffix: str = ".jpg") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path.with_suffix(suffix))


def make_benchmark(
    root: Path,
    *,
    refs="references",
    queries="queries",
    train="training",
    gt="ground_truth.csv",
    n_refs=6,
    n_queries=4,
    n_train=5,
) -> Path:
    for i in range(n_refs):
        _write_image(root / refs / f"R{i:06d}", i, ".png" if i % 2 else ".jpg")
    for i in range(n_queries):
        _write_image(root / queries / f"Q{i:05d}", 100 + i)
    for i in range(n_train):
        _write_image(root / train / f"T{i:06d}", 200 + i)
    rows = ["query_id,reference_id", "Q00000,R000003", "Q00001,R000000", "Q00002,"]
    rows += [f"Q{i:05d}," for i in range(3, n_queries)]
    (root / gt).parent.mkdir(parents=True, exist_ok=True)
    (root / gt).write_text("\n".join(rows) + "\n")
    return root


def test_reads_own_layout(tmp_path):
    root = make_benchmark(tmp_path / "b")
    bench = load_benchmark(root)
    assert bench.references.ids == [f"R{i:06d}" for i in range(6)]
    assert [p.name for p in bench.references.paths][:2] == ["R000000.jpg", "R000001.png"]
    assert len(bench.queries) == 4 and len(bench.training) == 5
    assert sorted(bench.ground_truth.queries.tolist()) == [f"Q{i:05d}" for i in range(4)]
    assert dict(zip(bench.ground_truth.query, bench.ground_truth.reference, strict=True)) == {
        "Q00000": "R000003",
        "Q00001": "R000000",
    }
    assert bench.metadata is None and bench.skipped == []
    assert bench.summary()["n_references"] == 6


@pytest.mark.parametrize(
    "layout",
    [
        # DISC21 as downloaded: a folder per split and the dev ground truth file.
        dict(refs="references", queries="dev_queries", train="train", gt="dev_ground_truth.csv"),
        # The isc2021 scripts' layout.
        dict(
            refs="images/references",
            queries="images/queries",
            train="images/train",
            gt="list_files/public_ground_truth.csv",
        ),
    ],
)
def test_reads_official_layouts(tmp_path, layout):
    root = make_benchmark(tmp_path / "official", **layout)
    bench = load_benchmark(root)
    assert len(bench.references) == 6 and len(bench.queries) == 4 and len(bench.training) == 5
    assert bench.queries.paths[0].parent.name == Path(layout["queries"]).name
    assert bench.ground_truth.n_gt == 2


@pytest.mark.parametrize(
    "split,folder", [("references", "references"), ("queries", "queries"), ("training", "training")]
)
def test_missing_split_is_named(tmp_path, split, folder):
    root = make_benchmark(tmp_path / "b")
    (root / folder).rename(root / "elsewhere")
    with pytest.raises(InputError, match=f"no {split} folder"):
        load_benchmark(root)


def test_missing_ground_truth(tmp_path):
    root = make_benchmark(tmp_path / "b")
    (root / "ground_truth.csv").unlink()
    with pytest.raises(InputError, match="no ground truth file"):
        load_benchmark(root)


def test_missing_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_benchmark(tmp_path / "nothing")


@pytest.mark.parametrize("kind", ["garbage", "zero-byte", "truncated"])
def test_bad_image_is_named_or_skipped(tmp_path, kind):
    root = make_benchmark(tmp_path / "b")
    bad = root / "training" / "T000002.jpg"
    if kind == "garbage":
        bad.write_bytes(b"this is not an image")
    elif kind == "zero-byte":
        bad.write_bytes(b"")
    else:
        bad.write_bytes(bad.read_bytes()[:10])
    with pytest.raises(InputError, match="T000002.jpg") as err:
        load_benchmark(root)
    assert "--skip-bad-images" in str(err.value)
    bench = load_benchmark(root, skip_bad_images=True)
    assert "T000002" not in bench.training.ids and len(bench.training) == 4
    assert [p.name for p, _ in bench.skipped] == ["T000002.jpg"]
    assert bad.exists()  # nothing is deleted


def test_skipped_query_drops_its_ground_truth(tmp_path):
    root = make_benchmark(tmp_path / "b")
    (root / "queries" / "Q00000.jpg").write_bytes(b"")
    bench = load_benchmark(root, skip_bad_images=True)
    assert "Q00000" not in bench.ground_truth.queries
    assert bench.ground_truth.query.tolist() == ["Q00001"]


def test_ground_truth_id_without_image(tmp_path):
    root = make_benchmark(tmp_path / "b")
    (root / "references" / "R000003.png").unlink()
    with pytest.raises(InputError, match="reference R000003 has no image"):
        load_benchmark(root)
    root = make_benchmark(tmp_path / "c")
    (root / "queries" / "Q00002.jpg").unlink()
    with pytest.raises(InputError, match="query Q00002 has no image"):
        load_benchmark(root)


def test_duplicate_ids(tmp_path):
    root = make_benchmark(tmp_path / "b")
    _write_image(root / "queries" / "Q00001", 5, ".png")
    with pytest.raises(InputError, match="duplicate id 'Q00001'.*Q00001.jpg and Q00001.png"):
        load_benchmark(root)


def test_empty_split(tmp_path):
    root = make_benchmark(tmp_path / "b")
    for path in (root / "training").iterdir():
        path.unlink()
    with pytest.raises(InputError, match="no images"):
        load_benchmark(root)


def test_image_dataset_items_and_parallel_loader(tmp_path):
    bench = load_benchmark(make_benchmark(tmp_path / "b"))
    dataset = ImageDataset(bench.references, eval_transform(16))
    tensor, index, image_id = dataset[3]
    assert tensor.shape == (3, 16, 16) and index == 3 and image_id == "R000003"
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    seen_ids, seen_index = [], []
    for images, indices, ids in loader:
        assert images.shape[1:] == (3, 16, 16)
        seen_ids += list(ids)
        seen_index += indices.tolist()
    assert seen_ids == bench.references.ids and seen_index == list(range(6))
    # Pixels survive the trip: item 0 equals a direct decode of its file.
    direct = eval_transform(16)(Image.open(bench.references.paths[0]).convert("RGB"))
    assert torch.allclose(dataset[0][0], direct)


def test_training_dataset_collates(tmp_path):
    bench = load_benchmark(make_benchmark(tmp_path / "b"))
    dataset = TrainingDataset(
        bench.training, build_preset("simclr", 16).transform, eval_transform(16), n_views=3
    )
    batch = next(iter(DataLoader(dataset, batch_size=5)))
    assert len(batch["views"]) == 3 and batch["views"][0].shape == (5, 3, 16, 16)
    assert batch["clean"].shape == (5, 3, 16, 16)
    assert batch["index"].tolist() == list(range(5))
    assert list(batch["id"]) == bench.training.ids
    assert not torch.equal(batch["views"][0], batch["views"][1])


def test_dataset_reports_undecodable_file_met_late(tmp_path):
    root = make_benchmark(tmp_path / "b")
    bench = load_benchmark(root, check_images=False)
    bench.training.paths[1].write_bytes(b"corrupted later")
    dataset = ImageDataset(bench.training, eval_transform(8))
    with pytest.raises(InputError, match="T000001.jpg"):
        dataset[1]


def test_metadata_must_agree_with_ground_truth(tmp_path):
    root = make_benchmark(tmp_path / "b")
    rows = "query_id,reference_id,source_id,edits\nQ00000,R000003,R000003,crop\n"
    (root / "metadata.csv").write_text(rows + "Q00001,R000000,R000000,blur\nQ00002,,D000002,jpeg\n")
    assert len(load_benchmark(root).metadata) == 3
    (root / "metadata.csv").write_text(rows + "Q00001,R000005,R000005,blur\n")
    with pytest.raises(InputError, match="metadata.csv disagrees.*Q00001,R00000"):
        load_benchmark(root)
    (root / "metadata.csv").write_text("query_id,edits\nQ00000,crop\n")
    with pytest.raises(InputError, match="missing column"):
        load_benchmark(root)


def test_queries_outside_the_ground_truth_are_left_out(tmp_path):
    # As with DISC21's phase-1 truth, which lists only the first half of the dev queries.
    root = make_benchmark(tmp_path / "b", n_queries=7)
    lines = (root / "ground_truth.csv").read_text().splitlines()
    (root / "ground_truth.csv").write_text("\n".join(lines[:-3]) + "\n")  # drop Q00004-Q00006
    bench = load_benchmark(root)
    assert bench.queries.ids == ["Q00000", "Q00001", "Q00002", "Q00003"]
    assert bench.unlisted_queries == 3 and bench.summary()["unlisted_queries"] == 3
