"""Safe loading: nothing the harness reads can run code, and no config value can make it write
outside the run directory."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
import torch

from harness.cli import main

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(REPO / "harness").rglob("*.py"), *(REPO / "methods").rglob("*.py")])

# Unpickling that is allowed, with the reason. Nothing a user hands the harness is unpickled.
PICKLE_ALLOWED = {
    # AugLy's own font charset files, shipped inside the installed augly package.
    ("harness/data/edits.py", "pickle.load"),
    # submitit's result pickles, written by our own jobs into our own log folder.
    ("harness/job_state.py", "submitit.core.utils.pickle_load"),
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _calls() -> list[tuple[str, int, str, ast.Call]]:
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                rel = str(path.relative_to(REPO))
                found.append((rel, node.lineno, _dotted(node.func), node))
    return found


def test_the_scan_sees_the_calls_it_checks():
    names = {name for _, _, name, _ in _calls()}
    assert {"torch.load", "yaml.safe_load", "pickle.load"} <= names


def test_every_torch_load_is_weights_only():
    loads = [(f, line, call) for f, line, name, call in _calls() if name.endswith("torch.load")]
    assert loads, "no torch.load found: the scan is broken"
    for file, line, call in loads:
        flags = {k.arg: k.value for k in call.keywords}
        value = flags.get("weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{file}:{line}"


def test_no_unsafe_yaml_eval_exec_or_unpickling():
    unsafe = []
    for file, line, name, _ in _calls():
        last = name.rsplit(".", 1)[-1]
        if name in ("eval", "exec", "compile", "__import__"):
            unsafe.append(f"{file}:{line}: {name}")
        elif name.startswith("yaml.") and last in ("load", "load_all", "unsafe_load", "full_load"):
            unsafe.append(f"{file}:{line}: {name} (use yaml.safe_load)")
        elif (last in ("load", "loads") and "pickle" in name) or last == "pickle_load":
            if (file, name) not in PICKLE_ALLOWED:
                unsafe.append(f"{file}:{line}: {name}")
        elif name.endswith("np.load") or name == "numpy.load":
            pass  # checked below: allow_pickle must stay off
    assert not unsafe, "\n".join(unsafe)
    for file, line, name, call in _calls():
        if name.endswith("np.load"):
            flags = {k.arg: k.value for k in call.keywords}
            allow = flags.get("allow_pickle")
            assert allow is None or (isinstance(allow, ast.Constant) and allow.value is False), (
                f"{file}:{line}"
            )


def test_yaml_python_tags_are_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            train:
              lr: !!python/object/apply:os.system ["touch {marker}"]
            """
        )
    )
    assert main(["run", "--method", "simclr", "--config", str(config), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config} line 2: invalid YAML") and "Traceback" not in err
    assert not marker.exists()

    sweep = tmp_path / "evil-sweep.yaml"
    sweep.write_text(f'grid:\n  method: !!python/object/apply:os.system ["touch {marker}"]\n')
    out = tmp_path / "sweep"
    assert main(["sweep", str(sweep), "--dry-run", "--out", str(out)]) == 2
    assert f"{sweep} line 2: invalid YAML" in capsys.readouterr().err
    assert not marker.exists() and not out.exists()


def test_override_values_are_data_not_code(tmp_path, capsys):
    marker = tmp_path / "ran"
    code = main(
        [
            "run",
            "--method",
            "simclr",
            "--out",
            str(tmp_path / "results"),
            "--set",
            f'train.lr=!!python/object/apply:os.system ["touch {marker}"]',
            "--set",
            "train.budget_value=__import__('os').system('true')",
        ]
    )
    assert code == 2 and not marker.exists()
    assert "train.lr: expected float, got" in capsys.readouterr().err


@pytest.mark.parametrize(
    "run_id", ["../outside", "/tmp/absolute", "a/../../outside", ".hidden", "..", "a/b", ""]
)
def test_a_run_id_cannot_leave_the_results_directory(run_id, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["run", "--method", "simclr", "--out", str(out), "--run-id", run_id]) == 2
    assert f"error: run_id {run_id!r} is not a plain directory name" in capsys.readouterr().err
    assert not out.exists() and sorted(tmp_path.iterdir()) == []


def test_a_sweep_cannot_place_a_run_outside_its_directory(tmp_path, capsys):
    sweep = tmp_path / "escape.yaml"
    sweep.write_text('grid:\n  method: [simclr]\n  run_id: ["../../outside"]\n')
    out = tmp_path / "sweep"
    assert main(["sweep", str(sweep), "--out", str(out), "--dry-run"]) == 2
    assert "run_id '../../outside' is not a plain directory name" in capsys.readouterr().err
    assert not (tmp_path / "outside").exists() and not out.exists()


def test_checkpoints_the_trainer_writes_load_weights_only(tmp_path):
    """Every method's checkpoint (queues, banks, phases, RNG state) is plain tensors and
    containers, so resuming never needs unsafe loading."""
    from test_methods_support import build, context

    from harness.checkpoint import rng_state
    from methods.membank import MemoryBankConfig

    configs = {
        "simclr": None,
        "moco": None,
        "membank": MemoryBankConfig(num_negatives=8),
        "qk": None,
    }
    for name, config in configs.items():
        method = build(name, config, ctx=context())
        path = tmp_path / f"{name}.pt"
        torch.save({"format": 1, "method": method.state_dict(), "rng": rng_state()}, path)
        state = torch.load(path, weights_only=True)
        assert state["method"].keys() == method.state_dict().keys()
