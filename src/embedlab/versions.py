"""The versions of the packages behind a run or an index, recorded beside what they made."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence

RECORDED_PACKAGES = ("embedlab", "torch", "timm", "pytorch-metric-learning", "lightning", "faiss-cpu")


def package_versions(names: Sequence[str] = RECORDED_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
