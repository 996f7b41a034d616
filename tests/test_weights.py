"""model.weights and model.pretrained (harness/weights.py): every backbone of every method starts
from the file's tensors exactly, a file that does not fit is one clear line, and the record says
what was loaded. Nothing here touches the network."""

from __future__ import annotations

import fractions
import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import timm
import torch
from conftest import run_harness, set_flags, tiny_run_overrides
from safetensors.torch import save_file

import methods  # noqa: F401  (registers every method)
from harness.config import resolve_config
from harness.errors import ConfigError, InputError
from harness.pipeline import build_method, loaded_weights
from harness.weights import load_weights
from methods.registry import list_methods

TINY = tiny_run_overrides("train.budget_value=2", "eval.score_norm_n=2")
ENCODERS = {"moco": 2, "qk": 2}  # backbones per method; 1 for the others
SMALL = {"membank": ["membank.num_negatives=8"], "qk": ["qk.num_negatives=8"]}  # 20 images
DOCS = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def classifier(name: str = "test_resnet") -> dict[str, torch.Tensor]:
    """The state_dict of timm's `name` with its classifier, as published files hold it; seeded
    apart from any run seed, so a backbone that ignored the file would differ from it."""
    torch.manual_seed(1234)
    return timm.create_model(name).state_dict()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    state = classifier()
    torch.save(state, root / "plain.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "plain.safetensors"))
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, root / "nested.pt"
    )
    return {
        "pth": root / "plain.pth",
        "safetensors": root / "plain.safetensors",
        "nested": root / "nested.pt",
    }


def build(method: str, *overrides: str):
    cfg = resolve_config(method, overrides=[*TINY, *SMALL.get(method, []), *overrides])
    return build_method(cfg, 20, torch.device("cpu"))


def backbones(method, keys) -> list[torch.nn.Module]:
    """The modules of `method` whose tensors are exactly a backbone's (a GeM trunk included)."""
    return [m for m in method.modules() if m is not method and set(m.state_dict()) == set(keys)]


def backbone_state() -> dict[str, torch.Tensor]:
    return {k: v for k, v in classifier().items() if not k.startswith("fc.")}


@pytest.mark.parametrize("kind", ["pth", "safetensors", "nested"])
@pytest.mark.parametrize("method", list_methods())
def test_every_encoder_of_every_method_starts_from_the_file(method, kind, files):
    saved = backbone_state()
    built = build(method, f"model.weights={files[kind]}")
    found = backbones(built, saved)
    assert len(found) == ENCODERS.get(method, 1)
    for backbone in found:
        state = backbone.state_dict()
        for key, tensor in saved.items():
            assert torch.equal(state[key], tensor), key
    record = loaded_weights(built)
    assert record["loaded"] == len(saved)
    assert sorted(record["skipped"]["head"]) == ["fc.bias", "fc.weight"]  # safetensors sorts
    assert record["prefix_removed"] == ("module." if kind == "nested" else None)


@pytest.mark.parametrize(
    "overrides", [["qk.init=independent"], ["model.pooling=gem"]], ids=["qk-independent", "gem"]
)
def test_independent_qk_sides_and_a_gem_trunk_load_the_file_too(overrides, files):
    saved = backbone_state()
    method = "qk" if overrides[0].startswith("qk") else "simclr"
    found = backbones(build(method, f"model.weights={files['pth']}", *overrides), saved)
    assert len(found) == ENCODERS.get(method, 1)
    assert all(torch.equal(b.state_dict()[k], v) for b in found for k, v in saved.items())


def test_without_weights_the_backbone_is_not_the_file():
    """The guard of the tests above: the run's random init differs from the saved tensors."""
    saved = backbone_state()
    (found,) = backbones(build("simclr"), saved)
    assert not torch.equal(found.state_dict()["conv1.0.weight"], saved["conv1.0.weight"])
    assert loaded_weights(build("simclr")) is None


@pytest.mark.parametrize(
    "name, head, kept",
    [
        ("test_convnext", ["head.fc.weight", "head.fc.bias"], "head.norm.weight"),
        ("test_vit", ["head.weight", "head.bias"], "norm.weight"),
        ("test_efficientnet", ["classifier.weight", "classifier.bias"], "conv_head.weight"),
    ],
)
def test_a_classifier_head_is_dropped_only_where_the_backbone_has_none(name, head, kept, tmp_path):
    state = classifier(name)
    torch.save(state, tmp_path / "w.pth")
    built = build("none", f"model.backbone={name}", f"model.weights={tmp_path / 'w.pth'}")
    record = loaded_weights(built)
    assert record["skipped"]["head"] == head
    assert torch.equal(built.backbone.state_dict()[kept], state[kept])


def test_a_key_under_a_head_prefix_the_backbone_has_is_not_dropped(tmp_path):
    """ConvNeXt keeps head.norm without a classifier: an unknown head.* tensor is a misfit there."""
    state = classifier("test_convnext")
    state["head.extra"] = torch.zeros(2)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=r"1 unexpected, e\.g\. head\.extra;?"):
        build("none", "model.backbone=test_convnext", f"model.weights={tmp_path / 'w.pth'}")


def _misfits(state: dict) -> dict[str, dict]:
    missing = dict(state)
    del missing["conv1.0.weight"]
    unexpected = {**state, "extra.weight": torch.zeros(3)}
    reshaped = {**state, "conv1.0.weight": torch.zeros(5, 3, 3, 3)}
    return {"missing": missing, "unexpected": unexpected, "mismatched": reshaped}


MESSAGES = {
    "missing": "1 missing, e.g. conv1.0.weight",
    "unexpected": "1 unexpected, e.g. extra.weight",
    "mismatched": "1 of another shape, e.g. conv1.0.weight: (5, 3, 3, 3) in the file, (16, 3, 3, 3) here",
}


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_strict_loading_refuses_a_misfit_in_one_line_naming_file_keys_and_way_out(kind, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_misfits(classifier())[kind], path)
    with pytest.raises(ConfigError) as caught:
        build("simclr", f"model.weights={path}")
    message = str(caught.value)
    assert message == (
        f"model.weights {path}: does not fit backbone test_resnet ({MESSAGES[kind]}); pass "
        "weights saved from timm.create_model('test_resnet'), or --set model.weights_strict=false "
        "to load the tensors that fit (the record lists the rest)"
    )


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_non_strict_loading_loads_what_fits_and_records_exactly_what_it_skipped(kind, tmp_path):
    path = tmp_path / "w.pth"
    saved = backbone_state()
    torch.save(_misfits(classifier())[kind], path)
    built = build("moco", f"model.weights={path}", "model.weights_strict=false")
    skipped = loaded_weights(built)["skipped"]
    key = {"missing": "conv1.0.weight", "unexpected": "extra.weight"}.get(kind, "conv1.0.weight")
    assert skipped == {
        "head": ["fc.weight", "fc.bias"],
        **{k: [key] if k == kind else [] for k in ("missing", "unexpected", "mismatched")},
    }
    found = backbones(built, saved)
    assert len(found) == 2  # the query and the momentum encoder
    for backbone in found:
        state = backbone.state_dict()
        assert all(torch.equal(state[k], v) for k, v in saved.items() if k != "conv1.0.weight")
        assert torch.equal(state["conv1.0.weight"], saved["conv1.0.weight"]) == (
            kind == "unexpected"
        )


def test_another_architecture_fits_nothing_even_when_not_strict(tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(classifier("test_vit"), path)
    for strict in ("true", "false"):
        with pytest.raises(ConfigError, match="none of its .* tensors fits backbone test_resnet"):
            build("simclr", f"model.weights={path}", f"model.weights_strict={strict}")


def test_a_common_prefix_is_removed_only_when_it_makes_names_match(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    kept = {"0.weight": torch.ones(2, 2), "0.bias": torch.ones(2)}
    torch.save({"model": {f"backbone.{k}": v for k, v in kept.items()}}, tmp_path / "a.pth")
    record = load_weights(model, tmp_path / "a.pth", strict=True, backbone="toy")
    assert record["prefix_removed"] == "backbone." and torch.equal(model[0].bias, kept["0.bias"])
    # Names that already match keep the prefix they share, though removing it would match too.
    nested = torch.nn.Module()
    nested.b, nested.a = torch.nn.Linear(2, 2), torch.nn.Module()
    nested.a.b = torch.nn.Linear(2, 2)
    torch.save({"a.b.weight": torch.ones(2, 2), "a.b.bias": torch.ones(2)}, tmp_path / "b.pth")
    record = load_weights(nested, tmp_path / "b.pth", strict=False, backbone="toy")
    assert record["prefix_removed"] is None and record["skipped"]["missing"] == [
        "b.weight",
        "b.bias",
    ]
    assert torch.equal(nested.a.b.bias, torch.ones(2)) and not torch.equal(
        nested.b.bias, torch.ones(2)
    )


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"this is not a checkpoint", "not a file written by torch.save or a .safetensors file"),
        (b"", "not a file written by torch.save or a .safetensors file"),
        (
            "truncated",
            "cannot load it (RuntimeError: PytorchStreamReader failed reading zip archive",
        ),
        (
            "fraction",
            "cannot load it (not a state_dict, or damaged; safe loading refused it: "
            "Unsupported global: GLOBAL fractions.Fraction was not an allowed global by default)",
        ),
        ("model", "safe loading refused it: Unsupported global: GLOBAL timm.models.resnet.ResNet"),
        ("list", "holds no state_dict (tensor names to tensors), but a list"),
    ],
    ids=["garbage", "empty", "truncated", "pickled-object", "whole-model", "no-mapping"],
)
def test_a_file_that_is_no_state_dict_is_one_line_naming_it(content, expected, tmp_path):
    path = tmp_path / "w.pth"
    if content == "truncated":
        torch.save(classifier(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "fraction":
        torch.save({"conv1.0.weight": fractions.Fraction(1, 3)}, path)
    elif content == "model":
        torch.manual_seed(0)
        torch.save(timm.create_model("test_resnet"), path)
    elif content == "list":
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        build("none", f"model.weights={path}")
    message = str(caught.value)
    assert message.startswith(f"model.weights {path}: ") and expected in message, message
    assert "\n" not in message and "weights_only=False" not in message
    assert message.endswith("save the backbone's state_dict: torch.save(model.state_dict(), PATH)")


def test_a_damaged_safetensors_file_and_a_missing_file_name_themselves(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(
        InputError, match=rf"^model.weights {path}: not a readable .safetensors file"
    ):
        build("none", f"model.weights={path}")
    # A missing file is refused when the config resolves, before a run directory exists.
    with pytest.raises(InputError, match=rf"^model.weights {tmp_path / 'gone.pth'}: no such file$"):
        resolve_config("none", overrides=[*TINY, f"model.weights={tmp_path / 'gone.pth'}"])


def test_weights_and_pretrained_together_are_refused(files):
    with pytest.raises(ConfigError, match="model.weights and model.pretrained are exclusive"):
        resolve_config("none", overrides=[f"model.weights={files['pth']}", "model.pretrained=true"])


def test_a_changed_file_at_the_same_path_is_a_new_run_id(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(classifier(), path)
    first = resolve_config("none", overrides=[*TINY, f"model.weights={path}"]).run_id
    state = classifier()
    state["conv1.0.weight"] += 1
    torch.save(state, path)
    assert resolve_config("none", overrides=[*TINY, f"model.weights={path}"]).run_id != first


def _documented(message: str) -> bool:
    """Whether docs/troubleshooting.md's bad-input table shows `message` (`...`: text left out)."""
    table = DOCS.read_text().split("## Bad input", 1)[1].split("\n## ", 1)[0]
    patterns = [
        ".*".join(re.escape(part) for part in text.split("..."))
        for text in re.findall(r"`(error: [^`]*)`", table)
    ]
    return any(re.fullmatch(pattern, message) for pattern in patterns)


def test_pretrained_offline_fails_at_once_with_the_way_out(tiny_benchmark, tmp_path):
    """The hub made unreachable (HF_HUB_OFFLINE, an empty cache): one line, no hang."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    done = run_harness(
        "run", "--method", "none", "--data", str(tiny_benchmark), "--out", str(tmp_path / "out"),
        *set_flags([*TINY, "model.pretrained=true"]), "--no-progress",
        timeout=300, env=env,
    )  # fmt: skip
    line = done.stderr.strip()
    assert done.returncode == 2 and "\n" not in line and "Traceback" not in line, done.stderr
    assert line.startswith(
        "error: model.pretrained: cannot get timm's published weights for test_resnet ("
    )
    assert line.endswith(
        'on a machine with internet run python -c "import timm, torch; '
        "torch.save(timm.create_model('test_resnet', pretrained=True).state_dict(), "
        "'test_resnet.pth')\", copy test_resnet.pth here and pass "
        "--set model.weights=test_resnet.pth --set model.pretrained=false"
    )
    assert _documented(line), "docs/troubleshooting.md lacks the pretrained row"


def test_none_with_weights_runs_end_to_end_and_records_the_file(tiny_benchmark, files, tmp_path):
    """`--method none --set model.weights=FILE`: the pretrained, untrained-here row, as typed."""
    out = tmp_path / "out"
    done = run_harness(
        "run", "--method", "none", "--data", str(tiny_benchmark), "--out", str(out),
        *set_flags([*TINY, f"model.weights={files['nested']}"]), "--no-progress",
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (record_path,) = out.glob("*/record.json")
    record = json.loads(record_path.read_text())
    data = files["nested"].read_bytes()
    assert record["weights"] == {
        "path": str(files["nested"]),
        "resolved_path": str(files["nested"].resolve()),
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "strict": True,
        "prefix_removed": "module.",
        "loaded": len(backbone_state()),
        "skipped": {
            "head": ["fc.weight", "fc.bias"],
            "missing": [],
            "unexpected": [],
            "mismatched": [],
        },
    }
    assert record["config"]["model"]["weights"] == str(files["nested"])
    assert record["metrics"]["raw"]["n_gt"] > 0
