"""The cost table `sweep --dry-run` prints under its table of runs: each run's work, and with a
calibration its time per stage, wall-clock and GPU-hours, then the sweep's totals and what the
figures assume (harness/cost.py). Runs the sweep directory already holds a record of show their
measured wall-clock beside the estimate: a dry run after a small sweep checks the calibration."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.calibration import Calibration, load_calibration
from harness.cost import BenchmarkSizes, RunEstimate, RunWork, benchmark_sizes, estimate, run_work
from harness.errors import HarnessError
from harness.text_table import format_table


@dataclass(frozen=True)
class Job:
    """The resources of one run's job, as the launcher will ask for them."""

    processes: int  # one per GPU (torch.distributed), at least 1
    gpus: int  # GPUs held for the job's whole duration, idle or not
    parallel: int  # runs at once (array_parallelism)
    label: str


def job_for(launcher: str, profile) -> Job:
    if launcher == "slurm":
        gpus = profile.nodes * profile.gpus_per_node
        processes = profile.nodes * profile.tasks_per_node()
        label = f"{profile.nodes} node(s) x {profile.gpus_per_node} GPU(s)"
    elif launcher == "local":
        gpus = profile.gpus_per_node
        processes = max(1, gpus)
        label = f"this machine, {gpus} GPU(s)"
    else:  # debug: one process, one run at a time, in this process
        return Job(1, 0, 1, "this process")
    return Job(processes, gpus, profile.array_parallelism, label)


def way_out(spec, cfg, job: Job, path: str) -> str:
    """The bench command that makes a calibration for these runs."""
    parts = ["python -m harness bench methods negatives search"]
    if spec.config:
        parts.append(f"--config {spec.config}")
    per_device = max(1, cfg.train.batch_size // job.processes)
    parts += [
        f"--set model.backbone={cfg.model.backbone}",
        f"--set model.image_size={cfg.model.image_size}",
        f"--set model.embedding_dim={cfg.model.embedding_dim}",
        f"--set train.batch_size={per_device}",
        f"--json {path}",
    ]
    return "make one on the hardware the runs will use: " + " ".join(parts)


def count(n: float) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:,.3g}M" if n < 1e9 else f"{n / 1e9:,.3g}G"
    return f"{int(round(n)):,}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:,.1f} h"


def measured_seconds(sweep_dir: Path, run_id: str) -> float | None:
    """The wall-clock a finished run of the sweep recorded (every process of it), else None."""
    from harness.run_dir import RECORD_FILENAME
    from harness.sweep_dir import RUNS_DIR

    try:
        record = json.loads((sweep_dir / RUNS_DIR / run_id / RECORD_FILENAME).read_text())
        return float(record["timings"]["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cost_report(
    spec,
    resolved: Sequence[tuple],
    launcher: str,
    profile,
    calibration_path: str | None,
    sweep_dir: Path | None = None,
) -> str:
    """The text under `sweep --dry-run`'s table of runs (module doc)."""
    job = job_for(launcher, profile)
    sizes_by_spec: dict[str, BenchmarkSizes | None] = {}
    works: list[tuple[int, RunWork, object]] = []
    for run, cfg in resolved:
        if cfg.data.spec not in sizes_by_spec:
            sizes_by_spec[cfg.data.spec] = benchmark_sizes(
                cfg.data.spec, cfg.data.synth, spec.benchmark_sizes
            )
        sizes = sizes_by_spec[cfg.data.spec]
        if sizes is None:
            message = (
                f"no cost estimate: {cfg.data.spec} is not a folder here and {spec.source} gives "
                "no benchmark_sizes; add benchmark_sizes: {queries: N, references: N, training: "
                "N} to it, or run the dry run where the data is"
            )
            if calibration_path is not None:
                raise HarnessError(message)
            return message
        works.append((run.index, run_work(cfg, sizes, job.processes), cfg))
    calibration = None
    if calibration_path is not None:
        first = works[0][2]
        exit_hint = way_out(spec, first, job, calibration_path)
        calibration = load_calibration(calibration_path, exit_hint)
        for _, _, cfg in works:
            calibration.check_model(cfg.model.backbone, cfg.model.image_size, exit_hint)
    estimates = [estimate(w, cfg, calibration) if calibration else None for _, w, cfg in works]
    measured = [None] * len(works)
    if sweep_dir is not None and calibration is not None:
        measured = [measured_seconds(sweep_dir, run.run_id) for run, _ in resolved]
    lines = [_table(works, estimates, job, measured)]
    lines += _totals(works, estimates, job)
    lines += _notes(sizes_by_spec, job, works, estimates, calibration, spec, launcher)
    if any(m is not None for m in measured):
        lines.append(
            f"measured: the wall-clock the records in {sweep_dir} hold (timings.total), which "
            "also counts what the estimate leaves out"
        )
    return "\n".join(lines)


def _table(works, estimates: list[RunEstimate | None], job: Job, measured) -> str:
    header = ["#", "steps", "images seen", "cache passes", "decoded", "extractions"]
    if estimates[0] is not None:
        header += ["train", "cache", "validation", "extract", "search", "wall-clock"]
        header += ["GPU-h"] if job.gpus else []
    shown = any(m is not None for m in measured)
    header += ["measured"] if shown else []
    rows = []
    for (index, work, _), est, seconds in zip(works, estimates, measured, strict=True):
        row = [
            index,
            count(work.steps),
            count(work.images_seen),
            work.cache_passes,
            count(work.decoded_images),
            count(work.extractions),
        ]
        if est is not None:
            row += [duration(s) for s in (est.train, est.cache, est.validation, est.extract)]
            row += [duration(est.search), duration(est.total)]
            row += [f"{est.total * job.gpus / 3600:,.1f}"] if job.gpus else []
        row += [duration(seconds)] if shown else []
        rows.append(row)
    return format_table(header, rows)


def _totals(works, estimates, job: Job) -> list[str]:
    n = len(works)
    totals = [
        f"\ntotal over {n} runs: {count(sum(w.steps for _, w, _ in works))} steps, "
        f"{count(sum(w.images_seen for _, w, _ in works))} training images seen, "
        f"{sum(w.cache_passes for _, w, _ in works)} cache passes, "
        f"{count(sum(w.decoded_images for _, w, _ in works))} images decoded, "
        f"{count(sum(w.extractions for _, w, _ in works))} descriptor extractions"
    ]
    if estimates[0] is None:
        return totals
    walls = [e.total for e in estimates]
    serial = sum(walls)
    at_once = min(job.parallel, n)
    span = max(max(walls), serial / at_once)
    line = f"estimated: {duration(serial)} of jobs"
    if job.gpus:
        line += f", {serial * job.gpus / 3600:,.1f} GPU-hours ({job.gpus} GPUs per job)"
    totals.append(
        line + f"; with {at_once} job(s) at once, at least {duration(span)} from submission "
        "to the last record (queueing not counted)"
    )
    return totals


def _notes(
    sizes_by_spec, job, works, estimates, cal: Calibration | None, spec, launcher
) -> list[str]:
    notes = [""]
    for data, sizes in sizes_by_spec.items():
        notes.append(
            f"benchmark {data}: {count(sizes.queries)} queries, {count(sizes.references)} "
            f"references, {count(sizes.training)} training images ({sizes.source})"
        )
    notes.append(
        f"job: {job.label} = {job.processes} process(es) per run ({launcher}); they share the "
        "training batch, the cache passes and the final extraction; validation and search run "
        "on rank 0"
    )
    if cal is None:
        way = way_out(spec, works[0][2], job, "bench.json")
        notes.append(
            "no calibration: times are not estimated, since no throughput of the runs' hardware "
            f"is known here. To estimate them, {way}, then add --calibration bench.json"
        )
        return notes
    per_device = {works[0][2].train.batch_size // job.processes}
    notes.append(
        f"calibration {cal.path}: {cal.backbone} at {cal.image_size} px on {cal.device}"
        f"{' (bench --quick sizes)' if cal.quick else ''}, batch {cal.batch} per device (the runs: "
        f"{', '.join(map(str, sorted(per_device)))}; images/s taken as equal)"
    )
    if cal.on_gpu != (job.gpus > 0):
        where = "on a CPU" if not cal.on_gpu else "on a GPU"
        notes.append(
            f"WARNING: the calibration was measured {where}, but the jobs ask for {job.gpus} "
            "GPU(s): these times are that machine's, not the jobs'"
        )
    notes.append(
        f"training fed from JPEG files: x{cal.loading_slowdown:.2f} the preloaded step time "
        "(SimCLR's, applied to every method); multi-GPU training assumed to scale linearly"
    )
    if any(w.method == "qk" and w.negatives > (cal.qk_bench_negatives or 0) for _, w, _ in works):
        if any(e.qk_loss_extrapolated for e in estimates):
            notes.append(
                "QK's loss over its negatives beyond the bench's "
                f"{count(cal.qk_bench_negatives or 0)}: the `negatives` rows' seconds per negative"
            )
        else:
            notes.append(
                "QK's loss beyond the bench's "
                f"{count(cal.qk_bench_negatives or 0)} negatives is NOT counted (the calibration "
                "has no `negatives` rows at this backbone): QK runs are underestimated"
            )
    if cal.search_s_per_unit is None:
        notes.append("search: not estimated (the calibration has no `search` rows)")
    notes.append(
        "not estimated: process start, listing the benchmark, building the model, work redone after a "
        "requeue, queueing"
    )
    return notes
