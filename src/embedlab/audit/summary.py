"""The summary of an audit: identities and images per split, images per identity, singletons."""

from __future__ import annotations

from typing import Any

import numpy as np

from embedlab.audit.items import TRAIN, VALIDATION, AuditItems

#: Upper edges of the images-per-identity histogram's bins (the last bin takes everything above).
HISTOGRAM_EDGES = (1, 2, 3, 4, 5, 10, 20, 50, 100)


def images_per_identity_histogram(counts: np.ndarray) -> list[dict[str, Any]]:
    """[{"images": "1", "identities": n}, {"images": "2", ...}, ..., {"images": "6-10", ...},
    {"images": ">100", ...}] for identities of `counts` images each."""
    rows, low = [], 1
    for edge in HISTOGRAM_EDGES:
        span = str(edge) if low == edge else f"{low}-{edge}"
        rows.append({"images": span, "identities": int(((counts >= low) & (counts <= edge)).sum())})
        low = edge + 1
    rows.append(
        {"images": f">{HISTOGRAM_EDGES[-1]}", "identities": int((counts > HISTOGRAM_EDGES[-1]).sum())}
    )
    return rows


def split_summary(items: AuditItems) -> dict[str, Any]:
    """Per split and overall: images, identities, singletons (identities of one image); the histogram of
    images per identity over the whole collection; identities in both splits; queries and gallery
    items."""
    summary: dict[str, Any] = {}
    parts = {
        "all": np.ones(len(items), bool),
        TRAIN: items.split == TRAIN,
        VALIDATION: items.split == VALIDATION,
    }
    for name, mask in parts.items():
        counts = np.bincount(items.labels[mask], minlength=len(items.label_names))
        present = counts[counts > 0]
        summary[name] = {
            "images": int(mask.sum()),
            "identities": int(present.size),
            "singletons": int((present == 1).sum()),
        }
    counts = np.bincount(items.labels, minlength=len(items.label_names))
    summary["images_per_identity"] = images_per_identity_histogram(counts[counts > 0])
    train_ids = set(np.unique(items.labels[items.split == TRAIN]).tolist())
    validation_ids = set(np.unique(items.labels[items.split == VALIDATION]).tolist())
    summary["identities_in_both_splits"] = len(train_ids & validation_ids)
    summary["queries"] = int(items.is_query.sum())
    summary["gallery_items"] = int(items.is_gallery.sum())
    summary["validation_searches"] = "the training images" if items.validation_searches_train else "itself"
    return summary
