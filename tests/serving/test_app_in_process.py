"""The app in process (its lifespan running, no socket): the 429 beyond the decode budget, which a
burst over a real socket cannot produce on cue, and the limits it is configured with."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image
from starlette.testclient import TestClient

from embedlab.embeddings.encoder import EmbeddingPipeline
from embedlab.index.search import Searcher
from embedlab.serving.app import ServerLimits, create_app
from embedlab.training.run_dir import load_run


@pytest.fixture(scope="module")
def client(deployment) -> Iterator[TestClient]:
    """A budget of 10,000 pixels, the largest image allowed."""
    pipeline = EmbeddingPipeline([load_run(deployment.run_dir).embedder], [1.0])
    searcher = Searcher(deployment.built, pipeline, deployment.index_dir)
    app = create_app(searcher, ServerLimits(max_pixels=10_000, decode_budget_pixels=10_000))
    with TestClient(app, base_url="http://127.0.0.1:8000") as test_client:
        yield test_client


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (40, 200, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_decode_budget_below_the_largest_image_is_refused() -> None:
    with pytest.raises(ValueError, match="raise --decode-budget-megapixels or lower --max-megapixels"):
        ServerLimits(max_pixels=64_000_000, decode_budget_pixels=50_000_000)


def test_an_upload_beyond_the_decode_budget_is_a_429_with_retry_after(client: TestClient) -> None:
    budget = client.app.state.decode_budget  # type: ignore[attr-defined]
    budget.reserve(10_000 - 24 * 24 + 1)  # other uploads hold all but 575 pixels: a 24 x 24 needs 576
    try:
        refused = client.post("/search", files={"file": ("q.png", _png(24))})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "the decode budget is 0.0 megapixels at once" in refused.json()["detail"]
        smaller = client.post("/search", files={"file": ("q.png", _png(23))})
        assert smaller.status_code == 200
    finally:
        budget.release(10_000 - 24 * 24 + 1)
    assert client.post("/search", files={"file": ("q.png", _png(24))}).status_code == 200
    assert budget.in_use == 0
