"""Outbound HTTP to a dispute's endpoint: one POST to an address checked at connection time, never a redirect.

A dispute names its suspect's endpoint by URL, and whoever controls that name's DNS decides where it
points, at filing time and again at every later lookup. So the address is checked where and when the
connection is made: :func:`post` resolves the host once, refuses unless every address it resolves to
is publicly routable (or inside a network the operator allowed with ``MODELCOURT_ENDPOINT_ALLOW_PRIVATE``),
connects to exactly the address it checked (the name goes only into the ``Host`` header and TLS's
server name) and treats a redirect as an error. Each call is a new lookup and a new check.

A sandboxed verification run has no network: its child asks the worker through a relay
(:func:`relay_for`, in the worker; :func:`relay_post`, in the child) that POSTs only to the one URL the
worker bound it to, with a body and an allowlist of headers from the child, and answers a status and a
body, or an error in our own words.

Nothing an endpoint says (reason phrases, headers, error bodies, a redirect's target) goes into an
error message here: only status numbers, addresses we parsed and sentences of our own.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import os
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ALLOW_PRIVATE_ENV",
    "Answer",
    "EgressError",
    "Endpoint",
    "allowed_networks_from_env",
    "check_destination",
    "endpoint_url",
    "install_relay",
    "installed_relay",
    "non_global_reason",
    "parse_endpoint",
    "post",
    "relay_for",
    "relay_post",
]

ALLOW_PRIVATE_ENV = "MODELCOURT_ENDPOINT_ALLOW_PRIVATE"
RELAY_HEADERS = frozenset({"content-type", "accept"})
MAX_REQUEST_BYTES = 64 << 20
MAX_URL_CHARS = 2048
_MAX_RELAY_HEADER_BYTES = 4096
# an answer and its header line fit the sandbox channel's 64 MiB frame
MAX_RELAY_BODY_BYTES = (64 << 20) - _MAX_RELAY_HEADER_BYTES
_MAX_HEADER_VALUE = 256

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# socket.getaddrinfo's shape: (host, port, *, type=..., proto=...) -> [(family, type, proto, canonname, sockaddr)]
Resolver = Callable[..., Sequence[tuple[Any, ...]]]
Relay = Callable[[bytes], bytes]

_V4_SPECIAL: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), what)
    for net, what in (
        ("0.0.0.0/8", "'this network'"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignment"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved or broadcast"),
    )
)
_V6_SPECIAL: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), what)
    for net, what in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0:0/96", "IPv4-translated"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignment (Teredo, ORCHID and others)"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")

_installed_relay: Relay | None = None
logger = logging.getLogger(__name__)


class EgressError(Exception):
    """A request that was refused or failed; ``reason`` is our own sentence, ``transient`` says a retry may help."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint URL: where to connect and what to send as Host and request target."""

    scheme: str
    host: str
    port: int
    target: str
    host_header: str


@dataclass(frozen=True)
class Answer:
    """An endpoint's answer: the status, and the body when the status is 2xx (empty otherwise)."""

    status: int
    body: bytes


def endpoint_url(url: str, *, protocol: str, model_name: str | None) -> str:
    """The URL a query is POSTed to: ``url`` itself (json) or its Open Inference Protocol v2 infer route."""
    if protocol == "v2":
        if not model_name:
            raise ValueError("the v2 protocol needs a model name")
        return f"{url.rstrip('/')}/v2/models/{urllib.parse.quote(model_name, safe='')}/infer"
    return url


def parse_endpoint(url: str) -> Endpoint:
    """The URL's parts, or EgressError: http(s) only, a host, no user name or password, a valid port."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise EgressError(
            f"the endpoint must be an http:// or https:// URL of at most {MAX_URL_CHARS} characters", transient=False
        )
    if not url.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise EgressError(
            "the endpoint URL must be ASCII without spaces or control characters "
            "(write an internationalised host name in its xn-- form)",
            transient=False,
        )
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https") or not parsed.hostname:
        raise EgressError("the endpoint must be an http:// or https:// URL with a host", transient=False)
    if "@" in parsed.netloc:
        raise EgressError("the endpoint URL must not carry a user name or password", transient=False)
    host = parsed.hostname
    if "%" in host:
        raise EgressError("the endpoint's host must not carry an IPv6 zone", transient=False)
    try:
        explicit = parsed.port
    except ValueError as exc:
        raise EgressError("the endpoint URL's port is not a number from 1 to 65535", transient=False) from exc
    if explicit == 0:
        raise EgressError("the endpoint URL's port is not a number from 1 to 65535", transient=False)
    default = 443 if scheme == "https" else 80
    port = default if explicit is None else explicit
    literal = ":" in host  # an IPv6 literal, which the Host header writes in brackets
    host_header = f"[{host}]" if literal else host
    if port != default:
        host_header = f"{host_header}:{port}"
    target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    return Endpoint(scheme=scheme, host=host, port=port, target=target, host_header=host_header)


def non_global_reason(address: Address) -> str | None:
    """What kind of address this is when it is not publicly routable (e.g. "loopback"), or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return _v4_reason(address.ipv4_mapped, embedded="IPv4-mapped")
        if address in _NAT64:
            return _v4_reason(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), embedded="NAT64")
        if address.sixtofour is not None:
            return _v4_reason(address.sixtofour, embedded="6to4")
        for network, what in _V6_SPECIAL:
            if address in network:
                return what
        if address not in _GLOBAL_UNICAST_V6 or not address.is_global:
            return "non-global"
        return None
    return _v4_reason(address, embedded=None)


def _v4_reason(address: ipaddress.IPv4Address, *, embedded: str | None) -> str | None:
    for network, what in _V4_SPECIAL:
        if address in network:
            return f"{embedded} {what}" if embedded else what
    if not address.is_global:
        return f"{embedded} non-global" if embedded else "non-global"
    return None


def allowed_networks_from_env(environ: Mapping[str, str] | None = None) -> tuple[Network, ...]:
    """The networks ``MODELCOURT_ENDPOINT_ALLOW_PRIVATE`` names (comma-separated, e.g. "127.0.0.1/32"); none by default.

    A value that is not a list of networks is an operator's mistake: it raises ValueError rather than
    allowing more or less than was meant.
    """
    raw = (os.environ if environ is None else environ).get(ALLOW_PRIVATE_ENV, "")
    networks: list[Network] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ValueError(
                f"{ALLOW_PRIVATE_ENV} must list networks such as 127.0.0.1/32; {item!r} is not one"
            ) from exc
    return tuple(networks)


def _allowed(address: Address, networks: Iterable[Network]) -> bool:
    candidates: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(a.version == n.version and a in n for a in candidates for n in networks)


def check_destination(
    url: str,
    *,
    allowed_networks: Iterable[Network] | None = None,
    resolver: Resolver | None = None,
) -> tuple[Endpoint, list[Address]]:
    """The endpoint and the addresses its host resolves to now, each one checked; EgressError otherwise.

    A host that does not resolve is a transient EgressError (a lookup may fail for a moment); every
    other refusal is final. ``allowed_networks`` defaults to the environment's setting.
    """
    endpoint = parse_endpoint(url)
    networks = tuple(allowed_networks_from_env() if allowed_networks is None else allowed_networks)
    lookup = resolver if resolver is not None else socket.getaddrinfo
    try:
        infos = lookup(endpoint.host, endpoint.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise EgressError(f"the endpoint's host {endpoint.host} does not resolve", transient=True) from exc
    addresses: list[Address] = []
    for info in infos:
        raw = info[4][0] if len(info) > 4 and isinstance(info[4], tuple) and info[4] else None
        try:
            address = ipaddress.ip_address(raw) if isinstance(raw, str) and "%" not in raw else None
        except ValueError:
            address = None
        if address is None:
            raise EgressError(
                f"the endpoint's host {endpoint.host} resolves to something that is not a plain IP address",
                transient=False,
            )
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise EgressError(f"the endpoint's host {endpoint.host} does not resolve", transient=True)
    for address in addresses:
        what = non_global_reason(address)
        if what is not None and not _allowed(address, networks):
            raise EgressError(
                f"the endpoint's host {endpoint.host} is not a public address: it resolves to {address}, "
                f"a {what} address",
                transient=False,
            )
    return endpoint, addresses


def post(
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    max_response_bytes: int,
    allowed_networks: Iterable[Network] | None = None,
    resolver: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Answer:
    """POST ``body`` to ``url`` at an address checked just now; the answer, or EgressError.

    The whole exchange (lookup aside) fits in ``timeout_s``; a body over ``max_response_bytes`` is
    refused; a 3xx answer is an error (its target is not read, let alone followed). Non-2xx answers come
    back with an empty body.
    """
    endpoint, addresses = check_destination(url, allowed_networks=allowed_networks, resolver=resolver)
    deadline = time.monotonic() + timeout_s
    sock = _connect(endpoint, addresses, deadline=deadline, timeout_s=timeout_s)
    try:
        if endpoint.scheme == "https":
            context = ssl_context if ssl_context is not None else ssl.create_default_context()
            try:
                sock = context.wrap_socket(sock, server_hostname=endpoint.host)
            except ssl.SSLCertVerificationError as exc:
                raise EgressError("the endpoint's TLS certificate did not verify", transient=False) from exc
            except (ssl.SSLError, OSError) as exc:
                raise EgressError("the TLS handshake with the endpoint failed", transient=True) from exc
        return _exchange(sock, endpoint, body, headers, deadline=deadline, timeout_s=timeout_s, cap=max_response_bytes)
    finally:
        sock.close()


def _connect(endpoint: Endpoint, addresses: Sequence[Address], *, deadline: float, timeout_s: float) -> socket.socket:
    """A TCP connection to the first of the checked addresses that accepts one; never a new lookup."""
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(remaining)
        try:
            sock.connect((str(address), endpoint.port))
        except OSError:
            sock.close()
            continue
        return sock
    raise EgressError(f"could not connect to the endpoint within {timeout_s:g} s", transient=True)


def _exchange(
    sock: socket.socket,
    endpoint: Endpoint,
    body: bytes,
    headers: Mapping[str, str],
    *,
    deadline: float,
    timeout_s: float,
    cap: int,
) -> Answer:
    connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout_s)
    connection.sock = sock  # already connected to the checked address: http.client must not connect again
    sent = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")}
    sent.update({"Host": endpoint.host_header, "Connection": "close"})
    late = EgressError(f"no complete answer from the endpoint within {timeout_s:g} s", transient=True)
    response: http.client.HTTPResponse | None = None
    try:
        connection.request("POST", endpoint.target, body=body, headers=sent)
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        # read the answer ourselves: getresponse() would close the socket whose timeout bounds each read
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        status = response.status
        if 300 <= status < 400:
            raise EgressError(
                f"the endpoint answered a redirect (HTTP {status}), which is not followed", transient=False
            )
        if not 200 <= status < 300:
            return Answer(status=status, body=b"")
        length = response.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > cap:
            raise EgressError(f"the endpoint answered more than the {cap}-byte cap", transient=False)
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise late
            # a server that drips bytes must not outlive the deadline either
            sock.settimeout(remaining)
            chunk = response.read1(min(1 << 20, cap + 1 - size))  # one receive at most: bounded by the timeout
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                raise EgressError(f"the endpoint answered more than the {cap}-byte cap", transient=False)
        return Answer(status=status, body=b"".join(chunks))
    except TimeoutError as exc:
        raise late from exc
    except http.client.HTTPException as exc:
        raise EgressError("the endpoint's answer was not valid HTTP", transient=True) from exc
    except ssl.SSLError as exc:
        raise EgressError("the TLS connection to the endpoint failed", transient=True) from exc
    except ValueError as exc:  # http.client refuses a header value it cannot send
        raise EgressError("a request header could not be sent", transient=False) from exc
    except OSError as exc:
        raise EgressError(f"the connection to the endpoint failed ({type(exc).__name__})", transient=True) from exc
    finally:
        if response is not None:
            response.close()
        connection.close()


# --- the relay: the worker POSTs for its sandboxed child ------------------------------------------


def relay_for(
    url: str,
    *,
    timeout_s: float = 10.0,
    max_response_bytes: int = MAX_RELAY_BODY_BYTES,
    allowed_networks: Iterable[Network] | None = None,
    resolver: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Relay:
    """A relay that POSTs the child's body to ``url`` and nowhere else, checking the address on every call.

    Runs in the worker. The allowed networks are read here (from the environment unless given), never
    from the child or the task message. The relay never raises: a malformed request or a failed POST
    is an error frame.
    """
    parse_endpoint(url)  # a bad URL is refused when the relay is made, not per query
    networks = tuple(allowed_networks_from_env() if allowed_networks is None else allowed_networks)

    def relay(request: bytes) -> bytes:
        try:
            headers, body = _decode_relay_request(request)
            answer = post(
                url,
                body,
                headers=headers,
                timeout_s=timeout_s,
                max_response_bytes=max_response_bytes,
                allowed_networks=networks,
                resolver=resolver,
                ssl_context=ssl_context,
            )
        except EgressError as exc:
            return _frame({"error": exc.reason, "transient": exc.transient})
        except Exception as exc:  # the worker's loop must not die of one query; no endpoint text is logged
            logger.error("the endpoint relay failed unexpectedly (%s)", type(exc).__name__)
            return _frame({"error": "the worker's relay to the endpoint failed", "transient": False})
        return _frame({"status": answer.status}, answer.body)

    return relay


def relay_post(relay: Relay, body: bytes, *, headers: Mapping[str, str]) -> Answer:
    """Send one POST through ``relay`` (in the sandboxed child); the answer, or EgressError as the worker said."""
    try:
        raw = relay(_frame({"headers": dict(headers)}, body))
    except EgressError:
        raise
    except Exception as exc:  # whatever broke the relay, this query has no answer
        raise EgressError("the worker's relay to the endpoint failed", transient=False) from exc
    head, rest = _split_frame(raw)
    if isinstance(head.get("error"), str):
        raise EgressError(head["error"], transient=bool(head.get("transient")))
    status = head.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
        raise EgressError("the worker's relay answered a malformed frame", transient=False)
    return Answer(status=status, body=rest)


def install_relay(relay: Relay | None) -> None:
    """Make ``relay`` the way this process reaches endpoints (a sandboxed child without network)."""
    global _installed_relay  # one per process: a sandbox child runs one job
    _installed_relay = relay


def installed_relay() -> Relay | None:
    """The relay installed in this process, if any."""
    return _installed_relay


def _frame(head: Mapping[str, object], body: bytes = b"") -> bytes:
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + body


def _split_frame(raw: bytes) -> tuple[dict[str, Any], bytes]:
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise EgressError("the relay frame is not bytes", transient=False)
    data = bytes(raw)
    newline = data.find(b"\n", 0, _MAX_RELAY_HEADER_BYTES + 1)
    if newline < 0:
        raise EgressError("the relay frame has no header line", transient=False)
    try:
        head = json.loads(data[:newline])
    except (ValueError, RecursionError) as exc:
        raise EgressError("the relay frame's header is not JSON", transient=False) from exc
    if not isinstance(head, dict):
        raise EgressError("the relay frame's header is not an object", transient=False)
    return head, data[newline + 1 :]


def _decode_relay_request(request: bytes) -> tuple[dict[str, str], bytes]:
    """The child's headers and body; the child is not trusted, so anything outside the shape is refused."""
    head, body = _split_frame(request)
    headers = head.get("headers")
    if set(head) != {"headers"} or not isinstance(headers, dict):
        raise EgressError("the sandbox's request to the relay was malformed", transient=False)
    for name, value in headers.items():
        if not isinstance(name, str) or name.lower() not in RELAY_HEADERS:
            raise EgressError("the sandbox's request named a header the relay does not send", transient=False)
        if (
            not isinstance(value, str)
            or len(value) > _MAX_HEADER_VALUE
            or not value.isascii()
            or not value.isprintable()
        ):
            raise EgressError("the sandbox's request carried an invalid header value", transient=False)
    if len(body) > MAX_REQUEST_BYTES:
        raise EgressError(f"the sandbox's request is over the {MAX_REQUEST_BYTES}-byte limit", transient=False)
    return {str(k): str(v) for k, v in headers.items()}, body
