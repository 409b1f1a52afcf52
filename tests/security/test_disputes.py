"""A hostile suspect in a dispute: filed as an uploaded artifact, run by the service the gpu worker calls.

The run loads the suspect in the sandbox child (`verification.methods.runner.run_methods`). Whatever it
ends in (failed, or decided with a verdict), no secret may appear in the failure reason, the run's
error, the signed verdict, its report or bundle, the API's answers or the logs; no file may change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from ownership import services as ownership_services
from tests.security import attacks
from tests.security.conftest import (
    PANEL,
    PTH_PAYLOAD,
    ROOT,
    Heard,
    Secrets,
    Untouched,
    assert_clean_sentence,
    assert_sandbox_still_works,
    registered_row,
    signed_and_stored,
    site_packages_pth,
)
from verification.models import Dispute, Verdict
from verification.services import disputes as dispute_services
from verification.services import verdicts as verdict_services

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def _leak(builder: Callable[[str, int], bytes], secret: str) -> Callable[..., tuple[bytes, tuple[str, ...]]]:
    def build(secrets: Secrets, untouched: Untouched, outside: Path) -> tuple[bytes, tuple[str, ...]]:
        target = secrets[secret]
        return builder(target.path, target.size), (target.path,)

    return build


def _writes(secrets: Secrets, untouched: Untouched, outside: Path) -> tuple[bytes, tuple[str, ...]]:
    targets = [
        (untouched.plant(outside / "zz_hostile_planted.txt"), b"zz-hostile planted"),
        (untouched.plant(site_packages_pth()), PTH_PAYLOAD),
        (untouched.plant(ROOT / "zz_hostile_planted.txt"), b"zz-hostile planted"),
        (untouched.plant(Path(secrets["verdict key"].path)), attacks.MARKER.encode().ljust(64, b"!")),
    ]
    return attacks.write_files(*((str(path), payload) for path, payload in targets)), tuple(
        str(path) for path, _ in targets
    )


def _spin(secrets: Secrets, untouched: Untouched, outside: Path) -> tuple[bytes, tuple[str, ...]]:
    return attacks.spin(), ()


CASES: dict[str, Callable[..., tuple[bytes, tuple[str, ...]]]] = {
    "says-its-own-words": lambda secrets, untouched, outside: (attacks.answers("says"), ()),
    "raise-verdict-key": _leak(attacks.read_and_raise, "verdict key"),
    "print-secret-key-file": _leak(lambda p, n: attacks.read_and_print(p, n, fail=True), "secret key file"),
    # behaves on zeros (so it could have passed registration); on the claimant's triggers it answers the key
    "scores-verdict-key": _leak(attacks.read_into_scores, "verdict key"),
    "writes": _writes,
    "spin": _spin,
}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return json.dumps(value, default=repr) if not isinstance(value, str) else value


def _verdict_places(verdict: Verdict, client: APIClient) -> dict[str, Any]:
    places: dict[str, Any] = {
        "verdict_predicate": verdict.predicate,
        "verdict_envelope": bytes(verdict.envelope),
        "verdict_attachments": verdict.attachments,
        "verdict_api": client.get(f"/api/v1/verdicts/{verdict.public_id}").content,
    }
    try:
        places["bundle"] = verdict_services.verdict_bundle(verdict=verdict)
    except Exception as exc:  # a bundle that cannot be built is not what is tested here
        places["bundle_error"] = repr(exc)
    return places


LOOPING = {"spin"}


def _file_and_run(arbiter, claimant, evidence_set, suspect: bytes, title: str) -> Dispute:  # type: ignore[no-untyped-def]
    dispute = dispute_services.dispute_file(
        arbiter=arbiter,
        title=title,
        claimant_model=claimant,
        methods=["watermark"],
        evidence_sets=[evidence_set],
        suspect_file=SimpleUploadedFile("suspect.pt", suspect, content_type="application/octet-stream"),
        panel=PANEL,
    )
    dispute_services.verification_run_execute(dispute_id=dispute.pk, task_id=title)
    dispute.refresh_from_db()
    return dispute


def _nothing_leaked(
    dispute: Dispute, arbiter, paths: tuple[str, ...], secrets: Secrets, heard: Heard
) -> Verdict | None:  # type: ignore[no-untyped-def]
    """The run ended failed (in our words) or decided (our words only), and no secret is anywhere."""
    client = APIClient()
    client.force_authenticate(arbiter)
    places: dict[str, Any] = {"dispute_api": client.get(f"/api/v1/disputes/{dispute.public_id}").content}
    assert dispute.state in (Dispute.State.FAILED, Dispute.State.DECIDED), (dispute.state, dispute.failure_reason)
    verdict = None
    if dispute.state == Dispute.State.FAILED:
        assert_clean_sentence(dispute.failure_reason, attack_paths=paths)
    else:
        verdict = Verdict.objects.get(dispute=dispute)
        places |= _verdict_places(verdict, client)
        for where, value in places.items():  # a signed verdict carries our words only
            assert attacks.MARKER not in _text(value), f"the model's own words are in {where}"
    signed_and_stored(secrets, **places, logs=heard.text())
    return verdict


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_suspect_leaves_no_secret_and_no_file_behind(  # type: ignore[no-untyped-def]
    case: str,
    owner,
    arbiter,
    data_dir: Path,
    secrets: Secrets,
    untouched: Untouched,
    outside: Path,
    heard: Heard,
    request: pytest.FixtureRequest,
) -> None:
    if case in LOOPING:  # the others run under the service's own limits: a short one could end them early
        request.getfixturevalue("short_timeouts")
    # the claimant's own model is asked for its evidence too (binding): here it is the benign one
    claimant = registered_row(owner, "digits", attacks.benign())
    evidence_set, _ = ownership_services.evidence_generate(model=claimant, count=10)
    artifact, paths = CASES[case](secrets, untouched, outside)
    dispute = _file_and_run(arbiter, claimant, evidence_set, artifact, f"hostile {case}")
    _nothing_leaked(dispute, arbiter, paths, secrets, heard)
    untouched.check()
    assert_sandbox_still_works()


def test_a_benign_suspect_is_decided(owner, arbiter, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The control: the run reaches the suspect under the sandbox's limits (else every case above passes idly)."""
    claimant = registered_row(owner, "digits", attacks.benign())
    evidence_set, _ = ownership_services.evidence_generate(model=claimant, count=10)
    dispute = dispute_services.dispute_file(
        arbiter=arbiter,
        title="benign",
        claimant_model=claimant,
        methods=["watermark"],
        evidence_sets=[evidence_set],
        suspect_file=SimpleUploadedFile("suspect.pt", attacks.benign(), content_type="application/octet-stream"),
        panel=PANEL,
    )

    dispute_services.verification_run_execute(dispute_id=dispute.pk, task_id="benign")

    dispute.refresh_from_db()
    assert dispute.state == Dispute.State.DECIDED, dispute.failure_reason


@pytest.mark.parametrize("case", [c for c in CASES if c not in LOOPING])
def test_a_hostile_claimant_model_leaves_no_secret_and_no_file_behind(  # type: ignore[no-untyped-def]
    case: str,
    owner,
    arbiter,
    data_dir: Path,
    secrets: Secrets,
    untouched: Untouched,
    outside: Path,
    heard: Heard,
) -> None:
    """Binding runs the claimant's own registered model on its evidence: that model is as hostile as any suspect."""
    artifact, paths = CASES[case](secrets, untouched, outside)
    claimant = registered_row(owner, "digits", artifact)
    evidence_set, _ = ownership_services.evidence_generate(model=claimant, count=10)
    dispute = _file_and_run(arbiter, claimant, evidence_set, attacks.benign(), f"hostile claimant {case}")
    verdict = _nothing_leaked(dispute, arbiter, paths, secrets, heard)
    # a model that does not give its claimed labels never confirms
    assert verdict is None or verdict.outcome != "ownership_confirmed"
    untouched.check()
    assert_sandbox_still_works()
