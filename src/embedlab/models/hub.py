"""Before timm downloads pretrained weights: is their host reachable, and are they cached already?

huggingface_hub retries a request that cannot connect five times with a growing wait (about 47 s on a
machine without internet) before it raises, and it does so even when the weights are in its cache,
since it first asks the hub for a newer version. One TCP connection with a short timeout answers the
same question at once:

- host reachable: timm downloads (or revalidates its cache) as usual;
- host unreachable, weights cached: timm loads them with the hub in offline mode, without retries;
- host unreachable, nothing cached: `HubUnreachableError`, which the backbone factory turns into the error
  naming `model.pretrained` and `model.weights_path`.

Behind a proxy (HTTPS_PROXY, ALL_PROXY) a direct connection says nothing, so nothing is probed.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import timm

PROBE_TIMEOUT_SECONDS = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
#: What timm's load_state_dict_from_hf asks the hub for when the config names no file, in its order.
_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")


class HubUnreachableError(OSError):
    """The host of a model's pretrained weights cannot be reached and nothing is cached."""


def host_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds (DNS included)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _weights_host(hub_id: str | None, url: str | None) -> str | None:
    """The host timm would download from: the Hugging Face endpoint for a hub id, else the URL's."""
    if hub_id:
        from huggingface_hub import constants

        return urlparse(constants.ENDPOINT).hostname
    return urlparse(url).hostname if url else None


def _cached_on_hub(hub_id: str, filename: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    names = (filename,) if filename else _HUB_FILENAMES
    return any(isinstance(try_to_load_from_cache(hub_id, name), str) for name in names)


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub's offline mode (HF_HUB_OFFLINE) for the duration of the block."""
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


@contextlib.contextmanager
def pretrained_download(name: str) -> Iterator[None]:
    """Wrap timm.create_model(name, pretrained=True): raises HubUnreachableError at once when the weights'
    host cannot be reached and they are not cached; loads cached hub weights offline in that case."""
    if any(os.environ.get(variable) for variable in _PROXY_VARIABLES):
        yield
        return
    config = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(config, "hf_hub_id", None)
    host = _weights_host(hub_id, getattr(config, "url", None))
    if host is None or host_reachable(host):
        yield
        return
    if hub_id and _cached_on_hub(hub_id, getattr(config, "hf_hub_filename", None)):
        with _hub_offline():
            yield
        return
    raise HubUnreachableError(f"{host} cannot be reached (no connection within {PROBE_TIMEOUT_SECONDS:g} s)")
