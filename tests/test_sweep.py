"""Sweep files, grid expansion, the sweep directory and status, without a scheduler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_harness
from slurm_cluster import counting_run

from harness.errors import ConfigError
from harness.slurm_profile import load_profile
from harness.sweep import run_states, status_table, submit_sweep_runs
from harness.sweep_dir import (
    grid_points,
    is_sweep_directory,
    load_manifest,
    prepare_sweep,
    submitted_spec_path,
)
from harness.sweep_grid import expand_grid, resolve_runs
from harness.sweep_spec import load_sweep_spec, spec_from_dict, sweep_profile

REPO = Path(__file__).parent.parent
TINY_BASE = yaml.safe_load((REPO / "configs" / "sweeps" / "tiny.yaml").read_text())["base"]


def _write(tmp_path: Path, data: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_grid_is_a_union_of_products_with_seeds():
    spec = spec_from_dict(
        {
            "grid": [
                {"method": ["qk"], "qk.num_negatives": [10, 20]},
                {"method": ["moco", "simclr"]},
            ],
            "seeds": [0, 1],
        }
    )
    points = expand_grid(spec)
    assert len(points) == 2 * 2 + 2 * 2
    assert {"method": "qk", "qk.num_negatives": 20, "seed": 1} in points
    assert {"method": "simclr", "seed": 0} in points
    # A repeated point appears once.
    spec = spec_from_dict({"grid": [{"method": ["qk"]}, {"method": ["qk", "moco"]}]})
    assert expand_grid(spec) == [{"method": "qk"}, {"method": "moco"}]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"grid": {}}, "`grid` is empty"),
        ({"name": "x"}, "`grid` is empty"),
        ({"grid": [{}]}, r"grid\[0\] is empty"),
        ({"grid": {"method": []}}, "`method` has no values"),
        ({"grid": {"method": ["qk"]}, "sedes": [1]}, "unknown key.*sedes"),
        ({"grid": {"method": ["qk"]}, "seeds": []}, "`seeds` is empty"),
        ({"grid": {"method": ["qk"]}, "base": [1]}, "`base` must be a mapping"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_sweep_files_are_refused(data, message):
    with pytest.raises(ConfigError, match=message):
        expand_grid(spec_from_dict(data, source="s.yaml"))


def test_unknown_config_key_names_the_grid_point():
    spec = spec_from_dict(
        {"grid": {"method": ["simclr"], "train.learning_rate": [0.1]}}, source="s.yaml"
    )
    with pytest.raises(ConfigError, match=r"s\.yaml: grid point 0 .*learning_rate"):
        resolve_runs(spec)
    spec = spec_from_dict(
        {"grid": {"method": ["simclr"], "moco.queue_size": [64]}}, source="s.yaml"
    )
    with pytest.raises(ConfigError, match="grid point 0"):
        resolve_runs(spec)
    with pytest.raises(ConfigError, match="no `method`"):
        resolve_runs(spec_from_dict({"grid": {"seed": [0]}}, source="s.yaml"))


@pytest.mark.slow
def test_sweep_file_slurm_values_keep_their_types(tmp_path):
    # `slurm: {mem_gb: null}` must reach the profile as None, not as the text "None".
    profile = tmp_path / "p.yaml"
    profile.write_text("partition: gpu\nmem_gb: 16\n")
    sweep = _write(
        tmp_path,
        {
            "base": TINY_BASE,
            "grid": {"method": ["simclr"]},
            "slurm_profile": str(profile),
            "slurm": {"partition": None, "mem_gb": None},
        },
    )
    proc = run_harness("sweep", str(sweep), "--dry-run", cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    spec = load_sweep_spec(sweep)
    assert (sweep_profile(spec).partition, sweep_profile(spec).mem_gb) == (None, None)
    # The command line still wins over the file; the file's values win over its profile.
    assert sweep_profile(spec, None, ["partition=cpu"]).partition == "cpu"
    typed = spec_from_dict({"grid": {"method": ["qk"]}, "slurm": {"account": "0123"}})
    assert sweep_profile(typed).account == "0123"  # as text, 0123 would read as a number
    bad = spec_from_dict({"grid": {"method": ["qk"]}, "slurm": {"nodes": 0}}, source="s.yaml")
    with pytest.raises(ConfigError, match=r"s\.yaml: slurm: nodes must be >= 1"):
        sweep_profile(bad)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\ngrid: {method: [qk\n")
    with pytest.raises(ConfigError, match=r"s\.yaml line \d"):
        load_sweep_spec(path)


def test_runs_carry_their_grid_values():
    spec = spec_from_dict(
        {"base": TINY_BASE, "grid": {"method": ["simclr"], "train.lr": [0.1, 0.2]}, "seeds": [3]}
    )
    runs = resolve_runs(spec)
    assert [cfg.train.lr for _, cfg in runs] == [0.1, 0.2]
    assert all(
        cfg.seed == 3 and cfg.train.budget_value == TINY_BASE["train.budget_value"]
        for _, cfg in runs
    )
    assert len({run.run_id for run, _ in runs}) == 2


@pytest.mark.slow
def test_dry_run_prints_the_table_and_writes_nothing(tmp_path):
    out_dir = tmp_path / "out"
    proc = run_harness(
        "sweep",
        "configs/sweeps/tiny.yaml",
        "--dry-run",
        "--out",
        str(out_dir),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "method=moco seed=1" in proc.stdout and "4 runs" in proc.stdout
    assert not out_dir.exists()
    bad = _write(tmp_path, {"grid": {"method": ["simclr"], "train.nope": [1]}})
    proc = run_harness("sweep", str(bad), "--dry-run", cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_sweep_directory_is_resumed_or_refused(tmp_path):
    spec = load_sweep_spec(
        _write(
            tmp_path,
            {"name": "a", "base": TINY_BASE, "grid": {"method": ["simclr"], "seed": [0, 1]}},
        )
    )
    sweep_dir = tmp_path / "sweep"
    manifest = prepare_sweep(spec, sweep_dir)
    assert [r["point"] for r in manifest["runs"]] == [
        {"method": "simclr", "seed": 0},
        {"method": "simclr", "seed": 1},
    ]
    assert (sweep_dir / "sweep.yaml").is_file()
    for entry in manifest["runs"]:
        assert (sweep_dir / entry["run_dir"] / "config.yaml").is_file()
    assert (
        prepare_sweep(spec, sweep_dir)["created_at"] == manifest["created_at"]
    )  # same sweep: resumed

    other = load_sweep_spec(
        _write(
            tmp_path,
            {"name": "a", "base": TINY_BASE, "grid": {"method": ["simclr"], "seed": [0, 2]}},
            "b.yaml",
        )
    )
    with pytest.raises(ConfigError, match="already holds a different sweep"):
        prepare_sweep(other, sweep_dir)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a sweep directory"):
        prepare_sweep(spec, tmp_path / "junk")
    with pytest.raises(ConfigError, match="no manifest.json"):
        load_manifest(tmp_path / "junk")


def test_sweep_directory_lists_its_grid_points_and_spec(tmp_path):
    grid = {"name": "a", "base": TINY_BASE, "grid": {"method": ["simclr"], "seed": [0, 1]}}
    sweep_dir = tmp_path / "sweep"
    assert not is_sweep_directory(sweep_dir)
    manifest = prepare_sweep(load_sweep_spec(_write(tmp_path, grid)), sweep_dir)
    assert is_sweep_directory(sweep_dir)
    assert grid_points(sweep_dir) == {
        manifest["runs"][0]["run_id"]: {"method": "simclr", "seed": 0},
        manifest["runs"][1]["run_id"]: {"method": "simclr", "seed": 1},
    }
    assert submitted_spec_path(sweep_dir) == sweep_dir / "sweep.yaml"
    # A spec that came from no file leaves no copy behind.
    prepare_sweep(spec_from_dict(grid), tmp_path / "from-dict")
    assert submitted_spec_path(tmp_path / "from-dict") is None
    (sweep_dir / "manifest.json").write_text("[]")
    with pytest.raises(ConfigError, match="unreadable manifest: not a JSON object"):
        grid_points(sweep_dir)


@pytest.mark.slow
def test_local_sweep_status_and_resubmit(tmp_path):
    spec = load_sweep_spec(
        _write(
            tmp_path,
            {"name": "loc", "base": TINY_BASE, "grid": {"method": ["simclr"], "seed": [0, 1, 2]}},
        )
    )
    sweep_dir = tmp_path / "sweep"
    manifest = prepare_sweep(spec, sweep_dir)
    run_ids = [r["run_id"] for r in manifest["runs"]]
    assert [s.state for s in run_states(sweep_dir)] == ["unsubmitted"] * 3
    (sweep_dir / "runs" / run_ids[2] / "FAIL").touch()
    profile = load_profile(None, ["array_parallelism=2", "time_min=5"])
    submit_sweep_runs(sweep_dir, run_ids, launcher="local", profile=profile, target=counting_run)
    states = run_states(sweep_dir)
    assert [s.state for s in states] == ["done", "done", "failed"]
    assert "deliberate failure" in states[2].failure
    table = status_table(states)
    assert "2 done, 1 failed" in table and f"{run_ids[2]} failed:" in table
    manifest = load_manifest(sweep_dir)
    assert manifest["submission"]["launcher"] == "local"
    assert all(
        entry["jobs"] and entry["jobs"][0]["launcher"] == "local" for entry in manifest["runs"]
    )

    (sweep_dir / "runs" / run_ids[2] / "FAIL").unlink()
    submit_sweep_runs(
        sweep_dir, [run_ids[2]], launcher="local", profile=profile, target=counting_run
    )
    assert [s.state for s in run_states(sweep_dir)] == ["done"] * 3
    jobs = {r["run_id"]: len(r["jobs"]) for r in load_manifest(sweep_dir)["runs"]}
    assert jobs == {run_ids[0]: 1, run_ids[1]: 1, run_ids[2]: 2}
    status = run_harness("status", str(sweep_dir), "--json", timeout=120)
    assert status.returncode == 0
    assert [s["state"] for s in json.loads(status.stdout)] == ["done"] * 3


def test_debug_sweep_runs_in_this_process(tmp_path):
    spec = load_sweep_spec(
        _write(
            tmp_path,
            {"name": "dbg", "base": TINY_BASE, "grid": {"method": ["simclr"], "seed": [0, 1]}},
        )
    )
    manifest = prepare_sweep(spec, tmp_path / "sweep")
    run_ids = [r["run_id"] for r in manifest["runs"]]
    submit_sweep_runs(
        tmp_path / "sweep",
        run_ids,
        launcher="debug",
        profile=load_profile(None),
        target=counting_run,
    )
    states = run_states(tmp_path / "sweep")
    assert [s.state for s in states] == ["done", "done"]
    assert all(s.job_id.startswith("DEBUG_") for s in states)
