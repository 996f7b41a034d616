"""Typed run configs: layering, overrides, validation errors, serialization, run directories."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from harness.config import (
    RunConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    resolve_config,
)
from harness.errors import ConfigError, HarnessError
from harness.run_dir import load_run_config, prepare_run_dir
from methods import get_method, list_methods

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_every_method_resolves_with_its_registered_config_class():
    for name in list_methods():
        cfg = resolve_config(name)
        assert isinstance(cfg, RunConfig)
        assert isinstance(cfg.method_config, get_method(name).config_cls)
        assert cfg.run_id.startswith(f"{name}-") and cfg.run_id.endswith("-s0")


def test_set_overrides_reach_typed_fields():
    cfg = resolve_config(
        "qk",
        overrides=["qk.phase_steps=20", "train.lr=1", "eval.max_results=null", "train.amp=false"],
        seed=7,
        data="/some/where",
    )
    assert cfg.method_config.phase_steps == 20
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.eval.max_results is None and cfg.train.amp is False
    assert cfg.seed == 7 and cfg.data.spec == "/some/where" and cfg.run_id.endswith("-s7")


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ConfigError) as err:
        resolve_config("byol")
    for name in list_methods():
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("override", "pieces"),
    [
        ("train.lrr=0.1", ["train.lrr", "batch_size", "lr", "weight_decay"]),
        ("qk.phase_step=3", ["qk.phase_step", "phase_steps", "temperature"]),
        ("bogus=1", ["bogus", "train", "qk"]),
    ],
)
def test_unknown_keys_name_the_key_and_the_valid_ones(override, pieces):
    with pytest.raises(ConfigError) as err:
        resolve_config("qk", overrides=[override])
    for piece in pieces:
        assert piece in str(err.value)


def test_another_methods_section_is_pointed_out():
    with pytest.raises(ConfigError, match="belongs to another method"):
        config_from_dict({"method": "qk", "moco": {"queue_size": 10}})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=abc", "train.batch_size: expected int"),
        ("train.batch_size=1.5", "train.batch_size: expected int"),
        ("train.amp=3", "train.amp: expected bool"),
        ("train.optimizer=adam", "train.optimizer: expected 'sgd' | 'adamw'"),
        ("simclr.temperature=hot", "simclr.temperature: expected float"),
        ("train.budget_value=0", "budget of 0 steps trains nothing"),
        ("train.budget_kind=epochs", "train.budget_kind: expected"),
        ("model.embedding_dim=512", "at most 256"),
        ("train=3", "train: expected a mapping"),
        ("train.lr", "expected KEY=VALUE"),
    ],
)
def test_bad_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("simclr", overrides=[override])


def test_unknown_synth_parameter_is_named():
    with pytest.raises(
        ConfigError, match=r"data.synth.refs.*valid keys in data.synth:.*references"
    ):
        resolve_config("none", overrides=["data.synth={refs: 3}"])


def test_config_file_layers_over_defaults_and_reports_bad_yaml(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  lr: 0.5\nmoco:\n  queue_size: 128\n")
    cfg = resolve_config("moco", config_path=good, overrides=["train.lr=0.25"])
    assert cfg.method_config.queue_size == 128 and cfg.train.lr == 0.25  # --set wins over the file
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.5\n   batch_size: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: invalid YAML"):
        resolve_config("moco", config_path=bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown key train.epochs"):
        resolve_config("moco", config_path=unknown)
    with pytest.raises(ConfigError, match="not found"):
        resolve_config("moco", config_path=tmp_path / "missing.yaml")
    other = tmp_path / "other.yaml"
    other.write_text("method: qk\n")
    with pytest.raises(ConfigError, match="for method 'qk'"):
        resolve_config("moco", config_path=other)


def test_a_protocol_file_holds_every_methods_section_and_each_run_reads_its_own(tmp_path):
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text("train:\n  lr: 0.5\nqk:\n  phase_steps: 7\nmoco:\n  queue_size: 128\n")
    qk = resolve_config("qk", config_path=protocol)
    simclr = resolve_config("simclr", config_path=protocol)
    assert qk.method_config.phase_steps == 7 and simclr.train.lr == 0.5
    # Another method's section shapes neither this run nor its id.
    plain = tmp_path / "plain.yaml"
    plain.write_text("train:\n  lr: 0.5\n")
    assert simclr.run_id == resolve_config("simclr", config_path=plain).run_id
    # A typo in another method's section fails every run of the protocol alike, naming the file.
    protocol.write_text("qk:\n  phase_step: 7\n")
    with pytest.raises(ConfigError, match=r"protocol.yaml: unknown key qk.phase_step"):
        resolve_config("simclr", config_path=protocol)
    # --set replaces the file's weights before any file is hashed: the file's need not exist.
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"tensors")
    protocol.write_text("model:\n  weights: elsewhere/missing.pth\n")
    cfg = resolve_config("qk", config_path=protocol, overrides=[f"model.weights={weights}"])
    assert cfg.model.weights == str(weights)
    with pytest.raises(HarnessError, match="missing.pth: no such file"):
        resolve_config("qk", config_path=protocol)
    # A run's own config.yaml still holds its method's section alone.
    with pytest.raises(ConfigError, match="belongs to another method"):
        config_from_dict({"method": "qk", "moco": {"queue_size": 10}})


def test_round_trip_through_dict_and_yaml():
    cfg = resolve_config(
        "membank", overrides=["membank.num_negatives=null", "augment.overrides={edit_prob: 0.5}"]
    )
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    json.dumps(config_to_dict(cfg))  # the record embeds it as JSON


def test_run_id_hashes_the_config_but_not_the_seed():
    a = resolve_config("qk")
    assert resolve_config("qk").run_id == a.run_id
    b = resolve_config("qk", seed=3)
    assert b.run_id.rsplit("-", 1)[0] == a.run_id.rsplit("-", 1)[0]
    c = resolve_config("qk", overrides=["qk.phase_steps=7"])
    assert c.run_id != a.run_id
    assert resolve_config("qk", overrides=["run_id=mine"]).run_id == "mine"


def test_prepare_run_dir_writes_config_resumes_and_refuses_finished_runs(tmp_path):
    cfg = resolve_config("none")
    run_dir = prepare_run_dir(cfg, tmp_path)
    assert run_dir == tmp_path / cfg.run_id
    assert load_run_config(run_dir) == cfg
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"x")
    assert prepare_run_dir(cfg, tmp_path) == run_dir  # unfinished: reused for resuming
    assert (run_dir / "checkpoints" / "last.pt").exists()

    changed = resolve_config("none", overrides=["run_id=" + cfg.run_id, "train.lr=0.5"])
    with pytest.raises(ConfigError, match="unfinished run with a different config"):
        prepare_run_dir(changed, tmp_path)

    (run_dir / "record.json").write_text(json.dumps({"status": "complete"}))
    with pytest.raises(ConfigError, match="already holds a finished run.*--overwrite"):
        prepare_run_dir(cfg, tmp_path)
    assert prepare_run_dir(cfg, tmp_path, overwrite=True) == run_dir
    assert not (run_dir / "record.json").exists() and not (run_dir / "checkpoints").exists()
    assert load_run_config(run_dir) == cfg


def test_every_method_runs_under_one_protocol_from_one_source_of_defaults():
    # The dataclasses are the only home of defaults: no YAML layer sits under the user's files.
    assert not (REPO_ROOT / "configs" / "protocol.yaml").exists()
    assert not (REPO_ROOT / "configs" / "methods").exists()
    protocol = None
    for name in list_methods():
        d = config_to_dict(resolve_config(name))
        assert d[name] == dataclasses.asdict(get_method(name).config_cls()), name
        shared = {k: d[k] for k in ("data", "model", "augment", "train", "eval", "seed")}
        # How many views to make is the method's need (views_per_image), not a protocol choice.
        assert (
            shared["train"].pop("n_views") == get_method(name).cls.views_per_image or name == "none"
        )
        protocol = protocol or shared
        assert shared == protocol, f"{name} runs under another protocol"


def test_views_default_to_what_the_method_reads_and_fewer_is_an_error():
    assert resolve_config("qk").train.n_views == 1
    assert resolve_config("simclr").train.n_views == 2
    assert resolve_config("membank", overrides=["train.n_views=3"]).train.n_views == 3
    with pytest.raises(ConfigError, match="n_views is 1, but simclr reads 2"):
        resolve_config("simclr", overrides=["train.n_views=1"])
