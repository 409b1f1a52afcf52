"""Hostile inputs to the precedence records: sightings (a file and a note from anyone) and the release time.

What must not happen: a sighting file kept or unpickled, a file touched, an attacker's text echoed into
an error or a record, a release time without its source, or one in the future.
"""

from __future__ import annotations

import os
import pickle
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from tests.security import attacks
from tests.security.conftest import PANEL, Secrets, Untouched, registered_row
from verification.models import Dispute, Sighting

pytestmark = pytest.mark.django_db

ESCAPE = "\x1b]8;;https://evil.example/\x07click\x1b]8;;\x07\x1b[2J"


def _media_files() -> set[str]:
    root = Path(settings.MEDIA_ROOT)
    return {str(Path(d) / f) for d, _, files in os.walk(root) for f in files} if root.exists() else set()


def _client(user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(user)
    return client


class _Boom:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.target,))


def test_a_pickle_sighting_is_refused_unread_and_nothing_is_kept(  # type: ignore[no-untyped-def]
    owner, secrets: Secrets, untouched: Untouched, outside: Path
) -> None:
    # `secrets` first: it makes every key file the service makes, before `untouched` looks at the folders
    before = _media_files()
    target = outside / "zz-hostile-sighting"
    answer = _client(owner).post(
        "/api/v1/sightings/", {"file": SimpleUploadedFile("m.pt", pickle.dumps(_Boom(target))), "note": "seen"}
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == "sighting_file"
    assert not Sighting.objects.exists()
    assert not target.exists()
    assert _media_files() == before
    untouched.check()


def test_a_hostile_model_file_is_only_hashed(  # type: ignore[no-untyped-def]
    owner, secrets: Secrets, untouched: Untouched, outside: Path
) -> None:
    before = _media_files()
    target = outside / "zz-hostile-sighting-write"
    hostile = attacks.write_files((str(target), b"x"))
    answer = _client(owner).post("/api/v1/sightings/", {"file": SimpleUploadedFile("m.pt", hostile), "note": "seen"})
    assert answer.status_code == 201, answer.content
    sighting = Sighting.objects.get()
    assert sighting.file_format == "torchscript"
    assert answer.json()["model_digest"] == sighting.model_digest
    # the file is digested as it streams in, never stored and never loaded
    assert _media_files() == before
    assert not target.exists()
    secrets.assert_absent(response=answer.content)
    untouched.check()


@pytest.mark.parametrize("note", [ESCAPE, "a\u202eb", "n" * 301])
def test_a_hostile_note_is_refused_and_not_echoed(owner, note: str) -> None:  # type: ignore[no-untyped-def]
    answer = _client(owner).post(
        "/api/v1/sightings/", {"file": SimpleUploadedFile("m.pt", attacks.benign()), "note": note}
    )
    assert answer.status_code == 400
    assert note not in answer.content.decode()
    assert "\x1b" not in answer.content.decode()
    assert not Sighting.objects.exists()


def test_only_signed_in_users_record_sightings_and_anyone_reads_them(owner) -> None:  # type: ignore[no-untyped-def]
    anonymous = APIClient().post("/api/v1/sightings/", {"file": SimpleUploadedFile("m.pt", attacks.benign())})
    assert anonymous.status_code in (401, 403)
    made = _client(owner).post("/api/v1/sightings/", {"file": SimpleUploadedFile("m.pt", attacks.benign())}).json()
    public = APIClient().get(f"/api/v1/sightings/{made['id']}")
    assert public.status_code == 200
    assert public.json()["model_digest"] == made["model_digest"]
    assert APIClient().get("/api/v1/sightings/not-a-uuid").status_code == 404


@pytest.mark.parametrize(
    ("released_at", "source", "field"),
    [
        ((timezone.now() - timedelta(days=1)).isoformat(), ESCAPE, "suspect_release_source"),
        ((timezone.now() - timedelta(days=1)).isoformat(), "", "suspect_release_source"),
        ((timezone.now() + timedelta(days=1)).isoformat(), "a blog post", "suspect_released_at"),
        (None, "a source without a time", "suspect_released_at"),
    ],
    ids=["escape-in-source", "no-source", "future", "source-alone"],
)
def test_a_bad_release_time_is_refused(owner, arbiter, data_dir, released_at, source, field) -> None:  # type: ignore[no-untyped-def]
    claimant = registered_row(owner, "digits", attacks.benign())
    body = {
        "title": "t",
        "claimant_model": str(claimant.public_id),
        "methods": "watermark",
        "suspect_url": "https://example.org/predict",
        "panel": PANEL,
        "suspect_release_source": source,
    }
    if released_at is not None:
        body["suspect_released_at"] = released_at
    answer = _client(arbiter).post("/api/v1/disputes/", body, format="json")
    assert answer.status_code == 400, answer.content
    assert answer.json()["code"] == field
    assert "\x1b" not in answer.content.decode()
    assert not Dispute.objects.exists()
