"""Keys: generated outside the database, kept apart, rotated without breaking old proofs."""

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.core.management import call_command
from django.db import connection

from timestamps import keys, note, rfc3161, services
from timestamps.models import SigningKey

pytestmark = pytest.mark.django_db
Purpose = SigningKey.Purpose


def _ca_roots() -> list[x509.Certificate]:
    return [
        x509.load_pem_x509_certificate(k.certificate_pem.encode())
        for k in SigningKey.objects.filter(purpose=Purpose.TSA_CA)
    ]


def test_private_keys_are_files_of_mode_0600_and_never_in_the_database(settings) -> None:  # type: ignore[no-untyped-def]
    for purpose in (Purpose.TSA, Purpose.LOG, Purpose.VERDICT):
        keys.key_current(purpose)

    files = list(Path(settings.MODELCOURT_KEY_DIR).glob("*.pem"))
    mine = {f for f in files for k in SigningKey.objects.all() if f.name == f"{k.purpose}-{k.kid[:16]}.pem"}
    assert len(mine) == 4  # tsa, its CA, log, verdict
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in mine)
    with connection.cursor() as cursor:
        cursor.execute("SELECT public_key_pem, certificate_pem FROM timestamps_signingkey")
        assert all("PRIVATE" not in value for row in cursor.fetchall() for value in row)


def test_purposes_use_distinct_keys() -> None:
    kids = {keys.key_current(p).record.kid for p in (Purpose.TSA, Purpose.TSA_CA, Purpose.LOG, Purpose.VERDICT)}
    assert len(kids) == 4


def test_rotation_keeps_old_tokens_and_checkpoints_verifiable() -> None:
    # given a token and a checkpoint made with the first keys
    for purpose in (Purpose.TSA, Purpose.LOG, Purpose.VERDICT):
        keys.key_current(purpose)
    digest = b"\x42" * 32
    old_token = services.timestamp_digest(digest=digest)
    services.log_append(data=b"x")
    old_checkpoint = services.checkpoint_publish()
    old_log = keys.key_current(Purpose.LOG).record

    # when every key is rotated
    call_command("rotate_keys", "tsa", "log", "verdict")

    # then the old keys are retired but still published, and their signatures still verify
    assert SigningKey.objects.filter(status="retired").count() == 3
    assert SigningKey.objects.filter(status="current").count() == 4
    rfc3161.verify_token(bytes(old_token.token), roots=_ca_roots(), digest=digest)
    assert note.open_note(old_checkpoint.note, [keys.log_verifier_key(old_log)])

    # and new signatures use the new keys
    new_token = services.timestamp_digest(digest=digest)
    assert new_token.key.kid != old_token.key.kid
    rfc3161.verify_token(bytes(new_token.token), roots=_ca_roots(), digest=digest)
    services.log_append(data=b"y")
    new_checkpoint = services.checkpoint_publish()
    new_log = keys.key_current(Purpose.LOG).record
    assert new_checkpoint.key == new_log != old_log
    with pytest.raises(note.NoteError):
        note.open_note(new_checkpoint.note, [keys.log_verifier_key(old_log)])


def test_rotating_the_ca_reissues_the_tsa_certificate() -> None:
    keys.key_current(Purpose.TSA)
    call_command("rotate_keys", "tsa-ca")

    signer_record, signer = keys.tsa_signer()
    assert signer.chain[0].subject == signer.certificate.issuer
    assert signer_record.created_at >= keys.key_current(Purpose.TSA_CA).record.created_at
    assert SigningKey.objects.filter(purpose=Purpose.TSA, status="retired").count() == 1


def test_a_key_pinned_in_the_environment_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pinned = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "log.pem"
    path.write_bytes(
        pinned.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    monkeypatch.setenv("MODELCOURT_LOG_KEY_FILE", str(path))

    current = keys.key_current(Purpose.LOG)

    assert current.record.kid == keys.key_id(pinned.public_key())
    with pytest.raises(keys.KeyConfigurationError, match="pins"):
        keys.key_rotate(purpose=Purpose.LOG)


def test_a_key_of_the_wrong_type_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    monkeypatch.setenv("MODELCOURT_TSA_KEY", pem.decode())
    with pytest.raises(keys.KeyConfigurationError, match="tsa key must be"):
        keys.key_current(Purpose.TSA)


def test_rotate_keys_init_creates_missing_keys_only() -> None:
    call_command("rotate_keys", "--init")
    first = set(SigningKey.objects.values_list("kid", flat=True))
    call_command("rotate_keys", "--init")

    assert set(SigningKey.objects.values_list("kid", flat=True)) == first
    assert {k.purpose for k in SigningKey.objects.all()} == {"tsa", "tsa-ca", "log", "verdict"}


def test_rotate_keys_names_an_unknown_purpose() -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="unknown purpose nope"):
        call_command("rotate_keys", "nope")


def test_the_served_checkpoint_follows_a_log_key_rotation(client) -> None:  # type: ignore[no-untyped-def]
    services.log_append(data=b"x")
    client.get("/api/v1/log/checkpoint")

    call_command("rotate_keys", "log")

    served = client.get("/api/v1/log/checkpoint").content.decode()
    current = client.get("/api/v1/log/key").content.decode().strip()
    assert note.parse_checkpoint(note.open_note(served, [current])).size == 1


def test_pinning_an_earlier_key_again_reactivates_its_record(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = keys.key_current(Purpose.LOG)
    path = tmp_path / "first.pem"
    path.write_bytes(
        first.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    call_command("rotate_keys", "log")
    assert keys.key_current(Purpose.LOG).record.kid != first.record.kid

    monkeypatch.setenv("MODELCOURT_LOG_KEY_FILE", str(path))

    again = keys.key_current(Purpose.LOG)
    assert again.record.pk == first.record.pk
    assert SigningKey.objects.get(pk=first.record.pk).status == "current"
    assert SigningKey.objects.filter(purpose=Purpose.LOG, status="current").count() == 1


def test_an_unreadable_configured_key_is_a_503_without_details(client, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MODELCOURT_LOG_KEY", "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")

    response = client.get("/api/v1/log/key")

    assert response.status_code == 503
    assert response.json()["code"] == "keys_unavailable"
    assert "MODELCOURT" not in response.content.decode()
