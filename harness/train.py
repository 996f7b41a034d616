"""The one trainer shared by every method: same data stream, optimizer, schedule, budget and checkpoints.

A plain PyTorch loop rather than PyTorch Lightning: the methods' call order (methods/base.py) has
hooks Lightning does not have (QK's per-phase re-freezing and key caching), bit-for-bit resume needs
full control of the RNG and data order, and submitit already owns SLURM signals (Lightning handling
them too is a known source of lost jobs).

Reproducibility: the data stream and every seed come from harness/seeding.py, so a run resumed at
step k sees exactly the batches the uninterrupted run saw. The global RNGs (dropout) are saved in
each checkpoint.

DDP: each rank takes its slice of the global batch; gradients are averaged across ranks by an
all-reduce after `backward`, as DistributedDataParallel would (a plain wrapper cannot be used because
QK freezes and unfreezes parameters between phases). Methods gather negatives across ranks with
gradient-aware all-gathers (lightly's `gather_distributed`), so the averaged gradient equals the
gradient of the loss on the global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from harness.atomic import atomic_torch_save, atomic_write_text
from harness.config import TrainConfig
from harness.errors import ConfigError, HarnessError
from harness.run_dir import CHECKPOINT_PATH, LOG_FILENAME
from harness.seeding import (
    STREAM_ENCODE,
    STREAM_LOADER,
    SeededItems,
    StepBatchSampler,
    derive_seeds,
)
from methods.base import Method, TrainBatch, TrainContext

CHECKPOINT_FORMAT = 1


class TrainingDiverged(HarnessError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# --- schedule and budget ----------------------------------------------------------------------


def lr_factor(step: int, progress: float, *, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate: linear warm-up over steps, then cosine over progress."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def total_steps_for(cfg: TrainConfig) -> int | None:
    """Steps a budget allows; None for a wall-clock budget (it ends when the time is spent)."""
    if cfg.budget_kind == "steps":
        return int(cfg.budget_value)
    if cfg.budget_kind == "images":
        return math.ceil(cfg.budget_value / cfg.batch_size)
    return None


def build_optimizer(method: Method, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Frozen parameters stay in the optimizer: QK unfreezes them in the next phase, and the
    # optimizer skips parameters whose grad is None.
    params = list(method.parameters())
    if not params:
        raise ConfigError(f"method {method.name!r} trains but has no parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """Mixed precision on CUDA only: bfloat16 where supported (no loss scaling), else float16."""
    if not (amp and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


# --- distributed ------------------------------------------------------------------------------


def dist_info() -> tuple[int, int]:
    """(rank, world_size) of the current torch.distributed group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """Average `.grad` across ranks (what DistributedDataParallel does during backward)."""
    if world_size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _mean_across_ranks(value: float, world_size: int, device: torch.device) -> float:
    if world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size


# --- RNG state in checkpoints (plain containers, loadable with weights_only=True) ---------------


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- the trainer ------------------------------------------------------------------------------


@dataclass
class TrainData:
    """What the trainer reads. `stream` items are TrainingDataset dicts ("views", "clean",
    "index"); `clean` and `augmented` items are `(image, index, id)` over the same training set,
    with the evaluation transform and with one view of the training preset."""

    stream: Dataset
    clean: Dataset
    augmented: Dataset


@dataclass
class TrainResult:
    steps: int  # optimizer steps done in total (including those before a resume)
    images_seen: int
    train_seconds: float  # training wall-clock, summed over resumes
    negatives_per_step: int
    resumed_from: int | None = None
    final_loss: float | None = None
    log: list[dict] = field(default_factory=list)


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_log(path: Path, lines: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in lines))


def _to_device(batch: dict, device: torch.device, channels_last: bool) -> TrainBatch:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    non_blocking = device.type == "cuda"

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, non_blocking=non_blocking, memory_format=fmt)

    return TrainBatch(
        views=[move(v) for v in batch["views"]],
        indices=batch["index"].to(device, non_blocking=non_blocking),
        clean=move(batch["clean"]) if batch.get("clean") is not None else None,
    )


def _load_failure(err: Exception) -> str:
    """torch.load's reason in one line. Its weights-only refusal runs to a page and suggests
    weights_only=False, which a harness must never do with a file it cannot vouch for."""
    text = str(err)
    if "Weights only load failed" in text:
        detail = text.partition("WeightsUnpickler error:")[2].strip().splitlines()
        reason = detail[0].strip() if detail else "unsupported content"
        reason = reason.partition(". Please use")[0]  # advice to allowlist: not for a user
        return f"not a checkpoint of isc-bench, or damaged; safe loading refused it: {reason}"
    lines = text.strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


class Trainer:
    """Trains one method under a TrainConfig; state lives in `run_dir` (checkpoint and log)."""

    def __init__(
        self,
        method: Method,
        data: TrainData,
        cfg: TrainConfig,
        *,
        seed: int,
        run_dir: str | Path,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ):
        self.method = method
        self.data = data
        self.cfg = cfg
        self.seed = seed
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.progress = progress
        self.rank, self.world_size = dist_info()
        self.cuda = self.device.type == "cuda"
        self.channels_last = self.cuda and cfg.channels_last
        self.amp_dtype = amp_dtype(self.device, cfg.amp)
        self.total_steps = total_steps_for(cfg)
        self.checkpoint_path = self.run_dir / CHECKPOINT_PATH
        self.log_path = self.run_dir / LOG_FILENAME
        self.step = 0
        self.checkpoint_step: int | None = None  # the step the checkpoint on disk resumes at
        self.images_seen = 0
        self.train_seconds = 0.0
        self.log: list[dict] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.scaler = None

    # The service methods call at hook time (TrainContext.encode_training_set).
    def encode_training_set(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        view: str = "clean",
        *,
        batch_size: int | None = None,
        seed_key: int = 0,
    ) -> torch.Tensor:
        """`fn` over every training image, batched and without grad; outputs stacked in index order.

        `view="augmented"` uses one view of the training preset, each image augmented under a seed
        derived from (run seed, `seed_key`, index): pass e.g. the phase number as `seed_key` so a
        resumed run recomputes exactly the same features.
        """
        if view not in ("clean", "augmented"):
            raise ValueError(f"view must be 'clean' or 'augmented', got {view!r}")
        dataset = self.data.clean if view == "clean" else self.data.augmented
        n = len(dataset)
        seeds = derive_seeds(self.seed, STREAM_ENCODE, seed_key, count=n)
        keys = list(zip(range(n), seeds.tolist(), strict=True))
        loader = DataLoader(
            SeededItems(dataset),
            batch_size=batch_size or 2 * self.cfg.batch_size,
            sampler=keys,
            num_workers=self.cfg.num_workers,
            pin_memory=self.cuda,
            persistent_workers=False,
        )
        outputs = []
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        bar = tqdm(
            loader,
            desc=f"encode training set ({view})",
            leave=False,
            disable=not self.progress or self.rank != 0,
        )
        with torch.no_grad(), self._autocast():
            for images, _, _ in bar:
                images = images.to(self.device, non_blocking=self.cuda, memory_format=fmt)
                outputs.append(fn(images).float())
        return torch.cat(outputs)

    def _autocast(self):
        return autocast(self.amp_dtype)

    def _progress_fraction(self, step: int) -> float:
        if self.total_steps is not None:
            return step / max(self.total_steps, 1)
        return self.train_seconds / self.cfg.budget_value

    def _budget_left(self) -> bool:
        if self.total_steps is not None:
            return self.step < self.total_steps
        return self.train_seconds < self.cfg.budget_value

    def _build_optimization(self) -> None:
        self.optimizer = build_optimizer(self.method, self.cfg)
        cfg = self.cfg
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(
                step,
                self._progress_fraction(step),
                warmup_steps=cfg.warmup_steps,
                schedule=cfg.schedule,
            ),
        )
        if self.amp_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler("cuda")

    def _check_finite_weights(self) -> None:
        """A checkpoint must be good: never replace the last one with NaN/inf weights or buffers."""
        for name, tensor in self.method.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise self._diverged(f"finite but left NaN/inf in {name}", self.step - 1)

    def save_checkpoint(self) -> None:
        self._check_finite_weights()
        if self.rank == 0:
            # The log first: a kill between the two leaves a log that the resume truncates to
            # the older checkpoint, never a checkpoint whose log lines are missing.
            _write_log(self.log_path, self.log)
            state = {
                "format": CHECKPOINT_FORMAT,
                "step": self.step,
                "images_seen": self.images_seen,
                "train_seconds": self.train_seconds,
                "method": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng_state(),
            }
            atomic_torch_save(state, self.checkpoint_path)
        self.checkpoint_step = self.step
        if self.world_size > 1:
            dist.barrier()

    def load_checkpoint(self) -> dict | None:
        if not self.checkpoint_path.is_file():
            return None
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except Exception as err:
            raise HarnessError(
                f"{self.checkpoint_path}: cannot load the checkpoint ({_load_failure(err)}); "
                "delete it to restart training from scratch"
            ) from err
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise HarnessError(
                f"{self.checkpoint_path}: checkpoint format {found!r}, this version reads "
                f"{CHECKPOINT_FORMAT}: it was written by an incompatible version of isc-bench; "
                "delete it to restart training from scratch, or use another --out"
            )
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step = self.checkpoint_step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        self.train_seconds = float(state["train_seconds"])
        # The log always ends where its checkpoint does: later lines belong to lost steps.
        self.log = [line for line in read_log(self.log_path) if line["step"] < self.step]
        return state

    def _context(self) -> TrainContext:
        return TrainContext(
            encode_training_set=self.encode_training_set,
            total_steps=self.total_steps if self.total_steps is not None else 0,
            progress=self.progress,
        )

    def _train_step(self, batch: TrainBatch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        with self._autocast():
            loss, logs = self.method.training_step(batch, step)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        average_gradients(list(self.method.parameters()), self.world_size)
        return loss, logs

    def _diverged(self, loss_value: float | str, step: int) -> TrainingDiverged:
        last = (
            f"the last good checkpoint ({self.checkpoint_path}, step {self.checkpoint_step}) is kept"
            if self.checkpoint_step is not None
            else "no checkpoint was written yet"
        )
        return TrainingDiverged(
            f"training diverged: the loss of method {self.method.name!r} is {loss_value} at step "
            f"{step}; stopped, {last}. Lower train.lr or raise the method's temperature, then run "
            "again (a changed config starts a new run directory)"
        )

    def fit(self) -> TrainResult:
        method = self.method
        method.to(self.device)
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        n_train = len(self.data.stream)
        if self.cfg.batch_size > n_train:
            raise ConfigError(
                f"train.batch_size ({self.cfg.batch_size}) is larger than the training set "
                f"({n_train} images)"
            )
        self._build_optimization()
        checkpoint = self.load_checkpoint()
        resumed_from = self.step if checkpoint is not None else None
        ctx = self._context()
        method.train()
        method.on_train_start(ctx, self.step)
        if checkpoint is not None:
            # After on_train_start, so hooks that draw random numbers do not shift the stream.
            set_rng_state(checkpoint["rng"])
            del checkpoint

        sampler = StepBatchSampler(
            n_train,
            self.cfg.batch_size,
            self.seed,
            start_step=self.step,
            end_step=self.total_steps,
            rank=self.rank,
            world_size=self.world_size,
        )
        loader = DataLoader(
            SeededItems(self.data.stream),
            batch_sampler=sampler,
            num_workers=self.cfg.num_workers,
            pin_memory=self.cuda,
            # A dedicated generator: creating the iterator must not consume the global torch RNG.
            generator=torch.Generator().manual_seed(
                int(derive_seeds(self.seed, STREAM_LOADER)[0])
            ),
            persistent_workers=False,
        )
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=f"train {method.name}",
            unit="step",
            disable=not self.progress or self.rank != 0,
        )
        last_loss = None
        since_checkpoint = 0
        try:
            if self._budget_left():
                batches = iter(loader)
            while self._budget_left():
                started = time.perf_counter()
                batch = _to_device(next(batches), self.device, self.channels_last)
                step = self.step
                lr = self.optimizer.param_groups[0]["lr"]
                loss, logs = self._train_step(batch, step)
                loss_value = _mean_across_ranks(float(loss.detach()), self.world_size, self.device)
                if not math.isfinite(loss_value):
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.rank == 0:  # the log shows where it went wrong; resume truncates it
                        _write_log(
                            self.log_path, [*self.log, {"step": step, "loss": None, "lr": lr}]
                        )
                    raise self._diverged(loss_value, step)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    try:
                        self.optimizer.step()
                    except RuntimeError as err:  # e.g. AdamW's lr / bias correction past float max
                        if "overflow" not in str(err):
                            raise
                        raise self._diverged(
                            f"finite, but the optimizer step overflowed ({err})", step
                        ) from None
                self.optimizer.zero_grad(set_to_none=True)
                method.on_step_end(ctx, step)
                self.step += 1
                self.images_seen += self.cfg.batch_size
                elapsed = time.perf_counter() - started
                self.train_seconds += elapsed
                self.scheduler.step()
                last_loss = loss_value
                if step % self.cfg.log_every == 0 or not self._budget_left():
                    self.log.append(
                        {
                            # Method logs first: the trainer's loss (mean over ranks) wins.
                            **{k: float(v) for k, v in logs.items()},
                            "step": step,
                            "loss": loss_value,
                            "lr": lr,
                            "images_per_s": self.cfg.batch_size / max(elapsed, 1e-9),
                        }
                    )
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}")
                since_checkpoint += 1
                if since_checkpoint >= self.cfg.checkpoint_every and self._budget_left():
                    self.save_checkpoint()
                    since_checkpoint = 0
        finally:
            bar.close()
        if since_checkpoint or not self.checkpoint_path.is_file():
            self.save_checkpoint()
        if last_loss is None and self.log:
            last_loss = self.log[-1]["loss"]
        return TrainResult(
            steps=self.step,
            images_seen=self.images_seen,
            train_seconds=self.train_seconds,
            negatives_per_step=int(method.negatives_per_step()),
            resumed_from=resumed_from,
            final_loss=last_loss,
            log=list(self.log),
        )


def train(
    method: Method,
    data: TrainData,
    cfg: TrainConfig,
    *,
    seed: int,
    run_dir: str | Path,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TrainResult:
    """Train `method` until the budget is spent, resuming from `run_dir`'s checkpoint if any."""
    trainer = Trainer(
        method, data, cfg, seed=seed, run_dir=run_dir, device=device, progress=progress
    )
    return trainer.fit()
