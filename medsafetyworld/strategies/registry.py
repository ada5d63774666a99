"""Strategies register by decorator; third parties add theirs through the entry point group
`medsafetyworld.strategies` (lm-evaluation-harness style), without editing this package."""

from __future__ import annotations

from importlib.metadata import entry_points

from medsafetyworld.errors import ConfigError
from medsafetyworld.strategies.base import Strategy

ENTRY_POINT_GROUP = "medsafetyworld.strategies"
_REGISTRY: dict[str, type[Strategy]] = {}
_loaded = False


def register_strategy(name: str):
    """Class decorator: `@register_strategy("filter")`."""

    def wrap(cls: type[Strategy]) -> type[Strategy]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"strategy {name!r} is registered twice ({_REGISTRY[name].__module__} and {cls.__module__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


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
    _load()
    return sorted(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    """A strategy instance by registered name."""
    _load()
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; available: {', '.join(available_strategies())}"
        ) from None
