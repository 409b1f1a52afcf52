"""The public trust-layer API: /tsa with openssl, the log, the keys."""

import base64
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms, core, tsp  # type: ignore[import-untyped]
from rest_framework.test import APIClient

from timestamps import merkle, note, rfc3161, services
from timestamps.models import TimestampToken

pytestmark = pytest.mark.django_db


class _Reply(core.Sequence):  # type: ignore[misc]
    """TimeStampResp as RFC 3161 has it: asn1crypto's makes the token mandatory."""

    _fields = [("status", tsp.PKIStatusInfo), ("time_stamp_token", cms.ContentInfo, {"optional": True})]


QUERY = "application/timestamp-query"


def _ca_pem(client: APIClient) -> str:
    keys = client.get("/api/v1/keys/").json()
    return next(k["certificate_pem"] for k in keys if k["purpose"] == "tsa-ca" and k["status"] == "current")


def _openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "ts", *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_openssl_query_gets_a_token_that_openssl_verifies(api_client: APIClient, tmp_path: Path) -> None:
    # given a file and an openssl time-stamp query for it
    (tmp_path / "F").write_bytes(b"model weights, say")
    assert _openssl("-query", "-data", "F", "-sha256", "-cert", "-out", "q.tsq", cwd=tmp_path).returncode == 0

    # when it is posted to /tsa
    response = api_client.post("/tsa", (tmp_path / "q.tsq").read_bytes(), content_type=QUERY)

    # then openssl verifies the reply against the CA from /api/v1/keys/
    assert response.status_code == 200
    assert response["Content-Type"] == "application/timestamp-reply"
    (tmp_path / "r.tsr").write_bytes(response.content)
    (tmp_path / "ca.pem").write_text(_ca_pem(api_client))
    verified = _openssl("-verify", "-in", "r.tsr", "-queryfile", "q.tsq", "-CAfile", "ca.pem", cwd=tmp_path)
    assert "Verification: OK" in verified.stdout, verified.stderr
    by_data = _openssl("-verify", "-in", "r.tsr", "-data", "F", "-CAfile", "ca.pem", cwd=tmp_path)
    assert "Verification: OK" in by_data.stdout, by_data.stderr

    # and a tampered file fails
    (tmp_path / "F").write_bytes(b"model weights, sax")
    tampered = _openssl("-verify", "-in", "r.tsr", "-data", "F", "-CAfile", "ca.pem", cwd=tmp_path)
    assert tampered.returncode != 0
    assert "Verification: OK" not in tampered.stdout


def test_granted_tokens_are_appended_to_the_log_with_serial_equal_to_index(api_client: APIClient) -> None:
    services.log_append(data=b"something before")
    query = rfc3161.build_query(b"\x11" * 32, nonce=7)

    response = api_client.post("/tsa", query, content_type=QUERY)

    token = TimestampToken.objects.get()
    assert token.serial == token.log_entry.index == 1
    assert bytes(token.log_entry.data) == bytes(token.token)
    assert bytes(token.token) in response.content


@pytest.mark.parametrize("body", [b"", b"garbage", b"\x30\x03\x02\x01"])
def test_malformed_query_gets_an_rfc3161_rejection_not_a_500(api_client: APIClient, body: bytes) -> None:
    response = api_client.post("/tsa", body, content_type=QUERY)

    assert response.status_code == 200
    assert _Reply.load(response.content)["status"]["status"].native == "rejection"
    assert not TimestampToken.objects.exists()


def test_non_der_queries_are_rejected_not_signed(api_client: APIClient) -> None:
    query = rfc3161.build_query(b"\x44" * 32, nonce=3)
    long_form_length = b"\x30\x81" + bytes([query[1]]) + query[2:]
    trailing_field = b"\x30" + bytes([query[1] + 3]) + query[2:] + b"\x02\x01\x00"

    for body in (long_form_length, trailing_field):
        response = api_client.post("/tsa", body, content_type=QUERY)
        assert response.status_code == 200
        assert _Reply.load(response.content)["status"]["status"].native == "rejection"
    assert not TimestampToken.objects.exists()


def test_tsa_wants_its_media_type_and_a_bounded_body(api_client: APIClient) -> None:
    assert api_client.post("/tsa", b"x", content_type="application/json").status_code == 415
    too_big = api_client.post("/tsa", b"\x00" * 20000, content_type=QUERY)
    assert too_big.status_code == 400
    assert "at most" in too_big.json()["detail"]


def test_tsa_needs_no_login_and_no_csrf_token() -> None:
    client = APIClient(enforce_csrf_checks=True)
    response = client.post("/tsa", rfc3161.build_query(b"\x22" * 32), content_type=QUERY)
    assert response.status_code == 200


def test_tsa_is_throttled(api_client: APIClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from rest_framework.throttling import ScopedRateThrottle

    # DRF copies the rates onto the class when it is defined: patch them there.
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"tsa": "2/min"})
    query = rfc3161.build_query(b"\x33" * 32)

    codes = [api_client.post("/tsa", query, content_type=QUERY).status_code for _ in range(3)]

    assert codes == [200, 200, 429]


def test_keys_list_every_purpose_with_certificates(api_client: APIClient) -> None:
    keys = api_client.get("/api/v1/keys/").json()

    by_purpose = {k["purpose"]: k for k in keys}
    assert set(by_purpose) == {"tsa", "tsa-ca", "log", "verdict"}
    assert "BEGIN CERTIFICATE" in by_purpose["tsa"]["certificate_pem"]
    assert by_purpose["log"]["verifier_key"].startswith("modelcourt.local/log+")
    assert all("PRIVATE" not in k["public_key_pem"] for k in keys)
    jwks = api_client.get("/.well-known/jwks.json").json()["keys"]
    assert {k["kid"] for k in jwks} == {k["kid"] for k in keys}


def test_log_endpoints_serve_a_verifiable_view(api_client: APIClient) -> None:
    entries = [f"entry-{i}".encode() for i in range(10)]
    services.log_append_many(entries=entries)

    checkpoint = api_client.get("/api/v1/log/checkpoint")
    vkey = api_client.get("/api/v1/log/key").content.decode().strip()
    assert checkpoint["Content-Type"].startswith("text/plain")
    body = note.parse_checkpoint(note.open_note(checkpoint.content.decode(), [vkey]))
    assert body.size == 10

    entry = api_client.get("/api/v1/log/entries/4").json()
    assert base64.b64decode(entry["entry_b64"]) == b"entry-4"

    inclusion = api_client.get("/api/v1/log/proof/inclusion", {"index": 4, "size": 10}).json()
    hashes = [base64.b64decode(h) for h in inclusion["hashes"]]
    assert merkle.verify_inclusion(4, 10, merkle.leaf_hash(b"entry-4"), hashes, body.root_hash)

    services.log_append(data=b"later")
    later = note.parse_checkpoint(note.open_note(api_client.get("/api/v1/log/checkpoint").content.decode(), [vkey]))
    consistency = api_client.get("/api/v1/log/proof/consistency", {"first": 10, "second": 11}).json()
    hashes = [base64.b64decode(h) for h in consistency["hashes"]]
    assert merkle.verify_consistency(10, 11, body.root_hash, later.root_hash, hashes)

    earlier = api_client.get("/api/v1/log/checkpoint", {"size": 10})
    assert earlier.content == checkpoint.content


@pytest.mark.parametrize(
    ("url", "params"),
    [
        ("/api/v1/log/proof/inclusion", {"index": 3, "size": 99}),
        ("/api/v1/log/proof/inclusion", {"index": "x", "size": 2}),
        ("/api/v1/log/proof/inclusion", {"size": 2}),
        ("/api/v1/log/proof/inclusion", {"index": -1, "size": 2}),
        ("/api/v1/log/proof/consistency", {"first": 0, "second": 2}),
        ("/api/v1/log/proof/consistency", {"first": 2, "second": 1}),
    ],
)
def test_bad_log_requests_get_a_400_with_a_reason(api_client: APIClient, url: str, params: dict[str, object]) -> None:
    services.log_append_many(entries=[b"a", b"b"])

    response = api_client.get(url, params)

    assert response.status_code == 400
    assert response.json()["code"]
    assert response.json()["detail"]


def test_missing_entries_and_checkpoints_are_404s_with_a_reason(api_client: APIClient) -> None:
    for url in ["/api/v1/log/entries/0", f"/api/v1/log/entries/{2**70}", "/api/v1/log/checkpoint?size=1"]:
        response = api_client.get(url)
        assert response.status_code == 404, url
        assert response.json()["code"] == "not_found"
