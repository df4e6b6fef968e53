"""Configs: strict keys with suggestions, nested overrides that keep sibling defaults, typed values."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from rlhf.config import dump_yaml, load_config
from rlhf.errors import RLHFError
from rlhf.stages import PretrainStage as PretrainConfig  # the stage configs, with their world section
from rlhf.stages import SFTStage as SFTConfig
from rlhf.world import WorldConfig


@dataclass
class Inner:
    rate: float = 0.5
    name: str = "x"


@dataclass
class Mid:
    depth: int = 1
    inner: Inner = field(default_factory=Inner)


@dataclass
class Toy:
    steps: int = 10
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    path: str | None = None
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    mid: Mid = field(default_factory=Mid)


def test_defaults_and_round_trip(tmp_path):
    cfg = load_config(PretrainConfig)
    assert cfg == PretrainConfig()
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(PretrainConfig, path) == cfg


def test_misspelt_key_names_it_and_suggests():
    with pytest.raises(RLHFError) as e:
        load_config(PretrainConfig, None, ["stepz=3"])
    assert "'stepz'" in str(e.value) and "did you mean 'steps'" in str(e.value)


def test_misspelt_nested_key_gives_its_full_path(tmp_path):
    with pytest.raises(RLHFError) as e:
        load_config(PretrainConfig, None, ["model.szie=micro"])
    assert "'model.szie'" in str(e.value) and "did you mean 'model.size'" in str(e.value)
    path = tmp_path / "bad.yaml"
    path.write_text("steps: 5\nworld:\n  demonstrator:\n    verbos: 0.1\n")
    with pytest.raises(RLHFError) as e:
        load_config(PretrainConfig, path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "'world.demonstrator.verbos'" in msg
    assert "did you mean 'world.demonstrator.verbose'" in msg


def test_unknown_key_without_a_close_match_lists_the_known_keys():
    with pytest.raises(RLHFError, match=r"unknown config key 'zzzzzz'; known keys: steps, flag"):
        load_config(Toy, None, ["zzzzzz=1"])


def test_nested_override_keeps_sibling_defaults(tmp_path):
    cfg = load_config(SFTConfig, None, ["world.demonstrator.verbose=0.5", "optim.lr=0.01", "world.seed=3"])
    assert cfg.world.demonstrator.verbose == 0.5
    assert cfg.world.demonstrator.fabricate_unknown == WorldConfig().demonstrator.fabricate_unknown
    assert cfg.world.seed == 3 and cfg.world.n_people == WorldConfig().n_people
    # a section's own default factory is kept: SFT's optim defaults differ from OptimConfig's
    assert cfg.optim.lr == 0.01 and cfg.optim.warmup_steps == SFTConfig().optim.warmup_steps == 20
    assert cfg.optim.weight_decay == 0.0


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\nmid:\n  depth: 3\n  inner:\n    rate: 0.25\n")
    cfg = load_config(Toy, path, ["mid.inner.name=y", "steps=7"])
    assert cfg.steps == 7 and cfg.mid.depth == 3 and cfg.mid.inner == Inner(rate=0.25, name="y")


@pytest.mark.parametrize("override,value", [
    ("steps=3", 3), ("steps=3.0", 3), ("flag=true", True), ("flag=no", False), ("mode=b", "b"),
    ("path=null", None), ("path=runs/x", "runs/x"), ("sizes=3,4", [3, 4]), ("sizes=[5]", [5]),
    ("mid.inner.rate=1", 1.0),
])
def test_values_are_coerced(override, value):
    cfg = load_config(Toy, None, [override])
    key = override.split("=")[0]
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    assert obj == value and type(obj) is type(value)


@pytest.mark.parametrize("override,message", [
    ("steps=abc", "key 'steps' expects int, got 'abc'"),
    ("steps=1.5", "key 'steps' expects int, got 1.5"),
    ("steps=true", "key 'steps' expects int, got True"),
    ("flag=maybe", "key 'flag' expects bool"),
    ("mode=c", "key 'mode' expects"),
    ("mid.inner.rate=fast", "key 'mid.inner.rate' expects float, got 'fast'"),
    ("sizes=[a]", "key 'sizes' expects int"),
    ("mid=3", "key 'mid' must be a mapping, got 3"),
    ("mid.inner.name.x=1", "key 'mid.inner.name' expects str"),
    ("steps", "--set expects key=value, got 'steps'"),
])
def test_type_errors_name_the_key(override, message):
    with pytest.raises(RLHFError) as e:
        load_config(Toy, None, [override])
    assert message in str(e.value)


def test_override_below_a_scalar_is_an_error():
    with pytest.raises(RLHFError, match="'steps' is not a section"):
        load_config(Toy, None, ["steps=3", "steps.x=1"])


def test_bad_files(tmp_path):
    with pytest.raises(RLHFError, match="config file not found"):
        load_config(Toy, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\nmid: [unclosed\n")
    with pytest.raises(RLHFError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(Toy, bad)
    bad.write_text("- a list\n")
    with pytest.raises(RLHFError, match="top level must be a mapping"):
        load_config(Toy, bad)


@pytest.mark.parametrize("name,cls", [("world.yaml", WorldConfig), ("pretrain_nano.yaml", PretrainConfig),
                                      ("sft_nano.yaml", SFTConfig), ("smoke.yaml", PretrainConfig)])
def test_example_configs_load(name, cls):
    from pathlib import Path

    path = Path(__file__).parents[1] / "configs" / name
    cfg = load_config(cls, path)
    if name in ("world.yaml", "pretrain_nano.yaml", "sft_nano.yaml"):  # the examples spell out the defaults
        assert cfg == cls()
