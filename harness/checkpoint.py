"""The training checkpoint file: its format, its atomic save, its safe load, and the RNG state in it.

A checkpoint holds everything a resumed run needs to continue bit for bit: the step, the images seen
and the training seconds so far, the state dicts of the method, optimizer, scheduler and gradient
scaler, and the global RNGs (python, numpy, torch, CUDA; dropout draws from them). It is written
with `atomic_torch_save` and read with `weights_only=True`, so it holds plain containers only: a
file it cannot load safely is refused with one line saying why, never unpickled.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.atomic import atomic_torch_save
from harness.errors import HarnessError

CHECKPOINT_FORMAT = 1


# --- RNG state (plain containers, loadable with weights_only=True) -----------------------------


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- the file ---------------------------------------------------------------------------------


def write_checkpoint(
    path: Path,
    *,
    step: int,
    images_seen: int,
    train_seconds: float,
    wall_seconds: float,
    method: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """Save the training state and the current global RNG state to `path`, atomically."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "images_seen": images_seen,
        "train_seconds": train_seconds,
        # Wall-clock of every process so far: a resumed run's record adds it to its own.
        "wall_seconds": wall_seconds,
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
    }
    atomic_torch_save(state, path)


def read_checkpoint(path: Path, device: torch.device) -> dict | None:
    """The checkpoint at `path` (None if there is none), checked to be of this format."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise HarnessError(
            f"{path}: cannot load the checkpoint ({load_failure(err)}); "
            "delete it to restart training from scratch"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise HarnessError(
            f"{path}: checkpoint format {found!r}, this version reads "
            f"{CHECKPOINT_FORMAT}: it was written by an incompatible version of isc-bench; "
            "delete it to restart training from scratch, or use another --out"
        )
    return state


def restore_components(
    state: dict,
    path: Path,
    *,
    method: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """Load the state dicts of a checkpoint read by `read_checkpoint` from `path` (not its counters
    or RNG). A checkpoint put there by another method or model size is one clear error."""
    misfit = _misfit(method.state_dict(), state.get("method"))
    try:
        if misfit is None:
            method.load_state_dict(state["method"])
            optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as err:
        misfit = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
    if misfit is not None:
        raise HarnessError(
            f"{path}: the checkpoint does not fit this run's model ({misfit}); it was written for "
            "another method or model size: delete it to restart training, or use another --out"
        )
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])


def _misfit(expected: dict, found) -> str | None:
    """How the tensors of a checkpoint's model differ from the model's, or None if they fit."""
    if not isinstance(found, dict):
        return "no model state"

    def listed(keys: list[str], what: str) -> str:
        return f"{len(keys)} {what}, e.g. {', '.join(keys[:2])}"

    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [
        f"{key}: {tuple(found[key].shape)} in the checkpoint, {tuple(value.shape)} here"
        for key, value in expected.items()
        if key in found and hasattr(found[key], "shape") and found[key].shape != value.shape
    ]
    parts = [
        listed(keys, what)
        for keys, what in (
            (missing, "missing tensors"),
            (unexpected, "unexpected tensors"),
            (reshaped, "of another shape"),
        )
        if keys
    ]
    return "; ".join(parts) or None


def load_failure(err: Exception, what: str = "a checkpoint of isc-bench") -> str:
    """torch.load's reason in one line. Its weights-only refusal runs to a page and suggests
    weights_only=False, which a harness must never do with a file it cannot vouch for."""
    text = str(err)
    if "Weights only load failed" in text:
        detail = text.partition("WeightsUnpickler error:")[2].strip().splitlines()
        reason = detail[0].strip() if detail else "unsupported content"
        reason = reason.partition(". Please use")[0]  # advice to allowlist: not for a user
        return f"not {what}, or damaged; safe loading refused it: {reason}"
    lines = text.strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"
