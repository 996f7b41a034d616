"""Benchmark directory layout: find the splits, list the images by id, check them, read the truth.

Two layouts are accepted (the first match wins for each part, in the order listed):

    references:    references/  reference_images/  images/references/
    queries:       queries/  dev_queries/  query_images/  images/queries/  images/dev_queries/
    training:      training/  train/  training_images/  images/train/  images/training/
    ground truth:  ground_truth.csv  dev_ground_truth.csv  public_ground_truth.csv
                   list_files/dev_ground_truth.csv  list_files/public_ground_truth.csv
    metadata:      metadata.csv (optional)

The first name of each list is the layout `data synth` writes; the others are the names DISC21 uses
as downloaded (folders per split, `dev_ground_truth.csv`) and as the isc2021 scripts expect them
(`images/{queries,references,train}`). Listing uses `os.scandir` only, so a million files cost one
directory read and no decoding. `data check` then opens every image's header (`check_image`); a run
does not (`check_images=False`): its datasets check each image when they decode it.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from harness.isc.types import GroundTruth

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

SPLIT_DIRS: dict[str, tuple[str, ...]] = {
    "references": ("references", "reference_images", "images/references"),
    "queries": ("queries", "dev_queries", "query_images", "images/queries", "images/dev_queries"),
    "training": ("training", "train", "training_images", "images/train", "images/training"),
}
GROUND_TRUTH_FILES = (
    "ground_truth.csv",
    "dev_ground_truth.csv",
    "public_ground_truth.csv",
    "list_files/dev_ground_truth.csv",
    "list_files/public_ground_truth.csv",
)
METADATA_FILE = "metadata.csv"
# Each command that reads a benchmark has its own spelling of the same switch.
SKIP_HINT = (
    "to skip bad files, pass --skip-bad-images (data check) or --set data.skip_bad_images=true "
    "(run, sweep)"
)
METADATA_COLUMNS = ("query_id", "reference_id", "source_id", "edits")
# The error of a bad image met while decoding (harness/data/datasets.py), skip off.
BAD_IMAGE_MESSAGE = "{path}: {reason}; remove it, or " + SKIP_HINT
# Training images go through the copy-edit augmentation, whose text overlays draw with a font
# sized from the image: below 12 px a side it reaches 0 and AugLy fails. Queries and references
# are only resized, so any size does for them.
MIN_TRAINING_SIDE = 16


@dataclass
class ImageSet:
    """The images of one split, sorted by id; `paths[i]` holds the image `ids[i]`."""

    ids: list[str]
    paths: list[Path]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.paths):
            raise ValueError(f"{len(self.ids)} ids but {len(self.paths)} paths")

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Benchmark:
    root: Path
    references: ImageSet
    queries: ImageSet
    training: ImageSet
    ground_truth: GroundTruth
    metadata: pd.DataFrame | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    # Query images the ground truth does not list (DISC21's phase-1 public truth covers only
    # Q00000-Q24999 of the 50k dev queries): left out of `queries`, since every prediction for
    # them would count as a false positive.
    unlisted_queries: int = 0

    def summary(self) -> dict:
        """The `benchmark` block of a result record."""
        return {
            "path": str(self.root),
            "n_queries": len(self.queries),
            "n_references": len(self.references),
            "n_training": len(self.training),
            "n_gt": len(self.ground_truth.query),
            "skipped_images": len(self.skipped),
            "unlisted_queries": self.unlisted_queries,
        }


def find_split_dir(root: Path, split: str) -> Path:
    for name in SPLIT_DIRS[split]:
        candidate = root / name
        if candidate.is_dir():
            return candidate
    tried = ", ".join(f"{name}/" for name in SPLIT_DIRS[split])
    raise InputError(f"{root}: no {split} folder (looked for {tried})")


def find_ground_truth(root: Path) -> Path:
    for name in GROUND_TRUTH_FILES:
        candidate = root / name
        if candidate.is_file():
            return candidate
    raise InputError(f"{root}: no ground truth file (looked for {', '.join(GROUND_TRUTH_FILES)})")


def list_images(directory: Path) -> tuple[list[str], list[Path], list[tuple[Path, str]]]:
    """Image files of `directory` by id (file name without suffix), sorted by id.

    Returns ids, paths and the zero-byte files (they are never usable). Two files with the same id
    (`R1.jpg` and `R1.png`) are an error: which one is meant cannot be guessed.
    """
    by_id: dict[str, Path] = {}
    empty: list[tuple[Path, str]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() not in IMAGE_SUFFIXES or not entry.is_file():
                continue
            path = Path(entry.path)
            if stem in by_id:
                first, second = sorted([by_id[stem].name, entry.name])
                raise InputError(f"{directory}: duplicate id {stem!r} ({first} and {second})")
            if entry.stat().st_size == 0:
                empty.append((path, "zero-byte file"))
                continue
            by_id[stem] = path
    ids = sorted(by_id)
    # A zero-byte file still claims its id: a later duplicate check must see it.
    for path, _ in empty:
        stem = path.stem
        if stem in by_id:
            raise InputError(
                f"{directory}: duplicate id {stem!r} ({by_id[stem].name} and {path.name})"
            )
    return ids, [by_id[i] for i in ids], empty


def append_skipped(log: Path, path: Path, reason: str) -> None:
    """Add `path<TAB>reason` to a run's skipped-images file (harness/run_dir.py).

    DataLoader workers are processes of their own, so a count kept in a dataset never reaches the
    main process: each skip is one line appended instead. One `write` on a file opened with
    O_APPEND lands whole, whichever process writes it (on a local file system; NFS may interleave
    writers, and `read_skipped` then ignores a torn line). A path may appear more than once (every
    worker, every rank, a resumed run): `read_skipped` counts unique paths."""
    clean = [str(text).translate({9: " ", 10: " ", 13: " "}) for text in (path, reason)]
    line = ("\t".join(clean) + "\n").encode("utf-8", "backslashreplace")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_skipped(log: Path) -> dict[str, str]:
    """The unique paths of a skipped-images file, each with the first reason given; {} if none."""
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    skipped: dict[str, str] = {}
    for line in text.splitlines():
        path, tab, reason = line.partition("\t")
        if tab and path:
            skipped.setdefault(path, reason)
    return skipped


def _ends_with_jpeg_eoi(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - 64))
        return handle.read().rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")


def too_small_reason(size: tuple[int, int], min_side: int) -> str | None:
    """Why an image of `size` (width, height) cannot be trained on, or None."""
    if min(size) >= min_side:
        return None
    width, height = size
    return f"too small to train on ({width}x{height} px; at least {min_side} a side)"


def decode_errors() -> tuple[type[Exception], ...]:
    """What PIL raises for a file that is not a usable image (DecompressionBombError included)."""
    from PIL import Image, UnidentifiedImageError

    return (
        Image.DecompressionBombError,
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
    )


def decode_error_reason(err: Exception) -> str:
    """Why an image that raised `err` while opening or decoding cannot be used (the eager check's
    and the datasets' words alike)."""
    from PIL import Image

    if isinstance(err, Image.DecompressionBombError):
        return f"too large to decode safely ({err})"
    return f"does not decode ({type(err).__name__}: {err})"


def check_image(path: Path, min_side: int = 1) -> str | None:
    """The reason `path` cannot be used as an image (at least `min_side` pixels a side), or None.

    PNG: `verify` reads every chunk and its CRC. JPEG: `verify` reads the header only, so a file
    cut short (an interrupted copy) would pass and fail hours into a run. A JPEG that does not end
    with the end-of-image marker is therefore decoded (at 1/8 scale, which still reads the whole
    stream); one that does costs a 64-byte read more than `verify`.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            small = too_small_reason(image.size, min_side)
            if small is not None:
                return small
            if image.format == "JPEG" and not _ends_with_jpeg_eoi(path):
                image.draft(image.mode, (1, 1))
                image.load()
            else:
                image.verify()
    except decode_errors() as err:
        return decode_error_reason(err)
    return None


def _check_images(
    paths: list[Path], progress: bool, desc: str, min_side: int = 1
) -> list[str | None]:
    from tqdm.auto import tqdm

    reasons: list[str | None] = []
    batch = 4096  # bounded number of pending futures, however many files there are
    # PIL releases the GIL while reading files, so threads overlap the I/O.
    with (
        ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool,
        tqdm(total=len(paths), desc=desc, disable=not progress, leave=False, unit="img") as bar,
    ):
        for start in range(0, len(paths), batch):
            reasons += pool.map(
                functools.partial(check_image, min_side=min_side), paths[start : start + batch]
            )
            bar.update(min(batch, len(paths) - start))
    return reasons


def _load_split(
    root: Path, split: str, *, skip_bad_images: bool, check_images: bool, progress: bool
) -> tuple[ImageSet, list[tuple[Path, str]]]:
    directory = find_split_dir(root, split)
    ids, paths, bad = list_images(directory)
    if check_images and paths:
        min_side = MIN_TRAINING_SIDE if split == "training" else 1
        reasons = _check_images(paths, progress, f"checking {split}", min_side)
        keep = [i for i, reason in enumerate(reasons) if reason is None]
        bad += [(paths[i], reason) for i, reason in enumerate(reasons) if reason is not None]
        ids, paths = [ids[i] for i in keep], [paths[i] for i in keep]
    if bad and not skip_bad_images:
        path, reason = bad[0]
        more = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        raise InputError(f"{path}: {reason}{more}; {SKIP_HINT}")
    if not ids:
        raise InputError(f"{directory}: no images (.jpg/.jpeg/.png) in the {split} folder")
    return ImageSet(ids=ids, paths=paths), bad


def read_metadata(path: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{path}: not a readable CSV ({err})") from err
    missing = [c for c in METADATA_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(METADATA_COLUMNS)})"
        )
    duplicated = frame["query_id"].duplicated()
    if duplicated.any():
        line = int(duplicated.to_numpy().argmax()) + 2  # +1 for the header, +1 for 1-based lines
        raise InputError(f"{path}, line {line}: duplicate query_id {frame['query_id'][line - 2]!r}")
    return frame


def load_benchmark(
    path: str | os.PathLike,
    *,
    skip_bad_images: bool = False,
    check_images: bool = True,
    progress: bool = False,
) -> Benchmark:
    """Read a benchmark directory (either layout above) and check it.

    Checks: every split present and non-empty, no duplicate ids, no zero-byte file, no
    undecodable file (the header check, and training images at least MIN_TRAINING_SIDE a side),
    every id of the ground truth has an image, and the metadata (if any) agrees with the ground
    truth. Query images the ground truth does not list are left out (counted in
    `unlisted_queries`). With `skip_bad_images`, bad files are left out and listed in `skipped`;
    ground-truth rows whose image was skipped are dropped with them.

    `check_images=False` lists the splits with one directory scan each and opens no image (the
    zero-byte check needs only the scan's stat): what a run does, since `data check` has the full
    check and an open per file on every job start costs minutes on DISC21. The datasets then check
    each image as they decode it (harness/data/datasets.py), and a run skips or fails there.
    """
    from harness.isc.io import read_ground_truth

    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: benchmark directory does not exist")
    gt_path = find_ground_truth(root)
    sets: dict[str, ImageSet] = {}
    skipped: list[tuple[Path, str]] = []
    for split in SPLIT_DIRS:
        sets[split], bad = _load_split(
            root,
            split,
            skip_bad_images=skip_bad_images,
            check_images=check_images,
            progress=progress,
        )
        skipped += bad
    as_written = read_ground_truth(gt_path)
    gt = _check_ground_truth(as_written, gt_path, sets, skipped)
    metadata = None
    if (root / METADATA_FILE).is_file():
        metadata = read_metadata(root / METADATA_FILE)
        # Against the file's pairs: a pair dropped with a skipped image is still the metadata's.
        _check_metadata(metadata, root / METADATA_FILE, as_written, gt_path)
    queries = sets["queries"]
    listed = set(gt.queries.tolist())
    keep = [i for i, query in enumerate(queries.ids) if query in listed]
    unlisted = len(queries) - len(keep)
    if unlisted:
        queries = ImageSet([queries.ids[i] for i in keep], [queries.paths[i] for i in keep])
    return Benchmark(
        root=root,
        references=sets["references"],
        queries=queries,
        training=sets["training"],
        ground_truth=gt,
        metadata=metadata,
        skipped=skipped,
        unlisted_queries=unlisted,
    )


def _check_ground_truth(gt, gt_path: Path, sets: dict[str, ImageSet], skipped):
    import numpy as np

    skipped_ids = {p.stem for p, _ in skipped}
    query_ids = np.asarray(sets["queries"].ids, dtype=str)
    reference_ids = np.asarray(sets["references"].ids, dtype=str)
    listed = np.asarray(gt.queries, dtype=str)
    pair_reference = np.asarray(gt.reference, dtype=str)

    missing_query = ~np.isin(listed, query_ids)
    missing_reference = ~np.isin(pair_reference, reference_ids)
    usable_query = (
        ~np.isin(listed, list(skipped_ids)) if skipped_ids else np.ones(len(listed), bool)
    )
    usable_reference = (
        ~np.isin(pair_reference, list(skipped_ids))
        if skipped_ids
        else np.ones(len(pair_reference), bool)
    )
    # An id whose file was skipped as bad is not "missing"; any other absent id is an error.
    really_missing_query = missing_query & usable_query
    really_missing_reference = missing_reference & usable_reference
    if really_missing_query.any():
        first = listed[really_missing_query][0]
        raise InputError(
            f"{gt_path}: query {first} has no image in the queries folder "
            f"({int(really_missing_query.sum())} ground-truth queries missing)"
        )
    if really_missing_reference.any():
        first = pair_reference[really_missing_reference][0]
        raise InputError(
            f"{gt_path}: reference {first} has no image in the references folder "
            f"({int(really_missing_reference.sum())} ground-truth references missing)"
        )
    return without_skipped(gt, skipped_ids, skipped_ids)


def without_skipped(gt: GroundTruth, queries, references) -> GroundTruth:
    """`gt` without the queries whose image was skipped as bad (ids in `queries`) and without the
    pairs of those queries or of skipped references (ids in `references`); a query whose every
    reference was skipped stays, as a distractor. The eager check (skipped at listing) and a run
    (skipped while decoding, harness/pipeline.py) drop the same rows."""
    import numpy as np

    from harness.isc.types import GroundTruth

    listed = np.asarray(gt.queries, dtype=str)
    pair_query = np.asarray(gt.query, dtype=str)
    pair_reference = np.asarray(gt.reference, dtype=str)
    usable_query = ~np.isin(listed, list(queries)) if len(queries) else np.ones(len(listed), bool)
    usable_reference = (
        ~np.isin(pair_reference, list(references))
        if len(references)
        else np.ones(len(pair_reference), bool)
    )
    if usable_query.all() and usable_reference.all():
        return gt
    keep_pair = np.isin(pair_query, listed[usable_query]) & usable_reference
    return GroundTruth(
        queries=listed[usable_query],
        query=pair_query[keep_pair],
        reference=pair_reference[keep_pair],
    )


def _check_metadata(metadata, path: Path, gt, gt_path: Path) -> None:
    """The metadata's copies must be exactly the ground truth's pairs (for the queries both list)."""
    listed = set(gt.queries.tolist())
    rows = metadata[metadata["query_id"].isin(listed)]
    from_metadata = set(zip(rows["query_id"], rows["reference_id"], strict=True)) - {
        (q, "") for q in rows["query_id"]
    }
    from_truth = set(zip(gt.query.tolist(), gt.reference.tolist(), strict=True))
    differ = sorted(from_metadata ^ from_truth)
    if differ:
        query, reference = differ[0]
        where = "metadata only" if (query, reference) in from_metadata else "ground truth only"
        raise InputError(
            f"{path} disagrees with {gt_path}: pair {query},{reference} is in the {where} "
            f"({len(differ)} differing pairs)"
        )
