"""One registry mechanism for every named component (losses, miners, pooling, heads, ...).

A registry maps a name to a class. Registering a name twice is an error; looking up an unknown name
lists the valid ones; building with an argument the class does not take is an error that names it.
"""

from __future__ import annotations

import difflib
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def close_matches_hint(name: str, choices: list[str]) -> str:
    """A 'did you mean' sentence for an unknown name, empty when nothing is close."""
    matches = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


def _own_arguments(function: Callable[..., Any]) -> tuple[set[str], bool]:
    parameters = inspect.signature(function).parameters.values()
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names - {"self"}, any(p.kind is p.VAR_KEYWORD for p in parameters)


def accepted_arguments(factory: Callable[..., Any]) -> tuple[set[str], bool]:
    """The keyword arguments a class or function takes, and whether it takes any keyword at all.

    A class whose __init__ passes **kwargs up (pytorch-metric-learning's losses hand `reducer`,
    `distance`, ... to their base classes) accepts what its bases' __init__ methods name, up to the
    first one without **kwargs or torch's Module, which would reject the rest anyway.
    """
    if not inspect.isclass(factory):
        return _own_arguments(factory)
    names: set[str] = set()
    for cls in factory.__mro__:
        if "__init__" not in vars(cls) or cls in (object, torch_module_class()):
            continue
        own, passes_on = _own_arguments(vars(cls)["__init__"])
        names |= own
        if not passes_on:
            break
    return names, False


def torch_module_class() -> type | None:
    """torch.nn.Module when torch is loaded: the end of every loss's __init__ chain. Never imports torch
    (a class deriving from it implies it is loaded), so torch-free registries stay torch-free."""
    nn = sys.modules.get("torch.nn")
    return None if nn is None else nn.Module


def check_arguments(factory: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> None:
    """Raise a TypeError naming every keyword that `factory` does not accept."""
    names, takes_var_keyword = accepted_arguments(factory)
    if takes_var_keyword:
        return
    unknown = sorted(set(kwargs) - names)
    if unknown:
        valid = ", ".join(sorted(names)) or "(none)"
        hints = "".join(close_matches_hint(u, sorted(names)) for u in unknown)
        raise TypeError(f"{what} does not take {', '.join(map(repr, unknown))}; it takes: {valid}.{hints}")


class Registry(Generic[T]):
    """A name -> class table for one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, cls: type[T] | None = None, *, name: str | None = None) -> Any:
        """Register a class under its own name (or `name`); usable as a decorator."""

        def add(target: type[T]) -> type[T]:
            key = name or target.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered by {self._entries[key]!r}")
            self._entries[key] = target
            return target

        return add(cls) if cls is not None else add

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}.{close_matches_hint(name, self.names())} "
                f"Valid names: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, **kwargs: Any) -> T:
        cls = self.get(name)
        check_arguments(cls, kwargs, f"{self.kind} {name!r}")
        return cls(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
