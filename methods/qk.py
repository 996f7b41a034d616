"""`qk`: QK iteration. A query model Q and a key model K are learned jointly against a very large
set of negatives by freezing one side's backbone and alternating Q- and K-optimization phases.

Only the paper's abstract is public; everything below that it does not state is OUR reading, and
each such choice is a config option (see QKConfig):
- Q and K are the same architecture (shared backbone factory + MLP head, with BatchNorm when the
  protocol's `model.head_batch_norm` is on; how that meets the chunked cache is said below).
- `init` "shared" (default) starts K as a copy of Q: the two sides begin in one embedding space, so
  asymmetric descriptors are meaningful from the first step (with "independent" random inits, a short
  budget leaves Q and K in unrelated spaces and asymmetric µAP near 0).
- Phases alternate every `phase_steps` steps, starting with `first_phase`. In a Q-phase the trained
  side is Q and the frozen side is K; in a K-phase the roles swap.
- At each phase start the frozen backbone (eval mode) encodes the negative set once (no grad,
  batched, progress bar from the trainer's `encode_training_set`) into a cache of `cache_dtype`,
  from the clean images by default (`cache_view`): queries are edited copies and references are
  originals, so the clean view is what K sees at evaluation. The cache is not checkpointed: it is
  recomputed at `on_train_start` after a resume, from the unchanged frozen backbone.
- Each step encodes the batch's first augmented view with the trained side and scores it against
  ALL N cached negatives with InfoNCE at `temperature`; the positive of image i is the frozen side's
  key of image i. With `train_frozen_head` (default) the frozen side's head is trained as well: it is
  applied to the cached features chunk by chunk inside the loss (methods/losses.py), so the keys are
  always current; without it the head is applied once per phase and keys are cached instead.
  With the protocol's head BatchNorm (`model.head_batch_norm`), the frozen head normalizes over
  the whole negative set when its activations fit `losses.DEFAULT_HEAD_MEMORY_MB` (the default
  5k-image set does), and over each chunk of `chunk_size` rows beyond that, like BatchNorm over
  mini-batches.
- `num_negatives` < training-set size draws a random subset per phase (from the run seed and the phase);
  only the subset is encoded at the phase start (10k negatives of DISC21's 1M cost 1% of a full
  pass); positives then come from the frozen side on the batch's clean images, and an image of the
  batch that is also in the subset appears among its own negatives (probability N / training-set
  size).
- Under multi-process training the ranks share the cache pass batch by batch and gather it
  (harness/sharding.py), so the cache is bit-identical everywhere and equal to one process's;
  gradients need no gather (each loss sees all N keys).
- `costs()` gives the record the cache's rows, width, dtype and bytes, and each phase start's
  seconds with their mean amortized over `phase_steps` (the phase starts of this process: a
  resumed run counts those since the resume).
- At evaluation (`describe_mode`): "query" (default) or "key" embeds both with one model;
  "asymmetric" embeds queries with Q and references with K.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import ConfigError, HarnessError
from methods.backbone import Encoder, set_trainable
from methods.base import (
    Method,
    MethodConfig,
    MethodContext,
    NegativeProbe,
    TrainBatch,
    TrainContext,
)
from methods.losses import bank_info_nce
from methods.registry import register_method

CACHE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CACHE_VIEWS = ("clean", "augmented")
DESCRIBE_MODES = ("asymmetric", "query", "key")
PHASES = ("q", "k")
INITS = ("shared", "independent")


@dataclass
class QKConfig(MethodConfig):
    temperature: float = 0.1
    phase_steps: int = 100  # ours: 5 phases (Q, K, Q, K, Q) in the default 500-step budget
    first_phase: str = "q"
    num_negatives: int | None = None  # None: the whole training set
    train_frozen_head: bool = True
    cache_dtype: str = "fp32"  # fp16/bf16 halve the cache (1M x 512 features: 2 GB -> 1 GB)
    cache_view: str = "clean"
    cache_batch_size: int | None = None  # batch size of the cache pass (None: the trainer's)
    chunk_size: int = 4096  # bank rows per chunk of logits: memory O(batch x chunk_size)
    # Ours: both queries and references described by Q. At the default 500 steps (seed 0) the
    # same checkpoint scored µAP 0.466 "query", 0.451 "key" and 0.380 "asymmetric" (queries by Q,
    # references by K); before the head's BatchNorm, asymmetric was near 0 (Q and K unaligned).
    describe_mode: str = "query"
    # "shared": K starts as a copy of Q; "independent": two random inits (only the heads differ
    # when model.weights or model.pretrained gives both backbones the same start)
    init: str = "shared"


def _check_cache_range(features: torch.Tensor, dtype: torch.dtype) -> None:
    """Raw backbone features are unbounded: in a float16 cache, values past 65504 would become
    inf and every loss NaN. Stop with the cause instead (bf16 has float32's range)."""
    if dtype != torch.float16:
        return
    largest = float(features.detach().abs().amax()) if features.numel() else 0.0
    limit = torch.finfo(torch.float16).max
    if not largest <= limit:  # also catches NaN
        raise HarnessError(
            f"qk: the frozen encoder's features reach {largest:.4g}, beyond float16's range "
            f"(±{limit:.0f}), so the fp16 key cache would overflow to inf; set "
            "qk.cache_dtype=bf16 (same memory, float32's range) or fp32"
        )


def _check(config: QKConfig, context: MethodContext) -> None:
    def fail(key, message):
        raise ConfigError(f"qk.{key} {message}")

    if not config.temperature > 0:
        fail("temperature", f"must be > 0, got {config.temperature}")
    if config.phase_steps < 1:
        fail("phase_steps", f"must be >= 1, got {config.phase_steps}")
    if config.first_phase not in PHASES:
        fail("first_phase", f"must be one of {PHASES}, got {config.first_phase!r}")
    if context.num_train_images < 1:
        raise ConfigError("qk needs the training-set size (num_train_images) for its negative set")
    if (
        config.num_negatives is not None
        and not 1 <= config.num_negatives <= context.num_train_images
    ):
        fail(
            "num_negatives",
            f"must be in [1, {context.num_train_images}] (the training-set size) or null, "
            f"got {config.num_negatives}",
        )
    if config.cache_dtype not in CACHE_DTYPES:
        fail("cache_dtype", f"must be one of {tuple(CACHE_DTYPES)}, got {config.cache_dtype!r}")
    if config.cache_view not in CACHE_VIEWS:
        fail("cache_view", f"must be one of {CACHE_VIEWS}, got {config.cache_view!r}")
    if config.describe_mode not in DESCRIBE_MODES:
        fail("describe_mode", f"must be one of {DESCRIBE_MODES}, got {config.describe_mode!r}")
    if config.init not in INITS:
        fail("init", f"must be one of {INITS}, got {config.init!r}")
    if config.chunk_size < 1:
        fail("chunk_size", f"must be >= 1, got {config.chunk_size}")
    if config.cache_batch_size is not None and config.cache_batch_size < 1:
        fail("cache_batch_size", f"must be >= 1 or null, got {config.cache_batch_size}")


@register_method("qk", QKConfig, display_name="QK iteration")
class QKIteration(Method):
    """QK iteration: Q/K phases, one side's backbone frozen and cached, all N negatives every step."""

    views_per_image = 1

    def __init__(self, config: QKConfig, context: MethodContext):
        super().__init__(config, context)
        _check(config, context)
        self.query = Encoder(context)
        self.key = Encoder(context)
        if config.init == "shared":
            self.key.load_state_dict(self.query.state_dict())
        # The cache is derived state (recomputed per phase), so it stays out of checkpoints.
        self.register_buffer("cache", torch.empty(0), persistent=False)
        self.register_buffer("cache_rows", torch.empty(0, dtype=torch.long), persistent=False)
        self.cache_phase: int | None = None  # the phase the cache belongs to
        self.phase_start_seconds: list[float] = []  # this process's, for costs()

    # --- phases -------------------------------------------------------------------------------
    def phase_of(self, step: int) -> int:
        return step // self.config.phase_steps

    def trained_side(self, phase: int) -> str:
        first = PHASES.index(self.config.first_phase)
        return PHASES[(first + phase) % 2]

    def _sides(self, phase: int) -> tuple[Encoder, Encoder]:
        """(trained, frozen) encoders of `phase`."""
        if self.trained_side(phase) == "q":
            return self.query, self.key
        return self.key, self.query

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cache_phase is not None:
            self._sides(self.cache_phase)[1].backbone.eval()  # frozen: eval-mode BN, as cached
        return self

    def on_train_start(self, ctx: TrainContext, step: int) -> None:
        self._start_phase(ctx, self.phase_of(step))

    def on_step_end(self, ctx: TrainContext, step: int) -> None:
        next_phase = self.phase_of(step + 1)
        if next_phase != self.cache_phase and step + 1 < ctx.total_steps:
            self._start_phase(ctx, next_phase)

    def _start_phase(self, ctx: TrainContext, phase: int) -> None:
        trained, frozen = self._sides(phase)
        set_trainable(trained, True)
        set_trainable(frozen.backbone, False)
        set_trainable(frozen.head, self.config.train_frozen_head)
        was_training = self.training
        frozen.eval()
        dtype = CACHE_DTYPES[self.config.cache_dtype]

        @torch.no_grad()
        def encode(images: torch.Tensor) -> torch.Tensor:
            features = frozen.backbone(images)
            if not self.config.train_frozen_head:
                features = F.normalize(frozen.head(features), dim=1)
            _check_cache_range(features, dtype)
            return features.to(dtype)

        started = time.perf_counter()
        rows = self._negative_rows(phase)
        subset = len(rows) < self.context.num_train_images
        # seed_key=phase: an augmented-view cache is the same when a resumed run recomputes it.
        cache = ctx.encode_training_set(
            encode,
            view=self.config.cache_view,
            batch_size=self.config.cache_batch_size,
            seed_key=phase,
            indices=rows if subset else None,
        )
        self.cache = cache.to(dtype).contiguous()  # every rank holds all rows (the pass gathers)
        self.cache_rows = rows.to(cache.device)
        self.cache_phase = phase
        self.train(was_training)
        if self.cache.is_cuda:
            torch.cuda.synchronize(self.cache.device)
        self.phase_start_seconds.append(time.perf_counter() - started)

    def _negative_rows(self, phase: int) -> torch.Tensor:
        total = self.context.num_train_images
        if self.config.num_negatives is None or self.config.num_negatives == total:
            return torch.arange(total)
        generator = self.context.generator("qk.negatives", phase)
        return torch.randperm(total, generator=generator)[: self.config.num_negatives].sort().values

    # --- training -----------------------------------------------------------------------------
    def training_step(self, batch: TrainBatch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        phase = self.phase_of(step)
        if self.cache_phase != phase:
            raise RuntimeError(
                f"qk: step {step} is in phase {phase} but the cache is for phase {self.cache_phase}; "
                "the trainer must call on_train_start and on_step_end"
            )
        trained, frozen = self._sides(phase)
        embedding = trained(batch.views[0])
        head = frozen.head if self.config.train_frozen_head else None
        common = dict(head=head, chunk_size=self.config.chunk_size, unit_keys=True)
        if len(self.cache_rows) == self.context.num_train_images:
            loss = bank_info_nce(
                embedding,
                self.cache,
                self.config.temperature,
                positive_index=batch.indices.to(embedding.device),
                **common,
            )
        else:
            images = batch.clean if batch.clean is not None else batch.views[0]
            with torch.no_grad():
                features = frozen.backbone(images)
            positive = F.normalize(frozen.head(features), dim=1)
            loss = bank_info_nce(
                embedding, self.cache, self.config.temperature, positive_key=positive, **common
            )
        return loss, {
            "loss": float(loss.detach()),
            "phase_q": float(self.trained_side(phase) == "q"),
        }

    # --- the stale-negatives measure ----------------------------------------------------------
    @torch.no_grad()
    def stale_negatives(self, probe: NegativeProbe) -> dict[str, float] | None:
        """Cached keys against what the frozen side computes for the same images now. The frozen
        backbone does not change within a phase and the cache is rebuilt at each phase start, so
        the cosine is 1 up to float error by construction. The keys are compared after the
        frozen head, applied to both sides in eval mode (one function for both; the loss applies
        it over the whole cache with batch statistics)."""
        if self.cache_phase is None:
            return None
        _, frozen = self._sides(self.cache_phase)
        sample = torch.randperm(len(self.cache_rows), generator=probe.generator)
        sample = sample[: probe.batches * probe.batch_size].sort().values
        images = probe.training_images(
            self.cache_rows[sample].cpu(), view=self.config.cache_view, seed_key=self.cache_phase
        )
        dtype = CACHE_DTYPES[self.config.cache_dtype]
        frozen.eval()  # as in the cache pass (harness/train.py restores the mode)
        fresh = frozen.backbone(images)
        if not self.config.train_frozen_head:
            fresh = F.normalize(frozen.head(fresh), dim=1)
        stored = self.cache[sample.to(self.cache.device)].float()
        fresh = fresh.to(dtype).float()
        if self.config.train_frozen_head:
            stored = frozen.head(stored)
            fresh = frozen.head(fresh)
        cosine = (F.normalize(stored, dim=1) * F.normalize(fresh, dim=1)).sum(1)
        age = float(probe.step - self.cache_phase * self.config.phase_steps)
        return {
            "consistency": float(cosine.mean()),
            "consistency_entries": float(len(cosine)),
            "negative_age": age,
            "negative_age_max": age,
        }

    # --- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def describe(self, images, role):
        mode = self.config.describe_mode
        use_query = mode == "query" or (mode == "asymmetric" and role == "query")
        encoder = self.query if use_query else self.key
        return encoder(images).float()

    def costs(self) -> dict | None:
        if self.cache_phase is None:
            return None
        seconds = self.phase_start_seconds
        mean = sum(seconds) / len(seconds) if seconds else None
        width = self.cache.shape[1] if self.cache.dim() == 2 else 0
        return {
            "cache": {
                "rows": len(self.cache_rows),
                "width": width,
                "dtype": self.config.cache_dtype,
                "bytes": self.cache.numel() * self.cache.element_size(),
            },
            "phase_starts": {
                "count": len(seconds),
                "seconds": [round(s, 3) for s in seconds],
                "mean_seconds": mean,
                "per_step_seconds": None if mean is None else mean / self.config.phase_steps,
                "images_per_s": None if not mean else len(self.cache_rows) / mean,
                "note": "this process's phase starts (a resumed run counts those since the resume)",
            },
        }

    def negatives_per_step(self, batch_size: int | None = None) -> int:
        n = self.config.num_negatives or self.context.num_train_images
        return n - 1 if n == self.context.num_train_images else n
