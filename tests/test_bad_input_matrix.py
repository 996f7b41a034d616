"""Every kind of bad input, through the command line as a user types it.

Each row: how the input is broken, the command, and the exact message the user reads on stderr.
Every row must exit non-zero with no traceback, and leave every file that existed before it
byte-identical (the only thing a rejected `run` may add is the new run directory's config.yaml, so
the same command resumes once the input is fixed). docs/troubleshooting.md shows the same table.
"""

from __future__ import annotations

import fractions
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_harness, set_flags, tiny_run_overrides
from PIL import Image

from harness.cli import main
from harness.isc import Descriptors, write_descriptors

TINY = tiny_run_overrides("train.budget_value=2", "eval.score_norm_n=2")


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
        return [*argv, *set_flags(TINY), "--no-progress", *extra]

    def first(self, split: str) -> Path:
        return sorted((self.bench / split).iterdir())[0]

    def positive_pair(self) -> str:
        lines = (self.bench / "ground_truth.csv").read_text().splitlines()
        return next(line for line in lines[1:] if line.split(",")[1])

    def run_dir(self) -> Path:
        """The run directory the standard command uses (prepared here, as a previous run left it)."""
        from harness.config import resolve_config
        from harness.run_dir import prepare_run_dir

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
    # A bad image a run meets only when it decodes it (the listing opens no image): the run may
    # have trained and checkpointed by then, in its own directory, which the same command resumes
    # once the file is fixed. `data check` finds these before anything runs.
    met_while_decoding: bool = False


def _corrupt(ws: Workspace):
    path = ws.first("references")
    path.write_bytes(b"this is not a JPEG")
    return ws.run_args(), (
        f"error: {path}: does not decode (UnidentifiedImageError: cannot identify image file "
        f"'{path}'); remove it, or to skip bad files, pass --skip-bad-images (data check) or "
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


def _predictions_of_the_ground_truth(ws: Workspace, suffix: str = "") -> Path:
    path = ws.root / "p.csv"
    query, reference = ws.positive_pair().split(",")
    path.write_text(f"{query}{suffix},{reference}{suffix},0.5\n")
    return path


def _other_header_names(ws: Workspace):
    gt = ws.bench / "ground_truth.csv"
    gt.write_text(gt.read_text().replace("query_id,reference_id", "qid,rid", 1))
    path = _predictions_of_the_ground_truth(ws)
    return ws.score_args("--predictions", str(path)), (
        f"error: {gt}:1: unknown columns 'qid,rid', expected query_id,reference_id (the first "
        "line is not an id pair like the lines below it: name the columns "
        "query_id,reference_id, or remove the line)"
    )


def _ids_with_extension(ws: Workspace):
    path = _predictions_of_the_ground_truth(ws, ".jpg")
    gt = ws.bench / "ground_truth.csv"
    query = ws.positive_pair().split(",")[0]
    return ws.score_args("--predictions", str(path)), (
        f"error: none of the 1 query ids in {path} and none of the 1 reference ids in {path} is "
        f"in {gt}, so every metric would be 0: ids differ in form ('{query}.jpg' here, '{query}' "
        f"in {gt}); write ids as image names without folder or extension (pass "
        "--allow-disjoint-ids if this is intended)"
    )


def _swapped_descriptor_files(ws: Workspace):
    queries = ws.descriptors("q.h5", "query", 8, 16)
    references = ws.descriptors("r.h5", "reference", 16, 16)
    gt = ws.bench / "ground_truth.csv"
    first_reference = min(
        line.split(",")[1] for line in gt.read_text().splitlines()[1:] if line.split(",")[1]
    )
    return ws.score_args("--queries", str(references), "--references", str(queries)), (
        f"error: none of the 16 query ids in {references} and none of the 8 reference ids in "
        f"{queries} is in {gt}, so every metric would be 0: queries and references look "
        f"swapped ('{first_reference}' is on the other side in {gt}) (pass --allow-disjoint-ids "
        "if this is intended)"
    )


def _output_over_an_input(ws: Workspace):
    queries = ws.descriptors("q.h5", "query", 8, 16)
    references = ws.descriptors("r.h5", "reference", 16, 16)
    gt = ws.bench / "ground_truth.csv"
    argv = ws.score_args("--queries", str(queries), "--references", str(references))
    return [*argv, "--write-predictions", str(gt)], (
        f"error: --write-predictions {gt} would overwrite the input --gt {gt}; choose another "
        "output file"
    )


def _plot_over_an_input(ws: Workspace):
    path = _predictions_of_the_ground_truth(ws)
    return ws.score_args("--predictions", str(path), "--pr-curve", str(path)), (
        f"error: --pr-curve {path} would overwrite the input --predictions {path}; choose "
        "another output file"
    )


def _directory_for_a_file(ws: Workspace):
    path = ws.root / "predictions"
    path.mkdir()
    return ws.score_args("--predictions", str(path)), (
        f"error: {path}: is a directory, expected a file"
    )


def _fifo_for_a_file(ws: Workspace):
    import os

    path = ws.root / "predictions.csv"
    os.mkfifo(path)
    return ws.score_args("--predictions", str(path)), (
        f"error: {path}: is a FIFO (named pipe), not a regular file; save its content to a file "
        "and pass that"
    )


def _not_utf8(ws: Workspace):
    path = ws.root / "predictions.csv"
    path.write_bytes("Q00000,R00000é,0.5\n".encode("latin-1"))
    return ws.score_args("--predictions", str(path)), (
        f"error: {path}:1: not a UTF-8 text file (byte 0xe9: invalid continuation byte); save "
        "it as UTF-8"
    )


def _empty_predictions(ws: Workspace):
    path = ws.root / "predictions.csv"
    path.write_bytes(b"")
    return ws.score_args("--predictions", str(path)), f"error: {path}: the file is empty"


def _empty_descriptor_file(ws: Workspace):
    queries = ws.root / "q.h5"
    queries.write_bytes(b"")
    references = ws.descriptors("r.h5", "reference", 16, 16)
    return ws.score_args("--queries", str(queries), "--references", str(references)), (
        f"error: {queries}: not a readable HDF5 file (Unable to synchronously open file (file "
        "signature not found))"
    )


def _zero_dimensions(ws: Workspace):
    queries = ws.descriptors("q.h5", "query", 8, 0)
    references = ws.descriptors("r.h5", "reference", 16, 0)
    return ws.score_args("--queries", str(queries), "--references", str(references)), (
        f"error: {queries}: dataset 'query': dimension 0 (the descriptors hold no values)"
    )


def _descriptor_ids_not_utf8(ws: Workspace):
    import h5py

    queries = ws.descriptors("q.h5", "query", 8, 16)
    with h5py.File(queries, "r+") as handle:
        ids = handle["query_ids"][()]
        ids[0] = b"Q\xe90000"
        del handle["query_ids"]
        handle["query_ids"] = ids
    references = ws.descriptors("r.h5", "reference", 16, 16)
    return ws.score_args("--queries", str(queries), "--references", str(references)), (
        f"error: {queries}: dataset query_ids: the id of row 0 (b'Q\\xe90000') is not UTF-8; "
        "write ids as UTF-8 text"
    )


def _negative_pca_dimension(ws: Workspace):
    queries = ws.descriptors("q.h5", "query", 8, 16)
    references = ws.descriptors("r.h5", "reference", 16, 16)
    argv = ws.score_args("--queries", str(queries), "--references", str(references))
    return [*argv, "--training", str(references), "--pca-whiten", "-1"], (
        "error: --pca-whiten must be >= 0 (0 keeps the dimension), got -1"
    )


def _no_negatives(ws: Workspace):
    queries = ws.descriptors("q.h5", "query", 8, 16)
    references = ws.descriptors("r.h5", "reference", 16, 16)
    argv = ws.score_args("--queries", str(queries), "--references", str(references))
    return [*argv, "--training", str(references), "--subtract-negatives", "--negatives-k", "0"], (
        "error: --negatives-k must be >= 1, got 0"
    )


_TRAIN_KEYS = (
    "amp, batch_size, budget_kind, budget_value, channels_last, checkpoint_every, device, "
    "log_every, lr, momentum, n_views, num_workers, optimizer, schedule, tensorboard, threads, warmup_steps, weight_decay"
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


def _infinite_map_record(ws: Workspace):
    """A record damaged by hand: its µAP is Infinity, which JSON readers accept as a number."""
    results = ws.root / "other-results"
    (results / "run").mkdir(parents=True)
    record = {
        "schema_version": 1,
        "status": "complete",
        "run_id": "run",
        "method": "simclr",
        "config": {},
        "metrics": {"raw": {"average_precision": float("inf")}},
    }
    (results / "run" / "record.json").write_text(json.dumps(record))
    return ["report", str(results), "--no-figures"], (
        f"error: no complete record.json under {results}\n"
        f"  {results / 'run' / 'record.json'}: metrics.raw.average_precision is missing or not a "
        "finite number"
    )


_SKIP = (
    "to skip bad files, pass --skip-bad-images (data check) or --set data.skip_bad_images=true "
    "(run, sweep)"
)


def _tiny_training_image(ws: Workspace):
    """A 1x1 image passes a decode check but not the copy-edit augmentation's text overlays."""
    path = ws.first("training")
    Image.new("RGB", (1, 1), (90, 20, 200)).save(path, format="JPEG")
    return ws.run_args(), (
        f"error: {path}: too small to train on (1x1 px; at least 16 a side); remove it, or {_SKIP}"
    )


def _decompression_bomb(ws: Workspace):
    """A few kilobytes that would decode to 196 million pixels."""
    path = ws.first("references")
    Image.new("1", (14_000, 14_000)).save(path, format="PNG")
    return ws.run_args(), (
        f"error: {path}: too large to decode safely (Image size (196000000 pixels) exceeds limit "
        "of 178956970 pixels, could be decompression bomb DOS attack.); remove it, or " + _SKIP
    )


def _config_not_utf8(ws: Workspace):
    path = ws.root / "latin.yaml"
    path.write_bytes("# r\xe9glages\ntrain:\n  lr: 0.1\n".encode("latin-1"))
    return ws.run_args("--config", str(path)), (
        f"error: {path}: not UTF-8 text (byte 0xe9 at offset 3); save it as UTF-8"
    )


def _batch_of_one(ws: Workspace):
    return ws.run_args("--set", "train.batch_size=1"), (
        "error: train.batch_size must be >= 2, got 1: a contrastive batch needs negatives, and "
        "BatchNorm in the projection head needs 2 images per batch"
    )


def _validation_every_zero(ws: Workspace):
    return ws.run_args("--set", "eval.every=0"), "error: eval.every must be > 0 or null, got 0"


def _validation_larger_than_the_split(ws: Workspace):
    n = len(list((ws.bench / "references").iterdir()))
    sizes = ("--set", "eval.val_queries=4", "--set", f"eval.val_references={n + 1}")
    return ws.run_args("--set", "eval.every=1", *sizes), (
        f"error: eval.val_references is {n + 1}, but the benchmark has {n} references; lower it"
    )


def _out_is_a_file(ws: Workspace):
    from harness.config import resolve_config

    out = ws.root / "results.txt"
    out.write_text("not a folder\n")
    argv = ws.run_args()
    argv[argv.index("--out") + 1] = str(out)
    run_id = resolve_config("simclr", overrides=TINY, data=str(ws.bench)).run_id
    return argv, (
        f"error: {out / run_id}: Not a directory; a part of this path is a file, not a folder: "
        "choose another path"
    )


def _checkpoint_of_another_model(ws: Workspace):
    """A checkpoint copied in from a run of another embedding size."""
    from harness.checkpoint import write_checkpoint
    from harness.config import resolve_config
    from harness.optimization import build_optimizer, build_scheduler
    from harness.pipeline import build_method

    run_dir = ws.run_dir()
    other = resolve_config("simclr", overrides=[*TINY, "model.embedding_dim=8"])
    method = build_method(other, 20, torch.device("cpu"))
    optimizer = build_optimizer(method, other.train)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    write_checkpoint(
        checkpoint,
        step=1,
        images_seen=8,
        train_seconds=1.0,
        wall_seconds=1.0,
        method=method,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, other.train, lambda step: 0.0),
        scaler=None,
    )
    return ws.run_args(), (
        f"error: {checkpoint}: the checkpoint does not fit this run's model (5 of another shape, "
        "e.g. encoder.head.layers.3.weight: (8, 96) in the checkpoint, (16, 96) here, "
        "encoder.head.layers.4.weight: (8,) in the checkpoint, (16,) here); it was written for "
        "another method or model size: delete it to restart training, or use another --out"
    )


def _synth_over_a_folder_of_files(ws: Workspace):
    folder = ws.root / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    return ["data", "synth", "--out", str(folder), "--overwrite", "--no-progress"], (
        f"error: {folder} is not a benchmark made by data synth (no synth.json); --overwrite "
        "replaces only those: choose another --out, or remove the folder yourself"
    )


def _sweep_name_escapes(ws: Workspace):
    path = ws.root / "escape.yaml"
    path.write_text("name: ../../elsewhere\ngrid:\n  method: [none]\n")
    return ["sweep", str(path), "--dry-run"], (
        "error: sweep name '../../elsewhere' is not a plain directory name (letters, digits, "
        "_ . = + -, not starting with '.'); it must stay inside results/sweeps"
    )


SAVE_HINT = "save the backbone's state_dict: torch.save(model.state_dict(), PATH)"


def _backbone_state(name: str = "test_resnet") -> dict[str, torch.Tensor]:
    import timm

    return timm.create_model(name).state_dict()


def _weights_missing(ws: Workspace):
    path = ws.root / "gone.pth"
    return ws.run_args("--set", f"model.weights={path}"), (
        f"error: model.weights {path}: no such file"
    )


def _weights_not_torch(ws: Workspace):
    path = ws.root / "w.pth"
    path.write_bytes(b"<html>404 Not Found</html>")  # a download that went wrong
    return ws.run_args("--set", f"model.weights={path}"), (
        f"error: model.weights {path}: not a file written by torch.save or a .safetensors file; "
        f"{SAVE_HINT}"
    )


def _weights_truncated(ws: Workspace):
    path = ws.root / "w.pth"
    torch.save(_backbone_state(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut short
    return ws.run_args("--set", f"model.weights={path}"), (
        f"error: model.weights {path}: cannot load it (RuntimeError: PytorchStreamReader "
        "failed reading zip archive: failed finding central directory. This is an internal "
        "miniz error. If you are seeing this error, there is a high likelihood that your "
        "checkpoint file is corrupted. This can happen if the checkpoint was not saved "
        "properly, was transferred incorrectly, or the file was modified after saving.); "
        f"{SAVE_HINT}"
    )


def _weights_with_code(ws: Workspace):
    path = ws.root / "w.pth"
    torch.save({"conv1.0.weight": torch.zeros(1), "hook": fractions.Fraction}, path)
    return ws.run_args("--set", f"model.weights={path}"), (
        f"error: model.weights {path}: cannot load it (not a state_dict, or damaged; safe loading "
        "refused it: Unsupported global: GLOBAL fractions.Fraction was not an allowed global by "
        f"default); {SAVE_HINT}"
    )


def _weights_damaged_safetensors(ws: Workspace):
    path = ws.root / "w.safetensors"
    path.write_bytes(b"\x00" * 64)
    return ws.run_args("--set", f"model.weights={path}"), (
        f"error: model.weights {path}: not a readable .safetensors file (Error while "
        "deserializing: invalid JSON in header: EOF while parsing a value at line 1 column 0)"
    )


def _weights_of_another_architecture(ws: Workspace):
    path = ws.root / "vit.pth"
    torch.save(_backbone_state("test_vit"), path)
    return ws.run_args("--set", f"model.weights={path}"), (
        f"error: model.weights {path}: none of its 78 tensors fits backbone test_resnet (the "
        "file's: cls_token, pos_embed, patch_embed.proj.weight; the backbone's: conv1.0.weight, "
        "conv1.1.weight, conv1.1.bias); it holds another architecture: set model.backbone to the "
        "file's, or pass weights saved from timm.create_model('test_resnet')"
    )


def _weights_that_do_not_fit(ws: Workspace):
    path = ws.root / "w.pth"
    state = _backbone_state()
    state["conv1.0.weight"] = torch.zeros(5, 3, 3, 3)
    del state["layer1.0.conv1.weight"]
    torch.save(state, path)
    return ws.run_args("--set", f"model.weights={path}"), (
        f"error: model.weights {path}: does not fit backbone test_resnet (1 missing, e.g. "
        "layer1.0.conv1.weight; 1 of another shape, e.g. conv1.0.weight: (5, 3, 3, 3) in the "
        "file, (16, 3, 3, 3) here); pass weights saved from timm.create_model('test_resnet'), or "
        "--set model.weights_strict=false to load the tensors that fit (the record lists the rest)"
    )


def _weights_and_pretrained(ws: Workspace):
    path = ws.root / "w.pth"
    torch.save(_backbone_state(), path)
    return ws.run_args("--set", f"model.weights={path}", "--set", "model.pretrained=true"), (
        "error: model.weights and model.pretrained are exclusive: set model.pretrained=false to "
        "start from the file, or model.weights=null for timm's published weights"
    )


CASES = [
    Case("corrupt image", _corrupt, met_while_decoding=True),
    Case("zero-byte image", _zero_byte),
    Case("truncated image", _truncated, met_while_decoding=True),
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
    Case("record whose µAP is not a finite number", _infinite_map_record),
    Case("ground-truth header with other names", _other_header_names),
    Case("predicted ids with a file extension", _ids_with_extension),
    Case("query and reference files swapped", _swapped_descriptor_files),
    Case("output over an input (--write-predictions)", _output_over_an_input),
    Case("output over an input (--pr-curve)", _plot_over_an_input),
    Case("a directory where a file is expected", _directory_for_a_file),
    Case("a FIFO where a file is expected", _fifo_for_a_file),
    Case("CSV not in UTF-8", _not_utf8),
    Case("empty predictions file", _empty_predictions),
    Case("empty descriptor file", _empty_descriptor_file),
    Case("descriptors of dimension 0", _zero_dimensions),
    Case("descriptor ids not in UTF-8", _descriptor_ids_not_utf8),
    Case("negative PCA dimension", _negative_pca_dimension),
    Case("no negatives to subtract", _no_negatives),
    Case("training image too small to augment", _tiny_training_image, met_while_decoding=True),
    Case("decompression bomb", _decompression_bomb, met_while_decoding=True),
    Case("config file not UTF-8", _config_not_utf8),
    Case("batch of one", _batch_of_one),
    Case("validation every 0 steps", _validation_every_zero),
    Case("validation subset larger than the split", _validation_larger_than_the_split),
    Case("--out is a file", _out_is_a_file),
    Case("checkpoint of another model", _checkpoint_of_another_model),
    Case("data synth --overwrite over a folder of files", _synth_over_a_folder_of_files),
    Case("sweep name escaping results/sweeps", _sweep_name_escapes),
    Case("weights file missing", _weights_missing),
    Case("weights file not written by torch.save", _weights_not_torch),
    Case("truncated weights file", _weights_truncated),
    Case("weights file holding code", _weights_with_code),
    Case("damaged safetensors weights", _weights_damaged_safetensors),
    Case("weights of another architecture", _weights_of_another_architecture),
    Case("weights that do not fit the backbone", _weights_that_do_not_fit),
    Case("weights and pretrained together", _weights_and_pretrained),
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
            "; remove it, or to skip bad files, pass --skip-bad-images (data check) or "
            "--set data.skip_bad_images=true (run, sweep)"
        ), err
    else:
        assert err == expected
    after = _snapshot(workspace.root)
    assert {k: v for k, v in after.items() if k in before} == before, "an input was changed"
    added = set(after) - set(before)
    if case.met_while_decoding:  # the run's own files, up to its last checkpoint; no record
        run_files = {p for p in added if Path(p).parts[0] == "results" and len(Path(p).parts) > 2}
        assert all(Path(p).name != "record.json" for p in run_files), run_files
        added -= {p for p in run_files if Path(p).name not in ("config.yaml", ".lock")}
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
    done = run_harness(*workspace.score_args("--predictions", str(path)), timeout=120)
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


def _documented_messages() -> list[str]:
    """The `error: ...` messages of docs/troubleshooting.md's bad-input table."""
    doc = (Path(__file__).parents[1] / "docs" / "troubleshooting.md").read_text()
    table = doc.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"`(error: [^`]*)`", table)


def _documented_continuations() -> list[str]:
    """The code spans of the bad-input table that continue a message on its next lines."""
    doc = (Path(__file__).parents[1] / "docs" / "troubleshooting.md").read_text()
    table = doc.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    return [span.strip() for span in re.findall(r"`(  [^`]*)`", table)]


def _as_documented(message: str, ws: Workspace) -> str:
    """The message with the paths written as the table writes them: BENCH, results/RUN, results,
    and files of the workspace by their name."""
    run_dirs = [p for p in ws.out.iterdir() if p.is_dir()] if ws.out.is_dir() else []
    for run_dir in run_dirs:
        message = message.replace(f"{run_dir}/", "results/RUN/")
    message = message.replace(str(ws.bench), "BENCH").replace(str(ws.out), "results")
    return message.replace(f"{ws.root}/", "")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_docs_troubleshooting_shows_the_message_word_for_word(case, workspace):
    """`...` in the table stands for text left out (a long list, a library's long explanation)."""
    _, expected = case.setup(workspace)
    message = _as_documented(expected, workspace)
    documented = _documented_messages()
    patterns = [".*".join(re.escape(part) for part in text.split("...")) for text in documented]
    # The truncated image's row adds libjpeg's byte count to the message the test knows.
    prefix = case.name == "truncated image"
    first, *continued = message.splitlines()
    assert any(re.fullmatch(pattern, first) for pattern in patterns) or (
        prefix and any(text.startswith(first) for text in documented)
    ), f"docs/troubleshooting.md lacks {first!r}"
    # A message of several lines shows its next lines as code spans of the same table.
    for line in continued:
        assert line.strip() in _documented_continuations(), f"docs lack the line {line!r}"
