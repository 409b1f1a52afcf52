"""The `modelcourt` command: offline receipt verification, and HTTP calls against a recording stub service."""

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelcourt.cli import encode_multipart, main
from tests.modelcourt.receipt_factory import ReceiptBundle, make_receipt

COMMITMENT = "ab" * 32


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, tuple[str | None, bytes]]:
        """The multipart fields, read back by the standard library's MIME parser: name -> (filename, value)."""
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        message = BytesParser(policy=policy.HTTP).parsebytes(head + self.body)
        assert message.is_multipart()
        return {
            part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
            for part in message.iter_parts()
        }


@dataclass
class StubService:
    url: str
    requests: list[Recorded] = field(default_factory=list)
    # (method, path) -> (status, body: JSON-able, or bytes sent as they are)
    answers: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)


@pytest.fixture
def service() -> Iterator[StubService]:
    stub = StubService(url="")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            stub.requests.append(Recorded(self.command, self.path, dict(self.headers.items()), body))
            status, payload = stub.answers.get(
                (self.command, self.path), (404, {"code": "not_found", "detail": "nope"})
            )
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer  # noqa: N815 -- http.server's naming

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield stub
    server.shutdown()
    server.server_close()
    thread.join()


# --- HTTP commands --------------------------------------------------------------------------


def test_register_uploads_the_artifact_and_metadata_as_multipart(
    service: StubService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = tmp_path / "digits.onnx"
    artifact.write_bytes(b"\x08\x07onnx bytes\r\n--not-a-boundary\r\n\x00")
    service.answers["POST", "/api/v1/models/"] = (201, {"id": "m-1", "name": "digits"})

    metadata = ["--name", "digits", "--task", "digit classification", "--input-shape", "1,8,8", "--classes", "10"]
    status = main(["--url", service.url, "--token", "t0k3n", "register", str(artifact), *metadata])

    assert status == 0
    assert json.loads(capsys.readouterr().out) == {"id": "m-1", "name": "digits"}
    (request,) = service.requests
    assert (request.method, request.path) == ("POST", "/api/v1/models/")
    assert request.headers["Authorization"] == "Token t0k3n"
    assert request.form() == {
        "name": (None, b"digits"),
        "task": (None, b"digit classification"),
        "input_shape": (None, b"[1, 8, 8]"),
        "num_classes": (None, b"10"),
        "artifact": ("digits.onnx", artifact.read_bytes()),
    }


MODEL_ID = "5b0c1c6e-0000-4000-8000-000000000001"
VALIDATING = {"id": MODEL_ID, "name": "digits", "state": "validating", "rejection_reason": "", "format": None}
REGISTER = ["register", "--name", "digits", "--input-shape", "1,8,8", "--classes", "10"]


class FakeClock:
    """Stands in for the CLI's `time`: sleeps are recorded and advance a virtual clock; `on_sleep` may act."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep: Any = None

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(len(self.sleeps))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    import modelcourt.cli as cli

    fake = FakeClock()
    monkeypatch.setattr(cli, "time", fake)
    return fake


def _artifact(tmp_path: Path) -> str:
    artifact = tmp_path / "digits.onnx"
    artifact.write_bytes(b"\x08\x07onnx bytes")
    return str(artifact)


def test_register_waits_for_the_sandbox_check_and_prints_the_active_model(
    service: StubService, tmp_path: Path, capsys: pytest.CaptureFixture[str], clock: FakeClock
) -> None:
    service.answers["POST", "/api/v1/models/"] = (202, VALIDATING)
    detail = ("GET", f"/api/v1/models/{MODEL_ID}")
    service.answers[detail] = (200, VALIDATING)

    def settle(count: int) -> None:
        if count == 3:  # the worker decides during the third wait
            service.answers[detail] = (200, {**VALIDATING, "state": "active", "format": "onnx"})

    clock.on_sleep = settle

    status = main(["--url", service.url, *REGISTER, _artifact(tmp_path)])

    out, err = capsys.readouterr()
    assert status == 0
    assert json.loads(out)["state"] == "active"
    assert "validating" in err
    assert [r.method for r in service.requests] == ["POST", "GET", "GET", "GET"]
    assert clock.sleeps == [2.0, 2.0, 2.0]


def test_register_exits_non_zero_with_the_reason_when_rejected(
    service: StubService, tmp_path: Path, capsys: pytest.CaptureFixture[str], clock: FakeClock
) -> None:
    reason = "the model outputs shape [2, 5] but the registration says 10 classes"
    service.answers["POST", "/api/v1/models/"] = (202, VALIDATING)
    service.answers["GET", f"/api/v1/models/{MODEL_ID}"] = (
        200,
        {**VALIDATING, "state": "rejected", "rejection_reason": reason},
    )

    status = main(["--url", service.url, *REGISTER, _artifact(tmp_path)])

    out, err = capsys.readouterr()
    assert status == 1
    assert json.loads(out)["state"] == "rejected"
    assert f"error: the model was rejected: {reason}" in err


def test_register_no_wait_returns_at_once(
    service: StubService, tmp_path: Path, capsys: pytest.CaptureFixture[str], clock: FakeClock
) -> None:
    service.answers["POST", "/api/v1/models/"] = (202, VALIDATING)

    status = main(["--url", service.url, *REGISTER, "--no-wait", _artifact(tmp_path)])

    assert status == 0
    assert json.loads(capsys.readouterr().out)["state"] == "validating"
    assert [r.method for r in service.requests] == ["POST"]
    assert clock.sleeps == []


def test_register_gives_up_after_its_timeout(
    service: StubService, tmp_path: Path, capsys: pytest.CaptureFixture[str], clock: FakeClock
) -> None:
    service.answers["POST", "/api/v1/models/"] = (202, VALIDATING)
    service.answers["GET", f"/api/v1/models/{MODEL_ID}"] = (200, VALIDATING)

    status = main(["--url", service.url, *REGISTER, "--timeout", "5", _artifact(tmp_path)])

    assert status == 1
    assert "still validating after 5 s" in capsys.readouterr().err
    assert sum(clock.sleeps) == 5


def test_the_token_and_url_come_from_the_environment(
    service: StubService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELCOURT_URL", service.url)
    monkeypatch.setenv("MODELCOURT_TOKEN", "from-env")
    evidence = tmp_path / "fp.npz"
    evidence.write_bytes(b"PK fake npz")
    service.answers["POST", "/api/v1/models/m-1/evidence/"] = (201, {"commitment": COMMITMENT})

    status = main(["evidence", "add", "m-1", str(evidence), "--kind", "fingerprint"])

    assert status == 0
    (request,) = service.requests
    assert request.headers["Authorization"] == "Token from-env"
    assert request.form() == {"kind": (None, b"fingerprint"), "file": ("fp.npz", b"PK fake npz")}


def test_evidence_generate_posts_json_and_saves_the_trigger_set(
    service: StubService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    triggers = b"PK\x03\x04 the triggers"
    answer = {"id": "e-1", "commitment": COMMITMENT, "evidence_npz_b64": base64.b64encode(triggers).decode()}
    service.answers["POST", "/api/v1/models/m-1/evidence/generate"] = (201, answer)
    out = tmp_path / "wm.npz"

    status = main(
        ["--url", service.url, "evidence", "generate", "m-1", "--count", "50", "--high", "2", "--out", str(out)]
    )

    assert status == 0
    assert out.read_bytes() == triggers
    (request,) = service.requests
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers
    assert json.loads(request.body) == {"count": 50, "low": 0.0, "high": 2.0}
    printed = json.loads(capsys.readouterr().out)
    assert printed["commitment"] == COMMITMENT
    assert "evidence_npz_b64" not in printed


def test_evidence_adopt_posts_the_source_for_the_deployed_model(
    service: StubService, capsys: pytest.CaptureFixture[str]
) -> None:
    adopted = {"id": "e-2", "commitment": COMMITMENT, "derived_from": "e-1", "verifiable": True}
    service.answers["POST", "/api/v1/models/m-2/evidence/adopt"] = (201, adopted)

    status = main(["--url", service.url, "--token", "t0k3n", "evidence", "adopt", "m-2", "e-1"])

    assert status == 0
    (request,) = service.requests
    assert request.headers["Authorization"] == "Token t0k3n"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.body) == {"source": "e-1"}
    assert json.loads(capsys.readouterr().out) == adopted


def test_receipt_get_writes_the_receipt(service: StubService, tmp_path: Path) -> None:
    service.answers["GET", f"/api/v1/receipts/{COMMITMENT}"] = (200, {"commitment": COMMITMENT})
    out = tmp_path / "receipt.json"

    assert main(["--url", service.url, "receipt", "get", COMMITMENT, "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == {"commitment": COMMITMENT}


def test_a_service_error_prints_its_detail_and_exits_1(
    service: StubService, capsys: pytest.CaptureFixture[str]
) -> None:
    service.answers["GET", f"/api/v1/receipts/{COMMITMENT}"] = (
        404,
        {"code": "not_found", "detail": "no receipt for this commitment"},
    )

    status = main(["--url", service.url, "receipt", "get", COMMITMENT])

    assert status == 1
    assert capsys.readouterr().err.strip() == "error (404): no receipt for this commitment"


def test_a_non_json_error_prints_the_status_reason(service: StubService, capsys: pytest.CaptureFixture[str]) -> None:
    service.answers["POST", "/api/v1/models/m-1/evidence/generate"] = (502, b"<html>bad gateway</html>")

    assert main(["--url", service.url, "evidence", "generate", "m-1", "--count", "5"]) == 1
    assert capsys.readouterr().err.strip() == "error (502): Bad Gateway"


def test_an_unreachable_service_is_one_line_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--url", "http://127.0.0.1:9", "receipt", "get", COMMITMENT])

    assert status == 1
    err = capsys.readouterr().err
    assert err.startswith("error (connection): cannot reach http://127.0.0.1:9")
    assert "Traceback" not in err


def test_multipart_escapes_quotes_in_file_names() -> None:
    body, content_type = encode_multipart([("a", "1")], [("file", 'x"y.npz', b"data")])
    recorded = Recorded("POST", "/", {"Content-Type": content_type}, body)

    assert recorded.form() == {"a": (None, b"1"), "file": ("x%22y.npz", b"data")}


# --- receipt verify -------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiptFiles:
    bundle: ReceiptBundle
    receipt: Path
    ca: Path
    opening: Path
    evidence: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> ReceiptFiles:
    bundle = make_receipt()
    root = tmp_path_factory.mktemp("receipt")
    paths = ReceiptFiles(bundle, root / "receipt.json", root / "ca.pem", root / "opening.json", root / "wm.npz")
    paths.receipt.write_text(json.dumps(bundle.receipt))
    paths.ca.write_text(bundle.ca_pem)
    paths.opening.write_text(json.dumps(bundle.opening))
    paths.evidence.write_bytes(bundle.npz)
    return paths


def _verify_args(files: ReceiptFiles, *extra: str) -> list[str]:
    return ["receipt", "verify", str(files.receipt), "--ca", str(files.ca), "--log-key", files.bundle.log_vkey, *extra]


def test_receipt_verify_passes_a_genuine_receipt_and_opening(
    files: ReceiptFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(_verify_args(files, "--opening", str(files.opening)))

    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert lines
    assert all(line.startswith("OK   ") for line in lines), lines
    assert any(line.startswith("OK   commitment: ") for line in lines)


def test_receipt_verify_opens_with_evidence_salt_and_seed(files: ReceiptFiles) -> None:
    bundle = files.bundle
    args = _verify_args(files, "--evidence", str(files.evidence), "--salt", bundle.salt, "--seed", bundle.seed)

    assert main(args) == 0


def test_receipt_verify_reads_the_log_key_from_a_file(files: ReceiptFiles, tmp_path: Path) -> None:
    key_file = tmp_path / "log.vkey"
    key_file.write_text(files.bundle.log_vkey + "\n")

    assert main(["receipt", "verify", str(files.receipt), "--ca", str(files.ca), "--log-key", str(key_file)]) == 0


@pytest.fixture
def no_trust_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing pinned where the command looks by default."""
    monkeypatch.delenv("MODELCOURT_TRUST_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_receipt_verify_without_trusted_keys_fails(
    files: ReceiptFiles, no_trust_file: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["receipt", "verify", str(files.receipt)])

    captured = capsys.readouterr()
    failed = [line.split(":")[0] for line in captured.out.splitlines() if line.startswith("FAIL")]
    assert status == 1
    assert {"FAIL trust anchors", "FAIL log key", "FAIL token signature", "FAIL checkpoint signature"} <= set(failed)
    assert "modelcourt trust pin URL" in captured.err


def test_receipt_verify_warns_when_told_to_trust_the_receipt_itself(
    files: ReceiptFiles, no_trust_file: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["receipt", "verify", str(files.receipt), "--insecure-trust-embedded-keys"])

    warned = [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARN ")]
    assert status == 0
    assert [line.split(":")[0] for line in warned] == ["WARN trust anchors", "WARN log key"]


def test_receipt_verify_fails_a_wrong_salt(files: ReceiptFiles, capsys: pytest.CaptureFixture[str]) -> None:
    args = _verify_args(files, "--evidence", str(files.evidence), "--salt", "0" * 64, "--seed", files.bundle.seed)

    status = main(args)

    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert status == 1
    assert [line.split(":")[0] for line in failed] == ["FAIL commitment"]


def test_receipt_verify_fails_a_tampered_receipt(
    files: ReceiptFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    receipt = json.loads(files.receipt.read_text())
    receipt["log"]["index"] += 1
    tampered = tmp_path / "receipt.json"
    tampered.write_text(json.dumps(receipt))

    status = main(["receipt", "verify", str(tampered), "--ca", str(files.ca), "--log-key", files.bundle.log_vkey])

    assert status == 1
    assert "FAIL log inclusion: " in capsys.readouterr().out


def test_receipt_verify_reports_an_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text("{not json")

    assert main(["receipt", "verify", str(tmp_path / "missing.json")]) == 1
    assert main(["receipt", "verify", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: cannot read")
    assert err[1].endswith("is not JSON")


def test_evidence_without_a_salt_is_a_usage_error(files: ReceiptFiles) -> None:
    with pytest.raises(SystemExit) as exited:
        main(_verify_args(files, "--evidence", str(files.evidence)))

    assert exited.value.code == 2


def test_a_sighting_never_overwrites_the_service_url() -> None:
    from modelcourt.cli import build_parser

    parser = build_parser()
    filed = parser.parse_args(["--url", "http://court.example.org", "sighting", "record", "model.pt"])
    assert filed.url == "http://court.example.org"
    assert filed.endpoint_url is None
    probed = parser.parse_args(
        ["--url", "http://court.example.org", "sighting", "record", "--url", "https://m.example"]
    )
    assert probed.url == "http://court.example.org"
    assert probed.endpoint_url == "https://m.example"
