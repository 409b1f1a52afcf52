"""The arbiter's dispute pages (list, filing, progress, actions); who may see a page; rows of dispute requests."""

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
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache

from ownership.exceptions import RegistryError
from ownership.roles import Role, user_has_role
from verification import selectors
from verification.exceptions import DisputeError, DisputeNotFoundError, DisputeStateError
from verification.forms.disputes import METHOD_HELP, DisputeFileForm
from verification.models import Dispute, DisputeRequest, StressTest
from verification.panel_fit import panel_refusal
from verification.services import disputes as dispute_services
from verification.services import verdicts as verdict_services
from verification.views.verdicts import OUTCOME_TONE, _verdict_of, verdict_context

# The states after which a dispute's page stops polling for progress.
SETTLED = frozenset({Dispute.State.DECIDED, Dispute.State.PUBLISHED, Dispute.State.FAILED, Dispute.State.WITHDRAWN})
WITHDRAWABLE = frozenset({Dispute.State.FILED, Dispute.State.QUEUED, Dispute.State.RUNNING, Dispute.State.FAILED})
STATE_TONE = {"running": "info", "queued": "info", "decided": "good", "published": "good", "failed": "bad"}


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
                dispute = dispute_services.dispute_file(arbiter=request_user(request), **form.service_kwargs())
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
            "api_client": dispute.api_client,
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
        verdict = verdict_services.verdict_publish(dispute=dispute)
        url = reverse("public-verdict", kwargs={"verdict_id": verdict.public_id})
        return f"Published the verdict: anyone can now read it at {request.build_absolute_uri(url)}"


class DisputeWithdrawView(_DisputeActionView):
    def act(self, request: HttpRequest, dispute: Dispute) -> str:
        dispute_services.dispute_withdraw(dispute=dispute)
        return "Withdrawn. No verdict will be made for this dispute."


class DisputeRetryView(_DisputeActionView):
    def act(self, request: HttpRequest, dispute: Dispute) -> str:
        dispute_services.dispute_queue(dispute=dispute)
        return "Queued again for a new verification run."


# --- rows of dispute requests: the arbiter's list shows the open ones (verification.views.requests the rest) ---


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
                "api_client": found.api_client,
                "tone": REQUEST_TONE.get(found.state, "neutral"),
                "dispute": dispute,
                "dispute_tone": STATE_TONE.get(dispute.state, "neutral") if dispute is not None else "",
                "verdict": published,
                "outcome_tone": OUTCOME_TONE.get(published.outcome, "neutral") if published else "",
            }
        )
    return rows
