"""Typed run configuration: dataclasses with the defaults, a YAML file, `--set` overrides.

The dataclasses below (and each method's registered config class) are the one source of defaults:
together they are the default protocol, sized so that each method's full run (training,
descriptors, search and metrics; the generated benchmark is cached after the first run) stays well
inside 10 minutes on a 2-core CPU. Every method runs under the same protocol sections; compare
methods by changing a protocol value for all of them (a `--config` file or `--set`), never per
method. `python -m harness methods --config NAME` prints the resolved result.

Precedence, lowest first: the defaults, an explicit `--config FILE` (e.g. a larger protocol for
GPUs and DISC21), then `--set key=value` overrides and the `--seed` / `--data` flags. Every layer
is validated against the dataclasses (by harness.typed_yaml): an unknown key is an error naming the
key and the valid ones, and a value of the wrong type is an error naming the key and the expected
type. A run directory's `config.yaml` is written and read back by harness.run_dir.

The method's own options live in one section named after the method (`qk: {phase_steps: 50}`),
typed by the config class the method registered (`methods.get_method(name).config_cls`). A
`--config` file may hold several methods' sections (a protocol such as configs/protocols/disc21.yaml
serves every method): each is checked, and a run reads its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.errors import ConfigError
from harness.paths import check_plain_name
from harness.typed_yaml import apply_override, build_dataclass, coerce, load_yaml, parse_override


@dataclass
class DataConfig:
    spec: str = (
        "synthetic"  # "synthetic" (the generated mini-DISC, cached) or a benchmark directory
    )
    synth: dict[str, Any] = field(default_factory=dict)  # overrides of harness.data.SynthParams
    # Skip bad images met while decoding instead of failing: a query or reference gets no
    # descriptor (its ground-truth rows are dropped), a training image is replaced by the next good
    # one; listed in the run's skipped_images.tsv, counted in the record (docs/data.md).
    skip_bad_images: bool = False
    workers: int = 2  # DataLoader workers for descriptor extraction
    # JPEG decoding at reduced scale (libjpeg's 1/2, 1/4, 1/8) down to the smallest scale that
    # still has the pixels the transform uses: model.image_size a side for descriptors, and for
    # training views the side at which the augmentation's tightest crop still spans image_size
    # (harness.augment.training_source_side). Part of the protocol, the same for every method: it
    # changes pixels slightly (docs/data.md gives the measured difference). "full": every image
    # decoded at full size. The generated mini-DISC (96 px) decodes in full either way.
    decode: Literal["draft", "full"] = "draft"


@dataclass
class ModelConfig:
    # Any timm model name. resnet10t: resnet18-class, ~2x faster than resnet18 on CPU.
    backbone: str = "resnet10t"
    # The backbone's starting weights (harness/weights.py); by default a random init from the seed.
    # Every competitive ISC 2021 entry started from pretrained weights, so a fair comparison must be
    # able to. A file is part of the protocol: every method's backbone (both encoders of MoCo and
    # QK) loads the same tensors, and the run id hashes its sha256, so a changed file is a new run.
    weights: str | None = None  # PATH of a state_dict (.pth/.pt, or .safetensors) of `backbone`
    # false: load the tensors that fit and list the rest in the record, instead of an error
    weights_strict: bool = True
    # timm's published weights for `backbone` (downloaded: needs the internet or timm's cache);
    # offline, save them once as a file and pass model.weights instead
    pretrained: bool = False
    embedding_dim: int = 128  # descriptor dimension (<= 256 for the ISC descriptor track)
    image_size: int = 64
    # BatchNorm in every method's projection head (ours, measured: at 150 steps it lifted the
    # memory bank from 0.32 to 0.42 µAP and QK from 0.35 to 0.38; see methods/backbone.py).
    head_batch_norm: bool = True
    # Global pooling of the backbone's feature map for every method: timm's average, or GeM (p = 3,
    # SSCD's and the ISC 2021 winner's; it weights the strongest activations more than the mean
    # does). A protocol value, not an SSCD option, because it changes every method's backbone.
    pooling: Literal["avg", "gem"] = "avg"


@dataclass
class AugmentConfig:
    # A name from harness.augment (copy-edit: AugLy copy edits + a mild SimCLR view); the record
    # lists its full parameters.
    preset: str = "copy-edit"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    batch_size: int = 64  # global batch (split evenly across DDP ranks)
    # AdamW by default (ours): on the mini-DISC at 150 steps SGD (lr 0.06, momentum 0.9) left QK's
    # loss at log N for its whole first phase (raw µAP 0.25); AdamW lr 1e-3 gave QK 0.35 and
    # SimCLR 0.39 (SGD: 0.35), measured side by side.
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.05
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 10  # linear warm-up from lr/warmup_steps, then the schedule
    budget_kind: Literal["steps", "images", "seconds"] = "steps"
    # Steps, training images seen (views not counted), or seconds. Equal cost = equal optimizer
    # steps at the same global batch; 500 steps take 4-8 min per method on 2 cores.
    budget_value: float = 500.0
    # Augmented views made per training image; null: as many as the method's training step
    # reads (`views_per_image`: 2 for SimCLR and MoCo, 1 for QK and the memory bank). A view
    # nobody reads would cost a full copy-edit augmentation per image for nothing.
    n_views: int | None = None
    checkpoint_every: int = 50  # steps; a checkpoint is also written at the end of training
    log_every: int = 1  # steps between lines of train_log.jsonl
    amp: bool = True  # mixed precision (CUDA only; CPU always trains in float32)
    channels_last: bool = True  # CUDA only
    num_workers: int = 2  # DataLoader workers for the training stream
    # Torch's intra-op threads; null: one per CPU this process may use (its affinity, which SLURM's
    # cpus_per_task and a local sweep's side-by-side jobs set). The record says what was used.
    threads: int | None = None
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    # TensorBoard event files in the run directory's tensorboard/ (rank 0), next to
    # train_log.jsonl, which stays the machine-readable log: watch with `tensorboard --logdir`.
    tensorboard: bool = True


@dataclass
class EvalConfig:
    max_results: int | None = None  # ISC global candidate cap; None = 10 x number of queries
    knn: int | None = None  # per-query kNN instead of the global cap (not the ISC rule)
    metric: Literal["l2", "ip"] = "l2"
    # The "normalized" row: score normalization with training-set descriptors,
    # score' = <q, r> - beta * s(q), s(q) the n-th ("nth", isc2021: beta 2, n 10) or the mean of the
    # n nearest ("mean", SSCD: beta 1, n 3) training scores of the query. Our default is SSCD's:
    # on the generated mini-DISC isc2021's setting cut the untrained baseline's µAP from 0.37 to
    # 0.04 (SSCD's: 0.33), as un-whitened descriptors of similar scenes are all close.
    score_norm: bool = True
    score_norm_beta: float = 1.0
    score_norm_n: int = 3
    score_norm_reduction: Literal["nth", "mean"] = "mean"
    batch_size: int = 128  # images per batch when extracting descriptors
    # Periodic validation (harness/validation.py): every `every` training steps (and before the
    # first and after the last), µAP and recall@1 of the current model on a fixed subset of the
    # benchmark drawn from the run seed: `val_queries` queries and `val_references` references
    # (the true matches of those queries first). Off (null) on the CPU default; one pass of the
    # default sizes costs about 2 % of a default run. It never changes training.
    every: int | None = None
    val_queries: int = 250
    val_references: int = 500
    # The stale-negatives measure (harness/consistency.py): every `consistency_every` steps, the
    # stored negatives of `consistency_batches` earlier training batches against what the key
    # side computes for the same inputs now (null: off).
    consistency_every: int | None = None
    consistency_batches: int = 4


@dataclass
class RunConfig:
    method: str
    method_config: Any  # the registered config dataclass of `method`
    seed: int = 0
    run_id: str | None = None  # None: "<method>-<hash of the config>-s<seed>"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "augment": AugmentConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}
TOP_LEVEL = ("method", "seed", "run_id")


def _check_override_key(path: list[str], method: str) -> None:
    known_top = {*TOP_LEVEL, *SECTIONS, method}
    if path[0] not in known_top:
        raise ConfigError(
            f"--set {'.'.join(path)}: unknown key {path[0]!r}; valid top-level keys: "
            f"{', '.join(sorted(known_top))}"
        )
    if path[0] == "method":
        raise ConfigError("--set method=...: choose the method with --method")


def _method_entry(method: str):
    import methods  # noqa: F401  (importing the package registers every method)
    from methods.registry import get_method

    return get_method(method)


def resolve_config(
    method: str,
    *,
    config_path: str | Path | None = None,
    overrides: typing.Iterable[str] = (),
    seed: int | None = None,
    data: str | None = None,
) -> RunConfig:
    """The run configuration for `method`: defaults, the YAML file, then overrides (module doc)."""
    _method_entry(method)  # an unknown method fails here, listing the registered ones
    tree: dict[str, Any] = {}
    if config_path is not None:
        tree = _for_method(load_yaml(Path(config_path)), method, config_path)
    if tree.get("method", method) != method:
        raise ConfigError(
            f"{config_path}: the file is for method {tree['method']!r}, but --method is {method!r}"
        )
    tree["method"] = method
    if config_path is not None:
        try:  # the defaults are valid, so an error here is the file's: name it
            # A stand-in run id: the real one hashes model.weights, which --set may still replace
            # (a protocol's weights file need not exist where another is passed).
            config_from_dict({"run_id": "config-file-check", **tree})
        except ConfigError as err:
            raise ConfigError(f"{config_path}: {err}") from None
    for text in overrides:
        path, value = parse_override(text, flag="--set", usage="KEY=VALUE, e.g. --set train.lr=0.1")
        _check_override_key(path, method)
        apply_override(tree, path, value, where=f"--set {'.'.join(path)}")
    if seed is not None:
        tree["seed"] = seed
    if data is not None:
        tree.setdefault("data", {})["spec"] = data
    return config_from_dict(tree)


def _for_method(tree: dict[str, Any], method: str, config_path: str | Path) -> dict[str, Any]:
    """A --config file's tree for `method`. A protocol file (configs/protocols/) serves every
    method, so it may hold the sections of other registered methods: each is checked against its
    method's config class, so a typo fails for every run alike, then left out (it neither shapes
    this run nor its id)."""
    if not isinstance(tree, dict):
        return tree
    from methods.registry import get_method, list_methods

    kept = {}
    for key, value in tree.items():
        if key != method and key not in (*TOP_LEVEL, *SECTIONS) and key in list_methods():
            try:
                build_dataclass(get_method(key).config_cls, value or {}, key)
            except ConfigError as err:
                raise ConfigError(f"{config_path}: {err}") from None
            continue
        kept[key] = value
    return kept


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """A RunConfig from its plain-dict form (as in config.yaml); validates every key and type."""
    if not isinstance(d, dict) or not isinstance(d.get("method"), str):
        raise ConfigError("a run config needs a top-level `method: NAME`")
    method = d["method"]
    entry = _method_entry(method)
    valid = {*TOP_LEVEL, *SECTIONS, method}
    unknown = sorted(set(d) - valid)
    if unknown:
        other_methods = [k for k in unknown if _is_registered(k)]
        hint = (
            f" (the section {other_methods[0]!r} belongs to another method; this run is {method!r})"
            if other_methods
            else ""
        )
        raise ConfigError(
            f"unknown key {', '.join(unknown)}{hint}; valid top-level keys: {', '.join(sorted(valid))}"
        )
    sections = {
        name: build_dataclass(cls, d.get(name) or {}, name) for name, cls in SECTIONS.items()
    }
    method_config = build_dataclass(entry.config_cls, d.get(method) or {}, method)
    seed = coerce(d.get("seed", 0), int, "seed")
    run_id = coerce(d.get("run_id"), str | None, "run_id")
    cfg = RunConfig(
        method=method, method_config=method_config, seed=seed, run_id=run_id, **sections
    )
    needed = entry.cls.views_per_image
    if cfg.train.n_views is None:
        cfg.train.n_views = max(needed, 1)
    elif cfg.train.n_views < needed:
        raise ConfigError(
            f"train.n_views is {cfg.train.n_views}, but {method} reads {needed} augmented views "
            "per image; raise it or leave it null"
        )
    validate(cfg)
    if cfg.run_id is None:
        cfg.run_id = default_run_id(cfg)
    return cfg


def _is_registered(name: str) -> bool:
    from methods.registry import list_methods

    return name in list_methods()


def validate(cfg: RunConfig) -> None:
    """Reject values no run can use; each message names the key."""
    if cfg.run_id is not None:
        check_plain_name(cfg.run_id, "run_id", "--out")
    t = cfg.train
    if t.budget_value <= 0:
        raise ConfigError(
            f"train.budget_value must be > 0 (a budget of {t.budget_value:g} {t.budget_kind} trains "
            "nothing); use --method none for an untrained baseline"
        )
    if t.budget_kind == "steps" and not float(t.budget_value).is_integer():
        raise ConfigError(f"train.budget_value: a steps budget must be whole, got {t.budget_value}")
    positive = {
        "train.batch_size": t.batch_size,
        "train.checkpoint_every": t.checkpoint_every,
        "train.log_every": t.log_every,
        "train.n_views": t.n_views,
        "model.embedding_dim": cfg.model.embedding_dim,
        "model.image_size": cfg.model.image_size,
        "eval.batch_size": cfg.eval.batch_size,
        "eval.score_norm_n": cfg.eval.score_norm_n,
        "eval.val_queries": cfg.eval.val_queries,
        "eval.val_references": cfg.eval.val_references,
        "eval.consistency_batches": cfg.eval.consistency_batches,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    if t.batch_size < 2:
        raise ConfigError(
            f"train.batch_size must be >= 2, got {t.batch_size}: a contrastive batch needs "
            "negatives, and BatchNorm in the projection head needs 2 images per batch"
        )
    for key, value in {
        "train.lr": t.lr,
        "train.warmup_steps": t.warmup_steps,
        "train.num_workers": t.num_workers,
        "data.workers": cfg.data.workers,
        "train.weight_decay": t.weight_decay,
    }.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if cfg.model.embedding_dim > 256:
        raise ConfigError(
            f"model.embedding_dim is {cfg.model.embedding_dim}; the ISC descriptor track allows at most 256"
        )
    if cfg.model.weights is not None and cfg.model.pretrained:
        raise ConfigError(
            "model.weights and model.pretrained are exclusive: set model.pretrained=false to start "
            "from the file, or model.weights=null for timm's published weights"
        )
    if cfg.eval.max_results is not None and cfg.eval.knn is not None:
        raise ConfigError("eval.max_results and eval.knn are exclusive: set one of them to null")
    if t.threads is not None and t.threads <= 0:
        raise ConfigError(f"train.threads must be > 0 or null, got {t.threads}")
    for key in ("max_results", "knn", "every", "consistency_every"):
        value = getattr(cfg.eval, key)
        if value is not None and value <= 0:
            raise ConfigError(f"eval.{key} must be > 0 or null, got {value}")
    if cfg.data.synth:
        _check_synth_keys(cfg.data.synth)


def _check_synth_keys(synth: dict[str, Any]) -> None:
    try:
        from harness.data.synth import SynthParams
    except ImportError:  # the generator is optional for runs on a real benchmark
        return
    valid = {f.name for f in dataclasses.fields(SynthParams)}
    unknown = sorted(set(synth) - valid)
    if unknown:
        raise ConfigError(
            f"unknown key {', '.join(f'data.synth.{k}' for k in unknown)}; valid keys in "
            f"data.synth: {', '.join(sorted(valid))}"
        )


# --- serialization -----------------------------------------------------------------------------


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain-dict form (YAML/JSON safe); `config_from_dict(config_to_dict(c)) == c`."""
    out: dict[str, Any] = {"method": cfg.method, "seed": cfg.seed, "run_id": cfg.run_id}
    for name in SECTIONS:
        out[name] = dataclasses.asdict(getattr(cfg, name))
    out[cfg.method] = dataclasses.asdict(cfg.method_config)
    return out


def config_hash(cfg: RunConfig) -> str:
    """Short hash of everything that shapes the result except the seed and the run id."""
    d = config_to_dict(cfg)
    d.pop("seed")
    d.pop("run_id")
    if cfg.model.weights is not None:  # another file at the same path is another run
        from harness.weights import weights_sha256

        d["model"]["weights_sha256"] = weights_sha256(cfg.model.weights)
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def default_run_id(cfg: RunConfig) -> str:
    return f"{cfg.method}-{config_hash(cfg)}-s{cfg.seed}"


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
