"""The `modelcourt` command: register models and evidence, file and follow disputes, fetch receipts and verdicts,
verify receipts and verdict bundles offline."""

import argparse
import base64
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelcourt import trust
from modelcourt.bundle import verify_bundle
from modelcourt.forms import encode_multipart as encode_multipart  # re-exported: importers of it from here keep working
from modelcourt.receipts import Check, all_ok, verify_receipt

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 300  # one request, e.g. a large upload on a slow link (the sandbox check is polled, not awaited)
KINDS = ("watermark", "fingerprint", "dataset", "api_watermark")
METHODS = ("watermark", "fingerprint", "dataset_inference", "api_watermark")
# a dispute in one of these states changes no more by itself: `dispute status --wait` stops there
SETTLED = ("decided", "published", "failed", "withdrawn")
VERDICT_STATISTICS = ("K", "m", "p0", "panel_rank_p_value")


class CliError(Exception):
    """A failure to report in one line, with the exit status 1."""


# --- HTTP -----------------------------------------------------------------------------------


# C0 controls but the newline, DEL and C1 controls: what a terminal acts on. Titles, phases and reasons come
# from other people (an owner's request title, say), so they are shown escaped, never raw.
_TERMINAL_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _show(text: str, **options: Any) -> None:
    """Print text that came from the service, its control characters escaped."""
    print(_TERMINAL_CONTROLS.sub(lambda match: f"\\x{ord(match.group()):02x}", text), **options)


class Client:
    """The service's API v1 over urllib."""

    def __init__(self, base_url: str, token: str | None) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise CliError(f"--url must be an http:// or https:// URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token

    def request(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None) -> Any:
        """Send one request; the decoded JSON answer, or CliError carrying the service's sentence."""
        payload = self._send(method, path, body=body, content_type=content_type, accept="application/json")
        try:
            return json.loads(payload) if payload else None
        except ValueError:
            raise CliError(f"error: the service at {self.base_url} answered with something other than JSON") from None

    def download(self, path: str, accept: str) -> bytes:
        """GET a binary resource (errors still come back as JSON sentences)."""
        return self._send("GET", path, accept=f"{accept}, application/json")

    def _send(
        self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None, accept: str
    ) -> bytes:
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        request = urllib.request.Request(self.base_url + path, data=body, headers=headers, method=method)  # noqa: S310 -- scheme checked in __init__
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
                payload: bytes = response.read()
        except urllib.error.HTTPError as exc:
            raise CliError(f"error ({exc.code}): {_error_detail(exc)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise CliError(f"error (connection): cannot reach {self.base_url}: {reason}") from None
        return payload

    def get(self, path: str) -> Any:
        """GET a JSON resource."""
        return self.request("GET", path)

    def post_json(self, path: str, data: Any) -> Any:
        """POST a JSON body."""
        return self.request("POST", path, body=json.dumps(data).encode(), content_type="application/json")

    def post_form(self, path: str, fields: Sequence[tuple[str, str]], files: Sequence[tuple[str, str, bytes]]) -> Any:
        """POST multipart/form-data."""
        body, content_type = encode_multipart(fields, files)
        return self.request("POST", path, body=body, content_type=content_type)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
    except (ValueError, OSError):
        return str(exc.reason)
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(exc.reason)


# --- commands -------------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"error: cannot read {path}: {exc.strerror}") from None


def _read_json(path: str) -> Any:
    try:
        return json.loads(_read_bytes(path))
    except ValueError:
        raise CliError(f"error: {path} is not JSON") from None


def _write_bytes(path: str, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise CliError(f"error: cannot write {path}: {exc.strerror}") from None


def _model_path(model_id: str, suffix: str = "") -> str:
    return f"/api/v1/models/{urllib.parse.quote(model_id, safe='')}/{suffix}"


def cmd_register(args: argparse.Namespace, client: Client) -> int:
    """Upload an artifact and register it; unless --no-wait, follow the sandbox check until it is decided.

    The registration goes to stdout as JSON; progress goes to stderr. Exit status 1 when the
    service rejected the model (its reason on stderr) or the check outlasted --timeout.
    """
    fields = [
        ("name", args.name),
        ("task", args.task),
        ("input_shape", json.dumps(args.input_shape)),
        ("num_classes", str(args.classes)),
    ]
    files = [("artifact", Path(args.artifact).name, _read_bytes(args.artifact))]
    model = client.post_form("/api/v1/models/", fields, files)
    if not args.no_wait and isinstance(model, dict) and model.get("state") == "validating":
        model = _wait_for_validation(args, client, model)
    _print_json(model)
    if isinstance(model, dict) and model.get("state") == "rejected":
        print(f"error: the model was rejected: {model.get('rejection_reason') or 'no reason given'}", file=sys.stderr)
        return 1
    return 0


def _wait_for_validation(args: argparse.Namespace, client: Client, model: dict[str, Any]) -> dict[str, Any]:
    """Poll a `validating` registration until the service has decided; progress lines on stderr."""
    path = _model_path(str(model.get("id"))).rstrip("/")
    started = time.monotonic()
    deadline = started + args.timeout
    print(f"uploaded {model.get('name')} ({model.get('id')}); validating in the sandbox", file=sys.stderr, flush=True)
    while model.get("state") == "validating":
        left = deadline - time.monotonic()
        if left <= 0:
            raise CliError(
                f"error: model {model.get('id')} is still validating after {args.timeout:g} s; "
                f"see its state with GET {path}"
            )
        time.sleep(min(args.interval, left))
        model = client.get(path)
        elapsed = time.monotonic() - started
        print(f"[{elapsed:5.0f} s] {model.get('state')}", file=sys.stderr, flush=True)
    return model


def cmd_evidence_add(args: argparse.Namespace, client: Client) -> int:
    """Upload an .npz evidence set; the service commits to it."""
    files = [("file", Path(args.file).name, _read_bytes(args.file))]
    _print_json(client.post_form(_model_path(args.model_id, "evidence/"), [("kind", args.kind)], files))
    return 0


def cmd_evidence_generate(args: argparse.Namespace, client: Client) -> int:
    """Have the service generate and commit to a verifiable watermark; save the trigger set."""
    answer = client.post_json(
        _model_path(args.model_id, "evidence/generate"), {"count": args.count, "low": args.low, "high": args.high}
    )
    if not isinstance(answer, dict) or not isinstance(answer.get("evidence_npz_b64"), str):
        raise CliError("error: the service's answer has no evidence_npz_b64")
    out = args.out or f"watermark-{answer.get('id', answer.get('commitment', 'new'))}.npz"
    _write_bytes(out, base64.b64decode(answer.pop("evidence_npz_b64")))
    _print_json({**answer, "evidence_npz": out})
    return 0


def cmd_evidence_adopt(args: argparse.Namespace, client: Client) -> int:
    """Commit a generated watermark again for the model it was embedded in (the model you deploy)."""
    _print_json(client.post_json(_model_path(args.model_id, "evidence/adopt"), {"source": args.source}))
    return 0


def cmd_sighting_record(args: argparse.Namespace, client: Client) -> int:
    """Time-stamp a model file's digest, or have an endpoint probed: later disputes count it as first known."""
    if bool(args.file) == bool(args.endpoint_url):
        raise CliError("error: give a model file or --url, not both")
    if args.file:
        files = [("file", Path(args.file).name, _read_bytes(args.file))]
        _print_json(client.post_form("/api/v1/sightings/", [("note", args.note)], files))
        return 0
    if not args.input_shape or not args.num_classes:
        raise CliError("error: an endpoint sighting needs --input-shape and --num-classes")
    body = {
        "url": args.endpoint_url,
        "protocol": args.protocol,
        "model_name": args.model_name or "",
        "output": args.output,
        "input_shape": [int(d) for d in args.input_shape.split(",")],
        "num_classes": args.num_classes,
        "note": args.note,
    }
    _print_json(client.post_json("/api/v1/sightings/", body))
    return 0


def cmd_sighting_show(args: argparse.Namespace, client: Client) -> int:
    """One sighting: what was recorded, and when (public)."""
    _print_json(client.get(f"/api/v1/sightings/{urllib.parse.quote(args.sighting_id, safe='')}"))
    return 0


def cmd_receipt_get(args: argparse.Namespace, client: Client) -> int:
    """Fetch the public receipt of a commitment."""
    receipt = client.get(f"/api/v1/receipts/{urllib.parse.quote(args.commitment, safe='')}")
    if args.output:
        _write_bytes(args.output, (json.dumps(receipt, indent=2) + "\n").encode())
    else:
        _print_json(receipt)
    return 0


def cmd_receipt_verify(args: argparse.Namespace) -> int:
    """Verify a receipt offline, and the opening or evidence when given."""
    receipt = _read_json(args.receipt)
    anchors = _trust_anchors(args, verdict=False)
    checks = verify_receipt(
        receipt,
        ca_pems=anchors.ca_pems,
        log_vkey=anchors.log_vkeys,
        opening=_read_json(args.opening) if args.opening else None,
        evidence_npz=_read_bytes(args.evidence) if args.evidence else None,
        salt=args.salt,
        seed=args.seed,
        trust_embedded_keys=args.insecure_trust_embedded_keys,
    )
    return _report_trusted([*anchors.checks, *checks], anchors, args, "receipt")


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a verdict bundle offline."""
    anchors = _trust_anchors(args, verdict=True)
    checks = verify_bundle(
        args.bundle,
        ca_pems=anchors.ca_pems,
        log_vkey=anchors.log_vkeys,
        verdict_keys=anchors.verdict_pems,
        trust_embedded_keys=args.insecure_trust_embedded_keys,
    )
    return _report_trusted([*anchors.checks, *checks], anchors, args, "bundle")


# --- trust anchors --------------------------------------------------------------------------

INSECURE_FLAG = "--insecure-trust-embedded-keys"
ANCHOR_FLAGS = {
    "ca": "TSA CA certificate (--ca)",
    "log": "log key (--log-key)",
    "verdict": "verdict key (--verdict-key)",
}


@dataclass
class _Anchors:
    """The anchors a verification uses: given on the command line, else pinned in the trust file, else none."""

    ca_pems: list[str] | None
    log_vkeys: list[str] | None
    verdict_pems: list[str] | None
    missing: list[str]
    checks: list[Check]
    path: Path


def _trust_path(args: argparse.Namespace) -> tuple[Path, bool]:
    """The trust file, and whether the user named it (--trust-file or $MODELCOURT_TRUST_FILE)."""
    if args.trust_file:
        return Path(args.trust_file), True
    return trust.default_trust_path(), bool(os.environ.get(trust.TRUST_FILE_ENV))


def _pinned(path: Path) -> list[trust.PinnedService]:
    try:
        return trust.load_trust(path)
    except trust.TrustError as exc:
        raise CliError(f"error: {exc}") from None


def _trust_anchors(args: argparse.Namespace, *, verdict: bool) -> _Anchors:
    """Explicit --ca/--log-key/--verdict-key first, each on its own; what is not given comes from the trust file."""
    path, named = _trust_path(args)
    ca = [_read_bytes(p).decode(errors="replace") for p in args.ca] if args.ca else None
    log = [_log_key(args.log_key) or ""] if args.log_key is not None else None
    keys = [_read_bytes(p).decode(errors="replace") for p in args.verdict_key] if args.verdict_key else None
    checks: list[Check] = []
    if ca is None or log is None or (verdict and keys is None):
        if named and not path.is_file():
            raise CliError(f"error: no trust file at {path}; make one with `modelcourt trust pin URL`")
        pinned = trust.anchors_of(_pinned(path))
        taken = []
        if ca is None and pinned.ca_pems:
            ca = pinned.ca_pems
            taken.append("TSA CA certificates")
        if log is None and pinned.log_vkeys:
            log = pinned.log_vkeys
            taken.append("log keys")
        if verdict and keys is None and pinned.verdict_pems:
            keys = pinned.verdict_pems
            taken.append("verdict keys")
        if taken:
            checks.append(Check("pinned keys", True, f"{', '.join(taken)} of {', '.join(pinned.urls)} from {path}"))
    needed = [("ca", ca), ("log", log), *([("verdict", keys)] if verdict else [])]
    missing = [name for name, value in needed if value is None]
    return _Anchors(ca, log, keys, missing, checks, path)


def _report_trusted(checks: Sequence[Check], anchors: _Anchors, args: argparse.Namespace, what: str) -> int:
    """The report; then, when an anchor was missing, the sentence that says which and how to pin it."""
    status = _report(checks)
    if not anchors.missing:
        return status
    names = ", ".join(ANCHOR_FLAGS[name] for name in anchors.missing)
    if args.insecure_trust_embedded_keys:
        print(
            f"warning: {INSECURE_FLAG}: no trusted {names}, so the {what}'s own keys were used; "
            f"a forged {what} carries its own keys and passes these checks",
            file=sys.stderr,
        )
        return status
    where = "" if anchors.path.is_file() else f", and there is no trust file at {anchors.path}"
    print(
        f"error: not verified: no trusted {names} was given{where}. Pin the service's keys once with "
        "`modelcourt trust pin URL` (compare the fingerprints it prints out of band), or pass them; "
        f"{INSECURE_FLAG} checks the {what} against the keys inside it, which proves nothing about who made it",
        file=sys.stderr,
    )
    return 1


def cmd_trust_pin(args: argparse.Namespace) -> int:
    """Fetch a service's public keys once and pin them in the trust file, printing their fingerprints."""
    path, _ = _trust_path(args)
    services = _pinned(path)
    try:
        fetched = trust.fetch_keys(args.service_url)
    except trust.TrustError as exc:
        raise CliError(f"error: {exc}") from None
    if trust.is_plain_http(fetched.url):
        print(
            f"warning: {fetched.url} is plain http: anyone on the way could have swapped the keys",
            file=sys.stderr,
        )
    old = next((service for service in services if service.url == fetched.url), None)
    if old is not None and old.identities() != fetched.identities():
        print(f"the keys of {fetched.url} differ from those pinned at {old.pinned_at}:")
        print("\n".join(trust.key_changes(old, fetched)))
        if not args.replace:
            raise CliError(
                f"error: nothing changed in {path}; confirm the new fingerprints with the service's operator "
                "out of band, then pin again with --replace"
            )
    kept = [service for service in services if service.url != fetched.url]
    try:
        trust.save_trust(path, [*kept, fetched])
    except trust.TrustError as exc:
        raise CliError(f"error: {exc}") from None
    verb = "pinned" if old is None else "re-pinned" if old.identities() != fetched.identities() else "unchanged"
    print(f"{verb}: {len(fetched.keys)} keys of {fetched.url} in {path}")
    print("\n".join(trust.key_lines(fetched.keys)))
    print("compare these fingerprints with the service's operator over another channel before trusting them")
    return 0


def cmd_trust_show(args: argparse.Namespace) -> int:
    """Print the pinned services and their keys' fingerprints."""
    path, _ = _trust_path(args)
    services = _pinned(path)
    if not services:
        raise CliError(f"error: no keys are pinned in {path}; pin a service's keys with `modelcourt trust pin URL`")
    print(f"trust file: {path}")
    for service in services:
        print(f"{service.url} (pinned {service.pinned_at})")
        print("\n".join(trust.key_lines(service.keys)))
    return 0


def _dispute_path(dispute_id: str, suffix: str = "") -> str:
    return f"/api/v1/disputes/{urllib.parse.quote(dispute_id, safe='')}{suffix}"


def _verdict_path(verdict_id: str, suffix: str = "") -> str:
    return f"/api/v1/verdicts/{urllib.parse.quote(verdict_id, safe='')}{suffix}"


def _suspect_form(
    args: argparse.Namespace, optional: dict[str, Any]
) -> tuple[list[tuple[str, str]], list[tuple[str, str, bytes]]]:
    """The claimant, methods, evidence and the one suspect as multipart fields and files."""
    fields = [("claimant_model", args.claimant), ("methods", args.methods)]
    fields += [("evidence_sets", evidence_id) for evidence_id in args.evidence or []]
    if args.api_client:
        fields.append(("api_client", args.api_client))
    files: list[tuple[str, str, bytes]] = []
    if args.suspect_file:
        files.append(("suspect_file", Path(args.suspect_file).name, _read_bytes(args.suspect_file)))
    elif args.suspect_model:
        optional["suspect_model"] = args.suspect_model
    else:
        optional.update(
            suspect_url=args.suspect_url,
            suspect_protocol=args.protocol,
            suspect_model_name=args.model_name,
            suspect_output=args.output,
        )
    fields += [(name, str(value)) for name, value in optional.items() if value is not None]
    return fields, files


def _default_title(args: argparse.Namespace) -> str:
    suspect = Path(args.suspect_file).name if args.suspect_file else args.suspect_model or args.suspect_url
    return args.title or f"claim of {args.claimant} against {suspect}"[:200]


def cmd_dispute_file(args: argparse.Namespace, client: Client) -> int:
    """File a dispute: the claimant's registration against one suspect (file, registered model or endpoint)."""
    optional = {
        "title": _default_title(args),
        "alpha": args.alpha,
        "query_budget": args.budget,
        "panel": args.panel,
        "suspect_released_at": args.released_at,
        "suspect_release_source": args.release_source,
    }
    fields, files = _suspect_form(args, optional)
    _print_json(client.post_form("/api/v1/disputes/", fields, files))
    return 0


def cmd_dispute_request(args: argparse.Namespace, client: Client) -> int:
    """Ask the arbiters to file a dispute for one of your registrations against one suspect (owner)."""
    fields, files = _suspect_form(args, {"title": _default_title(args), "statement": args.statement})
    _print_json(client.post_form("/api/v1/dispute-requests/", fields, files))
    return 0


def _progress_line(dispute: dict[str, Any]) -> str:
    return f"[{dispute.get('progress', 0):>3}%] {dispute.get('state')}: {dispute.get('phase') or '-'}"


def cmd_dispute_status(args: argparse.Namespace, client: Client) -> int:
    """Print a dispute's state, progress and phase; with --wait, follow it until it settles."""
    path = _dispute_path(args.dispute_id)
    dispute = client.get(path)
    if args.wait:
        deadline = time.monotonic() + args.timeout
        shown = ""
        while True:
            line = _progress_line(dispute)
            if line != shown:
                _show(line, flush=True)
                shown = line
            if dispute.get("state") in SETTLED:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise CliError(
                    f"error: dispute {args.dispute_id} is still {dispute.get('state')} after {args.timeout:g} s"
                )
            time.sleep(min(args.interval, left))
            dispute = client.get(path)
    _show(f"dispute {dispute.get('id')}: {dispute.get('title')}")
    _show(f"state: {dispute.get('state')}")
    _show(f"progress: {dispute.get('progress')}%")
    _show(f"phase: {dispute.get('phase') or '-'}")
    if dispute.get("failure_reason"):
        _show(f"failure: {dispute['failure_reason']}")
    verdict = dispute.get("verdict")
    if verdict:
        published = "published" if verdict.get("published_at") else "not published"
        url = client.base_url + _verdict_path(str(verdict.get("id")))
        _show(f"verdict: {verdict.get('id')} ({verdict.get('outcome')}, {published}) {url}")
    return 1 if args.wait and dispute.get("state") in ("failed", "withdrawn") else 0


def _statistic(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def cmd_verdict_get(args: argparse.Namespace, client: Client) -> int:
    """Print a verdict's outcome and key statistics; optionally save its evidence bundle."""
    verdict = client.get(_verdict_path(args.verdict_id))
    predicate = verdict.get("predicate") or {}
    decision = predicate.get("decision") or {}
    _show(f"verdict {verdict.get('id')}: {verdict.get('outcome')}")
    _show(f"dispute: {verdict.get('title')}")
    published = verdict.get("published_at") or "not yet (only the dispute's arbiter can read it)"
    _show(f"published: {published}")
    _show(f"alpha: {_statistic(predicate.get('alpha'))}  log index: {verdict.get('log_index')}")
    rejects = decision.get("holm") or {}
    for test in decision.get("tests") or []:
        stats = test.get("statistics") or {}
        name = test.get("name", "?")
        verdict_of_test = "rejects the null" if rejects.get(name) else "does not reject the null"
        if not test.get("conclusive", True):
            verdict_of_test = f"inconclusive: {test.get('reason', '')}".rstrip(": ")
        numbers = ", ".join(f"{key} = {_statistic(stats[key])}" for key in VERDICT_STATISTICS if key in stats)
        p_value = _statistic(test.get("p_value"))
        _show(f"test {name} ({test.get('kind', '?')}): p = {p_value}; {numbers}; {verdict_of_test}")
    for screen in decision.get("screens") or []:
        result = "rejects the claim" if screen.get("rejected") else "passed"
        _show(f"false-claim screen {screen.get('name', '?')}: p = {_statistic(screen.get('p_value'))}; {result}")
    for reason in decision.get("reasons") or []:
        _show(f"reason: {reason}")
    if args.bundle:
        data = client.download(_verdict_path(args.verdict_id, "/bundle"), "application/zip")
        _write_bytes(args.bundle, data)
        _show(f"bundle: {args.bundle} ({len(data)} bytes); check it offline with: modelcourt verify {args.bundle}")
    return 0


def _log_key(value: str | None) -> str | None:
    """A verifier key given as itself or as a file holding it."""
    if value is not None and Path(value).is_file():
        return _read_bytes(value).decode(errors="replace").strip()
    return value


def _report(checks: Sequence[Check]) -> int:
    """Print one line per check; the exit status is 1 unless every check passed."""
    for check in checks:
        status = "FAIL" if not check.ok else "WARN" if check.warning else "OK  "
        print(f"{status} {check.name}: {check.detail}")
    return 0 if all_ok(checks) else 1


# --- guard: run beside the owner's own model server ---------------------------------------------


def _guard_config(args: argparse.Namespace) -> Any:
    """The guard's settings: MODELCOURT_GUARD_* variables, with this command's flags winning."""
    from modelcourt.guard.config import GuardConfig, GuardConfigError

    try:
        return GuardConfig.from_env(
            os.environ,
            model_id=args.model,
            num_classes=getattr(args, "classes", None),
            service_url=args.url,
            token=args.token,
            journal_dir=Path(args.journal) if args.journal else None,
            trust_client_header=True if getattr(args, "trust_client_header", False) else None,
            input_shape=tuple(args.input_shape) if getattr(args, "input_shape", None) else None,
        )
    except GuardConfigError as exc:
        raise CliError(f"error: {exc}") from None


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CliError(f"error: --listen is HOST:PORT, e.g. 127.0.0.1:8080 (not {text!r})")
    return host.strip("[]"), int(port)


def cmd_guard_serve(args: argparse.Namespace) -> int:
    """Run the guarding reverse proxy in front of a model server until interrupted (SIGINT or SIGTERM)."""
    import logging
    import signal
    import threading

    from modelcourt.guard.journal import JournalError
    from modelcourt.guard.proxy import serve

    config = _guard_config(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = serve(config, args.upstream, _listen_address(args.listen), args.protocol, args.model_name)
    except (ValueError, OSError, JournalError) as exc:
        raise CliError(f"error: the guard cannot start: {exc}") from None
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"guarding {args.upstream} at {server.url} (model {config.model_id})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()  # stops the commit thread after one last try
    return 0


def cmd_guard_flush(args: argparse.Namespace) -> int:
    """Commit every pending journaled answer now (when no guard process holds the journal)."""
    from modelcourt.guard.commit import CommitError
    from modelcourt.guard.journal import JournalError
    from modelcourt.guard.wrap import Guard

    config = _guard_config(args)
    try:
        guard = Guard(config, background=False)
    except JournalError as exc:
        raise CliError(f"error: {exc}") from None
    try:
        _print_json(guard.flush())
    except CommitError as exc:
        _print_json(exc.committed)
        raise CliError(f"error: {exc.reason}; {guard.journal.pending_count} answers stay pending") from None
    finally:
        guard.close()
    return 0


def cmd_guard_status(args: argparse.Namespace) -> int:
    """Print the journal's counts: answers journaled, committed, pending (read-only; safe while serving)."""
    import datetime as dt

    from modelcourt.guard.journal import Journal, JournalError

    directory = args.journal or os.environ.get("MODELCOURT_GUARD_JOURNAL")
    if not directory:
        raise CliError("error: give --journal or set MODELCOURT_GUARD_JOURNAL")
    try:
        journal = Journal(directory, readonly=True)
    except JournalError as exc:
        raise CliError(f"error: {exc}") from None
    pending = journal.pending_count
    committed = journal.commits[-1].last_seq if journal.commits else 0
    _show(f"journal: {directory}")
    _show(f"watermarked answers: {journal.last_seq}")
    _show(f"committed: {committed} in {len(journal.commits)} batches")
    if journal.commits:
        last = journal.commits[-1]
        _show(f"last commit: evidence {last.evidence_id}, commitment {last.commitment}, at {last.committed_at}")
    oldest = journal.oldest_pending_time()
    if oldest is None:
        _show("pending: 0")
    else:
        since = dt.datetime.fromtimestamp(oldest, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        _show(f"pending: {pending} (oldest served {since}, {max(0.0, time.time() - oldest):.0f} s ago)")
    journal.close()
    return 0


def _add_guard_commands(commands: Any) -> None:
    guard = commands.add_parser(
        "guard", help="watermark and journal your model's API answers, and watch for extraction (docs/guard.md)"
    ).add_subparsers(dest="guard_command", required=True)
    serving = guard.add_parser("serve", help="run the guarding reverse proxy in front of your model server")
    serving.add_argument("--upstream", required=True, help="the model server: its URL (json) or base URL (v2)")
    serving.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to listen on (default 127.0.0.1:8080)")
    serving.add_argument("--protocol", choices=("json", "v2"), default="json")
    serving.add_argument("--model-name", help="the model's name on a v2 server (default: any name)")
    serving.add_argument("--classes", type=int, help="number of classes (default $MODELCOURT_GUARD_CLASSES)")
    serving.add_argument("--input-shape", type=_shape, help="the input shape without the batch dimension, e.g. 1,8,8")
    serving.add_argument(
        "--trust-client-header", action="store_true", help="take the client id from X-Client-Id (behind a gateway)"
    )
    flushing = guard.add_parser("flush", help="commit pending journaled answers now")
    flushing.add_argument("--classes", type=int, help="number of classes (default $MODELCOURT_GUARD_CLASSES)")
    showing = guard.add_parser("status", help="print the journal's counts")
    for parser, handler in ((serving, cmd_guard_serve), (flushing, cmd_guard_flush), (showing, cmd_guard_status)):
        if parser is not showing:
            parser.add_argument("--model", help="the registered model's id (default $MODELCOURT_GUARD_MODEL)")
        parser.add_argument("--journal", help="the journal directory (default $MODELCOURT_GUARD_JOURNAL)")
        parser.set_defaults(handler=handler, offline=True)


# --- arguments ------------------------------------------------------------------------------


def _shape(text: str) -> list[int]:
    try:
        dims = [int(part) for part in text.strip("[] ").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give the shape as integers, e.g. 1,8,8 (not {text!r})") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError("shape dimensions are positive integers")
    return dims


TRUST_FILE_HELP = (
    f"the trust file (default ${trust.TRUST_FILE_ENV}, else $XDG_CONFIG_HOME/modelcourt/trust.json "
    "or ~/.config/modelcourt/trust.json)"
)


def _add_trust_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--trust-file", help=f"{TRUST_FILE_HELP}; its pinned keys are used unless given here")
    parser.add_argument(
        INSECURE_FLAG,
        action="store_true",
        help=f"where no trusted key is given or pinned, check the {what} against the keys inside it (proves nothing)",
    )


def _add_claim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--claimant", required=True, help="the claimant's registered model (public id)")
    parser.add_argument("--methods", required=True, help=f"comma-separated: {', '.join(METHODS)}")
    suspect = parser.add_mutually_exclusive_group(required=True)
    suspect.add_argument("--suspect-file", help="the suspect's artifact (ONNX or TorchScript)")
    suspect.add_argument("--suspect-model", help="a registered model as the suspect (public id)")
    suspect.add_argument("--suspect-url", help="the suspect's prediction endpoint")
    parser.add_argument("--protocol", choices=("v2", "json"), help="the endpoint's protocol (default json)")
    parser.add_argument("--model-name", help="the model's name on the endpoint's server (v2)")
    parser.add_argument("--output", choices=("logits", "probabilities", "labels"), help="what the endpoint returns")
    parser.add_argument("--evidence", action="append", help="an evidence set to open (public id; repeatable)")
    parser.add_argument(
        "--api-client", help="with api_watermark: only this client's journaled answers (the guard's tag, from an alarm)"
    )
    parser.add_argument("--title", help="the dispute's title")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `modelcourt`."""
    parser = argparse.ArgumentParser(prog="modelcourt", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("MODELCOURT_URL", DEFAULT_URL), help="service URL")
    parser.add_argument("--token", default=os.environ.get("MODELCOURT_TOKEN"), help="API token (MODELCOURT_TOKEN)")
    commands = parser.add_subparsers(dest="command", required=True)

    register = commands.add_parser("register", help="register a model artifact (ONNX or TorchScript)")
    register.add_argument("artifact")
    register.add_argument("--name", required=True)
    register.add_argument("--task", default="")
    register.add_argument("--input-shape", required=True, type=_shape, help="without the batch dimension, e.g. 1,8,8")
    register.add_argument("--classes", required=True, type=int, help="number of classes")
    register.add_argument(
        "--no-wait", action="store_true", help="return once uploaded, without waiting for the sandbox check"
    )
    register.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the check (default 600)")
    register.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default 2)")
    register.set_defaults(handler=cmd_register)

    evidence = commands.add_parser("evidence", help="add or generate evidence").add_subparsers(
        dest="evidence_command", required=True
    )
    add = evidence.add_parser("add", help="upload an .npz evidence set")
    add.add_argument("model_id")
    add.add_argument("file")
    add.add_argument("--kind", required=True, choices=KINDS)
    add.set_defaults(handler=cmd_evidence_add)
    generate = evidence.add_parser("generate", help="generate a verifiable watermark and save its triggers")
    generate.add_argument("model_id")
    generate.add_argument("--count", required=True, type=int)
    generate.add_argument("--low", type=float, default=0.0)
    generate.add_argument("--high", type=float, default=1.0)
    generate.add_argument("--out", help="where to write the trigger set (.npz)")
    generate.set_defaults(handler=cmd_evidence_generate)
    adopt = evidence.add_parser(
        "adopt", help="commit a generated watermark again for the model it was embedded in (the deployed model)"
    )
    adopt.add_argument("model_id", help="the embedded (deployed) model")
    adopt.add_argument("source", help="id of the generated watermark, as `evidence generate` printed it")
    adopt.set_defaults(handler=cmd_evidence_adopt)

    receipt = commands.add_parser("receipt", help="fetch or verify receipts").add_subparsers(
        dest="receipt_command", required=True
    )
    get = receipt.add_parser("get", help="fetch the public receipt of a commitment")
    get.add_argument("commitment")
    get.add_argument("-o", "--output", help="write the receipt here instead of printing it")
    get.set_defaults(handler=cmd_receipt_get)
    verify = receipt.add_parser("verify", help="verify a receipt offline")
    verify.add_argument("receipt")
    verify.add_argument("--ca", action="append", help="trusted TSA root certificate(s), PEM (repeatable)")
    verify.add_argument("--log-key", help="the log's verifier key (name+hash+base64), or a file holding it")
    opened = verify.add_mutually_exclusive_group()
    opened.add_argument("--opening", help="the owner's opening (JSON)")
    opened.add_argument("--evidence", help="the evidence set (.npz); needs --salt")
    verify.add_argument("--salt", help="the commitment's salt (hex)")
    verify.add_argument("--seed", help="the watermark generator's seed (hex), for generated evidence")
    _add_trust_arguments(verify, "receipt")
    verify.set_defaults(handler=cmd_receipt_verify, offline=True, verdict_key=None)

    bundle = commands.add_parser("verify", help="verify a verdict bundle (zip) offline")
    bundle.add_argument("bundle", help="the verdict bundle (.zip)")
    bundle.add_argument("--ca", action="append", help="trusted TSA root certificate(s), PEM (repeatable)")
    bundle.add_argument("--log-key", help="the log's verifier key (name+hash+base64), or a file holding it")
    bundle.add_argument("--verdict-key", action="append", help="the service's verdict public key(s), PEM (repeatable)")
    _add_trust_arguments(bundle, "bundle")
    bundle.set_defaults(handler=cmd_verify, offline=True)

    pins = commands.add_parser("trust", help="pin a service's public keys for offline verification").add_subparsers(
        dest="trust_command", required=True
    )
    pin = pins.add_parser("pin", help="fetch a service's public keys once and pin them (prints their fingerprints)")
    pin.add_argument("service_url", metavar="URL", help="the service's base URL, e.g. https://modelcourt.example.org")
    pin.add_argument("--replace", action="store_true", help="replace keys pinned before for this URL that changed")
    pin.add_argument("--trust-file", help=TRUST_FILE_HELP)
    pin.set_defaults(handler=cmd_trust_pin, offline=True)
    shown = pins.add_parser("show", help="print the pinned services and their keys' fingerprints")
    shown.add_argument("--trust-file", help=TRUST_FILE_HELP)
    shown.set_defaults(handler=cmd_trust_show, offline=True)

    dispute = commands.add_parser(
        "dispute", help="file and follow disputes (arbiter), or request one (owner)"
    ).add_subparsers(dest="dispute_command", required=True)
    filing = dispute.add_parser("file", help="file a dispute against one suspect")
    _add_claim_arguments(filing)
    filing.add_argument("--alpha", type=float, help="significance level (default 0.001)")
    filing.add_argument("--budget", type=int, help="the most queries the suspect may be sent")
    filing.add_argument("--panel", help="reference panel (default digits)")
    filing.add_argument(
        "--released-at", help="when the suspect was first released, if known (ISO 8601, e.g. 2026-05-01T12:00:00Z)"
    )
    filing.add_argument("--release-source", help="where the release time comes from (a URL or a document)")
    filing.set_defaults(handler=cmd_dispute_file)
    sighting = commands.add_parser(
        "sighting", help="time-stamp the digest of a model file you came across (it is not uploaded to be kept)"
    ).add_subparsers(dest="sighting_command", required=True)
    seen = sighting.add_parser("record", help="record that a model file (or, with --url, an endpoint) existed now")
    seen.add_argument("file", nargs="?", help="a model file (hashed; not kept)")
    # its own dest: the top-level --url (the service) must not be overwritten by this option's default
    seen.add_argument("--url", dest="endpoint_url", help="a prediction endpoint to probe instead of a file")
    seen.add_argument("--protocol", choices=["json", "v2"], default="json")
    seen.add_argument("--model-name", help="the model's name on a v2 server")
    seen.add_argument("--output", choices=["logits", "probabilities", "labels"], default="logits")
    seen.add_argument("--input-shape", help="the endpoint's input shape, e.g. 64 or 1,8,8")
    seen.add_argument("--num-classes", type=int)
    seen.add_argument("--note", default="", help="where you saw it (at most 300 characters)")
    seen.set_defaults(handler=cmd_sighting_record)
    shown = sighting.add_parser("show", help="one sighting (public)")
    shown.add_argument("sighting_id")
    shown.set_defaults(handler=cmd_sighting_show)
    asking = dispute.add_parser("request", help="ask the arbiters to file a dispute for your model (owner)")
    _add_claim_arguments(asking)
    asking.add_argument("--statement", help="why you suspect this model, for the arbiter")
    asking.set_defaults(handler=cmd_dispute_request)
    status = dispute.add_parser("status", help="a dispute's state, progress and phase")
    status.add_argument("dispute_id")
    status.add_argument(
        "--wait",
        action="store_true",
        help="follow it until decided, published, failed or withdrawn (exit status 1 for the last two)",
    )
    status.add_argument("--timeout", type=float, default=3600.0, help="with --wait: give up after this many seconds")
    status.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    status.set_defaults(handler=cmd_dispute_status)

    verdict = commands.add_parser("verdict", help="fetch verdicts").add_subparsers(
        dest="verdict_command", required=True
    )
    show = verdict.add_parser("get", help="a verdict's outcome and statistics, optionally its bundle")
    show.add_argument("verdict_id")
    show.add_argument("--bundle", metavar="OUT.zip", help="save the evidence bundle here")
    show.set_defaults(handler=cmd_verdict_get)
    _add_guard_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is cmd_receipt_verify:
        if args.evidence and not args.salt:
            parser.error("--evidence needs --salt")
        if (args.salt or args.seed) and not args.evidence:
            parser.error("--salt and --seed go with --evidence")
    filing = getattr(args, "handler", None) is cmd_dispute_file
    if filing and not args.suspect_url and (args.protocol or args.model_name or args.output):
        parser.error("--protocol, --model-name and --output go with --suspect-url")
    if getattr(args, "handler", None) is cmd_dispute_status and args.timeout <= 0:
        parser.error("--timeout is a positive number of seconds")
    if getattr(args, "handler", None) is cmd_register and (args.timeout <= 0 or args.interval <= 0):
        parser.error("--timeout and --interval are positive numbers of seconds")
    try:
        if getattr(args, "offline", False):
            return int(args.handler(args))
        return int(args.handler(args, Client(args.url, args.token)))
    except CliError as exc:
        print(str(exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
