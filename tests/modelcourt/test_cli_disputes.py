"""`modelcourt dispute` and `modelcourt verdict` against the real service (a live server in this process).

The dispute is run by calling the service in the test, as the worker would: the queued task is recorded,
not sent to a broker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from rest_framework.authtoken.models import Token

from modelcourt import cli
from modelcourt.bundle import all_ok, verify_bundle
from modelcourt.cli import main
from ownership import services as ownership_services
from ownership.roles import Role, role_grant
from tests.ownership.model_files import digits_mlp, torchscript_file
from verification.methods.datasets import digits_task
from verification.methods.panels import train_panel
from verification.models import Dispute
from verification.services import disputes as dispute_services
from verification.services import verdicts as verdict_services

pytestmark = pytest.mark.django_db(transaction=True)
PANEL = "cli-digits"


@pytest.fixture(scope="module")
def panel_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with a tiny, quickly trained digits panel: the CLI is under test here, not the statistics."""
    root = tmp_path_factory.mktemp("data")
    train_panel(digits_task(0), size=4, seed=1, epochs=5).save(root / "panels" / "installed" / PANEL)
    return root


@pytest.fixture
def data_dir(panel_root: Path) -> Iterator[Path]:
    with override_settings(DATA_DIR=panel_root):
        yield panel_root


def _artifact(tmp_path: Path, seed: int) -> Path:
    return torchscript_file(tmp_path / f"digits-{seed}.pt", digits_mlp(seed))


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Dispute ids the service queued; nothing reaches a broker (on_commit runs in these tests)."""
    ids: list[int] = []
    monkeypatch.setattr("verification.tasks.verification_run_task", SimpleNamespace(delay=ids.append))
    return ids


class WorkerBetweenPolls:
    """Stands in for `time` in the CLI: its first sleep is when the worker runs the queued dispute.

    The run happens in the test's thread while the CLI waits, never beside a request: the in-memory
    SQLite test database refuses a reader and a writer at once ("database table is locked").
    """

    monotonic = staticmethod(time.monotonic)

    def __init__(self, dispute_ids: list[int]) -> None:
        self.dispute_ids = dispute_ids
        self.sleeps = 0

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        while self.dispute_ids:
            dispute_services.verification_run_execute(dispute_id=self.dispute_ids.pop(0), task_id="cli-test")


@pytest.fixture
def arbiter_cli(live_server: Any, arbiter) -> list[str]:  # type: ignore[no-untyped-def]
    return ["--url", live_server.url, "--token", Token.objects.create(user=arbiter).key]


def test_file_follow_and_fetch_a_verdict_through_the_cli(
    arbiter_cli: list[str],
    owner,
    data_dir: Path,
    queued: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # type: ignore[no-untyped-def]
    claimant = ownership_services.model_register(
        owner=owner,
        name="digits",
        task="digits",
        input_shape=[64],
        num_classes=10,
        artifact=SimpleUploadedFile("digits.pt", _artifact(tmp_path, 0).read_bytes()),
    )
    ownership_services.evidence_generate(model=claimant, count=40)
    suspect = _artifact(tmp_path, 1)

    # file
    status = main([*arbiter_cli, "dispute", "file", "--claimant", str(claimant.public_id), "--methods", "watermark",
                   "--suspect-file", str(suspect), "--panel", PANEL, "--alpha", "0.01",
                   "--title", "cli theft?"])  # fmt: skip
    assert status == 0
    filed = json.loads(capsys.readouterr().out)
    assert (filed["state"], filed["title"], filed["alpha"]) == ("queued", "cli theft?", 0.01)
    assert filed["suspect"]["kind"] == "artifact"
    assert queued == [Dispute.objects.get(public_id=filed["id"]).pk]  # on commit, as the worker would get it

    # status, then follow the run to its end
    assert main([*arbiter_cli, "dispute", "status", filed["id"]]) == 0
    out = capsys.readouterr().out
    assert "state: queued" in out
    assert "progress: 0%" in out
    worker = WorkerBetweenPolls(queued)
    monkeypatch.setattr(cli, "time", worker)
    status = main([*arbiter_cli, "dispute", "status", filed["id"], "--wait", "--timeout", "120"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert worker.sleeps == 1
    progress = [line for line in out.splitlines() if line.startswith("[")]
    assert progress == ["[  0%] queued: waiting for a GPU worker", "[100%] decided: decided"]
    assert "state: decided" in out
    assert "progress: 100%" in out
    verdict = Dispute.objects.get(public_id=filed["id"]).verdict
    verdict_id, outcome = verdict.public_id, verdict.outcome

    # the arbiter reads the verdict before publishing it; then anyone gets it and its bundle
    assert main([*arbiter_cli, "verdict", "get", str(verdict_id)]) == 0
    out = capsys.readouterr().out
    assert outcome in out
    assert "not yet" in out
    verdict_services.verdict_publish(dispute=Dispute.objects.get(public_id=filed["id"]))
    bundle = tmp_path / "verdict.zip"
    assert main(["--url", arbiter_cli[1], "verdict", "get", str(verdict_id), "--bundle", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert f"verdict {verdict_id}: {outcome}" in out
    assert "test watermark" in out
    assert "K = 40" in out
    assert f"bundle: {bundle}" in out
    checks = verify_bundle(bundle.read_bytes())
    assert all_ok(checks), [c for c in checks if not c.ok]
    trust_file = str(tmp_path / "trust.json")
    assert main(["verify", str(bundle), "--trust-file", trust_file]) == 1  # nothing pinned: no anchor, no pass
    capsys.readouterr()
    assert main(["trust", "pin", arbiter_cli[1], "--trust-file", trust_file]) == 0
    capsys.readouterr()
    assert main(["verify", str(bundle), "--trust-file", trust_file]) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_dispute_errors_are_one_line(
    arbiter_cli: list[str], owner, queued: list[int], capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    status = main([*arbiter_cli, "dispute", "file", "--claimant", "0b0b0b0b-0000-4000-8000-000000000000",
                   "--methods", "watermark", "--suspect-url", "https://models.example.org/predict"])  # fmt: skip

    assert status == 1
    err = capsys.readouterr().err
    assert err.startswith("error (400): claimant_model: no registered model")
    assert err.count("\n") == 1
    assert queued == []

    assert main([*arbiter_cli, "dispute", "status", "not-a-dispute"]) == 1
    assert capsys.readouterr().err.startswith("error (404): no such dispute")
    assert main([*arbiter_cli[:2], "verdict", "get", "0b0b0b0b-0000-4000-8000-000000000000"]) == 1
    assert capsys.readouterr().err == "error (404): no such verdict\n"


def test_an_owner_cannot_file_disputes(live_server: Any, owner, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    token = Token.objects.create(user=owner).key

    status = main(["--url", live_server.url, "--token", token, "dispute", "file", "--claimant", "x",
                   "--methods", "watermark", "--suspect-model", "y"])  # fmt: skip

    assert status == 1
    assert capsys.readouterr().err == "error (403): this operation needs the arbiter role\n"
    role_grant(user=owner, role=Role.ARBITER)  # and the role is all it takes
    assert main(["--url", live_server.url, "--token", token, "dispute", "status", "x"]) == 1
    assert capsys.readouterr().err.startswith("error (404)")


def test_an_owner_requests_a_dispute_through_the_cli(
    live_server: Any, owner, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from django.utils import timezone

    from ownership.models import RegisteredModel
    from verification.models import DisputeRequest

    model = RegisteredModel.objects.create(
        owner=owner, name="digits", input_shape=[64], num_classes=10, artifact_format="torchscript",
        artifact_size=1, model_digest="ab" * 32, file_digests={}, created_at=timezone.now(),
    )  # fmt: skip
    ownership_services.evidence_generate(model=model, count=10)
    owner_cli = ["--url", live_server.url, "--token", Token.objects.create(user=owner).key]

    status = main([*owner_cli, "dispute", "request", "--claimant", str(model.public_id), "--methods", "watermark",
                   "--suspect-url", "https://models.example.org/predict",
                   "--statement", "seen on a marketplace"])  # fmt: skip

    assert status == 0
    made = json.loads(capsys.readouterr().out)
    assert (made["state"], made["statement"]) == ("open", "seen on a marketplace")
    assert made["suspect"]["url"] == "https://models.example.org/predict"
    assert DisputeRequest.objects.get().public_id.hex == made["id"].replace("-", "")

    status = main([*owner_cli, "dispute", "request", "--claimant", str(model.public_id), "--methods", "fingerprint",
                   "--suspect-url", "https://models.example.org/predict"])  # fmt: skip
    assert status == 1
    assert capsys.readouterr().err.startswith("error (400): the claimant's registration has no fingerprint evidence")
