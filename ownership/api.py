"""Owner API: accounts, registered models, evidence sets, public receipts."""

import base64
import json
import math
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.http import FileResponse
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from ownership import selectors, services
from ownership.evidence import dump_evidence
from ownership.exceptions import UploadTooLargeError
from ownership.models import EvidenceSet, GuardAlarm, RegisteredModel
from ownership.parsers import BoundedJSONParser
from ownership.roles import IsOwner, user_roles
from timestamps.api import PublicApiView as PublicReadApiView


class TokenApi(ObtainAuthToken):
    """Exchange a username and password for an API token."""

    parser_classes = (FormParser, MultiPartParser, BoundedJSONParser)
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "login"


class MeApi(APIView):
    """Who the caller is and which roles they hold."""

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "Me"

        username = serializers.CharField()
        roles = serializers.ListField(child=serializers.CharField())

    @extend_schema(responses=OutputSerializer, summary="The authenticated user")
    def get(self, request: Request) -> Response:
        data = {"username": request.user.get_username(), "roles": user_roles(request.user)}
        return Response(self.OutputSerializer(data).data)


# --- the registry ---------------------------------------------------------------------------


@extend_schema_field(OpenApiTypes.STR)
class ShapeField(serializers.Field):
    """An input shape given as a JSON list ("[1, 8, 8]") or comma-separated ("1,8,8")."""

    default_error_messages = {"invalid": "give the input shape as a list of integers, e.g. [1, 8, 8] or 1,8,8"}

    def to_internal_value(self, data: Any) -> list[Any]:
        if isinstance(data, list):
            return data
        if not isinstance(data, str):
            self.fail("invalid")
        text = data.strip()
        try:
            value = json.loads(text) if text.startswith("[") else [int(part) for part in text.split(",")]
        except ValueError:
            self.fail("invalid")
        if not isinstance(value, list):
            self.fail("invalid")
        return value

    def to_representation(self, value: Any) -> Any:
        return value


def refuse_oversized(request: Request, limit: int) -> None:
    """Refuse by Content-Length before reading the body (the multipart envelope gets 1 MiB of slack)."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit + 1024 * 1024:
        raise UploadTooLargeError(f"the upload is {length} bytes; the limit is {limit} bytes")


class EvidenceOutputSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    serial = serializers.IntegerField(source="timestamp_token.serial", help_text="TSA serial = log index")
    receipt_url = serializers.SerializerMethodField()

    class Meta:
        model = EvidenceSet
        ref_name = "EvidenceSet"
        fields = [
            "id",
            "kind",
            "size",
            "commitment",
            "verifiable",
            "generator",
            "derived_from",
            "journal",
            "serial",
            "created_at",
            "receipt_url",
        ]

    derived_from = serializers.UUIDField(
        source="derived_from.public_id",
        allow_null=True,
        default=None,
        help_text="the generated watermark this set commits again (adopted for the model it was embedded in)",
    )

    def get_receipt_url(self, obj: EvidenceSet) -> str:
        return reverse("receipt", kwargs={"commitment": obj.commitment})


class ModelOutputSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    state = serializers.ChoiceField(
        choices=RegisteredModel.State.choices,
        help_text="validating (the sandbox check is queued or running), then active or rejected",
    )
    rejection_reason = serializers.CharField(help_text="why the sandbox refused the artifact; empty otherwise")
    format = serializers.SerializerMethodField(help_text="onnx or torchscript, once the sandbox has checked it")
    size = serializers.IntegerField(source="artifact_size")
    digest = serializers.SerializerMethodField()
    status_url = serializers.SerializerMethodField(help_text="poll this until state is no longer validating")
    evidence = EvidenceOutputSerializer(source="evidence_sets", many=True, read_only=True)
    panels = serializers.SerializerMethodField()

    class Meta:
        model = RegisteredModel
        ref_name = "RegisteredModel"
        fields = [
            "id",
            "name",
            "task",
            "input_shape",
            "num_classes",
            "state",
            "rejection_reason",
            "format",
            "size",
            "digest",
            "created_at",
            "validated_at",
            "status_url",
            "evidence",
            "panels",
        ]

    @extend_schema_field(
        serializers.ListField(
            child=serializers.CharField(),
            help_text="the reference panels that can judge this model; empty: no dispute or stress test can run",
        )
    )
    def get_panels(self, obj: RegisteredModel) -> list[str]:
        # ownership may not import verification: the verification app answers through the registry
        fit = getattr(apps.get_app_config("verification"), "panel_names_for", None)
        return list(fit(obj)) if fit else []

    @extend_schema_field(OpenApiTypes.STR)
    def get_format(self, obj: RegisteredModel) -> str | None:
        return obj.artifact_format if obj.is_active else None

    def get_status_url(self, obj: RegisteredModel) -> str:
        return reverse("model-detail", kwargs={"model_id": obj.public_id})

    def get_digest(self, obj: RegisteredModel) -> dict[str, Any]:
        files = [{"name": name, "sha256": digest} for name, digest in sorted(obj.file_digests.items())]
        return {"algorithm": "sha256", "model_digest": obj.model_digest, "files": files}


class OwnerApiView(APIView):
    """Owner endpoints: the owner role, and only the caller's own models."""

    permission_classes = [IsAuthenticated, IsOwner]


class ModelListApi(OwnerApiView):
    """List your models, or register one (multipart upload of an ONNX or TorchScript artifact)."""

    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ModelRegistration"

        name = serializers.CharField(max_length=200)
        task = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)
        input_shape = ShapeField(help_text="one input's shape without the batch dimension, e.g. [1, 8, 8]")
        num_classes = serializers.IntegerField(min_value=2, max_value=100_000)
        artifact = serializers.FileField(help_text="ONNX (.onnx) or TorchScript (.pt) file")

    @extend_schema(responses=ModelOutputSerializer(many=True), summary="Your registered models")
    def get(self, request: Request) -> Response:
        models = selectors.model_list(owner=request.user).prefetch_related("evidence_sets__timestamp_token")
        return Response(ModelOutputSerializer(models, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={202: ModelOutputSerializer},
        summary="Register a model",
        description="Stores and digests the artifact and answers at once with state `validating`; a worker checks "
        "it in the sandbox. Poll `status_url` until the state is `active` (or `rejected`, with a reason).",
    )
    def post(self, request: Request) -> Response:
        refuse_oversized(request, settings.MODELCOURT_MAX_ARTIFACT_BYTES)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        # the sandbox never runs in a web request: it may take longer than the web worker may live
        model = services.model_register(owner=request.user, validate="async", **serializer.validated_data)
        data = ModelOutputSerializer(model).data
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["status_url"]})


class ModelDetailApi(OwnerApiView):
    """One of your models; DELETE removes it unless a dispute refers to it."""

    @extend_schema(responses=ModelOutputSerializer, summary="A registered model")
    def get(self, request: Request, model_id: uuid.UUID) -> Response:
        return Response(ModelOutputSerializer(selectors.model_get(owner=request.user, public_id=model_id)).data)

    @extend_schema(responses={204: None}, summary="Delete a model")
    def delete(self, request: Request, model_id: uuid.UUID) -> Response:
        services.model_delete(model=selectors.model_get(owner=request.user, public_id=model_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelArtifactApi(OwnerApiView):
    """Download the artifact of one of your models."""

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY}, summary="Model artifact")
    def get(self, request: Request, model_id: uuid.UUID) -> FileResponse:
        model = selectors.model_get(owner=request.user, public_id=model_id)
        return FileResponse(model.artifact.open("rb"), as_attachment=True, filename=Path(model.artifact.name).name)


class EvidenceListApi(OwnerApiView):
    """List a model's evidence sets, or add one from an .npz file."""

    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "EvidenceUpload"

        kind = serializers.ChoiceField(choices=EvidenceSet.Kind.choices)
        file = serializers.FileField(
            help_text=".npz: inputs float32 [N, ...] + labels int64 [N]; dataset: members, nonmembers"
        )

    @extend_schema(responses=EvidenceOutputSerializer(many=True), summary="Evidence sets of a model")
    def get(self, request: Request, model_id: uuid.UUID) -> Response:
        model = selectors.model_get(owner=request.user, public_id=model_id)
        return Response(EvidenceOutputSerializer(selectors.evidence_list(model=model), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: EvidenceOutputSerializer}, summary="Add evidence")
    def post(self, request: Request, model_id: uuid.UUID) -> Response:
        model = selectors.model_get(owner=request.user, public_id=model_id)
        refuse_oversized(request, settings.MODELCOURT_MAX_EVIDENCE_BYTES)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        if upload.size > settings.MODELCOURT_MAX_EVIDENCE_BYTES:
            raise UploadTooLargeError(
                f"the evidence is {upload.size} bytes; the limit is {settings.MODELCOURT_MAX_EVIDENCE_BYTES}"
            )
        evidence_set = services.evidence_upload(model=model, kind=serializer.validated_data["kind"], data=upload.read())
        return Response(EvidenceOutputSerializer(evidence_set).data, status=status.HTTP_201_CREATED)


class EvidenceGenerateApi(OwnerApiView):
    """Generate a verifiable watermark set from a fresh seed, commit to it, and return it for embedding.

    Limited per owner (the `evidence-generate` throttle); the set's size is capped in the service.
    """

    throttle_scope = "evidence-generate"

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "WatermarkGeneration"

        count = serializers.IntegerField(min_value=1, max_value=10_000, default=100)
        low = serializers.FloatField(default=0.0)
        high = serializers.FloatField(default=1.0)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if not (math.isfinite(attrs["low"]) and math.isfinite(attrs["high"]) and attrs["low"] < attrs["high"]):
                raise serializers.ValidationError("the input domain needs finite bounds with low < high")
            return attrs

    class OutputSerializer(EvidenceOutputSerializer):
        evidence_npz_b64 = serializers.CharField(help_text="the trigger set (.npz, base64) to embed in your model")

        class Meta(EvidenceOutputSerializer.Meta):
            ref_name = "GeneratedWatermark"
            fields = [*EvidenceOutputSerializer.Meta.fields, "evidence_npz_b64"]

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer}, summary="Generate a watermark")
    def post(self, request: Request, model_id: uuid.UUID) -> Response:
        model = selectors.model_get(owner=request.user, public_id=model_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        evidence_set, arrays = services.evidence_generate(model=model, **serializer.validated_data)
        evidence_set.evidence_npz_b64 = base64.b64encode(dump_evidence(arrays)).decode()
        return Response(self.OutputSerializer(evidence_set).data, status=status.HTTP_201_CREATED)


class EvidenceAdoptApi(OwnerApiView):
    """Commit one of your generated watermarks again for this model: the model you embedded it in.

    The verifiable flow: generate a watermark for a registered model, embed it, register the embedded model,
    then adopt the watermark for it. Disputes name the embedded model as the claimant, and the service checks
    that this model carries the watermark. An adopted set is not a new draw.
    """

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "WatermarkAdoption"

        source = serializers.UUIDField(help_text="id of the generated watermark (on another of your models)")

    @extend_schema(request=InputSerializer, responses={201: EvidenceOutputSerializer}, summary="Adopt a watermark")
    def post(self, request: Request, model_id: uuid.UUID) -> Response:
        model = selectors.model_get(owner=request.user, public_id=model_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        source = selectors.evidence_of_owner(owner=request.user, public_id=serializer.validated_data["source"])
        adopted = services.evidence_adopt(model=model, source=source)
        return Response(EvidenceOutputSerializer(adopted).data, status=status.HTTP_201_CREATED)


class EvidenceOpeningApi(OwnerApiView):
    """The opening of one of your commitments: evidence, salt and seed (keep it secret until a dispute)."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="Open a commitment (owner only)")
    def get(self, request: Request, model_id: uuid.UUID, evidence_id: uuid.UUID) -> Response:
        model = selectors.model_get(owner=request.user, public_id=model_id)
        evidence_set = selectors.evidence_get(model=model, public_id=evidence_id)
        return Response(services.evidence_open(evidence_set=evidence_set))


class ReceiptApi(PublicReadApiView):
    """The public receipt of a commitment; anyone can verify it offline."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="Public receipt of a commitment", auth=[])
    def get(self, request: Request, commitment: str) -> Response:
        evidence_set = selectors.evidence_by_commitment(commitment=commitment)
        return Response(services.receipt_build(evidence_set=evidence_set))


class GuardAlarmSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(read_only=True)
    client = serializers.CharField(source="client_tag", help_text="the guard's client tag (32 hex digits)")
    request_url = serializers.SerializerMethodField(help_text="the web form to request a dispute over this client")

    class Meta:
        model = GuardAlarm
        ref_name = "GuardAlarm"
        fields = ["id", "client", "queries", "statistic", "threshold", "raised_at", "received_at", "request_url"]

    def get_request_url(self, obj: GuardAlarm) -> str:
        query = f"model={obj.model.public_id}&methods=api_watermark&api_client={obj.client_tag}"
        return f"{reverse('owner-request-new')}?{query}"


class GuardAlarmListApi(OwnerApiView):
    """Extraction alarms your guard raised for this model's API, or report one (the guard does, with your token).

    An alarm names a client by the guard's keyed tag, never by its address. From an alarm you can request
    a dispute over that client's journaled answers (`api_client` in a dispute request).
    """

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "GuardAlarmInput"

        client = serializers.CharField(max_length=64, help_text="the guard's client tag (32 hex digits)")
        queries = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
        statistic = serializers.FloatField(help_text="Shapiro-Wilk W of the client's query distances")
        threshold = serializers.FloatField()
        raised_at = serializers.DateTimeField()

    @extend_schema(responses=GuardAlarmSerializer(many=True), summary="The guard's alarms for a model")
    def get(self, request: Request, model_id: uuid.UUID) -> Response:
        model = selectors.model_get(owner=request.user, public_id=model_id)
        alarms = model.guard_alarms.select_related("model").all()[:500]
        return Response(GuardAlarmSerializer(alarms, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: GuardAlarmSerializer}, summary="Report a guard alarm")
    def post(self, request: Request, model_id: uuid.UUID) -> Response:
        model = selectors.model_get(owner=request.user, public_id=model_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        alarm = services.guard_alarm_record(
            model=model,
            client_tag=data["client"],
            queries=data["queries"],
            statistic=data["statistic"],
            threshold=data["threshold"],
            raised_at=data["raised_at"],
        )
        return Response(GuardAlarmSerializer(alarm).data, status=status.HTTP_201_CREATED)


class GuardSummaryApi(OwnerApiView):
    """What the guard committed for this model: its journal batches (with receipts), clients and alarms."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="The guard's batches and alarms for a model")
    def get(self, request: Request, model_id: uuid.UUID) -> Response:
        model = selectors.model_get(owner=request.user, public_id=model_id)
        batches = selectors.evidence_list(model=model).filter(kind=EvidenceSet.Kind.API_WATERMARK)
        clients = services.api_clients_before(model=model, moment=timezone.now() + timedelta(days=1))
        return Response(
            {
                "batches": EvidenceOutputSerializer(batches, many=True).data,
                "answers": sum(b.size for b in batches),
                "clients": len(clients),
                "alarms": GuardAlarmSerializer(model.guard_alarms.select_related("model").all()[:500], many=True).data,
            }
        )
