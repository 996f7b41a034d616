"""The one trainer shared by every method: same data stream, optimizer, schedule, budget and checkpoints.

`train` runs until the budget is spent, saving `run_dir`'s checkpoint every `checkpoint_every`
steps and at the end, and resumes from it if there is one: the resumed run sees the same batches
and random numbers, and ends with the same weights and log, as an uninterrupted run. A NaN/inf loss
stops it (`TrainingDiverged`) and keeps the last good checkpoint.

A plain PyTorch loop rather than PyTorch Lightning: the methods' call order (methods/base.py) has
hooks Lightning does not have (QK's per-phase re-freezing and key caching), bit-for-bit resume needs
full control of the RNG and data order, and submitit already owns SLURM signals (Lightning handling
them too is a known source of lost jobs).

Its parts: harness/seeding.py (the data stream and every seed), harness/checkpoint.py (the file,
safe loading, the saved RNG state), harness/device.py (ranks and gradient averaging, mixed
precision, batches onto the device), harness/optimization.py (optimizer, learning-rate schedule,
steps of a budget), harness/encode.py (the training set encoded for the methods' hooks).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from harness.atomic import atomic_write_text
from harness.checkpoint import (
    read_checkpoint,
    restore_components,
    set_rng_state,
    write_checkpoint,
)
from harness.config import TrainConfig
from harness.device import (
    amp_dtype,
    autocast,
    average_gradients,
    batch_to_device,
    dist_info,
    loader_workers,
    mean_across_ranks,
)
from harness.encode import encode_dataset
from harness.errors import ConfigError, HarnessError
from harness.monitor import Monitors, negative_probe, preserved_state, tensorboard_writer
from harness.optimization import build_optimizer, build_scheduler, total_steps_for
from harness.run_dir import CHECKPOINT_PATH, CURVE_FILENAME, LOG_FILENAME
from harness.seeding import STREAM_LOADER, SeededItems, StepBatchSampler, derive_seeds
from methods.base import Method, TrainBatch, TrainContext


class TrainingDiverged(HarnessError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
    # Validation and stale-negatives points (harness/monitor.py), in step order.
    curve: list[dict] = field(default_factory=list)
    # Wall-clock the processes before this one spent, up to the checkpoint it resumed from (None:
    # not resumed, or a checkpoint that did not carry it); the record adds it to its timings.
    earlier_wall_seconds: float | None = None


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, lines: list[dict]) -> None:
    """One JSON object per line, written atomically (train_log.jsonl, curve.jsonl)."""
    atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in lines))


def _scalar(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
        monitors: Monitors | None = None,
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
        self.curve_path = self.run_dir / CURVE_FILENAME
        self.monitors = monitors or Monitors()
        self.curve: list[dict] = []
        self.writer = None  # TensorBoard, rank 0 only (opened in fit)
        self.context = TrainContext(
            encode_training_set=self.encode_training_set,
            total_steps=self.total_steps if self.total_steps is not None else 0,
            progress=progress,
        )
        self.step = 0
        self.checkpoint_step: int | None = None  # the step the checkpoint on disk resumes at
        self.images_seen = 0
        self.train_seconds = 0.0
        self.wall_started = time.perf_counter()
        self.earlier_wall_seconds: float | None = None
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
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`fn` over every training image (or the sorted `indices` alone), batched and without
        grad; outputs stacked in index order. `view="augmented"` uses one view of the training
        preset, each image augmented under a seed derived from (run seed, `seed_key`, index):
        pass e.g. the phase number as `seed_key` so a resumed run recomputes exactly the same
        features."""
        if view not in ("clean", "augmented"):
            raise ValueError(f"view must be 'clean' or 'augmented', got {view!r}")
        return encode_dataset(
            self.data.clean if view == "clean" else self.data.augmented,
            fn,
            seed=self.seed,
            seed_key=seed_key,
            batch_size=batch_size or 2 * self.cfg.batch_size,
            num_workers=loader_workers(self.cfg.num_workers, "train.num_workers"),
            device=self.device,
            channels_last=self.channels_last,
            amp_dtype=self.amp_dtype,
            desc=f"encode training set ({view})",
            progress=self.progress and self.rank == 0,
            rank=self.rank,
            world_size=self.world_size,
            indices=indices,
        )

    # --- the loop -----------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        self._place_method()
        self._build_optimization()
        resumed_from = self._resume()
        self._open_tensorboard(resumed_from)
        loader = self._stream()
        bar = self._progress_bar()
        last_loss = None
        since_checkpoint = 0
        try:
            if resumed_from is None:
                self._measure(last=not self._budget_left())  # the curve's point before training
            # Iterating starts the loader's workers: not for a run whose budget is already spent.
            batches = iter(loader) if self._budget_left() else None
            while self._budget_left():
                last_loss = self._step(batches, bar)
                since_checkpoint += 1
                self._measure(last=not self._budget_left())
                if since_checkpoint >= self.cfg.checkpoint_every and self._budget_left():
                    self.save_checkpoint()
                    since_checkpoint = 0
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
        if since_checkpoint or not self.checkpoint_path.is_file():
            self.save_checkpoint()
        return self._result(resumed_from, last_loss)

    def _open_tensorboard(self, resumed_from: int | None) -> None:
        if self.monitors.tensorboard and self.rank == 0:
            self.writer = tensorboard_writer(self.run_dir, purge_step=resumed_from)

    def _measure(self, *, last: bool) -> None:
        """A curve point after `self.step` steps when validation or the stale-negatives measure
        is due (rank 0; harness/monitor.py). The training state is untouched."""
        validate, consistency = self.monitors.due(self.step, last=last)
        if self.rank != 0 or not (validate or consistency):
            return
        if self.curve and self.curve[-1]["step"] == self.step:
            return  # already measured here (a resumed run whose budget was spent)
        point = {
            "step": self.step,
            "images_seen": self.images_seen,
            "train_seconds": round(self.train_seconds, 3),
        }
        measured: dict = {}
        with preserved_state(self.method):
            if validate:
                measured.update(self.monitors.validate(self.method))
            if consistency:
                probe = negative_probe(self, self.step, self.monitors.consistency_batches)
                figures = self.method.stale_negatives(probe) or {}
                measured.update({f"negatives/{k}": v for k, v in figures.items()})
        if not measured:  # a method without stored negatives, and no validation due
            return
        point.update(measured)
        self.curve.append(point)
        self._tensorboard(point, skip=("step", "images_seen", "train_seconds"))

    def _place_method(self) -> None:
        """The method on the device, in the memory format of the batches; the batch size checked."""
        self.method.to(self.device)
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        n_train = len(self.data.stream)
        if self.cfg.batch_size > n_train:
            raise ConfigError(
                f"train.batch_size ({self.cfg.batch_size}) is larger than the training set "
                f"({n_train} images)"
            )

    def _build_optimization(self) -> None:
        self.optimizer = build_optimizer(self.method, self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self._progress_fraction)
        if self.amp_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler("cuda")

    def _resume(self) -> int | None:
        """Continue from the checkpoint if there is one, then start the method at the current step.
        Returns the step resumed from, or None for a fresh run."""
        checkpoint = self.load_checkpoint()
        self.method.train()
        self.method.on_train_start(self.context, self.step)
        if checkpoint is None:
            return None
        # After on_train_start, so hooks that draw random numbers do not shift the stream.
        set_rng_state(checkpoint["rng"])
        return self.step

    def _stream(self) -> DataLoader:
        """The training batches of this rank from the current step on (harness/seeding.py)."""
        sampler = StepBatchSampler(
            len(self.data.stream),
            self.cfg.batch_size,
            self.seed,
            start_step=self.step,
            end_step=self.total_steps,
            rank=self.rank,
            world_size=self.world_size,
        )
        return DataLoader(
            SeededItems(self.data.stream),
            batch_sampler=sampler,
            num_workers=loader_workers(self.cfg.num_workers, "train.num_workers"),
            pin_memory=self.cuda,
            # A dedicated generator: creating the iterator must not consume the global torch RNG.
            generator=torch.Generator().manual_seed(int(derive_seeds(self.seed, STREAM_LOADER)[0])),
            persistent_workers=False,
        )

    def _progress_bar(self) -> tqdm:
        return tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=f"train {self.method.name}",
            unit="step",
            disable=not self.progress or self.rank != 0,
        )

    def _step(self, batches: Iterator[dict], bar: tqdm) -> float:
        """One optimizer step on the next batch, timed from its loading; returns its loss (mean
        over ranks)."""
        started = time.perf_counter()
        batch = batch_to_device(next(batches), self.device, self.channels_last)
        step = self.step
        lr = self.optimizer.param_groups[0]["lr"]
        loss, logs = self._forward_backward(batch, step)
        loss_value = mean_across_ranks(float(loss.detach()), self.world_size, self.device)
        self._stop_unless_finite(loss_value, step, lr)
        self._optimizer_step(step)
        self.method.on_step_end(self.context, step)
        self.step += 1
        self.images_seen += self.cfg.batch_size
        elapsed = time.perf_counter() - started
        self.train_seconds += elapsed
        self.scheduler.step()
        if step % self.cfg.log_every == 0 or not self._budget_left():
            self._log_step(step, loss_value, lr, logs, elapsed)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}")
        return loss_value

    def _log_step(
        self, step: int, loss_value: float, lr: float, logs: dict[str, float], elapsed: float
    ) -> None:
        line = {
            # Method logs first: the trainer's loss (mean over ranks) wins.
            **{k: float(v) for k, v in logs.items()},
            "step": step,
            "loss": loss_value,
            "lr": lr,
            "images_per_s": self.cfg.batch_size / max(elapsed, 1e-9),
        }
        self.log.append(line)
        self._tensorboard({f"train/{k}": v for k, v in line.items() if k != "step"}, step=step)

    def _tensorboard(self, scalars: dict, *, step: int | None = None, skip=()) -> None:
        if self.writer is None:
            return
        step = self.step if step is None else step
        for key, value in scalars.items():
            if key not in skip and _scalar(value):
                self.writer.add_scalar(key if "/" in key else f"val/{key}", value, step)

    def _forward_backward(
        self, batch: TrainBatch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast(self.amp_dtype):
            loss, logs = self.method.training_step(batch, step)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        average_gradients(list(self.method.parameters()), self.world_size)
        return loss, logs

    def _stop_unless_finite(self, loss_value: float, step: int, lr: float) -> None:
        """Raise TrainingDiverged at a NaN/inf loss, before the optimizer step can spoil weights."""
        if math.isfinite(loss_value):
            return
        self.optimizer.zero_grad(set_to_none=True)
        if self.rank == 0:  # the log shows where it went wrong; resume truncates it
            write_jsonl(self.log_path, [*self.log, {"step": step, "loss": None, "lr": lr}])
        raise self._diverged(loss_value, step)

    def _optimizer_step(self, step: int) -> None:
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

    def _result(self, resumed_from: int | None, last_loss: float | None) -> TrainResult:
        if last_loss is None and self.log:  # no step left to do: the loss the log ended with
            last_loss = self.log[-1]["loss"]
        return TrainResult(
            steps=self.step,
            images_seen=self.images_seen,
            train_seconds=self.train_seconds,
            negatives_per_step=int(self.method.negatives_per_step()),
            resumed_from=resumed_from,
            final_loss=last_loss,
            log=list(self.log),
            curve=list(self.curve),
            earlier_wall_seconds=self.earlier_wall_seconds,
        )

    # --- budget -------------------------------------------------------------------------------

    def _progress_fraction(self, step: int) -> float:
        if self.total_steps is not None:
            return step / max(self.total_steps, 1)
        return self.train_seconds / self.cfg.budget_value

    def _budget_left(self) -> bool:
        if self.total_steps is not None:
            return self.step < self.total_steps
        return self.train_seconds < self.cfg.budget_value

    # --- checkpoint and divergence ------------------------------------------------------------

    def save_checkpoint(self) -> None:
        self._check_finite_weights()
        if self.rank == 0:
            # The log first: a kill between the two leaves a log that the resume truncates to
            # the older checkpoint, never a checkpoint whose log lines are missing.
            write_jsonl(self.log_path, self.log)
            write_jsonl(self.curve_path, self.curve)
            write_checkpoint(
                self.checkpoint_path,
                step=self.step,
                images_seen=self.images_seen,
                train_seconds=self.train_seconds,
                wall_seconds=(self.earlier_wall_seconds or 0.0)
                + time.perf_counter()
                - self.wall_started,
                method=self.method,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.scaler,
            )
        self.checkpoint_step = self.step
        if self.world_size > 1:
            dist.barrier()

    def load_checkpoint(self) -> dict | None:
        """Restore the state of `run_dir`'s checkpoint if any; returns it (its "rng" not yet set)."""
        state = read_checkpoint(self.checkpoint_path, self.device)
        if state is None:
            return None
        restore_components(
            state,
            self.checkpoint_path,
            method=self.method,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
        )
        self.step = self.checkpoint_step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        self.train_seconds = float(state["train_seconds"])
        if state.get("wall_seconds") is not None:
            self.earlier_wall_seconds = float(state["wall_seconds"])
        # The log always ends where its checkpoint does: later lines belong to lost steps.
        self.log = [line for line in read_log(self.log_path) if line["step"] < self.step]
        # A point at the checkpoint's step was measured before the checkpoint was written.
        self.curve = [p for p in read_log(self.curve_path) if p["step"] <= self.step]
        return state

    def _check_finite_weights(self) -> None:
        """A checkpoint must be good: never replace the last one with NaN/inf weights or buffers."""
        for name, tensor in self.method.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise self._diverged(f"finite but left NaN/inf in {name}", self.step - 1)

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


def train(method: Method, data: TrainData, cfg: TrainConfig, **options) -> TrainResult:
    """Train `method` until the budget is spent, resuming from `run_dir`'s checkpoint if any
    (`options`: Trainer's seed, run_dir, device, progress, monitors)."""
    return Trainer(method, data, cfg, **options).fit()
