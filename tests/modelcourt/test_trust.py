"""Pinned trust anchors: `modelcourt trust pin|show` against a stub service, and verification that needs them."""

import hashlib
import json
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from modelcourt import trust
from modelcourt.cli import main
from tests.modelcourt.receipt_factory import ReceiptBundle, make_receipt
from timestamps import note

SECRET = "s3cr3t-from-the-server"


# --- key listings as GET /api/v1/keys/ gives them -------------------------------------------


def _kid(public: Any) -> str:
    return hashlib.sha256(public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _pem(public: Any) -> str:
    return str(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode())


def key_listing(
    *, ca_pems: Sequence[str], log_vkeys: Sequence[str], verdict_pems: Sequence[str]
) -> list[dict[str, Any]]:
    """The service's key list for these public keys; the first of each purpose is current, the rest retired."""
    entries: list[dict[str, Any]] = []

    def add(purpose: str, number: int, public: Any, **extra: Any) -> None:
        status = "current" if number == 0 else "retired"
        entry = {"kid": _kid(public), "purpose": purpose, "algorithm": "x", "status": status}
        entry |= {"public_key_pem": _pem(public), "certificate_pem": "", "verifier_key": None, **extra}
        entries.append(entry | {"created_at": "2026-01-01T00:00:00Z", "retired_at": None})

    for number, pem in enumerate(ca_pems):
        add("tsa-ca", number, x509.load_pem_x509_certificate(pem.encode()).public_key(), certificate_pem=pem)
    for number, vkey in enumerate(log_vkeys):
        add("log", number, note.parse_verifier_key(vkey)[2], verifier_key=vkey)
    for number, pem in enumerate(verdict_pems):
        add("verdict", number, load_pem_public_key(pem.encode()))
    return entries


def verdict_pem() -> str:
    """A fresh verdict public key (PEM)."""
    return _pem(ec.generate_private_key(ec.SECP256R1()).public_key())


def pin_file(path: Path, listing: list[dict[str, Any]], url: str = "https://modelcourt.example.org") -> Path:
    """A trust file pinning `listing` for `url`, as `trust pin` writes it."""
    keys = trust.parse_keys(listing, source="the test's listing")
    trust.save_trust(path, [trust.PinnedService(url=url, pinned_at="2026-01-01T00:00:00+00:00", keys=keys)])
    return path


# --- a stub service ---------------------------------------------------------------------------


@dataclass
class Stub:
    url: str = ""
    requests: list[str] = field(default_factory=list)
    # path -> (status, body, extra headers)
    answers: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)

    def serve(self, listing: Any, log_key: str) -> None:
        self.answers["/api/v1/keys/"] = (200, json.dumps(listing).encode(), {})
        self.answers["/api/v1/log/key"] = (200, (log_key + "\n").encode(), {})


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            status, body, headers = state.answers.get(self.path, (404, b'{"detail": "' + SECRET.encode() + b'"}', {}))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def no_pins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No trust file anywhere the command looks by default: a fresh XDG config folder, no override."""
    monkeypatch.delenv(trust.TRUST_FILE_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config" / "modelcourt" / "trust.json"


@dataclass(frozen=True)
class Keys:
    genuine: ReceiptBundle
    forged: ReceiptBundle
    verdict_pem: str

    def listing(self) -> list[dict[str, Any]]:
        return key_listing(
            ca_pems=[self.genuine.ca_pem], log_vkeys=[self.genuine.log_vkey], verdict_pems=[self.verdict_pem]
        )


@pytest.fixture(scope="module")
def keys() -> Keys:
    """The service's receipt, and a forger's: made the same way, with the forger's own CA and log key."""
    return Keys(genuine=make_receipt(), forged=make_receipt(), verdict_pem=verdict_pem())


def _receipt_file(tmp_path: Path, bundle: ReceiptBundle, name: str = "receipt.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(bundle.receipt))
    return str(path)


def _fingerprint(ca_pem: str) -> str:
    return hashlib.sha256(x509.load_pem_x509_certificate(ca_pem.encode()).public_bytes(Encoding.DER)).hexdigest()


# --- trust pin / show -------------------------------------------------------------------------


def test_pin_fetches_the_keys_once_writes_the_file_and_prints_fingerprints(
    stub: Stub, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.serve(keys.listing(), keys.genuine.log_vkey)
    path = tmp_path / "nested" / "trust.json"

    status = main(["trust", "pin", stub.url + "/", "--trust-file", str(path)])

    out = capsys.readouterr().out
    assert status == 0, out
    assert stub.requests == ["/api/v1/keys/", "/api/v1/log/key"]
    assert f"pinned: 3 keys of {stub.url} in {path}" in out
    assert _fingerprint(keys.genuine.ca_pem) in out
    assert keys.genuine.log_vkey in out
    assert _kid(load_pem_public_key(keys.verdict_pem.encode())) in out
    assert "out of band" in out or "another channel" in out
    document = json.loads(path.read_text())
    assert document["format"] == "modelcourt-trust-v1"
    assert [service["url"] for service in document["services"]] == [stub.url]
    assert trust.anchors_of(trust.load_trust(path)).log_vkeys == [keys.genuine.log_vkey]


def test_show_prints_what_is_pinned(keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = pin_file(tmp_path / "trust.json", keys.listing())

    assert main(["trust", "show", "--trust-file", str(path)]) == 0

    out = capsys.readouterr().out
    assert "https://modelcourt.example.org (pinned 2026-01-01T00:00:00+00:00)" in out
    assert f"tsa-ca   current  {_fingerprint(keys.genuine.ca_pem)}" in out
    assert f"log      current  {keys.genuine.log_vkey}" in out


def test_show_without_a_trust_file_says_how_to_pin(no_pins: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trust", "show"]) == 1

    err = capsys.readouterr().err
    assert f"no keys are pinned in {no_pins}" in err
    assert "modelcourt trust pin URL" in err


def test_pin_writes_the_default_trust_file_under_xdg_config_home(
    stub: Stub, keys: Keys, no_pins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.serve(keys.listing(), keys.genuine.log_vkey)

    assert main(["trust", "pin", stub.url]) == 0

    assert no_pins.is_file()
    assert "plain http" not in capsys.readouterr().err  # loopback: nobody on the way


def test_repinning_changed_keys_needs_replace_and_shows_old_and_new(
    stub: Stub, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "trust.json"
    stub.serve(keys.listing(), keys.genuine.log_vkey)
    assert main(["trust", "pin", stub.url, "--trust-file", str(path)]) == 0
    pinned = path.read_bytes()
    capsys.readouterr()
    # the service now publishes another verdict key in place of the pinned one
    rotated = verdict_pem()
    listing = key_listing(ca_pems=[keys.genuine.ca_pem], log_vkeys=[keys.genuine.log_vkey], verdict_pems=[rotated])
    stub.serve(listing, keys.genuine.log_vkey)

    status = main(["trust", "pin", stub.url, "--trust-file", str(path)])

    captured = capsys.readouterr()
    assert status == 1
    assert path.read_bytes() == pinned
    assert f"- old verdict  current  {_kid(load_pem_public_key(keys.verdict_pem.encode()))}" in captured.out
    assert f"+ new verdict  current  {_kid(load_pem_public_key(rotated.encode()))}" in captured.out
    assert "--replace" in captured.err

    assert main(["trust", "pin", stub.url, "--trust-file", str(path), "--replace"]) == 0
    assert trust.anchors_of(trust.load_trust(path)).verdict_pems == [rotated]
    assert f"re-pinned: 3 keys of {stub.url}" in capsys.readouterr().out


def test_repinning_the_same_keys_changes_nothing(
    stub: Stub, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "trust.json"
    stub.serve(keys.listing(), keys.genuine.log_vkey)
    assert main(["trust", "pin", stub.url, "--trust-file", str(path)]) == 0

    assert main(["trust", "pin", stub.url, "--trust-file", str(path)]) == 0

    assert f"unchanged: 3 keys of {stub.url}" in capsys.readouterr().out
    assert len(trust.load_trust(path)) == 1


def test_pinning_a_second_service_keeps_the_first(keys: Keys, stub: Stub, tmp_path: Path) -> None:
    path = pin_file(tmp_path / "trust.json", keys.listing())
    stub.serve(
        key_listing(ca_pems=[keys.forged.ca_pem], log_vkeys=[keys.forged.log_vkey], verdict_pems=[verdict_pem()]),
        keys.forged.log_vkey,
    )

    assert main(["trust", "pin", stub.url, "--trust-file", str(path)]) == 0

    assert [service.url for service in trust.load_trust(path)] == ["https://modelcourt.example.org", stub.url]


def _listing_with(keys: Keys, change: str) -> Any:
    listing = keys.listing()
    if change == "kid":
        listing[2]["kid"] = "0" * 64
    elif change == "no verdict key":
        listing = listing[:2]
    elif change == "curve":
        other = ec.generate_private_key(ec.SECP384R1()).public_key()
        listing[2] |= {"kid": _kid(other), "public_key_pem": _pem(other)}
    elif change == "leaf as ca":
        listing[0]["certificate_pem"] = keys.genuine.tsa_pem
    elif change == "not a list":
        listing = {"keys": listing}
    elif change == "unprintable log name":
        listing[1]["verifier_key"] = "\u202e" + listing[1]["verifier_key"]
    return listing


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ({"/api/v1/keys/": (500, f'{{"detail": "{SECRET}"}}'.encode(), {})}, "answered with status 500"),
        ({"/api/v1/keys/": (200, b"<html>" + SECRET.encode(), {})}, "did not answer with JSON"),
        ({"/api/v1/keys/": (200, b"[" + b" " * trust.MAX_KEYS_BYTES + b"]", {})}, "more than 1048576 bytes"),
        ({"/api/v1/keys/": (302, b"", {"Location": "/elsewhere/"})}, "answered with a redirect elsewhere"),
        ({"/api/v1/log/key": (200, f"other+00000000+{SECRET}\n".encode(), {})}, "is not in /api/v1/keys/"),
    ],
    ids=["server error", "not json", "too large", "redirect", "log key not listed"],
)
def test_a_bad_answer_pins_nothing_and_echoes_nothing(
    stub: Stub,
    keys: Keys,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    answers: dict[str, tuple[int, bytes, dict[str, str]]],
    message: str,
) -> None:
    stub.serve(keys.listing(), keys.genuine.log_vkey)
    stub.answers |= answers
    path = tmp_path / "trust.json"

    status = main(["trust", "pin", stub.url, "--trust-file", str(path)])

    captured = capsys.readouterr()
    assert status == 1
    assert not path.exists()
    assert message in captured.err
    assert SECRET not in captured.out + captured.err
    assert "Traceback" not in captured.err
    assert "/elsewhere/" not in stub.requests


@pytest.mark.parametrize(
    "change", ["kid", "no verdict key", "curve", "leaf as ca", "not a list", "unprintable log name"]
)
def test_a_key_list_of_the_wrong_shape_pins_nothing(
    stub: Stub, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str
) -> None:
    stub.serve(_listing_with(keys, change), keys.genuine.log_vkey)
    path = tmp_path / "trust.json"

    assert main(["trust", "pin", stub.url, "--trust-file", str(path)]) == 1

    assert not path.exists()
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize(
    "url",
    ["ftp://{host}", "file:///etc/passwd", "http://user:pw@{host}", "http://{host}/?next=x", "{host}", "http://"],
)
def test_a_url_that_is_not_a_plain_http_base_is_refused_before_any_request(
    stub: Stub, tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    host = stub.url.removeprefix("http://")

    assert main(["trust", "pin", url.format(host=host), "--trust-file", str(tmp_path / "trust.json")]) == 1

    assert stub.requests == []
    assert not (tmp_path / "trust.json").exists()
    assert capsys.readouterr().err.startswith("error: the service URL")


def test_a_silent_service_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts the connection, never answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(trust.TrustError, match="timed out"):
            trust.fetch_keys(url, timeout=0.3)


def test_urls_are_normalised_and_plain_http_elsewhere_is_flagged() -> None:
    assert (
        trust.normalise_url("HTTPS://Modelcourt.Example.org:8443/court/") == "https://modelcourt.example.org:8443/court"
    )
    assert trust.is_plain_http("http://modelcourt.example.org")
    assert not trust.is_plain_http("http://127.0.0.1:8000")
    assert not trust.is_plain_http("http://localhost:8000")
    assert not trust.is_plain_http("https://modelcourt.example.org")


def test_the_default_trust_file(tmp_path: Path) -> None:
    home = Path.home()

    assert trust.default_trust_path({trust.TRUST_FILE_ENV: "/etc/mc.json", "XDG_CONFIG_HOME": "/x"}) == Path(
        "/etc/mc.json"
    )
    assert trust.default_trust_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "modelcourt" / "trust.json"
    assert trust.default_trust_path({"XDG_CONFIG_HOME": "relative"}) == home / ".config" / "modelcourt" / "trust.json"
    assert trust.default_trust_path({}) == home / ".config" / "modelcourt" / "trust.json"


# --- verification uses the pins ---------------------------------------------------------------


def test_a_genuine_receipt_passes_with_the_pinned_keys(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pin_file(tmp_path / "trust.json", keys.listing())

    status = main(["receipt", "verify", _receipt_file(tmp_path, keys.genuine), "--trust-file", str(path)])

    out = capsys.readouterr().out
    assert status == 0, out
    assert f"OK   pinned keys: TSA CA certificates, log keys of https://modelcourt.example.org from {path}" in out
    assert "WARN" not in out
    assert "FAIL" not in out


def test_the_trust_file_in_the_environment_is_used(keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(trust.TRUST_FILE_ENV, str(pin_file(tmp_path / "trust.json", keys.listing())))

    assert main(["receipt", "verify", _receipt_file(tmp_path, keys.genuine)]) == 0
    assert main(["receipt", "verify", _receipt_file(tmp_path, keys.forged)]) == 1


def test_a_forged_receipt_fails_against_the_pinned_keys_even_with_the_insecure_flag(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pin_file(tmp_path / "trust.json", keys.listing())
    receipt = _receipt_file(tmp_path, keys.forged)

    for extra in ([], ["--insecure-trust-embedded-keys"]):
        status = main(["receipt", "verify", receipt, "--trust-file", str(path), *extra])

        out = capsys.readouterr().out
        assert status == 1
        assert "FAIL token signature: " in out
        assert "FAIL checkpoint signature: " in out
        assert "WARN" not in out


def test_without_anchors_a_forged_receipt_fails_and_says_how_to_pin(
    keys: Keys, no_pins: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["receipt", "verify", _receipt_file(tmp_path, keys.forged)])

    captured = capsys.readouterr()
    assert status == 1
    assert "FAIL trust anchors: no trusted TSA CA certificate" in captured.out
    assert "FAIL log key: no trusted log verifier key" in captured.out
    assert "OK   token signature" not in captured.out
    assert "OK   checkpoint signature" not in captured.out
    assert "no trusted TSA CA certificate (--ca), log key (--log-key) was given" in captured.err
    assert f"there is no trust file at {no_pins}" in captured.err
    assert "modelcourt trust pin URL" in captured.err


def test_only_the_insecure_flag_passes_a_forged_receipt_and_it_warns(
    keys: Keys, no_pins: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["receipt", "verify", _receipt_file(tmp_path, keys.forged), "--insecure-trust-embedded-keys"])

    captured = capsys.readouterr()
    assert status == 0
    warned = [line.split(":")[0] for line in captured.out.splitlines() if line.startswith("WARN")]
    assert warned == ["WARN trust anchors", "WARN log key"]
    assert captured.err.startswith("warning: --insecure-trust-embedded-keys: ")
    assert "a forged receipt carries its own keys" in captured.err


def test_explicit_anchors_take_precedence_over_the_trust_file(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pin_file(tmp_path / "trust.json", keys.listing())
    (tmp_path / "ca.pem").write_text(keys.forged.ca_pem)
    args = ["--trust-file", str(path), "--ca", str(tmp_path / "ca.pem"), "--log-key", keys.forged.log_vkey]

    assert main(["receipt", "verify", _receipt_file(tmp_path, keys.forged), *args]) == 0
    assert "pinned keys" not in capsys.readouterr().out
    assert main(["receipt", "verify", _receipt_file(tmp_path, keys.genuine), *args]) == 1


def test_one_explicit_anchor_and_the_rest_from_the_trust_file(keys: Keys, tmp_path: Path) -> None:
    path = pin_file(tmp_path / "trust.json", keys.listing())
    receipt = _receipt_file(tmp_path, keys.genuine)

    assert main(["receipt", "verify", receipt, "--trust-file", str(path), "--log-key", keys.genuine.log_vkey]) == 0
    assert main(["receipt", "verify", receipt, "--trust-file", str(path), "--log-key", keys.forged.log_vkey]) == 1


def test_receipts_signed_by_retired_keys_still_verify(keys: Keys, tmp_path: Path) -> None:
    # the forger's keys stand for keys the service used before a rotation: published, retired, pinned
    listing = key_listing(
        ca_pems=[keys.genuine.ca_pem, keys.forged.ca_pem],
        log_vkeys=[keys.genuine.log_vkey, keys.forged.log_vkey],
        verdict_pems=[keys.verdict_pem],
    )
    path = pin_file(tmp_path / "trust.json", listing)

    assert main(["receipt", "verify", _receipt_file(tmp_path, keys.forged), "--trust-file", str(path)]) == 0
    assert main(["receipt", "verify", _receipt_file(tmp_path, keys.genuine), "--trust-file", str(path)]) == 0


def test_a_named_trust_file_that_is_missing_is_an_error(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["receipt", "verify", _receipt_file(tmp_path, keys.genuine), "--trust-file", str(tmp_path / "no")])

    assert status == 1
    assert (
        capsys.readouterr().err
        == f"error: no trust file at {tmp_path / 'no'}; make one with `modelcourt trust pin URL`\n"
    )


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"format": "other", "services": []}',
        b'{"format": "modelcourt-trust-v1", "services": [{"url": 1}]}',
    ],
    ids=["not json", "other format", "bad service"],
)
def test_an_unusable_trust_file_is_one_line_of_error(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    (tmp_path / "trust.json").write_bytes(content)

    status = main(
        ["receipt", "verify", _receipt_file(tmp_path, keys.genuine), "--trust-file", str(tmp_path / "trust.json")]
    )

    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert len(captured.err.splitlines()) == 1


def test_a_tampered_trust_file_is_refused(keys: Keys, tmp_path: Path) -> None:
    path = pin_file(tmp_path / "trust.json", keys.listing())
    document = json.loads(path.read_text())
    document["services"][0]["keys"][2]["public_key_pem"] = verdict_pem()  # a key that is not the one its kid names
    path.write_text(json.dumps(document))

    with pytest.raises(trust.TrustError, match="not the key its kid names"):
        trust.load_trust(path)
