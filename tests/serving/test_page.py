"""The search page in a real headless browser: Debian's Chromium driven by Playwright."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def page(server, chromium) -> Iterator[object]:
    tab = chromium.new_page(viewport={"width": 1200, "height": 800})
    yield tab
    tab.close()


def _open(page, server) -> None:
    page.goto(server.url + "/")
    playwright_api.expect(page.locator("#index-info")).to_contain_text("36 gallery images")


def test_picking_an_image_shows_it_beside_its_top_k(page, server, deployment, tmp_path: Path) -> None:
    _open(page, server)
    page.set_input_files("#file-input", str(deployment.gallery / "whale_d" / "2.png"))
    cards = page.locator("#results .result-card")
    playwright_api.expect(cards).to_have_count(10)
    labels = cards.locator(".label").all_inner_texts()
    assert labels[:6] == ["whale_d"] * 6
    playwright_api.expect(cards.first.locator(".score")).to_have_text("similarity 1.000")
    playwright_api.expect(page.locator("#verdict")).to_have_text("Known identity: whale_d")
    assert page.locator("#query-preview").is_visible()
    # every thumbnail is the gallery image, loaded: its natural width is the file's
    widths = cards.locator("img").evaluate_all("images => images.map(i => i.complete && i.naturalWidth)")
    assert widths == [24] * 10
    shot = tmp_path / "search-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_dropping_a_new_identity_says_so(page, server, deployment) -> None:
    _open(page, server)
    image = deployment.new_identities / "whale_x" / "0.png"
    encoded = base64.b64encode(image.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """encoded => {
            const bytes = Uint8Array.from(atob(encoded), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "whale.png", {type: "image/png"}));
            return transfer;
        }""",
        encoded,
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    playwright_api.expect(page.locator("#verdict")).to_have_text(
        "New identity: no gallery image is similar enough."
    )
    playwright_api.expect(page.locator("#results .result-card")).to_have_count(10)


def test_a_rejected_upload_shows_the_servers_message(page, server, tmp_path: Path) -> None:
    _open(page, server)
    text = tmp_path / "notes.txt"
    text.write_text("not a photo\n")
    page.set_input_files("#file-input", str(text))
    playwright_api.expect(page.locator("#error")).to_contain_text("is not an image")
    playwright_api.expect(page.locator("#results .result-card")).to_have_count(0)
