"""Sightings over HTTP: record the digest of a model file seen somewhere; read one back (public)."""

import uuid

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from timestamps.api import PublicApiView
from verification.exceptions import DisputeNotFoundError
from verification.models import Sighting
from verification.services.sightings import MAX_NOTE, sighting_record


class SightingOutputSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    format = serializers.CharField(source="file_format")
    time = serializers.DateTimeField(source="timestamp_token.gen_time", help_text="the TSA's time over the digest")
    serial = serializers.IntegerField(source="timestamp_token.serial", help_text="TSA serial = log index")

    class Meta:
        model = Sighting
        ref_name = "Sighting"
        fields = ["id", "model_digest", "format", "note", "time", "serial"]


class SightingCreateApi(APIView):
    """Record that a model file existed now: its digest is time-stamped and logged; the file is not kept."""

    permission_classes = [IsAuthenticated]
    parser_classes = [MultiPartParser]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "sighting"

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SightingInput"

        file = serializers.FileField(help_text="the model file (ONNX or TorchScript)")
        note = serializers.CharField(required=False, allow_blank=True, default="", max_length=MAX_NOTE)

    @extend_schema(request=InputSerializer, responses={201: SightingOutputSerializer}, summary="Record a sighting")
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        sighting = sighting_record(
            user=request.user, upload=serializer.validated_data["file"], note=serializer.validated_data["note"]
        )
        return Response(SightingOutputSerializer(sighting).data, status=status.HTTP_201_CREATED)


class SightingDetailApi(PublicApiView):
    """One sighting, public: anyone may check what was recorded and when."""

    @extend_schema(responses={200: SightingOutputSerializer}, summary="A sighting", auth=[])
    def get(self, request: Request, sighting_id: str) -> Response:
        try:
            public_id = uuid.UUID(sighting_id)
        except ValueError:
            raise DisputeNotFoundError("no such sighting (an id is a UUID)") from None
        sighting = Sighting.objects.select_related("timestamp_token").filter(public_id=public_id).first()
        if sighting is None:
            raise DisputeNotFoundError("no such sighting")
        return Response(SightingOutputSerializer(sighting).data)
