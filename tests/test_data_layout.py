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


# --- Lazy checking: a run lists without opening images; the datasets check while decoding ------


def _break(path: Path, kind: str) -> None:
    if kind == "garbage":
        path.write_bytes(b"this is not an image")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:300])  # the header intact, the scan cut short
    elif kind == "tiny":
        Image.new("RGB", (12, 40), (90, 20, 200)).save(path, format="JPEG")
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "tiny"])
def test_lazy_listing_lists_a_bad_image_and_the_dataset_names_it_when_decoding(tmp_path, kind):
    root = make_benchmark(tmp_path / "b")
    bad = root / "training" / "T000002.jpg"
    _break(bad, kind)
    with pytest.raises(InputError, match="T000002.jpg"):
        load_benchmark(root)  # the full check (data check) finds it before anything runs
    bench = load_benchmark(root, check_images=False)
    assert bench.training.ids[2] == "T000002" and bench.skipped == []
    dataset = TrainingDataset(
        bench.training, eval_transform(16), eval_transform(16), min_side=16, bad_images="fail"
    )
    dataset[1]  # the others decode
    with pytest.raises(InputError) as err:
        dataset[2]
    reason = "too small to train on (12x40 px" if kind == "tiny" else "does not decode ("
    assert str(err.value).startswith(f"{bad}: {reason}")
    assert str(err.value).endswith(
        "; remove it, or to skip bad files, pass --skip-bad-images (data check) or "
        "--set data.skip_bad_images=true (run, sweep)"
    )
    # The size rule is the training images' own: described as a query or reference, it is fine.
    if kind == "tiny":
        assert ImageDataset(bench.training, eval_transform(16))[2][2] == "T000002"


def test_decompression_bomb_is_caught_while_decoding(tmp_path):
    root = make_benchmark(tmp_path / "b")
    (root / "references" / "R000001.png").unlink()
    bomb = root / "references" / "R000001.png"
    Image.new("1", (14_000, 14_000)).save(bomb, format="PNG")
    bench = load_benchmark(root, check_images=False)
    with pytest.raises(InputError, match=r"R000001.png: too large to decode safely \(Image size"):
        ImageDataset(bench.references, eval_transform(16))[1]


def test_a_bad_image_met_in_a_loader_worker_is_one_line_naming_it(tmp_path):
    """torch re-raises a worker's exception with the worker's whole traceback as its message;
    the user must still read the one line a main-process decode gives."""
    root = make_benchmark(tmp_path / "b")
    bench = load_benchmark(root, check_images=False)
    bad = bench.references.paths[4]
    bad.write_bytes(b"corrupted later")
    dataset = ImageDataset(bench.references, eval_transform(16))
    with pytest.raises(InputError) as direct:
        dataset[4]
    with pytest.raises(InputError) as from_worker:
        for _ in DataLoader(dataset, batch_size=2, num_workers=1):
            pass
    assert str(from_worker.value) == str(direct.value)
    assert "\n" not in str(from_worker.value) and "Traceback" not in str(from_worker.value)
    assert str(direct.value).startswith(f"{bad}: does not decode (UnidentifiedImageError")


def test_drop_leaves_bad_images_out_of_their_batch_and_logs_each_path(tmp_path):
    from harness.data.datasets import collate_kept
    from harness.data.layout import read_skipped

    root = make_benchmark(tmp_path / "b")
    bench = load_benchmark(root, check_images=False)
    for i in (1, 2, 3):  # batch [0, 1] loses one item, batch [2, 3] all of them
        bench.references.paths[i].write_bytes(b"garbage")
    log = tmp_path / "run" / "skipped_images.tsv"
    log.parent.mkdir()
    options = {"bad_images": "drop", "skip_log": log}
    assert ImageDataset(bench.references, eval_transform(16), **options)[1] is None
    dataset = ImageDataset(bench.references, eval_transform(16), **options)
    batches = list(DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_kept))
    assert batches[1] is None
    assert [b[1].tolist() for b in (batches[0], batches[2])] == [[0], [4, 5]]
    # R000001 was met by the main process and by a worker: two lines, one path counted once.
    skipped = read_skipped(log)
    assert sorted(skipped) == [str(bench.references.paths[i]) for i in (1, 2, 3)]
    assert all(reason.startswith("does not decode (") for reason in skipped.values())
    assert len(log.read_text().splitlines()) == 4


def test_substitute_puts_the_next_good_training_image_in_a_bad_ones_place(tmp_path):
    root = make_benchmark(tmp_path / "b", n_train=6)
    bench = load_benchmark(root, check_images=False)
    paths = bench.training.paths
    for i in (2, 3, 5):
        _break(paths[i], "tiny" if i == 3 else "garbage")
    clean = ImageDataset(bench.training, eval_transform(16))  # over the good images only
    options = {"min_side": 16, "bad_images": "substitute", "skip_log": tmp_path / "skipped.tsv"}
    stream = TrainingDataset(bench.training, eval_transform(16), eval_transform(16), **options)
    cache = ImageDataset(bench.training, eval_transform(16), **options)
    # 2 and 3 (in a row) take 4; the last one, 5, wraps around to 0. The slot keeps its index.
    for index, substitute in ((2, 4), (3, 4), (5, 0), (1, 1)):
        item = stream[index]
        assert item["index"] == index and item["id"] == bench.training.ids[index]
        assert torch.equal(item["clean"], clean[substitute][0])
        image, cache_index, _ = cache[index]
        assert cache_index == index and torch.equal(image, clean[substitute][0])
    # A fresh dataset (another worker, a resumed run) picks the same substitutes.
    again = TrainingDataset(bench.training, eval_transform(16), eval_transform(16), **options)
    assert torch.equal(again[3]["clean"], stream[3]["clean"])
    from harness.data.layout import read_skipped

    assert sorted(read_skipped(tmp_path / "skipped.tsv")) == [str(paths[i]) for i in (2, 3, 5)]
    # Under a DataLoader the batch keeps its size.
    batch = next(iter(DataLoader(stream, batch_size=6, num_workers=1)))
    assert batch["index"].tolist() == list(range(6)) and batch["clean"].shape[0] == 6


def test_substitute_with_no_good_training_image_is_an_error(tmp_path):
    root = make_benchmark(tmp_path / "b", n_train=3)
    bench = load_benchmark(root, check_images=False)
    for path in bench.training.paths:
        path.write_bytes(b"garbage")
    dataset = ImageDataset(bench.training, eval_transform(16), bad_images="substitute")
    with pytest.raises(InputError, match="training: none of its 3 images can be used"):
        dataset[0]


def test_without_skipped_drops_the_pairs_of_skipped_queries_and_references(tmp_path):
    from harness.data.layout import without_skipped

    bench = load_benchmark(make_benchmark(tmp_path / "b"))
    gt = bench.ground_truth  # Q00000-R000003, Q00001-R000000; Q00002, Q00003 distractors
    assert without_skipped(gt, set(), set()) is gt
    fewer = without_skipped(gt, {"Q00001"}, {"R000003"})
    assert sorted(fewer.queries.tolist()) == ["Q00000", "Q00002", "Q00003"]
    assert fewer.query.tolist() == [] and fewer.reference.tolist() == []  # Q00000: a distractor


def test_a_skipped_image_leaves_the_metadata_in_agreement(tmp_path):
    """The metadata lists the file's pairs: one dropped with a skipped image is still among them
    (a run with data.skip_bad_images and a zero-byte reference used to stop here)."""
    root = make_benchmark(tmp_path / "b")
    rows = "query_id,reference_id,source_id,edits\nQ00000,R000003,R000003,crop\n"
    (root / "metadata.csv").write_text(rows + "Q00001,R000000,R000000,blur\nQ00002,,D000002,jpeg\n")
    (root / "references" / "R000003.png").write_bytes(b"")
    bench = load_benchmark(root, skip_bad_images=True, check_images=False)
    assert bench.ground_truth.query.tolist() == ["Q00001"]
    assert "Q00000" in bench.ground_truth.queries  # a distractor now
