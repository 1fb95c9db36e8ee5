"""Which requests the server answers: the Host it is named by and the Origin of the page that asks.

DNS rebinding: a page on evil.example can have its name re-resolved to 127.0.0.1, and then the
browser sends that page's requests to the local server as if they were same-origin, with
`Host: evil.example:8000`. So a request is answered only when its Host header is a name of the
address the server is bound to:

- bound to loopback (127.0.0.1, ::1, localhost): 127.0.0.1, localhost and [::1], at the bound port;
- bound to every interface (0.0.0.0, ::): those, the machine's host names and any IP address
  literal (a rebound page always sends its own name, never an address), at the bound port;
- bound to one other address: that address and the machine's host names, at the bound port;
- and every name given with `--allow-host NAME` (at any port) or `NAME:PORT` (at that port), for a
  reverse proxy or a name in /etc/hosts.

Any other Host gets 400. Then a request that carries an Origin header (browsers send one with every
cross-origin request and every POST) is answered only when the origin is the server's own (its
host:port is the request's Host) or one given with `--allow-origin`; any other gets 403 and no CORS
headers. Allowed foreign origins get CORS headers (Starlette's CORSMiddleware, preflight included).
Requests without an Origin (curl, scripts, the page's own GETs) are not affected.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
DEFAULT_PORTS = {"http": 80, "https": 443}


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def split_host(value: str, default_port: int = 80) -> tuple[str, int] | None:
    """A Host header ("name", "name:port", "[v6]:port") -> (lower-case name, port); None if malformed."""
    value = value.strip().lower()
    if not value or any(c in value for c in "/@?#\\ "):
        return None
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or _ip(name) is None or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        name, _, port_text = value.partition(":")
    elif ":" in value:
        return None  # an IPv6 address without brackets
    else:
        name, port_text = value, ""
    if not name:
        return None
    if not port_text:
        return name, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """An Origin ("scheme://host[:port]") -> (scheme, host, port); None if it is not such an origin."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in DEFAULT_PORTS or parts.path or parts.query or parts.fragment:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    host = split_host(parts.netloc, DEFAULT_PORTS[parts.scheme])
    return None if host is None else (parts.scheme, *host)


def _serialize_origin(key: tuple[str, str, int]) -> str:
    """(scheme, host, port) -> the origin as a browser sends it: "http://[::1]:8000", "http://a.lan"."""
    scheme, name, port = key
    host = f"[{name}]" if ":" in name else name
    return f"{scheme}://{host}" if port == DEFAULT_PORTS[scheme] else f"{scheme}://{host}:{port}"


def _machine_names() -> set[str]:
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    return {name for name in names if name}


@dataclass(frozen=True)
class AccessPolicy:
    """The bound address and port, and the names and origins the user allows besides.

    allow_hosts: "name" (any port) or "name:port"; allow_origins: "scheme://host[:port]" exactly as
    a browser sends it (http://localhost:3000). Malformed values raise ValueError naming them.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    allow_hosts: tuple[str, ...] = ()
    allow_origins: tuple[str, ...] = ()
    _names: frozenset[str] = field(init=False, repr=False, compare=False)
    _any_address: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        origins = []
        for value in self.allow_origins:
            key = _origin_key(value)
            if key is None:
                raise ValueError(
                    f"--allow-origin {value!r} is not an origin: give scheme://host[:port] with no path, "
                    "such as http://localhost:3000"
                )
            origins.append(_serialize_origin(key))
        # As browsers write them (lower case, no default port), for CORSMiddleware's exact match.
        object.__setattr__(self, "allow_origins", tuple(origins))
        for value in self.allow_hosts:
            if split_host(value) is None:
                raise ValueError(
                    f"--allow-host {value!r} is not a host name: give a name such as photos.lan or "
                    "photos.lan:8000"
                )
        bound = self.host.strip("[]").lower()
        address = _ip(bound)
        if bound in LOOPBACK_NAMES or (address is not None and address.is_loopback):
            names = {*LOOPBACK_NAMES, bound}
            any_address = False
        elif bound in WILDCARD_ADDRESSES:
            names = {*LOOPBACK_NAMES, *_machine_names()}
            any_address = True
        else:
            names = {bound, *_machine_names()}
            any_address = False
        object.__setattr__(self, "_names", frozenset(names))
        object.__setattr__(self, "_any_address", any_address)

    @property
    def bound_hosts(self) -> list[str]:
        """The Host values of the bound address, as a client writes them (for messages)."""
        hosts = sorted(f"[{n}]:{self.port}" if ":" in n else f"{n}:{self.port}" for n in self._names)
        if self._any_address:
            hosts.append(f"any IP address:{self.port}")
        return hosts

    def host_allowed(self, value: str) -> bool:
        """Whether a request's Host header names this server (see the module docstring)."""
        parsed = split_host(value)
        if parsed is None:
            return False
        name, port = parsed
        for allowed in self.allow_hosts:
            allowed_name, allowed_port = split_host(allowed, default_port=-1) or ("", 0)
            if name == allowed_name and allowed_port in (-1, port):
                return True
        if self.port and port != self.port:
            return False
        return name in self._names or (self._any_address and _ip(name) is not None)

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Whether a request from a page of `origin` to this server, named `host`, is answered."""
        key = _origin_key(origin)
        if key is None:  # "null" (a sandboxed frame, a file:// page) or malformed
            return False
        if _serialize_origin(key) in self.allow_origins:
            return True
        scheme, name, port = key
        return split_host(host, DEFAULT_PORTS[scheme]) == (name, port)


class HostOriginGuard:
    """ASGI middleware: 400 for a Host that does not name the server, 403 for a foreign Origin, both
    answered before the body is read (see the module docstring)."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; the app has no websocket routes
            await self.app(scope, receive, send)
            return
        headers = _headers(scope["headers"], (b"host", b"origin"))
        host = headers.get(b"host", "")
        if not self.policy.host_allowed(host):
            detail = (
                f"the Host header {host!r} does not name this server: it answers to "
                f"{', '.join(self.policy.bound_hosts)}, and names given with --allow-host "
                "(a check against DNS rebinding)"
            )
            await _refuse(send, 400, detail)
            return
        origin = headers.get(b"origin")
        if origin is not None and not self.policy.origin_allowed(origin, host):
            detail = (
                f"requests from pages of {origin!r} are refused: the server answers pages of its own "
                "origin, and origins given with --allow-origin"
            )
            await _refuse(send, 403, detail)
            return
        await self.app(scope, receive, send)


def _headers(raw: Iterable[tuple[bytes, bytes]], wanted: tuple[bytes, ...]) -> dict[bytes, str]:
    """The first value of each wanted header; a repeated Host counts as its first value."""
    found: dict[bytes, str] = {}
    for key, value in raw:
        key = key.lower()
        if key in wanted and key not in found:
            found[key] = value.decode("latin-1")
    return found


async def _refuse(send: Send, status: int, detail: str) -> None:
    """A JSON {"detail"} response, with no CORS headers."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
