"""Building a config: a YAML file, then `key.sub=value` overrides in order, each value checked against its field's
type; a bad key or value raises `ConfigError` naming the key and what is allowed."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from grpolab.config.schema import Config
from grpolab.errors import ConfigError

FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def describe_type(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a float", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp) -> Any:
    """Check `value` against the field type `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: got {value!r}, expected {describe_type(tp)}")
        return value
    if tp is Any:  # checked later by whatever consumes it (e.g. a pipeline stage's own config)
        return value
    if origin is list:
        if isinstance(value, str) and typing.get_args(tp) == (str,):
            value = [value]  # `reward.functions=my.py:f`: one item needs no brackets
        if not isinstance(value, list):
            raise ConfigError(f"{key}: got {value!r}, expected a list")
        (item_type,) = typing.get_args(tp)
        return [_coerce_item(f"{key}.{i}", item, item_type) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}, expected a mapping")
        _, value_type = typing.get_args(tp)
        return {str(k): _coerce(f"{key}.{k}", v, value_type) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}, expected true or false")
        return value
    if tp is float:
        if isinstance(value, str) and FLOAT_TEXT.match(value.strip()):  # YAML 1.1 reads `1e-5` as a string
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: got {value!r}, expected a float")
        if not math.isfinite(value):  # .inf / .nan / 1e400 would train to non-finite weights or never end
            raise ConfigError(f"{key}: got {value!r}, expected a finite float")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: got {value!r}, expected an integer")
        return value
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: got {value!r}, expected a string")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")


def _coerce_item(key: str, value: Any, tp) -> Any:
    """A list item: a dataclass item is built from its mapping, key by key."""
    if not dataclasses.is_dataclass(tp):
        return _coerce(key, value, tp)
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: got {value!r}, expected a mapping of keys")
    item = tp()
    for sub_key, sub_value in value.items():
        apply_key(item, [str(sub_key)], sub_value, f"{key}.{sub_key}")
    return item


def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


MOVED = {"grpo.algorithm": "the top-level key algorithm (e.g. algorithm=online_rft)"}


def apply_key(obj, key_path: list[str], value: Any, full_key: str) -> None:
    if full_key in MOVED:
        raise ConfigError(f"{full_key}: is now {MOVED[full_key]}")
    name, rest = key_path[0], key_path[1:]
    types_ = field_types(type(obj))
    if name not in types_:
        allowed = ", ".join(sorted(types_))
        raise ConfigError(f"unknown config key {full_key!r} (allowed here: {allowed})")
    tp = types_[name]
    if dataclasses.is_dataclass(tp):
        if rest:
            apply_key(getattr(obj, name), rest, value, full_key)
        elif isinstance(value, dict):
            for sub_key, sub_value in value.items():
                apply_key(getattr(obj, name), [str(sub_key)], sub_value, f"{full_key}.{sub_key}")
        else:
            raise ConfigError(f"{full_key}: is a section; set its keys, e.g. {full_key}.<key>=value")
        return
    if rest and typing.get_origin(tp) is dict:
        _, value_type = typing.get_args(tp)
        getattr(obj, name)[".".join(rest)] = _coerce(full_key, value, value_type)
        return
    if rest:
        raise ConfigError(f"unknown config key {full_key!r} ({name} has no sub-keys)")
    setattr(obj, name, _coerce(full_key, value, tp))


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def settings_overrides(values: dict[str, Any]) -> list[str]:
    """`key=value` overrides whose values survive the YAML reading of `load_config` (JSON is YAML)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping of keys as dotted keys (`{"grpo": {"beta": 0}}` -> `{"grpo.beta": 0}`); lists and the
    mapping of `reward.weights` stay values."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and f"{prefix}{key}" != "reward.weights":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_config(path: str | None = None, overrides: list[str] | tuple = (), root: type = Config):
    """Build a validated config from an optional YAML file and `key=value` overrides (applied in order).

    `root` is the config dataclass to build: `Config` (GRPO) or another command's config; each root checks
    itself in its `validate()` method.
    """
    config = root()
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {path!r} does not exist")
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as error:
            raise ConfigError(f"config file {path!r} is not UTF-8 text (byte {error.start})") from None
        except OSError as error:
            raise ConfigError(f"config file {path!r} cannot be read: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path!r} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping of keys")
        for key, value in data.items():
            apply_key(config, [str(key)], value, str(key))
    for text in overrides:
        key, value = parse_override(text)
        apply_key(config, key.split("."), value, key)
    if hasattr(config, "validate"):
        config.validate()
    return config


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def to_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
