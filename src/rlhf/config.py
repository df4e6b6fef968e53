"""Configs are dataclasses; YAML files and `--set a.b=value` overrides fill them, strictly.

A misspelt or unknown key is an error naming the key (with a suggestion), never silently ignored.
Besides its own fields, every command's config takes a top-level `tracking` key: the trackers its runs report
their metrics to (`rlhf.tracking`; it changes nothing a run computes, so it is no field of the config).
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlhf import tracking
from rlhf.errors import RLHFError

T = TypeVar("T")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, known: list[str], where: str) -> RLHFError:
    section, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{section + '.' if section else ''}{close[0]}'?)" if close else ""
    return RLHFError(f"{where}: unknown config key '{key}'{hint}; known keys: {', '.join(known)}")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RLHFError(f"{where}: key '{key}' must be a mapping, got {value!r}")
        return build_config(tp, value, where, prefix=f"{key}.")
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise RLHFError(f"{where}: key '{key}' must be a list, got {value!r}")
        items = [_coerce(v, inner, key, where) for v in value]
        return tuple(items) if origin is tuple else items
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp in (int, float):
            if isinstance(value, bool):
                raise ValueError(value)
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return tp(value)
        if tp is str:
            if isinstance(value, (dict, list, tuple)):
                raise ValueError(value)
            return str(value)
        if typing.get_origin(tp) is typing.Literal:
            if value not in typing.get_args(tp):
                raise ValueError(value)
            return value
    except (TypeError, ValueError):
        raise RLHFError(f"{where}: key '{key}' expects {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def build_config(cls: type[T], data: dict, where: str, prefix: str = "") -> T:
    """`cls` from a mapping, strictly: an unknown key or a value of the wrong type is an error naming it."""
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            raise _unknown_key(prefix + key, list(types_), where)
        kwargs[key] = _coerce(value, types_[key], prefix + key, where)
    # nested dataclasses given partially keep their own defaults
    try:
        return cls(**kwargs)
    except RLHFError as exc:  # a section's own check: give its key in full
        raise RLHFError(_full_key(str(exc), prefix, set(types_))) from None


def _full_key(message: str, prefix: str, fields: set[str]) -> str:
    """A section's error with its key in full: 'backend: ...' (a field of the section) raised in section
    'ppo.sampling.' -> 'ppo.sampling.backend: ...'; 'model.lora.r: ...' (named from a section's usual place)
    in 'sft.model.lora.' -> 'sft.model.lora.r: ...'."""
    parts = prefix.rstrip(".").split(".") if prefix else []
    for i in range(len(parts)):
        if message.startswith(".".join(parts[i:]) + "."):
            return ".".join(parts[:i] + [message])
    return prefix + message if message.split(":")[0].split(".")[0] in fields else message


def _set_path(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RLHFError(f"--set {dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from an optional YAML file, then apply `key.sub=value` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RLHFError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise RLHFError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(loaded, dict):
            raise RLHFError(f"{path}: top level must be a mapping of config keys")
        data = loaded
    for item in overrides or []:
        if "=" not in item:
            raise RLHFError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw) if raw else "")
    if "tracking" not in {f.name for f in dataclasses.fields(cls)}:
        try:
            tracking.choose(data.pop("tracking", None))
        except RLHFError as exc:
            raise RLHFError(f"{path or '--set'}: {exc}") from None
    _merge_defaults(cls, data)
    cfg = build_config(cls, data, str(path) if path else "--set")
    if hasattr(cfg, "validate"):
        cfg.validate()  # settings that are wrong together fail before anything runs
    return cfg


def _merge_defaults(cls, data: dict) -> None:
    """Nested sections given in part are completed from the section's defaults."""
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(data.get(f.name), dict):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else tp()
            merged = dataclasses.asdict(default)
            _deep_update(merged, data[f.name], tp)
            data[f.name] = merged


def _deep_update(base: dict, new: dict, cls) -> None:
    types_ = _field_types(cls)
    for key, value in new.items():
        if key in types_ and dataclasses.is_dataclass(types_[key]) and isinstance(value, dict):
            _deep_update(base[key], value, types_[key])
        else:
            base[key] = value  # unknown keys are reported by _build with their full path


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
