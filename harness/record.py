"""The result record of a run: provenance (git commit, package versions, device), the benchmark's
identity, peak memory and the assembly of `record.json` (schema in docs/architecture.md, "Result
record")."""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Distribution names of the packages whose version can change a result.
_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "lightly": "lightly",
    "faiss": ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu", "faiss"),
    "numpy": "numpy",
    "pandas": "pandas",
    "pillow": "pillow",
    "augly": "augly",
    "h5py": "h5py",
    "submitit": "submitit",
}


def _dist_version(names: str | tuple[str, ...]) -> str | None:
    for name in (names,) if isinstance(names, str) else names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def package_versions() -> dict[str, str | None]:
    from harness import __version__

    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "isc-bench": __version__,
    }
    versions.update({key: _dist_version(dist) for key, dist in _PACKAGES.items()})
    try:
        import torch

        versions["cuda"] = torch.version.cuda
        versions["cudnn"] = (
            str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None
        )
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return versions


def git_state(repo: str | os.PathLike = PROJECT_ROOT) -> dict[str, Any]:
    """`{"commit": sha or None, "dirty": bool or None}`; tracked files with local changes = dirty."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def device_description(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def peak_memory_mb(device=None) -> dict[str, float | None]:
    """Peak resident memory of this process (and, separately, of its finished children such as
    DataLoader workers), plus the CUDA allocator's peak when running on a GPU."""
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    cuda = None
    if device is not None:
        import torch

        if torch.device(device).type == "cuda":
            cuda = torch.cuda.max_memory_allocated(device) / 1024**2
    return {"cpu_rss": round(own, 1), "cpu_rss_workers": round(children, 1), "cuda": cuda}


def benchmark_fingerprint(root: str | os.PathLike) -> str | None:
    """What a benchmark directory holds, as 16 hex digits: a sha256 over each split's image file
    names and sizes (sorted) and the ground truth's bytes. None when the directory cannot be read.

    Two results directories made with `--data bench` from two folders must not be taken for seeds of
    one benchmark, whatever the path typed. Names and sizes rather than pixels: DISC21's million
    images are listed in seconds but read in an hour, and two benchmarks that agree on every file
    name, every file size and the ground truth are not two benchmarks worth telling apart.
    """
    from harness.data.layout import IMAGE_SUFFIXES, SPLIT_DIRS, find_ground_truth, find_split_dir
    from harness.errors import InputError

    root = Path(root)
    digest = hashlib.sha256()
    try:
        for split in SPLIT_DIRS:  # by split, not folder name: either layout of one benchmark agrees
            with os.scandir(find_split_dir(root, split)) as entries:
                files = sorted(
                    (os.fsencode(entry.name), entry.stat().st_size)
                    for entry in entries
                    if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file()
                )
            digest.update(split.encode() + b"\n")
            for name, size in files:
                digest.update(name + b"\0" + str(size).encode() + b"\n")  # no name holds a NUL
        digest.update(b"ground truth\n")
        with open(find_ground_truth(root), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except (OSError, InputError):
        return None
    return digest.hexdigest()[:16]


def benchmark_identity(path: str | os.PathLike) -> dict[str, str | None]:
    """`{"resolved_path", "fingerprint"}` of the benchmark at `path` (as the run was given it)."""
    return {"resolved_path": str(Path(path).resolve()), "fingerprint": benchmark_fingerprint(path)}


def carry_timings(timings: dict[str, float], earlier: dict[str, float] | None) -> dict[str, float]:
    """This process's seconds per stage plus those the earlier processes of a resumed run spent
    (up to the checkpoint it resumed from), key by key."""
    carried = dict(timings)
    for key, seconds in (earlier or {}).items():
        carried[key] = carried.get(key, 0.0) + seconds
    return carried


def build_record(
    *,
    config: dict[str, Any],
    benchmark: dict[str, Any],
    augmentation: dict[str, Any],
    device: str,
    budget: dict[str, Any],
    negatives_per_step: int,
    timings: dict[str, float],
    peak_memory: dict[str, float | None],
    metrics_raw: dict[str, Any],
    metrics_normalized: dict[str, Any] | None,
    files: dict[str, str],
    git: dict[str, Any] | None = None,
    versions: dict[str, str | None] | None = None,
    extra: dict[str, Any] | None = None,
    earlier_timings: dict[str, float] | None = None,
    weights: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record as a plain dict, keys in the documented order.

    The benchmark block gains `resolved_path` and `fingerprint` (see `benchmark_fingerprint`) unless
    it has them. `weights`: what the backbone started from (harness/weights.py), None for a
    random init. `earlier_timings`: after a resume, the seconds per timing key (`train`, `total`)
    that the processes before this one spent, up to the checkpoint it resumed from; they are added
    to `timings` and kept apart as `timings_before_resume`. A resumed run's record without that key
    (an older version) has timings of its last process only, and the report leaves them out.
    """
    git = git if git is not None else git_state()
    if "path" in benchmark and "fingerprint" not in benchmark:
        benchmark = {**benchmark, **benchmark_identity(benchmark["path"])}
    timings = carry_timings(timings, earlier_timings)
    record = {
        "schema_version": SCHEMA_VERSION,
        "status": "complete",
        "run_id": config["run_id"],
        "method": config["method"],
        "seed": config["seed"],
        "config": config,
        "benchmark": benchmark,
        "weights": weights,
        "augmentation": augmentation,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "versions": versions if versions is not None else package_versions(),
        "device": device,
        "budget": budget,
        "negatives_per_step": int(negatives_per_step),
        "timings": {k: round(float(v), 3) for k, v in timings.items()},
        **(
            {"timings_before_resume": {k: round(float(v), 3) for k, v in earlier_timings.items()}}
            if earlier_timings is not None
            else {}
        ),
        "peak_memory_mb": peak_memory,
        "metrics": {"raw": metrics_raw, "normalized": metrics_normalized},
        "files": files,
    }
    if extra:
        record.update(extra)
    return record
