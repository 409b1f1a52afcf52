"""Verdict pages, public once published: the verdict, its plots, report and bundle; how pages present a verdict."""

import base64
import binascii
import hashlib
import json
import math
import uuid
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.cache import get_conditional_response, patch_cache_control
from django.utils.http import quote_etag
from django.views import View
from rest_framework.exceptions import Throttled
from rest_framework.throttling import ScopedRateThrottle

from timestamps import dsse
from verification import selectors
from verification.exceptions import DisputeNotFoundError
from verification.models import Dispute, Verdict
from verification.services import verdicts as verdict_services

OUTCOME_TONE = {
    "ownership_confirmed": "good",
    "not_confirmed": "neutral",
    "claim_rejected": "bad",
    "inconclusive": "warn",
}
PLOT_PREFIX, PLOT_SUFFIX = "plots/", ".png"
# The report is our own HTML, but it quotes claimant-supplied names: no scripts, nothing from elsewhere.
REPORT_CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def _visible_verdict(request: HttpRequest, verdict_id: uuid.UUID) -> Verdict:
    """A published verdict, or an unpublished one for the arbiter who holds its dispute; else a 404."""
    try:
        return selectors.verdict_get(public_id=verdict_id, user=request.user)
    except DisputeNotFoundError as exc:
        raise Http404(str(exc)) from exc


# --- presenting a verdict -----------------------------------------------------------------------


def _number(value: Any, digits: int = 3) -> str:
    """A statistic for people: p-values as 1.2e-25, counts as they are, missing ones as a dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def _subjects(verdict: Verdict) -> list[dict[str, str]]:
    """The signed statement's subjects (name, SHA-256), read from the envelope itself."""
    try:
        envelope = dsse.parse_envelope(bytes(verdict.envelope))
        statement = json.loads(base64.b64decode(envelope["payload"], validate=True))
        return [{"name": s["name"], "digest": s["digest"]["sha256"]} for s in statement["subject"]]
    except (dsse.DsseError, binascii.Error, ValueError, KeyError, TypeError):
        return []


def _plots(verdict: Verdict) -> list[dict[str, str]]:
    names = sorted(k for k in verdict.attachments if k.startswith(PLOT_PREFIX) and k.endswith(PLOT_SUFFIX))
    plots = []
    for key in names:
        name = key[len(PLOT_PREFIX) : -len(PLOT_SUFFIX)]
        url = reverse("public-verdict-plot", kwargs={"verdict_id": verdict.public_id, "name": name})
        plots.append({"name": name, "url": url})
    return plots


def verdict_context(verdict: Verdict) -> dict[str, Any]:
    """What the dispute page and the public page show of a verdict, every number formatted."""
    predicate: dict[str, Any] = verdict.predicate or {}
    decision: dict[str, Any] = predicate.get("decision") or {}
    holm: dict[str, bool] = decision.get("holm") or {}
    tests = []
    for test in decision.get("tests", []):
        stats = test.get("statistics") or {}
        tests.append(
            {
                "name": test.get("name", ""),
                "kind": str(test.get("kind", "")).replace("_", " "),
                "p_value": _number(test.get("p_value")),
                "K": _number(stats.get("K")),
                "m": _number(stats.get("m")),
                "p0": _number(stats.get("p0"), 4),
                "panel_rank_p_value": _number(stats.get("panel_rank_p_value")),
                "naive_p_value": _number(stats.get("naive_p_value")),
                "conclusive": bool(test.get("conclusive")),
                "rejects": holm.get(test.get("name", "")),
                "reason": test.get("reason", ""),
                "statistics": [(key, _number(value, 4)) for key, value in sorted(stats.items())],
            }
        )
    screens = [
        {
            "name": screen.get("name", ""),
            "rejected": bool(screen.get("rejected")),
            "p_value": _number(screen.get("p_value")),
            "statistics": [(key, _number(value, 4)) for key, value in sorted((screen.get("statistics") or {}).items())],
        }
        for screen in decision.get("screens", [])
    ]
    return {
        "verdict": verdict,
        "predicate": predicate,
        "outcome_label": verdict.get_outcome_display(),
        "outcome_tone": OUTCOME_TONE.get(verdict.outcome, "neutral"),
        "reasons": decision.get("reasons", []),
        "tests": tests,
        "screens": screens,
        "claims": predicate.get("claims", []),
        "panel": predicate.get("panel", {}),
        "precedence": predicate.get("precedence", {}),
        "suspect": predicate.get("suspect", {}),
        "subjects": _subjects(verdict),
        "plots": _plots(verdict),
        "has_report": "report.html" in verdict.attachments,
        "bundle_name": bundle_name(verdict),
    }


def bundle_name(verdict: Verdict) -> str:
    """The bundle's download name; the offline commands on the page use the same."""
    return f"verdict-{str(verdict.public_id)[:8]}.zip"


def _verdict_of(dispute: Dispute) -> Verdict | None:
    try:
        return dispute.verdict
    except Verdict.DoesNotExist:
        return None


class VerdictPublicView(View):
    """A verdict's public page: outcome, subjects, statistics, plots, bundle and how to check it offline."""

    def get(self, request: HttpRequest, verdict_id: uuid.UUID) -> HttpResponse:
        verdict = _visible_verdict(request, verdict_id)
        context = verdict_context(verdict)
        bundle_url = reverse("public-verdict-bundle", kwargs={"verdict_id": verdict.public_id})
        context.update(
            dispute=verdict.dispute,
            published=verdict.published_at is not None,
            site=request.build_absolute_uri("/").rstrip("/"),
            bundle_url=request.build_absolute_uri(bundle_url),
        )
        return render(request, "verification/verdict_public.html", context)


class VerdictPlotView(View):
    """One of the verdict's plots, as the PNG it signed."""

    def get(self, request: HttpRequest, verdict_id: uuid.UUID, name: str) -> HttpResponse:
        verdict = _visible_verdict(request, verdict_id)
        encoded = verdict.attachments.get(f"{PLOT_PREFIX}{name}{PLOT_SUFFIX}")
        if encoded is None:
            raise Http404("no such plot in this verdict")
        return HttpResponse(base64.b64decode(encoded), content_type="image/png")


class VerdictReportView(View):
    """The verdict's HTML report, as bundled (its plots resolve to the plot URLs beside it)."""

    def get(self, request: HttpRequest, verdict_id: uuid.UUID) -> HttpResponse:
        verdict = _visible_verdict(request, verdict_id)
        encoded = verdict.attachments.get("report.html")
        if encoded is None:
            raise Http404("this verdict has no report")
        response = HttpResponse(base64.b64decode(encoded), content_type="text/html; charset=utf-8")
        response["Content-Security-Policy"] = REPORT_CSP
        return response


class VerdictBundleView(View):
    """The evidence bundle (zip) that `modelcourt verify` and standard tools check offline."""

    # the same DRF throttle and scope as GET /api/v1/verdicts/{id}/bundle: one count per client for both routes
    throttle_scope = "verdict-bundle"
    max_age = 60

    def get(self, request: HttpRequest, verdict_id: uuid.UUID) -> HttpResponse:
        throttle = ScopedRateThrottle()
        if not throttle.allow_request(request, self):  # type: ignore[arg-type]
            wait = math.ceil(throttle.wait() or 1)
            refused = JsonResponse({"code": "throttled", "detail": str(Throttled(wait).detail)}, status=429)
            refused["Retry-After"] = str(wait)
            return refused
        verdict = _visible_verdict(request, verdict_id)
        data = verdict_services.verdict_bundle(verdict=verdict)
        response = HttpResponse(data, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{bundle_name(verdict)}"'
        response["ETag"] = quote_etag(hashlib.sha256(data).hexdigest())
        if verdict.published_at is not None:
            patch_cache_control(response, public=True, max_age=self.max_age)
        else:  # the arbiter's preview: no shared cache may keep it
            patch_cache_control(response, private=True, no_cache=True, max_age=0)
        return get_conditional_response(request, etag=response["ETag"], response=response) or response
