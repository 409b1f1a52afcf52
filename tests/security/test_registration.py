"""Registration of hostile artifacts through the API and the validation the cpu worker runs.

Each case uploads one artifact (`POST /api/v1/models/`), runs the sandbox check the worker's task runs
(`ownership.services.model_validate`), reads the registration back over the API, and asserts what must
not happen: a secret in any answer, row or log line; a file written in the checkout, the data folders,
outside them or in site-packages; a sentence of the model's own; a dead or stuck caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from ownership import services as ownership_services
from ownership.models import RegisteredModel
from tests.security import attacks
from tests.security.conftest import (
    PTH_PAYLOAD,
    Heard,
    Secrets,
    Untouched,
    assert_clean_sentence,
    assert_sandbox_still_works,
    site_packages_pth,
)

pytestmark = pytest.mark.django_db

REJECTED = "rejected"
ACTIVE = "active"


@dataclass(frozen=True)
class Attack:
    """An artifact (bytes, file name), the paths it names, and the state registration must end in (None: any)."""

    data: bytes
    filename: str
    paths: tuple[str, ...]
    expected: str | None


@dataclass
class Registration:
    status: int
    bodies: list[bytes]
    model: RegisteredModel | None

    @property
    def state(self) -> str:
        if self.model is not None:
            return self.model.state
        return REJECTED if 400 <= self.status < 500 else f"http {self.status}"

    @property
    def reason(self) -> str:
        if self.model is not None:
            return self.model.rejection_reason
        import json

        return str(json.loads(self.bodies[0]).get("detail", ""))


def _register(client: APIClient, owner, attack: Attack, name: str) -> Registration:  # type: ignore[no-untyped-def]
    upload = SimpleUploadedFile(attack.filename, attack.data, content_type="application/octet-stream")
    response = client.post(
        "/api/v1/models/",
        {"name": name, "task": "digits", "input_shape": "[64]", "num_classes": 10, "artifact": upload},
        format="multipart",
    )
    assert response.status_code < 500, response.content
    bodies = [response.content]
    model = RegisteredModel.objects.filter(owner=owner, name=name).first()
    if model is not None and model.state == RegisteredModel.State.VALIDATING:
        ownership_services.model_validate(model_id=model.pk)  # what the cpu worker's task runs
        model.refresh_from_db()
    if model is not None:
        detail = client.get(f"/api/v1/models/{model.public_id}")
        assert detail.status_code == 200, detail.content
        bodies += [detail.content, client.get("/api/v1/models/").content]
        # and the owner's pages, where a person reads the reason
        web = Client()
        web.force_login(owner)
        for page in (f"/owner/models/{model.public_id}/", "/owner/models/"):
            shown = web.get(page)
            assert shown.status_code == 200, page
            bodies.append(shown.content)
    return Registration(response.status_code, bodies, model)


def _leak(builder: Callable[[str, int], bytes], secret: str, expected: str | None = REJECTED):  # type: ignore[no-untyped-def]
    def build(secrets: Secrets, untouched: Untouched, outside: Path) -> Attack:
        target = secrets[secret]
        return Attack(builder(target.path, target.size), "model.pt", (target.path,), expected)

    return build


def _write(where: str):  # type: ignore[no-untyped-def]
    def build(secrets: Secrets, untouched: Untouched, outside: Path) -> Attack:
        from tests.security.conftest import ROOT

        if where == "checkout":
            path, payload = ROOT / "zz_hostile_planted.txt", b"zz-hostile planted"
        elif where == "outside":
            path, payload = outside / "zz_hostile_planted.txt", b"zz-hostile planted"
        elif where == "site-packages":
            path, payload = site_packages_pth(), PTH_PAYLOAD
        else:  # overwrite the verdict key in place
            path = Path(secrets["verdict key"].path)
            payload = attacks.MARKER.encode().ljust(64, b"!")
        untouched.plant(path)
        return Attack(attacks.write_files((str(path), payload)), "model.pt", (str(path),), None)

    return build


def _plain(builder: Callable[[], bytes], filename: str = "model.pt"):  # type: ignore[no-untyped-def]
    def build(secrets: Secrets, untouched: Untouched, outside: Path) -> Attack:
        return Attack(builder(), filename, (), REJECTED)

    return build


def _onnx_external(secret: str):  # type: ignore[no-untyped-def]
    def build(secrets: Secrets, untouched: Untouched, outside: Path) -> Attack:
        target = secrets[secret]
        return Attack(attacks.onnx_external_data(target.path, target.size), "model.onnx", (target.path,), REJECTED)

    return build


CASES = {
    # no secret: the model's own words in its error, for whoever reads the reason
    "says-its-own-words": _plain(lambda: attacks.answers("says")),
    # reads, echoed through an exception
    "raise-verdict-key": _leak(attacks.read_and_raise, "verdict key"),
    "raise-secret-key-file": _leak(attacks.read_and_raise, "secret key file"),
    "raise-etc-passwd": _leak(attacks.read_and_raise, "/etc/passwd"),
    "raise-escrow-keys": _leak(attacks.read_and_raise, "escrow keys"),
    # reads, printed to stdout and stderr, then a failure (the child's output tail is reported on failures)
    "print-etc-passwd": _leak(lambda p, n: attacks.read_and_print(p, n, fail=True), "/etc/passwd"),
    # reads and prints, then answers well: the read itself must fail
    "print-and-answer-secret-key-file": _leak(lambda p, n: attacks.read_and_print(p, n, fail=False), "secret key file"),
    # answers well on zeros and leaks only on other inputs: registration cannot tell (the sandbox tests can)
    "scores-verdict-key": _leak(attacks.read_into_scores, "verdict key", expected=None),
    # writes through a shared mapping
    "write-in-checkout": _write("checkout"),
    "write-outside": _write("outside"),
    "write-pth-in-site-packages": _write("site-packages"),
    "overwrite-verdict-key": _write("key"),
    # resources
    "spin": _plain(attacks.spin),
    "hog": _plain(attacks.hog),
    # bad answers (the rest of the interface checks: tests/ownership)
    "nan": _plain(lambda: attacks.answers("nan")),
    "inf": _plain(lambda: attacks.answers("inf")),
    "too-few-classes": _plain(lambda: attacks.answers("too_few_classes")),
    "batch-dropped": _plain(lambda: attacks.answers("batch_dropped")),
    # ONNX: what the format can express
    "onnx-external-data-verdict-key": _onnx_external("verdict key"),
    "onnx-nan": _plain(lambda: attacks.onnx_answers("nan"), "model.onnx"),
    "onnx-hog": _plain(attacks.onnx_hog, "model.onnx"),
    "onnx-spin": _plain(attacks.onnx_spin, "model.onnx"),
}


@pytest.fixture
def owner_client(owner) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(owner)
    return client


LOOPING = {"spin", "onnx-spin"}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_artifact_is_refused_or_contained_without_a_trace(  # type: ignore[no-untyped-def]
    case: str,
    owner,
    owner_client: APIClient,
    secrets: Secrets,
    untouched: Untouched,
    outside: Path,
    heard: Heard,
    request: pytest.FixtureRequest,
) -> None:
    if case in LOOPING:  # the others run under the service's own limits: a short one could end them early
        request.getfixturevalue("short_timeouts")
    attack = CASES[case](secrets, untouched, outside)

    registration = _register(owner_client, owner, attack, name=f"hostile-{case}")

    if attack.expected is not None:
        assert registration.state == attack.expected, (registration.state, registration.reason)
    if registration.state == REJECTED:
        assert_clean_sentence(registration.reason, attack_paths=attack.paths)
    row = RegisteredModel.objects.filter(pk=registration.model.pk).values().first() if registration.model else None
    shown = b"\n".join(registration.bodies)
    assert attacks.MARKER.encode() not in shown, "the model's own words reached an answer or a page"
    secrets.assert_absent(reason=registration.reason, api_answers_and_pages=shown, row=row, logs=heard.text())
    untouched.check()
    assert_sandbox_still_works()


def test_a_benign_registration_still_succeeds_after_the_attacks(owner, owner_client: APIClient) -> None:  # type: ignore[no-untyped-def]
    registration = _register(owner_client, owner, Attack(attacks.benign(), "model.pt", (), ACTIVE), name="benign")

    assert registration.state == ACTIVE, registration.reason
