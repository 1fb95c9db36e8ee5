"""embedlab's own networks in timm's model registry, so `timm.create_model` builds every backbone.

timm's `register_model` overwrites a name that is taken (with a warning); here taking a timm name is
an error, and registering the same entry point again (its module imported anew) replaces it quietly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import timm
from timm.models import model_entrypoint, register_model

EntryPoint = TypeVar("EntryPoint", bound=Callable[..., Any])


def register_backbone(entry_point: EntryPoint) -> EntryPoint:
    """Register `entry_point` with timm under its function name; a decorator, like timm's."""
    name = entry_point.__name__
    if not timm.is_model(name):
        return register_model(entry_point)
    existing = model_entrypoint(name)
    where = (entry_point.__module__, entry_point.__qualname__)
    if (existing.__module__, existing.__qualname__) != where:
        raise ValueError(
            f"timm already has a model named {name!r} ({existing.__module__}.{existing.__qualname__}); "
            f"embedlab's backbone {'.'.join(where)} must take another name"
        )
    with warnings.catch_warnings():
        # the same entry point again, from a re-imported module: timm's overwrite warning does not apply
        warnings.filterwarnings("ignore", message=f"Overwriting {name} in registry")
        return register_model(entry_point)
