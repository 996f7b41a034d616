"""How every stage of a run grows with its size: time and peak memory at three sizes, and the fitted
growth exponent next to the expected one.

Each stage runs the harness's own code path (nothing re-implemented) at three sizes, each
(stage, size) in a fresh process: a fork of a server that has only imported the libraries
(harness/benchmarks/_fork_server.py), so one stage's allocations, caches and thread pools never flatter or burden the next,
and no stage pays the imports. Stages and their sizes (full; `--quick` in brackets):

- `list` (2k/20k/200k files [50/100/200]): `load_benchmark(check_images=False)` over a DISC layout
  of n files (references 60%, queries 10%, training 30%; every query in the ground truth, a fifth
  with a copy): directory listing, sorting, the ground-truth checks. `per_100k_s`: seconds per
  100k files at the largest size.
- `list + check` (same sizes): the same with the image header check (`check_images=True`, what
  `data check` does and every run did before issue 15), i.e. `check_image` on every file in the loader's thread pool.
- `decode draft` (500/2k/8k images [16/32/64]) and `decode full` (250/1k/4k [16/32/64]):
  `ImageDataset` items (`open_rgb` + the evaluation transform to uint8 pixels, what extraction's
  workers make) over n large JPEGs, in one process without a DataLoader. `draft` decodes at the
  DCT scale that keeps 64 px (`data.decode: draft`, the default), `full` the whole 1024x768 image
  (`data.decode: full`, the old way).
- `extract` (250/1k/4k images [16/32/64]): `harness.describe.extract_descriptors` (DataLoader with
  `data.workers` workers, batch `eval.batch_size`) of n references, ResNet-18 at 64 px from a
  random init.
- `qk cache pass` (250/1k/4k images [16/32/64]): QK's phase start (`on_train_start` through the
  trainer's `encode_training_set`, over the datasets of the pipeline's `load_data`): the frozen
  backbone encodes n training images.
- `qk step` (5k/50k/500k negatives [128/256/512]): one QK training step (the trainer's
  `_forward_backward` and `_optimizer_step`: `training_step` against all N cached negatives with
  the frozen head applied to them, backward, optimizer) at the protocol's batch of 64. The N-row
  cache comes from QK's real phase start, random features standing in for the encoded images (the
  row above times that pass); it is an input, so the memory column is what the step adds to it.
- `search` (2k/20k/200k references [500/1k/2k]): `harness.isc.search` (ISC global cap, 10 x n_q
  pairs) with n_q = n_r / 10 queries; both grow with the size, so the expected exponent is 2.
- `score norm` (2k/20k/200k queries [50/100/200]): `normalization_terms`, what score normalization
  adds to a search (each query's nearest training descriptors; the normalized search itself costs
  one more `search` row), against a fixed 10k training descriptors [500]: linear in n_q (it is
  n_q x n_train when the training set grows as well).
- `metrics` (20k/200k/2M predictions [500/1k/2k]): `harness.isc.evaluate` on DISC-shaped
  predictions (10 per query, ties included), from the `metrics` benchmark's generator.
- `report` (30/300/3,000 run records [7/14/28]): `build_report` without figures and without the
  per-edit table (loading, grouping, md/csv/tex tables) over n run directories, each holding a
  `record.json` made by the pipeline's `build_record` from a method's resolved config and a
  `curve.jsonl` of six points; every method x 3 seeds per setting, settings differing in
  `train.lr`.

Descriptors are the protocol's `model.embedding_dim` (128), L2-normalized Gaussian. The images are
hard links to a pool of 64 generated 1024x768 JPEGs (quality 90, ~180 KB: a procedural scene of
harness/data/scenes.py with grain), made once under the cache directory (ISC_BENCH_CACHE or
~/.cache/isc-bench): a link decodes exactly as its file, but the 64 files stay in the OS page
cache, so reads are warm (a cold disk adds its own per-file cost on top).

Time: the best of up to 3 runs while they add up to under 2 s, else one run. Memory: the rise of
the stage process's peak RSS (VmHWM, reset through /proc/self/clear_refs) over its RSS once its
inputs are built and the heap's free pages handed back (model, descriptors, cache): numpy, torch
and faiss allocations included; DataLoader workers (a constant per batch) and GPU memory are not.
Exponent: least-squares slope of log(seconds) against log(size); `as_expected` is "NO" when it
exceeds the expected exponent by more than 0.2. Fixed costs (worker start-up, a batch's forward
and backward, faiss's thread pool) pull the fitted exponent below the expected one at small sizes.
`--quick` runs timm's `test_resnet` at 32 px with batches of 16 and 32, on one torch and one faiss
thread (CI machines are shared): it shows that every stage runs, its figures say little.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DESCRIPTION = (
    "every stage of a run (listing, decode, extraction, QK cache pass and step, search, score "
    "normalization, metrics, report) at 3 sizes: time, peak memory, growth exponent vs expected"
)
MODEL = ("model.backbone=resnet18",)  # at the protocol's 64 px, batch 64, eval batch 128
# --quick: timm's tiny test network at 32 px and small batches, so that CI takes seconds
QUICK_MODEL = (
    "model.backbone=test_resnet",
    "model.image_size=32",
    "train.batch_size=16",
    "eval.batch_size=32",
)
QUERY_FRACTION = 10  # search: n_queries = n_references / 10
NORM_TRAINING = {False: 10_000, True: 500}  # score norm: fixed training descriptors (full, quick)
TOLERANCE = 0.2  # exponent above expected + this: grows faster than expected
# Repeat a (stage, size) while its runs add up to less than this (full, quick).
MIN_TOTAL_SECONDS = {False: 2.0, True: 0.3}
MAX_RUNS = 3
POOL_SIZE = {False: 64, True: 8}
POOL_SHAPE = (1024, 768)
POOL_QUALITY = 90


@dataclass(frozen=True)
class Stage:
    name: str
    unit: str  # what the size counts
    full: tuple[int, int, int]
    quick: tuple[int, int, int]
    expected: float  # expected growth exponent of the time
    files: str | None  # what the parent prepares: "layout", "images", or a scratch folder (None)
    setup: str  # name of the function below: (size, path, quick) -> the callable to time

    def sizes(self, quick: bool) -> tuple[int, int, int]:
        return self.quick if quick else self.full


IMAGES = "images (1024x768 JPEG)"
STAGES = (
    Stage("list", "files", (2_000, 20_000, 200_000), (50, 100, 200), 1, "layout", "_list"),
    Stage("list + check", "files", (2_000, 20_000, 200_000), (50, 100, 200), 1, "layout", "_check"),
    # Decoding, extraction and the cache pass cost milliseconds per image: smaller sizes.
    Stage("decode draft", IMAGES, (500, 2_000, 8_000), (16, 32, 64), 1, "images", "_draft"),
    Stage("decode full", IMAGES, (250, 1_000, 4_000), (16, 32, 64), 1, "images", "_full"),
    Stage("extract", IMAGES, (250, 1_000, 4_000), (16, 32, 64), 1, "images", "_extract"),
    Stage("qk cache pass", IMAGES, (250, 1_000, 4_000), (16, 32, 64), 1, "images", "_cache"),
    Stage(
        "qk step",
        "negatives (cached rows)",
        (5_000, 50_000, 500_000),
        (128, 256, 512),
        1,
        None,
        "_qk_step",
    ),
    Stage(
        "search",
        f"references (queries = references / {QUERY_FRACTION})",
        (2_000, 20_000, 200_000),
        (500, 1_000, 2_000),
        2,
        None,
        "_search",
    ),
    Stage(
        "score norm",
        "queries (training descriptors fixed)",
        (2_000, 20_000, 200_000),
        (50, 100, 200),
        1,
        None,
        "_score_norm",
    ),
    Stage(
        "metrics",
        "predictions",
        (20_000, 200_000, 2_000_000),
        (500, 1_000, 2_000),
        1,
        None,
        "_metrics",
    ),
    Stage("report", "run records", (30, 300, 3_000), (7, 14, 28), 1, None, "_report"),
)


# --- helpers run in the stage process ------------------------------------------------------------


def _config(method: str, quick: bool, *overrides: str):
    from harness.benchmarks import Protocol

    return Protocol().resolve(method, [*(QUICK_MODEL if quick else MODEL), *overrides])


def _random_descriptors(n: int, dim: int, prefix: str, seed: int):
    import numpy as np

    from harness.isc import Descriptors, l2_normalize

    rng = np.random.default_rng(seed)
    features = l2_normalize(rng.standard_normal((n, dim), dtype=np.float32))
    return Descriptors(np.char.add(prefix, np.arange(n).astype(str)), features)


def _list(size: int, path: Path, quick: bool) -> Callable[[], object]:
    from harness.data import load_benchmark

    return lambda: load_benchmark(path, check_images=False)


def _check(size: int, path: Path, quick: bool) -> Callable[[], object]:
    from harness.data import load_benchmark

    return lambda: load_benchmark(path, check_images=True)


def _decode(path: Path, draft: bool, quick: bool) -> Callable[[], object]:
    from harness.augment import EvalTransform
    from harness.data import ImageDataset
    from harness.data.layout import ImageSet, list_images

    ids, paths, _ = list_images(path / "references")
    side = _config("simclr", quick).model.image_size
    dataset = ImageDataset(
        ImageSet(ids, paths), EvalTransform(side, normalize=False), side if draft else None
    )

    def work():
        for index in range(len(dataset)):
            dataset[index]

    return work


def _draft(size: int, path: Path, quick: bool) -> Callable[[], object]:
    return _decode(path, draft=True, quick=quick)


def _full(size: int, path: Path, quick: bool) -> Callable[[], object]:
    return _decode(path, draft=False, quick=quick)


def _extract(size: int, path: Path, quick: bool) -> Callable[[], object]:
    from harness.data import load_benchmark
    from harness.describe import extract_descriptors
    from harness.pipeline import build_method, pick_device

    cfg = _config("simclr", quick)
    device = pick_device("auto")  # a run's default: the GPU when there is one
    references = load_benchmark(path, check_images=False).references
    method = build_method(cfg, size, device).to(device).eval()
    return lambda: extract_descriptors(
        method, references, "reference", cfg, device, split="references", progress=False
    )


def _cache(size: int, path: Path, quick: bool) -> Callable[[], object]:
    import torch

    from harness.pipeline import build_method, load_data, pick_device
    from harness.train import Trainer

    cfg = _config("qk", quick, f"data.spec={path}")
    device = pick_device("auto")  # a run's default: the GPU when there is one
    data = load_data(cfg)
    method = build_method(cfg, len(data.benchmark.training), device)
    trainer = Trainer(  # its run directory is only written by fit and save_checkpoint
        method,
        data.train_data,
        cfg.train,
        seed=cfg.seed,
        run_dir=path / "unused-run-dir",
        device=device,
        progress=False,
    )
    method.to(device)

    def work():
        method.cache = torch.empty(0)  # the previous run's cache is not an input
        method.on_train_start(trainer.context, 0)

    return work


def _qk_step(size: int, path: Path, quick: bool) -> Callable[[], object]:
    import torch

    from harness.benchmarks.methods import PreloadedImages, PreloadedStream
    from harness.device import batch_to_device
    from harness.pipeline import build_method, pick_device
    from harness.train import TrainData, Trainer
    from methods.base import TrainContext

    cfg = _config("qk", quick)
    device = pick_device("auto")  # a run's default: the GPU when there is one
    side, batch_size = cfg.model.image_size, cfg.train.batch_size
    pool = torch.randn(8, 3, side, side, generator=torch.Generator().manual_seed(0))
    data = TrainData(
        stream=PreloadedStream(pool, size, 1),
        clean=PreloadedImages(pool, size),
        augmented=PreloadedImages(pool, size),
    )
    method = build_method(cfg, size, device)
    trainer = Trainer(
        method, data, cfg.train, seed=cfg.seed, run_dir=path, device=device, progress=False
    )
    trainer._place_method()
    trainer._build_optimization()

    def encoded(fn, view="clean", *, batch_size=None, seed_key=0, indices=None):
        """The phase start's cache pass with random rows standing in for N encoded images (the
        `qk cache pass` stage times that pass): the frozen side's output on one image gives the
        width and dtype."""
        like = fn(pool[:1].to(device))
        generator = torch.Generator().manual_seed(seed_key)
        n = size if indices is None else len(indices)
        rows = torch.randn(n, like.shape[1], generator=generator).abs()
        return rows.to(device=device, dtype=like.dtype)

    method.on_train_start(TrainContext(encoded, total_steps=1_000, progress=False), 0)
    method.train()
    items = [data.stream[i] for i in range(batch_size)]
    batch = batch_to_device(
        {
            "views": [torch.stack([item["views"][0] for item in items])],
            "index": torch.tensor([item["index"] for item in items]),
            "clean": torch.stack([item["clean"] for item in items]),
        },
        device,
        trainer.channels_last,
    )

    def step():
        loss, _ = trainer._forward_backward(batch, 0)
        float(loss.detach())
        trainer._optimizer_step(0)

    step()  # warm-up: the allocator, the optimizer's state
    return step


def _search(size: int, path: Path, quick: bool) -> Callable[[], object]:
    from harness.isc import search

    dim = _config("simclr", quick).model.embedding_dim
    query = _random_descriptors(max(1, size // QUERY_FRACTION), dim, "Q", 0)
    reference = _random_descriptors(size, dim, "R", 1)
    return lambda: search(query, reference)


def _score_norm(size: int, path: Path, quick: bool) -> Callable[[], object]:
    from harness.isc import ScoreNormalization
    from harness.isc.postprocess import normalization_terms

    cfg = _config("simclr", quick)
    dim = cfg.model.embedding_dim
    query = _random_descriptors(size, dim, "Q", 0)
    training = _random_descriptors(NORM_TRAINING[quick], dim, "T", 2)
    options = ScoreNormalization(
        beta=cfg.eval.score_norm_beta,
        n=cfg.eval.score_norm_n,
        reduction=cfg.eval.score_norm_reduction,
    )
    return lambda: normalization_terms(query, training, options)


def _metrics(size: int, path: Path, quick: bool) -> Callable[[], object]:
    from harness.benchmarks.metrics import synthetic_case
    from harness.isc import evaluate

    gt, predictions = synthetic_case(size)
    return lambda: evaluate(gt, predictions)


def write_records(root: Path, n: int, quick: bool = False) -> None:
    """`n` run directories as a sweep leaves them: `record.json` from the pipeline's
    `build_record` over each method's resolved config, and a `curve.jsonl` of six points. Seven
    methods x three seeds per setting; settings differ in `train.lr`."""
    import copy
    import json

    import numpy as np

    from harness.atomic import atomic_write_json
    from harness.benchmarks.metrics import synthetic_case
    from harness.config import config_to_dict
    from harness.isc import evaluate
    from harness.record import build_record, git_state, package_versions
    from harness.run_dir import CURVE_FILENAME, RECORD_FILENAME
    from methods import list_methods

    methods = list_methods()
    configs = {m: config_to_dict(_config(m, quick)) for m in methods}
    git, versions = git_state(), package_versions()
    metrics = evaluate(*synthetic_case(2_000)).to_dict()
    rng = np.random.default_rng(0)
    benchmark = {
        "path": "data/disc21",
        "resolved_path": "/data/disc21",
        "fingerprint": "0" * 16,
        "n_queries": 50_000,
        "n_references": 1_000_000,
        "n_training": 1_000_000,
        "n_gt": 10_000,
        "skipped_images": 0,
        "unlisted_queries": 0,
    }
    for i in range(n):
        method = methods[i % len(methods)]
        seed = (i // len(methods)) % 3
        setting = i // (3 * len(methods))
        config = copy.deepcopy(configs[method])
        config["train"]["lr"] = round(0.01 * (1 + setting), 4)
        config["seed"] = seed
        config["run_id"] = f"{method}-{setting:05d}-s{seed}"
        score = float(rng.uniform(0.2, 0.6))
        raw = {**metrics, "average_precision": score}
        record = build_record(
            config=config,
            benchmark=benchmark,
            augmentation={"preset": config["augment"]["preset"]},
            device="cpu",
            budget={
                "kind": "steps",
                "value": 500,
                "steps": 500,
                "images_seen": 32_000,
                "train_seconds": float(rng.uniform(300, 900)),
                "resumed_from": None,
            },
            negatives_per_step=int(rng.integers(64, 100_000)),
            timings={"data": 1.0, "train": 600.0, "extract": 120.0, "total": 800.0},
            peak_memory={"cpu_rss": float(rng.uniform(2_000, 4_000)), "cuda": None},
            metrics_raw=raw,
            metrics_normalized={**raw, "average_precision": score + 0.05},
            files={"predictions": "predictions.csv", "pr_curve": "pr_curve.npz"},
            git=git,
            versions=versions,
            extra={"final_loss": 1.0},
        )
        run_dir = root / config["run_id"]
        atomic_write_json(run_dir / RECORD_FILENAME, record)
        points = [
            {
                "step": step,
                "images_seen": 64 * step,
                "train_seconds": 1.2 * step,
                "map": score * step / 500,
            }
            for step in range(0, 501, 100)
        ]
        (run_dir / CURVE_FILENAME).write_text("".join(json.dumps(p) + "\n" for p in points))


def _report(size: int, path: Path, quick: bool) -> Callable[[], object]:
    from harness.report.build import build_report

    write_records(path / "results", size, quick)
    return lambda: build_report([path / "results"], path / "report", figures=False, edits=False)


# --- measuring one (stage, size) in its own process (harness/benchmarks/_fork_server.py) ---------


def _one_thread() -> None:
    """--quick: one torch and one faiss thread. CI machines are shared, and a thread pool
    waiting at every barrier for a descheduled thread turns seconds into minutes there."""
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)


def measure(request: dict) -> dict:
    """In the forked process: build the stage's inputs at the request's size, then time the stage
    and take its peak memory over the inputs' (`_fork_server.time_and_peak`)."""
    from harness.benchmarks._fork_server import time_and_peak

    quick = request["quick"]
    if quick:
        _one_thread()
    stage = next(s for s in STAGES if s.name == request["stage"])
    work = globals()[stage.setup](request["size"], Path(request["path"]), quick)
    return time_and_peak(work, MIN_TOTAL_SECONDS[quick], MAX_RUNS)


PRELOAD = (
    "numpy",
    "torch",
    "faiss",
    "timm",
    "PIL.Image",
    "harness.pipeline",
    "harness.report.build",
)


def _measure_in_fork(server, stage: Stage, size: int, path: Path, quick: bool) -> dict:
    from harness.errors import HarnessError

    request = {"stage": stage.name, "size": size, "path": str(path), "quick": quick}
    result = server.measure(request)
    if "error" in result:
        raise HarnessError(
            f"bench scale: stage {stage.name!r} at size {size:,} failed:\n{result['error']}"
        )
    return result


# --- files ---------------------------------------------------------------------------------------


def jpeg_pool(count: int, cache_dir: Path | None = None) -> list[Path]:
    """`count` 1024x768 JPEGs (quality 90, ~180 KB): a scene of harness/data/scenes.py with grain
    (real photos at this size and quality weigh 150-250 KB), generated once into the cache."""
    import numpy as np
    from PIL import Image

    from harness.data.scenes import render_scene
    from harness.data.synth import default_cache_dir

    width, height = POOL_SHAPE
    folder = (
        (cache_dir or default_cache_dir())
        / "scale-pool"
        / (f"v1-{count}x{width}x{height}-q{POOL_QUALITY}")
    )
    paths = [folder / f"{i:03d}.jpg" for i in range(count)]
    if all(p.is_file() for p in paths):
        return paths
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
    for i, path in enumerate(paths):
        rng = np.random.default_rng(i)
        top = (width - height) // 2
        scene = render_scene(rng, width).crop((0, top, width, top + height))
        grain = rng.normal(0, 5, (height, width, 3))
        pixels = np.clip(np.asarray(scene, np.float32) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(partial / path.name, quality=POOL_QUALITY)
    try:
        partial.rename(folder)
    except OSError:  # another process finished it first
        shutil.rmtree(partial, ignore_errors=True)
    return paths


class Files:
    """DISC layouts of hard links to the pool, made on demand under `root`."""

    def __init__(self, root: Path, pool: list[Path]):
        self.root, self.pool, self.made = root, pool, {}
        self.link = os.link
        try:  # hard links need one file system: else copy the pool next to the layouts
            probe = root / ".probe.jpg"
            os.link(pool[0], probe)
            probe.unlink()
        except OSError:
            local = root / "pool"
            local.mkdir()
            self.pool = [Path(shutil.copy2(p, local / p.name)) for p in pool]

    def _split(self, folder: Path, prefix: str, n: int) -> list[str]:
        folder.mkdir(parents=True)
        ids = [f"{prefix}{i:07d}" for i in range(n)]
        for i, image_id in enumerate(ids):
            self.link(self.pool[i % len(self.pool)], folder / f"{image_id}.jpg")
        return ids

    def layout(self, n_references: int, n_queries: int, n_training: int) -> Path:
        key = (n_references, n_queries, n_training)
        if key in self.made:
            return self.made[key]
        root = self.root / f"disc-{n_references}-{n_queries}-{n_training}"
        references = self._split(root / "references", "R", n_references)
        queries = self._split(root / "queries", "Q", n_queries)
        self._split(root / "training", "T", n_training)
        lines = ["query_id,reference_id"]
        for i, query in enumerate(queries):  # a fifth have a copy; the rest are distractors
            lines.append(f"{query},{references[(7 * i) % n_references] if i % 5 == 0 else ''}")
        (root / "ground_truth.csv").write_text("\n".join(lines) + "\n")
        self.made[key] = root
        return root

    def for_stage(self, stage: Stage, size: int) -> Path:
        if stage.files == "layout":  # n files in all
            queries = max(1, size // 10)
            references = max(1, size * 6 // 10)
            return self.layout(references, queries, size - references - queries)
        if stage.files == "images":  # n references and n training images
            return self.layout(size, max(1, size // 10), size)
        scratch = self.root / f"scratch-{stage.setup.strip('_')}-{size}"
        scratch.mkdir()
        return scratch


# --- the table -----------------------------------------------------------------------------------


def slope(sizes, values) -> float | None:
    """Least-squares slope of log(value) against log(size); None unless every value is > 0."""
    if len(sizes) < 2 or any(v is None or not v > 0 for v in values):
        return None
    xs = [math.log(s) for s in sizes]
    ys = [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def stage_row(stage: Stage, sizes, results: list[dict]) -> dict:
    seconds = [r["seconds"] for r in results]
    peaks = [r["peak_mb"] for r in results]
    exponent = slope(sizes, seconds)
    # Memory rises of a few MB are allocator noise next to the libraries' own: no fit on those.
    memory_exponent = slope(sizes, peaks) if all(p is not None and p >= 1 for p in peaks) else None
    row: dict = {"benchmark": "scale", "stage": stage.name}
    for i, size in enumerate(sizes, start=1):
        row[f"size_{i}"] = size
    for i, value in enumerate(seconds, start=1):
        row[f"seconds_{i}"] = value
    row["exponent"] = None if exponent is None else round(exponent, 2)
    row["expected"] = stage.expected
    row["as_expected"] = None if exponent is None else exponent <= stage.expected + TOLERANCE
    for i, value in enumerate(peaks, start=1):
        row[f"peak_mb_{i}"] = None if value is None else round(value, 1)
    row["memory_exponent"] = None if memory_exponent is None else round(memory_exponent, 2)
    row["per_100k_s"] = seconds[-1] / sizes[-1] * 100_000 if stage.unit == "files" else None
    row["unit"] = stage.unit
    row["runs"] = "/".join(str(r["runs"]) for r in results)
    row["inputs_mb_3"] = (
        None if results[-1]["inputs_mb"] is None else round(results[-1]["inputs_mb"], 1)
    )
    return row


def run(quick: bool, stages: tuple[Stage, ...] | None = None) -> list[dict]:
    from tqdm import tqdm

    stages = STAGES if stages is None else stages
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load is not None:
        print(f"load average before: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)", flush=True)
    rows = []
    from harness.benchmarks._fork_server import ForkServer

    with (
        tempfile.TemporaryDirectory(prefix="isc-bench-scale-") as tmp,
        ForkServer("harness.benchmarks.scale:measure", PRELOAD) as server,
    ):
        files = Files(Path(tmp), jpeg_pool(POOL_SIZE[quick]))
        total = sum(len(stage.sizes(quick)) for stage in stages)
        with tqdm(total=total, desc="bench scale", leave=False) as bar:
            for stage in stages:
                sizes = stage.sizes(quick)
                results = []
                for size in sizes:
                    bar.set_postfix_str(f"{stage.name} {size:,}")
                    path = files.for_stage(stage, size)
                    results.append(_measure_in_fork(server, stage, size, path, quick))
                    bar.update(1)
                rows.append(stage_row(stage, sizes, results))
    return rows
