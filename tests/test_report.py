"""The report on fabricated records: several methods × seeds, a negatives sweep, broken runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import report
from harness.errors import ConfigError, InputError

N_TRUE, N_DISTRACTORS, N_REFERENCES = 16, 8, 30
FAMILIES = ("blur", "crop", "text", "rotate")


def _write_benchmark(root: Path) -> Path:
    """ground_truth.csv + metadata.csv: 16 copies with 1–2 edit families each, 8 distractors."""
    bench = root / "bench"
    bench.mkdir()
    rng = np.random.default_rng(7)
    gt_lines, meta_rows = ["query_id,reference_id"], []
    for i in range(N_TRUE + N_DISTRACTORS):
        query = f"Q{i:05d}"
        reference = f"R{i % N_REFERENCES:06d}" if i < N_TRUE else ""
        edits = rng.choice(FAMILIES, size=rng.integers(1, 3), replace=False)
        gt_lines.append(f"{query},{reference}")
        meta_rows.append(
            {
                "query_id": query,
                "reference_id": reference,
                "source_id": "",
                "edits": "|".join(edits),
            }
        )
    (bench / "ground_truth.csv").write_text("\n".join(gt_lines) + "\n")
    pd.DataFrame(meta_rows).to_csv(bench / "metadata.csv", index=False)
    return bench


def _write_predictions(path: Path, rng: np.random.Generator) -> None:
    """Five candidates per query; copies find their reference (with a random score) 70% of the time."""
    lines = ["query_id,reference_id,score"]
    for i in range(N_TRUE + N_DISTRACTORS):
        references = rng.choice(N_REFERENCES, size=5, replace=False)
        if i < N_TRUE and rng.random() < 0.7 and i % N_REFERENCES not in references:
            references[0] = i % N_REFERENCES
        for r in references:
            lines.append(f"Q{i:05d},R{r:06d},{rng.normal():.6f}")
    path.write_text("\n".join(lines) + "\n")


def _record(run_id, method, seed, config, values, bench) -> dict:
    return {
        "schema_version": 1,
        "status": "complete",
        "run_id": run_id,
        "method": method,
        "seed": seed,
        "config": {**config, "method": method, "seed": seed, "run_id": run_id},
        "benchmark": {"path": str(bench), "n_queries": N_TRUE + N_DISTRACTORS},
        "budget": {
            "kind": "steps",
            "value": 20,
            "steps": 20,
            "images_seen": values["images_seen"],
            "train_seconds": values["train_seconds"],
        },
        "negatives_per_step": values["negatives"],
        "timings": {"train": values["train_seconds"], "total": values["total"]},
        "peak_memory_mb": {"cpu_rss": values["rss"], "cuda": None},
        "metrics": {
            "raw": {
                "average_precision": values["map"],
                "recall_at_p90": values["r90"],
                "recall_at_rank1": values["rank1"],
            },
            "normalized": {"average_precision": values["map_norm"]},
        },
        "files": {"predictions": "predictions.csv", "pr_curve": "pr_curve.npz"},
    }


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory):
    """results/ with 3 methods × 3 seeds, a 2-point qk negatives sweep, and three bad runs."""
    root = tmp_path_factory.mktemp("results")
    bench = _write_benchmark(root)
    rng = np.random.default_rng(0)
    base = {"train": {"budget_value": 20, "lr": 0.06}, "model": {"backbone": "resnet10t"}}
    settings = [
        ("qk", {"qk": {"num_negatives": 64, "temperature": 0.1}}, 64),
        ("qk", {"qk": {"num_negatives": 256, "temperature": 0.1}}, 256),
        ("simclr", {"simclr": {"temperature": 0.2}}, 126),
        ("moco", {"moco": {"queue_size": 512}}, 512),
    ]
    expected: dict[tuple[str, int], dict[str, list[float]]] = {}
    for method, section, negatives in settings:
        for seed in (0, 1, 2):
            values = {
                "map": float(rng.uniform(0.1, 0.6)),
                "map_norm": float(rng.uniform(0.1, 0.6)),
                "r90": float(rng.uniform(0, 0.3)),
                "rank1": float(rng.uniform(0.2, 0.9)),
                "negatives": negatives,
                "images_seen": 20 * 32,
                "train_seconds": float(rng.uniform(5, 50)),
                "total": float(rng.uniform(60, 90)),
                "rss": float(rng.uniform(500, 900)),
            }
            run_id = f"{method}-{negatives}-s{seed}"
            run_dir = root / "sweeps" / "demo" / run_id
            run_dir.mkdir(parents=True)
            record = _record(run_id, method, seed, {**base, **section}, values, bench)
            (run_dir / "record.json").write_text(json.dumps(record))
            (run_dir / "config.yaml").write_text("method: x\n")
            _write_predictions(run_dir / "predictions.csv", np.random.default_rng(seed + negatives))
            recall = np.linspace(0, values["rank1"], 20)
            np.savez(run_dir / "pr_curve.npz", precision=1 - 0.5 * recall, recall=recall)
            for key, value in values.items():
                expected.setdefault((method, negatives), {}).setdefault(key, []).append(value)
    broken = root / "sweeps" / "demo" / "broken"
    broken.mkdir()
    (broken / "record.json").write_text('{"schema_version": 1, "status": "compl')
    unfinished = root / "sweeps" / "demo" / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("method: qk\n")
    running = root / "sweeps" / "demo" / "running"
    running.mkdir()
    (running / "record.json").write_text(json.dumps({"schema_version": 1, "status": "running"}))
    return root, bench, expected


def _run_name(path: str) -> str:
    path = Path(path)
    return path.parent.name if path.name == "record.json" else path.name


def test_load_skips_broken_and_unfinished_runs(fabricated):
    root, _, _ = fabricated
    loaded = report.load_runs([root])
    assert len(loaded.runs) == 12
    reasons = {_run_name(s.path): s.reason for s in loaded.skipped}
    assert set(reasons) == {"broken", "unfinished", "running"}
    assert "unreadable" in reasons["broken"]
    assert "unfinished" in reasons["unfinished"]
    assert "running" in reasons["running"]


def test_summary_means_and_stds_equal_direct_computation(fabricated):
    root, _, expected = fabricated
    runs = report.load_runs([root]).runs
    summary = report.summarize(runs)
    assert len(summary) == len(expected)
    columns = {
        "map": "map",
        "map_norm": "map_normalized",
        "r90": "recall_at_p90",
        "rank1": "recall_at_rank1",
        "train_seconds": "train_seconds",
        "total": "total_seconds",
        "rss": "peak_cpu_mb",
    }
    for (method, negatives), values in expected.items():
        row = summary[
            (summary["method"] == method) & (summary["negatives_per_step_mean"] == negatives)
        ]
        assert len(row) == 1, (method, negatives)
        row = row.iloc[0]
        assert row["n_seeds"] == 3
        for key, column in columns.items():
            direct = np.asarray(values[key])
            assert row[f"{column}_mean"] == pytest.approx(direct.sum() / len(direct), rel=1e-12)
            direct_std = math.sqrt(((direct - direct.mean()) ** 2).sum() / (len(direct) - 1))
            assert row[f"{column}_std"] == pytest.approx(direct_std, rel=1e-12)


def test_groups_are_labelled_by_what_varies_within_a_method(fabricated):
    root, _, _ = fabricated
    summary = report.summarize(report.load_runs([root]).runs)
    assert sorted(summary["group"]) == [
        "moco",
        "qk (num_negatives=256)",
        "qk (num_negatives=64)",
        "simclr",
    ]


def test_main_table_shows_mean_and_std(fabricated):
    root, _, expected = fabricated
    summary = report.summarize(report.load_runs([root]).runs)
    table = report.main_table(summary).set_index("group")
    values = np.asarray(expected[("simclr", 126)]["map"])
    assert table.loc["simclr", "µAP"] == f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"
    assert table.loc["simclr", "seeds"] == "3"
    assert table.loc["simclr", "budget"] == "20 steps"
    assert "peak CUDA (MB)" not in table.columns  # no run used CUDA
    markdown = report.to_markdown(table.reset_index())
    assert markdown.count("\n") == len(table) + 2
    assert "| simclr" in markdown
    latex = report.to_latex(table.reset_index())
    assert r"$\pm$" in latex and r"$\mu$AP" in latex


def test_group_by_any_config_key_and_unknown_key_is_named(fabricated):
    root, _, _ = fabricated
    runs = report.load_runs([root]).runs
    pooled = report.summarize(runs, ["method"])
    assert dict(zip(pooled["method"], pooled["n_seeds"], strict=True))["qk"] == 6
    by_key = report.summarize(runs, ["method", "qk.num_negatives"])
    assert sorted(by_key["group"]) == [
        "moco",
        "qk (qk.num_negatives=256)",
        "qk (qk.num_negatives=64)",
        "simclr",
    ]
    assert (
        report.group_label({"method": "qk", "qk.num_negatives": None})
        == "qk (qk.num_negatives=null)"
    )
    assert report.group_label({"method": "moco", "qk.num_negatives": math.nan}) == "moco"
    with pytest.raises(ConfigError, match="qk.num_negative"):
        report.summarize(runs, ["method", "qk.num_negative"])


def test_per_edit_map_equals_evaluating_the_restricted_ground_truth(fabricated, tmp_path):
    from harness.isc import evaluate, read_ground_truth, read_predictions

    root, bench, _ = fabricated
    run_dir = root / "sweeps" / "demo" / "qk-64-s1"
    metadata = pd.read_csv(bench / "metadata.csv", dtype=str, keep_default_na=False)
    got = report.edit_family_map(
        read_ground_truth(bench / "ground_truth.csv"),
        report.read_metadata(bench / "metadata.csv"),
        read_predictions(run_dir / "predictions.csv"),
    )
    assert set(got) == set(FAMILIES)
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"score": float})
    for family in FAMILIES:
        # The restricted benchmark written out as files, then scored as any other benchmark.
        has_family = metadata["edits"].str.split("|").map(lambda e, f=family: f in e)
        distractor = metadata["reference_id"] == ""
        keep = metadata[has_family | distractor]
        (tmp_path / "gt.csv").write_text(
            "query_id,reference_id\n"
            + "".join(
                f"{q},{r}\n" for q, r in zip(keep["query_id"], keep["reference_id"], strict=True)
            )
        )
        predictions[predictions["query_id"].isin(keep["query_id"])].to_csv(
            tmp_path / "pred.csv", index=False
        )
        direct = evaluate(
            read_ground_truth(tmp_path / "gt.csv"), read_predictions(tmp_path / "pred.csv")
        )
        assert got[family]["map"] == pytest.approx(direct.to_dict()["average_precision"], abs=1e-12)
        assert got[family]["n_gt"] == int((has_family & ~distractor).sum())


def test_build_report_writes_tables_and_non_empty_figures(fabricated, tmp_path):
    from PIL import Image

    root, _, _ = fabricated
    out = tmp_path / "report"
    built = report.build_report([root], out)
    names = {p.name for p in built.written}
    for stem in ("main", "edits"):
        assert {f"{stem}.md", f"{stem}.csv", f"{stem}.tex"} <= names
    for stem in ("map_by_method", "pr_curves", "map_vs_negatives", "map_vs_compute", "map_by_edit"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names, stem
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
        with Image.open(out / f"{stem}.png") as image:
            # about one paper column (3.3 in at 200 dpi), and not a blank canvas
            assert 400 < image.width < 1400
            assert len(set(image.convert("L").getdata())) > 10
    assert {_run_name(s.path) for s in built.skipped} == {"broken", "unfinished", "running"}
    csv = pd.read_csv(out / "main.csv")
    assert set(csv["group"]) == set(built.summary["group"])
    edits = pd.read_csv(out / "edits.csv")
    assert set(edits["family"]) == set(FAMILIES)
    text = (out / "report.md").read_text()
    assert "![map_by_method](map_by_method.png)" in text and "broken" in text


def test_cli_prints_the_table_and_fails_clearly_without_records(fabricated, tmp_path, capsys):
    from harness.cli import main

    root, _, _ = fabricated
    out = tmp_path / "cli"
    code = main(["report", str(root), "--out", str(out), "--no-figures", "--format", "md,csv"])
    captured = capsys.readouterr()
    assert code == 0
    assert "| qk (num_negatives=64)" in captured.out
    assert "skipped" in captured.err and "broken" in captured.err
    assert (out / "main.md").is_file() and not (out / "main.tex").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no complete record.json" in capsys.readouterr().err
    assert main(["report", str(root), "--format", "html"]) == 2
    assert "--format" in capsys.readouterr().err


def test_duplicate_run_ids_are_skipped_not_double_counted(tmp_path):
    values = dict.fromkeys(
        ("map", "map_norm", "r90", "rank1", "train_seconds", "total", "rss"), 0.5
    )
    values.update(negatives=10, images_seen=100)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        record = _record("same-id", "qk", 0, {}, values, tmp_path)
        (tmp_path / name / "record.json").write_text(json.dumps(record))
    loaded = report.load_runs([tmp_path])
    assert len(loaded.runs) == 1
    assert "duplicate run_id" in loaded.skipped[0].reason


def test_missing_results_directory_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such results directory"):
        report.load_runs([tmp_path / "nope"])


def test_pr_curve_is_drawn_for_the_median_seed_of_the_chosen_group(fabricated):
    from harness.figures import representative_runs

    root, _, expected = fabricated
    runs = report.add_group_column(report.load_runs([root]).runs, report.DEFAULT_GROUP_BY)
    summary = report.summarize(runs)
    chosen = representative_runs(runs, summary, groups=["qk (num_negatives=256)", "simclr"])
    assert sorted(chosen["group"]) == ["qk (num_negatives=256)", "simclr"]
    for _, run in chosen.iterrows():
        key = ("qk", 256) if run["method"] == "qk" else ("simclr", 126)
        assert run["map"] == pytest.approx(float(np.median(expected[key]["map"])))


def test_a_repeated_seed_of_one_setting_is_not_a_second_seed(tmp_path):
    values = dict.fromkeys(
        ("map", "map_norm", "r90", "rank1", "train_seconds", "total", "rss"), 0.5
    )
    values.update(negatives=10, images_seen=100)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        (tmp_path / name).mkdir()
        record = _record(f"qk-{name}", "qk", seed, {"train": {"lr": 0.1}}, values, tmp_path)
        (tmp_path / name / "record.json").write_text(json.dumps(record))
    loaded = report.load_runs([tmp_path])
    assert sorted(loaded.runs["run_id"]) == ["qk-a", "qk-c"]
    assert [s.reason for s in loaded.skipped] == [f"same setting and seed as {tmp_path / 'a'}"]
    assert report.summarize(loaded.runs)["n_seeds"].tolist() == [2]


def test_a_run_without_edit_metadata_stays_in_the_main_table(fabricated, tmp_path):
    root, bench, _ = fabricated
    bare = tmp_path / "bare-bench"
    bare.mkdir()
    (bare / "ground_truth.csv").write_text((bench / "ground_truth.csv").read_text())
    record = json.loads((root / "sweeps" / "demo" / "moco-512-s0" / "record.json").read_text())
    record["benchmark"]["path"] = str(bare)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "record.json").write_text(json.dumps(record))
    built = report.build_report([tmp_path / "run"], tmp_path / "out", figures=False)
    assert len(built.runs) == 1 and built.edit_summary.empty
    assert [s.reason for s in built.skipped] == [f"per-edit table: {bare} has no metadata.csv"]
