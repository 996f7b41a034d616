"""`python -m harness run --method NAME`: train, describe, search and score one method."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "run"
HELP = "train a method and score its descriptors with the ISC 2021 metrics (one result record)"
DESCRIPTION = """\
Train one method with the shared trainer, describe the queries, references and training images,
search under the ISC 2021 global candidate cap (10 x number of queries), score raw and with
training-set score normalization, and write results/<run-id>/:

  record.json            method, resolved config, seed, git commit, versions, device, budget spent,
                         negatives per step, timings, peak memory, metrics (raw and normalized)
  config.yaml            the resolved config (written when the run starts)
  descriptors.h5         query/reference/training descriptors (official layout + training)
  predictions.csv        query_id,reference_id,score (+ predictions_normalized.csv)
  pr_curve.npz           precision/recall curves      train_log.jsonl   one JSON line per step
  checkpoints/last.pt    model, optimizer, schedule, bank/queue/phase and RNG state

Configuration, lowest precedence first: the defaults (harness/config.py and the method's config
class, the one source of defaults), --config FILE, then --set / --seed / --data.

  python -m harness run --method qk                        # default budget, generated mini-DISC
  python -m harness run --method moco --set moco.queue_size=1024 --set train.lr=0.03 --seed 1
  python -m harness run --method simclr --data /data/disc21 --set train.budget_kind=seconds \\
      --set train.budget_value=3600

The run id defaults to <method>-<hash of the config>-s<seed>, so running the same command again
resumes an interrupted run from its last checkpoint, and refuses a finished one unless --overwrite.
`python -m harness methods` lists the methods and their options.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method", required=True, help="a registered method (see `python -m harness methods`)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="a YAML file layered over the defaults (`methods --config NAME` prints them)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set train.lr=0.1 --set qk.phase_steps=20 (repeatable; "
        "values are YAML: null, true, [1, 2])",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="synthetic|PATH",
        help="the benchmark: 'synthetic' (generated mini-DISC, cached; the default) or a directory "
        "in the DISC21 layout",
    )
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default 0)")
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="results root (default: results/)"
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="directory name under --out (default: <method>-<hash>-s<seed>)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="discard an existing run directory (finished or not) and start again",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--launcher",
        choices=("inline", "local", "debug", "slurm"),
        default="inline",
        help="inline (default): in this process, with progress bars, Ctrl-C and the traceback "
        "where it happens; local: a submitit child process; debug: submitit's in-process executor; "
        "slurm: sbatch (returns once submitted; logs in <run dir>/slurm/). See harness/launch.py",
    )
    parser.add_argument(
        "--slurm-profile",
        default=None,
        metavar="NAME|PATH",
        help="configs/slurm/NAME.yaml or a YAML path (partition, gpus, time ...; slurm/README.md)",
    )
    parser.add_argument(
        "--slurm-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a SLURM profile key, e.g. --slurm-set time_min=30 (repeatable)",
    )


def format_metrics_table(record: dict) -> str:
    """A short table: one row per score variant, the headline metrics and the time spent."""

    def cell(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    header = f"{'scores':<12}{'µAP':>8}{'R@P90':>8}{'R@1':>8}{'R@10':>8}{'n_pred':>9}"
    lines = [f"{record['run_id']}  ({record['method']}, seed {record['seed']})", header]
    for name, metrics in record["metrics"].items():
        if metrics is None:
            continue
        lines.append(
            f"{name:<12}{cell(metrics['average_precision']):>8}{cell(metrics['recall_at_p90']):>8}"
            f"{cell(metrics['recall_at_rank1']):>8}{cell(metrics['recall_at_rank10']):>8}"
            f"{metrics['n_predictions']:>9}"
        )
    t = record["timings"]
    b = record["budget"]
    lines.append(
        f"budget {b['steps']} steps / {b['images_seen']} images; negatives/step "
        f"{record['negatives_per_step']}; time "
        + ", ".join(
            f"{k} {t[k]:.1f}s" for k in ("train", "extract", "search", "metrics", "total") if k in t
        )
    )
    skipped = record["benchmark"].get("skipped_images") or 0
    if skipped:
        listed = record.get("files", {}).get("skipped_images")
        where = f" (listed in {listed})" if listed else ""
        lines.append(f"skipped {skipped} bad image(s){where}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from harness.config import resolve_config
    from harness.pipeline import execute_run_dir
    from harness.run_dir import RECORD_FILENAME, prepare_run_dir

    overrides = list(args.overrides)
    if args.run_id is not None:
        overrides.append(f"run_id={args.run_id}")
    cfg = resolve_config(
        args.method,
        config_path=args.config,
        overrides=overrides,
        seed=args.seed,
        data=args.data,
    )
    run_dir = prepare_run_dir(cfg, args.out, overwrite=args.overwrite)
    print(f"run directory: {run_dir}")
    if args.launcher != "inline":
        from harness.launch import launch_run_dir
        from harness.slurm_profile import load_profile

        profile = load_profile(args.slurm_profile, args.slurm_set)
        result = launch_run_dir(run_dir, args.launcher, profile=profile)
        if args.launcher == "slurm":
            print(
                f"submitted SLURM job {result.job_id}; the record will be {run_dir / RECORD_FILENAME}"
            )
            return 0
        print(format_metrics_table(result))
        return 0
    record = execute_run_dir(run_dir, progress=not args.no_progress)
    print(format_metrics_table(record))
    return 0
