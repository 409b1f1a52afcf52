"""Owner API of stress tests: start one against simulated thefts of your model, follow it, read its table."""

import uuid
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ownership import selectors as ownership_selectors
from ownership.exceptions import RegistryNotFoundError
from ownership.models import RegisteredModel
from ownership.parsers import BoundedJSONParser
from ownership.roles import IsOwner
from verification import selectors
from verification.api.disputes import CommaListField, evidence_sets_of
from verification.exceptions import StressTestNotFoundError
from verification.models import StressTest
from verification.services import stress as stress_services


class StressModelOutputSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    digest = serializers.CharField(source="model_digest", help_text="the model's SHA-256 digest (OpenSSF)")

    class Meta:
        model = RegisteredModel
        ref_name = "StressTestModel"
        fields = ["id", "name", "digest", "artifact_format"]


class StressTestOutputSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    model = StressModelOutputSerializer(read_only=True)
    evidence_sets = serializers.SlugRelatedField(many=True, read_only=True, slug_field="public_id")
    thefts = serializers.ListField(child=serializers.CharField(), help_text="the simulated thefts, in order")
    progress = serializers.IntegerField(help_text="percent, 0 to 100")
    results = serializers.JSONField(
        help_text="once done: rows (one per theft, then the independent control) with the stolen model's holdout "
        "accuracy, its agreement with your model and one cell per evidence set (p_value, match_rate, confirmed); "
        "evidence (which commitment each evidence name is); owner (your model's accuracy); panel"
    )
    timings = serializers.JSONField(help_text="seconds per phase and per theft")

    class Meta:
        model = StressTest
        ref_name = "StressTest"
        fields = [
            "id",
            "state",
            "progress",
            "phase",
            "failure_reason",
            "model",
            "evidence_sets",
            "thefts",
            "panel",
            "alpha",
            "seed",
            "attempts",
            "results",
            "timings",
            "created_at",
            "updated_at",
            "finished_at",
        ]


def _response(found: StressTest, http_status: int = status.HTTP_200_OK) -> Response:
    fresh = StressTest.objects.select_related("model").prefetch_related("evidence_sets").get(pk=found.pk)
    return Response(StressTestOutputSerializer(fresh).data, status=http_status)


class StressTestListApi(APIView):
    """Your stress tests, or start one: simulated thefts of your model, your evidence tested on each."""

    permission_classes = [IsAuthenticated, IsOwner]
    parser_classes = [BoundedJSONParser, FormParser, MultiPartParser]

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "StressTestInput"

        model = serializers.UUIDField(help_text="public id of one of your registered models")
        evidence_sets = CommaListField(
            child=serializers.UUIDField(),
            required=False,
            allow_empty=False,
            help_text="public ids of the model's evidence sets to test (default: all of them)",
        )
        thefts = CommaListField(
            child=serializers.ChoiceField(choices=list(stress_services.THEFT_KINDS)),
            allow_empty=False,
            help_text="a list, or comma-separated: copy, fine_tune, prune, distill, extract "
            "(fine_tune and prune need a TorchScript model)",
        )
        panel = serializers.CharField(
            required=False,
            max_length=100,
            default="digits",
            help_text="the reference panel; its task's public split is the thief's data",
        )
        alpha = serializers.FloatField(required=False, default=1e-3, help_text="significance level in (0, 0.1]")
        seed = serializers.IntegerField(
            required=False, default=0, min_value=0, max_value=stress_services.MAX_SEED, help_text="seeds every theft"
        )

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            user = self.context["request"].user
            try:
                attrs["model"] = ownership_selectors.model_get(owner=user, public_id=attrs["model"])
            except RegistryNotFoundError:
                raise serializers.ValidationError({"model": "no such registered model among yours"}) from None
            if "evidence_sets" in attrs:
                attrs["evidence_sets"] = evidence_sets_of(attrs["model"], attrs["evidence_sets"], "model")
            return attrs

    @extend_schema(responses=StressTestOutputSerializer(many=True), summary="Your stress tests")
    def get(self, request: Request) -> Response:
        found = selectors.stress_test_list(owner=request.user).prefetch_related("evidence_sets")
        return Response(StressTestOutputSerializer(found, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={202: StressTestOutputSerializer},
        summary="Start a stress test",
        description="Queued for a worker on the gpu queue; follow it at its URL until its state is done or failed.",
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        started = stress_services.stress_test_start(owner=request.user, **serializer.validated_data)
        return _response(started, status.HTTP_202_ACCEPTED)


class StressTestDetailApi(APIView):
    """One of your stress tests: state, progress and, once done, the evidence-by-theft table."""

    permission_classes = [IsAuthenticated, IsOwner]

    @extend_schema(
        parameters=[
            OpenApiParameter("stress_test_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="its public id")
        ],
        responses=StressTestOutputSerializer,
        summary="A stress test",
    )
    def get(self, request: Request, stress_test_id: str) -> Response:
        try:
            public_id = uuid.UUID(stress_test_id)
        except ValueError:
            raise StressTestNotFoundError(f"no such stress test: {stress_test_id[:64]!r} is not a UUID") from None
        return _response(selectors.stress_test_get(owner=request.user, public_id=public_id))
