"""Dispute request pages: the owner's (list, new, detail, withdraw) and the arbiter's (accept or decline)."""

import re
import uuid
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views import View

from ownership.exceptions import RegistryError
from verification import selectors
from verification.exceptions import DisputeError, DisputeNotFoundError, DisputeStateError
from verification.forms.disputes import METHOD_HELP, as_sentence
from verification.forms.requests import DisputeRequestForm, RequestAcceptForm, RequestDeclineForm
from verification.models import DisputeRequest
from verification.services import requests as request_services
from verification.views.disputes import ArbiterRequiredMixin, OwnerRequiredMixin, _request_rows, request_user


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
        initial: dict[str, Any] = {}
        model = request.GET.get("model", "")
        if model:
            initial["claimant"] = model
        # from a guard alarm: that client's journaled answers (the service checks the values again)
        if request.GET.get("methods") == "api_watermark":
            initial["methods"] = ["api_watermark"]
        client = request.GET.get("api_client", "")
        if re.fullmatch(r"[0-9a-f]{32}", client):
            initial["api_client"] = client
        return self._render(request, DisputeRequestForm(owner=request_user(request), initial=initial))

    def post(self, request: HttpRequest) -> HttpResponse:
        form = DisputeRequestForm(request.POST, request.FILES, owner=request_user(request))
        if form.is_valid():
            try:
                made = request_services.dispute_request_create(owner=request_user(request), **form.service_kwargs())
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
            request_services.dispute_request_withdraw(request=found)
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
                    request_services.dispute_request_decline(
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
                dispute = request_services.dispute_request_accept(
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
