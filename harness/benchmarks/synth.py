"""`data synth` generation time: the default mini-DISC and --references 100000 (linear time)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from harness.benchmarks import timed

DESCRIPTION = (
    "mini-DISC generation: default size and --references 100000 (images/s should stay flat), "
    "plus the µAP of a trivial 8x8-pixel descriptor on the default benchmark"
)


def pixel_descriptor_uap(root: Path) -> float:
    """µAP of 8x8 RGB pixels (centred, L2-normalized): the floor any learned descriptor must beat."""
    from PIL import Image

    from harness.data import load_benchmark
    from harness.isc import Descriptors, evaluate, search

    bench = load_benchmark(root, check_images=False)

    def describe(image_set):
        rows = []
        for path in image_set.paths:
            with Image.open(path) as image:
                x = np.asarray(image.convert("RGB").resize((8, 8), Image.BILINEAR), np.float32)
            x = x.reshape(-1) - x.mean()
            rows.append(x / (np.linalg.norm(x) + 1e-6))
        return Descriptors(np.asarray(image_set.ids), np.stack(rows).astype(np.float32))

    predictions = search(describe(bench.queries), describe(bench.references))
    return float(evaluate(bench.ground_truth, predictions).average_precision)


def run(quick: bool) -> list[dict]:
    from harness.data.synth import SynthParams, default_workers, synthesize

    cases = (
        [("small", SynthParams(references=200, training=300, queries=100))]
        if quick
        else [
            ("default", SynthParams()),
            ("references=100000", SynthParams(references=100_000)),
        ]
    )
    rows = []
    workers = default_workers()
    with tempfile.TemporaryDirectory(prefix="isc-bench-synth-") as tmp:
        for name, params in cases:
            out = Path(tmp) / name
            _, seconds = timed(lambda p=params, o=out: synthesize(o, p, progress=False))
            images = params.references + params.training + params.queries
            rows.append(
                {
                    "case": name,
                    "references": params.references,
                    "training": params.training,
                    "queries": params.queries,
                    "size_px": params.size,
                    "workers": workers,
                    "seconds": round(seconds, 2),
                    "images_per_s": round(images / seconds, 1),
                    "trivial_8x8_uap": round(pixel_descriptor_uap(out), 4)
                    if name != "references=100000"
                    else None,
                }
            )
    return rows
