"""Sightings over HTTP: record that a model file or an endpoint existed now; read one back (public)."""

import uuid
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from ownership.parsers import BoundedJSONParser
from timestamps.api import PublicApiView
from verification.exceptions import DisputeNotFoundError
from verification.models import Sighting
from verification.services.sightings import MAX_NOTE, sighting_record, sighting_record_endpoint


class SightingOutputSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    # plain strings in the schema: these choice sets are named where disputes and evidence define them
    kind = serializers.CharField(help_text="file or endpoint")
    state = serializers.CharField(help_text="probing (an endpoint, until its transcript is stamped), recorded, failed")
    protocol = serializers.CharField(help_text="an endpoint's protocol: json or v2")
    format = serializers.CharField(source="file_format", help_text="a file's format; empty for an endpoint")
    time = serializers.DateTimeField(
        source="timestamp_token.gen_time", allow_null=True, default=None, help_text="the TSA's time; null while probing"
    )
    serial = serializers.IntegerField(
        source="timestamp_token.serial", allow_null=True, default=None, help_text="TSA serial = log index"
    )

    class Meta:
        model = Sighting
        ref_name = "Sighting"
        fields = [
            "id",
            "kind",
            "state",
            "failure_reason",
            "model_digest",
            "format",
            "url",
            "protocol",
            "model_name",
            "transcript_digest",
            "note",
            "time",
            "serial",
        ]


class SightingCreateApi(APIView):
    """Record that a model existed now: a file's digest, or an endpoint's answers to a fresh probe set.

    A file is digested as it streams in and is not kept (201). An endpoint is probed by a worker; the
    sighting is `probing` until its transcript is time-stamped (202). A later dispute over the same file,
    or the same endpoint still answering the probes the same way, counts the sighting as the suspect's
    first known time.
    """

    permission_classes = [IsAuthenticated]
    parser_classes = [MultiPartParser, FormParser, BoundedJSONParser]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "sighting"

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SightingInput"

        file = serializers.FileField(required=False, help_text="a model file (ONNX or TorchScript); or give url")
        url = serializers.CharField(required=False, max_length=500, help_text="a prediction endpoint; or give file")
        protocol = serializers.CharField(default="json", max_length=8, help_text="json or v2")
        model_name = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)
        output = serializers.CharField(default="logits", max_length=16, help_text="logits, probabilities or labels")
        input_shape = serializers.ListField(
            child=serializers.IntegerField(min_value=1), required=False, max_length=4, help_text="an endpoint's input"
        )
        num_classes = serializers.IntegerField(required=False, min_value=2, max_value=10_000)
        note = serializers.CharField(required=False, allow_blank=True, default="", max_length=MAX_NOTE)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if ("file" in attrs) == ("url" in attrs):
                raise serializers.ValidationError("give exactly one of file and url")
            if "url" in attrs and ("input_shape" not in attrs or "num_classes" not in attrs):
                raise serializers.ValidationError("an endpoint sighting needs input_shape and num_classes")
            return attrs

    @extend_schema(request=InputSerializer, responses={201: SightingOutputSerializer}, summary="Record a sighting")
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "file" in data:
            sighting = sighting_record(user=request.user, upload=data["file"], note=data["note"])
            return Response(SightingOutputSerializer(sighting).data, status=status.HTTP_201_CREATED)
        sighting = sighting_record_endpoint(
            user=request.user,
            url=data["url"],
            protocol=data["protocol"],
            model_name=data["model_name"],
            output_kind=data["output"],
            input_shape=data["input_shape"],
            num_classes=data["num_classes"],
            note=data["note"],
        )
        return Response(SightingOutputSerializer(sighting).data, status=status.HTTP_202_ACCEPTED)


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
