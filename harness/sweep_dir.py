"""A sweep directory: its files, and its manifest (read and written under a lock).

<out>/<sweep name>/
  sweep.yaml       the sweep file as submitted
  manifest.json    run id <-> grid point, and every job id each run was submitted as
  runs/<run_id>/   the run directories
  logs/            submitit's logs and pickles

A directory holding another sweep is refused; the same sweep is resumed (finished runs are kept).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.atomic import atomic_write_json, atomic_write_text, exclusive_lock
from harness.errors import ConfigError
from harness.paths import child_path
from harness.sweep_grid import SweepRun, resolve_runs
from harness.sweep_spec import SweepSpec

MANIFEST = "manifest.json"
SPEC_COPY = "sweep.yaml"
RUNS_DIR = "runs"
LOG_DIR = "logs"


def _fingerprint(runs: Sequence[SweepRun]) -> str:
    blob = json.dumps([r.run_id for r in runs]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_sweep_directory(path: str | Path) -> bool:
    """Whether `path` holds a sweep (its manifest)."""
    return (Path(path) / MANIFEST).is_file()


def load_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    path = Path(sweep_dir) / MANIFEST
    if not is_sweep_directory(sweep_dir):
        raise ConfigError(f"{sweep_dir} is not a sweep directory (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable manifest: {err}") from err
    if not isinstance(manifest, dict):
        raise ConfigError(f"{path}: unreadable manifest: not a JSON object")
    return manifest


def grid_points(sweep_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Run id -> grid point of every run of a sweep directory, as its manifest lists them."""
    entries = load_manifest(sweep_dir).get("runs", [])
    return {str(entry["run_id"]): entry.get("point", {}) for entry in entries}


def submitted_spec_path(sweep_dir: str | Path) -> Path | None:
    """The copy of the sweep file a sweep directory keeps (`sweep.yaml`), or None where there is
    none (a sweep prepared from a spec that came from no file)."""
    path = Path(sweep_dir) / SPEC_COPY
    return path if path.is_file() else None


def save_manifest(sweep_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(sweep_dir / MANIFEST, manifest)


def _manifest_lock(sweep_dir: Path) -> Path:
    # Beside the sweep directory, so an empty directory stays recognisably empty.
    return sweep_dir.parent / f".{sweep_dir.name}.manifest.lock"


def record_jobs(sweep_dir: Path, submission: dict[str, Any], jobs_by_run: dict[str, dict]) -> None:
    """Append job entries to the manifest on disk (re-read under the lock: another sweep command
    on the same directory may have recorded its own jobs meanwhile)."""
    with exclusive_lock(_manifest_lock(sweep_dir)):
        manifest = load_manifest(sweep_dir)
        manifest["submission"] = submission
        for entry in manifest["runs"]:
            if entry["run_id"] in jobs_by_run:
                entry["jobs"].append(jobs_by_run[entry["run_id"]])
        save_manifest(sweep_dir, manifest)


def prepare_sweep(spec: SweepSpec, sweep_dir: str | Path, resolved=None) -> dict[str, Any]:
    """Create the sweep directory and its runs, or reopen the same sweep to resume it.

    A directory that holds a different sweep (other runs) or anything else is refused: two sweeps
    never share a directory.
    """
    from harness.run_dir import prepare_run_dir, run_is_finished

    sweep_dir = Path(sweep_dir)
    resolved = resolved if resolved is not None else resolve_runs(spec)
    runs = [run for run, _ in resolved]
    fingerprint = _fingerprint(runs)
    # Two sweep commands started together on one directory must agree on one manifest.
    with exclusive_lock(_manifest_lock(sweep_dir)):
        if is_sweep_directory(sweep_dir):
            manifest = load_manifest(sweep_dir)
            if manifest.get("fingerprint") != fingerprint:
                raise ConfigError(
                    f"{sweep_dir} already holds a different sweep ({manifest.get('name')!r}, "
                    f"{len(manifest.get('runs', []))} runs); choose another --out or remove it"
                )
        elif sweep_dir.exists() and any(sweep_dir.iterdir()):
            raise ConfigError(
                f"{sweep_dir} exists and is not a sweep directory; choose another --out"
            )
        else:
            manifest = {
                "schema_version": 1,
                "name": spec.name,
                "fingerprint": fingerprint,
                "spec": SPEC_COPY,
                "created_at": utc_timestamp(),
                "submission": None,
                "runs": [
                    {
                        "index": r.index,
                        "run_id": r.run_id,
                        "run_dir": f"{RUNS_DIR}/{r.run_id}",
                        "point": r.point,
                        "jobs": [],
                    }
                    for r in runs
                ],
            }
        sweep_dir.mkdir(parents=True, exist_ok=True)
        source = Path(spec.source)
        if source.is_file() and submitted_spec_path(sweep_dir) is None:
            atomic_write_text(sweep_dir / SPEC_COPY, source.read_text(encoding="utf-8"))
        for _run, cfg in resolved:
            if not run_is_finished(child_path(sweep_dir / RUNS_DIR, cfg.run_id, "run_id")):
                prepare_run_dir(cfg, sweep_dir / RUNS_DIR)
        save_manifest(sweep_dir, manifest)
    return manifest


def utc_timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
