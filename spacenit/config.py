"""Typed configs: dataclasses that round-trip through dicts and YAML, with dotted overrides.

    cfg = PretrainConfig.from_yaml("nano.yaml")
    cfg = apply_overrides(cfg, ["train.lr=2e-4", "model.depth=2"])
    cfg.to_yaml("resolved.yaml")

YAML is always read with `yaml.safe_load`. Overrides are parsed as YAML
scalars, so `train.lr=2e-4` is a float and `model.qk_norm=true` a bool; the
type is then checked against the field's annotation.

Values are then checked against the config class's `RULES`, a table of
`Rule`s by dotted key (`"train.lr": positive()`), in the one place every
config goes through when it is loaded (`from_dict`, hence `from_yaml` and
the overrides too): a value that breaks a rule fails with one line naming the
key and what is allowed, before any object is built from it. Checks across
fields belong in the class's `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that does not fit the config's fields."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a config value must be: `allowed` says it in words (for the error), `test` checks it."""

    allowed: str
    test: Callable[[Any], bool]

    def check(self, key: str, value: Any) -> None:
        if not self.test(value):
            raise ConfigError(f"{key}={_shown(value)} is not allowed; {key} must be {self.allowed}")


def at_least(low: int) -> Rule:
    """An integer >= `low`."""
    return Rule(f"an integer >= {low}", lambda v: v >= low)


def positive() -> Rule:
    """A finite number > 0."""
    return Rule("a finite number > 0", lambda v: math.isfinite(v) and v > 0)


def non_negative() -> Rule:
    """A finite number >= 0."""
    return Rule("a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


def fraction(*, closed_high: bool = True) -> Rule:
    """A number in [0, 1], or [0, 1) with `closed_high=False`."""
    if closed_high:
        return Rule("a number in [0, 1]", lambda v: 0 <= v <= 1)
    return Rule("a number in [0, 1)", lambda v: 0 <= v < 1)


def one_of(*choices: Any) -> Rule:
    return Rule(f"one of {', '.join(map(repr, choices))}", lambda v: v in choices)


def optional(rule: Rule) -> Rule:
    """None, or a value that passes `rule`."""
    return Rule(f"null or {rule.allowed}", lambda v: v is None or rule.test(v))


def pairs_of(rule: Rule, length: int = 2) -> Rule:
    """A list of exactly `length` values, each passing `rule` (e.g. Adam's two betas)."""
    return Rule(f"a list of {length} values, each {rule.allowed}",
                lambda v: len(v) == length and all(rule.test(x) for x in v))  # fmt: skip


def names() -> Rule:
    """Null, or a non-empty list of distinct names."""
    return Rule("null or a non-empty list of distinct names", lambda v: v is None or (len(v) > 0 and len(set(v)) == len(v)))


def _shown(value: Any) -> str:
    """`value` as it would be written in YAML (`[0.9]`, `null`), but `nan` and `inf` as typed."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("...\n").strip()


class Config:
    """Mixin for config dataclasses.

    `RULES` maps dotted keys (relative to this class, e.g. "train.lr") to the
    `Rule` their value must pass whenever the config is loaded.
    """

    RULES: ClassVar[Mapping[str, Rule]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        return _build(cls, data or {}, cls.__name__)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls: type[T], path: str | Path) -> T:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        with path.open() as f:  # a file object, so that syntax errors name the file, not "<unicode string>"
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path} is not valid YAML: {_one_line(e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
        return cls.from_dict(data)  # type: ignore[attr-defined]


def _one_line(error: yaml.YAMLError) -> str:
    """A YAML error as one line: what is wrong, and the line and column (1-based) where."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _build(cls: type, data: dict[str, Any], where: str, rules: Mapping[str, Rule] | None = None,
           key: str = "") -> Any:  # fmt: skip
    """`cls` from `data`, each value coerced to its field's type and checked against `rules`
    (the class's own RULES and those a containing config has for it) before it is used.

    `where` names the section in messages about keys; `key` is its dotted key ("" at the root).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    rules = {**getattr(cls, "RULES", {}), **(rules or {})}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        inner = {k.removeprefix(f"{name}."): r for k, r in rules.items() if k.startswith(f"{name}.")}
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}", inner, f"{key}{name}")
        if name in rules:
            rules[name].check(f"{key}{name}", kwargs[name])
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a check across fields in the class's __post_init__
        raise ConfigError(f"{key.rstrip('.') or where}: {e}") from None


def _coerce(tp: Any, value: Any, where: str, rules: Mapping[str, Rule] | None = None, key: str = "") -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _build(tp, value, where, rules, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        candidates = [arg for arg in args if arg is not type(None)]
        if len(candidates) == 1:  # X | None: X's own error says more than "does not fit"
            return _coerce(candidates[0], value, where, rules, key)
        for arg in candidates:
            try:
                return _coerce(arg, value, where, rules, key)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "2e-4" (no dot) as a string; it is plainly a float.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {value!r}") from None
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def apply_overrides(cfg: T, overrides: list[str] | tuple[str, ...]) -> T:
    """Return a copy of `cfg` with `a.b.c=value` overrides applied."""
    data = cfg.to_dict()  # type: ignore[attr-defined]
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"override {item!r}: no config section {part!r}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"override {item!r}: no config key {key!r}")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: {raw!r} is not a YAML value ({_one_line(e)})") from None
    return type(cfg).from_dict(data)  # type: ignore[attr-defined]
