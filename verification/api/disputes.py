"""Arbiter API: reference panels, disputes (file, follow, publish, withdraw, retry); what the other routes share."""

import uuid
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ownership import selectors as ownership_selectors
from ownership.api import refuse_oversized
from ownership.exceptions import RegistryNotFoundError
from ownership.models import EvidenceSet, RegisteredModel
from ownership.parsers import BoundedJSONParser
from ownership.roles import IsArbiter
from verification import reference, selectors
from verification.exceptions import DisputeNotFoundError
from verification.methods.budgets import blind_walk_queries_estimate
from verification.models import Dispute, Verdict, VerificationRun
from verification.services import disputes as dispute_services
from verification.services import verdicts as verdict_services

METHOD_CHOICES = list(dispute_services.METHOD_EVIDENCE)


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
    dataset_inference_queries = serializers.SerializerMethodField(
        help_text="for dataset inference against a label-only suspect (an endpoint or an ONNX file): the most "
        "queries Blind Walk needs for the dataset sets (assuming as many non-members as members) beside the "
        "dispute's budget; null when it does not apply. A budget below it leaves dataset inference inconclusive."
    )

    def get_dataset_inference_queries(self, dispute: Dispute) -> dict[str, Any] | None:
        if "dataset_inference" not in dispute.methods:
            return None
        form = dispute.suspect_format
        if dispute.suspect_kind == Dispute.SuspectKind.REGISTERED and dispute.suspect_registration is not None:
            form = dispute.suspect_registration.artifact_format
        if dispute.suspect_kind != Dispute.SuspectKind.ENDPOINT and form != "onnx":
            return None
        sizes = [e.size for e in dispute.evidence_sets.all() if e.kind == "dataset"]
        needed = sum(blind_walk_queries_estimate(members=n, nonmembers=n) for n in sizes)
        return {"needed": needed, "budget": dispute.query_budget, "enough": needed <= dispute.query_budget}

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
            "suspect_released_at",
            "suspect_release_source",
            "api_client",
            "claimant_model",
            "evidence_sets",
            "suspect",
            "dataset_inference_queries",
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
        help_text="a list, or comma-separated: watermark, fingerprint, dataset_inference, api_watermark",
    )
    api_client = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=64,
        help_text="with api_watermark: only this client's journaled answers (the guard's 32-hex-digit tag, e.g. "
        "from an alarm); the p-value is then corrected for every client the guard committed",
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

        title = serializers.CharField(max_length=dispute_services.MAX_TITLE)
        alpha = serializers.FloatField(required=False, help_text="significance level in (0, 0.1]; default 0.001")
        query_budget = serializers.IntegerField(
            required=False, min_value=1, max_value=dispute_services.MAX_BUDGET, help_text="default 100000"
        )
        panel = serializers.CharField(required=False, max_length=100, default="digits")
        suspect_released_at = serializers.DateTimeField(
            required=False,
            allow_null=True,
            default=None,
            help_text="when the suspect was first released, if you know (ISO 8601 with a time zone); it counts as "
            "the suspect's first known time, so evidence committed later cannot confirm ownership",
        )
        suspect_release_source = serializers.CharField(
            required=False,
            allow_blank=True,
            default="",
            max_length=dispute_services.MAX_RELEASE_SOURCE,
            help_text="where the release time comes from (a URL, a document); signed into the verdict",
        )

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
        dispute = dispute_services.dispute_file(arbiter=request.user, **data)
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
        verdict = verdict_services.verdict_publish(dispute=self.held_dispute(request, dispute_id))
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
        return self.dispute_response(
            request, dispute_services.dispute_withdraw(dispute=self.held_dispute(request, dispute_id))
        )


class DisputeRetryApi(ArbiterApiView):
    """Queue a failed dispute again for a new verification run."""

    @extend_schema(
        parameters=[_id_parameter("dispute_id", "dispute")],
        request=None,
        responses=DisputeOutputSerializer,
        summary="Retry a failed dispute",
    )
    def post(self, request: Request, dispute_id: str) -> Response:
        return self.dispute_response(
            request, dispute_services.dispute_queue(dispute=self.held_dispute(request, dispute_id))
        )
