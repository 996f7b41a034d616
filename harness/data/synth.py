"""The generated mini-DISC: a small benchmark in the DISC21 layout, made from procedural scenes.

    references/R000000.jpg ...   procedural scenes (harness.data.scenes), one seed each
    training/T000000.jpg ...     more scenes from a disjoint seed stream (as in DISC21, no image is
                                 both a reference and a training image)
    queries/Q00000.jpg ...       copies: a reference edited with 1-3 AugLy copy-edit families;
                                 distractors: an image from outside both sets, edited the same way
    ground_truth.csv             query_id,reference_id (empty for distractors), ISC format
    metadata.csv                 query_id,reference_id,source_id,edits
    synth.json                   the parameters and the generator version

Every image is a function of (seed, split, index) only, so the output is byte-identical whatever
the number of worker processes, and generating N images costs O(N) time and O(chunk) memory.
The folder is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from harness.atomic import exclusive_lock
from harness.data.edits import EDIT_FAMILIES, EditSettings, random_edits
from harness.data.scenes import render_scene
from harness.errors import ConfigError, InputError

# Bump whenever a change to scenes, edits or the plan changes the generated files: the cache key
# includes it, so stale cached benchmarks are not reused.
GENERATOR_VERSION = 1

# Seed streams: a stream per split keeps the splits disjoint and each image independent.
_PLAN, _REFERENCE, _TRAINING, _DISTRACTOR_SOURCE, _QUERY_EDIT = range(5)
_CHUNK = 64


@dataclass(frozen=True)
class SynthParams:
    """Everything that determines a generated benchmark (all of it goes into the cache key)."""

    references: int = 2000
    training: int = 5000
    queries: int = 1000
    # Ours: DISC21's dev set has 80% distractors; half keeps more true pairs at this small size.
    distractor_fraction: float = 0.5
    size: int = 96
    seed: int = 0
    edit_strength: float = 1.0
    min_edits: int = 1
    max_edits: int = 3
    edit_families: tuple[str, ...] = field(default_factory=lambda: tuple(EDIT_FAMILIES))
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        object.__setattr__(self, "edit_families", tuple(self.edit_families))
        for name in ("references", "training", "queries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"synth: --{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.distractor_fraction <= 1.0:
            raise ConfigError(
                f"synth: --distractor-fraction must be in [0, 1], got {self.distractor_fraction}"
            )
        if self.n_copies > self.references:
            raise ConfigError(
                f"synth: {self.n_copies} copy queries need at least as many references "
                f"(got --references {self.references}); each reference is copied at most once"
            )
        if not 16 <= self.size <= 1024:
            raise ConfigError(f"synth: --size must be in [16, 1024] pixels, got {self.size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"synth: jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        self.edit_settings()  # validates families, counts and strength

    @property
    def n_copies(self) -> int:
        return int(round(self.queries * (1.0 - self.distractor_fraction)))

    def edit_settings(self) -> EditSettings:
        return EditSettings(
            strength=self.edit_strength,
            min_edits=self.min_edits,
            max_edits=self.max_edits,
            families=self.edit_families,
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["edit_families"] = list(self.edit_families)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> SynthParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"synth: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def cache_key(self) -> str:
        payload = json.dumps(
            {"generator_version": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def reference_id(index: int) -> str:
    return f"R{index:06d}"


def training_id(index: int) -> str:
    return f"T{index:06d}"


def query_id(index: int, n_queries: int) -> str:
    return f"Q{index:0{max(5, len(str(n_queries - 1)))}d}"


def distractor_source_id(index: int) -> str:
    # Never written to disk: the picture a distractor query was edited from.
    return f"D{index:06d}"


def render_reference(params: SynthParams, index: int):
    return render_scene(_rng(params.seed, _REFERENCE, index), params.size)


def render_training(params: SynthParams, index: int):
    return render_scene(_rng(params.seed, _TRAINING, index), params.size)


def render_distractor_source(params: SynthParams, index: int):
    return render_scene(_rng(params.seed, _DISTRACTOR_SOURCE, index), params.size)


@dataclass(frozen=True)
class QueryPlan:
    """Which queries are copies and of which reference; fixed by the seed, O(queries) to draw."""

    source_reference: np.ndarray  # (queries,) int64, -1 for a distractor


def plan_queries(params: SynthParams) -> QueryPlan:
    rng = _rng(params.seed, _PLAN, 0)
    is_copy = np.zeros(params.queries, dtype=bool)
    is_copy[rng.choice(params.queries, size=params.n_copies, replace=False)] = True
    source = np.full(params.queries, -1, dtype=np.int64)
    # Each copied reference is used once, as in DISC21 (almost every reference has at most one copy).
    source[is_copy] = rng.choice(params.references, size=params.n_copies, replace=False)
    return QueryPlan(source_reference=source)


def make_query(params: SynthParams, index: int, source_reference: int):
    """The edited query image and its metadata row."""
    if source_reference >= 0:
        source = render_reference(params, source_reference)
        ref_id = source_id = reference_id(source_reference)
    else:
        source = render_distractor_source(params, index)
        ref_id, source_id = "", distractor_source_id(index)
    image, edits = random_edits(
        source, _rng(params.seed, _QUERY_EDIT, index), params.edit_settings()
    )
    # Queries keep their aspect ratio but are brought back to the benchmark's size (longest side).
    scale = params.size / max(image.size)
    if scale != 1.0:
        new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(new_size, resample=3)  # bicubic
    row = {
        "query_id": query_id(index, params.queries),
        "reference_id": ref_id,
        "source_id": source_id,
        "edits": "|".join(edits),
    }
    return image, row


def _save(image, path: Path, quality: int) -> None:
    image.save(path, format="JPEG", quality=quality)


def _run_chunk(task: tuple) -> tuple[int, list[dict]]:
    """Worker: render and write one chunk of one split; returns (count, metadata rows)."""
    kind, start, stop, params, out_dir, sources = task
    out_dir = Path(out_dir)
    rows = []
    for offset, index in enumerate(range(start, stop)):
        if kind == "references":
            _save(
                render_reference(params, index),
                out_dir / "references" / f"{reference_id(index)}.jpg",
                params.jpeg_quality,
            )
        elif kind == "training":
            _save(
                render_training(params, index),
                out_dir / "training" / f"{training_id(index)}.jpg",
                params.jpeg_quality,
            )
        else:
            image, row = make_query(params, index, int(sources[offset]))
            _save(image, out_dir / "queries" / f"{row['query_id']}.jpg", params.jpeg_quality)
            rows.append(row)
    return stop - start, rows


def _tasks(params: SynthParams, plan: QueryPlan, out_dir: Path):
    for kind, count in (
        ("queries", params.queries),
        ("references", params.references),
        ("training", params.training),
    ):
        for start in range(0, count, _CHUNK):
            stop = min(start + _CHUNK, count)
            sources = plan.source_reference[start:stop] if kind == "queries" else None
            yield (kind, start, stop, params, str(out_dir), sources)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def synthesize(
    out_dir: str | os.PathLike,
    params: SynthParams | None = None,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate the benchmark into `out_dir` (built aside, renamed into place when complete)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from harness.atomic import atomic_directory, atomic_write_json, atomic_write_text
    from harness.isc import GroundTruth, write_ground_truth

    params = params or SynthParams()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise InputError(f"{out_dir} already exists; pass --overwrite to replace it")
    if out_dir.exists() and not (out_dir / "synth.json").is_file():
        # --overwrite replaces a generated benchmark, never a folder of someone's files.
        raise InputError(
            f"{out_dir} is not a benchmark made by data synth (no synth.json); --overwrite "
            "replaces only those: choose another --out, or remove the folder yourself"
        )
    workers = default_workers() if workers is None else max(1, int(workers))
    plan = plan_queries(params)
    total = params.references + params.training + params.queries
    started = time.perf_counter()
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for split in ("references", "queries", "training"):
            (tmp / split).mkdir()
        rows: list[dict] = []
        tasks = _tasks(params, plan, tmp)
        with tqdm(
            total=total, desc=f"synth {out_dir.name}", unit="img", disable=not progress
        ) as bar:
            if workers == 1:
                results = map(_run_chunk, tasks)
                for count, chunk_rows in results:
                    rows += chunk_rows
                    bar.update(count)
            else:
                with multiprocessing.get_context().Pool(workers) as pool:
                    for count, chunk_rows in pool.imap_unordered(_run_chunk, tasks):
                        rows += chunk_rows
                        bar.update(count)
        metadata = pd.DataFrame(rows, columns=["query_id", "reference_id", "source_id", "edits"])
        metadata = metadata.sort_values("query_id", kind="stable").reset_index(drop=True)
        copies = metadata[metadata["reference_id"] != ""]
        gt = GroundTruth(
            queries=metadata["query_id"].to_numpy(str),
            query=copies["query_id"].to_numpy(str),
            reference=copies["reference_id"].to_numpy(str),
        )
        write_ground_truth(tmp / "ground_truth.csv", gt)
        atomic_write_text(tmp / "metadata.csv", metadata.to_csv(index=False, lineterminator="\n"))
        atomic_write_json(
            tmp / "synth.json",
            {"generator_version": GENERATOR_VERSION, "params": params.to_dict()},
        )
    if progress:
        elapsed = time.perf_counter() - started
        print(f"wrote {total} images to {out_dir} in {elapsed:.1f} s", flush=True)
    return out_dir


def default_cache_dir() -> Path:
    return Path(os.environ.get("ISC_BENCH_CACHE") or Path.home() / ".cache" / "isc-bench")


def synthetic_path(params: SynthParams, cache_dir: str | os.PathLike | None = None) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / "synthetic" / f"mini-disc-{params.cache_key()}"


def ensure_synthetic(
    params: SynthParams | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """The cached benchmark for `params`, generated first if it is not there yet.

    The folder name is a hash of the parameters and GENERATOR_VERSION. A folder that exists is
    complete (generation renames it into place as its last act), so it is reused as is.
    """
    params = params or SynthParams()
    path = synthetic_path(params, cache_dir)
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Runs started together (a sweep) would all generate the same benchmark: the first takes the
    # lock and generates, the others wait for it and then find the folder complete.
    with exclusive_lock(path.with_name(f".{path.name}.lock")):
        if not path.is_dir():
            synthesize(path, params, progress=progress, workers=workers)
    return path


def resolve_data(
    spec: str, *, synth_params: SynthParams | None = None, progress: bool = True
) -> Path:
    """`--data synthetic` (the generated mini-DISC, cached) or `--data PATH` (a benchmark folder)."""
    if spec == "synthetic":
        return ensure_synthetic(synth_params, progress=progress)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise InputError(
            f"--data {spec}: no such directory (give 'synthetic' or a benchmark folder, "
            "see `python -m harness data --help`)"
        )
    return path
