"""Verdict bundle downloads: no checkpoint per request, a cached zip with an ETag, one rate limit for both routes,
and consistency proofs from each receipt's checkpoint to the bundle's."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from rest_framework.throttling import ScopedRateThrottle

from modelcourt import bundle
from modelcourt.bundle import all_ok, verify_bundle
from timestamps import keys
from timestamps import services as timestamp_services
from timestamps.models import Checkpoint, SigningKey
from verification.models import Dispute, Verdict
from verification.services import disputes as dispute_services
from verification.services import verdicts as verdict_services

from .conftest import PANEL, Claimant, Models, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def decided(arbiter: Any, claimant: Claimant, digits_models: Models) -> tuple[Dispute, Verdict]:
    """A dispute against an independent model, run to its verdict (unpublished); the outcome does not matter here."""
    dispute = dispute_services.dispute_file(
        arbiter=arbiter,
        title="digits vs. independent",
        claimant_model=claimant.model,
        methods=["watermark"],
        suspect_file=upload("independent.pt", digits_models.independent),
        panel=PANEL,
    )
    verdict = dispute_services.verification_run_execute(dispute_id=dispute.pk)
    assert verdict is not None
    dispute.refresh_from_db()
    return dispute, verdict


@pytest.fixture
def published(decided: tuple[Dispute, Verdict]) -> Verdict:
    return verdict_services.verdict_publish(dispute=decided[0])


def _urls(verdict: Verdict) -> tuple[str, str]:
    return f"/api/v1/verdicts/{verdict.public_id}/bundle", f"/verdicts/{verdict.public_id}/bundle.zip"


def test_downloads_reuse_the_latest_covering_checkpoint(published: Verdict) -> None:
    api, web = _urls(published)
    # given a log whose latest checkpoint does not cover the verdict yet: the first download signs one
    count = Checkpoint.objects.count()
    first = Client().get(api)
    assert first.status_code == 200
    assert Checkpoint.objects.count() == count + 1
    count += 1

    # when it is downloaded again, by both routes, and the log grows meanwhile
    timestamp_services.timestamp_digest(digest=hashlib.sha256(b"another commitment").digest())
    again = [Client().get(url) for url in (api, web, api, web)]

    # then no checkpoint is signed for them, and every download is the same zip
    assert Checkpoint.objects.count() == count
    assert {response.content for response in again} == {first.content}


def test_a_newer_checkpoint_gives_a_newer_bundle(published: Verdict) -> None:
    api, _ = _urls(published)
    before = Client().get(api)
    timestamp_services.timestamp_digest(digest=hashlib.sha256(b"another commitment").digest())

    newer = timestamp_services.checkpoint_publish()  # what the beat schedule does
    after = Client().get(api)

    assert after["ETag"] != before["ETag"]
    assert json.loads(_member(after.content, "log.json"))["tree_size"] == newer.size
    assert all_ok(verify_bundle(after.content))


def test_the_zip_is_built_once_per_checkpoint(published: Verdict, monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    build = bundle.build_bundle
    monkeypatch.setattr(bundle, "build_bundle", lambda **parts: built.append(1) or build(**parts))

    first = verdict_services.verdict_bundle(verdict=published)
    second = verdict_services.verdict_bundle(verdict=published)

    assert first == second
    assert len(built) == 1


def test_an_etag_and_if_none_match_give_a_304(published: Verdict) -> None:
    for url in _urls(published):
        response = Client().get(url)
        assert response["ETag"] == f'"{hashlib.sha256(response.content).hexdigest()}"'
        assert "public" in response["Cache-Control"]
        assert "max-age=60" in response["Cache-Control"]

        unchanged = Client().get(url, HTTP_IF_NONE_MATCH=response["ETag"])

        assert unchanged.status_code == 304, url
        assert unchanged.content == b""
        assert unchanged["ETag"] == response["ETag"]
        assert Client().get(url, HTTP_IF_NONE_MATCH='"something else"').status_code == 200


def test_the_arbiters_preview_is_not_kept_by_shared_caches(arbiter: Any, decided: tuple[Dispute, Verdict]) -> None:
    client = Client()
    client.force_login(arbiter)
    for url in _urls(decided[1]):
        response = client.get(url)

        assert response.status_code == 200, url
        assert "private" in response["Cache-Control"]
        assert "no-cache" in response["Cache-Control"]
        assert "public" not in response["Cache-Control"]


def test_both_routes_share_one_rate_limit(published: Verdict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"verdict-bundle": "3/min"})
    api, web = _urls(published)
    client = Client()
    assert [client.get(url).status_code for url in (api, web, api)] == [200, 200, 200]

    for url in (web, api):
        refused = client.get(url)

        assert refused.status_code == 429, url
        assert refused["Content-Type"] == "application/json"
        assert refused.json()["code"] == "throttled"
        assert "throttled" in refused.json()["detail"]
        assert 0 < int(refused["Retry-After"]) <= 60


def test_the_bundle_proves_the_log_extends_each_receipts_checkpoint(published: Verdict) -> None:
    data = Client().get(_urls(published)[0]).content

    checks = verify_bundle(data)

    assert all_ok(checks), [c for c in checks if not c.ok]
    receipts = published.bundle_parts["receipts"]
    assert receipts
    proofs = json.loads(_member(data, "consistency.json"))["proofs"]
    tree_size = json.loads(_member(data, "log.json"))["tree_size"]
    for receipt in receipts:
        assert proofs[receipt["commitment"]]["first"] == receipt["log"]["tree_size"]
        assert proofs[receipt["commitment"]]["second"] == tree_size
        assert any(c.name == f"log consistency {receipt['commitment'][:16]}" and c.ok for c in checks)


def test_a_log_key_rotation_keeps_the_bundle_under_the_verdicts_own_key(published: Verdict) -> None:
    api, web = _urls(published)
    first = Client().get(api)
    assert first.status_code == 200
    old_key = published.bundle_parts["log_vkey"]

    # when the log key is rotated and the log grows, with checkpoints signed by the new key
    keys.key_rotate(purpose=SigningKey.Purpose.LOG)
    for n in range(3):
        timestamp_services.timestamp_digest(digest=hashlib.sha256(f"after the rotation {n}".encode()).digest())
    newer = timestamp_services.checkpoint_publish()  # what the beat schedule does
    assert keys.log_verifier_key(newer.key) != old_key

    # then the bundle is still served, under the latest checkpoint of the verdict's own (now retired) key
    again = [Client().get(url) for url in (api, web)]
    assert [response.status_code for response in again] == [200, 200]
    for response in again:
        data = response.content
        assert _member(data, "keys/log.vkey").decode() == old_key + "\n"
        assert json.loads(_member(data, "log.json"))["tree_size"] < newer.size
        checks = verify_bundle(data)  # with the keys the bundle carries
        assert all_ok(checks), [c for c in checks if not c.ok]
        anchored = verify_bundle(data, log_vkey=old_key, verdict_keys=published.bundle_parts["verdict_keys"])
        assert all_ok(anchored), [c for c in anchored if not c.ok]
    assert again[0].content == first.content


def test_no_checkpoint_by_a_retired_log_key_covering_the_verdict_is_a_503(published: Verdict) -> None:
    # given a verdict no checkpoint covers yet (its first download would sign one), and then a rotation
    checkpoints = Checkpoint.objects.count()
    keys.key_rotate(purpose=SigningKey.Purpose.LOG)

    response = Client().get(_urls(published)[0])

    # then nothing is signed with the retired key nor the new one, and the reason is given
    assert response.status_code == 503
    assert response.json()["code"] == "log_integrity"
    assert "retired log key" in response.json()["detail"]
    assert Checkpoint.objects.count() == checkpoints


def test_the_cache_holds_one_zip_per_verdict_replaced_with_the_checkpoint(published: Verdict) -> None:
    key = f"verdict-bundle:{bundle.BUNDLE_FORMAT}:{published.pk}"
    first = verdict_services.verdict_bundle(verdict=published)
    cached = cache.get(key)
    assert cached[2] == first

    timestamp_services.timestamp_digest(digest=hashlib.sha256(b"another commitment").digest())
    newer = timestamp_services.checkpoint_publish()
    second = verdict_services.verdict_bundle(verdict=published)

    assert second != first
    assert cache.get(key) == (newer.pk, newer.size, second)


def _member(data: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(name)
