"""Server-rendered pages: sign-in and sign-up, and the owner's registry (models, evidence, receipts)."""

import base64
import hashlib
import io
import json
import time
import uuid
from typing import Any

from django import forms
from django.apps import apps
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.mixins import AccessMixin
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import redirect, render
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.text import slugify
from django.views import View
from django.views.decorators.cache import never_cache
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

from ownership import selectors, services
from ownership.exceptions import ModelInDisputeError, RegistryError, RegistryNotFoundError
from ownership.models import EvidenceSet, RegisteredModel
from ownership.roles import Role, role_grant, user_has_role


def _login_rate(scope: str) -> tuple[int, int]:
    """(attempts, seconds) from a throttle rate such as `login`, e.g. "20/min"."""
    count, period = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"][scope].split("/")
    return int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]


class _FailureWindow:
    """Failed sign-ins counted in a fixed window per key; the window does not slide with each failure."""

    def __init__(self, key: str) -> None:
        self.key = f"login-failures:{key}"

    def count(self) -> int:
        count, expires = cache.get(self.key, (0, 0.0))
        return int(count) if expires > time.time() else 0

    def add(self, period: int) -> None:
        count, expires = cache.get(self.key, (0, 0.0))
        now = time.time()
        if expires <= now:
            count, expires = 0, now + period
        cache.set(self.key, (count + 1, expires), timeout=max(1, int(expires - now)))


class LoginView(auth_views.LoginView):
    """Django's login page; failed attempts are limited per (client address, username) and, looser, per address.

    No window counts a username alone: failures from one address must not lock its owner out at another.
    """

    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # The same client identity as the API throttles (honours MODELCOURT_NUM_PROXIES).
        client = BaseThrottle().get_ident(request)  # type: ignore[arg-type]
        username = str(request.POST.get("username", ""))[:150].lower()
        # hashed: any text a client types stays out of cache keys
        pair = hashlib.sha256(f"{client}\x00{username}".encode()).hexdigest()
        windows = [
            (_FailureWindow(f"ip-user:{pair}"), *_login_rate("login")),
            (_FailureWindow(f"ip:{client}"), *_login_rate("login-address")),
        ]
        if any(window.count() >= limit for window, limit, _ in windows):
            form = self.get_form()
            form.add_error(None, "Too many failed sign-ins; wait a minute and try again.")
            response = self.render_to_response(self.get_context_data(form=form))
            response.status_code = 429
            return response
        response = super().post(request, *args, **kwargs)
        if response.status_code != 302:
            for window, _, period in windows:
                window.add(period)
        return response


# --- sign-up --------------------------------------------------------------------------------


class _SignupThrottle(SimpleRateThrottle):
    """Sign-up attempts per client address (the `signup` rate): per-owner limits mean little if accounts are free."""

    scope = "signup"

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class SignupView(View):
    """Create an account with the owner role and sign it in; attempts are limited per client address."""

    template_name = "ownership/signup.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated:
            return redirect("owner-models")
        return render(request, self.template_name, {"form": UserCreationForm()})

    def post(self, request: HttpRequest) -> HttpResponse:
        form = UserCreationForm(request.POST)
        if not _SignupThrottle().allow_request(request, self):  # type: ignore[arg-type]
            messages.error(request, "Too many sign-ups from your address; try again later.")
            return render(request, self.template_name, {"form": UserCreationForm()}, status=429)
        if not form.is_valid():
            return render(request, self.template_name, {"form": form}, status=400)
        with transaction.atomic():
            user = form.save()
            role_grant(user=user, role=Role.OWNER)
        login(request, user, backend=settings.AUTHENTICATION_BACKENDS[0])
        messages.success(request, f"Welcome, {user.get_username()}. Register your first model to get started.")
        return redirect("owner-models")


# --- forms ----------------------------------------------------------------------------------

# Registry error codes (see ownership.exceptions and services) -> the form field they are about.
REGISTER_ERROR_FIELDS = {
    "name": "name",
    "duplicate_name": "name",
    "input_shape": "input_shape",
    "num_classes": "num_classes",
    "artifact": "artifact",
    "artifact_rejected": "artifact",
    "too_large": "artifact",
}
EVIDENCE_ERROR_FIELDS = {"kind": "kind", "evidence_rejected": "file", "too_large": "file"}


class InputShapeField(forms.CharField):
    """An input shape typed as "1,8,8" (brackets allowed); the service checks the ranges."""

    def to_python(self, value: Any) -> list[int]:  # type: ignore[override]
        text = str(super().to_python(value)).strip().removeprefix("[").removesuffix("]")
        if not text:
            return []  # an empty value: "required" speaks
        try:
            return [int(part) for part in text.split(",")]
        except ValueError:
            raise ValidationError(
                "Give the input shape as whole numbers separated by commas, e.g. 1,8,8.", code="invalid"
            ) from None


class ModelRegisterForm(forms.Form):
    """Field names match the API's (`POST /api/v1/models/`), so the upload script can send this form as is."""

    name = forms.CharField(max_length=services.MAX_NAME, widget=forms.TextInput(attrs={"autocomplete": "off"}))
    task = forms.CharField(
        required=False,
        max_length=2000,
        widget=forms.TextInput(attrs={"placeholder": "e.g. handwritten digit classification, 8x8 grey"}),
    )
    input_shape = InputShapeField(
        label="Input shape",
        help_text="One input, without the batch dimension: e.g. 1,8,8 or 3,224,224.",
        widget=forms.TextInput(attrs={"placeholder": "1,8,8", "inputmode": "numeric"}),
    )
    num_classes = forms.IntegerField(label="Classes", min_value=2, max_value=100_000, help_text="Output size.")
    artifact = forms.FileField(
        label="Artifact",
        help_text="ONNX (.onnx) or TorchScript (.pt). It is loaded in a sandbox, never unpickled.",
        widget=forms.ClearableFileInput(attrs={"accept": ".onnx,.pt,.pth,.ts,.torchscript"}),
    )


class EvidenceUploadForm(forms.Form):
    kind = forms.ChoiceField(choices=EvidenceSet.Kind.choices, initial=EvidenceSet.Kind.WATERMARK)
    file = forms.FileField(
        label="Evidence file (.npz)",
        help_text="Inputs float32 [N, ...] and labels int64 [N]; dataset evidence: members and nonmembers.",
        widget=forms.ClearableFileInput(attrs={"accept": ".npz"}),
    )


class WatermarkGenerateForm(forms.Form):
    count = forms.IntegerField(label="Triggers", min_value=1, max_value=10_000, initial=100)
    low = forms.FloatField(label="Input low", initial=0.0, help_text="Lower bound of the input domain.")
    high = forms.FloatField(label="Input high", initial=1.0, help_text="Upper bound of the input domain.")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        low, high = data.get("low"), data.get("high")
        if low is not None and high is not None and not low < high:
            self.add_error("high", "The upper bound must be greater than the lower bound.")
        return data


def _add_registry_error(form: forms.Form, exc: RegistryError, fields: dict[str, str]) -> None:
    """Show a service's refusal next to the field it is about, or above the form, as a sentence."""
    text = str(exc).strip()
    text = text[:1].upper() + text[1:]
    form.add_error(fields.get(exc.code), text if text.endswith((".", "!", "?")) else f"{text}.")


# --- the owner's pages ------------------------------------------------------------------------


class OwnerRequiredMixin(AccessMixin):
    """Anonymous visitors go to the login page; signed-in users without the owner role get a 403."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        if not user_has_role(request.user, Role.OWNER):
            raise PermissionDenied("this page needs the owner role")
        return super().dispatch(request, *args, **kwargs)  # type: ignore[misc]


def _owned_model(request: HttpRequest, model_id: uuid.UUID) -> RegisteredModel:
    """One of the caller's models; anyone else's is a 404, as in the API."""
    try:
        return selectors.model_get(owner=request.user, public_id=model_id)  # type: ignore[arg-type]
    except RegistryNotFoundError as exc:
        raise Http404(str(exc)) from exc


def _owned_evidence(request: HttpRequest, model_id: uuid.UUID, evidence_id: uuid.UUID) -> EvidenceSet:
    model = _owned_model(request, model_id)
    try:
        return selectors.evidence_get(model=model, public_id=evidence_id)
    except RegistryNotFoundError as exc:
        raise Http404(str(exc)) from exc


def _render_model_page(
    request: HttpRequest,
    model: RegisteredModel,
    *,
    upload_form: EvidenceUploadForm | None = None,
    generate_form: WatermarkGenerateForm | None = None,
    status: int = 200,
) -> HttpResponse:
    context = {
        "model": model,
        "file_digests": sorted(model.file_digests.items()),
        "evidence_sets": selectors.evidence_list(model=model),
        "upload_form": upload_form or EvidenceUploadForm(),
        "generate_form": generate_form or WatermarkGenerateForm(),
        "max_evidence": filesizeformat(settings.MODELCOURT_MAX_EVIDENCE_BYTES),
        # the page polls the API's view of the model until the sandbox has decided, then reloads
        "status_url": reverse("model-detail", kwargs={"model_id": model.public_id}),
        # disputes live in the verification app, which ownership may not import: ask the app registry
        "cases": apps.get_app_config("verification").model_cases(model),  # type: ignore[attr-defined]
        "guard": _guard_summary(model),
    }
    return render(request, "ownership/model_detail.html", context, status=status)


def _guard_summary(model: RegisteredModel) -> dict[str, Any]:
    batches = [e for e in selectors.evidence_list(model=model) if e.kind == EvidenceSet.Kind.API_WATERMARK]
    clients = {t for b in batches for t in (b.journal or {}).get("clients", [])}
    return {
        "batches": batches,
        "answers": sum(b.size for b in batches),
        "clients": len(clients),
        "alarms": list(model.guard_alarms.all()[:100]),
    }


def _uploaded_message(model: RegisteredModel) -> str:
    if model.state == RegisteredModel.State.VALIDATING:
        return f"Registered {model.name}. It is being checked in the sandbox; this page shows the result."
    if model.state == RegisteredModel.State.REJECTED:
        return f"Registered {model.name}, but the sandbox refused it."
    return f"Registered {model.name}. Add or generate ownership evidence next."


def _refuse_inactive(request: HttpRequest, model: RegisteredModel) -> HttpResponse:
    """Evidence waits until the sandbox has accepted the model: the page says why, with a 409."""
    try:
        services.model_require_active(model=model)
    except RegistryError as exc:
        text = str(exc)
        messages.error(request, f"{text[:1].upper()}{text[1:]}.")
    return _render_model_page(request, model, status=409)


class ModelListView(OwnerRequiredMixin, View):
    """The owner's models."""

    def get(self, request: HttpRequest) -> HttpResponse:
        models = selectors.model_list(owner=request.user)  # type: ignore[arg-type]
        return render(request, "ownership/model_list.html", {"models": models})


class ModelRegisterView(OwnerRequiredMixin, View):
    """The registration form: the script uploads it to the API with progress; without a script it posts here."""

    template_name = "ownership/model_register.html"

    def _render(self, request: HttpRequest, form: ModelRegisterForm, status: int = 200) -> HttpResponse:
        context = {
            "form": form,
            "max_artifact_bytes": settings.MODELCOURT_MAX_ARTIFACT_BYTES,
            "max_artifact": filesizeformat(settings.MODELCOURT_MAX_ARTIFACT_BYTES),
            # The script swaps the placeholder id for the registered model's.
            "detail_url_template": reverse("owner-model", kwargs={"model_id": uuid.UUID(int=0)}),
        }
        return render(request, self.template_name, context, status=status)

    def get(self, request: HttpRequest) -> HttpResponse:
        return self._render(request, ModelRegisterForm())

    def post(self, request: HttpRequest) -> HttpResponse:
        form = ModelRegisterForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                # the sandbox check runs in a worker: it may outlast the web worker's timeout
                model = services.model_register(
                    owner=request.user,  # type: ignore[arg-type]
                    validate="async",
                    **form.cleaned_data,
                )
            except RegistryError as exc:
                _add_registry_error(form, exc, REGISTER_ERROR_FIELDS)
            else:
                messages.success(request, _uploaded_message(model))
                return redirect("owner-model", model_id=model.public_id)
        return self._render(request, form, status=400)


class ModelDetailView(OwnerRequiredMixin, View):
    """A model: metadata, digest, evidence sets and their receipts, evidence forms."""

    def get(self, request: HttpRequest, model_id: uuid.UUID) -> HttpResponse:
        model = _owned_model(request, model_id)
        if "registered" in request.GET:  # the upload script lands here after the API registered the model
            messages.success(request, _uploaded_message(model))
            return redirect("owner-model", model_id=model.public_id)
        return _render_model_page(request, model)


class EvidenceUploadView(OwnerRequiredMixin, View):
    """Commit to an owner's .npz evidence."""

    def post(self, request: HttpRequest, model_id: uuid.UUID) -> HttpResponse:
        model = _owned_model(request, model_id)
        if not model.is_active:
            return _refuse_inactive(request, model)
        form = EvidenceUploadForm(request.POST, request.FILES)
        if form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                if upload.size > settings.MODELCOURT_MAX_EVIDENCE_BYTES:  # refuse before reading it
                    raise RegistryError(
                        f"the evidence is {filesizeformat(upload.size)}; the limit is "
                        f"{filesizeformat(settings.MODELCOURT_MAX_EVIDENCE_BYTES)}",
                        code="too_large",
                    )
                evidence_set = services.evidence_upload(model=model, kind=form.cleaned_data["kind"], data=upload.read())
            except RegistryError as exc:
                _add_registry_error(form, exc, EVIDENCE_ERROR_FIELDS)
            else:
                messages.success(
                    request,
                    f"Committed {evidence_set.size} {evidence_set.get_kind_display().lower()} samples: "
                    f"time-stamped and logged at index {evidence_set.timestamp_token.serial}.",
                )
                return redirect("owner-evidence", model_id=model.public_id, evidence_id=evidence_set.public_id)
        return _render_model_page(request, model, upload_form=form, status=400)


class _GenerateThrottle(SimpleRateThrottle):
    """The API's `evidence-generate` budget, keyed like ScopedRateThrottle keys it: the page and the API share it."""

    scope = "evidence-generate"

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


class WatermarkGenerateView(OwnerRequiredMixin, View):
    """Generate a verifiable watermark from a fresh seed, then offer its trigger set."""

    def post(self, request: HttpRequest, model_id: uuid.UUID) -> HttpResponse:
        model = _owned_model(request, model_id)
        if not model.is_active:
            return _refuse_inactive(request, model)
        form = WatermarkGenerateForm(request.POST)
        throttle = _GenerateThrottle()
        if form.is_valid() and not throttle.allow_request(request, self):  # type: ignore[arg-type]
            wait = throttle.wait() or 60
            form.add_error(None, f"You have generated many watermarks recently; try again in {int(wait) + 1} s.")
            return _render_model_page(request, model, generate_form=form, status=429)
        if form.is_valid():
            try:
                evidence_set, _ = services.evidence_generate(model=model, **form.cleaned_data)
            except RegistryError as exc:
                _add_registry_error(form, exc, {})
            else:
                messages.success(
                    request,
                    f"Generated and committed a watermark of {evidence_set.size} triggers. "
                    "Download the trigger set and embed it in your model.",
                )
                return redirect("owner-evidence", model_id=model.public_id, evidence_id=evidence_set.public_id)
        return _render_model_page(request, model, generate_form=form, status=400)


class EvidenceDetailView(OwnerRequiredMixin, View):
    """One evidence set: its public receipt and, for the owner, the evidence itself."""

    def get(self, request: HttpRequest, model_id: uuid.UUID, evidence_id: uuid.UUID) -> HttpResponse:
        evidence_set = _owned_evidence(request, model_id, evidence_id)
        receipt = services.receipt_build(evidence_set=evidence_set)
        context = {
            "model": evidence_set.model,
            "evidence": evidence_set,
            "receipt": receipt,
            "receipt_json": json.dumps(receipt, indent=2),
        }
        return render(request, "ownership/evidence_detail.html", context)


@method_decorator(never_cache, name="dispatch")
class EvidenceTriggersView(OwnerRequiredMixin, View):
    """The escrowed evidence as .npz, decrypted for its owner (a watermark's trigger set, to embed)."""

    def get(self, request: HttpRequest, model_id: uuid.UUID, evidence_id: uuid.UUID) -> FileResponse:
        evidence_set = _owned_evidence(request, model_id, evidence_id)
        opening = services.evidence_open(evidence_set=evidence_set)
        data = base64.b64decode(opening["evidence_npz_b64"])
        stem = slugify(evidence_set.model.name) or "model"
        filename = f"{stem}-{evidence_set.kind}-{evidence_set.commitment[:12]}.npz"
        return FileResponse(
            io.BytesIO(data), as_attachment=True, filename=filename, content_type="application/octet-stream"
        )


class ReceiptDownloadView(OwnerRequiredMixin, View):
    """The public receipt of one of the owner's commitments, as a JSON file to keep."""

    def get(self, request: HttpRequest, commitment: str) -> JsonResponse:
        try:
            evidence_set = selectors.evidence_by_commitment(commitment=commitment)
        except RegistryNotFoundError as exc:
            raise Http404(str(exc)) from exc
        if evidence_set.model.owner_id != request.user.pk:
            raise Http404("no receipt for this commitment among yours")
        response = JsonResponse(services.receipt_build(evidence_set=evidence_set), json_dumps_params={"indent": 2})
        response["Content-Disposition"] = f'attachment; filename="receipt-{commitment}.json"'
        return response


class ModelDeleteView(OwnerRequiredMixin, View):
    """Confirm, then delete a model with its artifact and escrow (refused while a dispute refers to it)."""

    template_name = "ownership/model_delete.html"

    def get(self, request: HttpRequest, model_id: uuid.UUID) -> HttpResponse:
        model = _owned_model(request, model_id)
        return render(request, self.template_name, {"model": model, "evidence_count": model.evidence_sets.count()})

    def post(self, request: HttpRequest, model_id: uuid.UUID) -> HttpResponse:
        model = _owned_model(request, model_id)
        name = model.name
        try:
            services.model_delete(model=model)
        except ModelInDisputeError as exc:
            context = {"model": model, "evidence_count": model.evidence_sets.count(), "error": str(exc)}
            return render(request, self.template_name, context, status=409)
        messages.success(request, f"Deleted {name} with its artifact and escrowed evidence.")
        return redirect("owner-models")
