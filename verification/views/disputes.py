"""Server-rendered pages of disputes (the arbiter's) and of verdicts (public once published)."""

import base64
import binascii
import hashlib
import json
import math
import uuid
from pathlib import PurePosixPath
from typing import Any

from django.contrib import messages
from django.contrib.auth.mixins import AccessMixin
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import get_conditional_response, patch_cache_control
from django.utils.decorators import method_decorator
from django.utils.http import quote_etag
from django.views import View
from django.views.decorators.cache import never_cache
from rest_framework.exceptions import Throttled
from rest_framework.throttling import ScopedRateThrottle

from ownership.exceptions import RegistryError
from ownership.roles import Role, user_has_role
from timestamps import dsse
from verification import selectors, services
from verification.exceptions import DisputeError, DisputeNotFoundError, DisputeStateError
from verification.forms import (
    METHOD_HELP,
    DisputeFileForm,
    DisputeRequestForm,
    RequestAcceptForm,
    RequestDeclineForm,
    as_sentence,
)
from verification.models import Dispute, DisputeRequest, StressTest, Verdict
from verification.panel_fit import panel_refusal

# The states after which a dispute's page stops polling for progress.
SETTLED = frozenset({Dispute.State.DECIDED, Dispute.State.PUBLISHED, Dispute.State.FAILED, Dispute.State.WITHDRAWN})
WITHDRAWABLE = frozenset({Dispute.State.FILED, Dispute.State.QUEUED, Dispute.State.RUNNING, Dispute.State.FAILED})
OUTCOME_TONE = {
    "ownership_confirmed": "good",
    "not_confirmed": "neutral",
    "claim_rejected": "bad",
    "inconclusive": "warn",
}
STATE_TONE = {"running": "info", "queued": "info", "decided": "good", "published": "good", "failed": "bad"}
PLOT_PREFIX, PLOT_SUFFIX = "plots/", ".png"
# The report is our own HTML, but it quotes claimant-supplied names: no scripts, nothing from elsewhere.
REPORT_CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


# --- access -----------------------------------------------------------------------------------


class RoleRequiredMixin(AccessMixin):
    """Anonymous visitors go to the login page; signed-in users without the view's role get a 403."""

    role: Role

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        if not user_has_role(request.user, self.role):
            raise PermissionDenied(f"this page needs the {self.role} role")
        response: HttpResponseBase = super().dispatch(request, *args, **kwargs)  # type: ignore[misc]
        return response


class ArbiterRequiredMixin(RoleRequiredMixin):
    role = Role.ARBITER


class OwnerRequiredMixin(RoleRequiredMixin):
    role = Role.OWNER


def request_user(request: HttpRequest) -> AbstractBaseUser:
    user = request.user
    if not isinstance(user, AbstractBaseUser):  # the mixin let only signed-in users through
        raise PermissionDenied("sign in first")
    return user


def _held_dispute(request: HttpRequest, dispute_id: uuid.UUID) -> Dispute:
    """One of the caller's disputes; another arbiter's is a 404, as in the API."""
    try:
        return selectors.dispute_get(arbiter=request_user(request), public_id=dispute_id)
    except DisputeNotFoundError as exc:
        raise Http404(str(exc)) from exc


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


def _suspect_label(dispute: Dispute) -> str:
    if dispute.suspect_kind == Dispute.SuspectKind.REGISTERED and dispute.suspect_registration is not None:
        return dispute.suspect_registration.name
    if dispute.suspect_kind == Dispute.SuspectKind.ENDPOINT:
        return dispute.suspect_url
    return PurePosixPath(dispute.suspect_artifact.name or "").name or "uploaded file"


def progress_payload(work: Dispute | StressTest, *, settled: frozenset[str]) -> dict[str, Any]:
    """What a page's progress poller reads: state, percent, phase, and whether to stop polling."""
    return {
        "id": str(work.public_id),
        "state": work.state,
        "state_label": work.get_state_display(),
        "progress": work.progress,
        "phase": work.phase,
        "failure_reason": work.failure_reason,
        "settled": work.state in settled,
        "updated_at": work.updated_at.isoformat(),
    }


# --- the arbiter's pages --------------------------------------------------------------------------


class DisputeListView(ArbiterRequiredMixin, View):
    """The arbiter's disputes, newest first."""

    def get(self, request: HttpRequest) -> HttpResponse:
        disputes = selectors.dispute_list(arbiter=request_user(request)).select_related(
            "suspect_registration", "claimant_model__owner"
        )
        rows = []
        for dispute in disputes:
            verdict = _verdict_of(dispute)
            rows.append(
                {
                    "dispute": dispute,
                    "suspect": _suspect_label(dispute),
                    "state_tone": STATE_TONE.get(dispute.state, "neutral"),
                    "verdict": verdict,
                    "outcome_tone": OUTCOME_TONE.get(verdict.outcome, "neutral") if verdict else "",
                }
            )
        inbox = _request_rows(
            selectors.dispute_request_inbox(arbiter=request_user(request))
            .filter(state=DisputeRequest.State.OPEN)
            .select_related("suspect_registration", "claimant_model__owner")
        )
        return render(request, "verification/dispute_list.html", {"rows": rows, "inbox": inbox})


class DisputeFileView(ArbiterRequiredMixin, View):
    """File a dispute: claimant registration, methods, one suspect, alpha, reference panel."""

    template_name = "verification/dispute_file.html"

    def _render(self, request: HttpRequest, form: DisputeFileForm, status: int = 200) -> HttpResponse:
        methods = form["methods"]
        context = {"form": form, "method_choices": [(c, METHOD_HELP[c.data["value"]]) for c in methods.subwidgets]}
        return render(request, self.template_name, context, status=status)

    def get(self, request: HttpRequest) -> HttpResponse:
        return self._render(request, DisputeFileForm())

    def post(self, request: HttpRequest) -> HttpResponse:
        form = DisputeFileForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                dispute = services.dispute_file(arbiter=request_user(request), **form.service_kwargs())
            except (DisputeError, RegistryError, ValidationError) as exc:
                form.add_service_error(exc)
            else:
                messages.success(request, f"Filed “{dispute.title}”: queued for a verification run.")
                return redirect("arbiter-dispute", dispute_id=dispute.public_id)
        return self._render(request, form, status=400)


class DisputeDetailView(ArbiterRequiredMixin, View):
    """A dispute: state and live progress, its runs, and once decided the verdict with its actions."""

    def get(self, request: HttpRequest, dispute_id: uuid.UUID) -> HttpResponse:
        dispute = _held_dispute(request, dispute_id)
        verdict = _verdict_of(dispute)
        context: dict[str, Any] = {
            "dispute": dispute,
            "runs": [
                {
                    "run": run,
                    "duration_s": (run.finished_at - run.started_at).total_seconds() if run.finished_at else None,
                }
                for run in dispute.runs.all()
            ],
            "evidence_sets": dispute.evidence_sets.order_by("created_at", "id"),
            "state_tone": STATE_TONE.get(dispute.state, "neutral"),
            "settled": dispute.state in SETTLED,
            "can_publish": dispute.state == Dispute.State.DECIDED,
            "can_withdraw": dispute.state in WITHDRAWABLE,
            # a retry cannot help a dispute whose panel does not fit the claimant's registration
            "can_retry": dispute.state == Dispute.State.FAILED
            and not panel_refusal(panel=dispute.panel, model=dispute.claimant_model),
            "methods": [m.replace("_", " ") for m in dispute.methods],
        }
        if verdict is not None:
            context.update(verdict_context(verdict))
        return render(request, "verification/dispute_detail.html", context)


@method_decorator(never_cache, name="dispatch")
class DisputeProgressView(ArbiterRequiredMixin, View):
    """State, percent and phase of a dispute, for the page's poller."""

    def get(self, request: HttpRequest, dispute_id: uuid.UUID) -> JsonResponse:
        return JsonResponse(progress_payload(_held_dispute(request, dispute_id), settled=SETTLED))


class _DisputeActionView(ArbiterRequiredMixin, View):
    """POST-only action on a dispute; a state that does not allow it comes back as a message."""

    def act(self, request: HttpRequest, dispute: Dispute) -> str:
        raise NotImplementedError

    def post(self, request: HttpRequest, dispute_id: uuid.UUID) -> HttpResponse:
        dispute = _held_dispute(request, dispute_id)
        try:
            done = self.act(request, dispute)
        except DisputeStateError as exc:
            text = str(exc)
            messages.error(request, f"{text[:1].upper()}{text[1:]}.")
        else:
            messages.success(request, done)
        return redirect("arbiter-dispute", dispute_id=dispute.public_id)


class DisputePublishView(_DisputeActionView):
    def act(self, request: HttpRequest, dispute: Dispute) -> str:
        verdict = services.verdict_publish(dispute=dispute)
        url = reverse("public-verdict", kwargs={"verdict_id": verdict.public_id})
        return f"Published the verdict: anyone can now read it at {request.build_absolute_uri(url)}"


class DisputeWithdrawView(_DisputeActionView):
    def act(self, request: HttpRequest, dispute: Dispute) -> str:
        services.dispute_withdraw(dispute=dispute)
        return "Withdrawn. No verdict will be made for this dispute."


class DisputeRetryView(_DisputeActionView):
    def act(self, request: HttpRequest, dispute: Dispute) -> str:
        services.dispute_queue(dispute=dispute)
        return "Queued again for a new verification run."


# --- dispute requests: the owner's side and the arbiter's ------------------------------------------------


REQUEST_TONE = {"open": "info", "accepted": "good", "declined": "bad", "withdrawn": "neutral"}


def _request_suspect_label(found: DisputeRequest) -> str:
    if found.suspect_kind == Dispute.SuspectKind.REGISTERED and found.suspect_registration is not None:
        return found.suspect_registration.name
    if found.suspect_kind == Dispute.SuspectKind.ENDPOINT:
        return found.suspect_url
    return PurePosixPath(found.suspect_artifact.name or "").name or "uploaded file"


def _request_rows(requests: Any) -> list[dict[str, Any]]:
    rows = []
    for found in requests:
        dispute = found.dispute
        verdict = _verdict_of(dispute) if dispute is not None else None
        published = verdict if verdict is not None and verdict.published_at is not None else None
        rows.append(
            {
                "req": found,
                "suspect": _request_suspect_label(found),
                "methods": [m.replace("_", " ") for m in found.methods],
                "tone": REQUEST_TONE.get(found.state, "neutral"),
                "dispute": dispute,
                "dispute_tone": STATE_TONE.get(dispute.state, "neutral") if dispute is not None else "",
                "verdict": published,
                "outcome_tone": OUTCOME_TONE.get(published.outcome, "neutral") if published else "",
            }
        )
    return rows


class _RequestFormView(OwnerRequiredMixin, View):
    template_name = "verification/request_new.html"

    def _render(self, request: HttpRequest, form: DisputeRequestForm, status: int = 200) -> HttpResponse:
        methods = form["methods"]
        context = {"form": form, "method_choices": [(c, METHOD_HELP[c.data["value"]]) for c in methods.subwidgets]}
        return render(request, self.template_name, context, status=status)


class RequestListView(OwnerRequiredMixin, View):
    """The owner's dispute requests and what became of them."""

    def get(self, request: HttpRequest) -> HttpResponse:
        found = selectors.dispute_request_list(owner=request_user(request)).select_related("suspect_registration")
        return render(request, "verification/request_list.html", {"rows": _request_rows(found)})


class RequestNewView(_RequestFormView):
    """Request a dispute: one of your registrations against a suspect you found."""

    def get(self, request: HttpRequest) -> HttpResponse:
        initial = {}
        model = request.GET.get("model", "")
        if model:
            initial["claimant"] = model
        return self._render(request, DisputeRequestForm(owner=request_user(request), initial=initial))

    def post(self, request: HttpRequest) -> HttpResponse:
        form = DisputeRequestForm(request.POST, request.FILES, owner=request_user(request))
        if form.is_valid():
            try:
                made = services.dispute_request_create(owner=request_user(request), **form.service_kwargs())
            except (DisputeError, RegistryError, ValidationError) as exc:
                form.add_service_error(exc)
            else:
                messages.success(request, f"Requested “{made.title}”: an arbiter will accept or decline it.")
                return redirect("owner-request", request_id=made.public_id)
        return self._render(request, form, status=400)


class RequestDetailView(OwnerRequiredMixin, View):
    """One of the owner's requests: its state, the arbiter's note, the dispute's progress and published verdict."""

    def get(self, request: HttpRequest, request_id: uuid.UUID) -> HttpResponse:
        try:
            found = selectors.dispute_request_get(owner=request_user(request), public_id=request_id)
        except DisputeNotFoundError as exc:
            raise Http404(str(exc)) from exc
        [row] = _request_rows([found])
        context = {**row, "evidence_sets": found.evidence_sets.order_by("created_at", "id")}
        return render(request, "verification/request_detail.html", context)


class RequestWithdrawView(OwnerRequiredMixin, View):
    def post(self, request: HttpRequest, request_id: uuid.UUID) -> HttpResponse:
        try:
            found = selectors.dispute_request_get(owner=request_user(request), public_id=request_id)
            services.dispute_request_withdraw(request=found)
        except DisputeNotFoundError as exc:
            raise Http404(str(exc)) from exc
        except DisputeStateError as exc:
            messages.error(request, as_sentence(str(exc)))
        else:
            messages.success(request, "Withdrawn. Arbiters no longer see this request.")
        return redirect("owner-request", request_id=request_id)


def _inbox_request(request: HttpRequest, request_id: uuid.UUID) -> DisputeRequest:
    try:
        return selectors.dispute_request_for_arbiter(arbiter=request_user(request), public_id=request_id)
    except DisputeNotFoundError as exc:
        raise Http404(str(exc)) from exc


class InboxRequestView(ArbiterRequiredMixin, View):
    """An owner's request as the arbiter sees it: accept it (filing the dispute) or decline it."""

    def _render(
        self,
        request: HttpRequest,
        found: DisputeRequest,
        accept: RequestAcceptForm | None = None,
        decline: RequestDeclineForm | None = None,
        status: int = 200,
    ) -> HttpResponse:
        [row] = _request_rows([found])
        context = {
            **row,
            "evidence_sets": found.evidence_sets.order_by("created_at", "id"),
            "accept_form": accept or RequestAcceptForm(initial={}),
            "decline_form": decline or RequestDeclineForm(),
            "is_open": found.state == DisputeRequest.State.OPEN,
        }
        return render(request, "verification/request_inbox.html", context, status=status)

    def get(self, request: HttpRequest, request_id: uuid.UUID) -> HttpResponse:
        return self._render(request, _inbox_request(request, request_id))

    def post(self, request: HttpRequest, request_id: uuid.UUID) -> HttpResponse:
        found = _inbox_request(request, request_id)
        if request.POST.get("action") == "decline":
            decline = RequestDeclineForm(request.POST)
            if decline.is_valid():
                try:
                    services.dispute_request_decline(
                        request=found, arbiter=request_user(request), reason=decline.cleaned_data["reason"]
                    )
                except DisputeError as exc:
                    decline.add_error("reason" if exc.code == "reason" else None, as_sentence(str(exc)))
                else:
                    messages.success(request, "Declined. The owner sees your reason.")
                    return redirect("arbiter-disputes")
            return self._render(request, found, decline=decline, status=400)
        accept = RequestAcceptForm(request.POST)
        if accept.is_valid():
            try:
                dispute = services.dispute_request_accept(
                    request=found,
                    arbiter=request_user(request),
                    note=accept.cleaned_data["note"],
                    **accept.run_kwargs(),
                )
            except (DisputeError, RegistryError, ValidationError) as exc:
                field = exc.code if isinstance(exc, DisputeError) and exc.code in accept.fields else None
                accept.add_error(
                    field, as_sentence(str(exc) if not isinstance(exc, ValidationError) else exc.messages[0])
                )
            else:
                messages.success(request, f"Accepted: “{dispute.title}” is filed and queued.")
                return redirect("arbiter-dispute", dispute_id=dispute.public_id)
        return self._render(request, found, accept=accept, status=400)


# --- verdicts: public once published ----------------------------------------------------------------


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
        data = services.verdict_bundle(verdict=verdict)
        response = HttpResponse(data, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{bundle_name(verdict)}"'
        response["ETag"] = quote_etag(hashlib.sha256(data).hexdigest())
        if verdict.published_at is not None:
            patch_cache_control(response, public=True, max_age=self.max_age)
        else:  # the arbiter's preview: no shared cache may keep it
            patch_cache_control(response, private=True, no_cache=True, max_age=0)
        return get_conditional_response(request, etag=response["ETag"], response=response) or response
