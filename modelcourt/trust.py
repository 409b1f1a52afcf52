"""Pinned trust anchors for offline verification: a service's public keys, fetched once and kept locally.

`modelcourt trust pin URL` reads GET /api/v1/keys/ (every key, current and retired, with its purpose) and
GET /api/v1/log/key, checks their shape and that each key is what its id says, and writes a trust file:

    {"format": "modelcourt-trust-v1",
     "services": [{"url": <normalised URL>, "pinned_at": <RFC 3339>,
                   "keys": [{"purpose": "tsa-ca" | "log" | "verdict", "kid", "status", "public_key_pem",
                             "certificate_pem" (tsa-ca), "verifier_key" (log)}, ...]}]}

`modelcourt verify` and `modelcourt receipt verify` then take their trust anchors from it: the TSA CA
certificates, the log's verifier keys and the verdict keys of every pinned service, current and retired
(a bundle signed before a rotation still verifies). Pure: no Django; the only network use is `fetch_keys`.
"""

import hashlib
import ipaddress
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPException
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from timestamps import note

TRUST_FORMAT = "modelcourt-trust-v1"
TRUST_FILE_ENV = "MODELCOURT_TRUST_FILE"
KEYS_PATH = "/api/v1/keys/"
LOG_KEY_PATH = "/api/v1/log/key"
PURPOSES = ("tsa-ca", "log", "verdict")  # what verification needs; the TSA leaves ride in every token
STATUSES = ("current", "retired")
FETCH_TIMEOUT_S = 15
MAX_KEYS_BYTES = 1024 * 1024
MAX_LOG_KEY_BYTES = 4096
MAX_TRUST_FILE_BYTES = 4 * 1024 * 1024
MAX_KEYS = 256
MAX_SERVICES = 64
MAX_PEM_CHARS = 16 * 1024
MAX_URL_CHARS = 2000

_HEX64 = re.compile(r"[0-9a-f]{64}")


class TrustError(ValueError):
    """A trust file, URL or service answer that cannot be used; the sentence is ours, never the service's."""


@dataclass(frozen=True)
class PinnedKey:
    """One public key of a service, checked: its material matches its id."""

    purpose: str
    kid: str
    status: str
    public_key_pem: str
    certificate_pem: str = ""
    verifier_key: str = ""

    @property
    def fingerprint(self) -> str:
        """What to compare out of band.

        A CA's SHA-256 certificate fingerprint (as `openssl x509 -fingerprint -sha256` shows it, without
        colons), the log's verifier key itself, a verdict key's id (the `# keyid` of keys/verdict.pem).
        """
        if self.purpose == "tsa-ca":
            der = x509.load_pem_x509_certificate(self.certificate_pem.encode()).public_bytes(Encoding.DER)
            return hashlib.sha256(der).hexdigest()
        if self.purpose == "log":
            return self.verifier_key
        return self.kid

    def as_json(self) -> dict[str, str]:
        """The trust file's form of the key."""
        value = {"purpose": self.purpose, "kid": self.kid, "status": self.status, "public_key_pem": self.public_key_pem}
        if self.purpose == "tsa-ca":
            value["certificate_pem"] = self.certificate_pem
        if self.purpose == "log":
            value["verifier_key"] = self.verifier_key
        return value


@dataclass(frozen=True)
class PinnedService:
    """A service's keys as pinned at one moment."""

    url: str
    pinned_at: str
    keys: tuple[PinnedKey, ...]

    def identities(self) -> set[tuple[str, str]]:
        """(purpose, fingerprint) of every key: what a re-pin compares."""
        return {(key.purpose, key.fingerprint) for key in self.keys}

    def as_json(self) -> dict[str, Any]:
        """The trust file's form of the service."""
        return {"url": self.url, "pinned_at": self.pinned_at, "keys": [key.as_json() for key in self.keys]}


@dataclass(frozen=True)
class Anchors:
    """What the verifiers take: TSA root certificates, log verifier keys, verdict public keys (all PEM/text)."""

    ca_pems: list[str]
    log_vkeys: list[str]
    verdict_pems: list[str]
    urls: list[str]


# --- where the file lives -------------------------------------------------------------------


def default_trust_path(environ: Mapping[str, str] | None = None) -> Path:
    """$MODELCOURT_TRUST_FILE, else $XDG_CONFIG_HOME/modelcourt/trust.json, else ~/.config/modelcourt/trust.json."""
    env = os.environ if environ is None else environ
    if env.get(TRUST_FILE_ENV):
        return Path(env[TRUST_FILE_ENV])
    config = env.get("XDG_CONFIG_HOME", "")
    # The XDG spec ignores relative values: they would depend on the directory the command runs in.
    base = Path(config) if config and Path(config).is_absolute() else Path.home() / ".config"
    return base / "modelcourt" / "trust.json"


# --- URLs -----------------------------------------------------------------------------------


def normalise_url(url: str) -> str:
    """The service's base URL as the trust file names it: http(s), lower-case host, no credentials or query."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS or any(c.isspace() for c in url):
        raise TrustError("the service URL is an http:// or https:// URL without spaces")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise TrustError("the service URL is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise TrustError("the service URL must start with https:// (or http://) and name a host")
    if parts.username is not None or parts.password is not None:
        raise TrustError("the service URL must not carry a user name or password (they would be written down)")
    if parts.query or parts.fragment:
        raise TrustError("the service URL is the service's base address, without a query or fragment")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


def is_plain_http(url: str) -> bool:
    """True for http:// to anything but this machine: keys fetched so could have been swapped on the way."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


# --- fetching -------------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect could lead from https to http or to another host: pin the URL that answers, not one it names.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _get(url: str, *, accept: str, limit: int, timeout: float) -> bytes:
    opener = urllib.request.build_opener(_NoRedirects)
    request = urllib.request.Request(url, headers={"Accept": accept}, method="GET")  # noqa: S310 -- http(s) checked
    try:
        with opener.open(request, timeout=timeout) as response:
            data: bytes = response.read(limit + 1)
    except urllib.error.HTTPError as exc:
        where = "a redirect elsewhere" if 300 <= exc.code < 400 else f"status {exc.code}"
        raise TrustError(f"{url} answered with {where}; nothing was pinned") from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        kind = "timed out" if isinstance(reason, TimeoutError) else "failed"
        raise TrustError(f"fetching {url} {kind}: {type(reason).__name__}; nothing was pinned") from None
    if len(data) > limit:
        raise TrustError(f"{url} answered with more than {limit} bytes; nothing was pinned")
    return data


def fetch_keys(url: str, *, timeout: float = FETCH_TIMEOUT_S, now: datetime | None = None) -> PinnedService:
    """GET the service's key list and current log key, and check them; raises TrustError."""
    base = normalise_url(url)
    listing = _get(base + KEYS_PATH, accept="application/json", limit=MAX_KEYS_BYTES, timeout=timeout)
    try:
        entries = json.loads(listing.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TrustError(f"{base + KEYS_PATH} did not answer with JSON; nothing was pinned") from None
    keys = parse_keys(entries, source=base + KEYS_PATH, skip_unknown_purposes=True)
    log_key = _get(base + LOG_KEY_PATH, accept="text/plain, */*", limit=MAX_LOG_KEY_BYTES, timeout=timeout)
    current = log_key.decode("ascii", errors="replace").strip()
    if current not in {key.verifier_key for key in keys if key.purpose == "log"}:
        raise TrustError(f"the log key {base + LOG_KEY_PATH} names is not in {KEYS_PATH}; nothing was pinned")
    moment = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    return PinnedService(url=base, pinned_at=moment, keys=keys)


# --- checking keys --------------------------------------------------------------------------


def parse_keys(entries: Any, *, source: str, skip_unknown_purposes: bool = False) -> tuple[PinnedKey, ...]:
    """Check a key list (the API's or the trust file's): every key of a known purpose, each what its id says."""
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_KEYS:
        raise TrustError(f"{source} is not a list of 1 to {MAX_KEYS} keys")
    keys: dict[tuple[str, str], PinnedKey] = {}
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise TrustError(f"key {number} of {source} is not an object")
        purpose = entry.get("purpose")
        if purpose not in PURPOSES:
            if skip_unknown_purposes and isinstance(purpose, str):
                continue
            raise TrustError(f"key {number} of {source} has no known purpose ({', '.join(PURPOSES)})")
        try:
            key = _checked_key(entry, purpose)
        except TrustError as exc:
            raise TrustError(f"key {number} of {source} ({purpose}): {exc}") from None
        keys.setdefault((key.purpose, key.kid), key)
    for purpose in PURPOSES:
        if not any(key.purpose == purpose for key in keys.values()):
            raise TrustError(f"{source} has no {purpose} key; verification needs one of each of {', '.join(PURPOSES)}")
    return tuple(sorted(keys.values(), key=lambda k: (PURPOSES.index(k.purpose), k.status != "current", k.kid)))


def _text(entry: Mapping[str, Any], name: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_PEM_CHARS:
        raise TrustError(f"{name} is missing or not text of at most {MAX_PEM_CHARS} characters")
    return value


def _checked_key(entry: Mapping[str, Any], purpose: str) -> PinnedKey:
    kid, status = entry.get("kid"), entry.get("status")
    if not isinstance(kid, str) or not _HEX64.fullmatch(kid):
        raise TrustError("kid is not 64 lower-case hex digits")
    if status not in STATUSES:
        raise TrustError(f"status is not one of {', '.join(STATUSES)}")
    public_pem = _text(entry, "public_key_pem")
    try:
        public = load_pem_public_key(public_pem.encode())
    except (ValueError, TypeError):
        raise TrustError("public_key_pem is not a PEM public key") from None
    if _spki_id(public) != kid:
        raise TrustError("public_key_pem is not the key its kid names")
    certificate, vkey = "", ""
    if purpose == "tsa-ca":
        certificate = _text(entry, "certificate_pem")
        try:
            certificates = x509.load_pem_x509_certificates(certificate.encode())
        except ValueError:
            raise TrustError("certificate_pem is not a PEM certificate") from None
        if len(certificates) != 1 or _spki_id(certificates[0].public_key()) != kid:
            raise TrustError("certificate_pem is not one certificate of the key its kid names")
        _require_ca(certificates[0])
        certificate = certificates[0].public_bytes(Encoding.PEM).decode()
    elif purpose == "log":
        vkey = _text(entry, "verifier_key").strip()
        # It is printed for people to compare: printable ASCII only, so nothing in it can hide or mislead.
        if not vkey.isascii() or not vkey.isprintable():
            raise TrustError("verifier_key is not printable ASCII")
        try:
            _, _, verifier = note.parse_verifier_key(vkey)
        except note.NoteError:
            raise TrustError("verifier_key is not a signed-note verifier key (name+id+base64)") from None
        if _spki_id(verifier) != kid:
            raise TrustError("verifier_key is not the key its kid names")
    elif not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        raise TrustError("a verdict key is an ECDSA P-256 public key")
    canonical = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    return PinnedKey(purpose, kid, status, canonical, certificate_pem=certificate, verifier_key=vkey)


def _spki_id(public: Any) -> str:
    if not isinstance(public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise TrustError("the key is neither ECDSA P-256 nor Ed25519")
    return hashlib.sha256(public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _require_ca(certificate: x509.Certificate) -> None:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        raise TrustError("certificate_pem is not a CA certificate (no basic constraints)") from None
    if not constraints.ca:
        raise TrustError("certificate_pem is not a CA certificate")


# --- the file -------------------------------------------------------------------------------


def load_trust(path: Path) -> list[PinnedService]:
    """The services a trust file pins; [] if there is no file; raises TrustError for an unusable one."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TRUST_FILE_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise TrustError(f"cannot read the trust file {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_TRUST_FILE_BYTES:
        raise TrustError(f"the trust file {path} is larger than {MAX_TRUST_FILE_BYTES} bytes")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TrustError(f"the trust file {path} is not JSON") from None
    if not isinstance(document, dict) or document.get("format") != TRUST_FORMAT:
        raise TrustError(f"the trust file {path} is not a {TRUST_FORMAT} document")
    services = document.get("services")
    if not isinstance(services, list) or len(services) > MAX_SERVICES:
        raise TrustError(f"the trust file {path} has no list of at most {MAX_SERVICES} services")
    pinned: dict[str, PinnedService] = {}
    for number, service in enumerate(services, start=1):
        where = f"service {number} of the trust file {path}"
        if not isinstance(service, dict) or not isinstance(service.get("pinned_at"), str):
            raise TrustError(f"{where} is not an object with a url, pinned_at and keys")
        url = normalise_url(service.get("url"))  # type: ignore[arg-type]
        if url in pinned:
            raise TrustError(f"{where} pins {url} a second time")
        pinned[url] = PinnedService(url, service["pinned_at"][:64], parse_keys(service.get("keys"), source=where))
    return list(pinned.values())


def save_trust(path: Path, services: Iterable[PinnedService]) -> None:
    """Write the trust file whole, in one rename, so a crash leaves the old or the new one."""
    document = {"format": TRUST_FORMAT, "services": [service.as_json() for service in services]}
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(prefix=".trust-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o644)  # public keys: readable, written only by its owner
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise TrustError(f"cannot write the trust file {path}: {exc.strerror or type(exc).__name__}") from None


def anchors_of(services: Sequence[PinnedService]) -> Anchors:
    """The trust anchors of every pinned service, current and retired keys alike."""
    keys = [key for service in services for key in service.keys]
    return Anchors(
        ca_pems=[key.certificate_pem for key in keys if key.purpose == "tsa-ca"],
        log_vkeys=[key.verifier_key for key in keys if key.purpose == "log"],
        verdict_pems=[key.public_key_pem for key in keys if key.purpose == "verdict"],
        urls=[service.url for service in services],
    )


def key_lines(keys: Iterable[PinnedKey], prefix: str = "  ") -> list[str]:
    """One line per key: purpose, status and fingerprint."""
    return [f"{prefix}{key.purpose:<8} {key.status:<8} {key.fingerprint}" for key in keys]


def key_changes(old: PinnedService, new: PinnedService) -> list[str]:
    """Lines for a re-pin: the pinned keys the service no longer publishes (-), those it adds (+)."""
    gone = [key for key in old.keys if (key.purpose, key.fingerprint) not in new.identities()]
    added = [key for key in new.keys if (key.purpose, key.fingerprint) not in old.identities()]
    return key_lines(gone, "- old ") + key_lines(added, "+ new ")
