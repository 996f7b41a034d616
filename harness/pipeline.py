"""One run, start to finish: data -> train -> extract descriptors -> search -> metrics -> record.

`execute_run_dir(run_dir)` reads the run directory's `config.yaml` (written by
`harness.config.prepare_run_dir`), resumes training from the latest checkpoint, redoes the cheap
stages after training, and writes `record.json` once, atomically, as its last act. A directory that
already holds a complete record is returned as is, so calling it twice (a re-queued SLURM job, a
repeated command) never trains or writes twice.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.atomic import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
)
from harness.config import RunConfig, config_to_dict
from harness.describe import described_ground_truth, extract_descriptors
from harness.device import apply_thread_budget, dist_info, loader_workers
from harness.errors import ConfigError
from harness.monitor import Monitors, preserved_state
from harness.record import build_record, device_description, peak_memory_mb
from harness.run_dir import (
    CURVE_FILENAME,
    DESCRIPTORS_FILE,
    LOCK_FILE,
    LOG_FILENAME,
    NORMALIZED_PREDICTIONS_FILE,
    PR_CURVE_FILE,
    PREDICTIONS_FILE,
    RECORD_FILENAME,
    SKIPPED_IMAGES_FILE,
    load_run_config,
    run_is_finished,
)
from harness.seeding import seed_everything
from harness.train import TrainData, TrainResult, train, write_jsonl
from harness.validation import NORMALIZED_NOTE, Validator, validation_split


class Stopwatch:
    """Wall-clock seconds per named stage."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(
            f"train.device: {spec!r} is not a device (auto, cpu, cuda, cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {spec!r} but CUDA is not available on this machine")
    return device


@dataclass
class LoadedData:
    benchmark: Any  # harness.data.Benchmark
    augmentation: dict[str, Any]  # the preset's full parameter list
    train_data: TrainData
    # The run's skipped-images file (data.skip_bad_images; None: skips are not recorded).
    skip_log: Path | None = None


def load_data(cfg: RunConfig, run_dir: Path | None = None) -> LoadedData:
    """The benchmark, listed without opening an image, and the training datasets.

    A run does not check every image header when it starts (on DISC21 that is an open per file,
    2M of them, on every job start and every rank; `data check` does it once): the datasets check
    each image as they decode it (harness/data/datasets.py). Skip off, the first bad image fails
    the run, naming the file. Skip on (`data.skip_bad_images`), a bad query or reference gets no
    descriptor (its ground-truth rows are dropped after extraction) and a bad training image is
    replaced by the next good one; each skipped file is a line of `run_dir`'s skipped-images file,
    whose unique paths the record counts. Files skipped while listing (zero-byte files, seen by
    the directory scan) are written there now."""
    from harness.augment import build_preset, eval_transform, training_source_side
    from harness.data import ImageDataset, TrainingDataset, load_benchmark
    from harness.data.layout import MIN_TRAINING_SIDE, append_skipped
    from harness.data.synth import SynthParams, resolve_data

    synth_params = None
    if cfg.data.spec == "synthetic":
        try:
            synth_params = SynthParams(**cfg.data.synth)
        except TypeError as err:
            raise ConfigError(f"data.synth: {err}") from None
    root = resolve_data(cfg.data.spec, synth_params=synth_params)
    benchmark = load_benchmark(root, skip_bad_images=cfg.data.skip_bad_images, check_images=False)
    if len(benchmark.training) == 0:
        raise ConfigError(f"{root}: the benchmark has no training images; every method needs some")
    skip_log = None
    if cfg.data.skip_bad_images and run_dir is not None:
        skip_log = Path(run_dir) / SKIPPED_IMAGES_FILE
        if dist_info()[0] == 0:
            for path, reason in benchmark.skipped:
                append_skipped(skip_log, path, reason)
    preset = build_preset(cfg.augment.preset, cfg.model.image_size, cfg.augment.overrides)
    clean = eval_transform(cfg.model.image_size)
    training = benchmark.training
    view_side, clean_side = None, None
    if cfg.data.decode == "draft":
        clean_side = cfg.model.image_size
        view_side = training_source_side(preset.params, cfg.model.image_size)
    # The three datasets over the training set share the size check and the substitution, so a
    # bad image's index holds the same substitute in the stream, QK's cache and the memory bank.
    bad = {
        "min_side": MIN_TRAINING_SIDE,
        "bad_images": "substitute" if cfg.data.skip_bad_images else "fail",
        "skip_log": skip_log,
    }
    train_data = TrainData(
        stream=TrainingDataset(
            training,
            preset.transform,
            clean,
            n_views=cfg.train.n_views,
            draft_side=view_side,
            **bad,
        ),
        clean=ImageDataset(training, clean, draft_side=clean_side, **bad),
        augmented=ImageDataset(training, preset.transform, draft_side=view_side, **bad),
    )
    return LoadedData(benchmark, preset.params, train_data, skip_log)


def build_method(cfg: RunConfig, n_training: int, device: torch.device):
    from methods import MethodContext, create_method

    rank, world_size = dist_info()
    context = MethodContext(
        backbone=cfg.model.backbone,
        embedding_dim=cfg.model.embedding_dim,
        image_size=cfg.model.image_size,
        head_batch_norm=cfg.model.head_batch_norm,
        pooling=cfg.model.pooling,
        weights=cfg.model.weights,
        weights_strict=cfg.model.weights_strict,
        pretrained=cfg.model.pretrained,
        num_train_images=n_training,
        seed=cfg.seed,
        device=device,
        world_size=world_size,
        rank=rank,
    )
    seed_everything(cfg.seed)  # initial weights are a function of the seed alone
    return create_method(cfg.method, cfg.method_config, context)


def loaded_weights(method) -> dict[str, Any] | None:
    """What the method's backbones started from (all alike: the protocol's), None if random."""
    return next((m.loaded_weights for m in method.modules() if hasattr(m, "loaded_weights")), None)


# The benchmark's splits, extracted in this order: (name in the descriptors file, the Benchmark
# attribute holding the images, the role the method describes them in). Training images are
# described as references: score normalization compares queries against them.
SPLITS = (
    ("query", "queries", "query"),
    ("reference", "references", "reference"),
    ("training", "training", "reference"),
)


def _score_normalization(cfg: RunConfig, n_training: int):
    from harness.isc import ScoreNormalization

    if not cfg.eval.score_norm:
        return None
    if cfg.eval.score_norm_n > n_training:
        raise ConfigError(
            f"eval.score_norm_n ({cfg.eval.score_norm_n}) is larger than the training set "
            f"({n_training} images)"
        )
    return ScoreNormalization(
        beta=cfg.eval.score_norm_beta,
        n=cfg.eval.score_norm_n,
        reduction=cfg.eval.score_norm_reduction,
    )


def _monitors(cfg: RunConfig, data: LoadedData, device) -> Monitors:
    """What the trainer measures as it goes (harness/monitor.py), from the eval/train config."""
    validate = None
    if cfg.eval.every is not None:
        split = validation_split(
            data.benchmark, cfg.eval.val_queries, cfg.eval.val_references, cfg.seed
        )
        validate = Validator(split, cfg, device, skip_log=data.skip_log)
    return Monitors(
        validate=validate,
        validate_every=cfg.eval.every,
        consistency_every=cfg.eval.consistency_every,
        consistency_batches=cfg.eval.consistency_batches,
        tensorboard=cfg.train.tensorboard,
    )


def _train(method, data: LoadedData, cfg: RunConfig, run_dir: Path, device, progress: bool):
    """Train (or resume) the method; a method that does not train gets an empty log and, with
    validation on, its one point."""
    monitors = _monitors(cfg, data, device)
    if method.trains():
        return train(
            method,
            data.train_data,
            cfg.train,
            seed=cfg.seed,
            run_dir=run_dir,
            device=device,
            progress=progress,
            monitors=monitors,
        )
    method.to(device)
    atomic_write_text(run_dir / LOG_FILENAME, "")
    curve = []
    if monitors.validate is not None:
        with preserved_state(method):
            curve = [
                {"step": 0, "images_seen": 0, "train_seconds": 0.0, **monitors.validate(method)}
            ]
    write_jsonl(run_dir / CURVE_FILENAME, curve)
    return TrainResult(steps=0, images_seen=0, train_seconds=0.0, negatives_per_step=0, curve=curve)


def _extract(method, data: LoadedData, cfg: RunConfig, run_dir: Path, device, progress: bool):
    """Descriptors of every split, written to the run's descriptors file (a split's images skipped
    as bad have none)."""
    from harness.isc import write_descriptors

    descriptors = {
        name: extract_descriptors(
            method,
            getattr(data.benchmark, images),
            role,
            cfg,
            device,
            split=images,
            progress=progress,
            shared=True,
            skip_log=data.skip_log,
        )
        for name, images, role in SPLITS
    }
    if dist_info()[0] == 0:
        write_descriptors(run_dir / DESCRIPTORS_FILE, **descriptors)
    return descriptors


def _benchmark_block(benchmark, descriptors, gt, skip_log: Path | None) -> dict[str, Any]:
    """The record's benchmark block: the queries and references described (those skipped while
    decoding left out), the ground truth scored, and the images skipped (unique paths of the
    skipped-images file: at listing and while decoding, on every rank and every resumed start).
    `n_training` stays the listed count: a bad training image's index is trained on, with its
    substitute's pixels."""
    from harness.data.layout import read_skipped

    block = benchmark.summary()
    block["n_queries"] = len(descriptors["query"].ids)
    block["n_references"] = len(descriptors["reference"].ids)
    block["n_gt"] = len(gt.query)
    if skip_log is not None:
        block["skipped_images"] = len(read_skipped(skip_log))
    return block


@dataclass
class Scores:
    metrics: dict[str, dict[str, Any]]  # "raw", and "normalized" with score normalization
    files: dict[str, str]  # the record's `files`: kind -> name in the run directory


def _score(descriptors, gt, cfg: RunConfig, score_norm, run_dir: Path, clock, progress: bool):
    """Search and score the raw descriptors and, with score normalization, the normalized ones;
    write their predictions and precision-recall curves."""
    from harness.isc import evaluate_descriptors, precision_recall_curve, write_predictions

    # row -> (score normalization, record `files` key, predictions file, pr_curve key prefix)
    rows = {"raw": (None, "predictions", PREDICTIONS_FILE, "")}
    if score_norm is not None:
        rows["normalized"] = (
            score_norm,
            "predictions_normalized",
            NORMALIZED_PREDICTIONS_FILE,
            "normalized_",
        )
    # Every search runs before any predictions file is written, as a kill-and-resume expects.
    evaluations = {
        row: evaluate_descriptors(
            gt,
            descriptors["query"],
            descriptors["reference"],
            descriptors["training"],
            score_norm=norm,
            max_results=cfg.eval.max_results,
            knn=cfg.eval.knn,
            metric=cfg.eval.metric,
            progress=progress,
            stage=clock,
        )
        for row, (norm, *_) in rows.items()
    }
    files = {
        "predictions": PREDICTIONS_FILE,
        "descriptors": DESCRIPTORS_FILE,
        "pr_curve": PR_CURVE_FILE,
        "log": LOG_FILENAME,
        "curve": CURVE_FILENAME,
    }
    curves = {}
    with clock("metrics"):
        for row, (_, kind, name, prefix) in rows.items():
            predictions = evaluations[row][0]
            precision, recall, _ = precision_recall_curve(gt, predictions)
            curves.update({f"{prefix}precision": precision, f"{prefix}recall": recall})
            write_predictions(run_dir / name, predictions)
            files[kind] = name
        _write_pr_curve(run_dir / PR_CURVE_FILE, curves)
    return Scores({row: metrics.to_dict() for row, (_, metrics) in evaluations.items()}, files)


def _write_pr_curve(path: Path, curves: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **curves)


def _curve_block(cfg: RunConfig, curve: list[dict]) -> dict[str, Any]:
    """The record's learning curve and last stale-negatives figures (none when neither ran)."""
    if not curve:
        return {}
    block: dict[str, Any] = {"curve": curve}
    if cfg.eval.every is not None:
        block["curve_note"] = NORMALIZED_NOTE
        block["validation"] = {
            "queries": cfg.eval.val_queries,
            "references": cfg.eval.val_references,
            "every": cfg.eval.every,
        }
    negatives = [p for p in curve if any(k.startswith("negatives/") for k in p)]
    if negatives:
        last = negatives[-1]
        block["stale_negatives"] = {
            "step": last["step"],
            **{k.split("/", 1)[1]: v for k, v in last.items() if k.startswith("negatives/")},
        }
    return block


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock: one process at a time trains, evaluates and writes a run.

    Two sweeps or two shells started on the same run would otherwise train it twice and race on
    its files. The second waits (saying so) and then finds the record the first wrote. An flock
    dies with its process, so a killed or requeued job never leaves a stale lock behind.
    """
    import fcntl

    with open(run_dir / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"{run_dir}: another process is running this run; waiting for it", file=sys.stderr
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:  # a file system without locks (some NFS mounts): run unlocked
            print(
                f"{run_dir}: cannot lock the run directory ({err}); running unlocked",
                file=sys.stderr,
            )
        yield


def execute_run_dir(run_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume, or just return) the run in `run_dir`; returns its record."""
    run_dir = Path(run_dir)
    rank, _ = dist_info()
    if rank != 0 or not run_dir.is_dir():  # other DDP ranks run inside rank 0's lock
        return _execute_run_dir(run_dir, progress=progress)
    with run_lock(run_dir):
        # A process killed mid-write left its temporary behind; under the lock nobody else writes.
        remove_stale_temporaries(run_dir)
        return _execute_run_dir(run_dir, progress=progress)


def _execute_run_dir(run_dir: Path, *, progress: bool) -> dict[str, Any]:
    record_path = run_dir / RECORD_FILENAME
    if run_is_finished(run_dir):
        return json.loads(record_path.read_text())
    cfg = load_run_config(run_dir)
    clock = Stopwatch()
    started = time.perf_counter()
    device = pick_device(cfg.train.device)
    resources = apply_thread_budget(cfg.train.threads)

    with clock("data"):
        data = load_data(cfg, run_dir)
    benchmark = data.benchmark
    method = build_method(cfg, len(benchmark.training), device)
    score_norm = _score_normalization(cfg, len(benchmark.training))
    with clock("train"):
        result = _train(method, data, cfg, run_dir, device, progress)
    rank, _ = dist_info()
    with clock("extract"):  # every rank describes its share; rank 0 writes the file
        descriptors = _extract(method, data, cfg, run_dir, device, progress and rank == 0)
    if rank != 0:  # rank 0 alone searches, scores and writes the record
        return {}
    gt = described_ground_truth(
        benchmark.ground_truth,
        benchmark.queries,
        benchmark.references,
        descriptors["query"],
        descriptors["reference"],
    )
    scores = _score(descriptors, gt, cfg, score_norm, run_dir, clock, progress)
    if data.skip_log is not None and data.skip_log.is_file():
        scores.files["skipped_images"] = SKIPPED_IMAGES_FILE

    timings = {**clock.seconds, "total": time.perf_counter() - started}
    record = build_record(
        config=config_to_dict(cfg),
        benchmark=_benchmark_block(benchmark, descriptors, gt, data.skip_log),
        weights=loaded_weights(method),
        augmentation=data.augmentation,
        device=device_description(device),
        budget={
            "kind": cfg.train.budget_kind,
            "value": cfg.train.budget_value,
            "steps": result.steps,
            "images_seen": result.images_seen,
            "train_seconds": round(result.train_seconds, 3),
            "resumed_from": result.resumed_from,
        },
        negatives_per_step=method.negatives_per_step(batch_size=cfg.train.batch_size),
        timings=timings,
        peak_memory=peak_memory_mb(device),
        metrics_raw=scores.metrics["raw"],
        metrics_normalized=scores.metrics.get("normalized"),
        files=scores.files,
        extra={
            "final_loss": result.final_loss,
            "resources": {
                **resources,
                "train_workers": loader_workers(cfg.train.num_workers, "train.num_workers"),
                "loader_workers": loader_workers(cfg.data.workers, "data.workers"),
            },
            **_curve_block(cfg, result.curve),
            **({"method_costs": costs} if (costs := method.costs()) else {}),
        },
        # A resumed run's wall-clock adds the earlier processes' (up to their last checkpoint).
        earlier_timings=None
        if result.earlier_wall_seconds is None
        else dict.fromkeys(("train", "total"), result.earlier_wall_seconds),
    )
    atomic_write_json(record_path, record)
    return record
