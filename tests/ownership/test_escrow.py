"""Escrow: sealed at rest, rotatable, failing loudly without its key."""

import json
import stat
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from ownership import escrow, services
from ownership.models import EvidenceSet

pytestmark = pytest.mark.django_db


def test_generated_key_file_is_private() -> None:
    escrow.seal(b"x")
    path = Path(settings.MODELCOURT_KEY_DIR) / "escrow.keys"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_seal_round_trip_and_ciphertext_hides_plaintext() -> None:
    token = escrow.seal(b"secret triggers")
    assert b"secret triggers" not in token
    assert escrow.unseal(token) == b"secret triggers"


def test_rotation_reseals_everything_and_old_ciphertexts_still_open(owner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.ownership.model_files import torchscript_file

    upload = SimpleUploadedFile("mlp.pt", torchscript_file(tmp_path / "mlp.pt").read_bytes())
    model = services.model_register(
        owner=owner, name="m", task="", input_shape=[1, 8, 8], num_classes=10, artifact=upload
    )
    evidence_set, _ = services.evidence_generate(model=model, count=5)
    before = bytes(evidence_set.escrow)
    old_keys = escrow.escrow_keys()

    call_command("rotate_escrow_key")

    evidence_set.refresh_from_db()
    assert bytes(evidence_set.escrow) != before
    assert len(escrow.escrow_keys()) == len(old_keys) + 1
    assert escrow.escrow_keys()[1:] == old_keys
    assert escrow.unseal(before) == escrow.unseal(bytes(evidence_set.escrow))
    opening = services.evidence_open(evidence_set=EvidenceSet.objects.get())
    assert json.dumps(opening)


def test_a_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    token = escrow.seal(b"x")
    from cryptography.fernet import Fernet

    monkeypatch.setenv("MODELCOURT_ESCROW_KEYS", Fernet.generate_key().decode())
    with pytest.raises(escrow.EscrowError, match="cannot be decrypted"):
        escrow.unseal(token)
