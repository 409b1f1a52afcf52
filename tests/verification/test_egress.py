"""Endpoint disputes: the early check at filing, and the worker's relay that checks again at every connection."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.conftest import nothing_connected
from verification import runs
from verification.egress import run_methods_relayed
from verification.exceptions import DisputeError, RunFailed
from verification.methods import egress
from verification.models import DisputeRequest
from verification.services.disputes import check_public_endpoint, check_url

from .conftest import Claimant

PUBLIC = "93.184.215.14"
REQUESTS = "/api/v1/dispute-requests/"


class Names:
    """A stand-in for DNS: each name answers the addresses set for it now; unknown names do not resolve."""

    def __init__(self) -> None:
        self.table: dict[str, list[str]] = {}

    def __call__(self, host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port or 0))
            for a in self.table[host]
        ]


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Names:
    table = Names()
    monkeypatch.setattr(socket, "getaddrinfo", table)
    monkeypatch.delenv(egress.ALLOW_PRIVATE_ENV, raising=False)
    return table


# --- at filing --------------------------------------------------------------------------------------


def test_a_public_name_passes_the_early_check(names: Names) -> None:
    names.table["models.example.org"] = [PUBLIC, "2606:4700:4700::1111"]
    check_public_endpoint("https://models.example.org/v2/models/clf/infer")


def test_a_name_that_does_not_resolve_is_refused_with_a_reason(names: Names) -> None:
    with pytest.raises(DisputeError, match="does not resolve") as refused:
        check_public_endpoint("https://not-yet.example.org/predict")
    assert refused.value.code == "suspect_url"


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.0.0.7", "169.254.169.254", "100.64.1.1", "::1", "::ffff:127.0.0.1", "fd00::1"]
)
def test_a_name_resolving_to_a_private_address_is_refused(names: Names, address: str) -> None:
    names.table["sneaky.example.org"] = [PUBLIC, address]
    with pytest.raises(DisputeError, match="not a public address") as refused:
        check_public_endpoint("http://sneaky.example.org/predict")
    assert refused.value.code == "suspect_url"


def test_the_operator_allowance_reaches_the_early_check(names: Names, monkeypatch: pytest.MonkeyPatch) -> None:
    names.table["stub.test"] = ["127.0.0.1"]
    monkeypatch.setenv(egress.ALLOW_PRIVATE_ENV, "127.0.0.1/32")
    check_public_endpoint("http://stub.test:8000/predict")
    names.table["stub.test"] = ["127.0.0.2"]
    with pytest.raises(DisputeError, match="not a public address"):
        check_public_endpoint("http://stub.test:8000/predict")
    monkeypatch.setenv(egress.ALLOW_PRIVATE_ENV, "yes")
    with pytest.raises(DisputeError, match="settings are invalid"):
        check_public_endpoint("http://stub.test:8000/predict")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://models.example.org/x", "http:// or https://"),
        ("http://admin:secret@models.example.org/", "user name or password"),
        ("http://models.example.org:70000/", "port"),
        ("http://models.example.org/a\nb", "control"),
    ],
)
def test_the_url_shape_is_checked_when_filed(url: str, message: str) -> None:
    with pytest.raises(DisputeError, match=message) as refused:
        check_url(url)
    assert refused.value.code == "suspect_url"


@pytest.mark.django_db
def test_an_owner_cannot_request_against_a_name_that_does_not_resolve(
    names: Names, owner: Any, bare_claimant: Claimant
) -> None:
    client = APIClient()
    client.force_authenticate(owner)
    form = {
        "title": "resold",
        "claimant_model": str(bare_claimant.model.public_id),
        "methods": "watermark",
        "suspect_url": "https://later.example.org/predict",
    }

    response = client.post(REQUESTS, form, format="json")

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "suspect_url"
    assert "does not resolve" in response.json()["detail"]
    assert not DisputeRequest.objects.exists()


# --- at every connection, in the worker --------------------------------------------------------------


def test_a_name_rebound_after_filing_gets_no_connection_from_the_worker(names: Names, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    url = f"http://rebind.example.org:{port}/predict"
    names.table["rebind.example.org"] = [PUBLIC]
    check_public_endpoint(url)  # filed while the name pointed at a public address
    names.table["rebind.example.org"] = ["127.0.0.1"]  # then the attacker rebinds it
    relay = egress.relay_for(url)

    with pytest.raises(egress.EgressError, match=r"not a public address: it resolves to 127\.0\.0\.1") as refused:
        egress.relay_post(relay, b'{"inputs": [[0.5]]}', headers={"Content-Type": "application/json"})

    assert not refused.value.transient
    assert nothing_connected(listener)


def _capture_sandbox(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []

    def fake_run_sandboxed(fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append((fn, args, kwargs))
        return {"ok": True}

    monkeypatch.setattr("workers.sandbox.run_sandboxed", fake_run_sandboxed)
    return calls


def _endpoint_spec(url: str, **suspect: Any) -> dict[str, Any]:
    return {
        "suspect": {"kind": "http", "url": url, "protocol": "json", "model_name": "", "budget": None, **suspect},
        "num_classes": 10,
        "panel_dir": "/nowhere/panel",
    }


def test_an_endpoint_run_gets_a_relay_bound_to_the_disputes_url(
    names: Names, monkeypatch: pytest.MonkeyPatch, listener: socket.socket
) -> None:
    calls = _capture_sandbox(monkeypatch)
    port = listener.getsockname()[1]
    names.table["suspect.example.org"] = ["127.0.0.1"]

    runs._run_methods(_endpoint_spec(f"http://suspect.example.org:{port}/predict", allowed_networks=["0.0.0.0/0"]))

    ((fn, _, kwargs),) = calls
    assert fn is run_methods_relayed
    relay = kwargs["relay"]
    # the settings come from the worker's environment (unset: nothing private), not from the task's spec
    with pytest.raises(egress.EgressError, match="not a public address"):
        egress.relay_post(relay, b"{}", headers={"Content-Type": "application/json"})
    assert nothing_connected(listener)


def test_a_file_run_gets_no_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _capture_sandbox(monkeypatch)

    runs._run_methods(
        {"suspect": {"kind": "onnx", "path": "/nowhere/model.onnx", "budget": None}, "panel_dir": "/nowhere/panel"}
    )

    ((fn, _, kwargs),) = calls
    assert fn.__name__ == "run_methods"
    assert kwargs["relay"] is None
    # the child reads a private copy of the suspect's file and the panel, nothing else
    assert kwargs["files"] == {"suspect_path": "/nowhere/model.onnx"}
    assert kwargs["readable"] == ["/nowhere/panel"]


def test_an_invalid_allowance_fails_the_run_for_the_operators(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _capture_sandbox(monkeypatch)
    monkeypatch.setenv(egress.ALLOW_PRIVATE_ENV, "everything")

    with pytest.raises(RunFailed, match=egress.ALLOW_PRIVATE_ENV):
        runs._run_methods(_endpoint_spec("https://models.example.org/predict"))
    assert calls == []
