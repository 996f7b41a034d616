"""A run directory: the names of its files, and its lifecycle (created, resumed, finished).

<out>/<run_id>/
  config.yaml                 the resolved config, written first: it makes the directory a run
  record.json                 written once, atomically, as the run's last act: the run is finished
  train_log.jsonl             one JSON line per logged training step
  curve.jsonl                 validation and stale-negatives points (eval.every, consistency_every)
  tensorboard/                TensorBoard event files (train.tensorboard)
  checkpoints/last.pt         the trainer's state, to resume from
  descriptors.h5              query/reference/training descriptors
  predictions.csv             query_id,reference_id,score (raw descriptors)
  predictions_normalized.csv  the same after score normalization, when it ran
  pr_curve.npz                precision/recall curves
  skipped_images.tsv          path<TAB>reason of each bad image skipped (data.skip_bad_images);
                              appended by every process, a path may repeat: count unique paths
  .lock                       flock held by the one process running the run
  launch.json                 how the run was submitted (submitit launchers only)
  slurm/, submitit/           submitit's logs and pickles (SLURM, local/debug launchers)
"""

from __future__ import annotations

import fcntl
import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.atomic import atomic_write_text
from harness.config import RunConfig, config_from_dict, config_to_dict, dump_config
from harness.errors import ConfigError
from harness.paths import child_path
from harness.typed_yaml import load_yaml

CONFIG_FILENAME = "config.yaml"
RECORD_FILENAME = "record.json"
LOG_FILENAME = "train_log.jsonl"
CURVE_FILENAME = "curve.jsonl"  # validation and stale-negatives points (harness/monitor.py)
CHECKPOINT_PATH = Path("checkpoints") / "last.pt"
DESCRIPTORS_FILE = "descriptors.h5"
PREDICTIONS_FILE = "predictions.csv"
NORMALIZED_PREDICTIONS_FILE = "predictions_normalized.csv"
PR_CURVE_FILE = "pr_curve.npz"
SKIPPED_IMAGES_FILE = "skipped_images.tsv"  # harness.data.layout.append_skipped / read_skipped
LOCK_FILE = ".lock"
LAUNCH_FILE = "launch.json"
SLURM_LOG_DIR = "slurm"
SUBMITIT_LOG_DIR = "submitit"


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILENAME
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: no {CONFIG_FILENAME}")
    try:
        return config_from_dict(load_yaml(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def run_is_finished(run_dir: str | Path) -> bool:
    record = Path(run_dir) / RECORD_FILENAME
    if not record.is_file():
        return False
    try:
        return json.loads(record.read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def _incompatible_record(run_dir: Path) -> str | None:
    """Why the run's record.json is from another schema version, or None."""
    from harness.record import SCHEMA_VERSION

    try:
        record = json.loads((run_dir / RECORD_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "schema_version" not in record:
        return None
    version = record["schema_version"]
    if version == SCHEMA_VERSION:
        return None
    return f"schema_version {version!r}, this version reads {SCHEMA_VERSION}"


@contextmanager
def _not_running(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock (harness.pipeline.run_lock) while the block runs; refuse if another
    process holds it: discarding a run that is training would leave two processes on one run."""
    lock = run_dir / LOCK_FILE
    if not lock.is_file():
        yield
        return
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{run_dir}: this run is in progress in another process; --overwrite would "
                "train it twice. Wait for it to finish (or stop it), then pass --overwrite again"
            ) from None
        except OSError:  # a file system without locks: nothing to refuse on
            pass
        yield


def prepare_run_dir(cfg: RunConfig, out_root: str | Path, *, overwrite: bool = False) -> Path:
    """Create (or reuse, to resume) `out_root/<run_id>` and write its resolved `config.yaml`.

    A directory that holds a finished run (a complete `record.json`) is refused unless `overwrite`;
    an unfinished one is reused so the run resumes from its last checkpoint, provided its config is
    the same.
    """
    run_dir = child_path(out_root, cfg.run_id, "run_id")
    if run_dir.exists() and overwrite:
        with _not_running(run_dir):
            # Move aside first so a crash never leaves half of an old run looking like a new one.
            trash = run_dir.with_name(f".{run_dir.name}.old-{uuid.uuid4().hex[:8]}")
            run_dir.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    elif (incompatible := _incompatible_record(run_dir)) is not None:
        raise ConfigError(
            f"{run_dir / RECORD_FILENAME}: {incompatible}; the results directory was written by an "
            "incompatible version of isc-bench. Choose another --out, or pass --overwrite to "
            "discard that run"
        )
    elif run_is_finished(run_dir):
        raise ConfigError(
            f"{run_dir} already holds a finished run (record.json); pass --overwrite to run it "
            "again, or choose another --run-id / --out"
        )
    elif (run_dir / CONFIG_FILENAME).is_file():
        try:
            previous = load_run_config(run_dir)
        except ConfigError as err:
            raise ConfigError(
                f"{err}. The unfinished run there was written by an incompatible version of "
                "isc-bench (or its config.yaml was edited); choose another --out, or pass "
                "--overwrite to discard it"
            ) from None
        if config_to_dict(previous) != config_to_dict(cfg):
            raise ConfigError(
                f"{run_dir} holds an unfinished run with a different config; pass --overwrite to "
                "discard it, or choose another --run-id"
            )
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILENAME, dump_config(cfg))
    return run_dir
