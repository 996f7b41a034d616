"""`python -m harness sweep FILE`: expand a grid of runs and submit it as one job array."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "sweep"
HELP = "run a grid of configurations (methods x seeds x config keys) as one job array"
DESCRIPTION = """\
Expand the grid of a sweep file (configs/sweeps/*.yaml) into runs and submit them as one job array.

  python -m harness sweep configs/sweeps/tiny.yaml --dry-run       # the table of runs, nothing written
  python -m harness sweep configs/sweeps/disc21-paper.yaml --dry-run --calibration bench.json
                                        # + each run's time and GPU-hours on the hardware bench measured
  python -m harness sweep configs/sweeps/negatives.yaml --launcher slurm --slurm-profile example
  python -m harness status results/sweeps/negatives                # pending/running/done/failed

--dry-run prints, under the table of runs, each run's work (steps, training images, cache passes,
images decoded, descriptor extractions) and, with --calibration (a `python -m harness bench` JSON made
on the runs' hardware at their protocol), its time per stage, wall-clock and GPU-hours, and the
sweep's totals. What the estimate models and leaves out: harness/cost.py.

The sweep directory (default results/sweeps/<name>) holds the manifest tying run ids to grid points,
the runs and submitit's logs. Running the same sweep again resumes it: finished runs are kept,
failed and never-submitted ones are submitted again, queued or running ones are left alone.
A directory that holds a different sweep is refused.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_file", help="the sweep file, e.g. configs/sweeps/tiny.yaml")
    parser.add_argument(
        "--launcher",
        choices=("slurm", "local", "debug"),
        default=None,
        help="where the runs go (default: the file's `launcher`, else slurm). local runs them on "
        "this machine array_parallelism at a time and waits; debug runs them one by one in this process",
    )
    parser.add_argument(
        "--slurm-profile",
        metavar="NAME|PATH",
        default=None,
        help="configs/slurm/NAME.yaml or a YAML path (default: the file's `slurm_profile`)",
    )
    parser.add_argument(
        "--slurm-set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a profile key, e.g. --slurm-set time_min=30 (repeatable)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="sweep directory (default: results/sweeps/<name>)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the table of runs; write and submit nothing"
    )
    parser.add_argument(
        "--calibration",
        metavar="BENCH_JSON",
        default=None,
        help="with --dry-run: estimate each run's time from this `python -m harness bench` JSON "
        "(bench methods negatives search --config PROTOCOL --set train.batch_size=PER_GPU)",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="block until every SLURM job has finished, then print the status",
    )
    parser.add_argument(
        "--timeout", type=float, default=24 * 3600, help="seconds --wait waits at most"
    )


def main(args: argparse.Namespace) -> int:
    from harness.errors import ConfigError
    from harness.job_state import wait_jobs
    from harness.paths import child_path
    from harness.sweep import run_states, status_table, submit_sweep_runs, wait_for_queued_runs
    from harness.sweep_dir import prepare_sweep
    from harness.sweep_grid import resolve_runs
    from harness.sweep_spec import load_sweep_spec, sweep_profile
    from harness.text_table import format_table

    if args.calibration is not None and not args.dry_run:
        raise ConfigError("--calibration is read by --dry-run: add --dry-run to see the estimate")
    spec = load_sweep_spec(args.sweep_file)
    resolved = resolve_runs(spec)
    launcher = args.launcher or spec.launcher
    profile = sweep_profile(spec, args.slurm_profile, args.slurm_set)
    sweep_dir = args.out or child_path(Path("results") / "sweeps", spec.name, "sweep name")
    if args.dry_run:
        from harness.cost_report import cost_report

        # Before any output: a calibration that cannot serve is the one line printed.
        cost = cost_report(spec, resolved, launcher, profile, args.calibration, sweep_dir)
        rows = [
            (run.index, run.run_id, " ".join(f"{k}={v}" for k, v in run.point.items()))
            for run, _ in resolved
        ]
        print(format_table(("#", "run", "grid point"), rows))
        print(
            f"\n{len(rows)} runs -> {sweep_dir} as one {launcher} job array (nothing submitted: --dry-run)"
        )
        print("\n" + cost)
        return 0
    manifest = prepare_sweep(spec, sweep_dir, resolved)
    states = run_states(sweep_dir, manifest)
    todo = [s.run_id for s in states if s.state in ("unsubmitted", "failed")]
    kept = len(states) - len(todo)
    if not todo:
        print(f"{sweep_dir}: nothing to submit ({kept} runs done or in the queue)")
        if launcher != "slurm" or args.wait:
            # Another sweep (or an earlier call) queued these runs: wait for them as if this
            # call had submitted them, so the table below is final either way.
            states = wait_for_queued_runs(sweep_dir, timeout_s=args.timeout)
        print(status_table(states))
        return 1 if any(s.state == "failed" for s in states) else 0
    jobs = submit_sweep_runs(sweep_dir, todo, launcher=launcher, profile=profile)
    print(f"submitted {len(todo)} runs of {spec.name} ({launcher}, {kept} kept) -> {sweep_dir}")
    if launcher == "slurm" and jobs:
        print(
            f"array job {jobs[0].job_id.split('_')[0]}; follow with: python -m harness status {sweep_dir}"
        )
        if args.wait:
            wait_jobs(jobs, timeout_s=args.timeout, poll_s=5)
    states = run_states(sweep_dir)
    if launcher != "slurm" or args.wait:
        print(status_table(states))
    return (
        1 if any(s.state == "failed" for s in states) and (launcher != "slurm" or args.wait) else 0
    )
