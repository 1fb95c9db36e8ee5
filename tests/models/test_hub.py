"""The pre-download check: an unreachable host is one error at once, cached weights load offline."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import timm
import timm.models._builder as timm_builder
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from embedlab.models import hub
from embedlab.models.backbones import create_backbone

#: A small timm model whose default weights live on the Hugging Face hub.
MODEL = "mobilenetv3_small_050"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every TCP connection fails as it does without internet; returns the addresses tried."""
    tried: list[tuple] = []

    def refuse(address: tuple, *args: object, **kwargs: object) -> socket.socket:
        tried.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    return tried


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _cache_weights(cache: Path, state: dict[str, torch.Tensor]) -> None:
    """Lay out `state` as huggingface_hub's cache holds MODEL's default weights."""
    repo = timm.models.get_pretrained_cfg(MODEL).hf_hub_id
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, folder / "snapshots" / commit / "model.safetensors"
    )


def test_an_unreachable_host_with_nothing_cached_is_reported_before_any_download(
    no_network: list[tuple], hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads = []
    monkeypatch.setattr(timm_builder, "load_state_dict_from_hf", lambda *a, **k: downloads.append(a))
    with pytest.raises(ValueError, match=f"pretrained weights of '{MODEL}'") as raised:
        create_backbone(MODEL, in_chans=3, pretrained=True)
    message = str(raised.value)
    assert "HubUnreachableError: huggingface.co cannot be reached" in message
    assert "model.pretrained=false" in message and "model.weights_path=FILE" in message
    assert downloads == []
    assert no_network == [("huggingface.co", 443)]


def test_cached_weights_load_offline_when_the_host_is_unreachable(
    no_network: list[tuple], hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = timm.create_model(MODEL, num_classes=0)
    _cache_weights(hub_cache, source.state_dict())

    waits: list[float] = []
    # huggingface_hub sleeps between the retries of a request that cannot connect
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", waits.append)
    loaded = create_backbone(MODEL, in_chans=3, pretrained=True)
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    assert no_network == [("huggingface.co", 443)], "only the probe may try to connect"
    assert waits == []
    assert constants.HF_HUB_OFFLINE is False, "offline mode must end with the download"


def test_behind_a_proxy_nothing_is_probed(no_network: list[tuple], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    with hub.pretrained_download(MODEL):
        pass
    assert no_network == []


def test_host_reachable_opens_a_real_connection() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert hub.host_reachable("127.0.0.1", port)
    assert not hub.host_reachable("127.0.0.1", port, timeout=0.5)
