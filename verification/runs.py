"""The body of a verification run: open and check the evidence, run the methods in the sandbox, sign.

Called by :func:`verification.services.disputes.verification_run_execute` inside a Celery task on the gpu queue.
Untrusted code (the suspect's artifact, answers from its endpoint) only ever runs in the sandbox's
child process; this process opens the escrow, checks commitments and proofs, and signs.
"""

import base64
import html
import io
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.utils import timezone

from modelcourt import bundle
from modelcourt.receipts import Check, all_ok, verify_receipt
from ownership import services as ownership_services
from ownership.escrow import EscrowError
from ownership.evidence import EvidenceRejected, load_evidence
from ownership.models import EvidenceSet
from timestamps import dsse
from timestamps import keys as timestamp_keys
from timestamps.exceptions import LogIntegrityError, LogNotFoundError, LogRangeError
from timestamps.selectors import signing_key_list
from verification import precedence, reference
from verification.exceptions import OperatorFault, RunFailed
from verification.methods.decision import ClaimScreen, Standing, StatValue, TestResult, decide
from verification.models import Dispute, Verdict, VerificationRun
from verification.panel_fit import panel_refusal
from verification.services.verdicts import verdict_record
from workers.confinement import policy_record

Progress = Callable[[int, int, str], None]
CODE_VERSION = "modelcourt-0.1.0"
PREDICATE_VERSION = 1
logger = logging.getLogger(__name__)

# The checks of verify_receipt that compare the claimant's opening (evidence, salt, seed) with the
# commitment: only these can be the claimant's fault. Every other check is of the receipt, which the
# service builds from its own token, log and keys; a failure there is the operator's to repair.
OPENING_CHECKS = frozenset({"opening format", "evidence digest", "commitment", "model digest"})
LOG_CHECKS = frozenset({"log key", "checkpoint signature", "checkpoint size", "log inclusion"})

# Operator-facing reasons; {blocked} is what waits for the repair.
DISPUTES_BLOCKED = "disputes can be decided (no verdict was signed)"
LOG_BROKEN_TEMPLATE = (
    "the service's transparency log failed its integrity check; an operator must repair it before {blocked}"
)
TOKENS_BROKEN_TEMPLATE = (
    "the service's time-stamp record of the claimant's evidence does not verify ({check}); an operator must "
    "check the TSA keys and the stored tokens before {blocked}"
)
KEYS_BROKEN_TEMPLATE = (
    "the service's signing keys are missing or unusable; an operator must repair the key configuration before {blocked}"
)
ESCROW_BROKEN_TEMPLATE = (
    "the escrowed evidence cannot be opened with the configured escrow keys; an operator must restore the "
    "escrow keys before {blocked}"
)
LOG_BROKEN = LOG_BROKEN_TEMPLATE.format(blocked=DISPUTES_BLOCKED)
HOST_UNCONFINED = (
    "this worker cannot confine uploaded models (a sandbox layer is missing on its host); an operator must "
    f"repair the host before {DISPUTES_BLOCKED}"
)
# Failures of the service's own trust layer: a run meeting one fails for the operators, never signs.
TRUST_LAYER_ERRORS: tuple[type[Exception], ...] = (
    OperatorFault,
    LogIntegrityError,
    LogRangeError,
    LogNotFoundError,
    timestamp_keys.KeyConfigurationError,
    EscrowError,
)


def operator_reason(exc: Exception, *, blocked: str = DISPUTES_BLOCKED) -> str:
    """The operator-facing reason for a trust-layer failure (the exception's own text goes to the log only)."""
    if isinstance(exc, OperatorFault):
        return str(exc)
    if isinstance(exc, timestamp_keys.KeyConfigurationError):
        return KEYS_BROKEN_TEMPLATE.format(blocked=blocked)
    if isinstance(exc, EscrowError):
        return ESCROW_BROKEN_TEMPLATE.format(blocked=blocked)
    return LOG_BROKEN_TEMPLATE.format(blocked=blocked)


def _trust_anchors() -> tuple[list[str], str]:
    cas = [k.certificate_pem for k in signing_key_list().filter(purpose="tsa-ca") if k.certificate_pem]
    log_key = timestamp_keys.key_current("log").record
    return cas, timestamp_keys.log_verifier_key(log_key)


@dataclass
class _Opened:
    """The revealed evidence: method inputs, what went wrong, the public record and the receipts checked."""

    claims: list[dict[str, Any]] = field(default_factory=list)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)
    # each set with its record and, when it opened, its method spec's name (precedence is judged after the run)
    sets: list[tuple[EvidenceSet, dict[str, Any], str]] = field(default_factory=list)
    first_known: list[precedence.FirstKnown] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # why a requested claim was not made (no problem of integrity)


def _open_claims(dispute: Dispute) -> _Opened:
    """Reveal every evidence set and check it against its public receipt (kept for the bundle)."""
    model = dispute.claimant_model
    cas, log_vkey = _trust_anchors()
    opened = _Opened()
    journal: list[tuple[EvidenceSet, dict[str, Any], Mapping[str, Any]]] = []
    claims, problems, records = opened.claims, opened.problems, opened.records
    for evidence_set in dispute.evidence_sets.select_related(
        "derived_from__timestamp_token", "timestamp_token"
    ).order_by("created_at", "id"):
        opening = ownership_services.evidence_open(evidence_set=evidence_set)
        receipt = ownership_services.receipt_build(evidence_set=evidence_set)
        opened.receipts.append(receipt)
        checks = verify_receipt(receipt, ca_pems=cas, log_vkey=log_vkey, opening=opening)
        _check_own_receipt(evidence_set, checks)
        failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
        record = {
            "commitment": evidence_set.commitment,
            "model_digest": model.model_digest,
            "kind": evidence_set.kind,
            "verifiable": evidence_set.verifiable,
            "timestamp": evidence_set.timestamp_token.gen_time.isoformat(),
            "log_index": evidence_set.timestamp_token.log_entry_id,
            "opened": not failed and all_ok(checks),
            **({"derived_from": evidence_set.derived_from.commitment} if evidence_set.derived_from else {}),
        }
        records.append(record)
        if failed:
            problems.append(f"evidence {evidence_set.commitment[:16]} does not open its commitment: {failed[0]}")
            opened.sets.append((evidence_set, record, ""))
            continue
        try:
            arrays = load_evidence(
                base64.b64decode(opening["evidence_npz_b64"]),
                kind=evidence_set.kind,
                input_shape=model.input_shape,
                num_classes=model.num_classes,
            )
        except EvidenceRejected as exc:
            problems.append(f"evidence {evidence_set.commitment[:16]} is unreadable: {exc}")
            opened.sets.append((evidence_set, record, ""))
            continue
        if evidence_set.kind == EvidenceSet.Kind.API_WATERMARK:
            journal.append((evidence_set, record, arrays))
            continue
        spec = evidence_spec(evidence_set, arrays)
        opened.sets.append((evidence_set, record, spec["name"]))
        if evidence_set.kind == EvidenceSet.Kind.DATASET:
            opened.datasets.append({**spec, "claimant_path": model.artifact.path})
        else:
            claims.append(spec)
    if journal:
        _pool_journal(dispute, journal, opened)
    return opened


def _pool_journal(
    dispute: Dispute, batches: list[tuple[EvidenceSet, dict[str, Any], Mapping[str, Any]]], opened: _Opened
) -> None:
    """A guard's journal as one claim: the rows of every batch committed before the suspect was first known.

    The service, not the claimant, chooses the rows: every batch of the claimant's model (see the filing)
    that precedes what is known of the suspect before the run (filing, registrations, sightings, release
    time), narrowed to one client if the dispute names one. A batch that does not precede is recorded and
    left out; if the run finds an earlier first known time, the pooled claim must precede that too.

    Each distinct input counts once: the guard answers an input the same way every time, so a repeated row
    adds no evidence, and an input journaled with two different answers cannot be the guard's and is dropped.
    """
    tag = bytes.fromhex(dispute.api_client) if dispute.api_client else None
    known = precedence.suspect_first_known(dispute=dispute)
    name = f"api_watermark-{batches[0][0].commitment[:12]}"
    answers: dict[bytes, tuple[np.ndarray, int]] = {}
    conflicting: set[bytes] = set()
    for evidence_set, record, arrays in batches:
        judged = precedence.evidence_precedence(evidence_set=evidence_set, first_known=known)
        rows = np.ones(len(arrays["labels"]), dtype=bool)
        if tag is not None:
            rows = (np.asarray(arrays["clients"], dtype=np.uint8) == np.frombuffer(tag, dtype=np.uint8)).all(axis=1)
        used = bool(rows.any()) and judged.precedes
        record["rows"] = int(rows.sum()) if used else 0
        if rows.any() and not judged.precedes:
            record["left_out"] = "committed after the suspect was first known"
        opened.sets.append((evidence_set, record, name if used else ""))
        if not used:
            continue
        inputs = np.ascontiguousarray(np.asarray(arrays["inputs"], dtype=np.float32)[rows])
        for row, label in zip(inputs, np.asarray(arrays["labels"])[rows], strict=True):
            key = row.tobytes()
            if key in answers and answers[key][1] != int(label):
                conflicting.add(key)
            answers.setdefault(key, (row, int(label)))
    for key in conflicting:
        del answers[key]
    if conflicting:
        opened.notes.append(
            f"{len(conflicting)} journaled input(s) carry two different answers, which a guard never serves; "
            "they were left out"
        )
    if not answers:
        opened.notes.append(
            "no journaled answer "
            + ("to the client the dispute names " if tag is not None else "")
            + "was committed before the suspect was first known"
        )
        return
    opened.claims.append(
        {
            "name": name,
            "kind": EvidenceSet.Kind.API_WATERMARK,
            "inputs": np.stack([row for row, _ in answers.values()]),
            "labels": np.asarray([label for _, label in answers.values()], dtype=np.int64),
            "verifiable": False,
        }
    )


def _judge_precedence(
    dispute: Dispute, opened: _Opened, suspect_probe_labels: Any, *, reprobe: bool = True
) -> dict[str, dict[str, Any]]:
    """The suspect's first known times, then each set's standing: precedence (in its record) and draws.

    Called after the run: the suspect's answers to the registry's probes show which earlier registration,
    if any, it behaves as; a re-probed endpoint sighting counts if the endpoint still answers alike.
    """
    # a run whose evidence failed integrity is rejected whatever precedence says: its endpoint is not probed again
    rechecked = _recheck_sightings(dispute) if reprobe else []
    confirmed = rechecked + precedence.behaviour_first_known(dispute=dispute, labels=suspect_probe_labels)
    opened.first_known = precedence.suspect_first_known(dispute=dispute, confirmed_sightings=confirmed)
    draws = ownership_services.watermark_draws_before(moment=dispute.created_at)
    # a claim narrowed to one client could have named any client the guard had committed by the filing
    clients = (
        len(ownership_services.api_clients_before(model=dispute.claimant_model, moment=dispute.created_at))
        if dispute.api_client
        else 1
    )
    standings: dict[str, dict[str, Any]] = {}
    for evidence_set, record, name in opened.sets:
        judged = precedence.evidence_precedence(evidence_set=evidence_set, first_known=opened.first_known)
        record["precedence"] = judged.to_dict()
        if not name:
            continue
        if name in standings:  # a guard's batches pooled in one claim: it stands only if every batch precedes
            if standings[name]["precedes"] is True and judged.precedes is not True:
                standings[name].update(precedes=judged.precedes, precedence_detail=judged.detail)
            continue
        standings[name] = {
            # a generated watermark cannot be crafted on the suspect; everything else could have been
            "chosen": not evidence_set.verifiable,
            "precedes": judged.precedes,
            "precedence_detail": judged.detail,
            "draws": draws if evidence_set.verifiable else max(1, clients) if name.startswith("api_watermark-") else 1,
        }
    return standings


_STAT_TEXT = re.compile(r"[A-Za-z0-9_.:,+\- ]{0,4000}")


def _stat(value: Any) -> StatValue:
    """One statistic from the child: a finite number, a non-finite marker or a short plain word; else refused."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and _STAT_TEXT.fullmatch(value):
        return value
    raise ValueError("a statistic from the sandbox is not a plain number or word")


def _reason(value: Any) -> str:
    text = str(value)[:1000]
    return "".join(ch for ch in text if ch.isprintable())


def _count(value: Any) -> int:
    return int(value) if type(value) is int and 0 <= value < 1 << 62 else 0


def _panel_record(value: Any) -> dict[str, Any]:
    """The panel's hash and size as the child reported them, if they are a hash and a size."""
    if not isinstance(value, dict):
        return {"hash": "", "size": 0}
    digest = value.get("hash")
    return {
        "hash": digest if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) else "",
        "size": _count(value.get("size")),
    }


def _plot_data(value: Any, sent: list[str]) -> dict[str, Any]:
    """Plot numbers for the claims that were sent, as plain finite rates; anything else is dropped."""
    plots: dict[str, Any] = {}
    if not isinstance(value, dict):
        return plots
    for name in sent:
        data = value.get(name)
        try:
            rates = [float(v) for v in data["panel_match_rates"]][:10_000]
            suspect, chance = float(data["suspect_match_rate"]), float(data["chance"])
        except (KeyError, TypeError, ValueError):
            continue
        if all(0.0 <= v <= 1.0 for v in [*rates, chance]) and (0.0 <= suspect <= 1.0 or suspect != suspect):
            plots[name] = {"panel_match_rates": rates, "suspect_match_rate": suspect, "chance": chance}
    return plots


def _decide_here(record: Any, *, sent: list[str], standings: dict[str, dict[str, Any]], alpha: float) -> dict[str, Any]:
    """The verdict's decision, made in this process from the child's tests, screens and binding numbers.

    The child ran the suspect: its answer is checked (every set it was sent, each once; p-values in [0, 1];
    plain statistics) and its own outcome is ignored. Precedence and draws are ours, judged after the run.
    """
    try:
        tests = [
            TestResult(
                name=str(t["name"]),
                kind=t["kind"],
                p_value=float(t["p_value"]),
                statistics={str(k): _stat(v) for k, v in dict(t["statistics"]).items()},
                conclusive=bool(t["conclusive"]),
                reason=_reason(t["reason"]),
            )
            for t in record["tests"]
        ]
        screens = [
            ClaimScreen(
                name=str(c["name"]),
                rejected=bool(c["rejected"]),
                p_value=float(c["p_value"]),
                statistics={str(k): _stat(v) for k, v in dict(c["statistics"]).items()},
            )
            for c in record["screens"]
        ]
        bindings = {str(b["name"]): (b.get("bound"), b.get("binding_p_value")) for b in record.get("standings", [])}
        if sorted(t.name for t in tests) != sorted(sent):
            raise ValueError("the sandbox did not answer for exactly the sets it was sent")
        decision = decide(
            tests=tests,
            screens=screens,
            standings=[
                Standing(
                    name=t.name,
                    chosen=bool(standings[t.name]["chosen"]),
                    precedes=standings[t.name]["precedes"],
                    precedence_detail=standings[t.name]["precedence_detail"],
                    bound=None if bindings.get(t.name, (None,))[0] is None else bool(bindings[t.name][0]),
                    binding_p_value=None
                    if bindings.get(t.name, (None, None))[1] is None
                    else float(bindings[t.name][1]),
                    draws=int(standings[t.name]["draws"]),
                )
                for t in tests
            ],
            alpha=alpha,
        )
    except (KeyError, TypeError, ValueError) as exc:
        logger.error("a verification run's sandbox answer is malformed (%s)", type(exc).__name__)
        raise RunFailed("the suspect could not be evaluated: the sandbox's answer was malformed") from None
    return decision.to_dict()


def _recheck_sightings(dispute: Dispute) -> list[precedence.FirstKnown]:
    """Send each recorded sighting's probes to the dispute's endpoint again; those answered alike count."""
    from verification.egress import probe_relayed
    from verification.methods import egress
    from verification.methods.probes import MIN_AGREEMENT, agreement, probe_spec
    from workers.sandbox import SandboxError, SandboxUnavailable, run_sandboxed

    sightings = precedence.endpoint_sightings(dispute=dispute)
    if not sightings:
        return []
    confirmed: list[precedence.FirstKnown] = []
    # probes are sent in the shape and classes they were recorded in: one sandbox call per layout
    layouts: dict[tuple[tuple[int, ...], int], list[Any]] = {}
    for sighting in sightings:
        layouts.setdefault((tuple(sighting.input_shape), sighting.num_classes), []).append(sighting)
    try:
        url = egress.endpoint_url(
            dispute.suspect_url, protocol=dispute.suspect_protocol, model_name=dispute.suspect_model_name or None
        )
        relay = egress.relay_for(url, timeout_s=10.0)
    except (egress.EgressError, ValueError):
        return []  # the run itself reports an endpoint it cannot reach
    for (shape, classes), group in layouts.items():
        try:
            answers = run_sandboxed(
                probe_relayed,
                probe_spec(
                    url=dispute.suspect_url,
                    protocol=dispute.suspect_protocol,
                    model_name=dispute.suspect_model_name,
                    output_kind=dispute.suspect_output,
                    input_shape=shape,
                    num_classes=classes,
                    seeds={str(s.public_id): s.probe_seed for s in group},
                ),
                timeout_s=120.0,
                memory_bytes=settings.MODELCOURT_RUN_MEMORY_BYTES,
                relay=relay,
            )
        except SandboxUnavailable as exc:
            raise OperatorFault(HOST_UNCONFINED) from exc
        except SandboxError:
            continue  # an endpoint that does not answer confirms no sighting
        if not isinstance(answers, dict):
            continue
        for sighting in group:
            given = answers.get(str(sighting.public_id))
            if not isinstance(given, list) or len(given) != len(sighting.probe_labels):
                continue
            if not all(type(v) is int for v in given):
                continue
            share = agreement(sighting.probe_labels, given)
            if share >= MIN_AGREEMENT:
                confirmed.append(precedence.endpoint_first_known(sighting, share))
    return confirmed


def _check_own_receipt(evidence_set: EvidenceSet, checks: list[Check]) -> None:
    """OperatorFault when the receipt (our token, our log, our keys) fails a check the claimant cannot cause."""
    for check in checks:
        if check.ok or check.name in OPENING_CHECKS:
            continue
        logger.error(
            "evidence set %s: its receipt fails %r against the service's own records: %s",
            evidence_set.pk,
            check.name,
            check.detail,
        )
        if check.name in LOG_CHECKS:
            raise OperatorFault(LOG_BROKEN)
        raise OperatorFault(TOKENS_BROKEN_TEMPLATE.format(check=check.name, blocked=DISPUTES_BLOCKED))


def evidence_spec(evidence_set: EvidenceSet, arrays: Mapping[str, Any]) -> dict[str, Any]:
    """One opened evidence set as the methods take it, named after its commitment: a claim, or dataset samples."""
    name = f"{evidence_set.kind}-{evidence_set.commitment[:12]}"
    if evidence_set.kind == EvidenceSet.Kind.DATASET:
        return {
            "name": name,
            "members": arrays["members"],
            "nonmembers": arrays["nonmembers"],
            # the split is fixed by the commitment, before anyone saw the suspect's answers
            "split_seed": int(evidence_set.commitment[:8], 16),
        }
    return {
        "name": name,
        "kind": evidence_set.kind,
        "inputs": arrays["inputs"],
        "labels": arrays["labels"],
        "verifiable": evidence_set.verifiable,
    }


def _precedence_record(opened: _Opened) -> dict[str, Any]:
    """The precedence block of the verdict: the suspect's first known times and each set's standing."""
    sets = [r["precedence"] for r in opened.records]
    # a generated watermark needs no precedence: the badge speaks of the sets the claimant could have chosen
    chosen = [r["precedence"] for r in opened.records if not r["verifiable"]]
    first = opened.first_known[0] if opened.first_known else None
    if not sets:
        detail = "no evidence was committed"
    elif all(s["precedes"] for s in sets):
        detail = (
            f"every evidence set was committed before the suspect's first known time ({first.source if first else ''})"
        )
    elif not any(s["precedes"] for s in sets):
        detail = "no evidence set was committed before the suspect's first known time"
    else:
        late = sum(1 for s in sets if not s["precedes"])
        detail = f"{late} of {len(sets)} evidence sets were committed after the suspect's first known time"
    return {
        # true only when every set the claimant could have chosen came first (the public page's badge)
        "ok": bool(sets) and all(s["precedes"] for s in chosen),
        "detail": detail,
        "first_known": [m.to_dict() for m in opened.first_known],
        "sets": sets,
    }


def _suspect_spec(dispute: Dispute) -> dict[str, Any]:
    if dispute.suspect_kind == Dispute.SuspectKind.ENDPOINT:
        return {
            "kind": "http",
            "url": dispute.suspect_url,
            "protocol": dispute.suspect_protocol,
            "model_name": dispute.suspect_model_name,
            "output_kind": dispute.suspect_output,
            "budget": dispute.query_budget,
        }
    if dispute.suspect_kind == Dispute.SuspectKind.REGISTERED:
        assert dispute.suspect_registration is not None  # noqa: S101 (the kind says so)
        path, form = dispute.suspect_registration.artifact.path, dispute.suspect_registration.artifact_format
    else:
        path, form = dispute.suspect_artifact.path, dispute.suspect_format
    return {"kind": form, "path": path, "budget": dispute.query_budget}


def _run_methods(spec: dict[str, Any]) -> dict[str, Any]:
    from verification.egress import run_methods_relayed
    from verification.methods import egress
    from verification.methods.runner import run_methods
    from workers.device import sandbox_gpu
    from workers.sandbox import SandboxError, SandboxUnavailable, run_sandboxed

    fn: Callable[[dict[str, Any]], dict[str, Any]] = run_methods
    relay = None
    suspect = spec["suspect"]
    if suspect.get("kind") == "http":
        # the child has no network: this process POSTs for it, to the dispute's URL alone, and checks the
        # address at every connection (the settings are read here, never taken from the task or the child)
        try:
            allowed = egress.allowed_networks_from_env()
        except ValueError as exc:
            logger.error("endpoint egress settings are invalid: %s", exc)
            raise RunFailed(
                f"the service's endpoint settings are invalid ({egress.ALLOW_PRIVATE_ENV}); an operator must "
                "correct them before endpoint disputes can run"
            ) from exc
        try:
            url = egress.endpoint_url(suspect["url"], protocol=suspect["protocol"], model_name=suspect["model_name"])
            relay = egress.relay_for(url, timeout_s=float(suspect.get("timeout_s", 10)), allowed_networks=allowed)
        except egress.EgressError as exc:
            raise RunFailed(f"the suspect endpoint cannot be queried: {exc.reason}") from exc
        except ValueError as exc:
            raise RunFailed(f"the suspect endpoint cannot be queried: {exc}") from exc
        fn = run_methods_relayed
    # the claimant's model and the suspect never share a process: the claimant's half of dataset
    # inference runs first, in a call of its own, and the suspect's call gets only its numbers
    if spec.get("datasets"):
        spec = {**spec, "datasets": _claimant_features(spec, str(suspect.get("kind")))}
    # binding: the claimant's own model labels every claimed set, in a call of its own
    if spec.get("claims"):
        labels = _claimant_labels(spec)
        spec = {**spec, "claims": [{**c, "claimant_labels": labels[c["name"]]} for c in spec["claims"]]}
    spec = {key: value for key, value in spec.items() if key != "claimant"}
    # the child reads only a private copy of the suspect's file and, read-only, the panel
    files: dict[str, str] = {}
    if suspect.get("kind") in ("torchscript", "onnx"):
        files["suspect_path"] = str(suspect["path"])
    try:
        return run_sandboxed(
            fn,
            spec,
            timeout_s=settings.MODELCOURT_RUN_TIMEOUT_S,
            memory_bytes=settings.MODELCOURT_RUN_MEMORY_BYTES,
            gpu=sandbox_gpu(),
            relay=relay,
            files=files,
            readable=[str(spec["panel_dir"])],
        )
    except SandboxUnavailable as exc:
        # this host cannot confine models: the operators' to fix, and nothing to do with the suspect
        raise OperatorFault(HOST_UNCONFINED) from exc
    except SandboxError as exc:
        raise RunFailed(f"the suspect could not be evaluated: {exc.reason}") from exc


def _claimant_labels(spec: dict[str, Any]) -> dict[str, list[int]]:
    """The claimant's own model's labels on every claimed set (for binding), from a sandbox call of its own."""
    from verification.methods.runner import claimant_claim_labels
    from workers.sandbox import SandboxError, SandboxUnavailable, run_sandboxed

    try:
        labels: dict[str, list[int]] = run_sandboxed(
            claimant_claim_labels,
            {key: spec[key] for key in ("num_classes", "input_shape", "claimant")}
            | {"claims": [{"name": c["name"], "inputs": c["inputs"]} for c in spec["claims"]]},
            timeout_s=settings.MODELCOURT_RUN_TIMEOUT_S,
            memory_bytes=settings.MODELCOURT_RUN_MEMORY_BYTES,
            files={"claimant_path": str(spec["claimant"]["path"])},
        )
    except SandboxUnavailable as exc:
        raise OperatorFault(HOST_UNCONFINED) from exc
    except SandboxError as exc:
        raise RunFailed(
            f"the claimant's own registered model could not be asked whether it carries its evidence ({exc.reason})"
        ) from exc
    # the child ran the claimant's model: its answer is checked like any other untrusted output
    sizes = {c["name"]: len(c["labels"]) for c in spec["claims"]}
    num_classes = int(spec["num_classes"])
    if not isinstance(labels, dict) or set(labels) != set(sizes):
        raise RunFailed("the claimant's own registered model gave no usable labels for its evidence")
    for name, values in labels.items():
        if (
            not isinstance(values, list)
            or len(values) != sizes[name]
            or not all(type(v) is int and 0 <= v < num_classes for v in values)
        ):
            raise RunFailed("the claimant's own registered model gave no usable labels for its evidence")
    return labels


def _claimant_features(spec: dict[str, Any], suspect_kind: str) -> list[dict[str, Any]]:
    """The run's dataset specs with the claimant's measured features in place of its model file (one call)."""
    from verification.methods.runner import claimant_dataset_features, dataset_inference_method
    from workers.sandbox import SandboxError, SandboxUnavailable, run_sandboxed

    datasets = [dict(d) for d in spec["datasets"]]
    claimant_path = str(datasets[0]["claimant_path"])
    for dataset in datasets:
        dataset.pop("claimant_path", None)
    method = dataset_inference_method(suspect_kind=suspect_kind, requested=None)
    try:
        measured = run_sandboxed(
            claimant_dataset_features,
            {key: spec[key] for key in ("num_classes", "input_shape", "low", "high") if key in spec}
            | {"datasets": datasets, "method": method},
            timeout_s=settings.MODELCOURT_RUN_TIMEOUT_S,
            memory_bytes=settings.MODELCOURT_RUN_MEMORY_BYTES,
            files={"claimant_path": claimant_path},
        )
    except SandboxUnavailable as exc:
        raise OperatorFault(HOST_UNCONFINED) from exc
    except SandboxError as exc:
        for dataset in datasets:
            dataset["claimant_failure"] = f"the claimant's own model could not be measured ({exc.reason})"
        return datasets
    for dataset in datasets:
        features = measured.get(dataset["name"]) if isinstance(measured, dict) else None
        if isinstance(features, dict):
            dataset["claimant_features"] = features
        else:
            dataset["claimant_failure"] = "the claimant's own model gave no usable measurements"
    return datasets


def _plots(result: dict[str, Any]) -> dict[str, bytes]:
    """One PNG per agreement claim: the suspect's match rate against the panel's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images: dict[str, bytes] = {}
    for name, data in sorted(result.get("plots", {}).items()):
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        ax.hist(data["panel_match_rates"], bins=20, range=(0, 1), color="#8aa4c8", label="reference panel")
        ax.axvline(data["suspect_match_rate"], color="#c0392b", linewidth=2, label="suspect")
        ax.axvline(data["chance"], color="#555", linestyle="--", linewidth=1, label="chance (1/C)")
        ax.set_xlabel("match rate with the claimed labels")
        ax.set_ylabel("models")
        ax.set_title(name)
        ax.legend(loc="upper center", fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        # no timestamps in the file: the same verdict draws the same bytes
        fig.savefig(buffer, format="png", metadata={"Software": None})
        plt.close(fig)
        images[f"plots/{name}.png"] = buffer.getvalue()
    return images


def _report(dispute: Dispute, predicate: dict[str, Any], plots: dict[str, bytes]) -> bytes:
    """A self-contained HTML report (plots referenced by their names inside the bundle)."""
    decision = predicate["decision"]
    rows = []
    for test in decision.get("tests", []):
        stats = ", ".join(f"{html.escape(str(k))}={html.escape(str(v))}" for k, v in test["statistics"].items())
        rows.append(
            f"<tr><td>{html.escape(test['name'])}</td><td>{html.escape(test['kind'])}</td>"
            f"<td>{html.escape(str(test['p_value']))}</td><td>{'yes' if test['conclusive'] else 'no'}</td>"
            f"<td class=stats>{stats}</td></tr>"
        )
    screens = "".join(
        f"<li>{html.escape(s['name'])}: {'rejected' if s['rejected'] else 'passed'} "
        f"(p={html.escape(str(s['p_value']))})</li>"
        for s in decision.get("screens", [])
    )
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in decision.get("reasons", []))
    known = "".join(
        f"<li>{html.escape(m['when'])} (±{m['accuracy_s']:g} s): {html.escape(m['source'])}</li>"
        for m in predicate["precedence"].get("first_known", [])
    )
    sets = "".join(
        f"<li><code>{html.escape(s['commitment'][:16])}</code>: {html.escape(s['detail'])}</li>"
        for s in predicate["precedence"].get("sets", [])
    )
    images = "".join(f'<figure><img src="{html.escape(n)}" alt="{html.escape(n)}"></figure>' for n in sorted(plots))

    def esc(value: Any) -> str:
        return html.escape(str(value))

    title = esc(predicate["verdict_id"])
    page = f"""<!doctype html><html lang=en><head><meta charset=utf-8><title>Verdict {title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
td,th{{border:1px solid #ccc;padding:.3rem;vertical-align:top}}table{{border-collapse:collapse}}
.stats{{font-family:monospace;font-size:.8rem}}img{{max-width:100%}}</style></head><body>
<h1>Verdict: {html.escape(predicate["outcome"].replace("_", " "))}</h1>
<p>Dispute <b>{html.escape(dispute.title)}</b>, decided {html.escape(predicate["decided_at"])} at alpha
{esc(predicate["alpha"])}, against the reference panel {esc(predicate["panel"]["name"])}
({esc(predicate["panel"]["size"])} models, hash <code>{esc(predicate["panel"]["hash"])}</code>).</p>
<h2>Why</h2><ul>{reasons}</ul>
<h2>Tests</h2><table><tr><th>evidence</th><th>kind</th><th>p-value</th><th>conclusive</th><th>statistics</th></tr>
{"".join(rows)}</table>
<h2>False-claim screens</h2><ul>{screens or "<li>none</li>"}</ul>
<h2>Precedence</h2><p>{html.escape(predicate["precedence"]["detail"])}</p>
<p>The suspect is known to have existed at:</p><ul>{known or "<li>no record</li>"}</ul>
<p>Each evidence set:</p><ul>{sets or "<li>none</li>"}</ul>
<h2>Plots</h2>{images or "<p>none</p>"}
<p>Check this verdict offline: <code>modelcourt verify bundle.zip</code>.</p></body></html>"""
    return page.encode()


def run_to_verdict(
    *, dispute: Dispute, run: VerificationRun, timings: dict[str, float], progress: Progress
) -> Verdict | None:
    """Everything between claiming the run and storing the verdict; RunFailed with a reason otherwise."""
    mark = time.perf_counter()
    progress(dispute.pk, 5, "opening the escrowed evidence and checking its receipts")
    opened = _open_claims(dispute)
    claims, problems, records = opened.claims, opened.problems, opened.records
    timings["open_evidence_s"] = time.perf_counter() - mark

    result: dict[str, Any] = {}
    sent: list[str] = []
    integrity_ok = not problems
    if integrity_ok:
        mark = time.perf_counter()
        progress(dispute.pk, 15, f"loading the reference panel {dispute.panel}")
        # before a panel is trained or a sandbox started: a panel that cannot serve the claimant's layout
        # is the filing's problem, and the suspect is not to blame
        if refusal := panel_refusal(panel=dispute.panel, model=dispute.claimant_model):
            raise RunFailed(refusal)
        try:
            panel_dir = reference.panel_directory(dispute.panel)
        except reference.PanelUnavailable as exc:
            raise RunFailed(str(exc)) from exc
        timings["panel_s"] = time.perf_counter() - mark
        model = dispute.claimant_model
        spec = {
            "suspect": _suspect_spec(dispute),
            "num_classes": model.num_classes,
            "input_shape": list(model.input_shape),
            "alpha": dispute.alpha,
            "panel_dir": str(panel_dir),
            "panel_name": dispute.panel,
            "claims": claims if set(dispute.methods) & {"watermark", "fingerprint", "api_watermark"} else [],
            "datasets": opened.datasets if "dataset_inference" in dispute.methods else [],
            "claimant": {"kind": model.artifact_format, "path": model.artifact.path},
            # the suspect's answers to the registry's probes: which earlier registration it behaves as
            "registry_probe": True,
        }
        progress(dispute.pk, 30, "querying the suspect in the sandbox")
        mark = time.perf_counter()
        result = _run_methods(spec)
        timings["sandbox_s"] = time.perf_counter() - mark
        for key, value in result.get("timings", {}).items():
            timings[f"child_{key}"] = float(value)
        sent = [c["name"] for c in spec["claims"]] + [d["name"] for d in spec["datasets"]]
        standings = _judge_precedence(dispute, opened, result.get("registry_probe_labels"))
        # the child's numbers, checked; the decision itself is made here, with our own standings
        decision = _decide_here(result.get("decision"), sent=sent, standings=standings, alpha=dispute.alpha)
    else:
        _judge_precedence(dispute, opened, None, reprobe=False)
        record = decide(tests=[], integrity_ok=False, alpha=dispute.alpha).to_dict()
        record["reasons"] = problems + record["reasons"]
        decision = record
    if opened.notes:
        decision["reasons"] = [f"{note[:1].upper()}{note[1:]}." for note in opened.notes] + list(decision["reasons"])
    precedence_record = _precedence_record(opened)

    progress(dispute.pk, 90, "signing the verdict")
    mark = time.perf_counter()
    verdict_uuid = uuid.uuid4()
    predicate: dict[str, Any] = {
        "version": PREDICATE_VERSION,
        "verdict_id": str(verdict_uuid),
        "dispute_id": str(dispute.public_id),
        "outcome": decision["outcome"],
        "alpha": dispute.alpha,
        "decision": decision,
        "methods": list(dispute.methods),
        "claims": records,
        "precedence": precedence_record,
        "suspect": {
            "kind": dispute.suspect_kind,
            "digest": dispute.suspect_digest,
            "url": dispute.suspect_url,
            "queries": _count(result.get("queries", 0)),
            "query_budget": dispute.query_budget,
        },
        "claimant": {"model_digest": dispute.claimant_model.model_digest, "name": dispute.claimant_model.name},
        "panel": {"name": dispute.panel, **_panel_record(result.get("panel"))},
        "code_version": CODE_VERSION,
        # the confinement the suspect's code ran under on this host (layers and policy hash)
        "sandbox_policy": policy_record(),
        "decided_at": timezone.now().isoformat(),
    }
    plots = _plots({"plots": _plot_data(result.get("plots"), sent)}) if result else {}
    report = _report(dispute, predicate, plots)
    attachments = {"report.html": report, **plots}
    key = timestamp_keys.key_current("verdict")  # created on first use: the bundle lists it
    parts = _bundle_parts(opened.receipts)
    files = bundle.bundle_files(attachments=attachments, **parts)
    predicate["attachments"] = bundle.attachment_digests(files)
    statement = bundle.verdict_statement(predicate=predicate)
    envelope = dsse.sign_envelope(
        dsse.statement_bytes(statement),
        payload_type=dsse.INTOTO_PAYLOAD_TYPE,
        private_key=key.private_key,  # type: ignore[arg-type]
        keyid=key.record.kid,
    )
    envelope_bytes = dsse.envelope_bytes(envelope)
    timings["sign_s"] = time.perf_counter() - mark
    return verdict_record(
        dispute=dispute,
        run=run,
        outcome=decision["outcome"],
        predicate=predicate,
        envelope=envelope_bytes,
        attachments=attachments,
        bundle_parts=parts,
        timings=timings,
        public_id=verdict_uuid,
    )


def _bundle_parts(receipts: list[dict[str, Any]]) -> dict[str, Any]:
    """Keys, certificates and receipts the verdict signs over (the bundle carries them as they were)."""
    keys = signing_key_list()
    cas, log_vkey = _trust_anchors()
    tsa = [k.certificate_pem for k in keys.filter(purpose="tsa") if k.certificate_pem]
    return {
        "verdict_keys": [k.public_key_pem for k in keys.filter(purpose="verdict")],
        "tsa_certificates": tsa + cas,
        "log_vkey": log_vkey,
        "receipts": receipts,
    }
