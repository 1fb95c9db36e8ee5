"""Which requests the server answers: Host names of the bound address (DNS rebinding), the page's own
origin or allowed ones (CORS headers, in process; the server process is checked in test_app.py)."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator

import pytest
from PIL import Image
from starlette.testclient import TestClient

from embedlab.embeddings.encoder import EmbeddingPipeline
from embedlab.index.search import Searcher
from embedlab.serving.access import AccessPolicy, split_host
from embedlab.serving.app import create_app
from embedlab.training.run_dir import load_run

LOOPBACK = AccessPolicy("127.0.0.1", 8000)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("LocalHost:8000", ("localhost", 8000)),
        ("[::1]:8000", ("::1", 8000)),
        ("photos.lan", ("photos.lan", 80)),
        ("[::1]", ("::1", 80)),
        ("::1:8000", None),
        ("[::1", None),
        ("[evil]:80", None),
        ("localhost:8000@evil.example", None),
        ("evil.example/x", None),
        ("localhost:99999", None),
        ("localhost:", ("localhost", 80)),
        ("", None),
    ],
)
def test_host_headers_are_split_into_name_and_port(value: str, expected: tuple[str, int] | None) -> None:
    assert split_host(value) == expected


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST:8000", "[::1]:8000"])
def test_a_loopback_server_answers_to_its_loopback_names(host: str) -> None:
    assert LOOPBACK.host_allowed(host)


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:8000",  # a rebound name, at the right port
        "evil.example",
        "127.0.0.1:8001",  # another port
        "127.0.0.1",  # port 80
        "10.0.0.5:8000",  # an address the server is not bound to
        "localhost.evil.example:8000",
        "localhost:8000@evil.example",
        "",
    ],
)
def test_a_loopback_server_refuses_other_names(host: str) -> None:
    assert not LOOPBACK.host_allowed(host)


def test_a_server_bound_to_every_interface_answers_to_addresses_and_the_machines_names() -> None:
    policy = AccessPolicy("0.0.0.0", 8000, allow_hosts=("photos.lan", "proxy.lan:443"))
    for host in ("192.168.1.5:8000", "[fe80::1]:8000", "localhost:8000", f"{socket.gethostname()}:8000"):
        assert policy.host_allowed(host), host
    assert policy.host_allowed("photos.lan:9999") and policy.host_allowed("photos.lan")
    assert policy.host_allowed("proxy.lan:443") and not policy.host_allowed("proxy.lan:8000")
    for host in ("evil.example:8000", "192.168.1.5:8001"):
        assert not policy.host_allowed(host), host
    assert "any IP address:8000" in policy.bound_hosts


def test_a_server_bound_to_one_address_answers_to_it_and_not_to_loopback_addresses() -> None:
    policy = AccessPolicy("192.168.1.5", 8000)
    assert policy.host_allowed("192.168.1.5:8000")
    assert not policy.host_allowed("192.168.1.6:8000") and not policy.host_allowed("127.0.0.1:8000")


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),  # the page at / calling its own server
        ("http://LOCALHOST:8000", "localhost:8000", True),
        ("http://[::1]:8000", "[::1]:8000", True),
        ("http://localhost:3000", "127.0.0.1:8000", True),  # --allow-origin
        ("http://localhost:8000", "127.0.0.1:8000", False),  # another origin, even if the same machine
        ("http://localhost:3001", "127.0.0.1:8000", False),
        ("https://localhost:3000", "127.0.0.1:8000", False),
        ("http://evil.example", "127.0.0.1:8000", False),
        ("null", "127.0.0.1:8000", False),  # a sandboxed frame or a file:// page
        ("http://127.0.0.1:8000/page", "127.0.0.1:8000", False),
    ],
)
def test_origins_are_the_servers_own_or_allowed(origin: str, host: str, allowed: bool) -> None:
    policy = AccessPolicy("127.0.0.1", 8000, allow_origins=("http://localhost:3000",))
    assert policy.origin_allowed(origin, host) is allowed


def test_allowed_origins_are_kept_as_browsers_write_them() -> None:
    policy = AccessPolicy(
        allow_origins=("HTTP://LocalHost:3000", "http://photos.lan:80", "https://[::1]:443")
    )
    assert policy.allow_origins == ("http://localhost:3000", "http://photos.lan", "https://[::1]")
    assert policy.origin_allowed("http://photos.lan", "127.0.0.1:8000")
    assert policy.origin_allowed("https://[::1]", "127.0.0.1:8000")


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"allow_origins": ("localhost:3000",)}, "--allow-origin 'localhost:3000' is not an origin"),
        ({"allow_origins": ("null",)}, "--allow-origin 'null' is not an origin"),
        ({"allow_origins": ("http://localhost:3000/",)}, "no path"),
        ({"allow_hosts": ("http://photos.lan",)}, "--allow-host 'http://photos.lan' is not a host name"),
        ({"allow_hosts": ("photos lan",)}, "is not a host name"),
    ],
)
def test_malformed_allowed_names_are_refused(options: dict[str, tuple[str, ...]], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        AccessPolicy(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(deployment) -> Iterator[TestClient]:
    """The app in process (its lifespan running), bound as 127.0.0.1:8000, one page origin allowed."""
    pipeline = EmbeddingPipeline([load_run(deployment.run_dir).embedder], [1.0])
    searcher = Searcher(deployment.built, pipeline, deployment.index_dir)
    access = AccessPolicy("127.0.0.1", 8000, allow_origins=("http://localhost:3000",))
    app = create_app(searcher, access=access)
    with TestClient(app, base_url="http://127.0.0.1:8000") as test_client:
        yield test_client


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (40, 200, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_allowed_origin_gets_cors_headers_and_its_preflight(client: TestClient) -> None:
    origin = {"Origin": "http://localhost:3000"}
    response = client.post("/search", files={"file": ("q.png", _png(24))}, headers=origin)
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == origin["Origin"]
    preflight = client.options("/search", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["access-control-allow-methods"]


def test_a_foreign_origin_gets_403_and_no_cors_headers(client: TestClient) -> None:
    for method in ("GET", "POST", "OPTIONS"):
        headers = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        response = client.request(method, "/healthz", headers=headers)
        assert response.status_code == 403, method
        assert "'http://evil.example' are refused" in response.json()["detail"]
        assert not any(name.startswith("access-control-") for name in response.headers)
