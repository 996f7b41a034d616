"""The throughput of the user's own hardware, read back from a `python -m harness bench` JSON: the
figures `sweep --dry-run --calibration FILE` turns into time (harness/cost.py).

Made on the hardware the runs will use, at the runs' protocol and per-device batch:

    python -m harness bench methods negatives search --config configs/protocols/disc21.yaml \
        --set train.batch_size=64 --json bench.json

What each figure is taken from (harness/benchmarks/ says how each is measured):
- training images/s per method: `methods`' `train` rows (the real trainer, preloaded tensors), and
  how much slower SimCLR trains fed from JPEG files than from preloaded tensors timed beside it
  (`train (dataloader)`), applied to every method (no other method is measured from files);
- descriptor extraction images/s: the `extract` row (the pipeline's path from JPEG files); QK's
  cache pass and the memory bank's first fill read and encode the training images the same way;
- QK's loss per negative: the `negatives` rows (seconds per step over N negatives, fitted through
  the origin), to add the negatives a run scores beyond the `methods` bench's training set;
- the capped search: the `search` rows' seconds per query x reference x dimension (optional).

A file that cannot serve (missing, not a bench JSON, no `methods` rows, another backbone or image
size than the runs') is a CalibrationError naming the file and the command that makes one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import InputError


class CalibrationError(InputError):
    """A calibration file that cannot serve; the message names the file and the way out."""


@dataclass(frozen=True)
class Calibration:
    path: str
    device: str  # the bench machine's device: "cpu" or the GPU's name
    quick: bool  # measured at `bench --quick` sizes
    backbone: str
    image_size: int
    batch: int  # per device
    train_images_per_s: dict[str, float]  # method -> images/s on preloaded tensors
    loading_slowdown: float  # >= 1: preloaded over JPEG-fed training images/s (1: not measured)
    extract_images_per_s: float
    qk_bench_negatives: int | None  # negatives the qk `train` row scored
    # "keys/fp32", "head/bf16", ... -> seconds per negative per step (QK's loss over its cache)
    loss_s_per_negative: dict[str, float] = field(default_factory=dict)
    search_s_per_unit: float | None = None  # seconds per query x reference x dimension

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"

    def check_model(self, backbone: str, image_size: int, way_out: str) -> None:
        """The runs' model must be the one measured: any other backbone or size is another cost."""
        if (backbone, image_size) != (self.backbone, self.image_size):
            raise CalibrationError(
                f"--calibration {self.path}: measured {self.backbone} at {self.image_size} px, but "
                f"the runs train {backbone} at {image_size} px; {way_out}"
            )

    def loss_per_negative(self, head: bool, dtype: str) -> float | None:
        return self.loss_s_per_negative.get(f"{'head' if head else 'keys'}/{dtype}")


def load_calibration(path: str | Path, way_out: str) -> Calibration:
    """The Calibration in the bench JSON at `path`; `way_out` ends every error (module doc)."""
    path = Path(path)

    def fail(reason: str) -> CalibrationError:
        return CalibrationError(f"--calibration {path}: {reason}; {way_out}")

    if not path.is_file():
        raise fail("no such file" if not path.exists() else "not a file")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise fail(f"not a JSON file written by python -m harness bench ({err})") from None
    benchmarks = report.get("benchmarks") if isinstance(report, dict) else None
    if not isinstance(benchmarks, dict):
        raise fail("not a JSON file written by python -m harness bench (no benchmarks in it)")
    methods = _rows(benchmarks, "methods")
    if not methods:
        ran = ", ".join(benchmarks) or "nothing"
        raise fail(f"holds no rows of bench methods (that bench ran {ran})")
    try:
        return _calibration(path, report, methods, benchmarks)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
        raise fail(f"its bench methods rows lack a figure ({type(err).__name__}: {err})") from None


def _rows(benchmarks: dict[str, Any], name: str) -> list[dict[str, Any]]:
    section = benchmarks.get(name)
    rows = section.get("rows") if isinstance(section, dict) else None
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def _positive(value: Any) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError(f"{value!r} is not a positive figure")
    return number


def _calibration(path: Path, report: dict, methods: list[dict], benchmarks: dict) -> Calibration:
    train = {r["method"]: _positive(r["images_per_s"]) for r in methods if r["case"] == "train"}
    (extract,) = [r for r in methods if r["case"] == "extract"]
    loading = [r for r in methods if r["case"] == "train (dataloader)"]
    slowdown = 1.0
    if loading:  # the preloaded trainer timed beside it, in the same rounds
        fed, preloaded = loading[0]["images_per_s"], loading[0]["reference_images_per_s"]
        slowdown = max(1.0, _positive(preloaded) / _positive(fed))
    first = methods[0]
    device = str((report.get("machine") or {}).get("device") or first.get("device", "cpu"))
    qk = [r for r in methods if r["case"] == "train" and r["method"] == "qk"]
    return Calibration(
        path=str(path),
        device=device,
        quick=bool(report.get("quick")),
        backbone=str(first["backbone"]),
        image_size=int(first["image_size"]),
        batch=int(first["batch"]),
        train_images_per_s=train,
        loading_slowdown=slowdown,
        extract_images_per_s=_positive(extract["images_per_s"]),
        qk_bench_negatives=int(qk[0]["negatives"]) if qk and "negatives" in qk[0] else None,
        loss_s_per_negative=_loss_slopes(_rows(benchmarks, "negatives"), str(first["backbone"])),
        search_s_per_unit=_search_slope(_rows(benchmarks, "search")),
    )


def _loss_slopes(rows: list[dict], backbone: str) -> dict[str, float]:
    """Seconds per negative per step, by case and dtype: least squares through the origin (the
    loss is linear in N), over the rows measured at this backbone's feature width."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        if row.get("backbone") != backbone:  # the default shape (C = 512) is no protocol's
            continue
        n, seconds = float(row["N"]), float(row["seconds_per_step"])
        key = f"{row['case']}/{row['dtype']}"
        tn, nn = sums.setdefault(key, [0.0, 0.0])
        sums[key] = [tn + seconds * n, nn + n * n]
    return {key: tn / nn for key, (tn, nn) in sums.items() if nn > 0 and tn > 0}


def _search_slope(rows: list[dict]) -> float | None:
    """Seconds per query x reference x dimension of the largest search measured."""
    sized = [r for r in rows if {"n_queries", "n_references", "dim", "seconds"} <= set(r)]
    if not sized:
        return None
    row = max(sized, key=lambda r: r["n_queries"] * r["n_references"] * r["dim"])
    return float(row["seconds"]) / (row["n_queries"] * row["n_references"] * row["dim"])
