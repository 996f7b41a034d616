"""The backbone's starting weights: a local file (`model.weights`) or timm's published weights
(`model.pretrained`).

Every competitive ISC 2021 entry started from pretrained weights. A file is part of the protocol:
`methods.backbone.build_backbone` loads it into every backbone it builds, so both encoders of MoCo
and QK start from it too, and the run record holds the file's resolved path, size and sha256 and
whatever was not loaded.

A file is a state_dict saved with torch.save (.pth, .pt, .bin; read with weights_only=True, so a
file that would run code is refused, never unpickled) or a .safetensors file. What the usual sources
add around the backbone's tensors is undone: nesting under "state_dict" or "model" (training
checkpoints), a name prefix such as "module." (DataParallel) or "backbone." (a method's model),
removed only when that makes names match, and a classifier head (`fc.*`, `head.*`, `classifier.*`)
that the backbone, built with num_classes=0, lacks. Anything else that does not fit (a missing
tensor, an unexpected one, another shape) is an error, or with model.weights_strict false, skipped
and listed in the record.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, InputError
from harness.file_checks import require_input_file

NESTED_KEYS = ("state_dict", "model")  # where training checkpoints keep the model's state_dict
# Classifier heads of timm and torchvision models, most specific first ("head." alone is ViT's).
HEAD_PREFIXES = ("head.fc.", "fc.", "classifier.", "last_linear.", "head.")
SHOWN = 3  # tensor names quoted per kind of misfit in a message
SAVE_HINT = "save the backbone's state_dict: torch.save(model.state_dict(), PATH)"


def _input_file(path: str | Path) -> Path:
    try:
        return require_input_file(path)
    except InputError as err:
        raise InputError(f"model.weights {err}") from None


@functools.lru_cache(maxsize=16)
def _sha256(resolved: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(path: str | Path) -> str:
    """The sha256 of the weights file, hashed once per version of it (a sweep's configs all name
    one file)."""
    path = _input_file(path)
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def read_weights(path: str | Path) -> tuple[dict, dict[str, Any]]:
    """The tensors of the weights file and its identity for the record. One read: the sha256 is
    that of the bytes loaded."""
    path = _input_file(path)
    data = path.read_bytes()
    identity = {
        "path": str(path),
        "resolved_path": str(path.resolve()),
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return _state_dict(path, _parse(path, data)), identity


def _parse(path: Path, data: bytes):
    import torch

    from harness.checkpoint import load_failure

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            return load(data)
        except SafetensorError as err:
            raise InputError(
                f"model.weights {path}: not a readable .safetensors file ({err})"
            ) from None
    # torch.save writes a zip archive, or before torch 1.6 a pickle (protocol byte 0x80)
    if not data.startswith((b"PK\x03\x04", b"\x80")):
        raise InputError(
            f"model.weights {path}: not a file written by torch.save or a .safetensors file; "
            f"{SAVE_HINT}"
        )
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load's errors have no common base
        raise InputError(
            f"model.weights {path}: cannot load it ({load_failure(err, 'a state_dict')}); "
            f"{SAVE_HINT}"
        ) from None


def _is_state_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _state_dict(path: Path, obj) -> dict:
    while not _is_state_dict(obj) and isinstance(obj, dict):
        inner = next((obj[key] for key in NESTED_KEYS if isinstance(obj.get(key), dict)), None)
        if inner is None:
            break
        obj = inner
    if not _is_state_dict(obj) or not obj:
        if not isinstance(obj, dict):
            found = f"a {type(obj).__name__}"
        else:
            found = f"keys {', '.join(map(str, list(obj)[:SHOWN]))}" if obj else "nothing"
        raise InputError(
            f"model.weights {path}: holds no state_dict (tensor names to tensors), but {found}; "
            f"{SAVE_HINT}"
        )
    return obj


def _strip_prefix(state: dict, expected: dict) -> tuple[dict, str | None]:
    """`state` without the name prefix whose removal makes the most names match, if any does
    better than the names as they are."""
    counts = collections.Counter(
        key[: i + 1]
        for key in state
        for i, char in enumerate(key)
        if char == "." and key[i + 1 :] in expected
    )
    best = max(sorted(counts), key=counts.__getitem__, default=None)
    if best is None or counts[best] <= sum(key in expected for key in state):
        return state, None
    return {key.removeprefix(best): value for key, value in state.items()}, best


def _is_head(key: str, expected: dict) -> bool:
    prefix = next((p for p in HEAD_PREFIXES if key.startswith(p)), None)
    return prefix is not None and not any(name.startswith(prefix) for name in expected)


def _listed(keys: list[str], what: str) -> str:
    return f"{len(keys)} {what}, e.g. {', '.join(keys[:SHOWN])}"


def load_weights(model, path: str | Path, *, strict: bool, backbone: str) -> dict[str, Any]:
    """Load the weights file into `model` (a timm backbone named `backbone`, built with
    num_classes=0); returns the record's account of it (module doc)."""
    state, identity = read_weights(path)
    expected = model.state_dict()
    state, prefix = _strip_prefix(state, expected)
    head = [key for key in state if key not in expected and _is_head(key, expected)]
    state = {key: value for key, value in state.items() if key not in head}
    # BatchNorm's step counter: older files lack it and load_state_dict keeps the model's.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    mismatched = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    fitting = {k: v for k, v in state.items() if k in expected and k not in mismatched}
    where = f"model.weights {identity['path']}"
    if not fitting:
        raise ConfigError(
            f"{where}: none of its {len(state)} tensors fits backbone {backbone} (the file's: "
            f"{', '.join(list(state)[:SHOWN])}; the backbone's: {', '.join(list(expected)[:SHOWN])}); "
            f"it holds another architecture: set model.backbone to the file's, or pass weights "
            f"saved from timm.create_model({backbone!r})"
        )
    if strict and (missing or unexpected or mismatched):
        reshaped = [
            f"{k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} here"
            for k in mismatched
        ]
        parts = [
            _listed(keys, what)
            for keys, what in (
                (missing, "missing"),
                (unexpected, "unexpected"),
                (reshaped, "of another shape"),
            )
            if keys
        ]
        raise ConfigError(
            f"{where}: does not fit backbone {backbone} ({'; '.join(parts)}); pass weights saved "
            f"from timm.create_model({backbone!r}), or --set model.weights_strict=false to load "
            "the tensors that fit (the record lists the rest)"
        )
    model.load_state_dict(fitting, strict=False)
    return {
        **identity,
        "strict": strict,
        "prefix_removed": prefix,
        "loaded": len(fitting),
        "skipped": {
            "head": head,
            "missing": missing,
            "unexpected": unexpected,
            "mismatched": mismatched,
        },
    }


def published_backbone(name: str, **kwargs):
    """`timm.create_model(name, pretrained=True, **kwargs)`, or one line on how to do without."""
    import timm

    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # offline, no published weights, a hub error: all end the same way
        lines = str(err).strip().splitlines()
        raise ConfigError(
            f"model.pretrained: cannot get timm's published weights for {name} "
            f"({type(err).__name__}: {lines[0][:300] if lines else ''}); on a machine with "
            f"internet run python -c \"import timm, torch; torch.save(timm.create_model('{name}', "
            f"pretrained=True).state_dict(), '{name}.pth')\", copy {name}.pth here and pass "
            f"--set model.weights={name}.pth --set model.pretrained=false"
        ) from None


def published_identity(model) -> dict[str, Any]:
    """The record's account of timm's published weights: where timm took them from."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {"pretrained": cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("architecture")}
