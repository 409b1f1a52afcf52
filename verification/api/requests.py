"""Dispute request API: owners ask for a dispute; arbiters read their inbox, accept (filing it) or decline."""

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ownership.api import refuse_oversized
from ownership.parsers import BoundedJSONParser
from ownership.roles import IsOwner, Role, user_has_role
from verification import selectors
from verification.api.disputes import (
    ArbiterApiView,
    ClaimAndSuspectInput,
    ClaimantOutputSerializer,
    DisputeOutputSerializer,
    SuspectOutputSerializer,
    _id_parameter,
    _public_id,
    _verdict_url,
)
from verification.exceptions import DisputeNotFoundError
from verification.models import DisputeRequest
from verification.services import disputes as dispute_services
from verification.services import requests as request_services


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
            "api_client",
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

        title = serializers.CharField(max_length=dispute_services.MAX_TITLE)
        statement = serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=request_services.MAX_STATEMENT,
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
        made = request_services.dispute_request_create(owner=request.user, **data)
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
        return _request_response(request_services.dispute_request_withdraw(request=found))


class DisputeRequestAcceptApi(ArbiterApiView):
    """Take an open request: a dispute is filed from it and queued; it is yours to run and publish."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DisputeRequestAcceptance"

        title = serializers.CharField(
            required=False, max_length=dispute_services.MAX_TITLE, help_text="default: the request's"
        )
        alpha = serializers.FloatField(required=False, help_text="significance level in (0, 0.1]; default 0.001")
        query_budget = serializers.IntegerField(
            required=False, min_value=1, max_value=dispute_services.MAX_BUDGET, help_text="default 100000"
        )
        panel = serializers.CharField(required=False, max_length=100, default="digits")
        note = serializers.CharField(required=False, allow_blank=True, max_length=request_services.MAX_STATEMENT)
        suspect_released_at = serializers.DateTimeField(
            required=False, allow_null=True, default=None, help_text="when the suspect was first released, if known"
        )
        suspect_release_source = serializers.CharField(
            required=False, allow_blank=True, default="", max_length=dispute_services.MAX_RELEASE_SOURCE
        )

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
        dispute = request_services.dispute_request_accept(
            request=found, arbiter=request.user, **serializer.validated_data
        )
        return self.dispute_response(request, dispute, status.HTTP_201_CREATED)


class DisputeRequestDeclineApi(ArbiterApiView):
    """Decline an open request, saying why; the owner reads the reason."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DisputeRequestDecline"

        reason = serializers.CharField(max_length=request_services.MAX_STATEMENT)

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
        declined = request_services.dispute_request_decline(
            request=found, arbiter=request.user, reason=serializer.validated_data["reason"]
        )
        return _request_response(declined)
