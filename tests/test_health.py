"""GET /api/v1/health and where users land after signing in."""

import pytest


@pytest.mark.django_db
def test_health_names_the_sandbox_policy_in_force(api_client) -> None:  # type: ignore[no-untyped-def]
    from workers.confinement import policy_record

    answer = api_client.get("/api/v1/health")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok"
    assert body["sandbox_policy"] == policy_record()
    assert len(body["sandbox_policy"]["sha256"]) == 64
    assert body["sandbox_policy"]["name"].startswith("modelcourt-sandbox")


@pytest.mark.django_db
@pytest.mark.parametrize(("role", "landing"), [("owner", "/owner/models/"), ("arbiter", "/disputes/"), (None, "/")])
def test_signing_in_lands_on_the_users_own_work(client, role: str | None, landing: str) -> None:  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model

    from ownership.roles import Role, role_grant

    user = get_user_model().objects.create_user(username="lena", password="correct horse battery")
    if role:
        role_grant(user=user, role=Role(role))
    answer = client.post("/accounts/login/", {"username": "lena", "password": "correct horse battery"})
    assert answer.status_code == 302
    followed = client.get(answer["Location"])
    assert followed.status_code == 302
    assert followed["Location"] == landing
