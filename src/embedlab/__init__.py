"""embedlab: train, compare, evaluate and serve embedding models for image retrieval.

The Python API (docs/python-api.md): `train`, `load`, `evaluate` and `Index`, with the `Run` that
`train` returns and the `Model` that `load` returns. They are imported on first use, so that
`import embedlab` stays cheap and imports neither torch nor Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Index", "Model", "Run", "__version__", "evaluate", "load", "train"]

if TYPE_CHECKING:
    from embedlab.pipelines.api import Index, Model, Run, evaluate, load, train

_API = frozenset({"Index", "Model", "Run", "evaluate", "load", "train"})


def __getattr__(name: str) -> Any:
    if name in _API:
        from embedlab.pipelines import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'embedlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)
