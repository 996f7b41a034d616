"""What the user's machine does to a run: a full disk, a folder through a file, a run already going
in another process, worker counts past the machine's CPUs, names that would leave their root.
Each ends in one clear line and loses nothing."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from conftest import run_harness, set_flags, tiny_run_overrides

from harness import cli
from harness.atomic import atomic_torch_save
from harness.device import loader_workers, usable_cpus
from harness.errors import ConfigError
from harness.paths import child_path

TINY = tiny_run_overrides("train.budget_value=2", "eval.score_norm_n=2")


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs: a real file system that fills up (root only, where mounts are allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Write until the disk is full; returns the filler, whose removal frees the space."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_checkpoint_that_fills_the_disk_names_the_file_and_keeps_the_old_one(small_disk):
    path = small_disk / "last.pt"
    atomic_torch_save({"step": 1}, path)
    before = path.read_bytes()
    filler = _fill(small_disk)
    os.truncate(filler, filler.stat().st_size - 256 * 1024)  # a little room, not enough
    with pytest.raises(OSError) as caught:  # torch itself says "unexpected pos 704 vs 598"
        atomic_torch_save({"weights": torch.zeros(1_000_000)}, path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert path.read_bytes() == before
    names = {p.name for p in small_disk.iterdir()}
    assert names == {"filler", "last.pt"}, "the half-written temporary must be gone"


def test_a_run_on_a_full_disk_is_one_line_and_the_same_command_finishes_once_space_is_freed(
    tiny_benchmark, small_disk
):
    argv = ["run", "--method", "simclr", "--data", str(tiny_benchmark), "--out", str(small_disk)]
    argv += [*set_flags(TINY), "--no-progress"]
    filler = _fill(small_disk)
    full = run_harness(*argv, timeout=600)
    assert full.returncode == 2, full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert "Traceback" not in full.stderr
    assert last.startswith(f"error: {small_disk}") and "No space left on device" in last, last
    assert "free space on that disk and rerun the same command" in last
    filler.unlink()
    again = run_harness(*argv, timeout=600)
    assert again.returncode == 0, again.stderr
    assert list(small_disk.glob("*/record.json"))


def test_overwrite_refuses_a_run_that_another_process_is_running(tiny_benchmark, tmp_path):
    from harness.config import resolve_config
    from harness.run_dir import LOCK_FILE, prepare_run_dir

    cfg = resolve_config("simclr", overrides=TINY, data=str(tiny_benchmark))
    run_dir = prepare_run_dir(cfg, tmp_path)
    (run_dir / "train_log.jsonl").write_text('{"step": 0}\n')
    with open(run_dir / LOCK_FILE, "a") as lock:  # what the running process holds
        fcntl.flock(lock, fcntl.LOCK_EX)
        argv = ["run", "--method", "simclr", "--data", str(tiny_benchmark), "--out", str(tmp_path)]
        proc = run_harness(*argv, *set_flags(TINY), "--overwrite", "--no-progress", timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {run_dir}: this run is in progress in another process; --overwrite would train "
        "it twice. Wait for it to finish (or stop it), then pass --overwrite again"
    )
    assert (run_dir / "train_log.jsonl").read_text() == '{"step": 0}\n'


def test_worker_counts_are_capped_at_the_usable_cpus_and_said_once(capsys):
    cpus = usable_cpus()
    assert loader_workers(cpus, "train.num_workers") == cpus
    assert capsys.readouterr().err == ""
    key = f"data.workers-{uuid.uuid4().hex[:6]}"  # the message is said once per process and key
    assert loader_workers(100_000, key) == cpus
    assert loader_workers(100_000, key) == cpus
    assert (
        capsys.readouterr().err
        == f"{key}=100000 capped to {cpus}: this process may use {cpus} CPUs\n"
    )
    assert cpus == len(os.sched_getaffinity(0))


def test_names_become_one_folder_inside_their_root(tmp_path):
    assert child_path(tmp_path, "qk-s0", "run_id") == tmp_path / "qk-s0"
    for name in ("..", "../x", "/etc", "a/b", ".hidden", "", "x\n"):
        with pytest.raises(ConfigError, match="is not a plain directory name"):
            child_path(tmp_path, name, "run_id")


def test_figures_refuse_a_sweep_name_that_leaves_results(tmp_path):
    proc = run_harness("figures", "../../etc", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: sweep name '../../etc' is not a plain directory name (letters, digits, _ . = + -, "
        "not starting with '.'); it must stay inside results/sweeps"
    )


def test_an_os_error_without_a_file_is_a_bug_and_keeps_its_traceback(monkeypatch):
    from harness.commands import methods

    def broken(args):
        raise OSError(errno.EIO, "an internal failure")

    monkeypatch.setattr(methods, "main", broken)
    with pytest.raises(OSError, match="an internal failure"):
        cli.main(["methods"])
