"""The DISC21 protocol, its paper sweep, and the cost estimate `sweep --dry-run` prints before a
sweep is submitted (docs/disc21.md): the files load and validate for every method on a benchmark
laid out as DISC21 is downloaded, the grid expands, the estimate's arithmetic, every way a
calibration file can fail, and the runbook's commands as written."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pytest
from conftest import run_harness

from harness.calibration import load_calibration
from harness.cli import build_parser, main
from harness.config import resolve_config
from harness.cost import BenchmarkSizes, estimate, run_work
from harness.data.layout import load_benchmark
from harness.optimization import total_steps_for
from harness.sweep_grid import expand_grid, resolve_runs
from harness.sweep_spec import load_sweep_spec, sweep_profile
from methods import list_methods

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = "configs/protocols/disc21.yaml"
SWEEP = "configs/sweeps/disc21-paper.yaml"
RUNBOOK = REPO / "docs" / "disc21.md"
DOCS = REPO / "docs" / "troubleshooting.md"
DISC21 = BenchmarkSizes(50_000, 1_000_000, 1_000_000, "DISC21")
TRAINED = ("qk", "simclr", "moco", "membank", "sscd", "xbm")


@pytest.fixture(scope="module")
def disc_layout(tmp_path_factory):
    """A tiny generated benchmark renamed to DISC21's download layout (references/, dev_queries/,
    train/, dev_ground_truth.csv, no metadata)."""
    from harness.data.synth import SynthParams, synthesize

    params = SynthParams(references=16, training=20, queries=8, size=32)
    root = synthesize(tmp_path_factory.mktemp("disc") / "DISC21", params, workers=1, progress=False)
    (root / "queries").rename(root / "dev_queries")
    (root / "training").rename(root / "train")
    (root / "ground_truth.csv").rename(root / "dev_ground_truth.csv")
    (root / "metadata.csv").unlink()
    return root


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder laid out as the runbook asks, commands run from it: configs/ (the repository's),
    weights/resnet50.pth (a stand-in: resolving a config hashes the file, nothing loads it)."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "resnet50.pth").write_bytes(b"stand-in weights")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def link_data(workspace: Path, disc_layout: Path) -> None:
    (workspace / "data").mkdir()
    (workspace / "data" / "disc21").symlink_to(disc_layout)


def fake_bench(
    path: Path,
    *,
    backbone: str = "resnet50",
    image_size: int = 224,
    device: str = "NVIDIA H100 80GB HBM3",
    train_ips: float = 1000.0,
) -> Path:
    """A bench JSON in the layout `python -m harness bench` writes, with round figures: every
    method trains at `train_ips` preloaded and 800/s from files (slowdown 1.25), extraction
    2,000/s, QK's head loss 1e-7 s per negative, search 1e-12 s per query x reference x dim."""
    common = {"benchmark": "methods", "backbone": backbone, "image_size": image_size, "batch": 64}
    methods = [{**common, "case": "train", "method": m, "images_per_s": train_ips} for m in TRAINED]
    methods[0]["negatives"] = 5_000
    methods += [
        {
            **common,
            "case": "train (dataloader)",
            "method": "simclr",
            "images_per_s": 800.0,
            "reference_images_per_s": 1000.0,
        },
        {**common, "case": "extract", "method": "simclr", "images_per_s": 2_000.0},
    ]
    negatives = [
        {
            "case": "head",
            "dtype": "bf16",
            "N": n,
            "seconds_per_step": 1e-7 * n,
            "backbone": backbone,
        }
        for n in (10_000, 100_000)
    ]
    search = [{"n_queries": 1_000, "n_references": 1_000_000, "dim": 1_000, "seconds": 1.0}]
    report = {
        "quick": False,
        "machine": {"device": device},
        "benchmarks": {
            "methods": {"rows": methods},
            "negatives": {"rows": negatives},
            "search": {"rows": search},
        },
    }
    path.write_text(json.dumps(report))
    return path


# --- the protocol -------------------------------------------------------------------------------


def test_protocol_resolves_for_every_method_on_a_disc_layout(workspace, disc_layout):
    for method in list_methods():
        cfg = resolve_config(method, config_path=PROTOCOL, data=str(disc_layout))
        assert (cfg.model.backbone, cfg.model.image_size, cfg.model.embedding_dim) == (
            "resnet50",
            224,
            256,
        )
        assert cfg.model.weights == "weights/resnet50.pth" and not cfg.model.pretrained
        assert (cfg.train.budget_kind, cfg.train.budget_value) == ("images", 20_000_000)
        assert (cfg.eval.score_norm_reduction, cfg.eval.score_norm_beta, cfg.eval.score_norm_n) == (
            "nth",
            2.0,
            10,
        )
        assert cfg.eval.every and cfg.eval.val_queries and cfg.eval.val_references
    bench = load_benchmark(disc_layout, check_images=False)
    assert (len(bench.queries), len(bench.references), len(bench.training)) == (8, 16, 20)


def test_protocol_arithmetic_matches_its_comments(workspace):
    qk = resolve_config("qk", config_path=PROTOCOL)
    assert total_steps_for(qk.train) == 39_063  # ceil(20e6 / 512)
    assert math.ceil(39_063 / qk.method_config.phase_steps) == 5  # Q, K, Q, K, Q
    assert qk.train.lr == pytest.approx(5e-4 * math.sqrt(qk.train.batch_size / 256), rel=1e-3)
    assert qk.train.batch_size == 64 * sweep_profile(load_sweep_spec(SWEEP)).gpus_per_node
    assert (qk.method_config.cache_dtype, qk.method_config.chunk_size) == ("bf16", 16_384)
    assert qk.method_config.num_negatives is None  # all 1M training images
    moco = resolve_config("moco", config_path=PROTOCOL)
    assert (moco.method_config.queue_size, moco.method_config.momentum) == (65_536, 0.999)
    # Another method's section never reaches a run: simclr's id ignores the qk section.
    assert resolve_config("simclr", config_path=PROTOCOL).method_config.__class__.__name__ == (
        "SimCLRConfig"
    )


# --- the sweep ------------------------------------------------------------------------------------


def test_paper_sweep_loads_expands_and_resolves(workspace):
    spec = load_sweep_spec(SWEEP)
    points = expand_grid(spec)
    assert len(points) == 27
    equal_budget = [p for p in points if set(p) == {"method", "seed"}]
    assert {p["method"] for p in equal_budget} == {*TRAINED, "none"}
    assert sorted(p["qk.num_negatives"] for p in points if "qk.num_negatives" in p) == sorted(
        [10_000, 100_000] * 3
    )
    resolved = resolve_runs(spec)
    assert len({run.run_id for run, _ in resolved}) == 27
    assert {cfg.data.spec for _, cfg in resolved} == {"data/disc21"}
    profile = sweep_profile(spec)
    assert (profile.gpus_per_node, profile.time_min, profile.extra_sbatch) == (
        8,
        1440,
        {"requeue": True},
    )
    assert spec.benchmark_sizes == {
        "queries": 50_000,
        "references": 1_000_000,
        "training": 1_000_000,
    }


# --- the estimate -------------------------------------------------------------------------------


def _cost_rows(out: str) -> dict[int, list[str]]:
    """The cost table's rows by run index (the table after the one holding run ids)."""
    table = out.split("nothing submitted: --dry-run)", 1)[1]
    return {
        int(cells[0]): cells
        for cells in (line.split() for line in table.splitlines())
        if cells and cells[0].isdigit()
    }


def test_dry_run_without_calibration_counts_the_work_and_says_why_no_times(workspace, capsys):
    assert main(["sweep", SWEEP, "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = _cost_rows(out)
    assert rows[0][:5] == ["0", "39,063", "20M", "5", "28.2M"]  # qk: 5 cache passes of 1M
    assert rows[3][:5] == ["3", "39,063", "20M", "0", "23.2M"]  # simclr
    assert rows[18][:5] == ["18", "0", "0", "0", "2.1M"]  # none: one validation point, extraction
    assert "(the sweep file's benchmark_sizes (data/disc21 not here))" in out
    assert "no calibration: times are not estimated" in out
    assert (
        "python -m harness bench methods negatives search --config configs/protocols/disc21.yaml"
        in out
    )
    assert "--set train.batch_size=64 --json bench.json, then add --calibration bench.json" in out


def test_dry_run_counts_the_benchmark_where_it_is_readable(workspace, disc_layout, capsys):
    link_data(workspace, disc_layout)
    assert main(["sweep", SWEEP, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"8 queries, 16 references, 20 training images \(counted in data/disc21", out)


def test_estimate_arithmetic_per_stage(workspace):
    cal = load_calibration(fake_bench(workspace / "bench.json"), "way out")
    qk = resolve_config("qk", config_path=PROTOCOL)
    work = run_work(qk, DISC21, world=8)
    assert (work.steps, work.cache_passes, work.validation_points) == (39_063, 5, 21)
    assert work.decoded_images == 39_063 * 512 + 5 * 1_000_000 + 21 * 55_000 + 2_050_000
    est = estimate(work, qk, cal)
    step = 64 / 1000 * 1.25 + 1e-7 * (1_000_000 - 5_000)  # per-GPU batch; QK's loss beyond 5k
    assert est.train == pytest.approx(39_063 * step)
    assert est.cache == pytest.approx(5 * 1_000_000 / 2_000 / 8)  # shared among the 8 GPUs
    assert est.validation == pytest.approx(21 * 55_000 / 2_000)  # rank 0 alone
    assert est.extract == pytest.approx(2_050_000 / 2_000 / 8)
    units = 50_000 * 1_000_000 * 256 * 2 + 50_000 * 1_000_000 * 256 + 21 * 5_000 * 50_000 * 256
    assert est.search == pytest.approx(units * 1e-12)
    assert est.qk_loss_extrapolated
    # With 10k of the 1M negatives, a phase start encodes those 10k alone.
    subset = resolve_config("qk", config_path=PROTOCOL, overrides=["qk.num_negatives=10000"])
    assert run_work(subset, DISC21, world=8).cache_images == 5 * 10_000


def test_dry_run_with_a_calibration_prints_times_gpu_hours_and_totals(workspace, capsys):
    fake_bench(workspace / "bench.json")
    assert main(["sweep", SWEEP, "--dry-run", "--calibration", "bench.json"]) == 0
    out = capsys.readouterr().out
    simclr = _cost_rows(out)[3]
    # 39,063 steps x 64 images per GPU / 1,000 images/s x 1.25 = 3,125 s; extraction of 2.05M
    # shared by 8 GPUs and validation 21 x 55k on one, at 2,000/s; search 3 x 50k x 1M x 256 and
    # validation's at 1e-12 s.
    search = (3 * 50_000 * 1_000_000 + 21 * 5_000 * 50_000) * 256 * 1e-12
    seconds = 39_063 * 0.08 + (2_050_000 / 8 + 21 * 55_000) / 2_000 + search
    assert simclr[6:8] == ["52", "min"] and simclr[-1] == f"{seconds * 8 / 3600:,.1f}"
    assert "GPU-hours (8 GPUs per job); with 8 job(s) at once" in out
    assert "calibration bench.json: resnet50 at 224 px on NVIDIA H100 80GB HBM3" in out
    assert "WARNING" not in out


def test_a_cpu_calibration_for_gpu_jobs_is_flagged(workspace, capsys):
    fake_bench(workspace / "bench.json", device="cpu")
    assert main(["sweep", SWEEP, "--dry-run", "--calibration", "bench.json"]) == 0
    assert "WARNING: the calibration was measured on a CPU, but the jobs ask for 8 GPU(s)" in (
        capsys.readouterr().out
    )


# --- calibration files that cannot serve ----------------------------------------------------------

WAY_OUT = (
    "; make one on the hardware the runs will use: python -m harness bench methods negatives "
    "search --config configs/protocols/disc21.yaml --set model.backbone=resnet50 --set "
    "model.image_size=224 --set model.embedding_dim=256 --set train.batch_size=64 --json bench.json"
)
BAD_CALIBRATIONS = {
    "missing": (None, "error: --calibration bench.json: no such file" + WAY_OUT),
    "corrupt": (
        b'{"benchmarks": ',
        "error: --calibration bench.json: not a JSON file written by python -m harness bench "
        "(Expecting value: line 1 column 16 (char 15))" + WAY_OUT,
    ),
    "other benchmarks": (
        json.dumps({"benchmarks": {"metrics": {"rows": []}}}).encode(),
        "error: --calibration bench.json: holds no rows of bench methods (that bench ran metrics)"
        + WAY_OUT,
    ),
    "other backbone": (
        "resnet10t",
        "error: --calibration bench.json: measured resnet10t at 64 px, but the runs train "
        "resnet50 at 224 px" + WAY_OUT,
    ),
}


def _documented(message: str) -> bool:
    """Whether docs/troubleshooting.md's bad-input table shows `message` (`...`: text left out)."""
    table = DOCS.read_text().split("## Bad input", 1)[1].split("\n## ", 1)[0]
    patterns = [
        ".*".join(re.escape(part) for part in text.split("..."))
        for text in re.findall(r"`(error: [^`]*)`", table)
    ]
    return any(re.fullmatch(pattern, message) for pattern in patterns)


@pytest.mark.parametrize("case", BAD_CALIBRATIONS, ids=list(BAD_CALIBRATIONS))
def test_a_calibration_that_cannot_serve_is_one_line_with_the_way_out(case, workspace, capsys):
    content, expected = BAD_CALIBRATIONS[case]
    if content == "resnet10t":
        fake_bench(workspace / "bench.json", backbone="resnet10t", image_size=64)
    elif content is not None:
        (workspace / "bench.json").write_bytes(content)
    assert main(["sweep", SWEEP, "--dry-run", "--calibration", "bench.json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing half-printed before the error
    assert captured.err.strip() == expected
    assert _documented(expected), "docs/troubleshooting.md lacks the row"


def test_calibration_without_dry_run_and_no_sizes_are_clear_errors(workspace, capsys):
    fake_bench(workspace / "bench.json")
    assert main(["sweep", SWEEP, "--calibration", "bench.json"]) == 2
    line = capsys.readouterr().err.strip()
    assert line == "error: --calibration is read by --dry-run: add --dry-run to see the estimate"
    assert _documented(line)
    spec = workspace / "nosizes.yaml"
    spec.write_text((REPO / SWEEP).read_text().replace("benchmark_sizes:", "# benchmark_sizes:"))
    assert main(["sweep", str(spec), "--dry-run"]) == 0  # the table of runs, and why no estimate
    assert "no cost estimate: data/disc21 is not a folder here" in capsys.readouterr().out
    assert main(["sweep", str(spec), "--dry-run", "--calibration", "bench.json"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: no cost estimate: data/disc21 is not a folder here and ")
    assert _documented(line)


# --- a calibration measured by the real bench ---------------------------------------------------


@pytest.mark.slow
def test_a_bench_json_calibrates_the_dry_run_of_a_sweep_at_its_protocol(
    tmp_path, monkeypatch, capsys
):
    """`bench --set` at a small sweep's protocol, then its dry run: the JSON bench writes is the
    one the calibration reads (figures are not asserted)."""
    from harness.benchmarks import methods as methods_bench
    from harness.benchmarks import negatives as negatives_bench
    from harness.benchmarks import search as search_bench

    monkeypatch.setattr(
        methods_bench,
        "QUICK",
        methods_bench.Setting(
            "test_resnet", 32, 8, 48, steps=1, rounds=1, n_files=16, workers=0, extract_batch=8
        ),
    )
    monkeypatch.setattr(negatives_bench, "QUICK_SIZES", (500, 1_000))
    monkeypatch.setattr(search_bench, "QUICK_CASES", ((100, 1_000, 16),))
    protocol = ["model.backbone=test_resnet", "model.image_size=32", "model.embedding_dim=16"]
    bench = tmp_path / "bench.json"
    argv = ["bench", "methods", "negatives", "search", "--quick", "--json", str(bench)]
    assert main([*argv, *(f for o in [*protocol, "train.batch_size=8"] for f in ("--set", o))]) == 0
    sweep = tmp_path / "small.yaml"
    sweep.write_text(
        "name: small\nlauncher: local\nslurm_profile: local\n"
        "base: {data.synth: {references: 24, training: 32, queries: 12, size: 32}, "
        + ", ".join(o.replace("=", ": ") for o in protocol)
        + ", train.batch_size: 8, train.budget_value: 40, eval.every: 20, eval.val_queries: 6, "
        "eval.val_references: 12}\ngrid: {method: [qk, simclr, none]}\n"
    )
    capsys.readouterr()
    assert main(["sweep", str(sweep), "--dry-run", "--calibration", str(bench)]) == 0
    out = capsys.readouterr().out
    assert "wall-clock" in out and "estimated:" in out and "of jobs" in out
    assert f"calibration {bench}: test_resnet at 32 px on cpu (bench --quick sizes)" in out
    assert "QK's loss over its negatives" not in out  # 32 training images: fewer than the bench's


# --- the runbook ----------------------------------------------------------------------------------


def runbook_commands() -> list[str]:
    """Every `python -m harness ...` line of the runbook's code blocks, continuations joined."""
    blocks = re.findall(r"```bash\n(.*?)```", RUNBOOK.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("python -m harness "):
            commands.append(line)
    return commands


def test_the_runbook_commands_parse_as_written():
    commands = runbook_commands()
    used = {shlex.split(c)[3] for c in commands}
    assert {"data", "bench", "sweep", "status", "figures"} <= used, used
    parser = build_parser()
    for command in commands:
        parser.parse_args(
            shlex.split(command)[3:]
        )  # argparse exits on a command that does not parse


def test_the_runbook_checks_and_estimates_run_as_written(workspace, disc_layout):
    """The commands that need no GPU or SLURM, run as the runbook writes them, from a folder laid
    out as it asks (data/disc21 a DISC21-layout benchmark, weights/resnet50.pth)."""
    link_data(workspace, disc_layout)
    fake_bench(workspace / "bench.json")
    runnable = [
        c
        for c in runbook_commands()
        if c.startswith("python -m harness data check") or " --dry-run" in c
    ]
    assert len(runnable) >= 3, runnable
    for command in runnable:
        done = run_harness(*shlex.split(command)[3:], timeout=300, cwd=workspace)
        assert done.returncode == 0, (command, done.stderr)
