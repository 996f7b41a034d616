"""`python -m harness bench`: speed figures, each measured next to its floor or reference."""

from __future__ import annotations

import argparse

NAME = "bench"
HELP = (
    "benchmarks (metrics, search, ...): timings next to their floor or reference, as a table + JSON"
)
DESCRIPTION = """\
Run benchmark modules from harness/benchmarks/ in this process and print one table per module.
Every figure is measured side by side with its floor or reference in the same process, e.g. the
vectorized ISC metrics against a plain-Python implementation of the same definitions, or the
global-capped search against a bare faiss flat kNN over the same data. The rows and the machine
(CPU count, torch/faiss versions, device) are written as JSON.

  python -m harness bench                 every benchmark, full sizes (minutes on 2 CPU cores)
  python -m harness bench metrics search  those two
  python -m harness bench --quick         small sizes, seconds (what CI runs)
  python -m harness bench scale           every stage of a run at 3 sizes (~10 min on 2 CPU
                                          cores): time, peak memory and the fitted growth
                                          exponent next to the expected one
  python -m harness bench methods negatives --config configs/protocols/disc21.yaml \
      --set train.batch_size=64 --json bench.json
                                          at a run protocol's model and per-GPU batch: the
                                          calibration of `sweep --dry-run --calibration bench.json`

On a GPU the same command runs unchanged (faiss on the GPU when it sees one, CUDA synchronized
around every timing).
"""


def _available() -> dict[str, str]:
    """Benchmark names and their one-line descriptions, without importing heavy libraries."""
    import importlib
    import pkgutil

    from harness import benchmarks

    found = {}
    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{benchmarks.__name__}.{info.name}")
            found[info.name] = getattr(module, "DESCRIPTION", "")
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        listing = "\n".join(f"  {name:<10} {text}" for name, text in _available().items())
    except Exception as err:  # noqa: BLE001 - a broken module must not break --help
        listing = f"  (could not list benchmarks: {err})"
    parser.epilog = "benchmarks:\n" + listing + "\n  all        every benchmark above"
    parser.add_argument(
        "benchmarks",
        nargs="*",
        default=["all"],
        metavar="NAME",
        help="benchmarks to run (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes that finish in seconds (CI)"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="measure `methods` and `negatives` at this run protocol's backbone, image size, "
        "embedding and batch (e.g. configs/protocols/disc21.yaml); the batch is per device",
    )
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override a protocol key, as `run --set` (e.g. train.batch_size=64, the per-GPU "
        "share of a global batch); repeatable",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="where to write rows + machine info (default: results/bench/bench-<UTC time>.json)",
    )


def _format_cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}" if abs(value) < 1 else f"{value:,.3f}".rstrip("0").rstrip(".")
        return f"{value:.3e}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Rows as an aligned text table; columns in first-seen order, numbers right-aligned."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    cells = [[_format_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    numeric = [
        all(
            isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool)
            for row in rows
        )
        for c in columns
    ]

    def line(values):
        return "  ".join(
            v.rjust(w) if is_number else v.ljust(w)
            for v, w, is_number in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join(
        [line(columns), line(["-" * w for w in widths])] + [line(values) for values in cells]
    )


def main(args: argparse.Namespace) -> int:
    import dataclasses
    import time
    from datetime import datetime, timezone
    from pathlib import Path

    from harness.atomic import atomic_write_json
    from harness.benchmarks import Protocol, accepts_protocol, discover, machine_info
    from harness.errors import ConfigError

    modules = discover()
    wanted = list(modules) if "all" in args.benchmarks else list(dict.fromkeys(args.benchmarks))
    unknown = [name for name in wanted if name not in modules]
    if unknown:
        raise ConfigError(
            f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(modules)}, all"
        )

    protocol = None
    if args.config is not None or args.overrides:
        from harness.device import apply_thread_budget

        protocol = Protocol(args.config, tuple(args.overrides))
        # A bad file or key fails now, not after minutes of timing; and torch gets the threads
        # the protocol's runs will have (train.threads, else the CPUs of this process), whatever
        # OMP_NUM_THREADS says, as the pipeline does.
        apply_thread_budget(protocol.resolve("simclr").train.threads)
    started = datetime.now(timezone.utc)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "protocol": None if protocol is None else dataclasses.asdict(protocol),
        "machine": machine_info(),
        "benchmarks": {},
    }
    for name in wanted:
        module = modules[name]
        print(f"\n## {name}: {getattr(module, 'DESCRIPTION', '')}", flush=True)
        start = time.perf_counter()
        if accepts_protocol(module):
            rows = module.run(quick=args.quick, protocol=protocol)
        else:
            if protocol is not None:
                print(f"(at its own sizes: --config/--set do not apply to {name})", flush=True)
            rows = module.run(quick=args.quick)
        report["benchmarks"][name] = {
            "description": getattr(module, "DESCRIPTION", ""),
            "seconds": time.perf_counter() - start,
            "rows": rows,
        }
        print(format_table(rows), flush=True)

    path = (
        Path(args.json)
        if args.json
        else (Path("results") / "bench" / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json")
    )
    atomic_write_json(path, report)
    machine = report["machine"]
    print(
        f"\nmachine: {machine.get('cpu_count')} CPUs, device {machine.get('device')}, "
        f"torch {machine.get('torch')}, faiss {machine.get('faiss')}\nwritten: {path}"
    )
    return 0
