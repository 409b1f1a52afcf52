"""Accounts and roles: login page, tokens, sessions, API docs."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_login_page_renders_and_signs_in(owner) -> None:  # type: ignore[no-untyped-def]
    client = Client()
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert b"Sign in" in page.content

    bad = client.post("/accounts/login/", {"username": "olivia", "password": "wrong"})
    assert bad.status_code == 200
    assert b"correct username and password" in bad.content

    good = client.post("/accounts/login/", {"username": "olivia", "password": "correct horse battery"})
    assert good.status_code == 302
    assert client.get("/api/v1/me").json() == {"username": "olivia", "roles": ["owner"]}


def test_token_authentication(arbiter, api_client: APIClient) -> None:  # type: ignore[no-untyped-def]
    token = api_client.post(
        "/api/v1/auth/token", {"username": "arthur", "password": "correct horse battery"}, format="json"
    ).json()["token"]

    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api_client.get("/api/v1/me").json()["roles"] == ["arbiter"]


def test_staff_hold_the_staff_role(staff, api_client: APIClient) -> None:  # type: ignore[no-untyped-def]
    api_client.force_authenticate(staff)
    assert api_client.get("/api/v1/me").json()["roles"] == ["staff"]


def test_anonymous_callers_are_refused_with_a_reason(api_client: APIClient) -> None:
    response = api_client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response.json()["detail"]


def test_api_docs_and_schema_are_served_without_a_cdn(api_client: APIClient) -> None:
    docs = api_client.get("/api/v1/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content
    assert b"cdn.jsdelivr" not in docs.content
    schema = api_client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/tsa", "/api/v1/keys/", "/api/v1/log/checkpoint", "/api/v1/log/proof/inclusion"} <= set(paths)


def test_failed_sign_ins_are_limited_per_address(owner, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from django.conf import settings

    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "login": "3/min"}
    monkeypatch.setitem(settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES", rates)
    client = Client()

    codes = [client.post("/accounts/login/", {"username": "olivia", "password": "wrong"}).status_code for _ in range(4)]
    blocked = client.post("/accounts/login/", {"username": "olivia", "password": "correct horse battery"})

    assert codes == [200, 200, 200, 429]
    assert blocked.status_code == 429
    assert b"Too many failed sign-ins" in blocked.content
    # the same username from other addresses is limited too
    elsewhere = Client(REMOTE_ADDR="10.9.8.7").post("/accounts/login/", {"username": "olivia", "password": "x"})
    assert elsewhere.status_code == 429


def test_a_forged_forwarded_for_header_does_not_escape_the_throttle(api_client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from rest_framework.throttling import AnonRateThrottle

    monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"anon": "3/min"})
    codes = [api_client.get("/api/v1/log/key", HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code for i in range(5)]
    assert codes == [200, 200, 200, 429, 429]


def test_operators_are_not_owners_or_arbiters_by_default(staff) -> None:  # type: ignore[no-untyped-def]
    from ownership.roles import Role, user_has_role

    assert user_has_role(staff, Role.STAFF)
    assert not user_has_role(staff, Role.OWNER)
    assert not user_has_role(staff, Role.ARBITER)
