"""faiss indexes moved to a GPU, where faiss was built with GPU support (faiss-gpu; faiss-cpu is not)."""

from __future__ import annotations

from typing import Any


def faiss_has_gpu() -> bool:
    """Whether faiss can search on a GPU: built with GPU support and seeing at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def index_on_gpu(index: Any, device: str) -> Any:
    """A copy of a CPU faiss index on the GPU `device` ("cuda" or "cuda:N"), search parameters (nprobe)
    included. faiss keeps a reference to its GPU resources in the returned index."""
    import faiss

    number = int(device.partition(":")[2] or 0)
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), number, index)
