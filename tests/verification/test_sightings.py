"""Sightings of an endpoint: probed in the sandbox, stamped, and re-checked by a later dispute's run."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from rest_framework.test import APIClient

from verification import precedence
from verification.methods import egress
from verification.models import Dispute, Sighting
from verification.runs import _recheck_sightings
from verification.services import sightings as sighting_services

from .conftest import PANEL, bare_model

pytestmark = pytest.mark.django_db


class _Endpoint:
    """A plain-JSON endpoint on loopback answering logits; ``shift`` changes the model it serves."""

    def __init__(self) -> None:
        self.shift = 0
        self.queries = 0
        weights = np.random.default_rng(3).normal(size=(64, 10)).astype(np.float32)
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                x = np.asarray(body["inputs"], dtype=np.float32).reshape(-1, 64)
                state.queries += len(x)
                logits = np.roll(x @ weights, state.shift, axis=1)
                data = json.dumps({"outputs": logits.tolist()}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/predict"


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Endpoint]:
    monkeypatch.setenv(egress.ALLOW_PRIVATE_ENV, "127.0.0.1/32")
    stub = _Endpoint()
    thread = threading.Thread(target=stub.server.serve_forever, daemon=True)
    thread.start()
    yield stub
    stub.server.shutdown()


def _dispute(arbiter, owner, url: str) -> Dispute:  # type: ignore[no-untyped-def]
    from django.utils import timezone

    now = timezone.now()
    return Dispute.objects.create(
        arbiter=arbiter,
        title="t",
        claimant_model=bare_model(owner, f"claimant-{uuid.uuid4().hex[:6]}"),
        methods=["fingerprint"],
        panel=PANEL,
        suspect_kind=Dispute.SuspectKind.ENDPOINT,
        suspect_url=url,
        suspect_protocol="json",
        created_at=now,
        updated_at=now,
    )


def _record(owner, url: str) -> Sighting:  # type: ignore[no-untyped-def]
    sighting = sighting_services.sighting_record_endpoint(
        user=owner, url=url, input_shape=[64], num_classes=10, note="seen on a model hub"
    )
    probed = sighting_services.sighting_probe(sighting_id=sighting.pk)
    assert probed is not None
    return probed


def test_an_endpoint_is_probed_stamped_and_recognised_later(owner, arbiter, endpoint: _Endpoint) -> None:  # type: ignore[no-untyped-def]
    sighting = _record(owner, endpoint.url)
    assert sighting.state == Sighting.State.RECORDED, sighting.failure_reason
    assert sighting.timestamp_token is not None
    assert len(sighting.probe_labels) == 32
    assert endpoint.queries == 32

    dispute = _dispute(arbiter, owner, endpoint.url)
    confirmed = _recheck_sightings(dispute)
    assert [m.kind for m in confirmed] == ["sighting"]
    known = precedence.suspect_first_known(dispute=dispute, confirmed_sightings=confirmed)
    assert known[0].kind == "sighting"
    assert str(sighting.public_id) in known[0].source


def test_an_endpoint_that_now_serves_another_model_confirms_no_sighting(owner, arbiter, endpoint: _Endpoint) -> None:  # type: ignore[no-untyped-def]
    _record(owner, endpoint.url)
    endpoint.shift = 3  # every label moves: not the model that was sighted
    assert _recheck_sightings(_dispute(arbiter, owner, endpoint.url)) == []


def test_a_non_public_endpoint_is_refused_at_once(owner, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(egress.ALLOW_PRIVATE_ENV, raising=False)
    client = APIClient()
    client.force_authenticate(owner)
    for url in ("http://127.0.0.1:9/predict", "http://169.254.169.254/latest", "http://[::1]/x", "file:///etc/passwd"):
        answer = client.post("/api/v1/sightings/", {"url": url, "input_shape": [64], "num_classes": 10}, format="json")
        assert answer.status_code == 400, (url, answer.content)
        assert answer.json()["code"] == "url"
    assert not Sighting.objects.exists()


def test_the_api_queues_an_endpoint_sighting(owner, endpoint: _Endpoint, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(owner)
    answer = client.post(
        "/api/v1/sightings/", {"url": endpoint.url, "input_shape": [64], "num_classes": 10}, format="json"
    )
    assert answer.status_code == 202, answer.content
    assert answer.json()["state"] == "probing"
    assert answer.json()["time"] is None
    both = client.post("/api/v1/sightings/", {"url": endpoint.url}, format="json")
    assert both.status_code == 400


def test_another_spelling_of_the_url_still_meets_the_sighting(owner, arbiter, endpoint: _Endpoint) -> None:  # type: ignore[no-untyped-def]
    """Sightings match by server; the re-sent probes decide (a query string or a path cannot hide one)."""
    _record(owner, endpoint.url)
    variants = [
        endpoint.url + "?v=1",
        endpoint.url + "#x",
        endpoint.url.replace("http://", "HTTP://"),
        endpoint.url + "/",
    ]
    for url in variants:
        confirmed = _recheck_sightings(_dispute(arbiter, owner, url))
        assert [m.kind for m in confirmed] == ["sighting"], url
