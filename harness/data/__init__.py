"""Benchmark data: the DISC21-style layout reader, torch datasets, the generated mini-DISC.

Names are imported on first use (PEP 562), so `import harness.data.edits` or the CLI's `--help`
does not pull in torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ImageDataset": "datasets",
    "TrainingDataset": "datasets",
    "open_rgb": "datasets",
    "EDIT_FAMILIES": "edits",
    "EditSettings": "edits",
    "apply_edit": "edits",
    "random_edits": "edits",
    "Benchmark": "layout",
    "ImageSet": "layout",
    "load_benchmark": "layout",
    "GENERATOR_VERSION": "synth",
    "SynthParams": "synth",
    "default_cache_dir": "synth",
    "ensure_synthetic": "synth",
    "resolve_data": "synth",
    "synthesize": "synth",
    "synthetic_path": "synth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
