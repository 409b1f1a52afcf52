"""Accounts and roles: login page, tokens, sessions, API docs."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:  # type: ignore[no-untyped-def]
    """Sign-in limits are about counting attempts, not key stretching: a cheap hasher keeps these tests fast."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


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


def _rates(monkeypatch, **rates: str) -> None:  # type: ignore[no-untyped-def]
    from django.conf import settings

    merged = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], **rates}
    monkeypatch.setitem(settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES", merged)


def _sign_in(client: Client, username: str, password: str) -> int:
    return client.post("/accounts/login/", {"username": username, "password": password}).status_code


def test_failed_sign_ins_are_limited_per_address_and_username(owner, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _rates(monkeypatch, login="3/min")
    client = Client()

    codes = [_sign_in(client, "olivia", "wrong") for _ in range(4)]
    blocked = client.post("/accounts/login/", {"username": "olivia", "password": "correct horse battery"})

    assert codes == [200, 200, 200, 429]
    assert blocked.status_code == 429
    assert b"Too many failed sign-ins" in blocked.content
    assert "_auth_user_id" not in client.session
    # the username is matched without case
    assert _sign_in(client, "OLIVIA", "wrong") == 429


def test_an_attacker_elsewhere_cannot_lock_the_victim_out(owner, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # given an attacker hammering the victim's username from another address
    _rates(monkeypatch, login="3/min")
    attacker = Client(REMOTE_ADDR="203.0.113.66")
    attempts = [_sign_in(attacker, "olivia", f"guess {i}") for i in range(10)]
    assert attempts[-1] == 429  # the attacker is stopped

    # when the victim signs in from their own address
    victim = Client(REMOTE_ADDR="198.51.100.7")
    response = victim.post("/accounts/login/", {"username": "olivia", "password": "correct horse battery"})

    # then
    assert response.status_code == 302
    assert victim.get("/api/v1/me").json()["username"] == "olivia"


def test_one_address_is_limited_over_all_usernames(owner, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _rates(monkeypatch, login="3/min", **{"login-address": "5/min"})
    client = Client(REMOTE_ADDR="203.0.113.66")

    codes = [_sign_in(client, f"user{i}", "wrong") for i in range(6)]

    assert codes == [200] * 5 + [429]
    # even a right password from that address waits out the window
    assert _sign_in(client, "olivia", "correct horse battery") == 429
    # other addresses are unaffected
    assert _sign_in(Client(REMOTE_ADDR="198.51.100.7"), "olivia", "correct horse battery") == 302


def _sign_up(client: Client, username: str) -> int:
    passphrase = "a long passphrase 42"
    data = {"username": username, "password1": passphrase, "password2": passphrase}
    return client.post("/accounts/signup/", data).status_code


def test_sign_up_is_limited_per_address(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model

    from ownership.views import _SignupThrottle

    _rates(monkeypatch)  # the rate lives with the others
    from django.conf import settings

    assert "signup" in settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    monkeypatch.setattr(_SignupThrottle, "THROTTLE_RATES", {"signup": "2/hour"})
    farm = Client(REMOTE_ADDR="203.0.113.66")

    codes = [_sign_up(Client(REMOTE_ADDR="203.0.113.66"), f"sock{i}") for i in range(2)]
    refused = farm.post(
        "/accounts/signup/",
        {"username": "sock2", "password1": "a long passphrase 42", "password2": "a long passphrase 42"},
    )

    assert codes == [302, 302]
    assert refused.status_code == 429
    assert b"Too many sign-ups" in refused.content
    assert not get_user_model().objects.filter(username="sock2").exists()
    # another address still signs up
    assert _sign_up(Client(REMOTE_ADDR="198.51.100.7"), "nadia") == 302


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
