"""`python -m harness status SWEEP_DIR`: the state of every run of a sweep."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "status"
HELP = "show each run of a sweep: pending/running/done/failed, job id, the failure's traceback"
DESCRIPTION = """\
Show the state of every run of a sweep directory (written by `python -m harness sweep`):

  unsubmitted  never submitted          pending  queued (or requeued after a timeout/preemption)
  running      the job is running       done     record.json is complete
  failed       the job ended without a record (error, scancel, timeout, OOM): its traceback's
               last lines follow the table

A run is `done` only by its record, whatever the scheduler says. --resubmit-failed submits the
failed runs again (as one job array, with the launcher and SLURM profile of the first submission).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=Path, help="a sweep directory (holds manifest.json)")
    parser.add_argument(
        "--resubmit-failed", action="store_true", help="resubmit only the failed runs"
    )
    parser.add_argument("--lines", type=int, default=6, help="traceback lines shown per failed run")
    parser.add_argument(
        "--json", action="store_true", help="print the states as JSON instead of a table"
    )


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from harness.slurm_profile import SlurmProfile
    from harness.sweep import load_manifest, run_states, status_table, submit_sweep_runs

    manifest = load_manifest(args.sweep_dir)
    states = run_states(args.sweep_dir, manifest, lines=args.lines)
    if args.resubmit_failed:
        failed = [s.run_id for s in states if s.state == "failed"]
        submission = manifest.get("submission") or {}
        if not failed:
            print("no failed runs to resubmit")
        elif not submission:
            print("no earlier submission recorded; use `python -m harness sweep` to submit")
            return 2
        else:
            profile = SlurmProfile(**submission["profile"])
            submit_sweep_runs(
                args.sweep_dir, failed, launcher=submission["launcher"], profile=profile
            )
            print(f"resubmitted {len(failed)} failed runs: {', '.join(failed)}\n")
            states = run_states(args.sweep_dir, lines=args.lines)
    if args.json:
        print(json.dumps([dataclasses.asdict(s) for s in states], indent=2))
    else:
        print(f"sweep {manifest['name']} ({args.sweep_dir})\n")
        print(status_table(states))
    return 0
