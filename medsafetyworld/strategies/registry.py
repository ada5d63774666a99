"""Strategies register by decorator; third parties add theirs through the entry point group
`medsafetyworld.strategies` (lm-evaluation-harness style), without editing this package.

A strategy is asked for by a *spec*: a registered name, optionally with parameters, and `+` to
compose, applied left to right:

    tag                                  tag(p=0.1)
    rewrite+refusal+moral+tag            noisy(recall=0.9,precision=0.9)+filter
    curriculum(start=0.2,inner=reflect)  curriculum(start=0.6,inner=rewrite+tag)

Recipes are named specs (`safety_pretraining`).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from importlib.metadata import entry_points

from medsafetyworld.errors import ConfigError, one_line, shown
from medsafetyworld.strategies.base import Strategy

ENTRY_POINT_GROUP = "medsafetyworld.strategies"
BUILTIN = "medsafetyworld.baselines"
_REGISTRY: dict[str, type[Strategy]] = {}
_RECIPES: dict[str, str] = {}
_loaded = False
_NAME = re.compile(r"([A-Za-z_][\w-]*)\s*(?:\((.*)\))?", re.S)


def register_strategy(name: str):
    """Class decorator: `@register_strategy("filter")`."""

    def wrap(cls: type[Strategy]) -> type[Strategy]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(
                f"strategy {name!r} is registered twice ({_REGISTRY[name].__module__} and {cls.__module__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def register_recipe(name: str, spec: str) -> None:
    """A named spec, e.g. `register_recipe("safety_pretraining", "rewrite(share=0.25)+...")`."""
    if name in _REGISTRY or (name in _RECIPES and _RECIPES[name] != spec):
        raise ConfigError(f"strategy {name!r} is registered twice")
    _RECIPES[name] = spec


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    # The built-in strategies (medsafetyworld.baselines, the repository's baselines/ folder) are
    # one entry point of the group like any plugin; a source tree used without installing has no
    # entry points, so they are imported directly then.
    found = list(entry_points(group=ENTRY_POINT_GROUP))
    if not any(ep.value == BUILTIN for ep in found):
        importlib.import_module(BUILTIN)
    for ep in found:
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not break the benchmark
            raise ConfigError(f"strategy plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc


def available_strategies() -> list[str]:
    """Registered strategy names and recipes."""
    _load()
    return sorted([*_REGISTRY, *_RECIPES])


def recipes() -> dict[str, str]:
    _load()
    return dict(_RECIPES)


# Bounds on a spec, checked before it is parsed: a spec names a folder of a run, and a recursive
# parse of an absurd one must end in a clear error rather than a RecursionError.
MAX_SPEC_CHARS = 200
MAX_SPEC_DEPTH = 8


def check_spec(text: str, what: str = "strategy") -> str:
    """`text` stripped, or ConfigError if it is longer than MAX_SPEC_CHARS, nests parentheses
    deeper than MAX_SPEC_DEPTH or does not balance them."""
    if not isinstance(text, str):
        raise ConfigError(f"a {what} spec must be text, got {shown(text)}")
    text = text.strip()
    if len(text) > MAX_SPEC_CHARS:
        raise ConfigError(f"{what} spec of {len(text)} characters is too long (at most {MAX_SPEC_CHARS}): "
                          f"{shown(text)}")
    depth = deepest = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        deepest = max(deepest, depth)
        if depth < 0:
            raise ConfigError(f"unbalanced ')' in {what} spec {shown(text)}")
    if depth:
        raise ConfigError(f"unbalanced '(' in {what} spec {shown(text)}")
    if deepest > MAX_SPEC_DEPTH:
        raise ConfigError(f"{what} spec {shown(text)} nests {deepest} levels of parentheses (at most {MAX_SPEC_DEPTH})")
    return text


def split_top(text: str, sep: str) -> list[str]:
    """`text` split at each `sep` outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            raise ConfigError(f"unbalanced ')' in strategy spec {shown(text)}")
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ConfigError(f"unbalanced '(' in strategy spec {shown(text)}")
    return [*parts, text[start:]]


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text  # a name, or a strategy spec such as `inner=rewrite+tag`


def parse_call(spec: str, what: str = "strategy") -> tuple[str, dict]:
    """`name(key=value,...)` -> (name, {key: value}); values are Python literals or, failing
    that, text (a name or a nested spec)."""
    spec = check_spec(spec, what)
    match = _NAME.fullmatch(spec)
    if not match:
        raise ConfigError(f"cannot read {what} spec {shown(spec)}; write name or name(key=value,...)")
    name, args = match.groups()
    kwargs = {}
    for item in split_top(args, ",") if args and args.strip() else []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{what} {name!r}: {shown(item.strip())} is not key=value")
        if key.strip() in kwargs:
            raise ConfigError(f"{what} {name!r}: {key.strip()} is given twice")
        kwargs[key.strip()] = _value(value.strip())
    return name, kwargs


def get_strategy(spec: str) -> Strategy:
    """A strategy instance from a spec: `name`, `name(key=value,...)`, or `a+b+...` (in order).
    ConfigError for a spec that is unknown, malformed, longer than MAX_SPEC_CHARS or nested deeper
    than MAX_SPEC_DEPTH, or whose label would be too long to name a folder."""
    from medsafetyworld.storage import path_safe

    spec = check_spec(spec)
    strategy = _get_strategy(spec)
    if len(path_safe(strategy.label)) > MAX_SPEC_CHARS:
        raise ConfigError(f"strategy {shown(strategy.label)} has a label too long to name a folder "
                          f"(at most {MAX_SPEC_CHARS} characters); write its parameters shorter")
    return strategy


def _get_strategy(spec: str) -> Strategy:
    from medsafetyworld.strategies.compose import Chain

    _load()
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty strategy spec; pass a name such as raw, filter or reflect")
    terms = split_top(spec, "+")
    if len(terms) > 1:
        if not all(t.strip() for t in terms):
            raise ConfigError(f"strategy spec {shown(spec)} has an empty term; write a+b, e.g. rewrite+tag")
        return Chain([_get_strategy(t) for t in terms])
    name, kwargs = parse_call(spec)
    if name in _RECIPES:
        if kwargs:
            raise ConfigError(f"recipe {name!r} takes no parameters; it is {_RECIPES[name]}")
        return Chain([_get_strategy(t) for t in split_top(_RECIPES[name], "+")], recipe=name)
    return build_named(_REGISTRY, name, kwargs, "strategy", available_strategies())


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parameters(cls: type) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters of `cls(...)`, or None where they cannot be told (no signature, **kwargs)."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return {k: p for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_kwargs(named: dict[str, inspect.Parameter], name: str, kwargs: dict, what: str) -> None:
    """Names, parameters without a default, and kinds of value (from the defaults) of `cls(**kwargs)`."""
    takes = ", ".join(named) or "no parameters"
    if unknown := [k for k in kwargs if k not in named]:
        raise ConfigError(f"{what} {name!r} does not take {', '.join(unknown)}; it takes {takes}")
    _check_required(named, name, kwargs, what, [k for k, p in named.items() if p.default is p.empty])
    for key, value in kwargs.items():
        default = named[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{what} {name!r}: {key} must be True or False, got {shown(value)}")
        elif _number(default) and not _number(value):
            raise ConfigError(f"{what} {name!r}: {key} must be a number, got {shown(value)}")
        elif isinstance(default, int) and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{what} {name!r}: {key} must be a whole number, got {shown(value)}")


def _check_required(named: dict[str, inspect.Parameter] | None, name: str, kwargs: dict, what: str,
                    required) -> None:
    if missing := [k for k in dict.fromkeys(required) if k not in kwargs]:
        takes = f" (it takes {', '.join(named) or 'no parameters'})" if named is not None else ""
        raise ConfigError(f"{what} {name!r} needs {', '.join(f'{k}=...' for k in missing)}{takes}")


def build_named(registry: dict[str, type], name: str, kwargs: dict, what: str, available: list[str]):
    """`registry[name](**kwargs)`, with one clear ConfigError for an unknown name, an unknown or
    missing parameter, or a value of the wrong kind. A parameter the class lists in
    `required_params` must be given although it has a default (checked after the class has
    checked the values given, so that a bad value is named first)."""
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; available: {', '.join(available)}")
    cls = registry[name]
    named = _parameters(cls)
    if named is not None:
        _check_kwargs(named, name, kwargs, what)
    try:
        made = cls(**kwargs)
    except (TypeError, ValueError, OverflowError) as exc:  # a value the class could not use
        given = ",".join(f"{k}={shown(v)}" for k, v in kwargs.items())
        raise ConfigError(f"{what} {name}({given}): {one_line(exc)}") from exc
    _check_required(named, name, kwargs, what, getattr(cls, "required_params", ()))
    return made
