"""A reverse proxy that guards a model server it stands in front of (plain JSON or Open Inference Protocol v2).

Clients talk to the proxy exactly as they would to the model server. Each request is checked first
(size, JSON, finite numbers, one regular batch): a bad one gets 400 with a reason and the model never
sees it. A good one is passed on rebuilt from its checked inputs; the model's answer is read, the
watermarked rows rewritten, and the rewritten answer returned. The model server's own error bodies
are never echoed (only its status), and a model server that is down or answers garbage is a 502.

Slow and broken clients are the client's problem, never the server's: a request (its line, headers and
body together) must arrive within a few idle timeouts or it is answered 408 (or dropped, before its headers
are read); a client that breaks off mid-body gets one log line, not a traceback; at most
``max_connections`` connections are served at once and any beyond get 503 at once. Every error the
proxy or the HTTP layer answers is one of the proxy's own JSON sentences: nothing of the client's
request line, method or version is quoted back.

Routes: json: POST to the upstream URL's path or to /. v2: POST /v2/models/{name}/infer (``name`` must be
the configured model name when one is given). GET /healthz answers {"status": "ok"}; GET /metrics
gives the counters, to loopback clients only.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import logging
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from modelcourt.guard.commit import escape
from modelcourt.guard.config import GuardConfig
from modelcourt.guard.wrap import (
    AnswerError,
    Guard,
    GuardedRequest,
    RequestError,
    check_client_id,
    read_request,
    rewrite_answer,
)

__all__ = ["GuardProxyServer", "serve"]

MAX_UPSTREAM_BYTES = 64 * 1024 * 1024
# what the HTTP layer's own refusals say (http.server's pages would quote the client's line, method or version)
_HTTP_ERRORS = {
    400: "the request is not valid HTTP",
    408: "the request did not arrive in time",
    414: "the request line is too long",
    431: "the request's headers are too long or too many",
    501: "this method is not served here: use GET or POST",
    505: "this HTTP version is not served here: use HTTP/1.0 or HTTP/1.1",
}
_BUSY = b'{"error": "the guard is serving as many connections as it takes; try again shortly"}'
_V2_ROUTE = re.compile(r"^/v2/models/([^/]{1,128})/infer$")

logger = logging.getLogger("modelcourt.guard")


class _ProxyError(Exception):
    """An answer to send instead of the model's: an HTTP status and a sentence."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _ClientGoneError(Exception):
    """The client broke the connection while its request was read: there is no one to answer."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _DeadlineReader(io.RawIOBase):
    """A connection's reading side with a deadline for everything read, not only for each read.

    Each read waits at most the idle timeout and never past the deadline, so a client that trickles a byte
    just before every idle timeout is still cut off once the deadline passes (TimeoutError).
    """

    def __init__(self, connection: socket.socket, idle_s: float, deadline: float) -> None:
        super().__init__()
        self._connection = connection
        self._idle_s = idle_s
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        self._connection.settimeout(min(self._idle_s, left))
        return self._connection.recv_into(buffer)


class GuardProxyServer(ThreadingHTTPServer):
    """The proxy's server: one thread per connection (at most ``max_connections``), the guard shared by all."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        listen: tuple[str, int],
        *,
        guard: Guard,
        upstream: str,
        protocol: Literal["json", "v2"],
        model_name: str | None,
        owns_guard: bool,
    ) -> None:
        self.guard = guard
        self.upstream = upstream.rstrip("/") if protocol == "v2" else upstream
        self.upstream_path = urllib.parse.urlsplit(upstream).path or "/"
        self.protocol = protocol
        self.model_name = model_name
        self.owns_guard = owns_guard
        self.opener = urllib.request.build_opener(_NoRedirect)
        self.max_connections = guard.config.max_connections
        self._open = 0
        self._at_cap = False
        self._open_lock = threading.Lock()
        super().__init__(listen, _ProxyHandler)

    @property
    def open_connections(self) -> int:
        """How many connections are being served now."""
        with self._open_lock:
            return self._open

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on a thread of its own, or answer 503 at once when ``max_connections`` are open."""
        with self._open_lock:
            full = self._open >= self.max_connections
            if full and not self._at_cap:
                logger.warning("%d connections are open, the most the proxy serves: more get 503", self._open)
            self._at_cap = full
            if not full:
                self._open += 1
        if full:
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread took the connection: its slot is free again
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._open_lock:
            self._open -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a handler's own care: one log line for a network error."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            logger.info("a client connection failed: %s", escape(str(exc)))
        else:
            logger.exception("the guard proxy failed on a connection")

    def server_close(self) -> None:
        super().server_close()
        if self.owns_guard:
            self.guard.close(flush=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if isinstance(host, str) and ":" in host else str(host)
        return f"http://{shown}:{port}"


def _refuse_busy(connection: socket.socket) -> None:
    """Answer 503 on a connection the proxy will not serve, without waiting on it (the serving loop must not)."""
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(_BUSY)}\r\nRetry-After: 1\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    try:
        connection.setblocking(False)
        connection.send(head.encode() + _BUSY)
    except OSError:  # the client's buffer is full or it left: it is closed either way
        pass


def serve(
    config: GuardConfig,
    upstream: str,
    listen: tuple[str, int],
    protocol: Literal["json", "v2"],
    model_name: str | None = None,
    *,
    guard: Guard | None = None,
) -> GuardProxyServer:
    """Bind the proxy (call serve_forever() on the result); it makes and owns a Guard unless one is given."""
    parsed = urllib.parse.urlsplit(upstream)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.username or parsed.password:
        raise ValueError("the upstream must be an http:// or https:// URL with a host and no user name")
    if protocol not in ("json", "v2"):
        raise ValueError(f"the protocol is json or v2, not {protocol!r}")
    if model_name is not None and not _V2_ROUTE.match(f"/v2/models/{urllib.parse.quote(model_name, safe='')}/infer"):
        raise ValueError("the model name must be 1 to 128 characters")
    owned = guard is None
    active = guard if guard is not None else Guard(config)
    try:
        return GuardProxyServer(
            listen, guard=active, upstream=upstream, protocol=protocol, model_name=model_name, owns_guard=owned
        )
    except OSError:
        if owned:
            active.close()
        raise


class _ProxyHandler(BaseHTTPRequestHandler):
    server: GuardProxyServer
    timeout = 60  # a client that sends nothing for a minute is dropped
    request_timeouts = 3  # the whole request (line, headers, body) must arrive within this many idle timeouts
    server_version = "modelcourt-guard"
    sys_version = ""

    def setup(self) -> None:
        """The connection's reader gets the request's deadline (``request_timeouts`` idle timeouts from now)."""
        super().setup()
        idle = float(self.timeout) if self.timeout is not None else 60.0
        deadline = time.monotonic() + idle * self.request_timeouts
        self.rfile.close()  # the buffered reader made by the base class; the connection stays open
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, idle, deadline))

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/healthz":
            self._send_json(200, {"status": "ok"})
        elif path == "/metrics" and self._from_loopback():
            self._send(200, self.server.guard.metrics_text().encode(), "text/plain; version=0.0.4")
        else:
            self._send_json(404, {"error": "not found"})

    def do_POST(self) -> None:
        try:
            target = self._target()
            client = self._client()
            request = read_request(self._body(), self.server.protocol, input_shape=self.server.guard.config.input_shape)
            answer = self._forward(target, request)
            self._send(200, rewrite_answer(self.server.guard, client, request, answer), "application/json")
        except RequestError as exc:
            self._send_json(400, {"error": str(exc)})
        except _ClientGoneError:
            self.close_connection = True
        except _ProxyError as exc:
            self._send_json(exc.status, {"error": exc.reason})
        except AnswerError as exc:
            logger.warning("the model server's answer could not be read: %s", escape(str(exc)))
            self._send_json(502, {"error": f"the model server's answer could not be read: {exc}"})
        except Exception:  # never a traceback to the client, never a dead server thread
            logger.exception("the guard proxy failed on a request")
            self._send_json(500, {"error": "the guard failed on this request"})

    def _target(self) -> str:
        path = urllib.parse.urlsplit(self.path).path
        if self.server.protocol == "json":
            if path not in ("/", self.server.upstream_path):
                raise _ProxyError(404, "not found")
            return self.server.upstream
        match = _V2_ROUTE.match(path)
        if match is None:
            raise _ProxyError(404, "not found: POST /v2/models/{name}/infer")
        name = urllib.parse.unquote(match.group(1))
        if self.server.model_name is not None and name != self.server.model_name:
            raise _ProxyError(404, "no such model")
        return f"{self.server.upstream}/v2/models/{urllib.parse.quote(name, safe='')}/infer"

    def _client(self) -> str:
        if self.server.guard.config.trust_client_header:
            return check_client_id(self.headers.get("X-Client-Id"))
        return str(self.client_address[0])

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise _ProxyError(411, "send the request with a Content-Length, not chunked")
        limit = self.server.guard.config.max_body_bytes
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise _ProxyError(411, "the request needs a Content-Length") from None
        if length < 0:
            raise RequestError("the Content-Length is negative")
        if length > limit:
            self.close_connection = True  # the unread body must not be taken for the next request
            if length <= 2 * limit:  # read it away, so that the client can read the refusal before the close
                self._discard(length)
            raise _ProxyError(413, f"the request body must be at most {limit} bytes")
        body = self._read(length)
        if len(body) != length:
            raise RequestError("the request body ended early")
        return body

    def _read(self, length: int) -> bytes:
        """Up to ``length`` bytes of the body; a client too slow (408) or gone (no answer) gets one log line."""
        try:
            return self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            logger.info("a request body did not arrive in time; it was answered 408")
            raise _ProxyError(408, "the request body did not arrive in time") from None
        except OSError as exc:
            self.close_connection = True
            logger.info("a client broke off while sending its request: %s", escape(str(exc)))
            raise _ClientGoneError from None

    def _discard(self, length: int) -> None:
        left = length
        while left > 0:
            chunk = self._read(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)

    def _forward(self, target: str, request: GuardedRequest) -> bytes:
        upstream = urllib.request.Request(  # noqa: S310 -- http(s) checked in serve()
            target,
            data=request.body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        timeout = self.server.guard.config.upstream_timeout_s
        try:
            with self.server.opener.open(upstream, timeout=timeout) as response:
                status = int(response.status)
                payload: bytes = response.read(MAX_UPSTREAM_BYTES + 1)
        except urllib.error.HTTPError as exc:
            # only the status is repeated: the model server's error text is not the guard's to pass on
            status = int(exc.code)
            exc.close()
            raise _ProxyError(
                status if 400 <= status < 600 else 502, f"the model server answered HTTP {status}"
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            logger.warning("the model server could not be reached: %s", escape(str(getattr(exc, "reason", exc))))
            raise _ProxyError(502, "the model server could not be reached") from None
        if not 200 <= status < 300:
            raise _ProxyError(502, f"the model server answered HTTP {status}")
        if len(payload) > MAX_UPSTREAM_BYTES:
            raise _ProxyError(502, "the model server's answer is too large")
        return payload

    def _from_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.client_address[0]).is_loopback
        except ValueError:
            return False

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Every refusal of the HTTP layer (a malformed request line, an unknown method, headers too long) as one
        of the proxy's own JSON sentences: http.server's page would quote the client's method, version or line."""
        self.log_error("refused with HTTP %d: %s", code, message or "")  # escaped and at debug, in log_message
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an error always gets a status line and headers
            self.request_version = "HTTP/1.0"
        sentence = _HTTP_ERRORS.get(code, "the request was refused")
        self._send(code, json.dumps({"error": sentence}).encode(), "application/json", body=self.command != "HEAD")

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, payload: bytes, content_type: str, *, body: bool = True) -> None:
        try:
            self.connection.settimeout(self.timeout)  # reading may have left a shorter one, to its deadline
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.write(payload)
        except OSError:  # the client left; nothing to tell it
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        # request lines come from clients: escaped, and at debug level (they name raw client addresses)
        logger.debug("proxy %s", escape(format % args, limit=300))
