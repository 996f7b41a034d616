"""What a run will cost, before it is submitted: the work counted from its config and the
benchmark's sizes (`run_work`), and that work in seconds at the throughput a calibration measured
(`estimate`, harness/calibration.py). `sweep --dry-run` prints both (harness/cost_report.py).

The model, stage by stage (each a stage of harness/pipeline.py), for a job of `world` processes
(one per GPU):
- training: steps x (per-device batch / the method's images/s x the loading slowdown); the
  processes share the global batch, so this assumes linear scaling over GPUs. QK adds its loss over
  the negatives it scores beyond the bench's training set, on every process (each one's loss sees
  all N keys).
- cache passes (QK at every phase start, the memory bank's first fill) and the final extraction:
  the images read and encoded at extraction's images/s, shared among the processes by whole
  batches (harness/sharding.py), so divided by their number.
- validation: rank 0 alone, at extraction's images/s, the other GPUs waiting.
- search: rank 0, queries x references x dimension at the bench's search rate (the normalized row
  adds queries x training images); left out without `search` rows.
Not modelled: process start, listing the benchmark (one directory scan per split on every process;
no image is opened until it is decoded, docs/data.md), building the model, and a resumed run's
repeated work since its last checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from harness.calibration import Calibration, CalibrationError
from harness.config import RunConfig
from harness.optimization import total_steps_for

SPLITS = ("queries", "references", "training")


@dataclass(frozen=True)
class BenchmarkSizes:
    queries: int  # those the ground truth lists (the runs leave the others out)
    references: int
    training: int
    source: str  # where the numbers come from, for the printout


def benchmark_sizes(
    spec: str, synth: dict, declared: dict[str, int] | None
) -> BenchmarkSizes | None:
    """The images per split of `data.spec`: the generator's parameters, the folder counted (names
    listed, nothing decoded), else the sweep file's `benchmark_sizes`; None when none applies."""
    if spec == "synthetic":
        from harness.data.synth import SynthParams

        params = SynthParams(**synth)
        return BenchmarkSizes(params.queries, params.references, params.training, "generated")
    root = Path(spec).expanduser()
    if root.is_dir():
        from harness.data.layout import load_benchmark

        started = time.perf_counter()
        bench = load_benchmark(root, check_images=False)
        seconds = time.perf_counter() - started
        return BenchmarkSizes(
            len(bench.queries),
            len(bench.references),
            len(bench.training),
            f"counted in {spec} ({seconds:.1f} s)",
        )
    if declared is not None:
        return BenchmarkSizes(
            *(declared[s] for s in SPLITS), f"the sweep file's benchmark_sizes ({spec} not here)"
        )
    return None


@dataclass(frozen=True)
class RunWork:
    """One run's work, counted from its config; image counts add up every process's reads."""

    method: str
    world: int  # processes (GPUs) of the job
    steps: int
    images_seen: int  # training images drawn (steps x global batch)
    negatives: int  # scored per step by QK (0 for the others)
    cache_passes: int  # passes over the training set (QK phase starts, memory-bank fill)
    cache_images: int  # images those passes read, all processes together
    validation_points: int
    validation_images: int
    extract_images: int  # final descriptors: queries, references, training images
    search_units: int  # queries x references x dimension over every search of the run

    @property
    def decoded_images(self) -> int:
        """JPEG decodes of the run: training, cache passes, validation and final extraction."""
        reads = self.images_seen + self.cache_images
        return reads + self.validation_images + self.extract_images

    @property
    def extractions(self) -> int:
        """Descriptors computed for evaluation: the final ones and every validation point's."""
        return self.extract_images + self.validation_images


def run_work(cfg: RunConfig, sizes: BenchmarkSizes, world: int) -> RunWork:
    trains = cfg.method != "none"
    steps = (total_steps_for(cfg.train) or 0) if trains else 0
    mc = cfg.method_config
    passes, negatives, per_pass = 0, 0, sizes.training
    if cfg.method == "qk":
        passes = math.ceil(steps / mc.phase_steps)
        negatives = mc.num_negatives or sizes.training
        per_pass = min(negatives, sizes.training)  # a phase start encodes its negatives alone
    elif cfg.method == "membank" and mc.bank_init == "encoder":
        passes = 1
    points = 0
    if cfg.eval.every is not None:
        points = steps // cfg.eval.every + 1 + (steps % cfg.eval.every != 0) if trains else 1
    val_q = min(cfg.eval.val_queries, sizes.queries)
    val_r = min(cfg.eval.val_references, sizes.references)
    d = cfg.model.embedding_dim
    searches = sizes.queries * sizes.references * d * (2 if cfg.eval.score_norm else 1)
    searches += sizes.queries * sizes.training * d * cfg.eval.score_norm
    return RunWork(
        method=cfg.method,
        world=world,
        steps=steps,
        images_seen=steps * cfg.train.batch_size,
        negatives=negatives,
        cache_passes=passes,
        cache_images=passes * per_pass,
        validation_points=points,
        validation_images=points * (val_q + val_r),
        extract_images=sizes.queries + sizes.references + sizes.training,
        search_units=searches + points * val_q * val_r * d,
    )


@dataclass(frozen=True)
class RunEstimate:
    """Seconds per stage of one run (module doc); `search` None when not calibrated."""

    train: float
    cache: float
    validation: float
    extract: float
    search: float | None
    qk_loss_extrapolated: bool = False  # QK's loss added from the `negatives` rows

    @property
    def total(self) -> float:
        return self.train + self.cache + self.validation + self.extract + (self.search or 0.0)


def estimate(work: RunWork, cfg: RunConfig, cal: Calibration) -> RunEstimate:
    """`work` in seconds at the calibration's throughput (module doc)."""
    step_s = 0.0
    extrapolated = False
    if work.steps:
        if work.method not in cal.train_images_per_s:
            raise CalibrationError(
                f"--calibration {cal.path}: no training figure for method {work.method!r}; make "
                "it anew with `python -m harness bench methods`, which measures every method"
            )
        per_device = cfg.train.batch_size / work.world
        step_s = per_device / cal.train_images_per_s[work.method] * cal.loading_slowdown
        extra = work.negatives - (cal.qk_bench_negatives or 0)
        if work.method == "qk" and extra > 0:
            dtype = "bf16" if cal.on_gpu and cfg.train.amp else "fp32"
            slope = cal.loss_per_negative(cfg.method_config.train_frozen_head, dtype)
            if slope is not None:
                # The loss over N scales with the batch only through its logits; the head over
                # the cache, which dominates at large N, does not. Taken at the bench's batch.
                step_s += slope * extra
                extrapolated = True
    ips = cal.extract_images_per_s
    return RunEstimate(
        train=work.steps * step_s,
        cache=work.cache_images / (ips * work.world),
        validation=work.validation_images / ips,
        extract=work.extract_images / (ips * work.world),
        search=None if cal.search_s_per_unit is None else work.search_units * cal.search_s_per_unit,
        qk_loss_extrapolated=extrapolated,
    )
