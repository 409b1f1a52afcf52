"""Errors under /api/ are JSON with a code and our own sentence: no HTML page, no traceback, no library text."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from ownership.api import MeApi

pytestmark = pytest.mark.django_db

SECRET = "/tmp/modelcourt-upload-3f9a/model.onnx: onnxruntime::InferenceSession failed"  # noqa: S108


def _explode(self, request):  # type: ignore[no-untyped-def]
    raise RuntimeError(SECRET)


def test_an_unhandled_exception_under_api_is_a_json_500_without_its_text(
    owner, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(MeApi, "get", _explode)
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(owner)

    response = client.get("/api/v1/me")

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "server_error"
    assert set(response.json()) == {"code", "detail"}
    body = response.content.decode()
    assert "Traceback" not in body
    assert "RuntimeError" not in body
    assert SECRET.split(":")[0] not in body
    assert "onnxruntime" not in body


def test_an_unhandled_exception_on_a_web_page_keeps_the_html_page(owner, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("django.views.generic.base.TemplateView.get", _explode)
    response = Client(raise_request_exception=False).get("/")

    assert response.status_code == 500
    assert "application/json" not in response["Content-Type"]
    assert SECRET not in response.content.decode()


def test_an_unknown_api_address_is_a_json_404_that_does_not_echo_it(api_client: APIClient) -> None:
    response = api_client.get("/api/v1/no-such-thing/<script>")

    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "no API endpoint at this address"}
    assert "script" not in response.content.decode()


def test_an_unknown_web_address_keeps_the_html_404() -> None:
    response = Client().get("/no-such-page/")

    assert response.status_code == 404
    assert "application/json" not in response["Content-Type"]


def test_a_wrong_method_under_api_is_a_json_405(owner, api_client: APIClient) -> None:  # type: ignore[no-untyped-def]
    api_client.force_authenticate(owner)

    response = api_client.delete("/api/v1/me")

    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert "DELETE" in response.json()["detail"]
