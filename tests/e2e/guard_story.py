"""The API guard from outside: an owner's model server behind `modelcourt guard serve`, a thief who extracts it.

The owner serves its model over plain JSON on loopback and puts the guard in front (the CLI, as docs/guard.md
says). A benign client asks natural questions; a thief queries public digits and noisy copies of them, and
trains a knockoff on the answers. The guard watermarks a keyed share of answers, commits its journal to the
service and reports the thief's client. The owner requests a dispute over that client from the alarm, an
arbiter accepts it, and the verdict confirms ownership. Nothing of the project is imported.
"""

import contextlib
import hashlib
import hmac
import http.server
import json
import os
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.e2e import models
from tests.e2e.service import VENV_BIN, Service, free_port

THIEF_ID = "thief-4711"
BENIGN_ID = "alice-0042"
RATE = "0.05"  # the default is 0.005; a higher share keeps the thief's bill (and the test) short


def client_tag(key: bytes, client_id: str) -> str:
    """The guard's keyed tag of a client, as docs/guard.md defines it (the service never sees the raw id)."""
    return hmac.new(key, b"mc-guard-client|" + client_id.encode(), hashlib.sha256).hexdigest()[:32]


@contextlib.contextmanager
def model_server(model: torch.nn.Module) -> Iterator[str]:
    """The owner's own prediction API: `{"inputs": [...]}` in, `{"outputs": logits}` out, on loopback."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with torch.no_grad():
                logits = model(torch.tensor(body["inputs"], dtype=torch.float32).reshape(-1, 1, 8, 8))
            answer = json.dumps({"outputs": logits.tolist()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/predict"
    finally:
        server.shutdown()
        server.server_close()


def _ask(url: str, client: str, rows: np.ndarray) -> np.ndarray:
    request = urllib.request.Request(  # noqa: S310 (a loopback http URL this test built)
        url,
        data=json.dumps({"inputs": rows.tolist()}).encode(),
        headers={"Content-Type": "application/json", "X-Client-Id": client},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (the same)
        return np.asarray(json.loads(response.read())["outputs"]).argmax(axis=1)


def _wait(what: str, check: Any, service: Service, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(1.0)
    raise AssertionError(f"{what} did not happen in {timeout:g} s:\n{service.logs()}")


def a_guarded_api_is_extracted(service: Service, workdir: Path, await_verdict: Any, publish: Any) -> float:
    """The whole guard story; returns the seconds from the arbiter's acceptance to the verdict."""
    owner = service.sign_up(f"gina-{uuid.uuid4().hex[:6]}")
    arbiter_name = f"abel-{uuid.uuid4().hex[:6]}"
    arbiter = service.sign_up(arbiter_name)
    service.manage("grant_role", arbiter_name, "arbiter")
    served_model = models.owner_model()
    path = models.save_torchscript(served_model, workdir / "served.pt")
    registered = service.cli_json(
        owner, "register", str(path), "--name", "served", "--task", "8x8 digits", "--input-shape", "1,8,8",
        "--classes", "10",
    )  # fmt: skip
    assert registered["state"] == "active", registered

    key = secrets.token_bytes(32)
    journal = workdir / "guard-journal"
    port = free_port()
    env = {
        **service.env,
        "MODELCOURT_URL": service.base_url,
        "MODELCOURT_TOKEN": owner,
        "MODELCOURT_GUARD_KEY": key.hex(),
        "MODELCOURT_GUARD_RATE": RATE,
        "MODELCOURT_GUARD_BATCH": "25",
        "MODELCOURT_GUARD_BATCH_SECONDS": "3",
    }
    x, _ = models.digits()
    rng = np.random.default_rng(11)
    with model_server(served_model) as upstream:
        log = (workdir / "guard.log").open("ab")
        guard = subprocess.Popen(
            [
                str(VENV_BIN / "modelcourt"), "guard", "serve", "--upstream", upstream, "--listen",
                f"127.0.0.1:{port}", "--protocol", "json", "--model", registered["id"], "--classes", "10",
                "--input-shape", "1,8,8", "--trust-client-header", "--journal", str(journal),
            ],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        service.processes["guard"] = guard
        url = f"http://127.0.0.1:{port}/predict"
        _wait("the guard listening", lambda: _up(url), service, timeout=60)

        # a benign client: natural samples, one at a time
        for row in x[1500:1700]:
            _ask(url, BENIGN_ID, row[None])
        # the thief: each public sample with two noisy copies of it (its augmentation), three to a request;
        # it keeps every answer
        pool = x[900:1500]
        noisy = [np.clip(pool + rng.normal(0, 0.1, pool.shape), 0, 1) for _ in range(2)]
        queries = np.stack([pool, *noisy], axis=1).reshape(-1, 1, 8, 8).astype(np.float32)
        answers = np.concatenate([_ask(url, THIEF_ID, queries[i : i + 3]) for i in range(0, len(queries), 3)])
        knockoff = models.train(models._mlp(21, hidden=128), queries, answers.astype(np.int64), epochs=80, seed=21)
        knockoff_pt = models.save_torchscript(knockoff, workdir / "knockoff.pt")

        thief, benign = client_tag(key, THIEF_ID), client_tag(key, BENIGN_ID)
        alarms_path = f"/api/v1/models/{registered['id']}/guard/alarms/"
        alarms = _wait(
            "an alarm for the thief",
            lambda: [a for a in service.get(alarms_path, token=owner).json() if a["client"] == thief],
            service,
        )
        assert not [a for a in service.get(alarms_path, token=owner).json() if a["client"] == benign]
        status = lambda: "pending: 0" in service.cli(None, "guard", "status", "--journal", str(journal))  # noqa: E731
        _wait("every journaled answer committed", status, service)
    summary = service.get(f"/api/v1/models/{registered['id']}/guard/", token=owner).json()
    assert summary["answers"] >= 50, summary
    assert summary["clients"] == 2, summary
    service.kill("guard", 15)

    time.sleep(1.2)  # past the last batch time-stamp's accuracy: the journal provably came first
    request = service.cli_json(
        owner, "dispute", "request", "--claimant", registered["id"], "--methods", "api_watermark",
        "--api-client", alarms[0]["client"], "--suspect-file", str(knockoff_pt), "--title", "knockoff of my API",
    )  # fmt: skip
    assert request["api_client"] == thief, request
    accepted = service.post(f"/api/v1/dispute-requests/{request['id']}/accept", token=arbiter, json_body={})
    assert accepted.status in (200, 201), accepted.body
    dispute_id = accepted.json()["id"]  # the dispute filed from the request
    started = time.monotonic()
    dispute = await_verdict(service, arbiter, dispute_id)
    seconds = time.monotonic() - started
    assert dispute["verdict"]["outcome"] == "ownership_confirmed", dispute
    publish(service, arbiter, dispute, workdir)

    # the raw client ids stayed with the owner: not in the service's logs, the verdict or the API
    for raw in (THIEF_ID, BENIGN_ID):
        assert raw.encode() not in service.all_log_bytes()  # the guard's own log included
        assert raw not in json.dumps(dispute)
        assert raw not in service.get(alarms_path, token=owner).body.decode()
    assert os.stat(journal).st_mode & 0o077 == 0, "the journal (raw client ids) must be private to its owner"
    return seconds


def _up(url: str) -> bool:
    try:
        probe = urllib.request.Request(url, data=b"{}", method="POST")  # noqa: S310 (loopback, built here)
        urllib.request.urlopen(probe, timeout=2)  # noqa: S310 (the same)
    except urllib.error.HTTPError:
        return True  # a 400 for an empty request: the guard answers
    except OSError:
        return False
    return True
