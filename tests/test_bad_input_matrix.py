"""Every kind of bad input, through the command line as a user types it.

Each row: how the input is broken, the command, and the exact message the user reads on stderr.
Every row must exit non-zero with no traceback, and leave every file that existed before it
byte-identical (the only thing a rejected `run` may add is the new run directory's config.yaml, so
the same command resumes once the input is fixed). docs/troubleshooting.md shows the same table.
"""

from __future__ import annotations

import fractions
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.cli import main
from harness.isc import Descriptors, write_descriptors

TINY = [
    "model.backbone=test_resnet",
    "model.image_size=32",
    "model.embedding_dim=16",
    "train.batch_size=8",
    "train.budget_value=2",
    "train.num_workers=0",
    "data.workers=0",
    "eval.score_norm_n=2",
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    from harness.data.synth import SynthParams, synthesize

    params = SynthParams(references=16, training=20, queries=8, size=32)
    root = tmp_path_factory.mktemp("pristine") / "bench"
    return synthesize(root, params, workers=1, progress=False)


@dataclass
class Workspace:
    root: Path  # everything a case may touch lives here
    bench: Path  # a private copy of the tiny benchmark
    out: Path  # the results root given to `run --out`

    def run_args(self, *extra: str) -> list[str]:
        argv = ["run", "--method", "simclr", "--data", str(self.bench), "--out", str(self.out)]
        for item in TINY:
            argv += ["--set", item]
        return [*argv, "--no-progress", *extra]

    def first(self, split: str) -> Path:
        return sorted((self.bench / split).iterdir())[0]

    def positive_pair(self) -> str:
        lines = (self.bench / "ground_truth.csv").read_text().splitlines()
        return next(line for line in lines[1:] if line.split(",")[1])

    def run_dir(self) -> Path:
        """The run directory the standard command uses (prepared here, as a previous run left it)."""
        from harness.config import prepare_run_dir, resolve_config

        cfg = resolve_config("simclr", overrides=TINY, data=str(self.bench))
        return prepare_run_dir(cfg, self.out)

    def descriptors(self, name: str, split: str, n: int, dim: int, *, poison=None) -> Path:
        prefix = {"query": "Q", "reference": "R"}[split]
        ids = np.array([f"{prefix}{i:05d}" if split == "query" else f"R{i:06d}" for i in range(n)])
        features = np.random.default_rng(0).random((n, dim), dtype=np.float32)
        if poison is not None:
            features[3, 1] = poison
        path = self.root / name
        write_descriptors(path, **{split: Descriptors(ids, features)})
        return path

    def score_args(self, *extra: str) -> list[str]:
        return ["score", "--gt", str(self.bench / "ground_truth.csv"), *extra]


@dataclass
class Case:
    name: str
    # Breaks the workspace and returns (argv, expected stderr with {bench}/{out}/{root}/{run} holes).
    setup: Callable[[Workspace], tuple[list[str], str]]


def _corrupt(ws: Workspace):
    path = ws.first("references")
    path.write_bytes(b"this is not a JPEG")
    return ws.run_args(), (
        f"error: {path}: does not decode (UnidentifiedImageError: cannot identify image file "
        f"'{path}'); to skip bad files, pass --skip-bad-images (data check) or "
        "--set data.skip_bad_images=true (run, sweep)"
    )


def _zero_byte(ws: Workspace):
    path = ws.first("training")
    path.write_bytes(b"")
    return ws.run_args(), (
        f"error: {path}: zero-byte file; to skip bad files, pass --skip-bad-images (data check) "
        "or --set data.skip_bad_images=true (run, sweep)"
    )


def _truncated(ws: Workspace):
    path = ws.first("queries")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])  # an interrupted copy: header intact, tail gone
    return ws.run_args(), (f"error: {path}: does not decode (OSError: image file is truncated")


def _missing_split(ws: Workspace):
    shutil.rmtree(ws.bench / "training")
    return ws.run_args(), (
        f"error: {ws.bench}: no training folder (looked for training/, train/, "
        "training_images/, images/train/, images/training/)"
    )


def _missing_ground_truth(ws: Workspace):
    (ws.bench / "ground_truth.csv").unlink()
    return ws.run_args(), (
        f"error: {ws.bench}: no ground truth file (looked for ground_truth.csv, "
        "dev_ground_truth.csv, public_ground_truth.csv, list_files/dev_ground_truth.csv, "
        "list_files/public_ground_truth.csv)"
    )


def _malformed_gt(ws: Workspace):
    gt = ws.bench / "ground_truth.csv"
    lines = gt.read_text().splitlines()
    lines[2] += ",0.9"
    gt.write_text("\n".join(lines) + "\n")
    return ws.run_args(), f"error: {gt}:3: 3 fields, expected 2 (query_id,reference_id)"


def _unterminated_quote(ws: Workspace):
    gt = ws.bench / "ground_truth.csv"
    gt.write_text('query_id,reference_id\n"Q00000,R000001\n')
    return ws.run_args(), (
        f"error: {gt}: malformed CSV: Error tokenizing data. C error: EOF inside string "
        "starting at row 1"
    )


def _duplicate_gt_pair(ws: Workspace):
    gt = ws.bench / "ground_truth.csv"
    pair = ws.positive_pair()
    lines = gt.read_text().splitlines()
    gt.write_text("\n".join([*lines, pair]) + "\n")
    first = lines.index(pair) + 1
    return ws.run_args(), (
        f"error: {gt}:{len(lines) + 1}: duplicate ground-truth row {pair} (first on line {first})"
    )


def _gt_without_image(ws: Workspace):
    gt = ws.bench / "ground_truth.csv"
    query = gt.read_text().splitlines()[1].split(",")[0]
    (ws.bench / "queries" / f"{query}.jpg").unlink()
    return ws.run_args(), (
        f"error: {gt}: query {query} has no image in the queries folder "
        "(1 ground-truth queries missing)"
    )


def _malformed_predictions(ws: Workspace):
    path = ws.root / "predictions.csv"
    path.write_text("query_id,reference_id,score\nQ00000,R000001,0.5\nQ00001,R000002\n")
    return ws.score_args("--predictions", str(path)), (
        f"error: {path}:3: no score (expected query_id,reference_id,score)"
    )


def _duplicate_predictions(ws: Workspace):
    path = ws.root / "predictions.csv"
    path.write_text("query_id,reference_id,score\nQ00000,R000001,0.5\nQ00000,R000001,0.4\n")
    return ws.score_args("--predictions", str(path)), (
        f"error: {path}:3: duplicate prediction Q00000,R000001 (first on line 2)"
    )


def _nan_score(ws: Workspace):
    path = ws.root / "predictions.csv"
    path.write_text("Q00000,R000001,0.5\nQ00001,R000002,nan\n")
    return ws.score_args("--predictions", str(path)), (
        f"error: {path}:2: score 'nan' is not a finite number"
    )


def _nan_descriptors(ws: Workspace):
    queries = ws.descriptors("q.h5", "query", 8, 16, poison=np.nan)
    references = ws.descriptors("r.h5", "reference", 16, 16)
    return ws.score_args("--queries", str(queries), "--references", str(references)), (
        f"error: {queries}: dataset 'query': row 3 (id Q00003) holds NaN or inf (1 such rows)"
    )


def _inf_descriptors(ws: Workspace):
    queries = ws.descriptors("q.h5", "query", 8, 16)
    references = ws.descriptors("r.h5", "reference", 16, 16, poison=np.inf)
    return ws.score_args("--queries", str(queries), "--references", str(references)), (
        f"error: {references}: dataset 'reference': row 3 (id R000003) holds NaN or inf "
        "(1 such rows)"
    )


def _mismatched_dimensions(ws: Workspace):
    queries = ws.descriptors("q.h5", "query", 8, 8)
    references = ws.descriptors("r.h5", "reference", 16, 16)
    return ws.score_args("--queries", str(queries), "--references", str(references)), (
        f"error: descriptor dimensions differ: {queries} has 8, {references} has 16"
    )


def _too_many_dimensions(ws: Workspace):
    queries = ws.descriptors("q.h5", "query", 8, 300)
    references = ws.descriptors("r.h5", "reference", 16, 300)
    return ws.score_args("--queries", str(queries), "--references", str(references)), (
        f"error: {queries}: dataset 'query': dimension 300 exceeds 256 (the ISC descriptor-track "
        "limit; raise --max-dim to allow it)"
    )


_TRAIN_KEYS = (
    "amp, batch_size, budget_kind, budget_value, channels_last, checkpoint_every, device, "
    "log_every, lr, momentum, n_views, num_workers, optimizer, schedule, warmup_steps, weight_decay"
)


def _unknown_key(ws: Workspace):
    return ws.run_args("--set", "train.epochs=3"), (
        f"error: unknown key train.epochs; valid keys in train: {_TRAIN_KEYS}"
    )


def _unknown_key_in_file(ws: Workspace):
    path = ws.root / "mine.yaml"
    path.write_text("train:\n  lr: 0.1\n  epochs: 3\n")
    return ws.run_args("--config", str(path)), (
        f"error: {path}: unknown key train.epochs; valid keys in train: {_TRAIN_KEYS}"
    )


def _unknown_method(ws: Workspace):
    argv = ws.run_args()
    argv[argv.index("simclr")] = "byol"
    return (
        argv,
        "error: unknown method 'byol'; registered methods: membank, moco, none, qk, simclr, sscd, xbm",
    )


def _wrong_type(ws: Workspace):
    return ws.run_args("--set", "train.batch_size=eight"), (
        "error: train.batch_size: expected int, got 'eight' (str)"
    )


def _wrong_type_in_file(ws: Workspace):
    path = ws.root / "mine.yaml"
    path.write_text("simclr:\n  temperature: [0.1, 0.2]\n")
    return ws.run_args("--config", str(path)), (
        f"error: {path}: simclr.temperature: expected float, got [0.1, 0.2] (list)"
    )


def _non_finite_value(ws: Workspace):
    return ws.run_args("--set", "train.lr=.nan"), (
        "error: train.lr: expected a finite number, got nan"
    )


def _too_wide_embedding(ws: Workspace):
    return ws.run_args("--set", "model.embedding_dim=512"), (
        "error: model.embedding_dim is 512; the ISC descriptor track allows at most 256"
    )


def _invalid_yaml(ws: Workspace):
    path = ws.root / "mine.yaml"
    path.write_text("train:\n  lr: 0.1\n   batch_size: [\n")
    return ws.run_args("--config", str(path)), (
        f"error: {path} line 3: invalid YAML: mapping values are not allowed here"
    )


def _run_id_escapes(ws: Workspace):
    return ws.run_args("--run-id", "../elsewhere"), (
        "error: run_id '../elsewhere' is not a plain directory name (letters, digits, _ . = + -, "
        "not starting with '.'); it must stay inside --out"
    )


def _record_of_other_version(ws: Workspace):
    run_dir = ws.run_dir()
    (run_dir / "record.json").write_text('{"schema_version": 0, "status": "complete"}\n')
    return ws.run_args(), (
        f"error: {run_dir / 'record.json'}: schema_version 0, this version reads 1; the results "
        "directory was written by an incompatible version of isc-bench. Choose another --out, or "
        "pass --overwrite to discard that run"
    )


def _config_of_other_version(ws: Workspace):
    run_dir = ws.run_dir()
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("train:\n", "train:\n  epochs: 3\n", 1))
    return ws.run_args(), (
        f"error: {config}: unknown key train.epochs; valid keys in train: {_TRAIN_KEYS}. The "
        "unfinished run there was written by an incompatible version of isc-bench (or its "
        "config.yaml was edited); choose another --out, or pass --overwrite to discard it"
    )


def _checkpoint_of_other_version(ws: Workspace):
    run_dir = ws.run_dir()
    checkpoint = run_dir / "checkpoints" / "last.pt"
    checkpoint.parent.mkdir()
    torch.save({"format": 0, "step": 1}, checkpoint)
    return ws.run_args(), (
        f"error: {checkpoint}: checkpoint format 0, this version reads 1: it was written by an "
        "incompatible version of isc-bench; delete it to restart training from scratch, or use "
        "another --out"
    )


def _truncated_checkpoint(ws: Workspace):
    run_dir = ws.run_dir()
    checkpoint = run_dir / "checkpoints" / "last.pt"
    checkpoint.parent.mkdir()
    torch.save({"format": 1, "step": 1, "weights": torch.zeros(1000)}, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:2000])  # a copy cut short
    return ws.run_args(), (
        f"error: {checkpoint}: cannot load the checkpoint (RuntimeError: PytorchStreamReader "
        "failed reading zip archive: failed finding central directory. This is an internal "
        "miniz error. If you are seeing this error, there is a high likelihood that your "
        "checkpoint file is corrupted. This can happen if the checkpoint was not saved "
        "properly, was transferred incorrectly, or the file was modified after saving.); "
        "delete it to restart training from scratch"
    )


def _checkpoint_with_code(ws: Workspace):
    """A checkpoint that would run code when unpickled is refused by weights-only loading."""
    run_dir = ws.run_dir()
    checkpoint = run_dir / "checkpoints" / "last.pt"
    checkpoint.parent.mkdir()
    torch.save({"format": 1, "hook": fractions.Fraction}, checkpoint)
    return ws.run_args(), (
        f"error: {checkpoint}: cannot load the checkpoint (not a checkpoint of isc-bench, or "
        "damaged; safe loading refused it: Unsupported global: GLOBAL "
        "fractions.Fraction was not an allowed global by default); delete it to "
        "restart training from scratch"
    )


CASES = [
    Case("corrupt image", _corrupt),
    Case("zero-byte image", _zero_byte),
    Case("truncated image", _truncated),
    Case("missing split", _missing_split),
    Case("missing ground truth", _missing_ground_truth),
    Case("malformed ground-truth CSV", _malformed_gt),
    Case("unterminated quote in CSV", _unterminated_quote),
    Case("duplicate ground-truth pair", _duplicate_gt_pair),
    Case("ground truth names a missing image", _gt_without_image),
    Case("malformed predictions CSV", _malformed_predictions),
    Case("duplicate predicted pair", _duplicate_predictions),
    Case("NaN score", _nan_score),
    Case("NaN descriptors", _nan_descriptors),
    Case("inf descriptors", _inf_descriptors),
    Case("mismatched descriptor dimensions", _mismatched_dimensions),
    Case("more than 256 dimensions", _too_many_dimensions),
    Case("unknown config key (--set)", _unknown_key),
    Case("unknown config key (--config file)", _unknown_key_in_file),
    Case("unknown method", _unknown_method),
    Case("wrong type (--set)", _wrong_type),
    Case("wrong type (--config file)", _wrong_type_in_file),
    Case("NaN config value", _non_finite_value),
    Case("embedding wider than 256", _too_wide_embedding),
    Case("invalid YAML", _invalid_yaml),
    Case("run id escaping --out", _run_id_escapes),
    Case("record of another version", _record_of_other_version),
    Case("config.yaml of another version", _config_of_other_version),
    Case("checkpoint of another version", _checkpoint_of_other_version),
    Case("truncated checkpoint", _truncated_checkpoint),
    Case("checkpoint that would run code", _checkpoint_with_code),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def workspace(pristine, tmp_path) -> Workspace:
    bench = tmp_path / "bench"
    shutil.copytree(pristine, bench)
    out = tmp_path / "results"
    out.mkdir()
    return Workspace(root=tmp_path, bench=bench, out=out)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_non_zero_with_the_exact_message_and_loses_nothing(case, workspace, capsys):
    argv, expected = case.setup(workspace)
    # A neighbour that must survive every failure untouched: a finished run of another config.
    neighbour = workspace.out / "finished-run"
    neighbour.mkdir(exist_ok=True)
    (neighbour / "record.json").write_text('{"schema_version": 1, "status": "complete"}\n')
    before = _snapshot(workspace.root)
    capsys.readouterr()

    code = main(argv)

    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "Traceback" not in err
    if case.name == "truncated image":  # the rest of the message is libjpeg's byte count
        assert err.startswith(expected) and err.endswith(
            "to skip bad files, pass --skip-bad-images (data check) or "
            "--set data.skip_bad_images=true (run, sweep)"
        ), err
    else:
        assert err == expected
    after = _snapshot(workspace.root)
    assert {k: v for k, v in after.items() if k in before} == before, "an input was changed"
    added = set(after) - set(before)
    # A rejected run may leave only the config of its new (unfinished, resumable) run directory
    # and the run directory's empty lock file.
    assert all(
        Path(p).name in ("config.yaml", ".lock") and Path(p).parts[0] == "results" for p in added
    ), added
    assert all(after[p] == hashlib.sha256(b"").hexdigest() for p in added if p.endswith(".lock"))
    assert not (workspace.root / "elsewhere").exists()


def test_the_process_exit_status_is_2_not_just_the_return_value(workspace):
    """One row end to end in a fresh interpreter, as a shell or a scheduler sees it."""
    path = workspace.root / "predictions.csv"
    path.write_text("Q00000,R000001,0.5\nQ00000,R000001,0.4\n")
    done = subprocess.run(
        [sys.executable, "-m", "harness", *workspace.score_args("--predictions", str(path))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {path}:2: duplicate prediction Q00000,R000001 (first on line 1)"
    )


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    Image.fromarray(array, mode=mode).save(path)


def test_grayscale_rgba_and_16_bit_images_are_read_as_8_bit_rgb(workspace, capsys):
    """Not errors: the other image modes a benchmark may hold decode to what they show."""
    from harness.augment import eval_transform
    from harness.data import ImageDataset, load_benchmark

    refs = sorted((workspace.bench / "references").iterdir())
    ramp16 = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    gray = np.full((32, 32), 200, dtype=np.uint8)
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 90, 128
    for path in refs[:3]:
        path.unlink()
    _png(refs[0].with_suffix(".png"), ramp16)
    _png(refs[1].with_suffix(".png"), gray, "L")
    _png(refs[2].with_suffix(".png"), rgba, "RGBA")
    assert Image.open(refs[0].with_suffix(".png")).mode.startswith("I")

    assert main(["data", "check", str(workspace.bench)]) == 0
    assert '"skipped_images": 0' in capsys.readouterr().out
    bench = load_benchmark(workspace.bench)
    dataset = ImageDataset(bench.references, lambda image: np.asarray(image))
    sixteen, grey, alpha = (dataset[bench.references.ids.index(p.stem)][0] for p in refs[:3])
    for image in (sixteen, grey, alpha):
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    # The 16-bit ramp keeps its range (PIL's own conversion clips it to white).
    assert sixteen.min() == 0 and sixteen.max() == 255 and 120 < sixteen.mean() < 135
    assert (grey == 200).all() and (alpha == [90, 0, 0]).all()
    assert eval_transform(32)(Image.fromarray(sixteen)).shape == (3, 32, 32)


def test_corrupt_image_can_be_skipped_with_the_named_switch(workspace, capsys):
    bad = workspace.first("training")
    bad.write_bytes(b"garbage")
    assert main(["data", "check", str(workspace.bench)]) == 2
    assert main(["data", "check", "--skip-bad-images", str(workspace.bench)]) == 0
    assert f'"path": "{bad}"' in capsys.readouterr().out
