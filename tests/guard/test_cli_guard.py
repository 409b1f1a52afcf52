"""`modelcourt guard serve|flush|status`."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelcourt.cli import main
from modelcourt.guard.journal import Journal, NewAnswer

REPO = Path(__file__).resolve().parents[2]
KEY_HEX = "5a" * 32


class _Recorder(BaseHTTPRequestHandler):
    """Stands in for the service (201 with an id and commitment) or for a model server ({"outputs"})."""

    server: Any

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, dict(self.headers), body))
        status, answer = self.server.reply(body)
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def _server(reply: Any) -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    server.requests, server.reply = [], reply  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def service() -> Iterator[Any]:
    yield from _server(lambda body: (201, {"id": "ev-7", "commitment": "ab" * 32, "receipt_url": "/r"}))


def _journal(directory: Path, answers: int, committed: int = 0) -> None:
    journal = Journal(directory)
    journal.append(
        [
            NewAnswer(1_700_000_000.0 + i, "10.9.8.7", "cd" * 16, np.full((1, 2, 2), i, np.float32), 1, 0)
            for i in range(answers)
        ]
    )
    if committed:
        journal.record_commit(1, committed, "ev-1", "ef" * 32)
    journal.close()


@pytest.fixture
def guard_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELCOURT_GUARD_KEY", KEY_HEX)
    monkeypatch.setenv("MODELCOURT_GUARD_MODEL", "5f0c7a52-4c55-4d4e-9a55-2b1e1f4c1d10")
    monkeypatch.setenv("MODELCOURT_GUARD_CLASSES", "2")
    monkeypatch.setenv("MODELCOURT_GUARD_JOURNAL", str(tmp_path / "journal"))
    return tmp_path / "journal"


def test_status_prints_the_counts(guard_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _journal(guard_env, answers=5, committed=3)
    assert main(["guard", "status"]) == 0
    out = capsys.readouterr().out
    assert "watermarked answers: 5" in out
    assert "committed: 3 in 1 batches" in out
    assert "last commit: evidence ev-1" in out
    assert "pending: 2 (oldest served 2023-11-14T22:13:23Z" in out


def test_status_without_a_journal_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guard", "status", "--journal", str(tmp_path / "none")]) == 1
    assert "there is no journal" in capsys.readouterr().err


def test_flush_commits_the_pending_answers(guard_env: Path, service: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _journal(guard_env, answers=4, committed=1)
    url = f"http://127.0.0.1:{service.server_address[1]}"
    assert main(["--url", url, "--token", "tok", "guard", "flush"]) == 0
    (commit,) = json.loads(capsys.readouterr().out)
    assert (commit["first_seq"], commit["last_seq"], commit["evidence_id"]) == (2, 4, "ev-7")
    ((path, headers, body),) = service.requests
    assert path == "/api/v1/models/5f0c7a52-4c55-4d4e-9a55-2b1e1f4c1d10/evidence/"
    assert headers["Authorization"] == "Token tok"
    assert b'name="kind"\r\n\r\napi_watermark' in body
    assert b"10.9.8.7" not in body
    assert main(["--url", url, "guard", "flush"]) == 0  # nothing left: nothing sent again
    assert len(service.requests) == 1


def test_a_failed_flush_exits_1_and_keeps_the_answers(guard_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _journal(guard_env, answers=2)
    for failing in _server(lambda body: (500, {"detail": "boom"})):
        url = f"http://127.0.0.1:{failing.server_address[1]}"
        assert main(["--url", url, "guard", "flush"]) == 1
    assert "2 answers stay pending" in capsys.readouterr().err


def test_serve_needs_a_key(
    guard_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELCOURT_GUARD_KEY", "abcd")
    assert main(["guard", "serve", "--upstream", "http://127.0.0.1:1/"]) == 1
    assert "at least 32 bytes" in capsys.readouterr().err


def test_serve_guards_a_model_server_until_terminated(guard_env: Path, service: Any) -> None:
    def model(body: bytes) -> tuple[int, dict[str, Any]]:
        xs = np.asarray(json.loads(body)["inputs"])
        return 200, {"outputs": np.stack([xs.sum(axis=1), -xs.sum(axis=1)], axis=1).tolist()}

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for upstream in _server(model):
        env = {
            **os.environ,
            "MODELCOURT_URL": f"http://127.0.0.1:{service.server_address[1]}",
            "MODELCOURT_GUARD_RATE": "1",
        }
        command = [
            sys.executable,
            "-m",
            "modelcourt.cli",
            "guard",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"http://127.0.0.1:{upstream.server_address[1]}/predict",
            "--protocol",
            "json",
        ]
        process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
            while line and "guarding" not in line:
                line = process.stderr.readline()
            assert f"at http://127.0.0.1:{port}" in line
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("POST", "/predict", body=json.dumps({"inputs": [[1.0, 2.0]]}))
            response = connection.getresponse()
            answer = json.loads(response.read())
            connection.close()
            assert response.status == 200
            assert answer["outputs"] == [[-3.0, 3.0]]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    # the last commit on the way out reached the service
    assert [path for path, _, _ in service.requests] == [
        "/api/v1/models/5f0c7a52-4c55-4d4e-9a55-2b1e1f4c1d10/evidence/"
    ]
