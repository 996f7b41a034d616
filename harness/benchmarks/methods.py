"""Training and extraction throughput of every method, each next to a bare PyTorch reference.

Rows (same backbone, batch and input size for every method; the protocol's resnet10t, batch 64,
64 px at full size):

- `train`: the harness's training step, i.e. the real `harness.train.Trainer` driving the method
  (batch assembly through the seeded DataLoader, `training_step`, backward, optimizer, LR schedule,
  logging; the checkpoint cost measured and amortized over `train.checkpoint_every` steps), against
  a bare loop doing the same math on the same preloaded tensors (harness/benchmarks/_bare_loops.py):
  timm backbone + lightly head and lightly's `NTXentLoss` for SimCLR and MoCo (`memory_bank_size`
  = the queue), a plain cross-entropy over the sampled slots (membank) or over all N keys (QK) where
  lightly has no loss. Both read preloaded synthetic tensors, so image decoding is excluded; the
  trainer runs with `num_workers=0` so its batch assembly sits on the step's critical path (the
  strictest reading of "overhead"). Target: harness <= 1.10x the bare step time.
- `qk phase start`: encoding the negative set at a phase start (`on_train_start`, through the
  trainer's `encode_training_set`), next to a bare no-grad forward of the frozen backbone over the
  same number of preloaded images, and amortized per step over `qk.phase_steps`; with the cache's
  memory (its dtype's, measured) and what 1M rows of its width take in fp32 and in bf16/fp16.
- `train (dataloader)`: the trainer fed from JPEG files with the protocol's augmentation preset and
  DataLoader workers, next to the same trainer on preloaded tensors, round by round (how much
  decoding and the copy-edit augmentations cost on this machine); the steps served by the
  workers' first prefetch are not timed.
- `extract`: the pipeline's descriptor extraction (`harness.describe.extract_descriptors`: JPEG
  files, DataLoader workers, `method.describe`) against `describe` over preloaded tensors of the same
  size. Target: >= 0.8x (data loading must not be the bottleneck).

With `bench --config/--set` (a `Protocol`), the backbone, image size, embedding, pooling, batch
(per device) and each method's own options are the protocol's, from a random init; the training
set stays the setting's `n_train` (the `train` row of qk says how many negatives it scored).

`ratio` is always images/s over the reference's images/s (1 = as fast as the reference).
Timings alternate the harness and its reference (A, B, A, B, ...) and report medians of per-step
(per-pass) times, because the machine may be shared; `best_*` columns compare the fastest step of
each, i.e. what each costs when other load left it alone. CUDA is synchronized around every bare step;
the trainer's own per-step clock (read back from its log) includes `float(loss)`, which waits for
the GPU.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from harness.benchmarks import Protocol, timed
from harness.benchmarks._bare_loops import BARE_LOOPS, BareLoop

DESCRIPTION = (
    "training images/s per method (harness trainer vs a bare loop with lightly's loss), QK "
    "phase-start cost, DataLoader-fed training, descriptor extraction vs a bare forward"
)
OVERHEAD_TARGET = 1.10  # harness step time <= 1.1x the bare loop's
EXTRACT_TARGET = 0.80  # extraction images/s >= 0.8x the bare forward's


@dataclass(frozen=True)
class Setting:
    backbone: str
    image_size: int
    batch_size: int
    n_train: int  # training-set size: QK's negatives and the memory bank's slots
    steps: int  # timed steps per round (one more runs first, untimed)
    rounds: int  # alternations of harness and reference
    n_files: int  # JPEG files for the DataLoader-fed rows
    workers: int  # DataLoader workers of the DataLoader-fed rows (the protocol's default: 2)
    extract_batch: int  # images per extraction batch (eval.batch_size)
    protocol: Protocol | None = None  # a run protocol's model and method options (module doc)


# The protocol's model and batch (the defaults in harness/config.py) and its 5,000-image training set.
FULL = Setting(
    "resnet10t", 64, 64, 5_000, steps=3, rounds=5, n_files=2_000, workers=2, extract_batch=128
)
QUICK = Setting(
    "test_resnet", 32, 16, 256, steps=2, rounds=2, n_files=64, workers=2, extract_batch=32
)
POOL = 32  # distinct preloaded images; item i uses pool[i % POOL]


def _run_config(method: str, setting: Setting):
    """The method's resolved protocol config at the benchmark's sizes."""
    overrides = [
        f"model.backbone={setting.backbone}",
        f"model.image_size={setting.image_size}",
        f"train.batch_size={setting.batch_size}",
        *BARE_LOOPS[method].size_overrides(setting.n_train),
    ]
    return (setting.protocol or Protocol()).resolve(method, overrides)


def setting_for(quick: bool, protocol: Protocol | None) -> Setting:
    """QUICK or FULL, at the protocol's model, batch and extraction batch when one is given."""
    base = QUICK if quick else FULL
    if protocol is None:
        return base
    cfg = protocol.resolve("simclr")
    return replace(
        base,
        backbone=cfg.model.backbone,
        image_size=cfg.model.image_size,
        batch_size=cfg.train.batch_size,
        extract_batch=cfg.eval.batch_size,
        workers=cfg.data.workers,
        protocol=protocol,
    )


# --- preloaded data -------------------------------------------------------------------------------


class PreloadedStream:
    """A TrainingDataset look-alike over preloaded tensors (no decoding, no augmentation)."""

    def __init__(self, pool, n_items: int, n_views: int):
        self.pool, self.n_items, self.n_views = pool, n_items, n_views

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, index: int) -> dict:
        pick = self.pool
        return {
            "views": [pick[(index + v) % len(pick)] for v in range(self.n_views)],
            "clean": pick[index % len(pick)],
            "index": index,
            "id": f"T{index:06d}",
        }


class PreloadedImages:
    """An ImageDataset look-alike over preloaded tensors: items are (image, index, id)."""

    def __init__(self, pool, n_items: int):
        self.pool, self.n_items = pool, n_items

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, index: int):
        return self.pool[index % len(self.pool)], index, f"T{index:06d}"


def _pool(setting: Setting):
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randn(POOL, 3, setting.image_size, setting.image_size, generator=generator)


def _preloaded_data(setting: Setting, n_views: int):
    from harness.train import TrainData

    pool = _pool(setting)
    return TrainData(
        stream=PreloadedStream(pool, setting.n_train, n_views),
        clean=PreloadedImages(pool, setting.n_train),
        augmented=PreloadedImages(pool, setting.n_train),
    )


def _write_jpegs(directory: Path, count: int):
    """`count` scenes of the generated mini-DISC (96 px JPEGs, as `data synth` writes them)."""
    from harness.data.layout import ImageSet
    from harness.data.synth import SynthParams, render_training

    params = SynthParams()
    directory.mkdir(parents=True, exist_ok=True)
    ids, paths = [], []
    for index in range(count):
        path = directory / f"T{index:06d}.jpg"
        render_training(params, index).save(path, quality=params.jpeg_quality)
        ids.append(path.stem)
        paths.append(path)
    return ImageSet(ids, paths)


# --- the harness side -----------------------------------------------------------------------------


def _build_method(cfg, n_train: int, device):
    from harness.pipeline import build_method

    return build_method(cfg, n_train, device)


def _harness_round(cfg, data, setting: Setting, device, workdir: Path) -> tuple[list[float], float]:
    """One fresh run of the real trainer for 1 + `steps` steps.

    Returns the per-step seconds of the timed steps (the trainer's own clock, from its log: batch
    fetch, step, backward, optimizer and hooks) and the seconds of one checkpoint save."""
    from harness.train import Trainer

    method = _build_method(cfg, len(data.stream), device)
    train_cfg = replace(cfg.train, budget_kind="steps", budget_value=float(1 + setting.steps))
    trainer = Trainer(
        method,
        data,
        train_cfg,
        seed=cfg.seed,
        run_dir=workdir,
        device=device,
        progress=False,
    )
    trainer.fit()
    per_step = [train_cfg.batch_size / line["images_per_s"] for line in trainer.log[1:]]
    _, checkpoint_seconds = timed(trainer.save_checkpoint)
    return per_step, checkpoint_seconds


# --- the bare references --------------------------------------------------------------------------


METHODS = tuple(BARE_LOOPS)


def train_batch(views, index):
    """The TrainBatch the trainer would deliver for these views."""
    from methods.base import TrainBatch

    return TrainBatch(views=list(views), indices=index, clean=views[0])


def _bare_round(bare: BareLoop, views, index, steps: int) -> list[float]:
    bare.step(views, index)  # untimed, as the trainer's first step
    return [timed(lambda: bare.step(views, index))[1] for _ in range(steps)]


# --- rows -----------------------------------------------------------------------------------------


def _train_rows(setting: Setting, device, workdir: Path, progress) -> list[dict]:
    import torch

    rows = []
    pool = _pool(setting)
    for method in METHODS:
        cfg = _run_config(method, setting)
        data = _preloaded_data(setting, cfg.train.n_views)
        cfg = replace(cfg, train=replace(cfg.train, num_workers=0))
        torch.manual_seed(0)
        bare = BareLoop(method, cfg, setting.n_train, device)
        views, index = bare.batch(pool, setting.batch_size)
        harness_steps, bare_steps, checkpoints = [], [], []
        for round_ in range(setting.rounds):
            per_step, checkpoint = _harness_round(
                cfg, data, setting, device, workdir / f"{method}-{round_}"
            )
            harness_steps += per_step
            checkpoints.append(checkpoint)
            bare_steps += _bare_round(bare, views, index, setting.steps)
            progress.update(1)
        checkpoint_per_step = statistics.median(checkpoints) / cfg.train.checkpoint_every
        harness_step = statistics.median(harness_steps) + checkpoint_per_step
        bare_step = statistics.median(bare_steps)
        slowdown = harness_step / bare_step
        rows.append(
            {
                "case": "train",
                "method": method,
                "images_per_s": cfg.train.batch_size / harness_step,
                "reference_images_per_s": cfg.train.batch_size / bare_step,
                "ratio": bare_step / harness_step,
                "overhead_percent": 100 * (slowdown - 1),
                # Best step against best step: what each costs when the machine left it alone.
                "best_overhead_percent": 100
                * ((min(harness_steps) + checkpoint_per_step) / min(bare_steps) - 1),
                "target": f"<= {100 * (OVERHEAD_TARGET - 1):.0f}% overhead",
                "met": slowdown <= OVERHEAD_TARGET,
                "seconds": harness_step,
                "reference_seconds": bare_step,
                "checkpoint_per_step_s": checkpoint_per_step,
                "reference": bare.reference,
            }
        )
    return rows


def _phase_start_row(setting: Setting, device, workdir: Path) -> dict:
    """QK's phase start (encode the negative set) against a bare forward over as many images."""
    import torch

    from harness.train import Trainer

    cfg = _run_config("qk", setting)
    data = _preloaded_data(setting, cfg.train.n_views)
    method = _build_method(cfg, setting.n_train, device)
    trainer = Trainer(
        method,
        data,
        cfg.train,
        seed=cfg.seed,
        run_dir=workdir / "qk-phase",
        device=device,
        progress=False,
    )
    method.to(device)
    backbone = method.key.backbone.eval()
    batch = cfg.method_config.cache_batch_size or 2 * cfg.train.batch_size
    pool = _pool(setting).to(device)

    def bare_forward():
        with torch.no_grad():
            for start in range(0, setting.n_train, batch):
                rows = min(batch, setting.n_train - start)
                backbone(pool[torch.arange(start, start + rows) % len(pool)])

    ours, bare = [], []
    for _ in range(2):
        ours.append(timed(lambda: method.on_train_start(trainer.context, 0))[1])
        bare.append(timed(bare_forward)[1])
    seconds, reference = statistics.median(ours), statistics.median(bare)
    cache = method.costs()["cache"]
    return {
        "case": "qk phase start",
        "method": "qk",
        "images_per_s": setting.n_train / seconds,
        "reference_images_per_s": setting.n_train / reference,
        "ratio": reference / seconds,
        "seconds": seconds,
        "reference_seconds": reference,
        "per_step_s": seconds / cfg.method_config.phase_steps,
        "negatives": setting.n_train,
        "cache_dtype": cache["dtype"],
        "cache_mb": cache["bytes"] / 2**20,
        # The cache is rows x feature width x bytes per value: DISC21's 1M rows in each dtype.
        **{
            f"cache_mb_1M_{dtype}": 1_000_000 * cache["width"] * size / 2**20
            for dtype, size in (("fp32", 4), ("bf16", 2))
        },
        "reference": f"bare no-grad backbone forward, amortized over {cfg.method_config.phase_steps} steps",
    }


def _timed_steps(cfg, data, device, run_dir: Path, skip: int, steps: int) -> list[float]:
    """Per-step seconds (the trainer's own clock) of `steps` steps after 1 + `skip` untimed ones."""
    from harness.train import Trainer

    method = _build_method(cfg, len(data.stream), device)
    train_cfg = replace(cfg.train, budget_kind="steps", budget_value=float(1 + skip + steps))
    trainer = Trainer(
        method, data, train_cfg, seed=cfg.seed, run_dir=run_dir, device=device, progress=False
    )
    trainer.fit()
    return [train_cfg.batch_size / line["images_per_s"] for line in trainer.log[1 + skip :]]


def _dataloader_row(setting: Setting, device, workdir: Path, images) -> dict:
    """SimCLR trained from JPEG files (protocol preset and workers) vs the same trainer on
    preloaded tensors, alternated round by round so that other load hits both alike."""
    from harness.augment import build_preset, eval_transform
    from harness.data import ImageDataset, TrainingDataset
    from harness.device import loader_workers
    from harness.train import TrainData

    cfg = _run_config("simclr", setting)
    cfg = replace(cfg, train=replace(cfg.train, num_workers=setting.workers))
    preset = build_preset(cfg.augment.preset, cfg.model.image_size, cfg.augment.overrides)
    clean = eval_transform(cfg.model.image_size)
    files = TrainData(
        stream=TrainingDataset(images, preset.transform, clean, n_views=cfg.train.n_views),
        clean=ImageDataset(images, clean),
        augmented=ImageDataset(images, preset.transform),
    )
    preloaded = _preloaded_data(setting, cfg.train.n_views)
    # The workers prefetch 2 batches each while the first step runs: timing those would measure
    # a full queue, not how fast the workers keep up (a calibration's loading slowdown).
    prefetched = 2 * loader_workers(setting.workers, "train.num_workers")
    fed, reference = [], []
    for round_ in range(setting.rounds):
        fed += _timed_steps(
            cfg, files, device, workdir / f"files-{round_}", prefetched, setting.steps
        )
        reference += _timed_steps(
            replace(cfg, train=replace(cfg.train, num_workers=0)),
            preloaded,
            device,
            workdir / f"preloaded-{round_}",
            0,
            setting.steps,
        )
    per_step, reference_step = statistics.median(fed), statistics.median(reference)
    return {
        "case": "train (dataloader)",
        "method": "simclr",
        "images_per_s": cfg.train.batch_size / per_step,
        "reference_images_per_s": cfg.train.batch_size / reference_step,
        "ratio": reference_step / per_step,
        "seconds": per_step,
        "reference_seconds": reference_step,
        "workers": setting.workers,
        "reference": f"same trainer on preloaded tensors; {cfg.augment.preset} preset from JPEGs",
    }


def _extract_row(setting: Setting, device, images) -> dict:
    """The pipeline's extraction from JPEG files vs `describe` over preloaded tensors."""
    import torch

    from harness.describe import extract_descriptors

    cfg = _run_config("simclr", setting)
    cfg = replace(
        cfg,
        data=replace(cfg.data, workers=setting.workers),
        eval=replace(cfg.eval, batch_size=setting.extract_batch),
    )
    method = _build_method(cfg, len(images), device).to(device).eval()
    n, batch = len(images), cfg.eval.batch_size
    tensors = torch.randn(n, 3, setting.image_size, setting.image_size).to(device)

    def pipeline():
        extract_descriptors(method, images, "reference", cfg, device, split="bench", progress=False)

    amp = device.type == "cuda" and cfg.train.amp  # as the pipeline's extraction

    def bare():
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            for start in range(0, n, batch):
                method.describe(tensors[start : start + batch], "reference").cpu()

    bare()  # warm-up
    ours, reference = [], []
    for _ in range(setting.rounds):
        ours.append(timed(pipeline)[1])
        reference.append(timed(bare)[1])
    seconds, reference_seconds = statistics.median(ours), statistics.median(reference)
    ratio = reference_seconds / seconds
    return {
        "case": "extract",
        "method": "simclr",
        "images_per_s": n / seconds,
        "reference_images_per_s": n / reference_seconds,
        "ratio": ratio,
        "best_ratio": min(reference) / min(ours),
        "target": f">= {EXTRACT_TARGET:g}x bare forward",
        "met": ratio >= EXTRACT_TARGET,
        "seconds": seconds,
        "reference_seconds": reference_seconds,
        "workers": setting.workers,
        "reference": f"describe() over {n} preloaded tensors, batch {batch}",
    }


def run(quick: bool, protocol: Protocol | None = None) -> list[dict]:
    from tqdm import tqdm

    from harness.pipeline import pick_device

    setting = setting_for(quick, protocol)
    device = pick_device("auto")  # a run's default: the GPU when there is one
    rows = []
    with tempfile.TemporaryDirectory(prefix="isc-bench-methods-") as tmp:
        workdir = Path(tmp)
        with tqdm(total=len(METHODS) * setting.rounds, desc="bench methods", leave=False) as bar:
            rows += _train_rows(setting, device, workdir, bar)
        phase = _phase_start_row(setting, device, workdir)
        rows.append(phase)
        qk = next(row for row in rows if row["case"] == "train" and row["method"] == "qk")
        qk["images_per_s_with_phase_start"] = setting.batch_size / (
            qk["seconds"] + phase["per_step_s"]
        )
        qk["negatives"] = setting.n_train  # the training set: QK scores every image of it
        images = _write_jpegs(workdir / "images", setting.n_files)
        rows.append(_dataloader_row(setting, device, workdir, images))
        rows.append(_extract_row(setting, device, images))
    model = _run_config("simclr", setting).model
    common = {
        "benchmark": "methods",
        "device": device.type,
        "backbone": setting.backbone,
        "image_size": setting.image_size,
        "batch": setting.batch_size,
        "embedding_dim": model.embedding_dim,
        "pooling": model.pooling,
    }
    return [{**common, **row} for row in rows]
