"""Sweeps: a grid of runs (methods x seeds x any config keys), submitted as one job array.

A sweep file (configs/sweeps/*.yaml):

    name: negatives
    config: null                 # optional config file layered under every run
    data: null                   # optional benchmark directory (default: the generated mini-DISC)
    base:                        # dotted config keys set in every run
      train.budget_value: 200
    grid:                        # a mapping is one product; a list of mappings is their union
      - {method: [qk], qk.num_negatives: [10000, 100000, 1000000]}
      - {method: [moco], moco.queue_size: [4096, 65536]}
    seeds: [0, 1, 2]             # shorthand for a `seed` axis in every product
    launcher: slurm              # default for `sweep` (the command line wins)
    slurm_profile: local         # configs/slurm/<name>.yaml or a path
    slurm: {array_parallelism: 4}   # overrides of that profile

The sweep directory holds `sweep.yaml` (the spec as submitted), `manifest.json` (run id <-> grid
point, and every job id each run was submitted as), `runs/<run_id>/` and `logs/` (submitit's).
A directory holding another sweep is refused; the same sweep is resumed (finished runs are kept).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.atomic import exclusive_lock
from harness.errors import ConfigError, HarnessError
from harness.typed_yaml import load_yaml

MANIFEST = "manifest.json"
SPEC_COPY = "sweep.yaml"
SPEC_KEYS = (
    "name",
    "description",
    "config",
    "data",
    "base",
    "grid",
    "seeds",
    "launcher",
    "slurm_profile",
    "slurm",
)
STATES = ("unsubmitted", "pending", "running", "done", "failed")


@dataclass
class SweepSpec:
    name: str
    grid: list[dict[str, list[Any]]]
    base: dict[str, Any] = field(default_factory=dict)
    config: str | None = None
    data: str | None = None
    launcher: str = "slurm"
    slurm_profile: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = "<sweep>"  # the file it came from, for messages


@dataclass
class SweepRun:
    index: int
    run_id: str
    point: dict[str, Any]  # the grid values of this run (grid keys only)
    overrides: list[str]  # every key=value given to resolve_config (base + point)


def load_sweep_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found")
    return spec_from_dict(load_yaml(path), source=str(path), default_name=path.stem)


def spec_from_dict(data: Any, *, source: str = "<sweep>", default_name: str = "sweep") -> SweepSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a sweep file must be a mapping with a `grid:`")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(SPEC_KEYS)}"
        )
    grid = data.get("grid")
    if isinstance(grid, dict):
        grid = [grid] if grid else []
    if not isinstance(grid, list) or not grid:
        raise ConfigError(f"{source}: `grid` is empty; give a mapping of key -> list of values")
    seeds = data.get("seeds")
    products = []
    for i, product in enumerate(grid):
        where = f"{source}: grid[{i}]"
        if not isinstance(product, dict) or not product:
            raise ConfigError(f"{where} is empty; give a mapping of key -> list of values")
        axes: dict[str, list[Any]] = {}
        for key, values in product.items():
            values = values if isinstance(values, list) else [values]
            if not values:
                raise ConfigError(
                    f"{where}: `{key}` has no values (an empty axis makes an empty grid)"
                )
            axes[str(key)] = values
        if seeds is not None and "seed" not in axes:
            axes["seed"] = seeds if isinstance(seeds, list) else [seeds]
            if not axes["seed"]:
                raise ConfigError(f"{source}: `seeds` is empty")
        products.append(axes)
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: `base` must be a mapping of dotted config keys to values")
    slurm = data.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError(f"{source}: `slurm` must be a mapping of SLURM profile keys to values")
    return SweepSpec(
        name=str(data.get("name") or default_name),
        grid=products,
        base=base,
        config=data.get("config"),
        data=data.get("data"),
        launcher=str(data.get("launcher") or "slurm"),
        slurm_profile=data.get("slurm_profile"),
        slurm=slurm,
        description=str(data.get("description") or ""),
        source=source,
    )


def expand_grid(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every grid point, in file order: the union of the products, duplicates removed."""
    points: list[dict[str, Any]] = []
    seen: set[str] = set()
    for axes in spec.grid:
        keys = list(axes)
        for values in itertools.product(*(axes[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            fingerprint = json.dumps(point, sort_keys=True, default=str)
            if fingerprint not in seen:
                seen.add(fingerprint)
                points.append(point)
    if not points:
        raise ConfigError(f"{spec.source}: the grid expands to no runs")
    return points


def _override(key: str, value: Any) -> str:
    # Values travel as YAML flow text, which is exactly how resolve_config parses `--set`.
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return f"{key}={text}"


def resolve_runs(spec: SweepSpec) -> list[tuple[SweepRun, Any]]:
    """Resolve every grid point into a validated RunConfig (ConfigError names the point and key)."""
    from harness.config import resolve_config

    out = []
    ids: dict[str, int] = {}
    for index, point in enumerate(expand_grid(spec)):
        merged = {**spec.base, **point}
        method = merged.pop("method", None)
        if not isinstance(method, str):
            raise ConfigError(f"{spec.source}: grid point {index} {point} has no `method`")
        seed = merged.pop("seed", None)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(
                f"{spec.source}: grid point {index}: seed must be an integer, got {seed!r}"
            )
        overrides = [_override(k, v) for k, v in merged.items()]
        try:
            cfg = resolve_config(
                method, config_path=spec.config, overrides=overrides, seed=seed, data=spec.data
            )
        except ConfigError as err:
            raise ConfigError(f"{spec.source}: grid point {index} {point}: {err}") from None
        if cfg.run_id in ids:
            raise ConfigError(
                f"{spec.source}: grid points {ids[cfg.run_id]} and {index} give the same run "
                f"({cfg.run_id}); remove the duplicate"
            )
        ids[cfg.run_id] = index
        run = SweepRun(index=index, run_id=cfg.run_id, point=point, overrides=overrides)
        out.append((run, cfg))
    return out


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
    from harness.atomic import atomic_write_json

    atomic_write_json(sweep_dir / MANIFEST, manifest)


def _manifest_lock(sweep_dir: Path) -> Path:
    # Beside the sweep directory, so an empty directory stays recognisably empty.
    return sweep_dir.parent / f".{sweep_dir.name}.manifest.lock"


def _record_jobs(sweep_dir: Path, submission: dict[str, Any], jobs_by_run: dict[str, dict]) -> None:
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
    from harness.atomic import atomic_write_text
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
                "created_at": _now(),
                "submission": None,
                "runs": [
                    {
                        "index": r.index,
                        "run_id": r.run_id,
                        "run_dir": f"runs/{r.run_id}",
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
            if not run_is_finished(sweep_dir / "runs" / cfg.run_id):
                prepare_run_dir(cfg, sweep_dir / "runs")
        save_manifest(sweep_dir, manifest)
    return manifest


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class RunState:
    run_id: str
    point: dict[str, Any]
    state: str  # one of STATES
    job_id: str | None
    detail: str = ""  # scheduler state when it says more (cancelled, timeout ...)
    failure: str | None = None  # last lines of the traceback


def run_states(
    sweep_dir: str | Path, manifest: dict[str, Any] | None = None, *, lines: int = 6
) -> list[RunState]:
    """The state of every run: the record decides `done`; otherwise the scheduler and the logs."""
    from harness.launch import job_failure, job_outcome, local_job_alive, slurm_states
    from harness.run_dir import run_is_finished

    sweep_dir = Path(sweep_dir)
    manifest = manifest or load_manifest(sweep_dir)
    last_jobs = {r["run_id"]: (r["jobs"][-1] if r["jobs"] else None) for r in manifest["runs"]}
    slurm_ids = [j["job_id"] for j in last_jobs.values() if j and j["launcher"] == "slurm"]
    scheduler = slurm_states(slurm_ids)
    out = []
    for entry in manifest["runs"]:
        job = last_jobs[entry["run_id"]]
        run_dir = sweep_dir / entry["run_dir"]
        state = RunState(
            entry["run_id"], entry["point"], "unsubmitted", job["job_id"] if job else None
        )
        if run_is_finished(run_dir):
            state.state = "done"
        elif job is not None:
            folder = sweep_dir / job["log_folder"]
            outcome = job_outcome(folder, job["job_id"])
            if job["launcher"] == "slurm":
                # Not in sacct (yet): just submitted, unless the job already left an error. A job
                # sacct sees queued or running is alive, whatever pickle an earlier attempt left.
                sched = scheduler.get(job["job_id"], "failed" if outcome == "error" else "pending")
            else:
                sched = "running" if local_job_alive(job["job_id"]) else "completed"
            if sched in ("pending", "running"):
                state.state = sched
            else:
                state.state = "failed"
                state.detail = "" if sched in ("completed", "failed") else sched
                state.failure = job_failure(folder, job["job_id"], lines=lines) or (
                    "the job ended without writing record.json" if sched == "completed" else None
                )
        out.append(state)
    return out


def status_table(states: Sequence[RunState], *, lines: bool = True) -> str:
    from harness.launch import format_table

    rows = [
        (
            s.run_id,
            " ".join(f"{k}={v}" for k, v in s.point.items()),
            s.state + (f" ({s.detail})" if s.detail else ""),
            s.job_id or "-",
        )
        for s in states
    ]
    text = format_table(("run", "grid point", "state", "job"), rows)
    counts = {name: sum(s.state == name for s in states) for name in STATES}
    text += "\n\n" + ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    if lines:
        for s in states:
            if s.failure:
                text += f"\n\n{s.run_id} failed:\n" + "\n".join(
                    "    " + ln for ln in s.failure.splitlines()
                )
    return text


def submit_sweep_runs(
    sweep_dir: str | Path,
    run_ids: Sequence[str],
    *,
    launcher: str,
    profile,
    target: Callable[[Path], Any] | None = None,
    wait_local: bool = True,
):
    """Submit `run_ids` of the sweep as one job array and record the job ids in the manifest.

    With the local launcher the runs go `array_parallelism` at a time and this call waits for them
    (submitit's local executor would otherwise start every run at once on this machine).
    """
    from harness.launch import submit_runs, wait_jobs

    sweep_dir = Path(sweep_dir).resolve()
    manifest = load_manifest(sweep_dir)
    by_id = {r["run_id"]: r for r in manifest["runs"]}
    unknown = [r for r in run_ids if r not in by_id]
    if unknown:
        raise HarnessError(f"{sweep_dir}: not runs of this sweep: {', '.join(unknown)}")
    if not run_ids:
        return []
    folder = sweep_dir / "logs"
    run_dirs = [sweep_dir / by_id[r]["run_dir"] for r in run_ids]
    name = f"sweep-{manifest['name']}"
    chunks = [list(range(len(run_ids)))]
    if launcher == "local":
        step = max(1, profile.array_parallelism)
        chunks = [list(range(i, min(i + step, len(run_ids)))) for i in range(0, len(run_ids), step)]
    submission = {"launcher": launcher, "profile": dataclasses.asdict(profile)}
    jobs: list[Any] = []
    for chunk in chunks:
        chunk_jobs = submit_runs(
            launcher,
            [run_dirs[i] for i in chunk],
            folder=folder / "%j",
            profile=profile,
            job_name=name,
            target=target,
        )
        _record_jobs(
            sweep_dir,
            submission,
            {
                run_ids[i]: {
                    "job_id": str(job.job_id),
                    "launcher": launcher,
                    "log_folder": "logs/%j",
                    "submitted_at": _now(),
                }
                for i, job in zip(chunk, chunk_jobs, strict=True)
            },
        )
        jobs.extend(chunk_jobs)
        if launcher == "local" and wait_local:
            wait_jobs(chunk_jobs, timeout_s=profile.time_min * 60 * (profile.max_requeues + 1) + 60)
    if launcher == "debug":
        # submitit's debug jobs run when their result is asked for: one by one, here, with pdb
        # on an error (that is what the debug launcher is for).
        for job in jobs:
            job.result()
    return jobs


def wait_for_queued_runs(sweep_dir: Path, *, timeout_s: float, poll_s: float = 2.0):
    """Poll `run_states` until no run is pending or running; HarnessError after `timeout_s`."""
    from harness.launch import wait_until_idle

    states: list[RunState] = []

    def queued() -> list[str]:
        nonlocal states
        states = run_states(sweep_dir)
        return [s.run_id for s in states if s.state in ("pending", "running")]

    wait_until_idle(queued, timeout_s=timeout_s, poll_s=poll_s, what="runs still queued")
    return states
