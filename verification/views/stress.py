"""The owner's stress-test pages: the list, the form, and one test's live progress and evidence-by-theft table."""

import math
import uuid
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache

from verification import selectors
from verification.exceptions import StressTestError, StressTestNotFoundError
from verification.forms.stress import THEFT_HELP, StressTestForm
from verification.models import StressTest
from verification.services import stress as stress_services
from verification.views.disputes import OwnerRequiredMixin, progress_payload, request_user

SETTLED = frozenset({StressTest.State.DONE, StressTest.State.FAILED})
STATE_TONE = {"queued": "info", "running": "info", "done": "good", "failed": "bad"}


def _own_test(request: HttpRequest, stress_test_id: uuid.UUID) -> StressTest:
    """One of the caller's stress tests; anyone else's is a 404, as in the API."""
    try:
        return selectors.stress_test_get(owner=request_user(request), public_id=stress_test_id)
    except StressTestNotFoundError as exc:
        raise Http404(str(exc)) from exc


def _p_value(value: Any) -> str:
    """A p-value in scientific notation (1.2e-36), or a dash."""
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value:.1e}"
    return "—"


def _percent(value: Any) -> str:
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{100 * value:.1f}%"
    return "—"


def table_context(results: dict[str, Any], timings: dict[str, Any]) -> dict[str, Any]:
    """The results as rows of evidence by columns of thefts (the control last), every number formatted."""
    rows = results.get("rows") or []

    def seconds(theft: str) -> float | None:
        parts = [timings.get(f"child_{theft}_{phase}_s") for phase in ("simulate", "tests")]
        return sum(p for p in parts if isinstance(p, int | float)) if any(parts) else None

    columns = [
        {
            "theft": row.get("theft", ""),
            "label": row.get("label", ""),
            "control": bool(row.get("control")),
            "detail": row.get("detail", ""),
            "accuracy": _percent(row.get("accuracy")),
            "agreement": _percent(row.get("agreement")),
            "queries": row.get("thief_queries", 0),
            "seconds": seconds(str(row.get("theft", ""))),
        }
        for row in rows
    ]
    evidence_rows = []
    for entry in results.get("evidence") or []:
        name = entry.get("name", "")
        cells = []
        for row in rows:
            cell = next((c for c in row.get("cells", []) if c.get("evidence") == name), None) or {}
            confirmed = bool(cell.get("confirmed"))
            control = bool(row.get("control"))
            if control:
                # on an innocent model a confirmation is a false positive: the good outcome is "not confirmed"
                verdict, tone = ("false match", "bad") if confirmed else ("not confirmed", "good")
            else:
                verdict, tone = ("survives", "good") if confirmed else ("lost", "bad")
            cells.append(
                {
                    "verdict": verdict,
                    "tone": tone,
                    "p_value": _p_value(cell.get("p_value")),
                    "match_rate": _percent(cell.get("match_rate")),
                    "reason": cell.get("reason", ""),
                }
            )
        screen = entry.get("screen") or {}
        evidence_rows.append(
            {
                "name": name,
                "kind": str(entry.get("kind", "")).replace("_", " "),
                "commitment": entry.get("commitment", ""),
                "verifiable": bool(entry.get("verifiable")),
                "size": entry.get("size"),
                "screened_out": bool(screen.get("rejected")),
                "cells": cells,
            }
        )
    owner = results.get("owner") or {}
    return {
        "columns": columns,
        "evidence_rows": evidence_rows,
        "owner_accuracy": _percent(owner.get("accuracy")),
        "panel": results.get("panel") or {},
    }


class StressTestListView(OwnerRequiredMixin, View):
    """The owner's stress tests, newest first."""

    def get(self, request: HttpRequest) -> HttpResponse:
        rows = [
            {"test": found, "tone": STATE_TONE.get(found.state, "neutral"), "thefts": found.thefts}
            for found in selectors.stress_test_list(owner=request_user(request))
        ]
        return render(request, "verification/stress_test_list.html", {"rows": rows})


class StressTestNewView(OwnerRequiredMixin, View):
    """Start a stress test: a model of yours, its evidence, the thefts to simulate."""

    template_name = "verification/stress_test_new.html"

    def _render(self, request: HttpRequest, form: StressTestForm, status: int = 200) -> HttpResponse:
        thefts = [(choice, THEFT_HELP[choice.data["value"]]) for choice in form["thefts"].subwidgets]
        return render(request, self.template_name, {"form": form, "theft_choices": thefts}, status=status)

    def get(self, request: HttpRequest) -> HttpResponse:
        initial = {"model": request.GET["model"]} if request.GET.get("model") else {}
        return self._render(request, StressTestForm(owner=request_user(request), initial=initial))

    def post(self, request: HttpRequest) -> HttpResponse:
        form = StressTestForm(request.POST, owner=request_user(request))
        if form.is_valid():
            try:
                started = stress_services.stress_test_start(owner=request_user(request), **form.service_kwargs())
            except (StressTestError, ValidationError) as exc:
                form.add_service_error(exc)
            else:
                messages.success(request, "Queued: the thefts run on a worker; this page follows them.")
                return redirect("owner-stress-test", stress_test_id=started.public_id)
        return self._render(request, form, status=400)


class StressTestDetailView(OwnerRequiredMixin, View):
    """A stress test: live progress, then the evidence-by-theft table."""

    def get(self, request: HttpRequest, stress_test_id: uuid.UUID) -> HttpResponse:
        found = _own_test(request, stress_test_id)
        context: dict[str, Any] = {
            "test": found,
            "state_tone": STATE_TONE.get(found.state, "neutral"),
            "settled": found.state in SETTLED,
            "evidence_sets": found.evidence_sets.order_by("created_at", "id"),
            "thefts": [t.replace("_", " ") for t in found.thefts],
        }
        if found.state == StressTest.State.DONE:
            context.update(table_context(found.results or {}, found.timings or {}))
        return render(request, "verification/stress_test_detail.html", context)


@method_decorator(never_cache, name="dispatch")
class StressTestProgressView(OwnerRequiredMixin, View):
    """State, percent and phase of a stress test, for the page's poller."""

    def get(self, request: HttpRequest, stress_test_id: uuid.UUID) -> JsonResponse:
        return JsonResponse(progress_payload(_own_test(request, stress_test_id), settled=SETTLED))
