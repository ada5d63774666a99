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
import re
from importlib.metadata import entry_points

from medsafetyworld.errors import ConfigError
from medsafetyworld.strategies.base import Strategy

ENTRY_POINT_GROUP = "medsafetyworld.strategies"
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
    import baselines  # noqa: F401  (registers the built-in strategies)

    for ep in entry_points(group=ENTRY_POINT_GROUP):
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


def split_top(text: str, sep: str) -> list[str]:
    """`text` split at each `sep` outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            raise ConfigError(f"unbalanced ')' in strategy spec {text!r}")
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ConfigError(f"unbalanced '(' in strategy spec {text!r}")
    return [*parts, text[start:]]


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a name, or a strategy spec such as `inner=rewrite+tag`


def parse_call(spec: str, what: str = "strategy") -> tuple[str, dict]:
    """`name(key=value,...)` -> (name, {key: value}); values are Python literals or, failing
    that, text (a name or a nested spec)."""
    match = _NAME.fullmatch(spec.strip())
    if not match:
        raise ConfigError(f"cannot read {what} spec {spec!r}; write name or name(key=value,...)")
    name, args = match.groups()
    kwargs = {}
    for item in split_top(args, ",") if args and args.strip() else []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{what} {name!r}: {item.strip()!r} is not key=value")
        kwargs[key.strip()] = _value(value.strip())
    return name, kwargs


def get_strategy(spec: str) -> Strategy:
    """A strategy instance from a spec: `name`, `name(key=value,...)`, or `a+b+...` (in order)."""
    from medsafetyworld.strategies.compose import Chain

    _load()
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty strategy spec; pass a name such as raw, filter or reflect")
    terms = split_top(spec, "+")
    if len(terms) > 1:
        return Chain([get_strategy(t) for t in terms])
    name, kwargs = parse_call(spec)
    if name in _RECIPES:
        if kwargs:
            raise ConfigError(f"recipe {name!r} takes no parameters; it is {_RECIPES[name]}")
        return Chain([get_strategy(t) for t in split_top(_RECIPES[name], "+")], recipe=name)
    return build_named(_REGISTRY, name, kwargs, "strategy", available_strategies())


def build_named(registry: dict[str, type], name: str, kwargs: dict, what: str, available: list[str]):
    """`registry[name](**kwargs)`, with one clear ConfigError for an unknown name or parameter."""
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; available: {', '.join(available)}")
    try:
        return registry[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{what} {name!r} does not take {sorted(kwargs)}: {exc}") from None
