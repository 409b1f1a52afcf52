"""Endpoint egress: every address checked at each connection, the checked address used, no redirect followed."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import nothing_connected
from verification.methods import egress
from verification.methods.suspects import HttpSuspect, SuspectError

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)
PUBLIC = "93.184.215.14"
SECRET = "SECRET-FROM-ENDPOINT"


def answers(*addresses: str) -> list[tuple[Any, ...]]:
    """getaddrinfo's answer for these addresses."""
    out: list[tuple[Any, ...]] = []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        out.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, 0)))
    return out


class StubResolver:
    """Answers each lookup with the next list of addresses (the last one repeats); records the names asked."""

    def __init__(self, *rounds: list[str]) -> None:
        self.rounds = list(rounds)
        self.asked: list[str] = []

    def __call__(self, host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        self.asked.append(host)
        index = min(len(self.asked), len(self.rounds)) - 1
        return answers(*self.rounds[index])


class Recorder:
    """What a stub server was asked."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []


def serve(handle: Any, tls: ssl.SSLContext | None = None) -> Iterator[tuple[int, Recorder]]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            recorder.requests.append(("POST", self.path, dict(self.headers.items())))
            handle(self, len(recorder.requests))

        do_GET = do_POST  # noqa: N815 (http.server's name)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], recorder
    finally:
        httpd.shutdown()
        httpd.server_close()


def reply(
    handler: BaseHTTPRequestHandler, status: int, body: bytes, *, phrase: str | None = None, **headers: str
) -> None:
    handler.send_response(status, phrase)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def answer_labels(handler: BaseHTTPRequestHandler, count: int) -> None:
    reply(handler, 200, b'{"labels": [1, 2]}', Content_Type="application/json")


@pytest.fixture
def target() -> Iterator[tuple[int, Recorder]]:
    """The address a redirect points at: it must never be asked anything."""
    yield from serve(lambda handler, count: reply(handler, 200, b"admin page"))


@pytest.fixture
def labels_server() -> Iterator[tuple[int, Recorder]]:
    yield from serve(answer_labels)


def label_suspect(url: str, **options: Any) -> HttpSuspect:
    settings: dict[str, Any] = {"num_classes": 3, "input_shape": (2,), "output_kind": "labels", "backoff_s": 0.01}
    settings.update(options)
    return HttpSuspect(url, protocol="json", **settings)


X = np.zeros((2, 2), dtype=np.float32)


# --- which addresses are public ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "what"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared"),
        ("0.0.0.0", "this network"),  # noqa: S104 (an address refused, not bound)
        ("0.1.2.3", "this network"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("192.0.0.8", "IETF"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.9", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("192.88.99.1", "6to4 relay"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique local"),
        ("fd12:3456::1", "unique local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("100::1", "discard"),
        ("2001::1", "Teredo"),
        ("2001:10::1", "ORCHID"),
        ("64:ff9b:1::1", "local-use NAT64"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("::ffff:0:7f00:1", "IPv4-translated"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:10.0.0.1", "IPv4-mapped private"),
        ("::ffff:169.254.169.254", "IPv4-mapped link-local"),
        ("64:ff9b::7f00:1", "NAT64 loopback"),
        ("64:ff9b::a9fe:a9fe", "NAT64 link-local"),
        ("2002:7f00:1::1", "6to4 loopback"),
        ("2002:c0a8:101::1", "6to4 private"),
        ("4000::1", "non-global"),
    ],
)
def test_non_global_addresses_are_refused_and_named(address: str, what: str) -> None:
    reason = egress.non_global_reason(ipaddress.ip_address(address))

    assert reason is not None
    assert what in reason
    with pytest.raises(egress.EgressError) as refused:
        egress.check_destination("http://model.test/predict", allowed_networks=(), resolver=StubResolver([address]))
    assert not refused.value.transient
    assert "not a public address" in refused.value.reason
    assert str(ipaddress.ip_address(address)) in refused.value.reason


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        PUBLIC,
        "2606:4700:4700::1111",
        "2a00:1450:4001::1",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert egress.non_global_reason(ipaddress.ip_address(address)) is None
    _, addresses = egress.check_destination(
        "https://model.test/predict", allowed_networks=(), resolver=StubResolver([address])
    )
    assert addresses == [ipaddress.ip_address(address)]


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",
        "http://0x7f000001/",
        "http://127.1/",
        "http://017700000001/",
        "http://0/",
        "http://[::ffff:7f00:1]/",
        "http://[::1]:8000/",
        "http://localhost:6379/",
    ],
)
def test_loopback_in_any_spelling_is_refused_by_the_system_resolver(url: str) -> None:
    with pytest.raises(egress.EgressError, match="not a public address"):
        egress.check_destination(url, allowed_networks=())


def test_one_non_global_address_among_public_ones_refuses_the_host() -> None:
    with pytest.raises(egress.EgressError, match=r"127\.0\.0\.1"):
        egress.check_destination(
            "http://model.test/", allowed_networks=(), resolver=StubResolver([PUBLIC, "8.8.8.8", "127.0.0.1"])
        )


def test_a_name_that_does_not_resolve_is_a_transient_failure() -> None:
    def fails(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(egress.EgressError, match="does not resolve") as failed:
        egress.check_destination("http://nowhere.test/", allowed_networks=(), resolver=fails)
    assert failed.value.transient


def test_a_scoped_or_unparsable_resolver_answer_is_refused() -> None:
    def scoped(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%eth0", port, 0, 2))]

    with pytest.raises(egress.EgressError, match="not a plain IP address"):
        egress.check_destination("http://model.test/", allowed_networks=(), resolver=scoped)


# --- URLs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://model.test/x", "http"),
        ("file:///etc/passwd", "http"),
        ("http:///nohost", "http"),
        ("http://user:pw@model.test/", "user name or password"),
        ("http://user@model.test/", "user name or password"),
        ("http://model.test@127.0.0.1/", "user name or password"),
        ("http://model.test:0/", "port"),
        ("http://model.test:99999/", "port"),
        ("http://model.test:8x/", "port"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://model.test/a b", "control"),
        ("http://model.test/\r\nX-Evil: 1", "control"),
        ("http://mödel.test/", "ASCII"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(egress.EgressError, match=message):
        egress.parse_endpoint(url)


def test_ports_hosts_and_targets() -> None:
    assert egress.parse_endpoint("https://Model.Test/v2/x?y=1#frag") == egress.Endpoint(
        scheme="https", host="model.test", port=443, target="/v2/x?y=1", host_header="model.test"
    )
    assert egress.parse_endpoint("http://model.test:8080") == egress.Endpoint(
        scheme="http", host="model.test", port=8080, target="/", host_header="model.test:8080"
    )
    assert egress.parse_endpoint("http://[2001:4860::1]:81/p").host_header == "[2001:4860::1]:81"
    assert egress.parse_endpoint("http://model.test:80/").host_header == "model.test"


def test_the_resolver_is_asked_for_the_urls_port() -> None:
    seen: list[tuple[str, int]] = []

    def resolver(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        seen.append((host, port))
        return answers(PUBLIC)

    egress.check_destination("https://model.test/", allowed_networks=(), resolver=resolver)
    egress.check_destination("http://model.test:8443/", allowed_networks=(), resolver=resolver)
    assert seen == [("model.test", 443), ("model.test", 8443)]


# --- checked at connection time, connected to what was checked ---------------------------------------


def test_a_name_rebound_to_loopback_after_filing_gets_no_connection(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    url = f"http://rebound.test:{port}/predict"
    resolver = StubResolver([PUBLIC], ["127.0.0.1"])
    egress.check_destination(url, allowed_networks=(), resolver=resolver)  # at filing: public

    with pytest.raises(egress.EgressError) as refused:
        egress.post(
            url, b"{}", headers={}, timeout_s=2, max_response_bytes=1000, allowed_networks=(), resolver=resolver
        )

    assert not refused.value.transient
    assert "127.0.0.1" in refused.value.reason
    assert "loopback" in refused.value.reason
    assert nothing_connected(listener)
    assert resolver.asked == ["rebound.test", "rebound.test"]


def test_a_suspect_whose_name_is_rebound_fails_clearly_and_sends_no_evidence(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    suspect = label_suspect(
        f"http://rebound.test:{port}/predict", allowed_networks=(), resolver=StubResolver(["127.0.0.1"]), retries=2
    )

    with pytest.raises(SuspectError, match=r"not a public address: it resolves to 127\.0\.0\.1, a loopback"):
        suspect.labels(X)

    assert suspect.requests == 1  # a refused address is final: no retry
    assert nothing_connected(listener)


def test_each_connection_is_checked_again(labels_server: tuple[int, Recorder]) -> None:
    port, recorder = labels_server
    url = f"http://pinned.test:{port}/predict"
    resolver = StubResolver(["127.0.0.1"], ["127.0.0.1"], ["127.0.0.2"])
    suspect = label_suspect(url, allowed_networks=LOOPBACK, resolver=resolver)

    assert list(suspect.labels(X)) == [1, 2]
    assert list(suspect.labels(X)) == [1, 2]
    with pytest.raises(SuspectError, match=r"127\.0\.0\.2"):
        suspect.labels(X)  # the third lookup answers an address outside the allowed network

    assert len(recorder.requests) == 2
    assert resolver.asked == ["pinned.test"] * 3
    # the connection went to the checked address; the name travelled only in the Host header
    assert {request[2]["Host"] for request in recorder.requests} == {f"pinned.test:{port}"}


def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
    labels_server: tuple[int, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, recorder = labels_server

    def no_second_lookup(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a second name lookup was made")

    monkeypatch.setattr(socket, "getaddrinfo", no_second_lookup)
    monkeypatch.setattr(socket, "create_connection", no_second_lookup)
    answer = egress.post(
        f"http://pinned.test:{port}/predict",
        b"{}",
        headers={"Content-Type": "application/json"},
        timeout_s=5,
        max_response_bytes=1000,
        allowed_networks=LOOPBACK,
        resolver=StubResolver(["127.0.0.1"]),
    )
    assert (answer.status, answer.body) == (200, b'{"labels": [1, 2]}')
    assert len(recorder.requests) == 1


# --- redirects --------------------------------------------------------------------------------------


def test_a_redirect_into_admin_is_not_followed(target: tuple[int, Recorder]) -> None:
    target_port, target_recorder = target
    location = f"http://127.0.0.1:{target_port}/admin/"

    def redirect(handler: BaseHTTPRequestHandler, count: int) -> None:
        reply(handler, 302, b"", Location=location)

    for port, recorder in serve(redirect):
        suspect = label_suspect(f"http://127.0.0.1:{port}/predict", allowed_networks=LOOPBACK, retries=2)
        with pytest.raises(SuspectError, match="redirect") as failed:
            suspect.labels(X)

        assert len(recorder.requests) == 1
        assert recorder.requests[0][1] == "/predict"
        assert suspect.requests == 1
    assert target_recorder.requests == []
    assert "/admin/" not in str(failed.value)
    assert str(target_port) not in str(failed.value)


@pytest.mark.parametrize("status", [301, 303, 307, 308, 300, 304])
def test_every_3xx_is_an_error(status: int) -> None:
    def redirect(handler: BaseHTTPRequestHandler, count: int) -> None:
        reply(handler, status, b"", Location="/admin/")

    for port, recorder in serve(redirect):
        with pytest.raises(egress.EgressError, match=rf"redirect \(HTTP {status}\), which is not followed"):
            egress.post(
                f"http://127.0.0.1:{port}/p",
                b"{}",
                headers={},
                timeout_s=5,
                max_response_bytes=1000,
                allowed_networks=LOOPBACK,
                resolver=StubResolver(["127.0.0.1"]),
            )
        assert [r[1] for r in recorder.requests] == ["/p"]


# --- TLS ----------------------------------------------------------------------------------------------


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.mark.parametrize(("served", "verified"), [("pinned.test", True), ("other.test", False)])
def test_https_sends_the_name_as_sni_and_verifies_it(tmp_path: Path, served: str, verified: bool) -> None:
    cert_path, key_path = _certificate(tmp_path, served)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    names: list[str | None] = []
    server_context.sni_callback = lambda sock, name, context: names.append(name)
    client_context = ssl.create_default_context(cafile=str(cert_path))

    for port, recorder in serve(answer_labels, tls=server_context):
        url = f"https://pinned.test:{port}/predict"
        options: dict[str, Any] = {"headers": {}, "timeout_s": 5, "max_response_bytes": 1000}
        resolver = StubResolver(["127.0.0.1"])
        if verified:
            answer = egress.post(
                url, b"{}", allowed_networks=LOOPBACK, resolver=resolver, ssl_context=client_context, **options
            )
            assert answer.status == 200
            assert recorder.requests[0][2]["Host"] == f"pinned.test:{port}"
        else:
            with pytest.raises(egress.EgressError, match="certificate did not verify"):
                egress.post(
                    url, b"{}", allowed_networks=LOOPBACK, resolver=resolver, ssl_context=client_context, **options
                )
            assert recorder.requests == []
    assert names[:1] == ["pinned.test"]


# --- the endpoint's words stay out of our messages ---------------------------------------------------


@pytest.mark.parametrize("status", [404, 418, 500, 503])
def test_reason_phrases_and_bodies_are_not_repeated(status: int) -> None:
    def refuse(handler: BaseHTTPRequestHandler, count: int) -> None:
        reply(handler, status, SECRET.encode(), phrase=f"Nope {SECRET}", X_Detail=SECRET)

    for port, _ in serve(refuse):
        suspect = label_suspect(f"http://127.0.0.1:{port}/p", allowed_networks=LOOPBACK, retries=1)
        with pytest.raises(SuspectError) as failed:
            suspect.labels(X)
    assert f"HTTP {status}" in str(failed.value)
    assert SECRET not in str(failed.value)


def test_a_garbled_status_line_is_not_repeated() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]

        def garble() -> None:
            for _ in range(2):
                connection, _ = server.accept()
                with connection:
                    connection.recv(65536)
                    connection.sendall(f"HTTP/1.1 abc {SECRET}\r\n\r\n".encode())

        thread = threading.Thread(target=garble, daemon=True)
        thread.start()
        suspect = label_suspect(f"http://127.0.0.1:{port}/p", allowed_networks=LOOPBACK, retries=1)
        with pytest.raises(SuspectError, match="not valid HTTP") as failed:
            suspect.labels(X)
        thread.join(5)
    assert SECRET not in str(failed.value)


# --- caps and time ----------------------------------------------------------------------------------


def test_a_dripping_answer_is_cut_at_the_deadline() -> None:
    def drip(handler: BaseHTTPRequestHandler, count: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        try:
            for _ in range(100):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass

    for port, _ in serve(drip):
        started = time.monotonic()
        with pytest.raises(egress.EgressError, match=r"within 0\.4 s") as late:
            egress.post(
                f"http://127.0.0.1:{port}/p",
                b"{}",
                headers={},
                timeout_s=0.4,
                max_response_bytes=1 << 20,
                allowed_networks=LOOPBACK,
                resolver=StubResolver(["127.0.0.1"]),
            )
        assert time.monotonic() - started < 1.5
        assert late.value.transient


def test_an_answer_over_the_cap_is_refused_unread() -> None:
    def big(handler: BaseHTTPRequestHandler, count: int) -> None:
        reply(handler, 200, b"x" * 5000)

    for port, _ in serve(big):
        with pytest.raises(egress.EgressError, match="1000-byte cap") as refused:
            egress.post(
                f"http://127.0.0.1:{port}/p",
                b"{}",
                headers={},
                timeout_s=5,
                max_response_bytes=1000,
                allowed_networks=LOOPBACK,
                resolver=StubResolver(["127.0.0.1"]),
            )
        assert not refused.value.transient


# --- the operator's allowance -----------------------------------------------------------------------


def test_allow_private_names_networks_and_allows_only_those(labels_server: tuple[int, Recorder]) -> None:
    networks = egress.allowed_networks_from_env({egress.ALLOW_PRIVATE_ENV: " 127.0.0.1/32, fd00:1::/64 "})
    assert networks == (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("fd00:1::/64"))
    for allowed in ("127.0.0.1", "::ffff:127.0.0.1", "fd00:1::5"):
        egress.check_destination("http://stub.test/", allowed_networks=networks, resolver=StubResolver([allowed]))
    for refused in ("127.0.0.2", "10.0.0.1", "169.254.169.254", "fd00:2::1", "::1"):
        with pytest.raises(egress.EgressError, match="not a public address"):
            egress.check_destination("http://stub.test/", allowed_networks=networks, resolver=StubResolver([refused]))


@pytest.mark.parametrize("value", ["1", "true", "yes", "127.0.0.1/8", "localhost", "127.0.0.1/33"])
def test_allow_private_refuses_anything_but_networks(value: str) -> None:
    with pytest.raises(ValueError, match=egress.ALLOW_PRIVATE_ENV):
        egress.allowed_networks_from_env({egress.ALLOW_PRIVATE_ENV: value})


def test_allow_private_is_off_by_default_and_read_from_the_environment(
    labels_server: tuple[int, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, recorder = labels_server
    url = f"http://127.0.0.1:{port}/predict"
    monkeypatch.delenv(egress.ALLOW_PRIVATE_ENV, raising=False)
    assert egress.allowed_networks_from_env() == ()
    with pytest.raises(SuspectError, match="not a public address"):
        label_suspect(url).labels(X)
    assert recorder.requests == []

    monkeypatch.setenv(egress.ALLOW_PRIVATE_ENV, "127.0.0.1/32")
    assert list(label_suspect(url).labels(X)) == [1, 2]
    assert len(recorder.requests) == 1


# --- the relay --------------------------------------------------------------------------------------


def test_a_suspect_queries_through_the_relay(labels_server: tuple[int, Recorder]) -> None:
    port, recorder = labels_server
    url = f"http://relayed.test:{port}/predict"
    relay = egress.relay_for(url, timeout_s=5, allowed_networks=LOOPBACK, resolver=StubResolver(["127.0.0.1"]))
    # the child's URL is ignored: the relay posts to the one it was made for
    suspect = label_suspect("http://elsewhere.test/other", relay=relay, resolver=StubResolver(["8.8.8.8"]))

    assert list(suspect.labels(X)) == [1, 2]
    assert [(r[1], r[2]["Host"], r[2]["Content-Type"]) for r in recorder.requests] == [
        ("/predict", f"relayed.test:{port}", "application/json")
    ]


def test_the_relay_checks_the_address_at_every_call(
    labels_server: tuple[int, Recorder], listener: socket.socket
) -> None:
    port, recorder = labels_server
    url = f"http://rebound.test:{port}/p"
    egress.check_destination(url, allowed_networks=(), resolver=StubResolver([PUBLIC]))  # at filing: public
    # the relay's lookups: the allowed stub, then a loopback port outside the allowed network
    relay = egress.relay_for(
        url,
        allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),),
        resolver=StubResolver(["127.0.0.1"], ["127.0.0.2"]),
    )
    assert list(label_suspect("http://ignored.test/", relay=relay).labels(X)) == [1, 2]
    with pytest.raises(SuspectError, match=r"not a public address: it resolves to 127\.0\.0\.2, a loopback"):
        label_suspect("http://ignored.test/", relay=relay).labels(X)
    assert len(recorder.requests) == 1
    assert nothing_connected(listener)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"",
        b"no header line",
        b"[]\n{}",
        b'{"headers": {}, "url": "http://127.0.0.1/admin/"}\n{}',
        b'{"headers": {"Authorization": "Bearer x"}}\n{}',
        b'{"headers": {"Host": "127.0.0.1"}}\n{}',
        b'{"headers": {"Content-Type": "a\\r\\nX-Evil: 1"}}\n{}',
        b'{"headers": {"Accept": 5}}\n{}',
        b'{"headers": []}\n{}',
        b"\xff\xfe\n",
    ],
)
def test_the_relay_refuses_a_malformed_child_request_and_sends_nothing(
    labels_server: tuple[int, Recorder], request_bytes: bytes
) -> None:
    port, recorder = labels_server
    relay = egress.relay_for(
        f"http://127.0.0.1:{port}/p", timeout_s=5, allowed_networks=LOOPBACK, resolver=StubResolver(["127.0.0.1"])
    )

    answer = relay(request_bytes)

    head, _, _ = answer.partition(b"\n")
    assert b'"error"' in head
    assert b'"status"' not in head
    assert recorder.requests == []


def test_the_relay_refuses_a_bad_url_when_made() -> None:
    with pytest.raises(egress.EgressError, match="user name"):
        egress.relay_for("http://admin:pw@model.test/", allowed_networks=())


def test_a_broken_relay_is_a_clear_failure() -> None:
    def broken(request: bytes) -> bytes:
        raise OSError(f"socket gone {SECRET}")

    with pytest.raises(SuspectError, match="relay") as failed:
        label_suspect("http://model.test/p", relay=broken, retries=0).labels(X)
    assert SECRET not in str(failed.value)
    with pytest.raises(SuspectError, match="malformed"):
        label_suspect("http://model.test/p", relay=lambda request: b'{"status": "200"}\n', retries=0).labels(X)


# --- in the sandbox -----------------------------------------------------------------------------------


def labels_in_child(url: str, direct: bool = False) -> list[int]:
    """In a sandbox child: a suspect's labels through the worker's relay, or (``direct``) by its own connection."""
    from workers.sandbox import relay_call

    egress.install_relay(None if direct else relay_call)
    suspect = label_suspect(url, retries=0, allowed_networks=LOOPBACK if direct else None)
    return [int(v) for v in suspect.labels(X)]


@pytest.mark.slow
def test_a_sandboxed_suspect_reaches_its_endpoint_only_through_the_relay(labels_server: tuple[int, Recorder]) -> None:
    from workers.sandbox import SandboxError, run_sandboxed

    port, recorder = labels_server
    url = f"http://127.0.0.1:{port}/predict"
    relay = egress.relay_for(url, timeout_s=5, allowed_networks=LOOPBACK)
    limits: dict[str, Any] = {"timeout_s": 60, "memory_bytes": 2 << 30, "prewarm": False}

    assert run_sandboxed(labels_in_child, url, relay=relay, **limits) == [1, 2]
    assert len(recorder.requests) == 1

    with pytest.raises(SandboxError) as refused:  # no relay: the child may not open a socket of its own
        run_sandboxed(labels_in_child, url, True, **limits)
    assert refused.value.category == "forbidden"
    assert len(recorder.requests) == 1
