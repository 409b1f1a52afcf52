"""A hostile model in its owner's stress test, run by the service the gpu worker calls.

The owner controls both the model and the evidence: the model runs in the sandbox child
(`verification.methods.stress.run_stress_test_reporting`). Whatever the test ends in, no secret may
appear in its failure reason, phase, table, the API's answers or the logs; no file may change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
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
from verification.models import StressTest
from verification.services import stress as stress_services

pytestmark = [pytest.mark.django_db, pytest.mark.slow]
Build = Callable[[Secrets, Untouched, Path], tuple[bytes, tuple[str, ...]]]


def _leak(builder: Callable[[str, int], bytes], secret: str) -> Build:
    def build(secrets: Secrets, untouched: Untouched, outside: Path) -> tuple[bytes, tuple[str, ...]]:
        target = secrets[secret]
        return builder(target.path, target.size), (target.path,)

    return build


def _writes(secrets: Secrets, untouched: Untouched, outside: Path) -> tuple[bytes, tuple[str, ...]]:
    targets = [
        (untouched.plant(outside / "zz_hostile_planted.txt"), b"zz-hostile planted"),
        (untouched.plant(site_packages_pth()), PTH_PAYLOAD),
        (untouched.plant(ROOT / "zz_hostile_planted.txt"), b"zz-hostile planted"),
        (untouched.plant(Path(secrets["log key"].path)), attacks.MARKER.encode().ljust(64, b"!")),
    ]
    paths = tuple(str(path) for path, _ in targets)
    return attacks.write_files(*((str(path), payload) for path, payload in targets)), paths


CASES: dict[str, Build] = {
    "says-its-own-words": lambda secrets, untouched, outside: (attacks.answers("says"), ()),
    "raise-verdict-key": _leak(attacks.read_and_raise, "verdict key"),
    "print-etc-passwd": _leak(lambda p, n: attacks.read_and_print(p, n, fail=True), "/etc/passwd"),
    "writes": _writes,
    "spin": lambda secrets, untouched, outside: (attacks.spin(), ()),
}

LOOPING = {"spin"}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_model_fails_its_stress_test_without_a_trace(  # type: ignore[no-untyped-def]
    case: str,
    owner,
    data_dir: Path,
    secrets: Secrets,
    untouched: Untouched,
    outside: Path,
    heard: Heard,
    request: pytest.FixtureRequest,
) -> None:
    if case in LOOPING:  # the others run under the service's own limits: a short one could end them early
        request.getfixturevalue("short_timeouts")
    artifact, paths = CASES[case](secrets, untouched, outside)
    model = registered_row(owner, f"hostile-{case}", artifact)
    ownership_services.evidence_generate(model=model, count=10)
    started = stress_services.stress_test_start(owner=owner, model=model, thefts=["copy"], panel=PANEL)

    stress_services.stress_test_execute(stress_test_id=started.pk, task_id=f"hostile-{case}")

    stress_test = StressTest.objects.get(pk=started.pk)
    assert stress_test.state == StressTest.State.FAILED, (stress_test.state, stress_test.failure_reason)
    assert_clean_sentence(stress_test.failure_reason, attack_paths=paths)
    client = APIClient()
    client.force_authenticate(owner)
    signed_and_stored(
        secrets,
        stress_api=client.get(f"/api/v1/stress-tests/{stress_test.public_id}").content,
        stress_list_api=client.get("/api/v1/stress-tests/").content,
        logs=heard.text(),
    )
    untouched.check()
    assert_sandbox_still_works()


def test_a_benign_model_is_stress_tested(owner, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The control: the stress test reaches the model under the sandbox's limits (else the cases above pass idly)."""
    model = registered_row(owner, "benign", attacks.benign())
    ownership_services.evidence_generate(model=model, count=10)
    started = stress_services.stress_test_start(owner=owner, model=model, thefts=["copy"], panel=PANEL)

    stress_services.stress_test_execute(stress_test_id=started.pk, task_id="benign")

    stress_test = StressTest.objects.get(pk=started.pk)
    assert stress_test.state == StressTest.State.DONE, stress_test.failure_reason
