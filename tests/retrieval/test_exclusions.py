"""Per-query exclusions: their inputs are checked."""

from __future__ import annotations

import numpy as np
import pytest

from embedlab.retrieval.exclusions import make_exclusions


def test_exclusions_validate_their_inputs() -> None:
    with pytest.raises(ValueError, match="gallery to be the query set"):
        make_exclusions(3, 4, exclude_self=True)
    with pytest.raises(ValueError, match="both query_groups and gallery_groups"):
        make_exclusions(3, 4, query_groups=np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"query_groups must be a 1-D.*\(3, 1\)"):
        make_exclusions(3, 4, query_groups=np.zeros((3, 1), dtype=int), gallery_groups=np.zeros(4, dtype=int))
