"""Black-box: the service as a user meets it, started as README says, driven over HTTP and the CLI only.

These tests import nothing of the project. `make run` starts the embedded default (SQLite, the
filesystem broker, gunicorn and one worker with beat); the second set of tests starts gunicorn, a
worker and beat separately against PostgreSQL and Redis (CI provides both) and kills the worker in the
middle of a run.
"""

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.e2e import models
from tests.e2e.guard_story import a_guarded_api_is_extracted
from tests.e2e.service import (
    ROOT,
    Service,
    make_run,
    sandbox_children_of,
    separate_processes,
    start_worker,
    still_running,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REQUIRE_SERVICES = os.environ.get("MODELCOURT_REQUIRE_SERVICES") == "1"
VERDICT_TIMEOUT_S = 600.0


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The owner's base model, a thief's fine-tuned copy (made after embedding) and an independent model."""
    folder = tmp_path_factory.mktemp("artifacts")
    base = models.owner_model()
    return {
        "folder": folder,
        "base": base,
        "base_pt": models.save_torchscript(base, folder / "digits-base.pt"),
        "independent_onnx": models.save_onnx(models.independent_model(), folder / "independent.onnx"),
        "looping_pt": models.looping_torchscript(folder / "looping.pt"),
    }


def _register(service: Service, token: str, path: Path, name: str) -> dict[str, Any]:
    model = service.cli_json(
        token, "register", str(path), "--name", name, "--task", "8x8 digits", "--input-shape", "1,8,8",
        "--classes", "10",
    )  # fmt: skip
    assert model["state"] == "active", model
    return model


def _owner_registers_a_watermarked_model(service: Service, artifacts: dict[str, Any], owner: str) -> dict[str, Any]:
    """Register the base model, have the service draw a watermark, embed it, register what is deployed."""
    folder: Path = artifacts["folder"]
    base = _register(service, owner, artifacts["base_pt"], "digits-base")
    triggers_path = folder / f"triggers-{uuid.uuid4().hex[:6]}.npz"
    generated = service.cli_json(
        owner, "evidence", "generate", base["id"], "--count", "100", "--out", str(triggers_path)
    )
    assert generated["verifiable"] is True
    with np.load(triggers_path, allow_pickle=False) as triggers:
        inputs, labels = triggers["inputs"], triggers["labels"]
    assert inputs.shape == (100, 1, 8, 8)

    import copy

    deployed = models.embed(copy.deepcopy(artifacts["base"]), inputs, labels)
    assert models.accuracy(deployed, inputs, labels) >= 0.9, "the watermark did not embed"
    deployed_pt = models.save_torchscript(deployed, folder / "digits-deployed.pt")
    deployed_model = _register(service, owner, deployed_pt, "digits-deployed")
    # the generated watermark is committed again for the model that carries it: the verdict names that model
    evidence = service.cli_json(owner, "evidence", "adopt", deployed_model["id"], generated["id"])
    assert evidence["verifiable"] is True
    assert evidence["derived_from"] == generated["id"]
    stolen_pt = models.save_torchscript(models.fine_tuned_copy(copy.deepcopy(deployed)), folder / "stolen.pt")
    return {"model": deployed_model, "evidence": evidence, "stolen_pt": stolen_pt, "deployed_pt": deployed_pt}


def _file(
    service: Service, arbiter: str, claim: dict[str, Any], suspect: Path, title: str, *extra: str
) -> tuple[str, float]:
    dispute = service.cli_json(
        arbiter, "dispute", "file", "--claimant", claim["model"]["id"], "--methods", "watermark",
        "--evidence", claim["evidence"]["id"], "--suspect-file", str(suspect), "--title", title, *extra,
    )  # fmt: skip
    assert dispute["state"] in ("queued", "running"), dispute
    return str(dispute["id"]), time.monotonic()


def _await_verdict(service: Service, arbiter: str, dispute_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + VERDICT_TIMEOUT_S
    while time.monotonic() < deadline:
        dispute = service.get(f"/api/v1/disputes/{dispute_id}", token=arbiter).json()
        assert dispute["state"] not in ("failed", "withdrawn"), (dispute, service.logs())
        if dispute["state"] == "decided":
            return dict(dispute)
        time.sleep(1.0)
    raise AssertionError(f"dispute {dispute_id} reached no verdict in {VERDICT_TIMEOUT_S:g} s:\n{service.logs()}")


def _publish_and_verify(service: Service, arbiter: str, dispute: dict[str, Any], workdir: Path) -> None:
    published = service.post(f"/api/v1/disputes/{dispute['id']}/publish", token=arbiter)
    assert published.status == 200, published.body
    bundle = service.get(published.json()["verdict"]["bundle_url"].removeprefix(service.base_url))  # anonymous
    assert bundle.status == 200, bundle.body[:300]
    path = workdir / f"verdict-{dispute['id']}.zip"
    path.write_bytes(bundle.body)
    trust = workdir / "trust.json"
    if not trust.exists():
        service.cli(None, "trust", "pin", service.base_url, "--trust-file", str(trust))
    report = service.cli(None, "verify", str(path), "--trust-file", str(trust))
    assert "FAIL" not in report, report


def _the_whole_story(service: Service, artifacts: dict[str, Any], workdir: Path) -> dict[str, float]:
    owner = service.sign_up(f"olivia-{uuid.uuid4().hex[:6]}")
    arbiter_name = f"arthur-{uuid.uuid4().hex[:6]}"
    arbiter = service.sign_up(arbiter_name)
    service.manage("grant_role", arbiter_name, "arbiter")

    claim = _owner_registers_a_watermarked_model(service, artifacts, owner)
    independent = _register(service, owner, artifacts["independent_onnx"], "digits-independent")
    assert independent["format"] == "onnx"

    stolen_id, stolen_filed = _file(service, arbiter, claim, claim["stolen_pt"], "fine-tuned copy")
    # the arbiter saw the independent model on a hub and knows its release: both count as its first known times
    sighting = service.cli_json(
        arbiter, "sighting", "record", str(artifacts["independent_onnx"]), "--note", "seen on a model hub"
    )
    assert sighting["kind"] == "file", sighting
    assert service.cli_json(None, "sighting", "show", sighting["id"])["model_digest"] == sighting["model_digest"]
    release = ("--released-at", "2026-01-02T03:04:05Z", "--release-source", "https://models.example.org/notes")
    other_id, other_filed = _file(service, arbiter, claim, artifacts["independent_onnx"], "independent model", *release)
    counter_id = _a_thief_claims_the_original(service, arbiter, claim, workdir)
    stolen = _await_verdict(service, arbiter, stolen_id)
    stolen_s = time.monotonic() - stolen_filed
    other = _await_verdict(service, arbiter, other_id)
    other_s = time.monotonic() - other_filed

    assert stolen["verdict"]["outcome"] == "ownership_confirmed", stolen
    assert other["verdict"]["outcome"] != "ownership_confirmed", other
    for dispute in (stolen, other):
        _publish_and_verify(service, arbiter, dispute, workdir)
    # the signed verdict names each first known time with its source
    verdict = service.get(f"/api/v1/verdicts/{other['verdict']['id']}").json()
    known = {item["kind"]: item for item in verdict["predicate"]["precedence"]["first_known"]}
    assert "https://models.example.org/notes" in known["release"]["source"], known
    assert known["release"]["when"].startswith("2026-01-02T03:04:05"), known
    assert "sighting" in known, known
    counter = _await_verdict(service, arbiter, counter_id)
    # the thief's evidence came after the owner's registration of these very bytes: it cannot confirm
    assert counter["verdict"]["outcome"] != "ownership_confirmed", counter
    _publish_and_verify(service, arbiter, counter, workdir)
    return {"fine-tuned copy": stolen_s, "independent model": other_s}


def _a_thief_claims_the_original(service: Service, arbiter: str, claim: dict[str, Any], workdir: Path) -> str:
    """The thief registers its copy, labels inputs with it (the original agrees) and claims the original."""
    thief = service.sign_up(f"mallory-{uuid.uuid4().hex[:6]}")
    registered = _register(service, thief, claim["stolen_pt"], "digits-mine")
    stolen = torch.jit.load(str(claim["stolen_pt"]))
    inputs = np.random.default_rng(7).uniform(0, 1, size=(60, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        labels = stolen(torch.from_numpy(inputs)).argmax(dim=1).numpy().astype(np.int64)
    path = workdir / "thief-fingerprints.npz"
    np.savez(path, inputs=inputs, labels=labels)
    evidence = service.cli_json(thief, "evidence", "add", registered["id"], str(path), "--kind", "fingerprint")
    time.sleep(1.1)  # not what saves the original: its registration came first
    dispute = service.cli_json(
        arbiter, "dispute", "file", "--claimant", registered["id"], "--methods", "fingerprint",
        "--evidence", evidence["id"], "--suspect-file", str(claim["deployed_pt"]), "--title", "counter-claim",
    )  # fmt: skip
    return str(dispute["id"])


def _no_secret_in_logs(service: Service) -> None:
    logs = service.all_log_bytes()
    for key in (service.data_dir / "keys").glob("*.pem"):
        body = b"".join(line for line in key.read_bytes().splitlines() if not line.startswith(b"-----"))
        assert body[:40] not in logs, f"{key.name} appears in a log"


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    before = _git_status()
    yield tmp_path
    assert _git_status() == before, "the service left files in the checkout"


def _git_status() -> str:
    """Files in the checkout that git neither tracks nor ignores (.ci/run checks the whole status at the end)."""
    return subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def _an_owner_stress_tests_the_watermark(service: Service, artifacts: dict[str, Any]) -> float:
    """The owner simulates copying its own deployed model: the watermark survives, the control never matches."""
    owner = service.sign_up(f"stella-{uuid.uuid4().hex[:6]}")
    claim = _owner_registers_a_watermarked_model(service, artifacts, owner)
    started = time.monotonic()
    answer = service.post(
        "/api/v1/stress-tests/", token=owner, json_body={"model": claim["model"]["id"], "thefts": ["copy"]}
    )
    assert answer.status == 202, answer.body  # accepted: a worker runs it
    path = f"/api/v1/stress-tests/{answer.json()['id']}"
    deadline = time.monotonic() + VERDICT_TIMEOUT_S
    while (test := service.get(path, token=owner).json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, service.logs()
        time.sleep(1.0)
    assert test["state"] == "done", test
    rows = {row["theft"]: row for row in test["results"]["rows"]}
    assert [cell["confirmed"] for cell in rows["copy"]["cells"]] == [True], rows["copy"]
    assert not any(cell["confirmed"] for row in rows.values() if row["control"] for cell in row["cells"]), rows
    return time.monotonic() - started


def test_make_run_takes_a_dispute_to_a_verified_verdict(artifacts: dict[str, Any], workdir: Path) -> None:
    with make_run(workdir) as service:
        seconds = _the_whole_story(service, artifacts, workdir)
        seconds["stress test (copy)"] = _an_owner_stress_tests_the_watermark(service, artifacts)
        _a_looping_upload_does_not_slow_the_site(service, artifacts)
        seconds["guarded API, extracted"] = a_guarded_api_is_extracted(
            service, workdir, _await_verdict, _publish_and_verify
        )
        _no_secret_in_logs(service)
    print(f"\nmake run: seconds from filing to verdict: {seconds}")


def _a_looping_upload_does_not_slow_the_site(service: Service, artifacts: dict[str, Any]) -> None:
    """Two models that never answer, uploaded at once: the site stays fast, and both end rejected in our words."""
    owner = service.sign_up(f"loop-{uuid.uuid4().hex[:6]}")
    slowest = 0.0
    answers: dict[int, Any] = {}

    def upload(number: int) -> None:
        answers[number] = service.post(
            "/api/v1/models/",
            token=owner,
            fields={"name": f"looping-{number}", "input_shape": "[1, 8, 8]", "num_classes": "10"},
            files={"artifact": artifacts["looping_pt"]},
        )

    uploads = [threading.Thread(target=upload, args=(number,)) for number in range(2)]
    for thread in uploads:
        thread.start()
    deadline = time.monotonic() + 12.0
    while time.monotonic() < deadline:
        slowest = max(slowest, service.get("/api/v1/log/key").seconds)
        time.sleep(0.1)
    for thread in uploads:
        thread.join(timeout=120)
    assert sorted(answers) == [0, 1]
    assert [answers[n].status for n in (0, 1)] == [202, 202], [answers[n].body[:300] for n in (0, 1)]
    assert slowest < 1.0, f"GET /api/v1/log/key took {slowest:.2f} s while looping models were checked"
    print(f"\nslowest GET /api/v1/log/key while two looping uploads were checked: {slowest:.3f} s")

    deadline = time.monotonic() + 180.0
    for number in (0, 1):
        model_id = answers[number].json()["id"]
        while (model := service.get(f"/api/v1/models/{model_id}", token=owner).json())["state"] == "validating":
            assert time.monotonic() < deadline, service.logs()
            time.sleep(1.0)
        assert model["state"] == "rejected", model
        assert model["rejection_reason"].startswith("the model took longer than"), model


def _services() -> tuple[str, str]:
    database = os.environ.get("DATABASE_URL", "")
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if not (database.startswith("postgres") and broker.startswith(("redis://", "amqp://"))):
        if REQUIRE_SERVICES:
            pytest.fail(
                "DATABASE_URL (PostgreSQL) and CELERY_BROKER_URL (Redis) must be set when services are required"
            )
        pytest.skip("needs PostgreSQL and Redis: set DATABASE_URL and CELERY_BROKER_URL (CI does)")
    return database, broker


@pytest.fixture
def fresh_services() -> Iterator[tuple[str, str]]:
    """A database and a broker database of this test's own, so it never meets the rest of the suite's rows."""
    database, broker = _services()
    name = f"modelcourt_e2e_{uuid.uuid4().hex[:8]}"
    admin = database.rsplit("/", 1)[0]
    psql = ["psql", admin + "/postgres", "-v", "ON_ERROR_STOP=1", "-qc"]
    subprocess.run([*psql, f"CREATE DATABASE {name}"], check=True, capture_output=True)
    broker_db = broker.rsplit("/", 1)[0] + "/13"
    subprocess.run(["redis-cli", "-u", broker_db, "flushdb"], check=False, capture_output=True)
    try:
        yield f"{admin}/{name}", broker_db
    finally:
        subprocess.run([*psql, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False, capture_output=True)


def test_separate_processes_on_postgres_and_redis_survive_a_killed_worker(
    artifacts: dict[str, Any], workdir: Path, fresh_services: tuple[str, str]
) -> None:
    database, broker = fresh_services
    with separate_processes(workdir, database, broker) as service:
        seconds = _the_whole_story(service, artifacts, workdir)

        # a dispute whose worker is SIGKILLed mid-run ends with one verdict and one log entry
        arbiter_name = f"ada-{uuid.uuid4().hex[:6]}"
        owner = service.sign_up(f"otto-{uuid.uuid4().hex[:6]}")
        arbiter = service.sign_up(arbiter_name)
        service.manage("grant_role", arbiter_name, "arbiter")
        claim = _owner_registers_a_watermarked_model(service, artifacts, owner)
        size_before = _log_size(service)
        # the same stolen copy, made slow (seconds per batch of queries), so the kill lands inside the sandbox call
        slow = models.slow_torchscript(torch.jit.load(str(claim["stolen_pt"])), workdir / "slow-stolen.pt", 30000)
        dispute_id, _ = _file(service, arbiter, claim, slow, "killed mid-run")
        deadline = time.monotonic() + 300
        while service.get(f"/api/v1/disputes/{dispute_id}", token=arbiter).json()["progress"] < 30:
            assert time.monotonic() < deadline, service.logs()
            time.sleep(0.2)
        time.sleep(3.0)
        running = service.get(f"/api/v1/disputes/{dispute_id}", token=arbiter).json()
        assert running["state"] == "running", running
        children = sandbox_children_of(service.processes["worker"].pid)
        assert children, "the run is not inside a sandbox child"
        service.kill("worker")
        time.sleep(2.0)
        assert still_running(children) == [], "sandbox children outlived their worker"
        start_worker(service, "worker-2")
        dispute = _await_verdict(service, arbiter, dispute_id)
        assert dispute["verdict"]["outcome"] == "ownership_confirmed", dispute
        assert len(dispute["runs"]) >= 2, dispute["runs"]
        assert [run["state"] for run in dispute["runs"]].count("running") == 0, dispute["runs"]
        size_after = _log_size(service)
        assert size_after - size_before == 1, (size_before, size_after)
        _no_secret_in_logs(service)
    print(f"\nPostgreSQL + Redis: seconds from filing to verdict: {seconds}")


def _log_size(service: Service) -> int:
    """The tree size of a freshly signed checkpoint (a C2SP note: origin, size, root hash, signatures)."""
    note = service.get("/api/v1/log/checkpoint")
    assert note.status == 200, note.body
    return int(note.body.decode().splitlines()[1])
