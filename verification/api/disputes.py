"""Arbiter API: reference panels, disputes (file, follow, publish, withdraw, retry); public verdicts and bundles."""

import base64
import hashlib
import json
import uuid
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import HttpResponse
from django.urls import reverse
from django.utils.cache import get_conditional_response, patch_cache_control
from django.utils.http import quote_etag
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, ScopedRateThrottle, UserRateThrottle
from rest_framework.views import APIView

from ownership import selectors as ownership_selectors
from ownership.api import refuse_oversized
from ownership.exceptions import RegistryNotFoundError
from ownership.models import EvidenceSet, RegisteredModel
from ownership.parsers import BoundedJSONParser
from ownership.roles import IsArbiter, IsOwner, Role, user_has_role
from verification import reference, selectors, services
from verification.exceptions import DisputeNotFoundError
from verification.models import Dispute, DisputeRequest, Verdict, VerificationRun

METHOD_CHOICES = list(services.METHOD_EVIDENCE)


def _public_id(raw: str, what: str) -> uuid.UUID:
    """A path's public id; anything that is not a UUID names nothing (404 with a sentence, not Django's page)."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise DisputeNotFoundError(f"no such {what}: {raw[:64]!r} is not a {what} id (a UUID)") from None


def _id_parameter(name: str, what: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.UUID, OpenApiParameter.PATH, description=f"the {what}'s public id")


class CommaListField(serializers.ListField):
    """A list given as repeated form fields, a JSON list, or one comma-separated string ("watermark,fingerprint")."""

    def to_internal_value(self, data: Any) -> list[Any]:
        if isinstance(data, str):
            data = [data]
        if isinstance(data, list | tuple) and all(isinstance(item, str) for item in data):
            data = [part.strip() for item in data for part in item.split(",") if part.strip()]
        return super().to_internal_value(data)  # type: ignore[no-any-return]


# --- output --------------------------------------------------------------------------------------


def _verdict_url(verdict: Verdict) -> str:
    return reverse("verdict-detail", kwargs={"verdict_id": str(verdict.public_id)})


def _bundle_url(verdict: Verdict) -> str:
    return reverse("verdict-bundle", kwargs={"verdict_id": str(verdict.public_id)})


class ClaimantOutputSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    digest = serializers.CharField(source="model_digest", help_text="the model's SHA-256 digest (OpenSSF)")

    class Meta:
        model = RegisteredModel
        ref_name = "DisputeClaimant"
        fields = ["id", "name", "digest"]


class SuspectOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "DisputeSuspect"

    kind = serializers.CharField(source="suspect_kind", help_text="artifact, registered or endpoint")
    format = serializers.CharField(source="suspect_format", help_text="onnx or torchscript; empty for an endpoint")
    digest = serializers.CharField(
        source="suspect_digest", help_text="the artifact's SHA-256 model digest; for an endpoint, SHA-256 of its URL"
    )
    registered_model = serializers.UUIDField(
        source="suspect_registration.public_id", allow_null=True, help_text="the registration, for kind=registered"
    )
    url = serializers.CharField(source="suspect_url", help_text="the endpoint, for kind=endpoint")
    protocol = serializers.CharField(source="suspect_protocol")
    model_name = serializers.CharField(source="suspect_model_name")
    output = serializers.CharField(source="suspect_output")


class RunOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = VerificationRun
        ref_name = "VerificationRun"
        fields = ["attempt", "state", "started_at", "finished_at", "timings", "error"]


class VerdictSummarySerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    url = serializers.SerializerMethodField()
    bundle_url = serializers.SerializerMethodField()

    class Meta:
        model = Verdict
        ref_name = "VerdictSummary"
        fields = ["id", "outcome", "published_at", "url", "bundle_url"]

    def get_url(self, obj: Verdict) -> str:
        return _verdict_url(obj)

    def get_bundle_url(self, obj: Verdict) -> str:
        return _bundle_url(obj)


class DisputeOutputSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    progress = serializers.IntegerField(help_text="percent, 0 to 100")
    methods = serializers.ListField(child=serializers.CharField(), help_text="the methods the run applies")
    claimant_model = ClaimantOutputSerializer(read_only=True)
    evidence_sets = serializers.SlugRelatedField(many=True, read_only=True, slug_field="public_id")
    suspect = SuspectOutputSerializer(source="*", read_only=True)
    runs = RunOutputSerializer(many=True, read_only=True)
    verdict = VerdictSummarySerializer(read_only=True, allow_null=True, help_text="null until the dispute is decided")

    class Meta:
        model = Dispute
        ref_name = "Dispute"
        fields = [
            "id",
            "title",
            "state",
            "progress",
            "phase",
            "failure_reason",
            "methods",
            "alpha",
            "query_budget",
            "panel",
            "claimant_model",
            "evidence_sets",
            "suspect",
            "runs",
            "verdict",
            "created_at",
            "updated_at",
        ]


def _with_relations(disputes: QuerySet[Dispute]) -> QuerySet[Dispute]:
    return disputes.select_related("suspect_registration").prefetch_related("runs", "evidence_sets")


# --- input ---------------------------------------------------------------------------------------


def evidence_sets_of(model: RegisteredModel, public_ids: list[uuid.UUID], whose: str) -> list[EvidenceSet]:
    """The model's evidence sets by public id (each once), or a validation error on the evidence_sets field."""
    try:
        return [ownership_selectors.evidence_get(model=model, public_id=pid) for pid in dict.fromkeys(public_ids)]
    except RegistryNotFoundError:
        raise serializers.ValidationError(
            {"evidence_sets": f"every evidence set must be one of the {whose}'s"}
        ) from None


class ClaimAndSuspectInput(serializers.Serializer):
    """The claimant's registration, methods, evidence sets and exactly one suspect (filing and requests)."""

    claimant_model = serializers.UUIDField(help_text="public id of the claimant's registered model")
    methods = CommaListField(
        child=serializers.ChoiceField(choices=METHOD_CHOICES),
        allow_empty=False,
        help_text="a list, or comma-separated: watermark, fingerprint, dataset_inference",
    )
    evidence_sets = CommaListField(
        child=serializers.UUIDField(),
        required=False,
        help_text="public ids of the claimant's evidence sets to open (default: all of the requested kinds)",
    )
    suspect_file = serializers.FileField(required=False, help_text="the suspect's ONNX or TorchScript artifact")
    suspect_model = serializers.UUIDField(required=False, help_text="public id of a registered suspect model")
    suspect_url = serializers.CharField(
        required=False, max_length=500, help_text="a prediction endpoint (http:// or https://)"
    )
    suspect_protocol = serializers.ChoiceField(
        choices=Dispute.Protocol.choices, required=False, help_text="with suspect_url; default json"
    )
    suspect_model_name = serializers.CharField(
        required=False, max_length=200, help_text="with suspect_url: the model's name on the server (v2)"
    )
    suspect_output = serializers.ChoiceField(
        choices=Dispute.OutputKind.choices, required=False, help_text="with suspect_url; default logits"
    )

    def validate_claimant_model(self, value: uuid.UUID) -> RegisteredModel:
        try:
            return selectors.registration_get(public_id=value)
        except DisputeNotFoundError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate_suspect_model(self, value: uuid.UUID) -> RegisteredModel:
        try:
            return selectors.registration_get(public_id=value)
        except DisputeNotFoundError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [name for name in ("suspect_file", "suspect_model", "suspect_url") if attrs.get(name)]
        if len(given) != 1:
            raise serializers.ValidationError(
                "give exactly one suspect: suspect_file, suspect_model or suspect_url"
                + (f" (got {', '.join(given)})" if given else "")
            )
        endpoint_only = [n for n in ("suspect_protocol", "suspect_model_name", "suspect_output") if n in attrs]
        if endpoint_only and given != ["suspect_url"]:
            raise serializers.ValidationError(f"{', '.join(endpoint_only)} only go with suspect_url")
        if "evidence_sets" in attrs:
            attrs["evidence_sets"] = evidence_sets_of(attrs["claimant_model"], attrs["evidence_sets"], "claimant model")
        return attrs


# --- arbiter endpoints -----------------------------------------------------------------------------


class ArbiterApiView(APIView):
    """Arbiter endpoints: the arbiter role, and only the caller's own disputes (others' are a 404)."""

    permission_classes = [IsAuthenticated, IsArbiter]

    def held_dispute(self, request: Request, dispute_id: str) -> Dispute:
        public_id = _public_id(dispute_id, "dispute")
        return selectors.dispute_get(arbiter=request.user, public_id=public_id)

    def dispute_response(self, request: Request, dispute: Dispute, http_status: int = status.HTTP_200_OK) -> Response:
        fresh = _with_relations(selectors.dispute_list(arbiter=request.user)).get(pk=dispute.pk)
        return Response(DisputeOutputSerializer(fresh).data, status=http_status)


class PanelListApi(ArbiterApiView):
    """The reference panels a dispute can be judged against, and the models each serves."""

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ReferencePanel"

        name = serializers.CharField()
        description = serializers.CharField()
        task = serializers.CharField()
        num_classes = serializers.IntegerField(help_text="the classes a model must have")
        input_shape = serializers.ListField(
            child=serializers.IntegerField(), help_text="the shape the panel's models take, without the batch"
        )
        accepted_input_shapes = serializers.ListField(
            child=serializers.ListField(child=serializers.IntegerField()),
            help_text="every input shape a registered model may have (the same elements, reshaped row-major)",
        )
        size = serializers.IntegerField(help_text="how many reference models the panel holds")

    @extend_schema(responses=OutputSerializer(many=True), summary="Reference panels")
    def get(self, request: Request) -> Response:
        described = reference.panel_list()
        panels = [{**info.to_dict(), "description": described[info.name]} for info in reference.panel_infos()]
        return Response(self.OutputSerializer(panels, many=True).data)


class DisputeListApi(ArbiterApiView):
    """Your disputes, or file one: the claimant's registration against exactly one suspect."""

    parser_classes = [MultiPartParser, FormParser, BoundedJSONParser]

    class InputSerializer(ClaimAndSuspectInput):
        class Meta:
            ref_name = "DisputeFiling"

        title = serializers.CharField(max_length=services.MAX_TITLE)
        alpha = serializers.FloatField(required=False, help_text="significance level in (0, 0.1]; default 0.001")
        query_budget = serializers.IntegerField(
            required=False, min_value=1, max_value=services.MAX_BUDGET, help_text="default 100000"
        )
        panel = serializers.CharField(required=False, max_length=100, default="digits")

    @extend_schema(responses=DisputeOutputSerializer(many=True), summary="Your disputes")
    def get(self, request: Request) -> Response:
        disputes = _with_relations(selectors.dispute_list(arbiter=request.user))
        return Response(DisputeOutputSerializer(disputes, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: DisputeOutputSerializer}, summary="File a dispute")
    def post(self, request: Request) -> Response:
        refuse_oversized(request, settings.MODELCOURT_MAX_ARTIFACT_BYTES)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        if "suspect_model" in data:
            data["suspect_registration"] = data.pop("suspect_model")
        dispute = services.dispute_file(arbiter=request.user, **data)
        return self.dispute_response(request, dispute, status.HTTP_201_CREATED)


class DisputeDetailApi(ArbiterApiView):
    """One of your disputes: state, progress, runs and, once decided, its verdict."""

    @extend_schema(
        parameters=[_id_parameter("dispute_id", "dispute")], responses=DisputeOutputSerializer, summary="A dispute"
    )
    def get(self, request: Request, dispute_id: str) -> Response:
        return self.dispute_response(request, self.held_dispute(request, dispute_id))


class DisputePublishApi(ArbiterApiView):
    """Publish a decided dispute's verdict: from now on anyone can read it and download its bundle."""

    @extend_schema(
        parameters=[_id_parameter("dispute_id", "dispute")],
        request=None,
        responses=DisputeOutputSerializer,
        summary="Publish the verdict",
    )
    def post(self, request: Request, dispute_id: str) -> Response:
        verdict = services.verdict_publish(dispute=self.held_dispute(request, dispute_id))
        return self.dispute_response(request, verdict.dispute)


class DisputeWithdrawApi(ArbiterApiView):
    """Withdraw a dispute that has no verdict yet."""

    @extend_schema(
        parameters=[_id_parameter("dispute_id", "dispute")],
        request=None,
        responses=DisputeOutputSerializer,
        summary="Withdraw a dispute",
    )
    def post(self, request: Request, dispute_id: str) -> Response:
        return self.dispute_response(request, services.dispute_withdraw(dispute=self.held_dispute(request, dispute_id)))


class DisputeRetryApi(ArbiterApiView):
    """Queue a failed dispute again for a new verification run."""

    @extend_schema(
        parameters=[_id_parameter("dispute_id", "dispute")],
        request=None,
        responses=DisputeOutputSerializer,
        summary="Retry a failed dispute",
    )
    def post(self, request: Request, dispute_id: str) -> Response:
        return self.dispute_response(request, services.dispute_queue(dispute=self.held_dispute(request, dispute_id)))


# --- dispute requests: owners ask, arbiters accept or decline -------------------------------------------


class DisputeRequestOutputSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    methods = serializers.ListField(child=serializers.CharField(), help_text="the methods requested")
    claimant_model = ClaimantOutputSerializer(read_only=True)
    evidence_sets = serializers.SlugRelatedField(many=True, read_only=True, slug_field="public_id")
    suspect = SuspectOutputSerializer(source="*", read_only=True)
    owner = serializers.CharField(source="owner.get_username", read_only=True)
    arbiter = serializers.CharField(source="arbiter.get_username", read_only=True, allow_null=True, default=None)
    dispute = serializers.SerializerMethodField(help_text="once accepted: the dispute's id, state and verdict")

    class Meta:
        model = DisputeRequest
        ref_name = "DisputeRequest"
        fields = [
            "id",
            "title",
            "statement",
            "state",
            "methods",
            "claimant_model",
            "evidence_sets",
            "suspect",
            "owner",
            "arbiter",
            "decision_note",
            "dispute",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "state": {"type": "string"},
                "progress": {"type": "integer"},
                "verdict_url": {"type": "string", "nullable": True},
            },
        }
    )
    def get_dispute(self, obj: DisputeRequest) -> dict[str, Any] | None:
        dispute = obj.dispute
        if dispute is None:
            return None
        verdict = getattr(dispute, "verdict", None)
        # the owner learns the outcome only once the arbiter publishes it, like everyone else
        published = verdict is not None and verdict.published_at is not None
        return {
            "id": str(dispute.public_id),
            "state": dispute.state,
            "progress": dispute.progress,
            "verdict_url": _verdict_url(verdict) if published else None,
        }


def _request_response(found: DisputeRequest, http_status: int = status.HTTP_200_OK) -> Response:
    fresh = (
        DisputeRequest.objects.select_related("claimant_model", "owner", "arbiter", "dispute", "dispute__verdict")
        .prefetch_related("evidence_sets")
        .get(pk=found.pk)
    )
    return Response(DisputeRequestOutputSerializer(fresh).data, status=http_status)


def _request_id_parameter() -> OpenApiParameter:
    return _id_parameter("request_id", "dispute request")


class DisputeRequestListApi(APIView):
    """Your dispute requests (owners), or request one: your registration against a suspect you found."""

    permission_classes = [IsAuthenticated, IsOwner]
    parser_classes = [MultiPartParser, FormParser, BoundedJSONParser]

    class InputSerializer(ClaimAndSuspectInput):
        class Meta:
            ref_name = "DisputeRequestInput"

        title = serializers.CharField(max_length=services.MAX_TITLE)
        statement = serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=services.MAX_STATEMENT,
            help_text="why you suspect this model, for the arbiter",
        )

    @extend_schema(responses=DisputeRequestOutputSerializer(many=True), summary="Your dispute requests")
    def get(self, request: Request) -> Response:
        found = selectors.dispute_request_list(owner=request.user).prefetch_related("evidence_sets")
        return Response(DisputeRequestOutputSerializer(found, many=True).data)

    @extend_schema(
        request=InputSerializer, responses={201: DisputeRequestOutputSerializer}, summary="Request a dispute"
    )
    def post(self, request: Request) -> Response:
        refuse_oversized(request, settings.MODELCOURT_MAX_ARTIFACT_BYTES)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        if "suspect_model" in data:
            data["suspect_registration"] = data.pop("suspect_model")
        made = services.dispute_request_create(owner=request.user, **data)
        return _request_response(made, status.HTTP_201_CREATED)


class DisputeRequestInboxApi(ArbiterApiView):
    """Arbiters: every open dispute request (oldest first), then those you handled."""

    @extend_schema(responses=DisputeRequestOutputSerializer(many=True), summary="Dispute requests to handle")
    def get(self, request: Request) -> Response:
        found = selectors.dispute_request_inbox(arbiter=request.user).prefetch_related("evidence_sets")
        return Response(DisputeRequestOutputSerializer(found, many=True).data)


class DisputeRequestDetailApi(APIView):
    """One dispute request: its owner sees it always; arbiters while it is open or once they handled it."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        parameters=[_request_id_parameter()], responses=DisputeRequestOutputSerializer, summary="A dispute request"
    )
    def get(self, request: Request, request_id: str) -> Response:
        public_id = _public_id(request_id, "dispute request")
        try:
            found = selectors.dispute_request_get(owner=request.user, public_id=public_id)
        except DisputeNotFoundError:
            if not user_has_role(request.user, Role.ARBITER):
                raise
            found = selectors.dispute_request_for_arbiter(arbiter=request.user, public_id=public_id)
        return _request_response(found)


class DisputeRequestWithdrawApi(APIView):
    """Withdraw one of your open dispute requests."""

    permission_classes = [IsAuthenticated, IsOwner]

    @extend_schema(
        parameters=[_request_id_parameter()],
        request=None,
        responses=DisputeRequestOutputSerializer,
        summary="Withdraw a dispute request",
    )
    def post(self, request: Request, request_id: str) -> Response:
        found = selectors.dispute_request_get(owner=request.user, public_id=_public_id(request_id, "dispute request"))
        return _request_response(services.dispute_request_withdraw(request=found))


class DisputeRequestAcceptApi(ArbiterApiView):
    """Take an open request: a dispute is filed from it and queued; it is yours to run and publish."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DisputeRequestAcceptance"

        title = serializers.CharField(required=False, max_length=services.MAX_TITLE, help_text="default: the request's")
        alpha = serializers.FloatField(required=False, help_text="significance level in (0, 0.1]; default 0.001")
        query_budget = serializers.IntegerField(
            required=False, min_value=1, max_value=services.MAX_BUDGET, help_text="default 100000"
        )
        panel = serializers.CharField(required=False, max_length=100, default="digits")
        note = serializers.CharField(required=False, allow_blank=True, max_length=services.MAX_STATEMENT)

    @extend_schema(
        parameters=[_request_id_parameter()],
        request=InputSerializer,
        responses={201: DisputeOutputSerializer},
        summary="Accept a dispute request (files the dispute)",
    )
    def post(self, request: Request, request_id: str) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        found = selectors.dispute_request_for_arbiter(
            arbiter=request.user, public_id=_public_id(request_id, "dispute request")
        )
        dispute = services.dispute_request_accept(request=found, arbiter=request.user, **serializer.validated_data)
        return self.dispute_response(request, dispute, status.HTTP_201_CREATED)


class DisputeRequestDeclineApi(ArbiterApiView):
    """Decline an open request, saying why; the owner reads the reason."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DisputeRequestDecline"

        reason = serializers.CharField(max_length=services.MAX_STATEMENT)

    @extend_schema(
        parameters=[_request_id_parameter()],
        request=InputSerializer,
        responses=DisputeRequestOutputSerializer,
        summary="Decline a dispute request",
    )
    def post(self, request: Request, request_id: str) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        found = selectors.dispute_request_for_arbiter(
            arbiter=request.user, public_id=_public_id(request_id, "dispute request")
        )
        declined = services.dispute_request_decline(
            request=found, arbiter=request.user, reason=serializer.validated_data["reason"]
        )
        return _request_response(declined)


# --- verdicts: public once published ------------------------------------------------------------------


class VerdictApiView(APIView):
    """Anyone may read a published verdict; the arbiter who holds the dispute also reads it before that.

    Unlike the other public endpoints it authenticates callers (when they send credentials), to know that arbiter.
    """

    authentication_classes = api_settings.DEFAULT_AUTHENTICATION_CLASSES
    permission_classes = [AllowAny]
    throttle_classes = [AnonRateThrottle, UserRateThrottle]

    def visible_verdict(self, request: Request, verdict_id: str) -> Verdict:
        return selectors.verdict_get(public_id=_public_id(verdict_id, "verdict"), user=request.user)


class VerdictDetailApi(VerdictApiView):
    """A verdict: outcome, every statistic, the signed envelope, its time-stamp and log index."""

    class OutputSerializer(serializers.ModelSerializer):
        id = serializers.UUIDField(source="public_id")
        title = serializers.CharField(source="dispute.title", help_text="the dispute's title")
        predicate = serializers.JSONField(help_text="the signed verdict predicate: every statistic, p0, K, m, alpha")
        envelope = serializers.SerializerMethodField(help_text="the DSSE envelope over the in-toto Statement")
        timestamp_token = serializers.SerializerMethodField(
            help_text="the RFC 3161 token of the envelope (DER, base64)"
        )
        log_index = serializers.IntegerField(source="timestamp_token.log_entry_id")
        url = serializers.SerializerMethodField()
        bundle_url = serializers.SerializerMethodField()

        class Meta:
            model = Verdict
            ref_name = "Verdict"
            fields = [
                "id",
                "title",
                "outcome",
                "predicate",
                "envelope",
                "timestamp_token",
                "log_index",
                "created_at",
                "published_at",
                "url",
                "bundle_url",
            ]

        def get_envelope(self, obj: Verdict) -> dict[str, Any]:
            envelope: dict[str, Any] = json.loads(bytes(obj.envelope))
            return envelope

        def get_timestamp_token(self, obj: Verdict) -> str:
            return base64.b64encode(bytes(obj.timestamp_token.token)).decode()

        def get_url(self, obj: Verdict) -> str:
            return _verdict_url(obj)

        def get_bundle_url(self, obj: Verdict) -> str:
            return _bundle_url(obj)

    @extend_schema(
        parameters=[_id_parameter("verdict_id", "verdict")],
        responses=OutputSerializer,
        summary="A verdict (public once published)",
    )
    def get(self, request: Request, verdict_id: str) -> Response:
        return Response(self.OutputSerializer(self.visible_verdict(request, verdict_id)).data)


class VerdictBundleApi(VerdictApiView):
    """The verdict's evidence bundle (zip) that `modelcourt verify` and standard tools check offline."""

    # the web route /verdicts/<id>/bundle.zip counts against the same scope and client
    throttle_classes = [AnonRateThrottle, UserRateThrottle, ScopedRateThrottle]
    throttle_scope = "verdict-bundle"
    # the zip changes only when a newer checkpoint is signed (each minute at most, while the log grows)
    max_age = 60

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # the zip is not rendered; errors fall back to JSON whatever the client accepts (no 406 for application/zip)
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        parameters=[_id_parameter("verdict_id", "verdict")],
        responses={
            (200, "application/zip"): OpenApiTypes.BINARY,
            304: OpenApiResponse(description="the bundle named by If-None-Match is still the current one"),
            429: OpenApiResponse(description="too many downloads from this client; Retry-After gives the seconds"),
        },
        summary="A verdict's evidence bundle",
        description="Proofs run to the latest signed checkpoint. The ETag changes when a newer checkpoint is "
        "signed; send it back in If-None-Match to get a 304 while it has not.",
    )
    def get(self, request: Request, verdict_id: str) -> HttpResponse:
        verdict = self.visible_verdict(request, verdict_id)
        data = services.verdict_bundle(verdict=verdict)
        response = HttpResponse(data, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="verdict-{verdict.public_id}.zip"'
        response["ETag"] = quote_etag(hashlib.sha256(data).hexdigest())
        if verdict.published_at is not None:
            patch_cache_control(response, public=True, max_age=self.max_age)
        else:  # the arbiter's preview: no shared cache may keep it
            patch_cache_control(response, private=True, no_cache=True, max_age=0)
        conditional = get_conditional_response(request._request, etag=response["ETag"], response=response)
        return conditional if conditional is not None else response
